-- Namespace backups: one set (a `namespaces` backup row) whose members are
-- the resources backup and one volume backup per PersistentVolumeClaim,
-- each taken by the node agent of the node that mounts it.
ALTER TABLE backups DROP CONSTRAINT backups_kind_check;
ALTER TABLE backups ADD CONSTRAINT backups_kind_check
    CHECK (kind IN ('etcd', 'resources', 'volume', 'namespaces'));
ALTER TABLE backups ADD COLUMN set_id uuid;
CREATE INDEX backups_by_set ON backups (set_id) WHERE set_id IS NOT NULL;

-- Volume jobs run on one node: the agent there claims them. `params` says
-- which claim, mounted by which pod.
ALTER TABLE jobs ADD COLUMN node text, ADD COLUMN params jsonb;
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('backup', 'retention', 'gc', 'drill', 'volume'));
ALTER TABLE jobs ADD CONSTRAINT node_jobs_name_their_node CHECK ((kind = 'volume') = (node IS NOT NULL));
CREATE INDEX jobs_queued_by_node ON jobs (node, queued_at) WHERE state = 'queued' AND node IS NOT NULL;

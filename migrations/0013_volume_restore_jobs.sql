-- Restores of namespace sets: the agent of a claim's node writes the claim's
-- data (a `volume-restore` job). It never holds the age identity: it offers
-- a key made for the one job (`key_offer`, an age recipient), and the
-- restore's coordinator answers with the plaintexts that job needs,
-- encrypted to that key (`key_grant`). Both are cleared when the job ends.
ALTER TABLE jobs ADD COLUMN key_offer text, ADD COLUMN key_grant bytea;
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check
    CHECK (kind IN ('backup', 'retention', 'gc', 'drill', 'volume', 'volume-restore'));
ALTER TABLE jobs DROP CONSTRAINT node_jobs_name_their_node;
ALTER TABLE jobs ADD CONSTRAINT node_jobs_name_their_node
    CHECK ((kind IN ('volume', 'volume-restore')) = (node IS NOT NULL));

-- Restore drills: one row per run with its report (JSON, canonical), the
-- backups it proved, and the scratch space a failed run keeps for a while.

CREATE TABLE drill_runs (
    id              uuid PRIMARY KEY,
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    drill           text NOT NULL,
    trigger         text NOT NULL,
    job_id          uuid,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    verdict         text NOT NULL CHECK (verdict IN ('passed', 'partially_failed', 'failed')),
    failure_stage   text,
    rto_seconds     double precision NOT NULL,
    rpo_seconds     double precision NOT NULL,
    rto_objective_seconds double precision,
    rpo_objective_seconds double precision,
    backup_ids      uuid[] NOT NULL,
    report          jsonb NOT NULL,
    -- `reports/<id>` in the bucket: the sealed, locked copy.
    report_key      text,
    -- Scratch a failed run kept (directories, namespaces), removed once
    -- cleanup_due_at has passed.
    scratch         jsonb NOT NULL DEFAULT '[]',
    cleanup_due_at  timestamptz,
    CONSTRAINT failed_runs_say_where CHECK (verdict = 'passed' OR failure_stage IS NOT NULL)
);

CREATE INDEX drill_runs_by_drill ON drill_runs (repository_id, drill, started_at DESC);
CREATE INDEX drill_runs_cleanup ON drill_runs (cleanup_due_at) WHERE cleanup_due_at IS NOT NULL;

-- A passed drill proves the backups it restored.
ALTER TABLE backups ADD COLUMN verified_at timestamptz, ADD COLUMN verified_by uuid;

-- Drill jobs: enqueued by the server's leader, worked by `drctl worker --drills`.
ALTER TABLE jobs DROP CONSTRAINT jobs_kind_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_kind_check CHECK (kind IN ('backup', 'retention', 'gc', 'drill'));

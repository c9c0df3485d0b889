-- The control plane (drctl server): schedules mirrored from the
-- configuration, one job row per run, and the scheduler's leader lease.

-- A schedule as last loaded from the configuration (spec), with what the
-- catalog alone knows: a pause from the CLI, and the newest slot decided.
CREATE TABLE schedules (
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    name            text NOT NULL,
    spec            jsonb NOT NULL,
    -- `drctl schedule pause`: kept across reloads of the configuration.
    paused_by       text,
    paused_at       timestamptz,
    -- The newest slot decided (run, skipped or missed); NULL: the latest
    -- slot runs at once (created or resumed without skip_immediately).
    last_slot       timestamptz,
    -- Gone from the configuration: no longer scheduled, its history kept.
    removed_at      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, name)
);

-- One row per run of anything the control plane does: backups, retention,
-- gc (and later drills and node-agent volume jobs). A slot of a schedule
-- has one row, whatever happens to it: the unique key makes enqueueing
-- idempotent, so two leaders for a moment still cannot run a slot twice.
CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    kind            text NOT NULL CHECK (kind IN ('backup', 'retention', 'gc')),
    schedule        text,
    scheduled_for   timestamptz NOT NULL,
    trigger         text NOT NULL,
    state           text NOT NULL CHECK (state IN
        ('queued', 'running', 'succeeded', 'partial', 'failed', 'skipped', 'missed', 'interrupted')),
    reason          text,
    attempt         integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 2 CHECK (max_attempts >= 1),
    -- The lease: who works the job, until when, and a generation that
    -- grows with every claim. Every write of a worker names the generation
    -- it claimed; one that lost its lease matches no row and cannot commit.
    lease_owner     text,
    lease_generation bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz,
    heartbeat_at    timestamptz,
    queued_at       timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    backup_id       uuid,
    result          jsonb,
    UNIQUE NULLS NOT DISTINCT (repository_id, kind, schedule, scheduled_for),
    CONSTRAINT ended_jobs_say_why CHECK
        (state NOT IN ('failed', 'skipped', 'missed', 'interrupted') OR reason IS NOT NULL)
);

CREATE INDEX jobs_queued ON jobs (queued_at) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_by_schedule ON jobs (repository_id, schedule, scheduled_for DESC);

-- The scheduler's leader: one row per lease name. Taken when free or
-- expired, by database time (now()), never a replica's clock; the
-- generation grows with every change of holder and fences the leader's
-- writes. A row, not a session advisory lock: it survives transaction
-- pooling and says who leads.
CREATE TABLE leases (
    name            text PRIMARY KEY,
    holder          text NOT NULL,
    generation      bigint NOT NULL,
    acquired_at     timestamptz NOT NULL,
    renewed_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL
);

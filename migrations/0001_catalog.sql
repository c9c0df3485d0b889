-- The catalog: what drctl has stored and where.
--
-- The bucket is the source of truth (manifests are enough to rebuild all of
-- this); the catalog makes lookups fast and holds run state. Invariants that a
-- bug must not be able to break are enforced here, not only in code.

-- A repository: one bucket + prefix (or one local directory).
CREATE TABLE repositories (
    id              uuid PRIMARY KEY,
    -- s3://bucket/prefix or file:///path; one row per location.
    location        text NOT NULL UNIQUE,
    format_version  integer NOT NULL CHECK (format_version > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- One backup of one source. Status moves running -> complete | partial | failed,
-- and only a backup whose manifest is stored may be complete or partial.
CREATE TABLE backups (
    id              uuid PRIMARY KEY,
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    kind            text NOT NULL CHECK (kind IN ('etcd', 'resources', 'volume')),
    -- What was backed up: the volume name, the etcd cluster, the resource scope.
    name            text NOT NULL,
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'complete', 'partial', 'failed')),
    -- The backup an incremental one was based on.
    parent_id       uuid REFERENCES backups (id),
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    -- Objects this backup references stay locked at least this long.
    retain_until    timestamptz,
    -- Object key of the manifest in the repository.
    manifest_key    text,
    -- Counters for the summary (files, bytes read, bytes stored, ...).
    stats           jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Why a backup failed or is partial; never contains secret values.
    error           text,
    CONSTRAINT finished_backups_have_an_end
        CHECK ((status = 'running') = (finished_at IS NULL)),
    CONSTRAINT usable_backups_have_a_manifest
        CHECK (status NOT IN ('complete', 'partial') OR manifest_key IS NOT NULL),
    CONSTRAINT failed_backups_say_why
        CHECK (status <> 'failed' OR error IS NOT NULL)
);

CREATE INDEX backups_latest ON backups (repository_id, kind, name, started_at DESC);

-- What one backup holds: a file of a volume, an API object, an etcd snapshot.
CREATE TABLE backup_items (
    backup_id       uuid NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    -- Identity within the backup: a file path, group/version/kind/namespace/name,
    -- or "snapshot". Escaped to UTF-8 where the source is not (see docs/catalog.md).
    item            text NOT NULL,
    item_type       text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    -- Keyed digest of the content: never a plain hash of the plaintext.
    digest          bytea,
    -- Source-specific metadata (mode, owner, times; gvk; revision, ...).
    attrs           jsonb NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (backup_id, item)
);

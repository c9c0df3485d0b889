-- What every stored object is locked with, and which packs each backup
-- needs: for lock extension, the storage scrub (`drctl verify --storage`) and
-- garbage collection.

-- Packs already record key, size, SHA-256, version id and retain-until.
ALTER TABLE packs ADD COLUMN lock_mode text;

-- Every object that is not a pack: config, keys, manifests.
CREATE TABLE objects (
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    key             text NOT NULL,
    size            bigint NOT NULL CHECK (size >= 0),
    sha256          bytea NOT NULL CHECK (length(sha256) = 32),
    version_id      text,
    lock_mode       text,
    retain_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, key)
);

-- The packs a usable backup references. Their locks last at least as long
-- as the backup's retain_until, and garbage collection keeps them while the
-- backup lives.
CREATE TABLE backup_packs (
    backup_id       uuid NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    repository_id   uuid NOT NULL,
    pack_key        text NOT NULL,
    PRIMARY KEY (backup_id, pack_key),
    FOREIGN KEY (repository_id, pack_key) REFERENCES packs (repository_id, key)
);

CREATE INDEX backup_packs_by_pack ON backup_packs (repository_id, pack_key);

-- Packs and the chunks inside them: the dedup index and the locations a
-- writer needs for a manifest, without one round trip per chunk.

CREATE TABLE packs (
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    -- packs/xx/<sha256 hex>
    key             text NOT NULL,
    size            bigint NOT NULL CHECK (size > 0),
    sha256          bytea NOT NULL CHECK (length(sha256) = 32),
    version_id      text,
    retain_until    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, key)
);

-- A chunk is recorded only after its pack is stored, so every row here
-- points at data that exists.
CREATE TABLE chunks (
    repository_id   uuid NOT NULL,
    -- keyed BLAKE3 of the plaintext: says nothing without the repository secret
    id              bytea NOT NULL CHECK (length(id) = 32),
    pack_key        text NOT NULL,
    pack_offset     integer NOT NULL CHECK (pack_offset >= 0),
    stored_length   integer NOT NULL CHECK (stored_length > 0),
    raw_length      integer NOT NULL CHECK (raw_length >= 0),
    PRIMARY KEY (repository_id, id),
    FOREIGN KEY (repository_id, pack_key) REFERENCES packs (repository_id, key)
);

CREATE INDEX chunks_by_pack ON chunks (repository_id, pack_key);

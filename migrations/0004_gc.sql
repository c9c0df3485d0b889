-- Deleting backups and collecting garbage.
--
-- `drctl backup delete` (and expiry: a backup past its retain_until) only
-- sets deleted_at; `drctl gc` then marks what no live backup references and,
-- after a grace period, deletes it once its lock has expired.
ALTER TABLE backups ADD COLUMN deleted_at timestamptz;

-- Objects no live backup references, since marked_at. Chunks in a marked
-- pack are not offered to new backups for dedup; a marked object that is
-- referenced again is unmarked.
CREATE TABLE gc_candidates (
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    key             text NOT NULL,
    marked_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, key)
);

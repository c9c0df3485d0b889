-- What gc found in the store that no catalog row explains (an interrupted
-- backup's orphan packs, unfinished multipart uploads, temporary files),
-- since when gc first saw it. gc removes such debris only once it has seen
-- it for the whole grace period: its age is measured on the catalog's clock
-- from gc's own observation, never from a timestamp the store reports (a
-- skewed S3 clock cannot make fresh work look old). A key that is gone, or
-- that the catalog came to know, loses its row.
CREATE TABLE gc_sightings (
    repository_id   uuid NOT NULL REFERENCES repositories (id),
    key             text NOT NULL,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (repository_id, key)
);

-- Volume backups keep their listing in the repository, as tree objects
-- (docs/storage.md): the catalog records only the top tree's id, which is
-- what an incremental backup starts from, and no longer a backup_items row
-- per file per backup. Rows of volume backups made before stay as they
-- are (their manifests hold the whole listing and restore as before).
ALTER TABLE backups ADD COLUMN tree text CHECK (tree ~ '^[0-9a-f]{64}$');

-- A backup whose process ended without saying so (killed, the host lost,
-- the catalog unreachable until it gave up) stops sending heartbeats. The
-- next command that looks marks it `interrupted`, with the reason: it is
-- never usable, can be deleted, and holds nothing back from gc.
ALTER TABLE backups DROP CONSTRAINT backups_status_check;
ALTER TABLE backups ADD CONSTRAINT backups_status_check
    CHECK (status IN ('running', 'complete', 'partial', 'failed', 'interrupted'));
ALTER TABLE backups DROP CONSTRAINT failed_backups_say_why;
ALTER TABLE backups ADD CONSTRAINT failed_backups_say_why
    CHECK (status NOT IN ('failed', 'interrupted') OR error IS NOT NULL);

-- A running backup says it is alive every 30 seconds. gc holds back what a
-- running backup may still need only while its heartbeat is fresh, instead
-- of for a fixed day after its start: a backup running for two days stays
-- protected, one whose process died stops holding collection within
-- minutes.
ALTER TABLE backups ADD COLUMN heartbeat_at timestamptz;

-- One name per concept across every kind of backup: the size of what was
-- backed up is `bytes` in the stats of volume, etcd and resources backups
-- alike (volume backups called it `bytes_total`).
UPDATE backups
SET stats = (stats - 'bytes_total') || jsonb_build_object('bytes', stats -> 'bytes_total')
WHERE stats ? 'bytes_total';

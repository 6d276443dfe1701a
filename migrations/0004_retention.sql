-- Retention: the spooled file of an instance is removed ([spool] retention_days) once its
-- study's latest report was delivered to every destination and the retention time has passed.
-- The row stays (findings, reports and audit need it); purged_at says the file is gone, so an
-- admin knows the study can no longer be reprocessed from the spool.
ALTER TABLE instances ADD COLUMN purged_at timestamptz;

-- the retention task and the spool-size metric look only at instances still on disk
CREATE INDEX instances_on_disk_idx ON instances (study_instance_uid) WHERE purged_at IS NULL;

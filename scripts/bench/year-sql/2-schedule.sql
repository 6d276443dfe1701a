-- job scheduling (studies past the quiet period)
\set quiet 10
BEGIN;
INSERT INTO jobs (study_instance_uid)
SELECT study_instance_uid FROM instances WHERE state = 'received'
GROUP BY study_instance_uid
HAVING max(received_at) <= now() - make_interval(secs => :quiet)
ON CONFLICT (study_instance_uid) WHERE state IN ('queued', 'running') DO NOTHING;
ROLLBACK;

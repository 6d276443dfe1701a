-- job dequeue (one due job)
\set max_attempts 5
\set lease 600
BEGIN;
UPDATE jobs SET state = 'running', lease_owner = 'bench:1:0',
    lease_expires_at = now() + make_interval(secs => :lease),
    attempts = attempts + 1, updated_at = now()
WHERE id = (
    SELECT id FROM jobs
    WHERE ((state = 'queued' AND run_after <= now())
           OR (state = 'running' AND lease_expires_at < now()))
      AND attempts < :max_attempts
    ORDER BY run_after
    LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING id, study_instance_uid, kind, attempts;
ROLLBACK;

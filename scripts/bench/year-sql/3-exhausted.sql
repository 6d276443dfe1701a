-- exhausted-job sweep (every worker poll)
\set max_attempts 5
BEGIN;
WITH exhausted AS (
    UPDATE jobs SET state = 'failed',
        last_error = format('taken %s times without finishing (its worker stopped each time: a crash, a kill or a lost lease)', attempts)
            || coalesce('; last error: ' || last_error, ''),
        finished_at = now(), updated_at = now(),
        lease_owner = NULL, lease_expires_at = NULL
    WHERE attempts >= :max_attempts
      AND ((state = 'running' AND lease_expires_at < now()) OR state = 'queued')
    RETURNING id, study_instance_uid, attempts, last_error
), marked AS (
    UPDATE instances i SET state = 'failed', state_reason = e.last_error,
        state_changed_at = now()
    FROM exhausted e
    WHERE i.study_instance_uid = e.study_instance_uid AND i.state = 'analysing'
)
SELECT id, study_instance_uid, attempts, last_error AS reason FROM exhausted;
ROLLBACK;

-- outbox claim (every sender poll)
\set lim 4
\set lease 120
BEGIN;
WITH due AS (
    SELECT id FROM outbox
    WHERE (state = 'queued' AND next_attempt_at <= now())
       OR (state = 'sending' AND lease_expires_at <= now())
    ORDER BY next_attempt_at, id
    LIMIT :lim
    FOR UPDATE SKIP LOCKED)
UPDATE outbox o SET state = 'sending', lease_owner = 'bench:1:0',
    lease_expires_at = now() + make_interval(secs => :lease),
    attempts = o.attempts + 1, last_attempt_at = now(), updated_at = now()
FROM due WHERE o.id = due.id
RETURNING o.id, o.kind, o.study_instance_uid, o.sop_class_uid, o.sop_instance_uid,
    o.destination_name, o.destination_ae_title, o.destination_host, o.destination_port,
    o.archive_path, o.state, o.attempts, o.next_attempt_at, o.lease_owner, o.lease_expires_at,
    o.last_attempt_at, o.last_status, o.last_error, o.transfer_syntax_uid, o.sent_at,
    o.requeued_count;
ROLLBACK;

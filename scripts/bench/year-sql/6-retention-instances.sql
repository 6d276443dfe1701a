-- retention pass: instance candidates (30 days)
\set keep 2592000
\set lim 200
BEGIN;
SELECT i.sop_instance_uid, i.spool_key, i.size_bytes
FROM instances i
JOIN LATERAL (SELECT r.sr_sop_instance_uid, r.created_at FROM reports r
              WHERE r.study_instance_uid = i.study_instance_uid
              ORDER BY r.id DESC LIMIT 1) r ON true
WHERE i.purged_at IS NULL
  AND i.received_at <= now() - make_interval(secs => :keep)
  AND i.state IN ('analysed', 'skipped')
  AND i.state_changed_at <= r.created_at
  AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_instance_uid = i.study_instance_uid
                  AND j.state IN ('queued', 'running'))
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = r.sr_sop_instance_uid
                  AND o.state <> 'sent')
  AND (SELECT max(o.sent_at) FROM outbox o
       WHERE o.sop_instance_uid = r.sr_sop_instance_uid)
      <= now() - make_interval(secs => :keep)
ORDER BY i.received_at
LIMIT :lim
FOR UPDATE OF i SKIP LOCKED;
ROLLBACK;

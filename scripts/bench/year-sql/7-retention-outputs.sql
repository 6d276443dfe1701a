-- retention pass: SEG/SC candidates (30 days)
\set keep 2592000
\set lim 200
BEGIN;
SELECT io.sop_instance_uid, io.archive_path
FROM image_outputs io
WHERE io.purged_at IS NULL
  AND io.created_at <= now() - make_interval(secs => :keep)
  AND EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid
                  AND o.state <> 'sent')
  AND (SELECT max(o.sent_at) FROM outbox o WHERE o.sop_instance_uid = io.sop_instance_uid)
      <= now() - make_interval(secs => :keep)
ORDER BY io.id
LIMIT :lim
FOR UPDATE OF io SKIP LOCKED;
ROLLBACK;

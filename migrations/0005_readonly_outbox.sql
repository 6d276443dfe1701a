-- The admins' read-only role may also read the outbox and its attempt log (created after the
-- grant in 0002), so `cxr-worker status` works under it.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        EXECUTE 'GRANT SELECT ON outbox, outbox_attempts TO cxr_readonly';
    END IF;
END $$;

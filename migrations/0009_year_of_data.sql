-- A year of data (issue 12): what /metrics, `cxr-worker status`, the findings search and the
-- retention pass need once the tables hold a year of a large department (about 1 M instances,
-- 300 k studies, 13 M findings, 2 M outbox rows). Measured with scripts/bench-year.sh; the
-- figures before and after are in BENCHMARKS.md ("A year of data").

-- ---- counters --------------------------------------------------------------------------------
-- /metrics and `status` showed jobs and outbox rows by state, and the spool's instances and
-- bytes, with count(*) over the whole tables: a full scan of the outbox (2 M rows) on every
-- scrape. Triggers now keep the counts in the same transaction as the change.
--
-- Each change INSERTs a signed delta row here instead of updating one row per counter: a single
-- counter row would be locked by every transaction that moves a job or an outbox row until it
-- commits (workers, senders and receivers would queue behind each other, and two transactions
-- moving rows in opposite directions could deadlock). Inserts never wait. A reader sums the rows
-- of its counter; the retention task folds the deltas into one row per key now and then
-- (db::stats::fold_tallies), so a sum reads a handful of rows.
CREATE TABLE tallies (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'jobs' (by state), 'outbox' (by destination and state), 'spool' (instances whose file is
    -- in the spool: purged_at IS NULL)
    counter     text NOT NULL,
    state       text NOT NULL DEFAULT '',
    destination text NOT NULL DEFAULT '',
    n           bigint NOT NULL,
    bytes       bigint NOT NULL DEFAULT 0   -- 'spool': the instances' size_bytes
);
CREATE INDEX tallies_counter_idx ON tallies (counter);

CREATE FUNCTION tally_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO tallies (counter, state, n) VALUES ('jobs', OLD.state, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO tallies (counter, state, n) VALUES ('jobs', NEW.state, 1);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION tally_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO tallies (counter, state, destination, n)
        VALUES ('outbox', OLD.state, OLD.destination_name, -1);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        INSERT INTO tallies (counter, state, destination, n)
        VALUES ('outbox', NEW.state, NEW.destination_name, 1);
    END IF;
    RETURN NULL;
END $$;

-- an instance counts while its file is in the spool (purged_at IS NULL), with its size
CREATE FUNCTION tally_spool() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.purged_at IS NULL THEN
        INSERT INTO tallies (counter, n, bytes) VALUES ('spool', -1, -OLD.size_bytes);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') AND NEW.purged_at IS NULL THEN
        INSERT INTO tallies (counter, n, bytes) VALUES ('spool', 1, NEW.size_bytes);
    END IF;
    RETURN NULL;
END $$;

-- TRUNCATE fires no row trigger: start the counter again from zero
CREATE FUNCTION tally_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM tallies WHERE counter = TG_ARGV[0];
    RETURN NULL;
END $$;

-- Updates that leave the counted columns as they were (a lease renewal, an attempt count) add
-- nothing: the WHEN clauses skip the function call.
CREATE TRIGGER jobs_tally AFTER INSERT OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION tally_jobs();
CREATE TRIGGER jobs_tally_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tally_jobs();
CREATE TRIGGER jobs_tally_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION tally_truncate('jobs');

CREATE TRIGGER outbox_tally AFTER INSERT OR DELETE ON outbox
    FOR EACH ROW EXECUTE FUNCTION tally_outbox();
CREATE TRIGGER outbox_tally_update AFTER UPDATE OF state, destination_name ON outbox
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state
                       OR OLD.destination_name IS DISTINCT FROM NEW.destination_name)
    EXECUTE FUNCTION tally_outbox();
CREATE TRIGGER outbox_tally_truncate AFTER TRUNCATE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION tally_truncate('outbox');

CREATE TRIGGER instances_tally AFTER INSERT OR DELETE ON instances
    FOR EACH ROW EXECUTE FUNCTION tally_spool();
CREATE TRIGGER instances_tally_update AFTER UPDATE OF purged_at, size_bytes ON instances
    FOR EACH ROW WHEN (OLD.purged_at IS DISTINCT FROM NEW.purged_at
                       OR OLD.size_bytes IS DISTINCT FROM NEW.size_bytes)
    EXECUTE FUNCTION tally_spool();
CREATE TRIGGER instances_tally_truncate AFTER TRUNCATE ON instances
    FOR EACH STATEMENT EXECUTE FUNCTION tally_truncate('spool');

-- The counts so far. The triggers above were created first: CREATE TRIGGER locks each table
-- against writes until this migration commits, so no change slips between a count and its
-- trigger.
INSERT INTO tallies (counter, state, n)
SELECT 'jobs', state, count(*) FROM jobs GROUP BY state;
INSERT INTO tallies (counter, state, destination, n)
SELECT 'outbox', state, destination_name, count(*) FROM outbox GROUP BY state, destination_name;
INSERT INTO tallies (counter, n, bytes)
SELECT 'spool', count(*), COALESCE(sum(size_bytes), 0) FROM instances WHERE purged_at IS NULL;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        EXECUTE 'GRANT SELECT ON tallies TO cxr_readonly';
    END IF;
END
$$;

-- ---- studies never reported -------------------------------------------------------------------
-- `cxr-worker findings --state unreported` looked for the studies without a report by trying
-- every study of the year, newest first, when few or none are. The studies not reported yet
-- are kept here by triggers (a study is added when it is first received, removed by its first
-- report), so the search starts from them. A table of its own rather than a flag on `studies`:
-- reporting deletes a row here instead of updating the study's row, which a C-STORE of the same
-- study would otherwise wait for.
CREATE TABLE studies_unreported (
    study_instance_uid text PRIMARY KEY
);

CREATE FUNCTION study_received() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO studies_unreported VALUES (NEW.study_instance_uid) ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION study_gone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM studies_unreported WHERE study_instance_uid = OLD.study_instance_uid;
    RETURN NULL;
END $$;

CREATE FUNCTION study_reported() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM studies_unreported WHERE study_instance_uid = NEW.study_instance_uid;
    RETURN NULL;
END $$;

-- a study whose last report is deleted (never by cxr-worker itself) is unreported again
CREATE FUNCTION report_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO studies_unreported
    SELECT s.study_instance_uid FROM studies s
    WHERE s.study_instance_uid = OLD.study_instance_uid
      AND NOT EXISTS (SELECT 1 FROM reports r WHERE r.study_instance_uid = OLD.study_instance_uid)
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION reports_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO studies_unreported SELECT study_instance_uid FROM studies ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;

CREATE FUNCTION studies_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM studies_unreported;
    RETURN NULL;
END $$;

CREATE TRIGGER studies_unreported_insert AFTER INSERT ON studies
    FOR EACH ROW EXECUTE FUNCTION study_received();
CREATE TRIGGER studies_unreported_delete AFTER DELETE ON studies
    FOR EACH ROW EXECUTE FUNCTION study_gone();
CREATE TRIGGER studies_unreported_truncate AFTER TRUNCATE ON studies
    FOR EACH STATEMENT EXECUTE FUNCTION studies_truncated();
CREATE TRIGGER reports_unreported AFTER INSERT ON reports
    FOR EACH ROW EXECUTE FUNCTION study_reported();
CREATE TRIGGER reports_unreported_delete AFTER DELETE ON reports
    FOR EACH ROW EXECUTE FUNCTION report_deleted();
CREATE TRIGGER reports_unreported_truncate AFTER TRUNCATE ON reports
    FOR EACH STATEMENT EXECUTE FUNCTION reports_truncated();

-- (after the triggers: see the counts above)
INSERT INTO studies_unreported
SELECT study_instance_uid FROM studies s
WHERE NOT EXISTS (SELECT 1 FROM reports r WHERE r.study_instance_uid = s.study_instance_uid);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        EXECUTE 'GRANT SELECT ON studies_unreported TO cxr_readonly';
    END IF;
END
$$;

-- ---- indexes ---------------------------------------------------------------------------------
-- /readyz and `status`: when a job last progressed (max(updated_at) of the jobs not queued) read
-- the whole table; backwards through this index it is one entry.
CREATE INDEX jobs_progress_idx ON jobs (updated_at) WHERE state <> 'queued';

-- `cxr-worker findings` lists studies newest first (study date, then arrival, then UID): in
-- this order the newest `limit` studies are read and the rest never, instead of sorting every
-- study of the year.
CREATE INDEX studies_newest_idx
    ON studies (study_date DESC NULLS LAST, first_received_at DESC, study_instance_uid);

-- Retention looks only at files still in the spool (or the archive), oldest first: after a year
-- almost every row is purged, and the old indexes made it walk past all of them each pass. The
-- outputs' index is by id, the order their query takes them in (by created_at, the planner
-- would rather walk the primary key, expecting the old unpurged rows to be as many as the rest).
-- instances_spooled_idx replaces instances_on_disk_idx (0004, by study), which nothing reads any
-- more: the spool metric reads the tallies.
CREATE INDEX instances_spooled_idx ON instances (received_at) WHERE purged_at IS NULL;
DROP INDEX instances_on_disk_idx;
CREATE INDEX image_outputs_archived_idx ON image_outputs (id) WHERE purged_at IS NULL;

-- `cxr-worker status`: the latest failures and skips (the two arms of the `failures` view, each
-- read newest first) ...
CREATE INDEX instances_failures_idx ON instances (state_changed_at)
    WHERE state IN ('failed', 'skipped');
CREATE INDEX jobs_failures_idx ON jobs (updated_at)
    WHERE state = 'failed' OR (state = 'queued' AND attempts > 0);
-- ... and per destination: its address as last recorded (its newest row), its last delivery,
-- and its last error (the newest failed attempt).
CREATE INDEX outbox_destination_idx ON outbox (destination_name, id);
CREATE INDEX outbox_destination_sent_idx ON outbox (destination_name, sent_at);
CREATE INDEX outbox_attempts_error_idx ON outbox_attempts (finished_at) WHERE error IS NOT NULL;

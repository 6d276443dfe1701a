-- A year of data for a large department, for scripts/bench-year.sh: run with psql on a freshly
-- migrated database, `-v instances=N` (1,000,000 by default in the script). PostgreSQL's own
-- bulk tools only: INSERT ... SELECT over generate_series, with the foreign keys and the plain
-- indexes dropped during the load and put back (the same definitions, the same names) after it,
-- as a restore does, and the counter triggers off (the counters computed once at the end).
-- Deterministic (setseed), so two runs fill the same rows.
--
-- Shape (S = 0.3 N studies, 3-4 instances each, one series; study s is (S - s)/S of a year old,
-- the newest last; six calling AEs; study dates = arrival dates):
--   - newest 5 studies: instances `received`, no job yet (the quiet period runs);
--   - the 5 before: a job `running` (live lease), instances `analysing`;
--   - the 10 before: a job `queued` backing off before its 2nd attempt (not due);
--   - the 20 before: reported, the outbox rows `queued` for a retry (not due);
--   - 0.5 % (s % 200 = 7): the job `failed` after 5 attempts, instances `failed`, a `not_analysed` SR;
--   - the rest: job `done`, 5 % of the instances `skipped` (not a frontal view), the others
--     `analysed` with 14 findings each, one SEG and one SC per analysed image, an SR per study;
--   - 1 % (s % 100 = 42): reprocessed once (a second `reprocess` job and a revised SR);
--   - 0.1 % (s % 1000 = 13): every outbox row of the study `failed` after 5 attempts;
--   - one destination (PACS) takes SR, SEG and SC; sent rows have one attempt logged, failed rows
--     five, queued rows one;
--   - retention at 30 days: files of delivered studies older than that are purged;
--   - 100 audit messages waiting for the collector.
\set ON_ERROR_STOP on
\timing off
SET client_min_messages = warning;
SELECT setseed(0.42) \g /dev/null
SET maintenance_work_mem = '256MB';
SET synchronous_commit = off;

-- ---- drop the foreign keys and plain indexes for the load (put back at the end) -------------
CREATE TEMP TABLE saved_fk AS
SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace;
CREATE TEMP TABLE saved_idx AS
SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def
FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
WHERE c.relnamespace = 'public'::regnamespace
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid);
-- the triggers that keep counters (migration 0009, when the binary has it) are off too: the
-- counters are computed once at the end, as that migration does, and left folded, as the
-- daemon keeps them
CREATE TEMP TABLE saved_trg AS
SELECT DISTINCT tgrelid::regclass::text AS tbl FROM pg_trigger
WHERE NOT tgisinternal AND tgrelid IN (SELECT oid FROM pg_class
                                       WHERE relnamespace = 'public'::regnamespace);
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM saved_trg LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER USER', r.tbl);
    END LOOP;
    FOR r IN SELECT * FROM saved_fk LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;
    FOR r IN SELECT * FROM saved_idx LOOP
        EXECUTE format('DROP INDEX %s', r.name);
    END LOOP;
END $$;

-- ---- the studies and what happened to each ----------------------------------------------------
CREATE TEMP TABLE st AS
WITH p AS (SELECT (:instances::bigint * 3 / 10) AS s_count, :instances::bigint AS n)
SELECT s, s_count, n,
       '1.2.826.0.1.3680043.10.1234.' || s AS uid,
       -- first instance index (1-based) and how many
       ((s - 1) * n + s_count - 1) / s_count + 1 AS i0,
       (s * n + s_count - 1) / s_count - ((s - 1) * n + s_count - 1) / s_count AS k,
       now() - make_interval(secs => (s_count - s) * 31536000.0 / s_count + 60) AS at,
       CASE WHEN s > s_count - 5 THEN 'received'
            WHEN s > s_count - 10 THEN 'running'
            WHEN s > s_count - 20 THEN 'queued'
            WHEN s % 200 = 7 THEN 'failed'
            ELSE 'done' END AS job,
       CASE WHEN s > s_count - 40 AND s <= s_count - 20 THEN 'queued'
            WHEN s % 1000 = 13 THEN 'failed'
            ELSE 'sent' END AS outbox,
       -- reprocessed two days after arrival: only studies older than that
       s % 100 = 42 AND (s_count - s) * 365.0 / s_count > 3 AS reprocessed
FROM p, generate_series(1, p.s_count) s;
-- the newest studies arrived minutes ago: keep them newest whatever the scale
UPDATE st SET at = now() - make_interval(secs => (s_count - s) * 60 + 30) WHERE s > s_count - 40;
ALTER TABLE st ADD PRIMARY KEY (s);
ANALYZE st;

INSERT INTO studies (study_instance_uid, patient_id, patient_name, issuer_of_patient_id,
    patient_birth_date, patient_sex, accession_number, study_id, study_date, study_time,
    study_description, referring_physician_name, specific_character_set, first_received_at)
SELECT uid, 'P' || (s * 7919 % (s_count * 2 / 3 + 1)), 'Patient^' || s, 'HOSP',
       to_char(date '1940-01-01' + (s * 37 % 25000)::int, 'YYYYMMDD'), (ARRAY['F', 'M'])[1 + s % 2],
       'ACC' || lpad(s::text, 9, '0'), s::text, at::date, to_char(at, 'HH24MISS'),
       (ARRAY['XR CHEST PA AND LATERAL', 'XR CHEST 1 VIEW', 'XR CHEST PORTABLE'])[1 + s % 3],
       'Referrer^' || s % 400, 'ISO_IR 100', at
FROM st;

INSERT INTO series (series_instance_uid, study_instance_uid, modality, body_part_examined,
    series_number, series_description, first_received_at)
SELECT uid || '.1', uid, (ARRAY['DX', 'CR'])[1 + s % 2], 'CHEST', 1, 'CHEST', at FROM st;

-- ---- instances -------------------------------------------------------------------------------
CREATE TEMP TABLE inst AS
SELECT st.s, st.uid AS study, st.uid || '.1.' || j AS sop, j, st.i0 + j - 1 AS i, st.job,
       st.outbox, st.at + make_interval(secs => j) AS received_at,
       CASE st.job WHEN 'received' THEN 'received' WHEN 'running' THEN 'analysing'
                   WHEN 'queued' THEN 'analysing' WHEN 'failed' THEN 'failed'
                   ELSE CASE WHEN (st.i0 + j - 1) % 20 = 0 THEN 'skipped' ELSE 'analysed' END
       END AS state
FROM st, generate_series(1, st.k) j;

INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid, sop_class_uid,
    transfer_syntax_uid, instance_number, modality, body_part_examined, view_position,
    calling_ae_title, called_ae_title, peer_address, spool_key, size_bytes, received_at,
    duplicate_count, state, state_reason, state_changed_at, purged_at)
SELECT sop, study || '.1', study, '1.2.840.10008.5.1.4.1.1.1.1', '1.2.840.10008.1.2.1', j,
       'DX', 'CHEST', CASE WHEN state = 'skipped' THEN 'LL' ELSE 'PA' END,
       (ARRAY['DX_ROOM1', 'DX_ROOM2', 'DX_ER', 'CR_WARD', 'MOBILE1', 'MOBILE2'])[1 + s % 6],
       'CXR_WORKER', '10.1.' || (s % 6) || '.20', study || '/' || sop || '.dcm',
       8000000 + (i * 7919) % 7000000, received_at, CASE WHEN i % 500 = 0 THEN 1 ELSE 0 END,
       state,
       CASE state WHEN 'skipped' THEN 'not a frontal chest view (ViewPosition LL)'
                  WHEN 'failed' THEN 'taken 5 times without finishing' END,
       received_at + interval '20 seconds',
       CASE WHEN job = 'done' AND outbox = 'sent'
                 AND received_at < now() - interval '30 days 1 minute'
            THEN received_at + interval '30 days 1 minute' END
FROM inst;

-- ---- jobs, analyses, findings ------------------------------------------------------------------
INSERT INTO jobs (study_instance_uid, kind, state, attempts, run_after, lease_owner,
    lease_expires_at, last_error, created_at, updated_at, finished_at)
SELECT uid, 'analyse', job,
       CASE job WHEN 'failed' THEN 5 ELSE 1 END,
       -- (an hour ahead: still not due when the measurements end, however long the fill took)
       CASE WHEN job = 'queued' THEN now() + interval '1 hour' ELSE at + interval '10 seconds' END,
       CASE WHEN job = 'running' THEN 'other-host:4242:' || s % 2 END,
       CASE WHEN job = 'running' THEN now() + interval '1 hour' END,
       CASE job WHEN 'failed' THEN 'taken 5 times without finishing'
                WHEN 'queued' THEN 'decode helper timed out' END,
       at + interval '10 seconds', at + interval '30 seconds',
       CASE WHEN job IN ('done', 'failed') THEN at + interval '30 seconds' END
FROM st WHERE job <> 'received'
ORDER BY s;
-- the reprocess jobs of the year, after every first job (ids grow with time within each kind)
INSERT INTO jobs (study_instance_uid, kind, state, attempts, run_after, created_at, updated_at,
    finished_at)
SELECT uid, 'reprocess', 'done', 1, at + interval '2 days', at + interval '2 days',
       at + interval '2 days 30 seconds', at + interval '2 days 30 seconds'
FROM st WHERE reprocessed ORDER BY s;

CREATE TEMP TABLE job_of AS
SELECT DISTINCT ON (study_instance_uid) study_instance_uid AS study, id FROM jobs
ORDER BY study_instance_uid, id DESC;
ALTER TABLE job_of ADD PRIMARY KEY (study);

INSERT INTO analyses (sop_instance_uid, study_instance_uid, job_id, segmenter_name,
    segmenter_version, classifier_name, classifier_version, trained, execution_provider,
    left_lung_mm2, right_lung_mm2, lung_area_fraction, heart_mm2, heart_area_fraction,
    cardiothoracic_ratio, decode_ms, preprocess_ms, segment_ms, classify_ms, analysed_at)
SELECT sop, study, jo.id, 'anatomy-segmenter', '1.0.0', 'anatomy-xnet', '1.0.0', false, 'cpu',
       15000 + random() * 8000, 17000 + random() * 8000, NULL, 9000 + random() * 5000, NULL,
       0.40 + random() * 0.15, 150 + random() * 100, 5 + random() * 3, 50 + random() * 20,
       200 + random() * 50, received_at + interval '20 seconds'
FROM inst JOIN job_of jo USING (study)
WHERE state = 'analysed';

INSERT INTO findings (sop_instance_uid, study_instance_uid, label, label_index, probability,
    threshold, present)
SELECT sop_instance_uid, study_instance_uid, label, idx - 1, prob, 0.5, prob >= 0.5
FROM (SELECT a.sop_instance_uid, a.study_instance_uid, l.label, l.idx,
             (random() ^ 4)::real AS prob   -- about 16 % present at the 0.5 threshold
      FROM analyses a
      CROSS JOIN unnest(ARRAY['Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass',
          'Nodule', 'Pneumonia', 'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema',
          'Fibrosis', 'Pleural_Thickening', 'Hernia']) WITH ORDINALITY l(label, idx)) f;

-- ---- reports, image outputs, outbox ----------------------------------------------------------
INSERT INTO reports (study_instance_uid, job_id, kind, sr_sop_instance_uid,
    sr_series_instance_uid, instance_number, predecessor_sop_instance_uid, analysed_images,
    archive_path, reason, created_at)
SELECT uid, j.id, CASE WHEN job = 'failed' THEN 'not_analysed' ELSE 'findings' END,
       uid || '.9.1', uid || '.9', 1, NULL,
       CASE WHEN job = 'failed' THEN 0 ELSE coalesce(an.n, 0) END,
       '/var/lib/cxr-worker/archive/' || uid || '/sr-1.dcm',
       CASE WHEN job = 'failed' THEN 'taken 5 times without finishing' END,
       at + interval '30 seconds'
FROM st
JOIN (SELECT study_instance_uid, min(id) AS id FROM jobs GROUP BY 1) j
     ON j.study_instance_uid = st.uid
LEFT JOIN (SELECT study_instance_uid, count(*) AS n FROM analyses GROUP BY 1) an
     ON an.study_instance_uid = st.uid
WHERE job IN ('done', 'failed')
ORDER BY s;
INSERT INTO reports (study_instance_uid, job_id, kind, sr_sop_instance_uid,
    sr_series_instance_uid, instance_number, predecessor_sop_instance_uid, analysed_images,
    archive_path, created_at)
SELECT r.study_instance_uid, jo.id, 'findings', st.uid || '.9.2', st.uid || '.9', 2,
       r.sr_sop_instance_uid, r.analysed_images,
       '/var/lib/cxr-worker/archive/' || st.uid || '/sr-2.dcm', st.at + interval '2 days 30 seconds'
FROM st JOIN reports r ON r.study_instance_uid = st.uid JOIN job_of jo ON jo.study = st.uid
WHERE st.reprocessed
ORDER BY st.s;

INSERT INTO image_outputs (kind, study_instance_uid, source_sop_instance_uid, sop_instance_uid,
    series_instance_uid, sop_class_uid, instance_number, job_id, archive_path, created_at,
    purged_at)
SELECT kd.kind, i.study, i.sop, i.study || '.8' || kd.n || '.' || i.j, i.study || '.8' || kd.n,
       kd.class, i.j, a.job_id,
       '/var/lib/cxr-worker/archive/' || i.study || '/' || kd.kind || '-' || i.j || '.dcm',
       i.received_at + interval '25 seconds',
       CASE WHEN i.outbox = 'sent' AND i.received_at < now() - interval '30 days 1 minute'
            THEN i.received_at + interval '30 days 1 minute' END
FROM inst i JOIN analyses a ON a.sop_instance_uid = i.sop
CROSS JOIN (VALUES ('seg', 1, '1.2.840.10008.5.1.4.1.1.66.4'),
                   ('sc', 2, '1.2.840.10008.5.1.4.1.1.7')) kd(kind, n, class)
ORDER BY i.received_at, kd.n;

-- one row per object for PACS, in the order they were made
INSERT INTO outbox (kind, study_instance_uid, sop_class_uid, sop_instance_uid, destination_name,
    destination_ae_title, destination_host, destination_port, archive_path, state, attempts,
    next_attempt_at, last_attempt_at, last_status, last_error, transfer_syntax_uid, sent_at,
    created_at, updated_at)
SELECT o.kind, o.study, o.class, o.sop, 'PACS', 'PACS', '10.1.0.5', 104, o.path, st.outbox,
       CASE st.outbox WHEN 'failed' THEN 5 ELSE 1 END,
       CASE WHEN st.outbox = 'queued' THEN now() + interval '1 hour' ELSE o.at END,
       o.at + interval '1 second',
       CASE WHEN st.outbox = 'sent' THEN 0 END,
       CASE st.outbox WHEN 'failed' THEN 'association rejected: called AE title not recognized'
                      WHEN 'queued' THEN 'connection refused' END,
       CASE WHEN st.outbox = 'sent' THEN '1.2.840.10008.1.2.1' END,
       CASE WHEN st.outbox = 'sent' THEN o.at + interval '2 seconds' END,
       o.at, o.at + interval '2 seconds'
FROM (SELECT study_instance_uid AS study, sr_sop_instance_uid AS sop, 'sr' AS kind,
             '1.2.840.10008.5.1.4.1.1.88.34' AS class, archive_path AS path, created_at AS at
      FROM reports
      UNION ALL
      SELECT study_instance_uid, sop_instance_uid, kind, sop_class_uid, archive_path, created_at
      FROM image_outputs) o
JOIN st ON st.uid = o.study
ORDER BY o.at;

INSERT INTO outbox_attempts (outbox_id, attempt, lease_owner, started_at, finished_at, outcome,
    status, error, transfer_syntax_uid, retry_at)
SELECT o.id, n, 'cxr-host:1234:0', o.created_at + make_interval(mins => n - 1),
       o.created_at + make_interval(mins => n - 1, secs => 1),
       CASE WHEN o.state = 'sent' THEN 'sent' WHEN o.state = 'failed' AND n = 5 THEN 'failed'
            ELSE 'retry' END,
       CASE WHEN o.state = 'sent' THEN 0 END, o.last_error, o.transfer_syntax_uid,
       CASE WHEN o.state <> 'sent' AND NOT (o.state = 'failed' AND n = 5)
            THEN o.created_at + make_interval(mins => n) END
FROM outbox o, generate_series(1, o.attempts) n
ORDER BY o.id, n;

INSERT INTO audit_queue (created_at, event_kind, severity, hostname, procid, message)
SELECT now() - make_interval(secs => 100 - g), 'instances_received', 5, 'cxr-host', '1234',
       '<AuditMessage><EventIdentification EventActionCode="C" EventOutcomeIndicator="0"/>'
       || repeat('<ParticipantObjectIdentification/>', 10) || '</AuditMessage>'
FROM generate_series(1, 100) g;

-- ---- put the indexes and foreign keys back ---------------------------------------------------
DO $$
DECLARE r record;
BEGIN
    FOR r IN SELECT * FROM saved_idx LOOP
        EXECUTE r.def;
    END LOOP;
    FOR r IN SELECT * FROM saved_fk LOOP
        EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I %s', r.tbl, r.conname, r.def);
    END LOOP;
    FOR r IN SELECT * FROM saved_trg LOOP
        EXECUTE format('ALTER TABLE %s ENABLE TRIGGER USER', r.tbl);
    END LOOP;
    IF to_regclass('tallies') IS NOT NULL THEN
        DELETE FROM tallies;
        INSERT INTO tallies (counter, state, n)
        SELECT 'jobs', state, count(*) FROM jobs GROUP BY state;
        INSERT INTO tallies (counter, state, destination, n)
        SELECT 'outbox', state, destination_name, count(*) FROM outbox
        GROUP BY state, destination_name;
        INSERT INTO tallies (counter, n, bytes)
        SELECT 'spool', count(*), COALESCE(sum(size_bytes), 0) FROM instances
        WHERE purged_at IS NULL;
    END IF;
    IF to_regclass('studies_unreported') IS NOT NULL THEN
        DELETE FROM studies_unreported;
        INSERT INTO studies_unreported
        SELECT study_instance_uid FROM studies s
        WHERE NOT EXISTS (SELECT 1 FROM reports rp
                          WHERE rp.study_instance_uid = s.study_instance_uid);
    END IF;
END $$;

-- Analysis: study jobs (the shared queue), per-image findings, per-study reports, and the views
-- and read-only role for admins.

-- One job analyses the not-yet-analysed instances of one study and produces its report. A study
-- is ready when nothing has arrived for the quiet period; the worker that notices creates the
-- job (several workers may: at most one open job per study). Workers on any machine dequeue
-- with FOR UPDATE SKIP LOCKED and hold a lease; a crashed worker's job is taken again when its
-- lease expires.
CREATE TABLE jobs (
    id                  bigserial PRIMARY KEY,
    study_instance_uid  text NOT NULL REFERENCES studies,
    kind                text NOT NULL DEFAULT 'analyse' CHECK (kind IN ('analyse', 'reprocess')),
    state               text NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts            integer NOT NULL DEFAULT 0,
    run_after           timestamptz NOT NULL DEFAULT now(),
    lease_owner         text,           -- worker id (host:pid:n) while running
    lease_expires_at    timestamptz,
    last_error          text,           -- why the last attempt failed (no patient data)
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
CREATE UNIQUE INDEX jobs_one_open_per_study ON jobs (study_instance_uid)
    WHERE state IN ('queued', 'running');
CREATE INDEX jobs_due_idx ON jobs (run_after) WHERE state = 'queued';
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';

-- The result of running the models on one image.
CREATE TABLE analyses (
    sop_instance_uid    text PRIMARY KEY REFERENCES instances,
    study_instance_uid  text NOT NULL REFERENCES studies,
    job_id              bigint REFERENCES jobs,
    segmenter_name      text NOT NULL,
    segmenter_version   text NOT NULL,
    classifier_name     text NOT NULL,
    classifier_version  text NOT NULL,
    trained             boolean NOT NULL,    -- false: untrained weights, not clinically meaningful
    execution_provider  text NOT NULL,       -- tensorrt | cuda | cpu
    left_lung_mm2       double precision,
    right_lung_mm2      double precision,
    lung_area_fraction  double precision,    -- of the image, when no pixel spacing is known
    heart_mm2           double precision,
    heart_area_fraction double precision,
    cardiothoracic_ratio double precision,
    decode_ms           double precision,
    preprocess_ms       double precision,
    segment_ms          double precision,
    classify_ms         double precision,
    analysed_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analyses_study_idx ON analyses (study_instance_uid);

-- One row per label per analysed image.
CREATE TABLE findings (
    sop_instance_uid    text NOT NULL REFERENCES analyses ON DELETE CASCADE,
    study_instance_uid  text NOT NULL REFERENCES studies,
    label               text NOT NULL,   -- NIH ChestX-ray14 label, e.g. 'Cardiomegaly'
    label_index         smallint NOT NULL, -- its position in the model's label order
    probability         real NOT NULL CHECK (probability BETWEEN 0 AND 1),
    threshold           real NOT NULL,   -- the model's operating threshold for this label
    present             boolean NOT NULL, -- probability >= threshold
    PRIMARY KEY (sop_instance_uid, label)
);
CREATE INDEX findings_label_idx ON findings (label) WHERE present;
CREATE INDEX findings_study_idx ON findings (study_instance_uid);

-- Each SR produced for a study; a revision names its predecessor.
CREATE TABLE reports (
    id                      bigserial PRIMARY KEY,
    study_instance_uid      text NOT NULL REFERENCES studies,
    job_id                  bigint REFERENCES jobs,
    kind                    text NOT NULL CHECK (kind IN ('findings', 'not_analysed')),
    sr_sop_instance_uid     text NOT NULL UNIQUE,
    sr_series_instance_uid  text NOT NULL,
    instance_number         integer NOT NULL,
    predecessor_sop_instance_uid text REFERENCES reports (sr_sop_instance_uid),
    analysed_images         integer NOT NULL,
    archive_path            text NOT NULL,  -- the SR as sent, durable before it is queued
    reason                  text,           -- for 'not_analysed': why
    created_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reports_study_idx ON reports (study_instance_uid, id DESC);

-- ---- views for admins -----------------------------------------------------------------------

-- Per study, per label: the maximum probability over its analysed frontal images.
CREATE VIEW study_findings AS
SELECT f.study_instance_uid, f.label,
       max(f.probability) AS max_probability,
       bool_or(f.present) AS present,
       count(*) AS images
FROM findings f
GROUP BY f.study_instance_uid, f.label;

-- The latest result per study, with what an admin searches by.
CREATE VIEW latest_results AS
SELECT s.study_instance_uid, s.accession_number, s.patient_id, s.study_date,
       s.study_description,
       (SELECT count(*) FROM instances i WHERE i.study_instance_uid = s.study_instance_uid) AS instances,
       r.kind AS report_kind, r.sr_sop_instance_uid, r.created_at AS reported_at, r.reason,
       (SELECT string_agg(sf.label, ', ' ORDER BY sf.label) FROM study_findings sf
         WHERE sf.study_instance_uid = s.study_instance_uid AND sf.present) AS positive_labels,
       j.state AS job_state, j.last_error AS job_error
FROM studies s
LEFT JOIN LATERAL (SELECT * FROM reports r WHERE r.study_instance_uid = s.study_instance_uid
                   ORDER BY r.id DESC LIMIT 1) r ON true
LEFT JOIN LATERAL (SELECT * FROM jobs j WHERE j.study_instance_uid = s.study_instance_uid
                   ORDER BY j.id DESC LIMIT 1) j ON true;

-- Positive findings by label and study date.
CREATE VIEW positive_findings AS
SELECT f.label, s.study_date, s.accession_number, s.patient_id, f.study_instance_uid,
       f.sop_instance_uid, f.probability, f.threshold
FROM findings f JOIN studies s USING (study_instance_uid)
WHERE f.present;

-- What failed or was skipped, and why.
CREATE VIEW failures AS
SELECT 'instance' AS what, i.study_instance_uid, i.sop_instance_uid AS id, i.state,
       i.state_reason AS reason, i.state_changed_at AS at
FROM instances i WHERE i.state IN ('failed', 'skipped')
UNION ALL
SELECT 'job', j.study_instance_uid, j.id::text, j.state, j.last_error, j.updated_at
FROM jobs j WHERE j.state = 'failed' OR (j.state = 'queued' AND j.attempts > 0);

-- A read-only role for admins (NOLOGIN: grant it to a login role). Creating roles needs
-- CREATEROLE; without it the views still exist and a DBA can create the role.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        CREATE ROLE cxr_readonly NOLOGIN;
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'cxr_readonly not created: no CREATEROLE privilege';
    WHEN duplicate_object OR unique_violation THEN
        NULL; -- created meanwhile by another database's migration (roles are cluster-wide)
END $$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA public TO cxr_readonly';
        EXECUTE 'GRANT SELECT ON studies, series, instances, jobs, analyses, findings, reports,
                 study_findings, latest_results, positive_findings, failures TO cxr_readonly';
    END IF;
END $$;

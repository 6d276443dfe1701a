-- Image outputs (issue 11): besides the SR, the outbox carries the anatomy Segmentation ('seg')
-- and the Secondary Capture picture ('sc') of each analysed image. Each is an outbox row of its
-- own, so a destination that takes only some kinds simply gets fewer rows.
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('sr', 'seg', 'sc'));

-- The SEG and SC issued for each analysed image. They are per image: a late image of the study
-- gets its own, and the revised SR references the newest of every image; an image analysed
-- again (reprocess) gets new ones in the same series, with the next instance number.
CREATE TABLE image_outputs (
    id bigserial PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('seg', 'sc')),
    study_instance_uid text NOT NULL,
    source_sop_instance_uid text NOT NULL,
    sop_instance_uid text NOT NULL UNIQUE,
    series_instance_uid text NOT NULL,
    sop_class_uid text NOT NULL,
    instance_number integer NOT NULL,
    job_id bigint NOT NULL,
    archive_path text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- when retention removed the archived file (after every destination got it); the row stays
    purged_at timestamptz
);
CREATE INDEX image_outputs_study ON image_outputs (study_instance_uid, kind, id DESC);

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cxr_readonly') THEN
        EXECUTE 'GRANT SELECT ON image_outputs TO cxr_readonly';
    END IF;
END
$$;

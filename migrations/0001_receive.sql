-- Receive: what arrived, from whom, where its bytes are. One row per SOP instance; studies and
-- series hold what an admin needs to find a study. Patient data lives here, never in logs.

CREATE TABLE studies (
    study_instance_uid      text PRIMARY KEY,
    patient_id              text,
    patient_name            text,
    issuer_of_patient_id    text,
    patient_birth_date      text,          -- DICOM DA as received (may be partial or empty)
    patient_sex             text,
    accession_number        text,
    study_id                text,
    study_date              date,          -- NULL when absent or not a valid DA
    study_time              text,          -- DICOM TM as received
    study_description       text,
    referring_physician_name text,
    specific_character_set  text,          -- of the first instance received, for the SR copy
    first_received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX studies_accession_idx ON studies (accession_number);
CREATE INDEX studies_patient_idx ON studies (patient_id);
CREATE INDEX studies_date_idx ON studies (study_date);

CREATE TABLE series (
    series_instance_uid     text PRIMARY KEY,
    study_instance_uid      text NOT NULL REFERENCES studies,
    modality                text,
    body_part_examined      text,
    series_number           integer,
    series_description      text,
    first_received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX series_study_idx ON series (study_instance_uid);

CREATE TABLE instances (
    sop_instance_uid        text PRIMARY KEY,
    series_instance_uid     text NOT NULL REFERENCES series,
    study_instance_uid      text NOT NULL REFERENCES studies,
    sop_class_uid           text NOT NULL,
    transfer_syntax_uid     text NOT NULL,  -- as received and as stored
    instance_number         integer,
    modality                text,
    body_part_examined      text,
    view_position           text,
    calling_ae_title        text NOT NULL,
    called_ae_title         text NOT NULL,
    peer_address            text NOT NULL,
    spool_key               text NOT NULL,  -- where the storage backend keeps the Part 10 file
    size_bytes              bigint NOT NULL,
    received_at             timestamptz NOT NULL DEFAULT now(),
    -- the same SOP Instance UID sent again: acknowledged, first copy kept, counted here
    duplicate_count         integer NOT NULL DEFAULT 0,
    last_duplicate_at       timestamptz,
    -- processing state: received → analysed | skipped | failed (reason in state_reason)
    state                   text NOT NULL DEFAULT 'received'
                            CHECK (state IN ('received', 'analysing', 'analysed', 'skipped', 'failed')),
    state_reason            text,
    state_changed_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX instances_study_idx ON instances (study_instance_uid);
CREATE INDEX instances_state_idx ON instances (state) WHERE state <> 'analysed';
CREATE INDEX instances_received_idx ON instances (received_at);

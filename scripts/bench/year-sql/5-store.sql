-- store: record a new instance (studies, series, instances)
\set r random(1, 1000000000)
BEGIN;
INSERT INTO studies (study_instance_uid, patient_id, patient_name, issuer_of_patient_id,
    patient_birth_date, patient_sex, accession_number, study_id, study_date, study_time,
    study_description, referring_physician_name, specific_character_set)
VALUES ('1.2.826.0.1.3680043.10.1234.7.' || :r::text, 'PBENCH', 'Bench^Patient', NULL,
    '19600101', 'F', 'BENCH', '1', current_date, '120000', 'XR CHEST', NULL, 'ISO_IR 100')
ON CONFLICT (study_instance_uid) DO NOTHING;
INSERT INTO series (series_instance_uid, study_instance_uid, modality, body_part_examined,
    series_number, series_description)
VALUES ('1.2.826.0.1.3680043.10.1234.7.' || :r::text || '.1',
    '1.2.826.0.1.3680043.10.1234.7.' || :r::text, 'DX', 'CHEST', 1, NULL)
ON CONFLICT (series_instance_uid) DO NOTHING;
INSERT INTO instances (sop_instance_uid, series_instance_uid, study_instance_uid,
    sop_class_uid, transfer_syntax_uid, instance_number, modality, body_part_examined,
    view_position, calling_ae_title, called_ae_title, peer_address, spool_key, size_bytes)
VALUES ('1.2.826.0.1.3680043.10.1234.7.' || :r::text || '.1.1',
    '1.2.826.0.1.3680043.10.1234.7.' || :r::text || '.1',
    '1.2.826.0.1.3680043.10.1234.7.' || :r::text, '1.2.840.10008.5.1.4.1.1.1.1',
    '1.2.840.10008.1.2.1', 1, 'DX', 'CHEST', 'PA', 'DX_ROOM1', 'CXR_WORKER', '127.0.0.1',
    'bench/key.dcm', 8000000)
ON CONFLICT (sop_instance_uid) DO NOTHING;
ROLLBACK;

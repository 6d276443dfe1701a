-- Outputs as a family: the outbox carries any outgoing Part 10 object, not only the SR. Each row
-- says what kind of object it is and its SOP Class, so a new output (a SEG, a Secondary Capture)
-- is one builder plus a kind here, with no new table and no new sender.
ALTER TABLE outbox RENAME COLUMN sr_sop_instance_uid TO sop_instance_uid;
-- what the object is: 'sr' (the findings report) today; new kinds are added to this list
ALTER TABLE outbox ADD COLUMN kind text NOT NULL DEFAULT 'sr' CHECK (kind IN ('sr'));
-- the object's SOP Class UID (every row before this migration is a Comprehensive 3D SR)
ALTER TABLE outbox ADD COLUMN sop_class_uid text NOT NULL
    DEFAULT '1.2.840.10008.5.1.4.1.1.88.34';
ALTER TABLE outbox ALTER COLUMN kind DROP DEFAULT;
ALTER TABLE outbox ALTER COLUMN sop_class_uid DROP DEFAULT;

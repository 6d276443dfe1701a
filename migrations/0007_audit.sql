-- Audit trail: the durable queue of DICOM audit messages (PS3.15 A.5, IHE ATNA). Recording an
-- event inserts its rendered message here and returns; a sender loop (src/audit/sender.rs)
-- takes the oldest rows with FOR UPDATE SKIP LOCKED (several daemons may share the database),
-- delivers them to the syslog collector and/or the local file, and deletes each row once every
-- destination configured in that sender has it. A collector outage only lets rows accumulate.
-- The message holds patient names and IDs: this table is as sensitive as the studies.

CREATE TABLE audit_queue (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- also the sending order
    -- when the event happened: the message's EventDateTime and its syslog TIMESTAMP
    created_at      timestamptz NOT NULL,
    -- which event (application_start, security_alert, instances_received, ...); for counts only
    event_kind      text NOT NULL,
    -- RFC 5424 severity: 5 (notice) for a success, 4 (warning) for a failure; the syslog PRI
    -- is facility 10 (security/authorization) * 8 + severity
    severity        smallint NOT NULL CHECK (severity BETWEEN 0 AND 7),
    -- syslog HOSTNAME and PROCID of the process that recorded the event (not the sender's)
    hostname        text NOT NULL,
    procid          text NOT NULL,
    message         text NOT NULL,  -- the XML AuditMessage, UTF-8, without line breaks
    -- delivery per destination; null: not yet (or that destination is not configured)
    syslog_sent_at  timestamptz,
    file_written_at timestamptz,
    attempts        integer NOT NULL DEFAULT 0,  -- failed delivery rounds that included the row
    last_error      text                         -- why the last failed round failed (no patient data)
);

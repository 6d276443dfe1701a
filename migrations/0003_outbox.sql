-- Send: the durable outbox. One row per (SR, destination), inserted in the same transaction that
-- records the report; a sender loop (src/outbox.rs) delivers it by C-STORE and records every
-- attempt. Rows are never deleted by the worker: `sent` and `failed` rows stay for admins.

CREATE TABLE outbox (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_instance_uid      text NOT NULL,
    sr_sop_instance_uid     text NOT NULL,
    -- the destination as configured when the row was queued; the sender uses the current
    -- [[destinations]] entry of that name and writes back the address it used
    destination_name        text NOT NULL,
    destination_ae_title    text NOT NULL,
    destination_host        text NOT NULL,
    destination_port        integer NOT NULL CHECK (destination_port BETWEEN 1 AND 65535),
    archive_path            text NOT NULL,  -- the SR as a Part 10 file ([report] archive_dir)
    -- queued → sending → sent | queued (retry) | failed; failed → queued by an admin (requeue)
    state                   text NOT NULL DEFAULT 'queued'
                            CHECK (state IN ('queued', 'sending', 'sent', 'failed')),
    attempts                integer NOT NULL DEFAULT 0,  -- since queued or last requeued
    next_attempt_at         timestamptz NOT NULL DEFAULT now(),
    -- while `sending`: which sender holds the row and until when; an expired lease (a crashed
    -- sender) makes the row due again
    lease_owner             text,
    lease_expires_at        timestamptz,
    last_attempt_at         timestamptz,
    last_status             integer,        -- DIMSE status of the last C-STORE response, if any
    last_error              text,           -- why the last attempt did not deliver
    transfer_syntax_uid     text,           -- the syntax the SR was sent in
    sent_at                 timestamptz,
    requeued_count          integer NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    -- enqueueing the same SR twice for a destination is a no-op, never a second send
    UNIQUE (sr_sop_instance_uid, destination_name),
    CHECK ((state = 'sending') = (lease_expires_at IS NOT NULL))
);
CREATE INDEX outbox_due_idx ON outbox (next_attempt_at) WHERE state = 'queued';
CREATE INDEX outbox_lease_idx ON outbox (lease_expires_at) WHERE state = 'sending';
CREATE INDEX outbox_study_idx ON outbox (study_instance_uid);
CREATE INDEX outbox_failed_idx ON outbox (updated_at) WHERE state = 'failed';

-- Every delivery attempt, kept after a requeue resets outbox.attempts.
CREATE TABLE outbox_attempts (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id               bigint NOT NULL REFERENCES outbox ON DELETE CASCADE,
    attempt                 integer NOT NULL,  -- outbox.attempts at the time
    lease_owner             text NOT NULL,
    started_at              timestamptz NOT NULL,
    finished_at             timestamptz NOT NULL DEFAULT now(),
    -- sent: delivered (success or warning); retry: queued again; failed: given up
    outcome                 text NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed')),
    status                  integer,        -- DIMSE status, when the peer answered the C-STORE
    error                   text,
    transfer_syntax_uid     text,
    retry_at                timestamptz     -- when outcome = retry
);
CREATE INDEX outbox_attempts_outbox_idx ON outbox_attempts (outbox_id);

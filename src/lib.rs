//! cxr-worker: a DICOM-native PACS worker for chest radiographs.
//!
//! The folders follow the flow, each one using only those listed before it:
//!
//! ```text
//! dicom     ground floor: UIDs, AE titles, SOP classes and transfer syntaxes, PDUs, DIMSE,
//!           the structural guard, codestream checks, header reading
//! findings  what one image's analysis yields: the one shape from analyser to database to report
//! backoff   the one exponential backoff schedule of every retry
//! tls       DICOM TLS: certificates, keys, trust anchors, the BCP 195 rustls configurations
//! config    the typed configuration, one file per section
//! db        PostgreSQL: pool, migrations, every SQL statement
//! audit     the DICOM audit trail: events → XML AuditMessage → durable queue → syslog / file
//! ingest    a received instance → spool (durable) + database; protocol-neutral
//! receive   the C-STORE SCP: associations over any byte stream → ingest
//! analyse   decode (in a helper process) → eligibility → preprocess → models → findings
//! report    the DICOM outputs built from the findings (TID 1500 SR)
//! send      the output archive, the outbox and the C-STORE SCU to each destination
//! ops       HTTP endpoints, metrics, systemd, reload, retention, disk space, logs
//! worker    study ready → job → analyse → store findings → build outputs → queue them
//! daemon    start-up order, signals, drain; admin: the admin commands
//! ```

pub mod backoff;
pub mod dicom;
pub mod findings;
pub mod tls;

pub mod config;

pub mod db;

pub mod audit;

pub mod ingest;

pub mod receive;

pub mod analyse;

pub mod report;

pub mod send;

pub mod ops;

pub mod worker;

pub mod admin;
pub mod daemon;

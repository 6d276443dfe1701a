//! cxr-worker: a DICOM-native PACS worker for chest radiographs.
//!
//! The flow, one module each:
//! receive ([`scp`]) → spool ([`spool`]) → queue ([`db`]) → decode → infer → store → report → send.
//!
//! - [`config`]: typed configuration, validated at start-up with errors that name the key.
//! - [`scp`]: the C-STORE SCP (associations, DIMSE, accepted SOP classes and transfer syntaxes).
//! - [`spool`]: durable file storage behind the [`spool::Storage`] interface.
//! - [`db`]: PostgreSQL pool, migrations, queries.
//! - [`ingest`]: wires receive → spool → database; Success only once both are durable.
//! - [`budget`]: the receiver's memory budget; beyond it data is refused, never allocated.
//! - [`worker`]: study completion → job → decode + infer → findings → SR → outbox.
//! - [`daemon`]: start-up order, signals, drain.
//! - [`report`]: the DICOM SR (TID 1500 Imaging Measurement Report) built from the findings.
//! - [`pipeline`]: decode, eligibility, preprocessing, ONNX inference and measurements.
//! - [`outbox`]: the SR archive and the durable outbox that sends each SR to every destination.
//! - [`telemetry`]: tracing set-up (text or JSON); no patient data is ever logged.
//! - [`admin`]: the admin commands (findings, status, resend, reprocess, check-config).
//! - [`systemd`]: sd_notify (READY, STATUS, STOPPING, RELOADING) and a liveness-tied watchdog.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics` (loopback by default).
//! - [`metrics`]: the `cxr_` metrics of every stage, in the Prometheus text format.
//! - [`diskspace`]: the spool's disk use and the watermark that refuses new associations.
//! - [`retention`]: removes spooled instances once their report was delivered and kept long enough.
//! - [`reload`]: SIGHUP re-reads the configuration and applies what can change safely.

pub mod admin;
pub mod budget;
pub mod config;
pub mod daemon;
pub mod db;
pub mod diskspace;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod reload;
pub mod report;
pub mod retention;
pub mod scp;
pub mod spool;
pub mod systemd;
pub mod telemetry;
pub mod worker;

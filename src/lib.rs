//! cxr-worker: a DICOM-native PACS worker for chest radiographs.
//!
//! The flow, one module each:
//! receive ([`scp`]) → spool ([`spool`]) → queue ([`db`]) → decode → infer → store → report → send.
//!
//! - [`config`]: typed configuration, validated at start-up with errors that name the key.
//! - [`telemetry`]: tracing set-up (text or JSON); no patient data is ever logged.
//! - [`systemd`]: sd_notify (READY, STATUS, STOPPING, RELOADING) and a liveness-tied watchdog.

pub mod config;
pub mod scp;
pub mod systemd;
pub mod telemetry;

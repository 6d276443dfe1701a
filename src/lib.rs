//! cxr-worker: a DICOM-native PACS worker for chest radiographs.
//!
//! The flow, one module each:
//! receive ([`scp`]) → spool ([`spool`]) → queue ([`db`]) → decode → infer → store → report → send.
//!
//! - [`config`]: typed configuration, validated at start-up with errors that name the key.
//! - [`report`]: the DICOM SR (TID 1500 Imaging Measurement Report) built from the findings.
//! - [`telemetry`]: tracing set-up (text or JSON); no patient data is ever logged.

pub mod config;
pub mod report;
pub mod scp;
pub mod telemetry;

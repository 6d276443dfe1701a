//! cxr-worker: a DICOM-native PACS worker for chest radiographs.
//!
//! The flow, one module each:
//! receive ([`scp`]) → spool ([`spool`]) → queue ([`db`]) → decode → infer → store → report → send.
//!
//! - [`config`]: typed configuration, validated at start-up with errors that name the key.
//! - [`pipeline`]: decode, eligibility, preprocessing, ONNX inference and measurements.
//! - [`telemetry`]: tracing set-up (text or JSON); no patient data is ever logged.

pub mod config;
pub mod pipeline;
pub mod scp;
pub mod telemetry;

//! Receive: the DICOM C-STORE SCP. Listener → association → DIMSE messages → spool + database.

pub mod sop_classes;

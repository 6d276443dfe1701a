//! The DICOM ground floor: the vocabulary every other layer speaks, depending on nothing above
//! it. UIDs and AE titles parsed once at the edge; the SOP classes and transfer syntaxes we take;
//! PDUs and DIMSE command sets in both directions; the structural guard every untrusted data set
//! passes before dicom-rs parses it; codestream checks before a codec runs; reading a received
//! instance's header and writing its file meta; the padding rules of text values.

pub mod ae;
pub mod codestream;
pub mod dimse;
pub mod guard;
pub mod header;
pub mod pdu;
pub mod sop_classes;
pub mod text;
pub mod uid;

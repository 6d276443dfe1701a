//! The Part 10 file of a received instance (file meta group + the data set exactly as received),
//! and the header attributes read from it for the database.

use chrono::NaiveDate;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_encoding::TransferSyntaxIndex;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

use crate::dicom::text::{element_text, trim_padding};
use crate::dicom::uid::Uid;

/// Implementation Class UID written in the file meta of stored files (2.25 UUID-derived, fixed).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.176361094755367043416387219398442396731";
/// Implementation Version Name written in the file meta of stored files.
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("CXRW_", env!("CARGO_PKG_VERSION"));

/// Why a received data set could not be accepted.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// The bytes do not parse as a data set in the negotiated transfer syntax (C000).
    #[error("data set cannot be parsed: {0}")]
    Unreadable(String),
    /// The data set parses but contradicts the command or lacks required attributes (A900).
    #[error("{0}")]
    Mismatch(String),
}

/// What the database keeps of a received instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceHeader {
    pub sop_class_uid: String,
    /// The instance, study and series UIDs, parsed once here as received UIDs.
    pub sop_instance_uid: Uid,
    pub study_instance_uid: Uid,
    pub series_instance_uid: Uid,
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub issuer_of_patient_id: Option<String>,
    pub patient_birth_date: Option<String>,
    pub patient_sex: Option<String>,
    pub accession_number: Option<String>,
    pub study_id: Option<String>,
    pub study_date: Option<NaiveDate>,
    pub study_time: Option<String>,
    pub study_description: Option<String>,
    pub referring_physician_name: Option<String>,
    pub specific_character_set: Option<String>,
    pub modality: Option<String>,
    pub body_part_examined: Option<String>,
    pub series_number: Option<i32>,
    pub series_description: Option<String>,
    pub instance_number: Option<i32>,
    pub view_position: Option<String>,
}

/// Encode the preamble, `DICM` and the file meta group for a data set received with
/// `transfer_syntax`; the data set bytes follow unchanged.
pub fn file_preamble_and_meta(
    sop_class_uid: &str,
    sop_instance_uid: &str,
    transfer_syntax: &str,
    source_ae_title: &str,
) -> Result<Vec<u8>, HeaderError> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(sop_class_uid)
        .media_storage_sop_instance_uid(sop_instance_uid)
        .transfer_syntax(transfer_syntax)
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(source_ae_title)
        .build()
        .map_err(|e| HeaderError::Mismatch(format!("cannot build file meta: {e}")))?;
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    meta.write(&mut out)
        .map_err(|e| HeaderError::Mismatch(format!("cannot write file meta: {e}")))?;
    Ok(out)
}

fn int(obj: &InMemDicomObject, tag: Tag) -> Option<i32> {
    obj.element_opt(tag).ok()??.to_int::<i32>().ok()
}

fn required(obj: &InMemDicomObject, tag: Tag, name: &str) -> Result<String, HeaderError> {
    element_text(obj, tag).ok_or_else(|| HeaderError::Mismatch(format!("{name} is missing")))
}

/// Parse a DICOM DA (`YYYYMMDD`, or the ACR-NEMA `YYYY.MM.DD`).
pub fn parse_da(raw: &str) -> Option<NaiveDate> {
    let digits: String = raw.chars().filter(|c| *c != '.').collect();
    NaiveDate::parse_from_str(&digits, "%Y%m%d").ok()
}

/// Read the header of a received data set (its elements before Pixel Data, as kept by the
/// structural guard: inflated when the transfer syntax is deflated) and check it against the
/// command: the SOP Class and Instance UIDs must match, and the study and series UIDs must be
/// present and valid.
pub fn read_header(
    header: &[u8],
    transfer_syntax: &str,
    affected_sop_class_uid: &str,
    affected_sop_instance_uid: &str,
) -> Result<InstanceHeader, HeaderError> {
    let obj = parse_header(header, transfer_syntax)?;
    check_header(&obj, affected_sop_class_uid, affected_sop_instance_uid)
}

/// Parse a header walked by the structural guard (the elements before Pixel Data, inflated when
/// the transfer syntax is deflated).
pub fn parse_header(header: &[u8], transfer_syntax: &str) -> Result<InMemDicomObject, HeaderError> {
    let uid = trim_padding(transfer_syntax);
    let explicit = EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let ts = if uid == "1.2.840.10008.1.2.1.99" {
        // the guard kept the header inflated
        &explicit
    } else {
        TransferSyntaxRegistry
            .get(uid)
            .ok_or_else(|| HeaderError::Unreadable(format!("unknown transfer syntax {uid:?}")))?
    };
    InMemDicomObject::read_dataset_with_ts(header, ts)
        .map_err(|e| HeaderError::Unreadable(e.to_string()))
}

fn check_header(
    obj: &InMemDicomObject,
    affected_sop_class_uid: &str,
    affected_sop_instance_uid: &str,
) -> Result<InstanceHeader, HeaderError> {
    let sop_class_uid = required(obj, tags::SOP_CLASS_UID, "SOP Class UID")?;
    if sop_class_uid != affected_sop_class_uid {
        return Err(HeaderError::Mismatch(format!(
            "SOP Class UID {sop_class_uid} differs from the command's {affected_sop_class_uid}"
        )));
    }
    let sop_instance_uid = required(obj, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    if sop_instance_uid != affected_sop_instance_uid {
        return Err(HeaderError::Mismatch(format!(
            "SOP Instance UID {sop_instance_uid} differs from the command's {affected_sop_instance_uid}"
        )));
    }
    let study_instance_uid = required(obj, tags::STUDY_INSTANCE_UID, "Study Instance UID")?;
    let series_instance_uid = required(obj, tags::SERIES_INSTANCE_UID, "Series Instance UID")?;
    let uid = |name: &str, raw: &str| {
        Uid::received(raw)
            .map_err(|_| HeaderError::Mismatch(format!("{name} {raw:?} is not a valid UID")))
    };
    let sop_instance_uid = uid("SOP Instance UID", &sop_instance_uid)?;
    let study_instance_uid = uid("Study Instance UID", &study_instance_uid)?;
    let series_instance_uid = uid("Series Instance UID", &series_instance_uid)?;
    Ok(InstanceHeader {
        sop_class_uid,
        sop_instance_uid,
        study_instance_uid,
        series_instance_uid,
        patient_id: element_text(obj, tags::PATIENT_ID),
        patient_name: element_text(obj, tags::PATIENT_NAME),
        issuer_of_patient_id: element_text(obj, tags::ISSUER_OF_PATIENT_ID),
        patient_birth_date: element_text(obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: element_text(obj, tags::PATIENT_SEX),
        accession_number: element_text(obj, tags::ACCESSION_NUMBER),
        study_id: element_text(obj, tags::STUDY_ID),
        study_date: element_text(obj, tags::STUDY_DATE)
            .as_deref()
            .and_then(parse_da),
        study_time: element_text(obj, tags::STUDY_TIME),
        study_description: element_text(obj, tags::STUDY_DESCRIPTION),
        referring_physician_name: element_text(obj, tags::REFERRING_PHYSICIAN_NAME),
        specific_character_set: element_text(obj, tags::SPECIFIC_CHARACTER_SET),
        modality: element_text(obj, tags::MODALITY),
        body_part_examined: element_text(obj, tags::BODY_PART_EXAMINED),
        series_number: int(obj, tags::SERIES_NUMBER),
        series_description: element_text(obj, tags::SERIES_DESCRIPTION),
        instance_number: int(obj, tags::INSTANCE_NUMBER),
        view_position: element_text(obj, tags::VIEW_POSITION),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_da("20240131"), NaiveDate::from_ymd_opt(2024, 1, 31));
        assert_eq!(parse_da("2024.01.31"), NaiveDate::from_ymd_opt(2024, 1, 31));
        assert_eq!(parse_da("2024"), None);
        assert_eq!(parse_da(""), None);
    }
}

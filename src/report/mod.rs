//! Report stage (… → store → **report** → send): the inputs of a DICOM SR and its construction.
//!
//! [`sr::build_sr`] turns a [`ReportRequest`] into a Comprehensive 3D SR with a TID 1500
//! "Imaging Measurement Report" root (IHE AI Results style). It is a pure function: no database,
//! no network, no clock (the content date/time comes in the request); only UIDs that the request
//! leaves unset are generated. The types here are plain data (serde) so a job can persist them.
//!
//! - [`codes`]: every coded concept written, with the finding code and site of each label.
//! - [`sr`]: the SR builder.
//! - [`seg`]: the Segmentation (BINARY) of one image's anatomy masks.
//! - [`sc`]: the Secondary Capture builder: the results picture of one analysed image
//!   (`analyse::overlay`) as an RGB image with burned-in annotation, in its own series.

pub mod codes;
mod dataset;
pub mod sc;
pub mod seg;
pub mod sr;

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dicom::text::element_text_lenient;
use crate::dicom::uid::is_received_uid;

pub use crate::findings::{AnalysedImage, ImageRef, LabelResult};
pub use sr::{BuiltReport, build_sr};

/// The kinds of outgoing object, as recorded in `outbox.kind` (migration 0006 lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The findings report: a Comprehensive 3D SR ([`sr`]).
    Sr,
    /// The anatomy masks of one image: a Segmentation (BINARY) ([`seg`]).
    Seg,
    /// The picture of one image's results for viewers that show only images: an RGB Secondary
    /// Capture with burned-in annotation ([`sc`]).
    Sc,
}

impl OutputKind {
    /// The name in `outbox.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sr => "sr",
            Self::Seg => "seg",
            Self::Sc => "sc",
        }
    }
}

/// An outgoing Part 10 object, whatever its kind: the archive, the outbox and the sender handle
/// it through this alone. A new output (a SEG, a Secondary Capture) is one builder whose result
/// implements it, plus its [`OutputKind`].
pub trait Output: Send + Sync {
    /// What it is.
    fn kind(&self) -> OutputKind;
    /// The object with its file meta group.
    fn file(&self) -> &FileDicomObject<InMemDicomObject>;
    /// Its SOP Class UID.
    fn sop_class_uid(&self) -> &str;
    /// Its SOP Instance UID (one of ours: strict).
    fn sop_instance_uid(&self) -> &str;
    /// The study it belongs to (the source study's UID, as received).
    fn study_instance_uid(&self) -> &str;
}

/// A built image output (SEG, SC): the object and the identifiers the outbox needs.
#[derive(Debug, Clone)]
pub struct BuiltObject {
    /// What it is.
    pub kind: OutputKind,
    /// The object with its file meta group.
    pub file: FileDicomObject<InMemDicomObject>,
    /// Its SOP Class UID.
    pub sop_class_uid: String,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// Its Series Instance UID.
    pub series_instance_uid: String,
    /// The study it belongs to (the source's).
    pub study_instance_uid: String,
}

impl Output for BuiltObject {
    fn kind(&self) -> OutputKind {
        self.kind
    }
    fn file(&self) -> &FileDicomObject<InMemDicomObject> {
        &self.file
    }
    fn sop_class_uid(&self) -> &str {
        &self.sop_class_uid
    }
    fn sop_instance_uid(&self) -> &str {
        &self.sop_instance_uid
    }
    fn study_instance_uid(&self) -> &str {
        &self.study_instance_uid
    }
}

/// A Segmentation made from an analysed image, as the SR references it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegReference {
    /// The SEG's SOP Class, SOP Instance and Series Instance UIDs.
    pub object: ImageRef,
    /// Each segment: its segmenter channel (`right_lung`, …) and its number, which is also its
    /// frame number (one frame per segment).
    pub segments: Vec<(String, u16)>,
}

/// The image outputs made from one analysed image, which the SR references: its SEG regions
/// (TID 1410 groups, the basis of the cardiothoracic ratio) and its SC (evidence).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageOutputRefs {
    /// The analysed image's SOP Instance UID.
    pub source_sop_instance_uid: String,
    pub seg: Option<SegReference>,
    pub sc: Option<ImageRef>,
}

/// The source radiograph an image output (SEG, SC) is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceImage {
    /// Its SOP Class, SOP Instance and Series Instance UIDs (as received).
    pub image: ImageRef,
    /// Rows (0028,0010).
    pub rows: usize,
    /// Columns (0028,0011).
    pub columns: usize,
    /// `(row, column)` spacing in mm, from Pixel Spacing or Imager Pixel Spacing, where known.
    pub pixel_spacing: Option<(f64, f64)>,
}

/// Where a new output goes: its series (a new one unless given: a revision stays in the series
/// of what it revises), numbers, content date/time and UIDs (generated unless given).
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub series_instance_uid: Option<String>,
    pub series_number: u32,
    pub instance_number: u32,
    pub content_datetime: NaiveDateTime,
    pub sop_instance_uid: Option<String>,
    /// Root of generated UIDs (`2.25.` when `None`).
    pub uid_root: Option<String>,
}

/// Everything that can go wrong when building an SR.
#[derive(Debug, thiserror::Error)]
pub enum SrError {
    /// The source images carry no Study Instance UID.
    #[error("the source dataset has no Study Instance UID")]
    MissingStudyInstanceUid,
    /// A label that [`codes::LABELS`] does not know.
    #[error("label {label:?} has no finding code")]
    UnknownLabel {
        /// The label as given.
        label: String,
    },
    /// The same label twice for one image.
    #[error("label {label:?} appears twice for image {sop_instance_uid}")]
    DuplicateLabel {
        /// The label as given.
        label: String,
        /// The image it was given for.
        sop_instance_uid: String,
    },
    /// A probability or threshold outside [0, 1] (or NaN).
    #[error("{what} of label {label:?} is {value}, not a number in [0, 1]")]
    OutOfRange {
        /// `probability` or `threshold`.
        what: &'static str,
        /// The label it belongs to.
        label: String,
        /// The bad value.
        value: f32,
    },
    /// A cardiothoracic ratio that is not a finite positive number.
    #[error(
        "cardiothoracic ratio {value} of image {sop_instance_uid} is not a finite positive number"
    )]
    InvalidRatio {
        /// The bad value.
        value: f32,
        /// The image it was given for.
        sop_instance_uid: String,
    },
    /// A findings report with no analysed image.
    #[error("a findings report needs at least one analysed image")]
    NoAnalysedImage,
    /// A UID that is empty, too long or not made of digits and dots.
    #[error("{what} {uid:?} is not a valid DICOM UID")]
    InvalidUid {
        /// Which UID.
        what: &'static str,
        /// The bad value.
        uid: String,
    },
    /// A UID root too long to hold a UUID-derived suffix within 64 characters.
    #[error("UID root {root:?} is too long (at most 24 characters) or not a valid UID")]
    InvalidUidRoot {
        /// The bad root.
        root: String,
    },
    /// dicom-object refused the file meta group.
    #[error("could not build the file meta group of the SR")]
    BuildMeta {
        /// The cause.
        #[source]
        source: dicom_object::WithMetaError,
    },
}

/// Patient and study attributes copied from the source images into the SR (issue 4 part 3).
///
/// Values are decoded text (dicom-rs decodes with the source's Specific Character Set); the SR
/// re-encodes them, in ISO_IR 192 where needed. Values that break their VR (a date that is not a
/// date, a sex other than M/F/O, an SH longer than 16 or an LO/PN component group longer than 64
/// characters) are dropped (left empty) rather than copied or truncated: a malformed source
/// cannot make the SR invalid, and a truncated identifier could match another patient or order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceStudy {
    /// Patient's Name (0010,0010), PN.
    pub patient_name: String,
    /// Patient ID (0010,0020).
    pub patient_id: String,
    /// Issuer of Patient ID (0010,0021), type 3: omitted when `None`.
    pub issuer_of_patient_id: Option<String>,
    /// Patient's Birth Date (0010,0030), `YYYYMMDD` or empty.
    pub patient_birth_date: String,
    /// Patient's Sex (0010,0040): `M`, `F`, `O` or empty.
    pub patient_sex: String,
    /// Study Instance UID (0020,000D); required.
    pub study_instance_uid: String,
    /// Study Date (0008,0020), `YYYYMMDD` or empty.
    pub study_date: String,
    /// Study Time (0008,0030) or empty.
    pub study_time: String,
    /// Accession Number (0008,0050).
    pub accession_number: String,
    /// Study ID (0020,0010).
    pub study_id: String,
    /// Referring Physician's Name (0008,0090), PN.
    pub referring_physician_name: String,
    /// The source's Specific Character Set (0008,0005), backslash-joined; empty for the default.
    pub specific_character_set: String,
    /// Referenced Request Sequence (0040,A370) items of the source, where it has one.
    pub requests: Vec<RequestReference>,
}

/// One item of the Referenced Request Sequence, reduced to the attributes the SR needs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequestReference {
    /// Study Instance UID of the request (defaults to the study's).
    pub study_instance_uid: String,
    /// Accession Number (0008,0050).
    pub accession_number: String,
    /// Placer Order Number / Imaging Service Request (0040,2016).
    pub placer_order_number: String,
    /// Filler Order Number / Imaging Service Request (0040,2017).
    pub filler_order_number: String,
    /// Requested Procedure ID (0040,1001).
    pub requested_procedure_id: String,
    /// Requested Procedure Description (0032,1060).
    pub requested_procedure_description: String,
    /// Requested Procedure Code Sequence (0032,1064), first item.
    pub requested_procedure_code: Option<OwnedCode>,
}

/// A coded concept read from a source dataset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedCode {
    /// Code Value.
    pub value: String,
    /// Coding Scheme Designator.
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

/// A reference to an earlier SR of the same study, for a revised report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Predecessor {
    /// Study Instance UID of the earlier SR.
    pub study_instance_uid: String,
    /// Series Instance UID of the earlier SR.
    pub series_instance_uid: String,
    /// SOP Class UID of the earlier SR.
    pub sop_class_uid: String,
    /// SOP Instance UID of the earlier SR.
    pub sop_instance_uid: String,
}

/// The models and software that produced the results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Classifier `cxr.model_name`.
    pub classifier_name: String,
    /// Classifier `cxr.model_version`.
    pub classifier_version: String,
    /// Segmenter `cxr.model_name`.
    pub segmenter_name: String,
    /// Segmenter `cxr.model_version`.
    pub segmenter_version: String,
    /// Both models have trained weights (`cxr.trained` = "true" on both).
    pub trained: bool,
    /// Manufacturer written in the SR (equipment and contributing equipment).
    pub manufacturer: String,
    /// Version of cxr-worker itself.
    pub software_version: String,
}

impl ModelInfo {
    /// Device UID of the algorithm: `2.25.<decimal>` of a UUID (version 8, RFC 9562) made of the
    /// first 16 bytes of SHA-256 over the model names, versions and trained flag. The same models
    /// always give the same UID; any new model version gives a new one.
    pub fn device_uid(&self) -> String {
        let mut hasher = Sha256::new();
        for part in [
            "cxr-worker device uid v1",
            &self.classifier_name,
            &self.classifier_version,
            &self.segmenter_name,
            &self.segmenter_version,
            if self.trained { "trained" } else { "untrained" },
        ] {
            // Length-prefixed so that ("ab","c") and ("a","bc") differ.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
        format!("2.25.{}", uuid.as_u128())
    }

    /// Algorithm version as written in the SR (TID 4019): classifier and segmenter versions, and
    /// `UNTRAINED` when the weights are random.
    pub fn algorithm_version(&self) -> String {
        let mut v = format!(
            "{} (segmenter {} {})",
            self.classifier_version, self.segmenter_name, self.segmenter_version
        );
        if !self.trained {
            v.push_str(" UNTRAINED");
        }
        v
    }
}

/// Completion Flag (0040,A491) of the SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Completion {
    /// All images of the study were analysed.
    #[default]
    Complete,
    /// The report is known to be incomplete.
    Partial,
}

/// What the report says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ReportContent {
    /// Findings for one or more analysed images.
    Findings(Vec<AnalysedImage>),
    /// No image of the study could be analysed (e.g. lateral only, not a chest): the report says
    /// "not analysed: <reason>" and lists the received images as evidence.
    NotAnalysed {
        /// The images received for the study (may be empty).
        received: Vec<ImageRef>,
        /// Why nothing was analysed, e.g. "no frontal chest image (lateral only)". No patient data.
        reason: String,
    },
}

/// Everything [`build_sr`] needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRequest {
    /// Patient and study, copied from the source.
    pub study: SourceStudy,
    /// Models and software.
    pub model: ModelInfo,
    /// Findings, or why there are none.
    pub content: ReportContent,
    /// The earlier SR this one revises, if any.
    pub predecessor: Option<Predecessor>,
    /// Completion Flag.
    pub completion: Completion,
    /// Instance Number (0020,0013), ≥ 1; e.g. 1 for the first report, 2 for a revision.
    pub instance_number: u32,
    /// Series Number (0020,0011) of the SR series.
    pub series_number: u32,
    /// Content Date/Time (and instance creation date/time): the time the report was made.
    pub content_datetime: NaiveDateTime,
    /// SOP Instance UID to use (e.g. allocated and stored before building, so that a retried job
    /// sends the same SR); generated when `None`.
    pub sop_instance_uid: Option<String>,
    /// Series Instance UID to use (e.g. the predecessor's series); generated when `None`.
    pub series_instance_uid: Option<String>,
    /// Root for generated UIDs (at most 24 characters); `None` gives `2.25.<uuid>` UIDs.
    pub uid_root: Option<String>,
    /// The SEG and SC of the analysed images, where made (empty: the SR references none).
    #[serde(default)]
    pub image_outputs: Vec<ImageOutputRefs>,
}

impl SourceStudy {
    /// Copy the patient and study attributes from one source image's dataset.
    pub fn from_dataset(obj: &InMemDicomObject) -> Result<Self, SrError> {
        let study_instance_uid = text(obj, tags::STUDY_INSTANCE_UID);
        if !is_received_uid(&study_instance_uid) {
            return Err(SrError::MissingStudyInstanceUid);
        }
        let requests = obj
            .get(tags::REFERENCED_REQUEST_SEQUENCE)
            .and_then(|e| e.items())
            .map(|items| {
                items
                    .iter()
                    .map(|item| RequestReference::from_item(item, &study_instance_uid))
                    .collect()
            })
            .unwrap_or_default();
        let sex = text(obj, tags::PATIENT_SEX);
        Ok(Self {
            patient_name: fit_pn(text(obj, tags::PATIENT_NAME)),
            patient_id: fit(text(obj, tags::PATIENT_ID), 64),
            issuer_of_patient_id: Some(fit(text(obj, tags::ISSUER_OF_PATIENT_ID), 64))
                .filter(|s| !s.is_empty()),
            patient_birth_date: valid_date(text(obj, tags::PATIENT_BIRTH_DATE)),
            patient_sex: if matches!(sex.as_str(), "M" | "F" | "O") {
                sex
            } else {
                String::new()
            },
            study_date: valid_date(text(obj, tags::STUDY_DATE)),
            study_time: valid_time(text(obj, tags::STUDY_TIME)),
            accession_number: fit(text(obj, tags::ACCESSION_NUMBER), 16),
            study_id: fit(text(obj, tags::STUDY_ID), 16),
            referring_physician_name: fit_pn(text(obj, tags::REFERRING_PHYSICIAN_NAME)),
            specific_character_set: obj
                .get(tags::SPECIFIC_CHARACTER_SET)
                .and_then(|e| e.value().strings().ok())
                .map(|v| v.iter().map(|s| s.trim()).collect::<Vec<_>>().join("\\"))
                .unwrap_or_default(),
            study_instance_uid,
            requests,
        })
    }
}

impl RequestReference {
    fn from_item(item: &InMemDicomObject, study_uid: &str) -> Self {
        let uid = text(item, tags::STUDY_INSTANCE_UID);
        let requested_procedure_code = item
            .get(tags::REQUESTED_PROCEDURE_CODE_SEQUENCE)
            .and_then(|e| e.items())
            .and_then(|items| items.first())
            .map(|c| OwnedCode {
                value: fit(text(c, tags::CODE_VALUE), 16),
                scheme: fit(text(c, tags::CODING_SCHEME_DESIGNATOR), 16),
                meaning: fit(text(c, tags::CODE_MEANING), 64),
            })
            .filter(|c| !c.value.is_empty() && !c.scheme.is_empty() && !c.meaning.is_empty());
        Self {
            study_instance_uid: if is_received_uid(&uid) {
                uid
            } else {
                study_uid.to_string()
            },
            accession_number: fit(text(item, tags::ACCESSION_NUMBER), 16),
            placer_order_number: fit(
                text(item, tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST),
                64,
            ),
            filler_order_number: fit(
                text(item, tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST),
                64,
            ),
            requested_procedure_id: fit(text(item, tags::REQUESTED_PROCEDURE_ID), 16),
            requested_procedure_description: fit(
                text(item, tags::REQUESTED_PROCEDURE_DESCRIPTION),
                64,
            ),
            requested_procedure_code,
        }
    }
}

/// A new UID: `<root>.<uuid v4 as decimal>`, with root `2.25` by default (PS3.5 B.2).
pub fn new_uid(root: Option<&str>) -> Result<String, SrError> {
    let suffix = uuid::Uuid::new_v4().as_u128();
    match root {
        None => Ok(format!("2.25.{suffix}")),
        Some(r) if r.len() <= 24 && is_valid_uid(r) => Ok(format!("{r}.{suffix}")),
        Some(r) => Err(SrError::InvalidUidRoot {
            root: r.to_string(),
        }),
    }
}

/// A UID made of the Tracking UID's inputs, stable across revisions of the same study's report:
/// `2.25.<decimal>` of a version-8 UUID from SHA-256 over the parts.
pub(crate) fn derived_uid(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    format!(
        "2.25.{}",
        uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .as_u128()
    )
}

/// True for a UID we may make or configure: strict, no leading zero in a multi-digit component
/// ([`crate::dicom::uid::is_strict_uid`]). UIDs of the source images are referenced as received
/// ([`crate::dicom::uid::is_received_uid`]).
pub fn is_valid_uid(uid: &str) -> bool {
    crate::dicom::uid::is_strict_uid(uid)
}

/// The element's text ([`element_text_lenient`]); empty when it is absent or empty.
fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    element_text_lenient(obj, tag).unwrap_or_default()
}

/// The value if it has at most `max` characters and no backslash, else empty.
fn fit(s: String, max: usize) -> String {
    if s.chars().count() <= max && !s.contains('\\') {
        s
    } else {
        String::new()
    }
}

/// A PN value if each of its (at most 3) component groups has at most 64 characters, else empty.
fn fit_pn(s: String) -> String {
    let groups: Vec<&str> = s.split('=').collect();
    if groups.len() <= 3 && groups.iter().all(|g| g.chars().count() <= 64) && !s.contains('\\') {
        s
    } else {
        String::new()
    }
}

fn valid_date(s: String) -> String {
    let ok = s.len() == 8
        && s.bytes().all(|b| b.is_ascii_digit())
        && chrono::NaiveDate::parse_from_str(&s, "%Y%m%d").is_ok();
    if ok { s } else { String::new() }
}

fn valid_time(s: String) -> String {
    let (hms, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
    let digits = |x: &str| x.bytes().all(|b| b.is_ascii_digit());
    let ok = matches!(hms.len(), 2 | 4 | 6)
        && digits(hms)
        && frac.len() <= 6
        && digits(frac)
        && (frac.is_empty() || hms.len() == 6)
        && hms
            .get(0..2)
            .and_then(|h| h.parse::<u8>().ok())
            .is_some_and(|h| h < 24)
        && hms
            .get(2..4)
            .and_then(|m| m.parse::<u8>().ok())
            .is_none_or(|m| m < 60)
        && hms
            .get(4..6)
            .and_then(|x| x.parse::<u8>().ok())
            .is_none_or(|x| x < 61);
    if ok { s } else { String::new() }
}

/// Format a value for a DS element (at most 16 characters): six decimals, trailing zeros trimmed.
pub(crate) fn format_ds(v: f64) -> String {
    let mut s = String::new();
    let _ = write!(s, "{v:.6}");
    if s.contains('.') {
        while s.ends_with('0') {
            s.pop();
        }
        if s.ends_with('.') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            classifier_name: "anatomy-xnet".into(),
            classifier_version: "1.0.0".into(),
            segmenter_name: "anatomy-segmenter".into(),
            segmenter_version: "1.0.0".into(),
            trained: true,
            manufacturer: "cxr-worker project".into(),
            software_version: "0.1.0".into(),
        }
    }

    #[test]
    fn device_uid_is_stable_and_changes_with_every_model_version() {
        let a = model();
        assert_eq!(a.device_uid(), model().device_uid());
        assert!(is_valid_uid(&a.device_uid()), "{}", a.device_uid());
        assert!(a.device_uid().starts_with("2.25."));
        let mut b = model();
        b.classifier_version = "1.0.1".into();
        assert_ne!(a.device_uid(), b.device_uid());
        let mut c = model();
        c.segmenter_version = "1.0.1".into();
        assert_ne!(a.device_uid(), c.device_uid());
        let mut d = model();
        d.trained = false;
        assert_ne!(a.device_uid(), d.device_uid());
        assert!(d.algorithm_version().contains("UNTRAINED"));
        assert!(!a.algorithm_version().contains("UNTRAINED"));
    }

    #[test]
    fn uids() {
        let u = new_uid(None).unwrap();
        assert!(is_valid_uid(&u) && u.starts_with("2.25."), "{u}");
        assert_ne!(u, new_uid(None).unwrap());
        let r = new_uid(Some("1.2.826.0.1.3680043.10")).unwrap();
        assert!(is_valid_uid(&r), "{r}");
        assert!(new_uid(Some("1.2.3.4.5.6.7.8.9.10.11.12.13")).is_err());
        assert!(new_uid(Some("1.02")).is_err());
        assert!(!is_valid_uid("1..2") && !is_valid_uid("") && !is_valid_uid("1.2a"));
        assert_eq!(derived_uid(&["a", "b"]), derived_uid(&["a", "b"]));
        assert_ne!(derived_uid(&["ab", ""]), derived_uid(&["a", "b"]));
    }

    #[test]
    fn dates_times_and_ds() {
        assert_eq!(valid_date("19400305".into()), "19400305");
        assert_eq!(valid_date("d14a028c".into()), "");
        assert_eq!(valid_date("20231301".into()), "");
        assert_eq!(valid_time("000000.00".into()), "000000.00");
        assert_eq!(valid_time("1850".into()), "1850");
        assert_eq!(valid_time("2500".into()), "");
        assert_eq!(valid_time("12:00".into()), "");
        assert_eq!(fit("1234567890123456".into(), 16), "1234567890123456");
        assert_eq!(fit("12345678901234567".into(), 16), "");
        assert_eq!(fit("a\\b".into(), 16), "");
        assert_eq!(
            fit_pn("Müller^Zoë=山田^太郎".into()),
            "Müller^Zoë=山田^太郎"
        );
        assert_eq!(fit_pn("x".repeat(65)), "");
        assert_eq!(format_ds(0.5), "0.5");
        assert_eq!(format_ds(1.0), "1");
        assert_eq!(format_ds(0.1234567), "0.123457");
        assert_eq!(format_ds(0.0), "0");
    }

    #[test]
    fn call_at_threshold() {
        let r = |p| LabelResult {
            label: "Mass".into(),
            probability: p,
            threshold: 0.5,
        };
        assert!(r(0.5).is_present());
        assert!(!r(0.49).is_present());
    }
}

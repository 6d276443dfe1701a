//! Secondary Capture builder (report stage): the picture of one analysed image
//! (`analyse::overlay`) → an RGB Secondary Capture Image (Explicit VR Little Endian) in its own
//! series of the source study, for viewers that show only images.
//!
//! The object says what it is wherever a viewer may look: Burned In Annotation YES, Image Type
//! DERIVED\SECONDARY, Conversion Type WSD (workstation), Modality OT, a Derivation Description and
//! Image Comments naming the models, and a Source Image Sequence that references the analysed
//! radiograph ("Source image for image processing operation"). Like the SR builder it is a pure
//! function: the content date/time comes in the request; only UIDs the placement leaves unset are
//! generated.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::codes::Code;
use super::dataset::{
    DEVICE_NAME, character_set, code_seq_item, lo, put, put_common_instance_reference,
    put_equipment, put_general_study, put_patient, put_seq, put_series,
};
use super::{BuiltObject, ModelInfo, OutputKind, Placement, SourceImage, SourceStudy, new_uid};

/// SOP Class UID of every picture built here: Secondary Capture Image Storage.
pub const SC_SOP_CLASS_UID: &str = uids::SECONDARY_CAPTURE_IMAGE_STORAGE;

/// Series Description (0008,103E) of the pictures' series.
pub const SERIES_DESCRIPTION: &str = "AI chest X-ray results picture";

/// Purpose of reference of the source image (CID 7202): (121322, DCM, "Source image for image
/// processing operation").
pub const SOURCE_IMAGE_PURPOSE: Code = Code {
    value: "121322",
    scheme: "DCM",
    meaning: "Source image for image processing operation",
};

/// Largest Rows or Columns (US).
const MAX_SIDE: usize = u16::MAX as usize;

/// Everything [`build_sc`] needs: the study and image it belongs to, the models, the picture.
#[derive(Clone, PartialEq)]
pub struct ScRequest {
    /// Patient and study, copied from the source.
    pub study: SourceStudy,
    /// The analysed radiograph.
    pub source: SourceImage,
    /// Models and software.
    pub model: ModelInfo,
    /// Columns of the picture (its width), 1 to 65535.
    pub columns: usize,
    /// Rows of the picture (its height), 1 to 65535.
    pub rows: usize,
    /// The picture: 8-bit RGB, row-major, `rows·columns·3` bytes (color-by-pixel).
    pub rgb: Vec<u8>,
    /// Series, numbers, content date/time and UIDs.
    pub placement: Placement,
}

impl std::fmt::Debug for ScRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScRequest")
            .field("study_instance_uid", &self.study.study_instance_uid)
            .field("source", &self.source)
            .field("model", &self.model)
            .field("columns", &self.columns)
            .field("rows", &self.rows)
            .field("rgb_bytes", &self.rgb.len())
            .field("placement", &self.placement)
            .finish_non_exhaustive()
    }
}

/// Everything that can go wrong when building a Secondary Capture.
#[derive(Debug, thiserror::Error)]
pub enum ScError {
    /// A picture whose buffer is not `rows·columns·3` bytes, or a side that is 0 or over 65535.
    #[error(
        "a picture of {columns}x{rows} pixels needs 1 to 65535 pixels a side and {columns}·{rows}·3 \
         bytes; it has {bytes}"
    )]
    PictureSize {
        /// Columns as given.
        columns: usize,
        /// Rows as given.
        rows: usize,
        /// Bytes of the buffer.
        bytes: usize,
    },
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
    /// A Series Number or Instance Number over the IS range.
    #[error("{what} {value} is over 2147483647")]
    NumberOutOfRange {
        /// Which number.
        what: &'static str,
        /// The bad value.
        value: u32,
    },
    /// dicom-object refused the file meta group.
    #[error("could not build the file meta group of the Secondary Capture")]
    BuildMeta {
        /// The cause.
        #[source]
        source: dicom_object::WithMetaError,
    },
}

/// Build the Secondary Capture of one picture.
pub fn build_sc(req: &ScRequest) -> Result<BuiltObject, ScError> {
    validate(req)?;
    let p = &req.placement;
    let sop_instance_uid = match &p.sop_instance_uid {
        Some(u) => u.clone(),
        None => generated_uid(p)?,
    };
    let series_instance_uid = match &p.series_instance_uid {
        Some(u) => u.clone(),
        None => generated_uid(p)?,
    };

    let mut obj = InMemDicomObject::new_empty();
    let date = p.content_datetime.format("%Y%m%d").to_string();
    let time = p.content_datetime.format("%H%M%S").to_string();
    put_sop_common(&mut obj, &sop_instance_uid, &date, &time);
    put_patient(&mut obj, &req.study);
    put_general_study(&mut obj, &req.study);
    put_series(&mut obj, "OT", p, &series_instance_uid, SERIES_DESCRIPTION);
    put(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    put_equipment(&mut obj, &req.model);
    put(&mut obj, tags::DEVICE_UID, VR::UI, req.model.device_uid());
    put_sc_equipment(&mut obj, &req.model, &date, &time);
    put_general_image(&mut obj, req, &date, &time);
    put_image_pixel(&mut obj, req);
    if let Some(cs) = character_set(&obj, &req.study) {
        put(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }

    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|source| ScError::BuildMeta { source })?;
    Ok(BuiltObject {
        kind: OutputKind::Sc,
        file,
        sop_class_uid: SC_SOP_CLASS_UID.to_string(),
        sop_instance_uid,
        series_instance_uid,
        study_instance_uid: req.study.study_instance_uid.clone(),
    })
}

fn generated_uid(p: &Placement) -> Result<String, ScError> {
    new_uid(p.uid_root.as_deref()).map_err(|_| ScError::InvalidUidRoot {
        root: p.uid_root.clone().unwrap_or_default(),
    })
}

// ---------------------------------------------------------------- validation

fn validate(req: &ScRequest) -> Result<(), ScError> {
    let (columns, rows, bytes) = (req.columns, req.rows, req.rgb.len());
    let sides_ok = (1..=MAX_SIDE).contains(&columns) && (1..=MAX_SIDE).contains(&rows);
    if !sides_ok || columns * rows * 3 != bytes {
        return Err(ScError::PictureSize {
            columns,
            rows,
            bytes,
        });
    }
    let received = [
        ("Study Instance UID", &req.study.study_instance_uid),
        ("source SOP Class UID", &req.source.image.sop_class_uid),
        (
            "source SOP Instance UID",
            &req.source.image.sop_instance_uid,
        ),
    ];
    for (what, uid) in received {
        if !crate::dicom::uid::is_received_uid(uid) {
            return Err(invalid(what, uid));
        }
    }
    let p = &req.placement;
    for (what, uid) in [
        ("SOP Instance UID", &p.sop_instance_uid),
        ("Series Instance UID", &p.series_instance_uid),
    ] {
        match uid {
            Some(u) if !super::is_valid_uid(u) => return Err(invalid(what, u)),
            _ => {}
        }
    }
    for (what, value) in [
        ("Series Number", p.series_number),
        ("Instance Number", p.instance_number),
    ] {
        if i32::try_from(value).is_err() {
            return Err(ScError::NumberOutOfRange { what, value });
        }
    }
    Ok(())
}

fn invalid(what: &'static str, uid: &str) -> ScError {
    ScError::InvalidUid {
        what,
        uid: uid.to_string(),
    }
}

// ---------------------------------------------------------------- modules

/// SOP Common: class, instance, creation date and time.
fn put_sop_common(obj: &mut InMemDicomObject, sop_uid: &str, date: &str, time: &str) {
    put(obj, tags::SOP_CLASS_UID, VR::UI, SC_SOP_CLASS_UID);
    put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    put(obj, tags::INSTANCE_CREATION_DATE, VR::DA, date);
    put(obj, tags::INSTANCE_CREATION_TIME, VR::TM, time);
}

/// SC Equipment (the Modality of the module is the series'), and the SC Image module's date and
/// time of capture.
fn put_sc_equipment(obj: &mut InMemDicomObject, model: &ModelInfo, date: &str, time: &str) {
    put(obj, tags::CONVERSION_TYPE, VR::CS, "WSD");
    put(
        obj,
        tags::SECONDARY_CAPTURE_DEVICE_ID,
        VR::LO,
        model.device_uid(),
    );
    put(
        obj,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
        VR::LO,
        lo(&model.manufacturer),
    );
    put(
        obj,
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER_MODEL_NAME,
        VR::LO,
        DEVICE_NAME,
    );
    let versions = vec![
        lo(&format!(
            "{} {}",
            model.classifier_name, model.classifier_version
        )),
        lo(&format!(
            "{} {}",
            model.segmenter_name, model.segmenter_version
        )),
        lo(&format!("{DEVICE_NAME} {}", model.software_version)),
    ];
    put(
        obj,
        tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(versions.into()),
    );
    put(obj, tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, date);
    put(obj, tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, time);
}

/// General Image and General Reference: numbers, dates, what the picture is and what it comes
/// from.
fn put_general_image(obj: &mut InMemDicomObject, req: &ScRequest, date: &str, time: &str) {
    let m = &req.model;
    put(
        obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        req.placement.instance_number.to_string(),
    );
    put(obj, tags::PATIENT_ORIENTATION, VR::CS, "");
    put(obj, tags::CONTENT_DATE, VR::DA, date);
    put(obj, tags::CONTENT_TIME, VR::TM, time);
    put(
        obj,
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(vec!["DERIVED".to_string(), "SECONDARY".to_string()].into()),
    );
    let description = format!(
        "AI results drawn on the source image: organ outlines ({} {}), class maps of the \
         positive findings and the cardiothoracic ratio ({} {}). Not for primary diagnosis.",
        m.segmenter_name,
        m.segmenter_version,
        m.classifier_name,
        m.algorithm_version()
    );
    put(obj, tags::DERIVATION_DESCRIPTION, VR::ST, description);
    let mut source = InMemDicomObject::new_empty();
    let image = &req.source.image;
    put(
        &mut source,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        image.sop_class_uid.as_str(),
    );
    put(
        &mut source,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        image.sop_instance_uid.as_str(),
    );
    put_seq(
        &mut source,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_seq_item(&SOURCE_IMAGE_PURPOSE)],
    );
    put_seq(obj, tags::SOURCE_IMAGE_SEQUENCE, vec![source]);
    // for readers that resolve the Source Image Sequence through it (highdicom does)
    put_common_instance_reference(obj, image);
    put(obj, tags::BURNED_IN_ANNOTATION, VR::CS, "YES");
    put(obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    let mut comments = String::from("AI result - not for primary diagnosis");
    if !m.trained {
        comments.push_str(". UNTRAINED model: not clinically meaningful");
    }
    put(obj, tags::IMAGE_COMMENTS, VR::LT, comments);
}

/// Image Pixel: 8-bit RGB, color-by-pixel, the picture as it is (padded to an even length).
fn put_image_pixel(obj: &mut InMemDicomObject, req: &ScRequest) {
    // validate() keeps both sides within 1..=65535
    let side = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
    put(obj, tags::SAMPLES_PER_PIXEL, VR::US, 3u16);
    put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB");
    put(obj, tags::PLANAR_CONFIGURATION, VR::US, 0u16);
    put(obj, tags::ROWS, VR::US, side(req.rows));
    put(obj, tags::COLUMNS, VR::US, side(req.columns));
    put(obj, tags::BITS_ALLOCATED, VR::US, 8u16);
    put(obj, tags::BITS_STORED, VR::US, 8u16);
    put(obj, tags::HIGH_BIT, VR::US, 7u16);
    put(obj, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    let mut pixels = Vec::with_capacity(req.rgb.len() + 1);
    pixels.extend_from_slice(&req.rgb);
    if pixels.len() % 2 == 1 {
        pixels.push(0);
    }
    put(obj, tags::PIXEL_DATA, VR::OB, pixels);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use crate::findings::ImageRef;

    fn request(columns: usize, rows: usize) -> ScRequest {
        ScRequest {
            study: SourceStudy {
                study_instance_uid: "1.2.3".into(),
                ..SourceStudy::default()
            },
            source: SourceImage {
                image: ImageRef {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.1.1".into(),
                    sop_instance_uid: "1.2.3.4".into(),
                    series_instance_uid: "1.2.3.5".into(),
                },
                rows: 10,
                columns: 10,
                pixel_spacing: None,
            },
            model: ModelInfo {
                classifier_name: "anatomy-xnet".into(),
                classifier_version: "1.0.0".into(),
                segmenter_name: "anatomy-segmenter".into(),
                segmenter_version: "1.0.0".into(),
                trained: false,
                manufacturer: "cxr-worker project".into(),
                software_version: "0.1.0".into(),
            },
            columns,
            rows,
            rgb: vec![7; columns * rows * 3],
            placement: Placement {
                series_instance_uid: None,
                series_number: 9001,
                instance_number: 1,
                content_datetime: chrono::NaiveDate::from_ymd_opt(2026, 1, 2)
                    .unwrap()
                    .and_hms_opt(3, 4, 5)
                    .unwrap(),
                sop_instance_uid: None,
                uid_root: None,
            },
        }
    }

    #[test]
    fn a_picture_becomes_an_rgb_secondary_capture() {
        let built = build_sc(&request(3, 3)).unwrap();
        assert_eq!(built.kind, OutputKind::Sc);
        let obj = &built.file;
        let s = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
        assert_eq!(s(tags::SOP_CLASS_UID), SC_SOP_CLASS_UID);
        assert_eq!(s(tags::PHOTOMETRIC_INTERPRETATION), "RGB");
        assert_eq!(s(tags::BURNED_IN_ANNOTATION), "YES");
        assert_eq!(s(tags::IMAGE_TYPE), "DERIVED\\SECONDARY");
        assert!(s(tags::IMAGE_COMMENTS).contains("UNTRAINED"));
        // 27 bytes: padded to 28
        let pixels = obj.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
        assert_eq!(pixels.len(), 28);
        assert_eq!(built.sop_instance_uid, s(tags::SOP_INSTANCE_UID));
        assert_eq!(built.series_instance_uid, s(tags::SERIES_INSTANCE_UID));
        assert!(obj.element(tags::SPECIFIC_CHARACTER_SET).is_err());
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let mut r = request(4, 2);
        r.rgb.pop();
        assert!(matches!(
            build_sc(&r),
            Err(ScError::PictureSize { bytes: 23, .. })
        ));
        assert!(matches!(
            build_sc(&request(0, 0)),
            Err(ScError::PictureSize { .. })
        ));
        let mut r = request(2, 2);
        r.source.image.sop_instance_uid = "x".into();
        assert!(matches!(build_sc(&r), Err(ScError::InvalidUid { .. })));
        let mut r = request(2, 2);
        r.placement.sop_instance_uid = Some("1.02".into());
        assert!(matches!(build_sc(&r), Err(ScError::InvalidUid { .. })));
        let mut r = request(2, 2);
        r.placement.uid_root = Some("1.2.3.4.5.6.7.8.9.10.11.12.13".into());
        assert!(matches!(build_sc(&r), Err(ScError::InvalidUidRoot { .. })));
        let mut r = request(2, 2);
        r.placement.instance_number = u32::MAX;
        assert!(matches!(
            build_sc(&r),
            Err(ScError::NumberOutOfRange { .. })
        ));
    }

    #[test]
    fn given_uids_are_used() {
        let mut r = request(2, 2);
        r.placement.sop_instance_uid = Some("1.2.3.9".into());
        r.placement.series_instance_uid = Some("1.2.3.8".into());
        let built = build_sc(&r).unwrap();
        assert_eq!(
            (
                built.sop_instance_uid.as_str(),
                built.series_instance_uid.as_str()
            ),
            ("1.2.3.9", "1.2.3.8")
        );
    }
}

//! Segmentation builder (report stage): the segmenter's anatomy masks of one source radiograph,
//! at the source's geometry → a DICOM Segmentation (BINARY), Explicit VR Little Endian.
//!
//! One segment per channel that names a known organ ([`ORGANS`]), always in the order right
//! lung, left lung, heart (segment numbers 1..n), whatever the channel order. Channels that name
//! no known organ (a segmenter may add channels after
//! [`SEGMENTER_CHANNELS`](crate::analyse::contract::SEGMENTER_CHANNELS)) are skipped. Every
//! segment is exactly one frame, empty masks included: frame *i* holds segment *i*.
//!
//! Modules (PS3.3 A.51), as highdicom writes them for a source without a Frame of Reference:
//! Patient, General Study, General Series + Segmentation Series (modality SEG, its own series),
//! General Equipment + Enhanced General Equipment (with the Device UID the SR names as its
//! device observer), General Image, Image Pixel, Segmentation Image, Multi-frame Functional
//! Groups, Multi-frame Dimension (one dimension: Referenced Segment Number), Common Instance
//! Reference, SOP Common. A chest radiograph has no Frame of Reference, so no Plane
//! Position/Orientation is written: each frame names the source in its Derivation Image
//! functional group. That group is per frame, not shared, because highdicom (0.28) finds a
//! frame's source image only there. No Pixel Measures either: highdicom refuses to read them
//! without a Slice Thickness, which a radiograph does not have, and dciodvfy does not ask for
//! them; the frames have the source's geometry, so its spacing applies.
//!
//! Pixel data: 1 bit per pixel, the frames packed as one continuous bit stream (least
//! significant bit first within each byte, no padding between frames; PS3.5 8.1.1), padded to
//! an even length.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;

use super::codes::{ANATOMICAL_STRUCTURE, Code, ORGANS, Organ, organ};
use super::dataset::{
    character_set, code_seq_item, lo, put, put_common_instance_reference, put_equipment,
    put_general_study, put_patient, put_seq, put_series, referenced_sop,
};
use super::sr::UNTRAINED_COMMENT;
use super::{
    BuiltObject, ImageRef, ModelInfo, OutputKind, Placement, SourceImage, SourceStudy, SrError,
    derived_uid, new_uid,
};
use crate::findings::BitMask;

/// SOP Class UID of every SEG built here: Segmentation Storage.
pub const SEG_SOP_CLASS_UID: &str = uids::SEGMENTATION_STORAGE;

/// Series Description (and Content Description) of the SEG series.
pub const SERIES_DESCRIPTION: &str = "AI anatomy segmentation";

/// Content Label (0070,0080) of every SEG (a CS value).
pub const CONTENT_LABEL: &str = "ANATOMY";

/// Algorithm Family (CID 7162): (123110, DCM, "Artificial Intelligence").
pub const ARTIFICIAL_INTELLIGENCE: Code = Code {
    value: "123110",
    scheme: "DCM",
    meaning: "Artificial Intelligence",
};

/// Derivation Code of every frame (CID 7203): (113076, DCM, "Segmentation").
pub const SEGMENTATION_DERIVATION: Code = Code {
    value: "113076",
    scheme: "DCM",
    meaning: "Segmentation",
};

/// Purpose of Reference of the source image (CID 7202): (121322, DCM, "Source image for image
/// processing operation").
pub const SOURCE_FOR_PROCESSING: Code = Code {
    value: "121322",
    scheme: "DCM",
    meaning: "Source image for image processing operation",
};

/// Algorithm Parameters (0066,0032) of an untrained segmenter (`key=value`, as highdicom reads
/// them).
pub const UNTRAINED_PARAMETERS: &str = "weights=untrained";

/// Everything [`build_seg`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SegRequest {
    /// Patient and study, copied from the source.
    pub study: SourceStudy,
    /// The radiograph the masks were made from; every mask must have its rows and columns.
    pub source: SourceImage,
    /// Models and software (the segmenter is the algorithm of every segment).
    pub model: ModelInfo,
    /// The segmenter's masks by channel name, at the source's geometry, in any order.
    pub channels: Vec<(String, BitMask)>,
    /// Series, numbers, content date/time, UIDs.
    pub placement: Placement,
}

/// One segment of a built SEG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Segment Number (0062,0004), also the number of its frame.
    pub number: u16,
    /// The segmenter channel it came from.
    pub channel: String,
    /// Segment Label (0062,0005).
    pub label: String,
    /// Segmented Property Type (0062,000F).
    pub property_type: &'static Code,
}

/// A built SEG and what its segments are.
#[derive(Debug, Clone)]
pub struct BuiltSeg {
    /// The object, for the outbox and the sender.
    pub object: BuiltObject,
    /// Its segments, in segment (and frame) order.
    pub segments: Vec<SegmentInfo>,
}

/// Everything that can go wrong when building a SEG.
#[derive(Debug, thiserror::Error)]
pub enum SegError {
    /// A UID that is empty, too long or not made of digits and dots.
    #[error("{what} {uid:?} is not a valid DICOM UID")]
    InvalidUid {
        /// Which UID.
        what: &'static str,
        /// The bad value.
        uid: String,
    },
    /// No UID could be made (a bad UID root).
    #[error("could not make a UID for the SEG")]
    NewUid {
        /// The cause.
        #[source]
        source: SrError,
    },
    /// Source rows or columns of 0 or above 65535 (an US value).
    #[error("the source image is {rows}×{columns}, not a size a SEG can hold")]
    SourceSize {
        /// Rows of the source.
        rows: usize,
        /// Columns of the source.
        columns: usize,
    },
    /// A mask whose geometry is not the source's.
    #[error(
        "mask {channel:?} is {rows}×{columns} with {len} pixels, not the source's \
         {source_rows}×{source_columns}"
    )]
    MaskGeometry {
        /// Its channel.
        channel: String,
        /// Its rows.
        rows: usize,
        /// Its columns.
        columns: usize,
        /// The length of its pixel vector.
        len: usize,
        /// Rows of the source.
        source_rows: usize,
        /// Columns of the source.
        source_columns: usize,
    },
    /// The same organ channel twice.
    #[error("channel {channel:?} appears twice")]
    DuplicateChannel {
        /// The channel name.
        channel: String,
    },
    /// No channel names a known organ: a SEG needs at least one segment.
    #[error("none of the channels {channels:?} names a known organ")]
    NoSegment {
        /// The channel names given.
        channels: Vec<String>,
    },
    /// The packed pixel data would not fit an element (4 GiB).
    #[error("{frames} frames of {rows}×{columns} do not fit one Pixel Data element")]
    PixelDataTooLarge {
        /// Number of frames.
        frames: usize,
        /// Rows.
        rows: usize,
        /// Columns.
        columns: usize,
    },
    /// dicom-object refused the file meta group.
    #[error("could not build the file meta group of the SEG")]
    BuildMeta {
        /// The cause.
        #[source]
        source: dicom_object::WithMetaError,
    },
}

/// One segment to write: its organ and mask.
struct Segment<'a> {
    number: u16,
    organ: &'static Organ,
    mask: &'a BitMask,
}

/// Build the SEG of one source image's anatomy masks.
pub fn build_seg(req: &SegRequest) -> Result<BuiltSeg, SegError> {
    validate_uids(req)?;
    let (rows, columns) = source_size(&req.source)?;
    let segments = select_segments(&req.channels)?;
    check_masks(&segments, &req.source)?;
    check_pixel_data_size(segments.len(), req.source.rows, req.source.columns)?;

    let p = &req.placement;
    let root = p.uid_root.as_deref();
    let uid = |given: &Option<String>| match given {
        Some(u) => Ok(u.clone()),
        None => new_uid(root).map_err(|source| SegError::NewUid { source }),
    };
    let sop_instance_uid = uid(&p.sop_instance_uid)?;
    let series_instance_uid = uid(&p.series_instance_uid)?;

    let mut obj = InMemDicomObject::new_empty();
    put_sop_common(&mut obj, p, &sop_instance_uid);
    put_patient(&mut obj, &req.study);
    put_general_study(&mut obj, &req.study);
    // General Series and Segmentation Series: modality SEG, the SEG's own series
    put_series(&mut obj, "SEG", p, &series_instance_uid, SERIES_DESCRIPTION);
    put_equipment(&mut obj, &req.model);
    put(&mut obj, tags::DEVICE_UID, VR::UI, req.model.device_uid());
    put_general_image(&mut obj, p, &req.source.image);
    put_segmentation_image(&mut obj, req, &segments);
    put_functional_groups(&mut obj, &req.source.image, &segments);
    put_dimensions(&mut obj, &sop_instance_uid);
    put_common_instance_reference(&mut obj, &req.source.image);
    put_pixels(&mut obj, rows, columns, &segments);
    if let Some(cs) = character_set(&obj, &req.study) {
        put(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }

    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|source| SegError::BuildMeta { source })?;
    Ok(BuiltSeg {
        object: BuiltObject {
            kind: OutputKind::Seg,
            file,
            sop_class_uid: SEG_SOP_CLASS_UID.to_string(),
            sop_instance_uid,
            series_instance_uid,
            study_instance_uid: req.study.study_instance_uid.clone(),
        },
        segments: segments.iter().map(segment_info).collect(),
    })
}

fn segment_info(s: &Segment<'_>) -> SegmentInfo {
    SegmentInfo {
        number: s.number,
        channel: s.organ.channel.to_string(),
        label: s.organ.label.to_string(),
        property_type: &s.organ.code,
    }
}

// ---------------------------------------------------------------- validation

fn validate_uids(req: &SegRequest) -> Result<(), SegError> {
    let img = &req.source.image;
    check_uid("Study Instance UID", &req.study.study_instance_uid)?;
    check_uid("source SOP Class UID", &img.sop_class_uid)?;
    check_uid("source SOP Instance UID", &img.sop_instance_uid)?;
    check_uid("source Series Instance UID", &img.series_instance_uid)?;
    let p = &req.placement;
    for (what, uid) in [
        ("SOP Instance UID", &p.sop_instance_uid),
        ("Series Instance UID", &p.series_instance_uid),
    ] {
        if let Some(u) = uid {
            check_uid(what, u)?;
        }
    }
    Ok(())
}

/// UIDs of the source are referenced exactly as received.
fn check_uid(what: &'static str, uid: &str) -> Result<(), SegError> {
    if crate::dicom::uid::is_received_uid(uid) {
        Ok(())
    } else {
        Err(SegError::InvalidUid {
            what,
            uid: uid.to_string(),
        })
    }
}

/// The source's rows and columns as US values (1..=65535).
fn source_size(source: &SourceImage) -> Result<(u16, u16), SegError> {
    let err = || SegError::SourceSize {
        rows: source.rows,
        columns: source.columns,
    };
    let rows = u16::try_from(source.rows).map_err(|_| err())?;
    let columns = u16::try_from(source.columns).map_err(|_| err())?;
    if rows == 0 || columns == 0 {
        return Err(err());
    }
    Ok((rows, columns))
}

/// The known organs among the channels, in segment order, numbered from 1. Unknown channels
/// are skipped; an organ given twice is refused.
fn select_segments(channels: &[(String, BitMask)]) -> Result<Vec<Segment<'_>>, SegError> {
    for (i, (name, _)) in channels.iter().enumerate() {
        if organ(name).is_some() && channels[..i].iter().any(|(n, _)| n == name) {
            return Err(SegError::DuplicateChannel {
                channel: name.clone(),
            });
        }
    }
    let found = ORGANS.iter().filter_map(|organ| {
        channels
            .iter()
            .find(|(name, _)| name == organ.channel)
            .map(|(_, mask)| (organ, mask))
    });
    let segments: Vec<Segment<'_>> = (1u16..)
        .zip(found)
        .map(|(number, (organ, mask))| Segment {
            number,
            organ,
            mask,
        })
        .collect();
    if segments.is_empty() {
        return Err(SegError::NoSegment {
            channels: channels.iter().map(|(n, _)| n.clone()).collect(),
        });
    }
    Ok(segments)
}

/// Every mask has the source's rows and columns and exactly rows × columns pixels.
fn check_masks(segments: &[Segment<'_>], source: &SourceImage) -> Result<(), SegError> {
    for s in segments {
        let m = s.mask;
        let fits = m.rows == source.rows
            && m.columns == source.columns
            && m.rows.checked_mul(m.columns) == Some(m.bits.len());
        if !fits {
            return Err(SegError::MaskGeometry {
                channel: s.organ.channel.to_string(),
                rows: m.rows,
                columns: m.columns,
                len: m.bits.len(),
                source_rows: source.rows,
                source_columns: source.columns,
            });
        }
    }
    Ok(())
}

/// The packed frames fit one Pixel Data element (an even length below 2³² − 1 bytes).
fn check_pixel_data_size(frames: usize, rows: usize, columns: usize) -> Result<(), SegError> {
    let bytes = frames
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(columns))
        .map(|bits| bits.div_ceil(8).next_multiple_of(2));
    match bytes {
        Some(b) if b < u32::MAX as usize => Ok(()),
        _ => Err(SegError::PixelDataTooLarge {
            frames,
            rows,
            columns,
        }),
    }
}

// ---------------------------------------------------------------- header modules

/// SOP Common: class, instance, creation date and time (the content date/time).
fn put_sop_common(obj: &mut InMemDicomObject, p: &Placement, sop_uid: &str) {
    put(obj, tags::SOP_CLASS_UID, VR::UI, SEG_SOP_CLASS_UID);
    put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    put(obj, tags::INSTANCE_CREATION_DATE, VR::DA, date(p));
    put(obj, tags::INSTANCE_CREATION_TIME, VR::TM, time(p));
}

/// General Image: instance number, content date and time, image type, the source image. A
/// radiograph's SEG has no Image Orientation (Patient), so Patient Orientation (type 2C) is
/// written, empty: the source's value is not part of the request.
fn put_general_image(obj: &mut InMemDicomObject, p: &Placement, source: &ImageRef) {
    put(
        obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        p.instance_number.to_string(),
    );
    put(obj, tags::PATIENT_ORIENTATION, VR::CS, "");
    put(obj, tags::CONTENT_DATE, VR::DA, date(p));
    put(obj, tags::CONTENT_TIME, VR::TM, time(p));
    let image_type = vec!["DERIVED".to_string(), "PRIMARY".to_string()];
    put(
        obj,
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(image_type.into()),
    );
    put(obj, tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00");
    put_seq(
        obj,
        tags::SOURCE_IMAGE_SEQUENCE,
        vec![referenced_sop(source)],
    );
}

/// Segmentation Image: type BINARY, content identification, the segments.
fn put_segmentation_image(obj: &mut InMemDicomObject, req: &SegRequest, segments: &[Segment<'_>]) {
    put(obj, tags::SEGMENTATION_TYPE, VR::CS, "BINARY");
    put(obj, tags::CONTENT_LABEL, VR::CS, CONTENT_LABEL);
    put(obj, tags::CONTENT_DESCRIPTION, VR::LO, SERIES_DESCRIPTION);
    // Type 2, a person's name: an algorithm made this SEG, named in each segment instead.
    put(obj, tags::CONTENT_CREATOR_NAME, VR::PN, "");
    let overlap = if segments_overlap(segments) {
        "YES"
    } else {
        "NO"
    };
    put(obj, tags::SEGMENTS_OVERLAP, VR::CS, overlap);
    let items = segments
        .iter()
        .map(|s| segment_item(s, &req.model))
        .collect();
    put_seq(obj, tags::SEGMENT_SEQUENCE, items);
}

/// True when some pixel is in two segments (the segmenter's channels are independent).
fn segments_overlap(segments: &[Segment<'_>]) -> bool {
    segments.iter().enumerate().any(|(i, a)| {
        segments[i + 1..].iter().any(|b| {
            a.mask
                .bits
                .iter()
                .zip(&b.mask.bits)
                .any(|(x, y)| *x != 0 && *y != 0)
        })
    })
}

fn segment_item(s: &Segment<'_>, model: &ModelInfo) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::SEGMENT_NUMBER, VR::US, s.number);
    put(&mut item, tags::SEGMENT_LABEL, VR::LO, s.organ.label);
    if !model.trained {
        put(
            &mut item,
            tags::SEGMENT_DESCRIPTION,
            VR::ST,
            UNTRAINED_COMMENT,
        );
    }
    put(&mut item, tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC");
    put(
        &mut item,
        tags::SEGMENT_ALGORITHM_NAME,
        VR::LO,
        lo(&model.segmenter_name),
    );
    put_seq(
        &mut item,
        tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
        vec![algorithm_item(model)],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
        vec![code_seq_item(&ANATOMICAL_STRUCTURE)],
    );
    put_seq(
        &mut item,
        tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
        vec![code_seq_item(&s.organ.code)],
    );
    item
}

/// Algorithm Identification Macro (PS3.3 10.16): family, name, version, parameters.
fn algorithm_item(model: &ModelInfo) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
        vec![code_seq_item(&ARTIFICIAL_INTELLIGENCE)],
    );
    put(
        &mut item,
        tags::ALGORITHM_NAME,
        VR::LO,
        lo(&model.segmenter_name),
    );
    // the segmenter's own version (the classifier plays no part in the masks)
    let mut version = model.segmenter_version.clone();
    if !model.trained {
        version.push_str(" UNTRAINED");
    }
    put(&mut item, tags::ALGORITHM_VERSION, VR::LO, lo(&version));
    if !model.trained {
        put(
            &mut item,
            tags::ALGORITHM_PARAMETERS,
            VR::LT,
            UNTRAINED_PARAMETERS,
        );
    }
    item
}

/// Multi-frame Functional Groups: one empty shared item; per frame, its source (Derivation
/// Image), its dimension index and its segment.
///
/// No Pixel Measures: dciodvfy does not ask for them without a Frame of Reference, and
/// highdicom (0.28) refuses to read a Pixel Measures item without Slice Thickness, which a
/// projection radiograph does not have. The frames are at the source's geometry; its spacing
/// applies.
fn put_functional_groups(obj: &mut InMemDicomObject, source: &ImageRef, segments: &[Segment<'_>]) {
    put_seq(
        obj,
        tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
        vec![InMemDicomObject::new_empty()],
    );
    let frames = segments
        .iter()
        .map(|s| frame_item(s.number, source))
        .collect();
    put_seq(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, frames);
    put(
        obj,
        tags::NUMBER_OF_FRAMES,
        VR::IS,
        segments.len().to_string(),
    );
}

/// The functional groups of the frame of one segment.
fn frame_item(segment: u16, source: &ImageRef) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::DERIVATION_IMAGE_SEQUENCE,
        vec![derivation_item(source)],
    );
    let mut content = InMemDicomObject::new_empty();
    put(
        &mut content,
        tags::DIMENSION_INDEX_VALUES,
        VR::UL,
        u32::from(segment),
    );
    put_seq(&mut item, tags::FRAME_CONTENT_SEQUENCE, vec![content]);
    let mut identification = InMemDicomObject::new_empty();
    put(
        &mut identification,
        tags::REFERENCED_SEGMENT_NUMBER,
        VR::US,
        segment,
    );
    put_seq(
        &mut item,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
        vec![identification],
    );
    item
}

/// Derivation Image: the source, at the same pixel positions, processed by segmentation.
fn derivation_item(source: &ImageRef) -> InMemDicomObject {
    let mut src = referenced_sop(source);
    put(&mut src, tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES");
    put_seq(
        &mut src,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_seq_item(&SOURCE_FOR_PROCESSING)],
    );
    let mut item = InMemDicomObject::new_empty();
    put_seq(&mut item, tags::SOURCE_IMAGE_SEQUENCE, vec![src]);
    put_seq(
        &mut item,
        tags::DERIVATION_CODE_SEQUENCE,
        vec![code_seq_item(&SEGMENTATION_DERIVATION)],
    );
    item
}

/// Multi-frame Dimension: frames are indexed by their Referenced Segment Number. The
/// organization UID is derived from the SOP Instance UID, so a rebuilt SEG keeps it.
fn put_dimensions(obj: &mut InMemDicomObject, sop_uid: &str) {
    let organization = derived_uid(&["cxr-worker seg dimension organization v1", sop_uid]);
    let mut org = InMemDicomObject::new_empty();
    put(
        &mut org,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        organization.as_str(),
    );
    put_seq(obj, tags::DIMENSION_ORGANIZATION_SEQUENCE, vec![org]);
    let mut index = InMemDicomObject::new_empty();
    put(
        &mut index,
        tags::DIMENSION_ORGANIZATION_UID,
        VR::UI,
        organization,
    );
    put(
        &mut index,
        tags::DIMENSION_INDEX_POINTER,
        VR::AT,
        tags::REFERENCED_SEGMENT_NUMBER,
    );
    put(
        &mut index,
        tags::FUNCTIONAL_GROUP_POINTER,
        VR::AT,
        tags::SEGMENT_IDENTIFICATION_SEQUENCE,
    );
    put(
        &mut index,
        tags::DIMENSION_DESCRIPTION_LABEL,
        VR::LO,
        "Referenced Segment Number",
    );
    put_seq(obj, tags::DIMENSION_INDEX_SEQUENCE, vec![index]);
}

// ---------------------------------------------------------------- pixels

/// Image Pixel: 1-bit MONOCHROME2 frames, one per segment, packed into one OB value.
fn put_pixels(obj: &mut InMemDicomObject, rows: u16, columns: u16, segments: &[Segment<'_>]) {
    put(obj, tags::SAMPLES_PER_PIXEL, VR::US, 1u16);
    put(obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
    put(obj, tags::ROWS, VR::US, rows);
    put(obj, tags::COLUMNS, VR::US, columns);
    put(obj, tags::BITS_ALLOCATED, VR::US, 1u16);
    put(obj, tags::BITS_STORED, VR::US, 1u16);
    put(obj, tags::HIGH_BIT, VR::US, 0u16);
    put(obj, tags::PIXEL_REPRESENTATION, VR::US, 0u16);
    let frames: Vec<&[u8]> = segments.iter().map(|s| s.mask.bits.as_slice()).collect();
    put(obj, tags::PIXEL_DATA, VR::OB, pack_frames(&frames));
}

/// The frames as one bit stream: pixel *k* of the stream (frames one after the other, each
/// row-major) is bit `k % 8` of byte `k / 8`, set when the pixel is not 0; no padding between
/// frames, a zero byte added where needed for an even length.
fn pack_frames(frames: &[&[u8]]) -> Vec<u8> {
    let bits: usize = frames.iter().map(|f| f.len()).sum();
    let mut out = vec![0u8; bits.div_ceil(8).next_multiple_of(2)];
    let pixels = frames.iter().flat_map(|f| f.iter());
    for (k, _) in pixels.enumerate().filter(|(_, p)| **p != 0) {
        out[k / 8] |= 1 << (k % 8);
    }
    out
}

fn date(p: &Placement) -> String {
    p.content_datetime.format("%Y%m%d").to_string()
}

fn time(p: &Placement) -> String {
    p.content_datetime.format("%H%M%S").to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use chrono::NaiveDate;
    use dicom_core::Tag;

    fn mask(rows: usize, columns: usize, on: &[usize]) -> BitMask {
        let mut bits = vec![0u8; rows * columns];
        for &i in on {
            bits[i] = 1;
        }
        BitMask {
            rows,
            columns,
            bits,
        }
    }

    fn request(channels: Vec<(&str, BitMask)>, trained: bool) -> SegRequest {
        SegRequest {
            study: SourceStudy {
                study_instance_uid: "1.2.3".into(),
                patient_name: "Doe^Jane".into(),
                ..SourceStudy::default()
            },
            source: SourceImage {
                image: ImageRef {
                    sop_class_uid: "1.2.840.10008.5.1.4.1.1.1".into(),
                    sop_instance_uid: "1.2.3.4.5".into(),
                    series_instance_uid: "1.2.3.4".into(),
                },
                rows: 3,
                columns: 3,
                pixel_spacing: Some((0.5, 0.25)),
            },
            model: ModelInfo {
                classifier_name: "anatomy-xnet".into(),
                classifier_version: "1.0.0".into(),
                segmenter_name: "anatomy-segmenter".into(),
                segmenter_version: "1.1.0".into(),
                trained,
                manufacturer: "cxr-worker project".into(),
                software_version: "0.1.0".into(),
            },
            channels: channels
                .into_iter()
                .map(|(n, m)| (n.to_string(), m))
                .collect(),
            placement: Placement {
                series_instance_uid: None,
                series_number: 9002,
                instance_number: 1,
                content_datetime: NaiveDate::from_ymd_opt(2025, 3, 14)
                    .unwrap()
                    .and_hms_opt(9, 26, 53)
                    .unwrap(),
                sop_instance_uid: None,
                uid_root: None,
            },
        }
    }

    fn element_str(obj: &InMemDicomObject, tag: Tag) -> String {
        obj.element(tag).unwrap().to_str().unwrap().to_string()
    }

    fn pixel_data(built: &BuiltSeg) -> Vec<u8> {
        built
            .object
            .file
            .element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn bits_are_packed_lsb_first_across_frame_boundaries() {
        // three 3×3 frames = 27 bits in 4 bytes, padded to 4 (already even)
        let a = [1, 0, 0, 0, 0, 0, 0, 0, 1]; // bits 0 and 8
        let b = [1, 1, 0, 0, 0, 0, 0, 0, 0]; // bits 9 and 10
        let c = [0, 0, 0, 0, 0, 0, 1, 0, 1]; // bits 24 and 26
        let packed = pack_frames(&[&a, &b, &c]);
        assert_eq!(packed, vec![0b0000_0001, 0b0000_0111, 0, 0b0000_0101]);
        // 9 bits → 2 bytes; 1 bit → 1 byte, padded to 2
        assert_eq!(pack_frames(&[&a]), vec![0b0000_0001, 0b0000_0001]);
        assert_eq!(pack_frames(&[&[1]]), vec![1, 0]);
        assert_eq!(pack_frames(&[&[0; 17]]), vec![0; 4]);
    }

    #[test]
    fn segments_follow_the_organ_order_whatever_the_channel_order() {
        let req = request(
            vec![
                ("heart", mask(3, 3, &[4])),
                ("left_lung", mask(3, 3, &[0])),
                ("right_lung", mask(3, 3, &[8])),
            ],
            true,
        );
        let built = build_seg(&req).unwrap();
        let labels: Vec<(u16, &str, &str)> = built
            .segments
            .iter()
            .map(|s| (s.number, s.label.as_str(), s.property_type.value))
            .collect();
        assert_eq!(
            labels,
            [
                (1, "Right lung", "3341006"),
                (2, "Left lung", "44029006"),
                (3, "Heart", "80891009")
            ]
        );
        // frame 1 = right lung (bit 8), frame 2 = left lung (bit 9), frame 3 = heart (bit 22)
        assert_eq!(pixel_data(&built), vec![0, 0b0000_0011, 0b0100_0000, 0]);
        let file = &built.object.file;
        let frames = file
            .element(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE)
            .unwrap()
            .items()
            .unwrap();
        for (i, frame) in frames.iter().enumerate() {
            let id = &frame
                .element(tags::SEGMENT_IDENTIFICATION_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            let n = id
                .element(tags::REFERENCED_SEGMENT_NUMBER)
                .unwrap()
                .to_int::<u16>()
                .unwrap();
            assert_eq!(usize::from(n), i + 1);
        }
        assert_eq!(element_str(file, tags::NUMBER_OF_FRAMES), "3");
        assert_eq!(element_str(file, tags::SEGMENTS_OVERLAP), "NO");
        assert_eq!(element_str(file, tags::MODALITY), "SEG");
    }

    #[test]
    fn unknown_channels_are_skipped_and_empty_masks_kept() {
        let req = request(
            vec![
                ("left_lung", mask(3, 3, &[])),
                ("right_lung", mask(3, 3, &[0, 1])),
                ("heart", mask(3, 3, &[1])),
                ("trachea", mask(1, 1, &[])),
            ],
            false,
        );
        let built = build_seg(&req).unwrap();
        let channels: Vec<&str> = built.segments.iter().map(|s| s.channel.as_str()).collect();
        assert_eq!(channels, ["right_lung", "left_lung", "heart"]);
        let file = &built.object.file;
        assert_eq!(element_str(file, tags::NUMBER_OF_FRAMES), "3");
        assert_eq!(element_str(file, tags::SEGMENTS_OVERLAP), "YES");
        let segment = &file
            .element(tags::SEGMENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert_eq!(
            element_str(segment, tags::SEGMENT_DESCRIPTION),
            UNTRAINED_COMMENT
        );
        let algorithm = &segment
            .element(tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE)
            .unwrap()
            .items()
            .unwrap()[0];
        assert!(element_str(algorithm, tags::ALGORITHM_VERSION).ends_with(" UNTRAINED"));
        assert_eq!(
            element_str(algorithm, tags::ALGORITHM_PARAMETERS),
            UNTRAINED_PARAMETERS
        );
        assert_eq!(organ("trachea"), None);
        assert_eq!(organ("heart").map(|o| o.label), Some("Heart"));
    }

    #[test]
    fn a_mask_not_at_the_source_geometry_is_refused() {
        for bad in [
            mask(3, 4, &[]),
            mask(4, 3, &[]),
            BitMask {
                rows: 3,
                columns: 3,
                bits: vec![0; 8],
            },
        ] {
            let req = request(vec![("right_lung", mask(3, 3, &[])), ("heart", bad)], true);
            match build_seg(&req) {
                Err(SegError::MaskGeometry { channel, .. }) => assert_eq!(channel, "heart"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn bad_requests_are_refused() {
        let only_unknown = request(vec![("trachea", mask(3, 3, &[]))], true);
        assert!(matches!(
            build_seg(&only_unknown),
            Err(SegError::NoSegment { .. })
        ));
        let twice = request(
            vec![("heart", mask(3, 3, &[])), ("heart", mask(3, 3, &[]))],
            true,
        );
        assert!(matches!(
            build_seg(&twice),
            Err(SegError::DuplicateChannel { .. })
        ));
        let mut huge = request(vec![("heart", mask(0, 0, &[]))], true);
        huge.source.rows = 70_000;
        assert!(matches!(build_seg(&huge), Err(SegError::SourceSize { .. })));
        let mut bad_uid = request(vec![("heart", mask(3, 3, &[]))], true);
        bad_uid.placement.series_instance_uid = Some("1..2".into());
        assert!(matches!(
            build_seg(&bad_uid),
            Err(SegError::InvalidUid { .. })
        ));
        assert!(check_pixel_data_size(3, 65_535, 65_535).is_ok());
        assert!(check_pixel_data_size(9, 65_535, 65_535).is_err());
    }
}

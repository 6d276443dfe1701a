//! SR builder (report stage): a [`ReportRequest`] → a Comprehensive 3D SR (Explicit VR Little
//! Endian) with a TID 1500 "Imaging Measurement Report" root, IHE AI Results style.
//!
//! The content tree (relationship, value type, concept name):
//! ```text
//! CONTAINER Imaging Measurement Report                      (TID 1500, template 1500)
//!  HAS CONCEPT MOD  CODE Language of Content Item…   = en-US  (TID 1204)
//!  HAS OBS CONTEXT  CODE Observer Type               = Device (TID 1002)
//!  HAS OBS CONTEXT  UIDREF/TEXT Device Observer UID, Name, Manufacturer, Model Name (TID 1004)
//!  HAS CONCEPT MOD  CODE Procedure reported          = Plain chest X-ray
//!  CONTAINS CONTAINER Image Library                                    (TID 1600)
//!   CONTAINS CONTAINER Image Library Group
//!    CONTAINS IMAGE Source                                             (one per image)
//!  CONTAINS CONTAINER Imaging Measurements                            (findings reports)
//!   CONTAINS CONTAINER Measurement Group (TID 1501), one per image and label:
//!    HAS OBS CONTEXT  TEXT Tracking Identifier "<label> #<image>", UIDREF Tracking UID
//!    CONTAINS         CODE Finding = <finding code>
//!    HAS CONCEPT MOD  CODE Finding Site (not for Hernia)
//!    HAS CONCEPT MOD  TEXT Algorithm Name, Algorithm Version, Algorithm Parameters (TID 4019)
//!    CONTAINS         NUM  Probability (UCUM "1")
//!    CONTAINS         CODE <finding code> = Present | Absent (at the threshold)
//!    CONTAINS         IMAGE Source of Measurement
//!   CONTAINS CONTAINER Measurement Group "Cardiothoracic ratio #<image>" (where given):
//!    tracking, Finding Site Heart, segmenter as algorithm, NUM Cardiothoracic ratio (INFERRED
//!    FROM IMAGE: the SEG frames it was measured on, where the image has a SEG), IMAGE
//!   CONTAINS CONTAINER Measurement Group (TID 1410), one per organ of the image's SEG:
//!    tracking "<organ> #<image>", CODE Finding = organ, IMAGE Referenced Segmentation Frame
//!    (the SEG frame of that organ), IMAGE Source image for segmentation, segmenter as
//!    algorithm, NUM Area (mm2) where the pixel spacing is known
//!  CONTAINS CONTAINER Qualitative Evaluations   (untrained model, or "not analysed: <reason>")
//!   CONTAINS TEXT Comment
//! ```
//! The Tracking UID is derived from (study, image, label), so a revised report keeps it. The
//! image outputs (SEG, SC) are listed in the Pertinent Other Evidence Sequence.

use dicom_core::{PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::{FileDicomObject, InMemDicomObject};

use super::codes::{self, Code};
use super::dataset::{
    DEVICE_NAME, character_set, code_seq_item, lo, put, put_equipment, put_general_study,
    put_patient, put_seq, referenced_sop,
};
use super::{
    AnalysedImage, Completion, ImageOutputRefs, ImageRef, ModelInfo, Predecessor, ReportContent,
    ReportRequest, SegReference, SourceStudy, SrError, derived_uid, format_ds, new_uid,
};

/// SOP Class UID of every SR built here: Comprehensive 3D SR Storage.
pub const SR_SOP_CLASS_UID: &str = uids::COMPREHENSIVE3_DSR_STORAGE;

/// Text of the report-level comment when the model's weights are not trained.
pub const UNTRAINED_COMMENT: &str = "UNTRAINED model: not for clinical use";

/// An SR ready to be written or sent.
#[derive(Debug, Clone)]
pub struct BuiltReport {
    /// The SR with its file meta group (transfer syntax Explicit VR Little Endian).
    pub file: FileDicomObject<InMemDicomObject>,
    /// Its SOP Instance UID.
    pub sop_instance_uid: String,
    /// Its Series Instance UID.
    pub series_instance_uid: String,
    /// The Study Instance UID of the study it reports on (and belongs to).
    pub study_instance_uid: String,
}

impl super::Output for BuiltReport {
    fn kind(&self) -> super::OutputKind {
        super::OutputKind::Sr
    }
    fn file(&self) -> &FileDicomObject<InMemDicomObject> {
        &self.file
    }
    fn sop_class_uid(&self) -> &str {
        SR_SOP_CLASS_UID
    }
    fn sop_instance_uid(&self) -> &str {
        &self.sop_instance_uid
    }
    fn study_instance_uid(&self) -> &str {
        &self.study_instance_uid
    }
}

/// Build the SR for a request: findings, or a short "not analysed: <reason>" report.
pub fn build_sr(req: &ReportRequest) -> Result<BuiltReport, SrError> {
    validate(req)?;
    let root = req.uid_root.as_deref();
    let sop_instance_uid = match &req.sop_instance_uid {
        Some(u) => u.clone(),
        None => new_uid(root)?,
    };
    let series_instance_uid = match &req.series_instance_uid {
        Some(u) => u.clone(),
        None => new_uid(root)?,
    };

    let mut obj = InMemDicomObject::new_empty();
    put_header(&mut obj, req, &sop_instance_uid, &series_instance_uid);
    put_evidence(&mut obj, req);
    put_root_content(&mut obj, req);
    if let Some(cs) = character_set(&obj, &req.study) {
        put(&mut obj, tags::SPECIFIC_CHARACTER_SET, VR::CS, cs);
    }

    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|source| SrError::BuildMeta { source })?;
    Ok(BuiltReport {
        file,
        sop_instance_uid,
        series_instance_uid,
        study_instance_uid: req.study.study_instance_uid.clone(),
    })
}

// ---------------------------------------------------------------- validation

fn validate(req: &ReportRequest) -> Result<(), SrError> {
    check_uid("Study Instance UID", &req.study.study_instance_uid)?;
    for (what, uid) in [
        ("SOP Instance UID", &req.sop_instance_uid),
        ("Series Instance UID", &req.series_instance_uid),
    ] {
        if let Some(u) = uid {
            check_uid(what, u)?;
        }
    }
    if let Some(p) = &req.predecessor {
        check_uid("predecessor Study Instance UID", &p.study_instance_uid)?;
        check_uid("predecessor Series Instance UID", &p.series_instance_uid)?;
        check_uid("predecessor SOP Class UID", &p.sop_class_uid)?;
        check_uid("predecessor SOP Instance UID", &p.sop_instance_uid)?;
    }
    for o in &req.image_outputs {
        if let Some(seg) = &o.seg {
            check_image(&seg.object)?;
        }
        if let Some(sc) = &o.sc {
            check_image(sc)?;
        }
    }
    match &req.content {
        ReportContent::Findings(images) => {
            if images.is_empty() {
                return Err(SrError::NoAnalysedImage);
            }
            images.iter().try_for_each(validate_image)
        }
        ReportContent::NotAnalysed { received, .. } => received.iter().try_for_each(check_image),
    }
}

fn validate_image(img: &AnalysedImage) -> Result<(), SrError> {
    check_image(&img.image)?;
    for (i, r) in img.labels.iter().enumerate() {
        if codes::coding_for_label(&r.label).is_none() {
            return Err(SrError::UnknownLabel {
                label: r.label.clone(),
            });
        }
        if img.labels[..i].iter().any(|o| o.label == r.label) {
            return Err(SrError::DuplicateLabel {
                label: r.label.clone(),
                sop_instance_uid: img.image.sop_instance_uid.clone(),
            });
        }
        for (what, value) in [("probability", r.probability), ("threshold", r.threshold)] {
            if !(0.0..=1.0).contains(&value) {
                return Err(SrError::OutOfRange {
                    what,
                    label: r.label.clone(),
                    value,
                });
            }
        }
    }
    match img.cardiothoracic_ratio {
        Some(v) if !(v.is_finite() && v > 0.0) => Err(SrError::InvalidRatio {
            value: v,
            sop_instance_uid: img.image.sop_instance_uid.clone(),
        }),
        _ => Ok(()),
    }
}

fn check_image(img: &ImageRef) -> Result<(), SrError> {
    check_uid("image SOP Class UID", &img.sop_class_uid)?;
    check_uid("image SOP Instance UID", &img.sop_instance_uid)?;
    check_uid("image Series Instance UID", &img.series_instance_uid)
}

/// UIDs of source images and earlier reports are referenced exactly as received.
fn check_uid(what: &'static str, uid: &str) -> Result<(), SrError> {
    if crate::dicom::uid::is_received_uid(uid) {
        Ok(())
    } else {
        Err(SrError::InvalidUid {
            what,
            uid: uid.to_string(),
        })
    }
}

// ---------------------------------------------------------------- header modules

/// The header modules of the SR, in this order: SOP Common, Patient, General Study, SR Document
/// Series, General Equipment, SR Document General.
fn put_header(obj: &mut InMemDicomObject, req: &ReportRequest, sop_uid: &str, series_uid: &str) {
    let date = req.content_datetime.format("%Y%m%d").to_string();
    let time = req.content_datetime.format("%H%M%S").to_string();
    put_sop_common(obj, req, sop_uid, &date, &time);
    put_patient(obj, &req.study);
    put_general_study(obj, &req.study);
    put_sr_document_series(obj, req, series_uid);
    put_equipment(obj, &req.model);
    put_sr_document_general(obj, req, &date, &time);
}

/// SOP Common: class, instance, creation date and time, the coding schemes used, the
/// contributing equipment.
fn put_sop_common(
    obj: &mut InMemDicomObject,
    req: &ReportRequest,
    sop_uid: &str,
    date: &str,
    time: &str,
) {
    put(obj, tags::SOP_CLASS_UID, VR::UI, SR_SOP_CLASS_UID);
    put(obj, tags::SOP_INSTANCE_UID, VR::UI, sop_uid);
    put(obj, tags::INSTANCE_CREATION_DATE, VR::DA, date);
    put(obj, tags::INSTANCE_CREATION_TIME, VR::TM, time);
    put_seq(
        obj,
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        coding_schemes(),
    );
    put_seq(
        obj,
        tags::CONTRIBUTING_EQUIPMENT_SEQUENCE,
        vec![contributing_equipment(req)],
    );
}

/// SR Document Series: modality SR, the series of the report.
fn put_sr_document_series(obj: &mut InMemDicomObject, req: &ReportRequest, series_uid: &str) {
    put(obj, tags::MODALITY, VR::CS, "SR");
    put(obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put(
        obj,
        tags::SERIES_NUMBER,
        VR::IS,
        req.series_number.to_string(),
    );
    put(
        obj,
        tags::SERIES_DESCRIPTION,
        VR::LO,
        "AI chest X-ray findings",
    );
    put_seq(
        obj,
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    );
}

/// SR Document General: instance number, content date and time, completion and verification,
/// the requests it answers and the report it revises.
fn put_sr_document_general(
    obj: &mut InMemDicomObject,
    req: &ReportRequest,
    date: &str,
    time: &str,
) {
    put(
        obj,
        tags::INSTANCE_NUMBER,
        VR::IS,
        req.instance_number.to_string(),
    );
    put(obj, tags::CONTENT_DATE, VR::DA, date);
    put(obj, tags::CONTENT_TIME, VR::TM, time);
    let completion = match req.completion {
        Completion::Complete => "COMPLETE",
        Completion::Partial => "PARTIAL",
    };
    put(obj, tags::COMPLETION_FLAG, VR::CS, completion);
    put(obj, tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED");
    put_seq(obj, tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]);
    let s = &req.study;
    if !s.requests.is_empty() {
        let items = s.requests.iter().map(request_item).collect();
        put_seq(obj, tags::REFERENCED_REQUEST_SEQUENCE, items);
    }
    if let Some(p) = &req.predecessor {
        put_seq(
            obj,
            tags::PREDECESSOR_DOCUMENTS_SEQUENCE,
            vec![predecessor_item(p)],
        );
    }
}

fn coding_schemes() -> Vec<InMemDicomObject> {
    [
        (
            codes::PRIVATE_SCHEME,
            codes::PRIVATE_SCHEME_NAME,
            "cxr-worker project",
        ),
        (codes::IHE_SCHEME, codes::IHE_SCHEME_NAME, "IHE"),
    ]
    .into_iter()
    .map(|(designator, name, organization)| {
        let mut item = InMemDicomObject::new_empty();
        put(
            &mut item,
            tags::CODING_SCHEME_DESIGNATOR,
            VR::SH,
            designator,
        );
        put(&mut item, tags::CODING_SCHEME_NAME, VR::ST, name);
        put(
            &mut item,
            tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
            VR::ST,
            organization,
        );
        item
    })
    .collect()
}

fn contributing_equipment(req: &ReportRequest) -> InMemDicomObject {
    let m = &req.model;
    let mut item = InMemDicomObject::new_empty();
    put_seq(
        &mut item,
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code_seq_item(&codes::PROCESSING_ALGORITHM)],
    );
    put(
        &mut item,
        tags::MANUFACTURER,
        VR::LO,
        m.manufacturer.as_str(),
    );
    put(
        &mut item,
        tags::MANUFACTURER_MODEL_NAME,
        VR::LO,
        m.classifier_name.as_str(),
    );
    put(&mut item, tags::DEVICE_UID, VR::UI, m.device_uid());
    let versions = vec![
        lo(&format!("{} {}", m.classifier_name, m.classifier_version)),
        lo(&format!("{} {}", m.segmenter_name, m.segmenter_version)),
        lo(&format!("{DEVICE_NAME} {}", m.software_version)),
    ];
    put(
        &mut item,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        PrimitiveValue::Strs(versions.into()),
    );
    let dt = req.content_datetime.format("%Y%m%d%H%M%S").to_string();
    put(&mut item, tags::CONTRIBUTION_DATE_TIME, VR::DT, dt);
    let mut description =
        String::from("Chest X-ray classification (Anatomy-XNet) and anatomy segmentation");
    if !m.trained {
        description.push_str("; ");
        description.push_str(UNTRAINED_COMMENT);
    }
    put(
        &mut item,
        tags::CONTRIBUTION_DESCRIPTION,
        VR::ST,
        description,
    );
    item
}

/// A LO value: at most 64 characters, no backslash.
fn request_item(r: &super::RequestReference) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(
        &mut item,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        r.study_instance_uid.as_str(),
    );
    put_seq(&mut item, tags::REFERENCED_STUDY_SEQUENCE, vec![]);
    put(
        &mut item,
        tags::ACCESSION_NUMBER,
        VR::SH,
        r.accession_number.as_str(),
    );
    put(
        &mut item,
        tags::PLACER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST,
        VR::LO,
        r.placer_order_number.as_str(),
    );
    put(
        &mut item,
        tags::FILLER_ORDER_NUMBER_IMAGING_SERVICE_REQUEST,
        VR::LO,
        r.filler_order_number.as_str(),
    );
    put(
        &mut item,
        tags::REQUESTED_PROCEDURE_ID,
        VR::SH,
        r.requested_procedure_id.as_str(),
    );
    put(
        &mut item,
        tags::REQUESTED_PROCEDURE_DESCRIPTION,
        VR::LO,
        r.requested_procedure_description.as_str(),
    );
    let code_items = r
        .requested_procedure_code
        .iter()
        .map(|c| {
            let mut ci = InMemDicomObject::new_empty();
            put(&mut ci, tags::CODE_VALUE, VR::SH, c.value.as_str());
            put(
                &mut ci,
                tags::CODING_SCHEME_DESIGNATOR,
                VR::SH,
                c.scheme.as_str(),
            );
            put(&mut ci, tags::CODE_MEANING, VR::LO, c.meaning.as_str());
            ci
        })
        .collect();
    put_seq(
        &mut item,
        tags::REQUESTED_PROCEDURE_CODE_SEQUENCE,
        code_items,
    );
    item
}

fn predecessor_item(p: &Predecessor) -> InMemDicomObject {
    hierarchical_reference(
        &p.study_instance_uid,
        &[ImageRef {
            sop_class_uid: p.sop_class_uid.clone(),
            sop_instance_uid: p.sop_instance_uid.clone(),
            series_instance_uid: p.series_instance_uid.clone(),
        }],
    )
}

/// The images the report is about: analysed images, or those received for a not-analysed study.
fn evidence_images(req: &ReportRequest) -> Vec<&ImageRef> {
    match &req.content {
        ReportContent::Findings(images) => images.iter().map(|i| &i.image).collect(),
        ReportContent::NotAnalysed { received, .. } => received.iter().collect(),
    }
}

fn put_evidence(obj: &mut InMemDicomObject, req: &ReportRequest) {
    let images: Vec<ImageRef> = evidence_images(req).into_iter().cloned().collect();
    if images.is_empty() {
        return;
    }
    let item = hierarchical_reference(&req.study.study_instance_uid, &images);
    put_seq(
        obj,
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![item],
    );
    // our SEGs (referenced by the TID 1410 groups) and SCs, in the same study
    let made: Vec<ImageRef> = req
        .image_outputs
        .iter()
        .flat_map(|o| o.seg.iter().map(|s| s.object.clone()).chain(o.sc.clone()))
        .collect();
    if !made.is_empty() {
        let item = hierarchical_reference(&req.study.study_instance_uid, &made);
        put_seq(obj, tags::PERTINENT_OTHER_EVIDENCE_SEQUENCE, vec![item]);
    }
}

/// Hierarchical SOP Instance Reference Macro for one study, images grouped by series.
fn hierarchical_reference(study_uid: &str, images: &[ImageRef]) -> InMemDicomObject {
    let mut series: Vec<(&str, Vec<InMemDicomObject>)> = Vec::new();
    for img in images {
        let sop = referenced_sop(img);
        match series
            .iter_mut()
            .find(|(uid, _)| *uid == img.series_instance_uid)
        {
            Some((_, sops)) => sops.push(sop),
            None => series.push((&img.series_instance_uid, vec![sop])),
        }
    }
    let series_items = series
        .into_iter()
        .map(|(uid, sops)| {
            let mut item = InMemDicomObject::new_empty();
            put(&mut item, tags::SERIES_INSTANCE_UID, VR::UI, uid);
            put_seq(&mut item, tags::REFERENCED_SOP_SEQUENCE, sops);
            item
        })
        .collect();
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::STUDY_INSTANCE_UID, VR::UI, study_uid);
    put_seq(&mut item, tags::REFERENCED_SERIES_SEQUENCE, series_items);
    item
}

// ---------------------------------------------------------------- content tree

const CONTAINS: &str = "CONTAINS";
const HAS_OBS_CONTEXT: &str = "HAS OBS CONTEXT";
const HAS_CONCEPT_MOD: &str = "HAS CONCEPT MOD";
const INFERRED_FROM: &str = "INFERRED FROM";

fn put_root_content(obj: &mut InMemDicomObject, req: &ReportRequest) {
    put(obj, tags::VALUE_TYPE, VR::CS, "CONTAINER");
    put_seq(
        obj,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_seq_item(&codes::IMAGING_MEASUREMENT_REPORT)],
    );
    put(obj, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    put_seq(
        obj,
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![template_item("1500")],
    );
    put_seq(obj, tags::CONTENT_SEQUENCE, root_children(req));
}

fn root_children(req: &ReportRequest) -> Vec<InMemDicomObject> {
    let m = &req.model;
    let mut children = vec![
        code_content(
            HAS_CONCEPT_MOD,
            &codes::LANGUAGE_OF_CONTENT,
            &codes::ENGLISH_US,
        ),
        code_content(HAS_OBS_CONTEXT, &codes::OBSERVER_TYPE, &codes::DEVICE),
        uidref_content(
            HAS_OBS_CONTEXT,
            &codes::DEVICE_OBSERVER_UID,
            &m.device_uid(),
        ),
        text_content(HAS_OBS_CONTEXT, &codes::DEVICE_OBSERVER_NAME, DEVICE_NAME),
    ];
    if !m.manufacturer.is_empty() {
        children.push(text_content(
            HAS_OBS_CONTEXT,
            &codes::DEVICE_OBSERVER_MANUFACTURER,
            &m.manufacturer,
        ));
    }
    children.push(text_content(
        HAS_OBS_CONTEXT,
        &codes::DEVICE_OBSERVER_MODEL_NAME,
        &m.classifier_name,
    ));
    children.push(code_content(
        HAS_CONCEPT_MOD,
        &codes::PROCEDURE_REPORTED,
        &codes::PLAIN_CHEST_XRAY,
    ));
    let images = evidence_images(req);
    if !images.is_empty() {
        children.push(image_library(&images));
    }
    let mut comments = Vec::new();
    match &req.content {
        ReportContent::Findings(analysed) => {
            let groups = analysed
                .iter()
                .enumerate()
                .flat_map(|(i, img)| {
                    let outputs = req
                        .image_outputs
                        .iter()
                        .find(|o| o.source_sop_instance_uid == img.image.sop_instance_uid);
                    image_groups(&req.study, m, i + 1, img, outputs)
                })
                .collect();
            children.push(container(
                CONTAINS,
                &codes::IMAGING_MEASUREMENTS,
                None,
                groups,
            ));
        }
        ReportContent::NotAnalysed { reason, .. } => {
            comments.push(format!("not analysed: {reason}"));
        }
    }
    if !m.trained {
        comments.push(UNTRAINED_COMMENT.to_string());
    }
    if !comments.is_empty() {
        let texts = comments
            .iter()
            .map(|c| text_content(CONTAINS, &codes::COMMENT, c))
            .collect();
        children.push(container(
            CONTAINS,
            &codes::QUALITATIVE_EVALUATIONS,
            None,
            texts,
        ));
    }
    children
}

fn image_library(images: &[&ImageRef]) -> InMemDicomObject {
    let entries = images
        .iter()
        .map(|img| image_content(CONTAINS, &codes::SOURCE, img))
        .collect();
    let group = container(CONTAINS, &codes::IMAGE_LIBRARY_GROUP, None, entries);
    container(CONTAINS, &codes::IMAGE_LIBRARY, None, vec![group])
}

/// The measurement groups of one analysed image: one per label, then the cardiothoracic ratio.
fn image_groups(
    study: &SourceStudy,
    model: &ModelInfo,
    index: usize,
    img: &AnalysedImage,
    outputs: Option<&ImageOutputRefs>,
) -> Vec<InMemDicomObject> {
    let seg = outputs.and_then(|o| o.seg.as_ref());
    let mut groups: Vec<InMemDicomObject> = img
        .labels
        .iter()
        .filter_map(|r| {
            let coding = codes::coding_for_label(&r.label)?;
            let evaluation = if r.is_present() {
                &codes::PRESENT
            } else {
                &codes::ABSENT
            };
            let mut items = tracking(study, img, index, coding.finding.meaning, &r.label);
            items.push(code_content(CONTAINS, &codes::FINDING, &coding.finding));
            if let Some(site) = &coding.site {
                items.push(code_content(HAS_CONCEPT_MOD, &codes::FINDING_SITE, site));
            }
            items.extend(algorithm(
                &model.classifier_name,
                &model.algorithm_version(),
                Some(&format!("threshold={}", format_ds(f64::from(r.threshold)))),
            ));
            items.push(num_content(
                CONTAINS,
                &codes::PROBABILITY,
                f64::from(r.probability),
                &codes::UCUM_NO_UNITS,
            ));
            items.push(code_content(CONTAINS, &coding.finding, evaluation));
            items.push(image_content(
                CONTAINS,
                &codes::SOURCE_OF_MEASUREMENT,
                &img.image,
            ));
            Some(container(
                CONTAINS,
                &codes::MEASUREMENT_GROUP,
                Some("1501"),
                items,
            ))
        })
        .collect();
    if let Some(ctr) = img.cardiothoracic_ratio {
        let name = codes::CARDIOTHORACIC_RATIO.meaning;
        let mut items = tracking(study, img, index, name, "cardiothoracic-ratio");
        items.push(code_content(
            HAS_CONCEPT_MOD,
            &codes::FINDING_SITE,
            &codes::HEART,
        ));
        let mut version = model.segmenter_version.clone();
        if !model.trained {
            version.push_str(" UNTRAINED");
        }
        items.extend(algorithm(&model.segmenter_name, &version, None));
        let mut ratio = num_content(
            CONTAINS,
            &codes::CARDIOTHORACIC_RATIO,
            f64::from(ctr),
            &codes::UCUM_NO_UNITS,
        );
        // its basis: the masks it was measured on (widest heart row / widest thorax row)
        if let Some(seg) = seg {
            let basis = seg
                .segments
                .iter()
                .filter(|(channel, _)| codes::organ(channel).is_some())
                .map(|(_, number)| {
                    segment_frame_content(
                        INFERRED_FROM,
                        &codes::REFERENCED_SEGMENTATION_FRAME,
                        &seg.object,
                        *number,
                    )
                })
                .collect();
            put_seq(&mut ratio, tags::CONTENT_SEQUENCE, basis);
        }
        items.push(ratio);
        items.push(image_content(
            CONTAINS,
            &codes::SOURCE_OF_MEASUREMENT,
            &img.image,
        ));
        groups.push(container(
            CONTAINS,
            &codes::MEASUREMENT_GROUP,
            Some("1501"),
            items,
        ));
    }
    if let Some(seg) = seg {
        groups.extend(seg.segments.iter().filter_map(|(channel, number)| {
            region_group(
                study,
                model,
                index,
                img,
                seg,
                codes::organ(channel)?,
                *number,
            )
        }));
    }
    groups
}

/// TID 1410 Planar ROI Measurements of one organ: its region is the SEG frame of its segment,
/// with its area where the pixel spacing is known.
fn region_group(
    study: &SourceStudy,
    model: &ModelInfo,
    index: usize,
    img: &AnalysedImage,
    seg: &SegReference,
    organ: &codes::Organ,
    number: u16,
) -> Option<InMemDicomObject> {
    let mut items = tracking(study, img, index, organ.label, organ.channel);
    items.push(code_content(CONTAINS, &codes::FINDING, &organ.code));
    items.push(segment_frame_content(
        CONTAINS,
        &codes::REFERENCED_SEGMENTATION_FRAME,
        &seg.object,
        number,
    ));
    items.push(image_content(
        CONTAINS,
        &codes::SOURCE_IMAGE_FOR_SEGMENTATION,
        &img.image,
    ));
    let mut version = model.segmenter_version.clone();
    if !model.trained {
        version.push_str(" UNTRAINED");
    }
    items.extend(algorithm(&model.segmenter_name, &version, None));
    let m = &img.measurements;
    let area = match organ.channel {
        "right_lung" => m.right_lung_mm2,
        "left_lung" => m.left_lung_mm2,
        "heart" => m.heart_mm2,
        _ => None,
    };
    if let Some(mm2) = area.filter(|a| a.is_finite() && *a >= 0.0) {
        items.push(num_content(CONTAINS, &codes::AREA, mm2, &codes::UCUM_MM2));
    }
    Some(container(
        CONTAINS,
        &codes::MEASUREMENT_GROUP,
        Some("1410"),
        items,
    ))
}

/// TID 4108 tracking identifier and a Tracking UID stable across revisions of the report.
fn tracking(
    study: &SourceStudy,
    img: &AnalysedImage,
    index: usize,
    name: &str,
    key: &str,
) -> Vec<InMemDicomObject> {
    let uid = derived_uid(&[
        "cxr-worker tracking uid v1",
        &study.study_instance_uid,
        &img.image.sop_instance_uid,
        key,
    ]);
    vec![
        text_content(
            HAS_OBS_CONTEXT,
            &codes::TRACKING_IDENTIFIER,
            &format!("{name} #{index}"),
        ),
        uidref_content(HAS_OBS_CONTEXT, &codes::TRACKING_UID, &uid),
    ]
}

/// TID 4019 Algorithm Identification.
fn algorithm(name: &str, version: &str, parameters: Option<&str>) -> Vec<InMemDicomObject> {
    let mut items = vec![
        text_content(HAS_CONCEPT_MOD, &codes::ALGORITHM_NAME, name),
        text_content(HAS_CONCEPT_MOD, &codes::ALGORITHM_VERSION, version),
    ];
    if let Some(p) = parameters {
        items.push(text_content(
            HAS_CONCEPT_MOD,
            &codes::ALGORITHM_PARAMETERS,
            p,
        ));
    }
    items
}

// ---------------------------------------------------------------- content items

fn content_item(relationship: &str, value_type: &str, name: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::RELATIONSHIP_TYPE, VR::CS, relationship);
    put(&mut item, tags::VALUE_TYPE, VR::CS, value_type);
    put_seq(
        &mut item,
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![code_seq_item(name)],
    );
    item
}

fn container(
    relationship: &str,
    name: &Code,
    template: Option<&str>,
    children: Vec<InMemDicomObject>,
) -> InMemDicomObject {
    let mut item = content_item(relationship, "CONTAINER", name);
    put(&mut item, tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE");
    if let Some(t) = template {
        put_seq(
            &mut item,
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![template_item(t)],
        );
    }
    if !children.is_empty() {
        put_seq(&mut item, tags::CONTENT_SEQUENCE, children);
    }
    item
}

fn code_content(relationship: &str, name: &Code, value: &Code) -> InMemDicomObject {
    let mut item = content_item(relationship, "CODE", name);
    put_seq(
        &mut item,
        tags::CONCEPT_CODE_SEQUENCE,
        vec![code_seq_item(value)],
    );
    item
}

fn text_content(relationship: &str, name: &Code, value: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "TEXT", name);
    put(&mut item, tags::TEXT_VALUE, VR::UT, value);
    item
}

fn uidref_content(relationship: &str, name: &Code, uid: &str) -> InMemDicomObject {
    let mut item = content_item(relationship, "UIDREF", name);
    put(&mut item, tags::UID, VR::UI, uid);
    item
}

fn num_content(relationship: &str, name: &Code, value: f64, unit: &Code) -> InMemDicomObject {
    let mut measured = InMemDicomObject::new_empty();
    put_seq(
        &mut measured,
        tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
        vec![code_seq_item(unit)],
    );
    put(&mut measured, tags::NUMERIC_VALUE, VR::DS, format_ds(value));
    let mut item = content_item(relationship, "NUM", name);
    put_seq(&mut item, tags::MEASURED_VALUE_SEQUENCE, vec![measured]);
    item
}

fn image_content(relationship: &str, name: &Code, img: &ImageRef) -> InMemDicomObject {
    let mut item = content_item(relationship, "IMAGE", name);
    put_seq(
        &mut item,
        tags::REFERENCED_SOP_SEQUENCE,
        vec![referenced_sop(img)],
    );
    item
}

/// An IMAGE item referencing one frame of a SEG: Referenced Frame Number only (a Referenced
/// Segment Number may not accompany it, PS3.3 C.10.9); each of our SEG's frames is one whole
/// segment, frame number = segment number.
fn segment_frame_content(
    relationship: &str,
    name: &Code,
    seg: &ImageRef,
    number: u16,
) -> InMemDicomObject {
    let mut item = content_item(relationship, "IMAGE", name);
    let mut sop = referenced_sop(seg);
    put(
        &mut sop,
        tags::REFERENCED_FRAME_NUMBER,
        VR::IS,
        number.to_string(),
    );
    put_seq(&mut item, tags::REFERENCED_SOP_SEQUENCE, vec![sop]);
    item
}

fn template_item(id: &str) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::MAPPING_RESOURCE, VR::CS, "DCMR");
    put(&mut item, tags::TEMPLATE_IDENTIFIER, VR::CS, id);
    item
}

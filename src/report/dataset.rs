//! Dataset helpers shared by every output builder (SR, SEG, SC): elements, code items, and the
//! modules copied from the source study (Patient, General Study) or describing us (equipment).

use dicom_core::value::{DataSetSequence, Value};
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;

use super::codes::Code;
use super::{ImageRef, ModelInfo, Placement, SourceStudy};

/// Name of the device (software) that makes every output.
pub(super) const DEVICE_NAME: &str = "cxr-worker";

/// Patient, as read from the source study.
pub(super) fn put_patient(obj: &mut InMemDicomObject, s: &SourceStudy) {
    put(obj, tags::PATIENT_NAME, VR::PN, s.patient_name.as_str());
    put(obj, tags::PATIENT_ID, VR::LO, s.patient_id.as_str());
    if let Some(issuer) = &s.issuer_of_patient_id {
        put(obj, tags::ISSUER_OF_PATIENT_ID, VR::LO, issuer.as_str());
    }
    put(
        obj,
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        s.patient_birth_date.as_str(),
    );
    put(obj, tags::PATIENT_SEX, VR::CS, s.patient_sex.as_str());
}

/// General Study, as read from the source study (the SR belongs to it).
pub(super) fn put_general_study(obj: &mut InMemDicomObject, s: &SourceStudy) {
    put(
        obj,
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        s.study_instance_uid.as_str(),
    );
    put(obj, tags::STUDY_DATE, VR::DA, s.study_date.as_str());
    put(obj, tags::STUDY_TIME, VR::TM, s.study_time.as_str());
    put(
        obj,
        tags::ACCESSION_NUMBER,
        VR::SH,
        s.accession_number.as_str(),
    );
    put(obj, tags::STUDY_ID, VR::SH, s.study_id.as_str());
    put(
        obj,
        tags::REFERRING_PHYSICIAN_NAME,
        VR::PN,
        s.referring_physician_name.as_str(),
    );
}

/// General Equipment and Enhanced General Equipment: the software that wrote the SR.
pub(super) fn put_equipment(obj: &mut InMemDicomObject, model: &ModelInfo) {
    put(obj, tags::MANUFACTURER, VR::LO, model.manufacturer.as_str());
    put(obj, tags::MANUFACTURER_MODEL_NAME, VR::LO, DEVICE_NAME);
    put(obj, tags::DEVICE_SERIAL_NUMBER, VR::LO, model.device_uid());
    put(
        obj,
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        model.software_version.as_str(),
    );
}

pub(super) fn code_seq_item(code: &Code) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(&mut item, tags::CODE_VALUE, VR::SH, code.value);
    put(
        &mut item,
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        code.scheme,
    );
    put(&mut item, tags::CODE_MEANING, VR::LO, code.meaning);
    item
}

// ---------------------------------------------------------------- elements

pub(super) fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: impl Into<PrimitiveValue>) {
    obj.put(DataElement::new(tag, vr, value.into()));
}

pub(super) fn put_seq(obj: &mut InMemDicomObject, tag: Tag, items: Vec<InMemDicomObject>) {
    obj.put(DataElement::new(tag, VR::SQ, DataSetSequence::from(items)));
}

/// Specific Character Set of the SR: ISO_IR 192 (UTF-8) when any text is not ASCII or the source
/// was already UTF-8; otherwise none (the default repertoire).
pub(super) fn character_set(obj: &InMemDicomObject, source: &SourceStudy) -> Option<&'static str> {
    let source_utf8 = source
        .specific_character_set
        .split('\\')
        .any(|t| t.trim() == "ISO_IR 192");
    (source_utf8 || has_non_ascii(obj)).then_some("ISO_IR 192")
}

fn has_non_ascii(obj: &InMemDicomObject) -> bool {
    obj.iter().any(|e| match e.value() {
        Value::Primitive(PrimitiveValue::Str(s)) => !s.is_ascii(),
        Value::Primitive(PrimitiveValue::Strs(v)) => v.iter().any(|s| !s.is_ascii()),
        Value::Sequence(seq) => seq.items().iter().any(has_non_ascii),
        _ => false,
    })
}

/// A text for an LO element: backslashes (the value separator) become slashes, and it is cut at
/// 64 characters, the VR's limit (model names and versions come from model metadata).
pub(super) fn lo(s: &str) -> String {
    s.replace('\\', "/").chars().take(64).collect()
}

/// A Referenced SOP Class/Instance UID pair (SOP Instance Reference Macro).
pub(super) fn referenced_sop(img: &ImageRef) -> InMemDicomObject {
    let mut item = InMemDicomObject::new_empty();
    put(
        &mut item,
        tags::REFERENCED_SOP_CLASS_UID,
        VR::UI,
        img.sop_class_uid.as_str(),
    );
    put(
        &mut item,
        tags::REFERENCED_SOP_INSTANCE_UID,
        VR::UI,
        img.sop_instance_uid.as_str(),
    );
    item
}

/// Common Instance Reference: the source image's series and instance (in the same study).
pub(super) fn put_common_instance_reference(obj: &mut InMemDicomObject, source: &ImageRef) {
    let mut series = InMemDicomObject::new_empty();
    put(
        &mut series,
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        source.series_instance_uid.as_str(),
    );
    put_seq(
        &mut series,
        tags::REFERENCED_INSTANCE_SEQUENCE,
        vec![referenced_sop(source)],
    );
    put_seq(obj, tags::REFERENCED_SERIES_SEQUENCE, vec![series]);
}

/// General Series of an image output: its modality, its own series, number and description.
pub(super) fn put_series(
    obj: &mut InMemDicomObject,
    modality: &str,
    p: &Placement,
    series_uid: &str,
    description: &str,
) {
    put(obj, tags::MODALITY, VR::CS, modality);
    put(obj, tags::SERIES_INSTANCE_UID, VR::UI, series_uid);
    put(
        obj,
        tags::SERIES_NUMBER,
        VR::IS,
        p.series_number.to_string(),
    );
    put(obj, tags::SERIES_DESCRIPTION, VR::LO, description);
}

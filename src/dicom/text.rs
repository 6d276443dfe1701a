//! DICOM text values: the padding of string values (PS3.5 6.2: a value is padded to even length
//! with a trailing NUL for UI, a trailing space otherwise; leading spaces are insignificant for
//! most VRs) and reading an element of a data set as trimmed text.

use dicom_core::Tag;
use dicom_object::InMemDicomObject;

/// `s` without its trailing padding (NUL or space characters).
pub fn trim_padding(s: &str) -> &str {
    s.trim_end_matches(['\0', ' '])
}

/// `s` without its trailing padding ([`trim_padding`]) and its leading spaces: the significant
/// part of a value of most string VRs. A leading NUL is kept.
pub fn trim_value(s: &str) -> &str {
    trim_padding(s).trim_start_matches(' ')
}

/// `s` without NUL or space characters at either end: [`trim_value`], lenient of leading NULs
/// too (which a well-formed value does not have).
pub fn trim_value_lenient(s: &str) -> &str {
    s.trim_matches(['\0', ' '])
}

/// The value of `tag` in `obj` as text, trimmed by [`trim_value`] (all its values, joined by `\`
/// by dicom-rs, each without its trailing padding). `None` when the element is absent, not a
/// primitive value (e.g. a sequence), or empty.
pub fn element_text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    element_text_by(obj, tag, trim_value)
}

/// As [`element_text`], trimmed by [`trim_value_lenient`] (leading NULs dropped too).
pub fn element_text_lenient(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    element_text_by(obj, tag, trim_value_lenient)
}

/// The value of `tag` as text, trimmed by `trim`; `None` when absent, not text, or empty.
fn element_text_by(obj: &InMemDicomObject, tag: Tag, trim: fn(&str) -> &str) -> Option<String> {
    let value = obj.get(tag)?.to_str().ok()?;
    let trimmed = trim(&value);
    (!trimmed.is_empty()).then(|| trimmed.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use dicom_core::value::DataSetSequence;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;

    #[test]
    fn padding_is_trailing_nul_or_space() {
        assert_eq!(trim_padding("1.2.840.10008.1.2\0"), "1.2.840.10008.1.2");
        assert_eq!(trim_padding("CT "), "CT");
        assert_eq!(trim_padding("A \0 \0"), "A");
        assert_eq!(trim_padding("  A B  "), "  A B");
        assert_eq!(trim_padding("\0A"), "\0A");
        assert_eq!(trim_padding(" \0 "), "");
        assert_eq!(trim_padding(""), "");
    }

    #[test]
    fn value_drops_leading_spaces_but_not_leading_nuls() {
        assert_eq!(trim_value("  Doe^John \0"), "Doe^John");
        assert_eq!(trim_value(" A B "), "A B");
        assert_eq!(trim_value("\0 A "), "\0 A");
        assert_eq!(trim_value(" \0"), "");
        assert_eq!(trim_value("tab\t"), "tab\t");
    }

    #[test]
    fn lenient_value_drops_nul_and_space_at_both_ends() {
        assert_eq!(trim_value_lenient("\0 A B \0"), "A B");
        assert_eq!(trim_value_lenient("  Doe^John \0"), "Doe^John");
        assert_eq!(trim_value_lenient("\0\0"), "");
        assert_eq!(trim_value_lenient("\tA\t"), "\tA\t");
    }

    fn object() -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from("  ID7 ")),
            DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("\0Doe ")),
            DataElement::new(
                tags::SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from("1.2\0"),
            ),
            DataElement::new(tags::STUDY_ID, VR::SH, PrimitiveValue::from("   ")),
            DataElement::new(
                tags::IMAGE_TYPE,
                VR::CS,
                PrimitiveValue::Strs(["ORIGINAL ", "PRIMARY"].map(String::from).into()),
            ),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(512_u16)),
            DataElement::new(
                tags::REFERENCED_IMAGE_SEQUENCE,
                VR::SQ,
                DataSetSequence::from(vec![InMemDicomObject::new_empty()]),
            ),
        ])
    }

    #[test]
    fn element_text_is_trimmed_and_empty_is_none() {
        let obj = object();
        assert_eq!(element_text(&obj, tags::PATIENT_ID).as_deref(), Some("ID7"));
        assert_eq!(
            element_text(&obj, tags::PATIENT_NAME).as_deref(),
            Some("\0Doe")
        );
        assert_eq!(
            element_text(&obj, tags::SOP_INSTANCE_UID).as_deref(),
            Some("1.2")
        );
        assert_eq!(element_text(&obj, tags::STUDY_ID), None);
        assert_eq!(element_text(&obj, tags::ACCESSION_NUMBER), None);
        assert_eq!(element_text(&obj, tags::REFERENCED_IMAGE_SEQUENCE), None);
        // numbers read as their text; all the values of a multi-valued element, each trimmed of
        // its trailing padding by dicom-rs
        assert_eq!(element_text(&obj, tags::ROWS).as_deref(), Some("512"));
        assert_eq!(
            element_text(&obj, tags::IMAGE_TYPE).as_deref(),
            Some("ORIGINAL\\PRIMARY")
        );
    }

    #[test]
    fn lenient_element_text_drops_leading_nuls() {
        let obj = object();
        assert_eq!(
            element_text_lenient(&obj, tags::PATIENT_NAME).as_deref(),
            Some("Doe")
        );
        assert_eq!(
            element_text_lenient(&obj, tags::PATIENT_ID).as_deref(),
            Some("ID7")
        );
        assert_eq!(element_text_lenient(&obj, tags::STUDY_ID), None);
        assert_eq!(element_text_lenient(&obj, tags::ACCESSION_NUMBER), None);
        assert_eq!(
            element_text_lenient(&obj, tags::REFERENCED_IMAGE_SEQUENCE),
            None
        );
    }
}

//! Coded concepts used in the SR (report stage): the finding code and finding site of every
//! Anatomy-XNet label, and the DICOM/SNOMED/UCUM/private codes of the TID 1500 tree.
//!
//! Every code here was checked against the issue's list (issue 4, part 3) and, where DICOM lists
//! it, against PS3.16 as shipped in pydicom 3.0.2 (`pydicom/sr/_concepts_dict.py`). Two wrong
//! codes circulate in public label maps and must not come back:
//! Infiltration is DCM 112121 "Infiltrate", NOT SCT 47693006 (that is "Rupture of appendix");
//! Consolidation is SCT 95436008, NOT 95436003.
//!
//! Private coding scheme [`PRIVATE_SCHEME`] (`99CXRW`): no standard code could be verified for
//! "Pleural thickening" (as a chest X-ray finding) nor for the chest X-ray "Cardiothoracic ratio"
//! (the LOINC cardiothoracic *area*/*circumference* ratios are fetal echo measurements), so both
//! are coded in this documented private scheme, declared in the SR's Coding Scheme
//! Identification Sequence. Replace them when a verified standard code is adopted.

/// A coded concept: code value, coding scheme designator and code meaning (PS3.3 Table 8.8-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    /// Code Value (0008,0100); at most 16 characters.
    pub value: &'static str,
    /// Coding Scheme Designator (0008,0102), e.g. `DCM`, `SCT`, `UCUM`.
    pub scheme: &'static str,
    /// Code Meaning (0008,0104).
    pub meaning: &'static str,
}

const fn code(value: &'static str, scheme: &'static str, meaning: &'static str) -> Code {
    Code {
        value,
        scheme,
        meaning,
    }
}

/// Designator of this project's private coding scheme (a `99`-prefixed designator, PS3.16 8.2).
pub const PRIVATE_SCHEME: &str = "99CXRW";
/// Human-readable name of [`PRIVATE_SCHEME`], written in the Coding Scheme Identification Sequence.
pub const PRIVATE_SCHEME_NAME: &str = "cxr-worker private codes";
/// Designator of the IHE private scheme used by IHE AI Results for the purpose of reference.
pub const IHE_SCHEME: &str = "99IHE";
/// Name of [`IHE_SCHEME`].
pub const IHE_SCHEME_NAME: &str = "IHE private codes (IHE AI Results)";

// --- document structure (TID 1500, 1501, 1600, 1204, 1002/1004, 4019, 4108) ---

/// Root title: (126000, DCM, "Imaging Measurement Report").
pub const IMAGING_MEASUREMENT_REPORT: Code = code("126000", "DCM", "Imaging Measurement Report");
/// (121049, DCM, "Language of Content Item and Descendants") — TID 1204.
pub const LANGUAGE_OF_CONTENT: Code =
    code("121049", "DCM", "Language of Content Item and Descendants");
/// (en-US, RFC5646, "English (United States)") — the report's language.
pub const ENGLISH_US: Code = code("en-US", "RFC5646", "English (United States)");
/// (121058, DCM, "Procedure reported").
pub const PROCEDURE_REPORTED: Code = code("121058", "DCM", "Procedure reported");
/// (399208008, SCT, "Plain chest X-ray").
pub const PLAIN_CHEST_XRAY: Code = code("399208008", "SCT", "Plain chest X-ray");
/// (121005, DCM, "Observer Type") — TID 1002.
pub const OBSERVER_TYPE: Code = code("121005", "DCM", "Observer Type");
/// (121007, DCM, "Device").
pub const DEVICE: Code = code("121007", "DCM", "Device");
/// (121012, DCM, "Device Observer UID") — TID 1004.
pub const DEVICE_OBSERVER_UID: Code = code("121012", "DCM", "Device Observer UID");
/// (121013, DCM, "Device Observer Name").
pub const DEVICE_OBSERVER_NAME: Code = code("121013", "DCM", "Device Observer Name");
/// (121014, DCM, "Device Observer Manufacturer").
pub const DEVICE_OBSERVER_MANUFACTURER: Code =
    code("121014", "DCM", "Device Observer Manufacturer");
/// (121015, DCM, "Device Observer Model Name").
pub const DEVICE_OBSERVER_MODEL_NAME: Code = code("121015", "DCM", "Device Observer Model Name");
/// (111028, DCM, "Image Library") — TID 1600.
pub const IMAGE_LIBRARY: Code = code("111028", "DCM", "Image Library");
/// (126200, DCM, "Image Library Group").
pub const IMAGE_LIBRARY_GROUP: Code = code("126200", "DCM", "Image Library Group");
/// (260753009, SCT, "Source") — concept name of an image library entry (as highdicom writes it).
pub const SOURCE: Code = code("260753009", "SCT", "Source");
/// (126010, DCM, "Imaging Measurements").
pub const IMAGING_MEASUREMENTS: Code = code("126010", "DCM", "Imaging Measurements");
/// (125007, DCM, "Measurement Group") — TID 1501.
pub const MEASUREMENT_GROUP: Code = code("125007", "DCM", "Measurement Group");
/// (C0034375, UMLS, "Qualitative Evaluations") — TID 1500 row 12, report-level comments.
pub const QUALITATIVE_EVALUATIONS: Code = code("C0034375", "UMLS", "Qualitative Evaluations");
/// (121106, DCM, "Comment").
pub const COMMENT: Code = code("121106", "DCM", "Comment");
/// (112039, DCM, "Tracking Identifier") — TID 4108.
pub const TRACKING_IDENTIFIER: Code = code("112039", "DCM", "Tracking Identifier");
/// (112040, DCM, "Tracking Unique Identifier").
pub const TRACKING_UID: Code = code("112040", "DCM", "Tracking Unique Identifier");
/// (121071, DCM, "Finding").
pub const FINDING: Code = code("121071", "DCM", "Finding");
/// (363698007, SCT, "Finding Site").
pub const FINDING_SITE: Code = code("363698007", "SCT", "Finding Site");
/// (111001, DCM, "Algorithm Name") — TID 4019.
pub const ALGORITHM_NAME: Code = code("111001", "DCM", "Algorithm Name");
/// (111003, DCM, "Algorithm Version").
pub const ALGORITHM_VERSION: Code = code("111003", "DCM", "Algorithm Version");
/// (111002, DCM, "Algorithm Parameters").
pub const ALGORITHM_PARAMETERS: Code = code("111002", "DCM", "Algorithm Parameters");
/// (122157, DCM, "Probability") — concept name of each label's probability NUM.
pub const PROBABILITY: Code = code("122157", "DCM", "Probability");
/// (121112, DCM, "Source of Measurement") — the analysed image of a measurement group.
pub const SOURCE_OF_MEASUREMENT: Code = code("121112", "DCM", "Source of Measurement");
/// (1, UCUM, "no units") — unit of probabilities and of the cardiothoracic ratio.
pub const UCUM_NO_UNITS: Code = code("1", "UCUM", "no units");
/// (52101004, SCT, "Present").
pub const PRESENT: Code = code("52101004", "SCT", "Present");
/// (272519000, SCT, "Absent").
pub const ABSENT: Code = code("272519000", "SCT", "Absent");
/// (Newcode1, 99IHE, "Processing Algorithm") — Purpose of Reference of the contributing equipment
/// (IHE AI Results).
pub const PROCESSING_ALGORITHM: Code = code("Newcode1", IHE_SCHEME, "Processing Algorithm");
/// (CTR, 99CXRW, "Cardiothoracic ratio") — private: see the module documentation.
pub const CARDIOTHORACIC_RATIO: Code = code("CTR", PRIVATE_SCHEME, "Cardiothoracic ratio");

// --- finding sites ---

/// (39607008, SCT, "Lung").
pub const LUNG: Code = code("39607008", "SCT", "Lung");
/// (80891009, SCT, "Heart").
pub const HEART: Code = code("80891009", "SCT", "Heart");
/// (3120008, SCT, "Pleural structure").
pub const PLEURAL_STRUCTURE: Code = code("3120008", "SCT", "Pleural structure");
/// (3341006, SCT, "Right lung").
pub const RIGHT_LUNG: Code = code("3341006", "SCT", "Right lung");
/// (44029006, SCT, "Left lung").
pub const LEFT_LUNG: Code = code("44029006", "SCT", "Left lung");

// --- regions and their measurements (TID 1410, the SEG) ---

/// (123037004, SCT, "Anatomical Structure") — Segmented Property Category of every organ.
pub const ANATOMICAL_STRUCTURE: Code = code("123037004", "SCT", "Anatomical Structure");
/// (121214, DCM, "Referenced Segmentation Frame") — a TID 1410 region given by a SEG frame.
pub const REFERENCED_SEGMENTATION_FRAME: Code =
    code("121214", "DCM", "Referenced Segmentation Frame");
/// (121233, DCM, "Source image for segmentation") — the image a SEG frame was made from.
pub const SOURCE_IMAGE_FOR_SEGMENTATION: Code =
    code("121233", "DCM", "Source image for segmentation");
/// (42798000, SCT, "Area").
pub const AREA: Code = code("42798000", "SCT", "Area");
/// (mm2, UCUM, "square millimeter").
pub const UCUM_MM2: Code = code("mm2", "UCUM", "square millimeter");

/// An organ the segmenter names (`cxr.mask_channels`), as the SEG and the SR code it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Organ {
    /// The segmenter channel, e.g. `right_lung`.
    pub channel: &'static str,
    /// The segment label, e.g. `Right lung`.
    pub label: &'static str,
    /// Its SNOMED CT code (Segmented Property Type, Finding Site).
    pub code: Code,
}

/// The organs, in segment order (segment number = position + 1 among those present).
pub const ORGANS: [Organ; 3] = [
    Organ {
        channel: "right_lung",
        label: "Right lung",
        code: RIGHT_LUNG,
    },
    Organ {
        channel: "left_lung",
        label: "Left lung",
        code: LEFT_LUNG,
    },
    Organ {
        channel: "heart",
        label: "Heart",
        code: HEART,
    },
];

/// The organ of a segmenter channel, or `None` for a channel no segment is made of.
pub fn organ(channel: &str) -> Option<&'static Organ> {
    ORGANS.iter().find(|o| o.channel == channel)
}

/// How one Anatomy-XNet label is coded in the SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelCoding {
    /// The label as the model contract spells it (`cxr.labels`), e.g. `Pleural_Thickening`.
    pub label: &'static str,
    /// Value of the Finding (121071) content item.
    pub finding: Code,
    /// Finding Site (363698007), or `None` where none of the allowed sites fits (Hernia: a hiatal
    /// hernia is neither lung, heart nor pleura).
    pub site: Option<Code>,
}

const fn label(label: &'static str, finding: Code, site: Option<Code>) -> LabelCoding {
    LabelCoding {
        label,
        finding,
        site,
    }
}

use crate::findings::LABELS as L;

/// The 14 labels in contract order (each named from [`crate::findings::LABELS`]), with finding
/// code and site.
///
/// Sites: lung parenchyma findings → Lung; Cardiomegaly → Heart; Effusion, Pneumothorax and
/// Pleural thickening (pleural space / pleura) → Pleural structure; Mass and Nodule → Lung (the
/// model is trained on lung-field masses and nodules); Hernia → none.
pub const LABELS: [LabelCoding; 14] = [
    label(L[0], code("46621007", "SCT", "Atelectasis"), Some(LUNG)),
    label(L[1], code("8186001", "SCT", "Cardiomegaly"), Some(HEART)),
    label(
        L[2],
        code("60046008", "SCT", "Pleural effusion"),
        Some(PLEURAL_STRUCTURE),
    ),
    label(L[3], code("112121", "DCM", "Infiltrate"), Some(LUNG)),
    label(L[4], code("4147007", "SCT", "Mass"), Some(LUNG)),
    label(L[5], code("27925004", "SCT", "Nodule"), Some(LUNG)),
    label(L[6], code("233604007", "SCT", "Pneumonia"), Some(LUNG)),
    label(
        L[7],
        code("36118008", "SCT", "Pneumothorax"),
        Some(PLEURAL_STRUCTURE),
    ),
    label(L[8], code("95436008", "SCT", "Consolidation"), Some(LUNG)),
    label(L[9], code("19242006", "SCT", "Pulmonary edema"), Some(LUNG)),
    label(
        L[10],
        code("87433001", "SCT", "Pulmonary emphysema"),
        Some(LUNG),
    ),
    label(
        L[11],
        code("51615001", "SCT", "Fibrosis of lung"),
        Some(LUNG),
    ),
    label(
        L[12],
        code("PLEURTHICK", PRIVATE_SCHEME, "Pleural thickening"),
        Some(PLEURAL_STRUCTURE),
    ),
    label(L[13], code("84089009", "SCT", "Hiatal hernia"), None),
];

/// The coding of a contract label, or `None` for a label this report does not know.
pub fn coding_for_label(name: &str) -> Option<&'static LabelCoding> {
    LABELS.iter().find(|c| c.label == name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn finding(name: &str) -> Code {
        match coding_for_label(name) {
            Some(c) => c.finding,
            None => panic!("label {name} has no coding"),
        }
    }

    #[test]
    fn every_finding_code_is_the_one_the_issue_lists() {
        let expected = [
            ("Atelectasis", "46621007", "SCT", "Atelectasis"),
            ("Cardiomegaly", "8186001", "SCT", "Cardiomegaly"),
            ("Effusion", "60046008", "SCT", "Pleural effusion"),
            ("Infiltration", "112121", "DCM", "Infiltrate"),
            ("Mass", "4147007", "SCT", "Mass"),
            ("Nodule", "27925004", "SCT", "Nodule"),
            ("Pneumonia", "233604007", "SCT", "Pneumonia"),
            ("Pneumothorax", "36118008", "SCT", "Pneumothorax"),
            ("Consolidation", "95436008", "SCT", "Consolidation"),
            ("Edema", "19242006", "SCT", "Pulmonary edema"),
            ("Emphysema", "87433001", "SCT", "Pulmonary emphysema"),
            ("Fibrosis", "51615001", "SCT", "Fibrosis of lung"),
            (
                "Pleural_Thickening",
                "PLEURTHICK",
                "99CXRW",
                "Pleural thickening",
            ),
            ("Hernia", "84089009", "SCT", "Hiatal hernia"),
        ];
        assert_eq!(LABELS.len(), expected.len());
        for ((label, value, scheme, meaning), coding) in expected.iter().zip(LABELS.iter()) {
            assert_eq!(coding.label, *label, "contract order");
            assert_eq!(coding.finding.value, *value, "{label}");
            assert_eq!(coding.finding.scheme, *scheme, "{label}");
            assert_eq!(coding.finding.meaning, *meaning, "{label}");
        }
    }

    #[test]
    fn the_two_circulating_wrong_codes_are_not_used() {
        let infiltration = finding("Infiltration");
        assert_eq!((infiltration.value, infiltration.scheme), ("112121", "DCM"));
        let consolidation = finding("Consolidation");
        assert_eq!(
            (consolidation.value, consolidation.scheme),
            ("95436008", "SCT")
        );
        for c in LABELS {
            assert_ne!(
                c.finding.value, "47693006",
                "Rupture of appendix is not Infiltration"
            );
            assert_ne!(c.finding.value, "95436003", "wrong Consolidation code");
        }
    }

    #[test]
    fn pleural_thickening_uses_the_documented_private_scheme() {
        let pt = finding("Pleural_Thickening");
        assert!(
            pt.scheme.starts_with("99"),
            "private schemes are 99-prefixed"
        );
        assert_eq!(pt.scheme, PRIVATE_SCHEME);
        assert_eq!(CARDIOTHORACIC_RATIO.scheme, PRIVATE_SCHEME);
    }

    #[test]
    fn finding_sites_are_the_three_allowed_ones() {
        assert_eq!(
            (LUNG.value, LUNG.scheme, LUNG.meaning),
            ("39607008", "SCT", "Lung")
        );
        assert_eq!(
            (HEART.value, HEART.scheme, HEART.meaning),
            ("80891009", "SCT", "Heart")
        );
        assert_eq!(
            (
                PLEURAL_STRUCTURE.value,
                PLEURAL_STRUCTURE.scheme,
                PLEURAL_STRUCTURE.meaning
            ),
            ("3120008", "SCT", "Pleural structure")
        );
        let site = |l: &str| coding_for_label(l).and_then(|c| c.site);
        assert_eq!(site("Cardiomegaly"), Some(HEART));
        assert_eq!(site("Effusion"), Some(PLEURAL_STRUCTURE));
        assert_eq!(site("Pneumothorax"), Some(PLEURAL_STRUCTURE));
        assert_eq!(site("Pleural_Thickening"), Some(PLEURAL_STRUCTURE));
        assert_eq!(site("Nodule"), Some(LUNG));
        assert_eq!(site("Hernia"), None);
    }

    #[test]
    fn report_level_codes() {
        assert_eq!(
            (PLAIN_CHEST_XRAY.value, PLAIN_CHEST_XRAY.scheme),
            ("399208008", "SCT")
        );
        assert_eq!((PRESENT.value, PRESENT.scheme), ("52101004", "SCT"));
        assert_eq!((ABSENT.value, ABSENT.scheme), ("272519000", "SCT"));
        assert_eq!(
            (
                PROCESSING_ALGORITHM.value,
                PROCESSING_ALGORITHM.scheme,
                PROCESSING_ALGORITHM.meaning
            ),
            ("Newcode1", "99IHE", "Processing Algorithm")
        );
        assert_eq!((FINDING.value, FINDING.scheme), ("121071", "DCM"));
        assert_eq!((UCUM_NO_UNITS.value, UCUM_NO_UNITS.scheme), ("1", "UCUM"));
    }

    #[test]
    fn code_values_fit_the_sh_limit_and_labels_are_unique() {
        for c in LABELS {
            assert!(c.finding.value.len() <= 16);
            assert_eq!(LABELS.iter().filter(|o| o.label == c.label).count(), 1);
        }
        assert!(coding_for_label("Pleural Thickening").is_none());
    }
}

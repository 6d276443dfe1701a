//! Eligibility: which received images the models may analyse (decode → **eligibility** → infer).
//!
//! The rules, in order (also in `docs/eligibility.md`); the first that decides wins:
//!
//! 1. **Modality** (0008,0060) must be `CR` or `DX`. Absent or anything else: skipped
//!    ("modality MR is not CR or DX").
//! 2. **Body part**: BodyPartExamined (0018,0015), compared case-insensitively, must be `CHEST`
//!    (or the synonyms `THORAX`, `LUNG`, `PORTABLE CHEST`, `CHEST_LAT`… any value containing
//!    `CHEST` or `THORAX`). If it is absent, the AnatomicRegionSequence (0008,2218) code meaning
//!    or value decides (`chest`/`thorax` in the meaning, or SNOMED CT 51185008 / SRT T-D3000).
//!    A stated non-chest part skips the image; no statement at all is accepted and said so
//!    ("body part not stated").
//! 3. **View**: ViewPosition (0018,5101) `PA` or `AP` is frontal (analysed); `LL`, `RL`, `LAT`,
//!    `LATERAL`, `LLD`, `RLD` are lateral/decubitus (skipped); any other stated value (oblique
//!    `LAO`, `RAO`…) is skipped as not frontal. If ViewPosition is empty, the ViewCodeSequence
//!    (0054,0220) decides: a code meaning containing "postero-anterior"/"posteroanterior" or
//!    "antero-posterior"/"anteroposterior" (or SRT R-10214 / R-10206, SNOMED CT 399348003 /
//!    272479004) is frontal, one containing "lateral" is lateral. No view at all is accepted as
//!    frontal and said so ("view not stated") — many CR modalities omit it.
//! 4. **Decodable**: an image that passes 1–3 but whose pixels cannot be decoded is skipped with
//!    the decoder's reason (applied by the caller, after decoding).

use serde::Serialize;

use super::decode::{Code, ImageAttributes};

/// The decision for one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Eligibility {
    /// Whether the models analyse this image.
    pub eligible: bool,
    /// Why: the rule that decided, in words (also set when eligible).
    pub reason: String,
}

impl Eligibility {
    fn skip(reason: impl Into<String>) -> Self {
        Self {
            eligible: false,
            reason: reason.into(),
        }
    }
}

/// Frontal, lateral, or something else, as read from the view attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    Frontal,
    Lateral,
    Other,
    NotStated,
}

/// Decide whether the image described by `a` is a chest CR/DX frontal view.
pub fn assess(a: &ImageAttributes) -> Eligibility {
    match a.modality.as_deref() {
        Some("CR" | "DX") => {}
        Some(m) => return Eligibility::skip(format!("modality {m} is not CR or DX")),
        None => return Eligibility::skip("modality not stated (CR or DX required)"),
    }
    let body_note = match body_part(a) {
        Ok(note) => note,
        Err(skip) => return skip,
    };
    let (view, view_text) = view(a);
    let view_note = match view {
        View::Frontal => format!("{view_text} view"),
        View::NotStated => "view not stated, assumed frontal".to_string(),
        View::Lateral => return Eligibility::skip(format!("lateral view ({view_text})")),
        View::Other => {
            return Eligibility::skip(format!("view {view_text} is not frontal (PA or AP)"));
        }
    };
    Eligibility {
        eligible: true,
        reason: format!(
            "chest {} {view_note}{body_note}",
            a.modality.as_deref().unwrap_or("")
        ),
    }
}

fn is_chest_text(s: &str) -> bool {
    let s = s.to_ascii_uppercase();
    s.contains("CHEST") || s.contains("THORAX") || s == "LUNG"
}

fn is_chest_code(c: &Code) -> bool {
    is_chest_text(&c.meaning) || matches!(c.value.as_str(), "51185008" | "T-D3000")
}

/// `Ok(note)` when chest (or not stated); `Err(skip)` when a non-chest part is stated.
fn body_part(a: &ImageAttributes) -> Result<String, Eligibility> {
    if let Some(part) = &a.body_part_examined {
        return if is_chest_text(part) {
            Ok(String::new())
        } else {
            Err(Eligibility::skip(format!("body part {part} is not chest")))
        };
    }
    match a.anatomic_region_codes.first() {
        Some(code) if is_chest_code(code) => Ok(String::new()),
        Some(code) => Err(Eligibility::skip(format!(
            "anatomic region {} is not chest",
            if code.meaning.is_empty() {
                &code.value
            } else {
                &code.meaning
            }
        ))),
        None => Ok(" (body part not stated)".to_string()),
    }
}

fn view(a: &ImageAttributes) -> (View, String) {
    if let Some(vp) = &a.view_position {
        let v = vp.to_ascii_uppercase();
        let kind = match v.as_str() {
            "PA" | "AP" => View::Frontal,
            "LL" | "RL" | "LAT" | "LATERAL" | "LLD" | "RLD" => View::Lateral,
            _ => View::Other,
        };
        return (kind, v);
    }
    let Some(code) = a.view_codes.first() else {
        return (View::NotStated, String::new());
    };
    let meaning = code.meaning.to_ascii_lowercase().replace(' ', "");
    let frontal_codes = ["R-10214", "R-10206", "399348003", "272479004"];
    let kind = if meaning.contains("postero-anterior")
        || meaning.contains("posteroanterior")
        || meaning.contains("antero-posterior")
        || meaning.contains("anteroposterior")
        || frontal_codes.contains(&code.value.as_str())
    {
        View::Frontal
    } else if meaning.contains("lateral") {
        View::Lateral
    } else {
        View::Other
    };
    let text = if code.meaning.is_empty() {
        code.value.clone()
    } else {
        code.meaning.clone()
    };
    (kind, text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    fn attrs(modality: &str, body: Option<&str>, view: Option<&str>) -> ImageAttributes {
        ImageAttributes {
            modality: Some(modality.into()),
            body_part_examined: body.map(Into::into),
            view_position: view.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn chest_pa_and_ap_are_analysed() {
        for v in ["PA", "AP", "ap"] {
            let e = assess(&attrs("CR", Some("CHEST"), Some(v)));
            assert!(e.eligible, "{v}: {e:?}");
        }
        assert!(assess(&attrs("DX", Some("Thorax"), Some("PA"))).eligible);
    }

    #[test]
    fn lateral_non_chest_and_other_modalities_are_skipped() {
        let lat = assess(&attrs("CR", Some("CHEST"), Some("LL")));
        assert!(!lat.eligible && lat.reason.contains("lateral"), "{lat:?}");
        let hip = assess(&attrs("CR", Some("HIP"), None));
        assert!(!hip.eligible && hip.reason.contains("HIP"), "{hip:?}");
        let mr = assess(&attrs("MR", None, None));
        assert!(!mr.eligible && mr.reason.contains("MR"), "{mr:?}");
        let oblique = assess(&attrs("DX", Some("CHEST"), Some("RAO")));
        assert!(!oblique.eligible, "{oblique:?}");
    }

    #[test]
    fn missing_values_are_accepted_and_said_so() {
        let e = assess(&attrs("CR", None, None));
        assert!(e.eligible);
        assert!(
            e.reason.contains("body part not stated") && e.reason.contains("view not stated"),
            "{e:?}"
        );
    }

    #[test]
    fn view_code_sequence_is_used_when_view_position_is_empty() {
        let mut a = attrs("DX", Some("CHEST"), None);
        a.view_codes = vec![Code {
            value: "R-10232".into(),
            scheme: "SRT".into(),
            meaning: "Left lateral".into(),
        }];
        assert!(!assess(&a).eligible);
        a.view_codes[0].meaning = "postero-anterior".into();
        assert!(assess(&a).eligible);
    }
}

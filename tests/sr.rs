//! SR builder tests (report stage): every SR built here, from real chest DICOM headers, must pass
//! dciodvfy (dicom3tools), DCMTK dsrdump and a highdicom/pydicom read-back
//! (tests/python/check_sr.py) that finds each finding with its code, probability and image.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod builders;

use builders::{dciodvfy, header, root, run};

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::NaiveDate;
use cxr_worker::report::codes::{self, LABELS};
use cxr_worker::report::sr::{SR_SOP_CLASS_UID, UNTRAINED_COMMENT};
use cxr_worker::report::{
    AnalysedImage, Completion, ImageRef, LabelResult, ModelInfo, Predecessor, ReportContent,
    ReportRequest, SourceStudy, SrError, build_sr,
};
use dicom_core::{DataElement, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Value, json};

const RG1: &str = "RG1_UNCR.dcm";
const SIIM: &str = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";
const DX966: &str = "966_fixed.dcm";

fn image_ref(obj: &InMemDicomObject) -> ImageRef {
    let s = |t| {
        obj.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    ImageRef {
        sop_class_uid: s(tags::SOP_CLASS_UID),
        sop_instance_uid: s(tags::SOP_INSTANCE_UID),
        series_instance_uid: s(tags::SERIES_INSTANCE_UID),
    }
}

fn model(trained: bool) -> ModelInfo {
    ModelInfo {
        classifier_name: "anatomy-xnet".into(),
        classifier_version: "1.2.0".into(),
        segmenter_name: "anatomy-segmenter".into(),
        segmenter_version: "1.1.0".into(),
        trained,
        manufacturer: "cxr-worker project".into(),
        software_version: "0.1.0".into(),
    }
}

/// Made-up probabilities, different per label and seed, some above and some below 0.5.
fn analysed(obj: &InMemDicomObject, seed: u32, ctr: Option<f32>) -> AnalysedImage {
    let labels = LABELS
        .iter()
        .enumerate()
        .map(|(i, c)| LabelResult {
            label: c.label.to_string(),
            probability: ((i as u32 * 37 + seed * 11) % 100) as f32 / 99.0,
            threshold: 0.5,
        })
        .collect();
    AnalysedImage {
        image: image_ref(obj),
        labels,
        cardiothoracic_ratio: ctr,
        ..AnalysedImage::default()
    }
}

fn request(study: SourceStudy, content: ReportContent, trained: bool) -> ReportRequest {
    ReportRequest {
        study,
        model: model(trained),
        content,
        predecessor: None,
        completion: Completion::Complete,
        instance_number: 1,
        series_number: 9001,
        content_datetime: NaiveDate::from_ymd_opt(2025, 3, 14)
            .unwrap()
            .and_hms_opt(9, 26, 53)
            .unwrap(),
        sop_instance_uid: None,
        series_instance_uid: None,
        uid_root: None,
        image_outputs: vec![],
    }
}

/// What check_sr.py must find, from the request (never from the built SR).
fn expected(req: &ReportRequest, sop_uid: &str, series_uid: &str, charset: Option<&str>) -> Value {
    let mut findings = Vec::new();
    let mut ratios = Vec::new();
    let mut comments = Vec::new();
    let evidence: Vec<String> = match &req.content {
        ReportContent::Findings(images) => {
            for img in images {
                for r in &img.labels {
                    let c = codes::coding_for_label(&r.label).unwrap();
                    findings.push(json!({
                        "code": c.finding.value, "scheme": c.finding.scheme,
                        "meaning": c.finding.meaning,
                        "probability": (r.probability as f64 * 1e6).round() / 1e6,
                        "present": r.probability >= r.threshold,
                        "image": img.image.sop_instance_uid,
                        "site": c.site.map(|s| s.value),
                    }));
                }
                if let Some(v) = img.cardiothoracic_ratio {
                    ratios.push(json!({"value": (v as f64 * 1e6).round() / 1e6,
                                       "image": img.image.sop_instance_uid}));
                }
            }
            images
                .iter()
                .map(|i| i.image.sop_instance_uid.clone())
                .collect()
        }
        ReportContent::NotAnalysed { received, reason } => {
            comments.push(format!("not analysed: {reason}"));
            received
                .iter()
                .map(|i| i.sop_instance_uid.clone())
                .collect()
        }
    };
    if !req.model.trained {
        comments.push(UNTRAINED_COMMENT.to_string());
    }
    json!({
        "sop_instance_uid": sop_uid,
        "series_instance_uid": series_uid,
        "study_instance_uid": req.study.study_instance_uid,
        "patient_name": req.study.patient_name,
        "patient_id": req.study.patient_id,
        "specific_character_set": charset,
        "completion_flag": match req.completion { Completion::Complete => "COMPLETE", Completion::Partial => "PARTIAL" },
        "device_uid": req.model.device_uid(),
        "predecessor_sop_instance_uid": req.predecessor.as_ref().map(|p| p.sop_instance_uid.clone()),
        "evidence": evidence,
        "findings": findings,
        "ratios": ratios,
        "comments": comments,
    })
}

/// DCMTK dsrdump (it checks the IOD's relationship constraints by default): status 0 and no
/// `E:`/`F:` line. Returns the `W:` lines.
fn dsrdump(path: &Path) -> Result<Vec<String>, String> {
    let (status, out) = run(Command::new("dsrdump").arg("-v").arg("+Pu").arg(path));
    if status != 0
        || out
            .lines()
            .any(|l| l.starts_with("E:") || l.starts_with("F:"))
    {
        return Err(format!("dsrdump ({status}):\n{out}"));
    }
    Ok(out
        .lines()
        .filter(|l| l.starts_with("W:"))
        .map(String::from)
        .collect())
}

/// highdicom/pydicom read-back against the expectation written next to the SR.
fn check_py(path: &Path, exp: &Value) -> Result<(), String> {
    let exp_path = path.with_extension("json");
    std::fs::write(&exp_path, serde_json::to_vec_pretty(exp).unwrap()).unwrap();
    let (status, out) = run(Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/python/check_sr.py"))
        .arg(path)
        .arg(&exp_path));
    if status == 0 {
        Ok(())
    } else {
        Err(format!("check_sr.py ({status}):\n{out}"))
    }
}

/// The validation gate of issue 4: dciodvfy, dsrdump, highdicom read-back.
fn gate(dir: &Path, name: &str, req: &ReportRequest, charset: Option<&str>) -> PathBuf {
    let built = build_sr(req).unwrap();
    let path = dir.join(format!("{name}.dcm"));
    built.file.write_to_file(&path).unwrap();

    let warnings = dciodvfy(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: dciodvfy warnings: {warnings:#?}");
    let warnings = dsrdump(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: dsrdump warnings: {warnings:#?}");
    let exp = expected(
        req,
        &built.sop_instance_uid,
        &built.series_instance_uid,
        charset,
    );
    check_py(&path, &exp).unwrap_or_else(|e| panic!("{name}: {e}"));

    // To look at the SRs: CXR_SR_KEEP_DIR=/some/dir cargo test --test sr
    if let Some(keep) = std::env::var_os("CXR_SR_KEEP_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&path, Path::new(&keep).join(format!("{name}.dcm"))).unwrap();
        std::fs::copy(
            path.with_extension("json"),
            Path::new(&keep).join(format!("{name}.json")),
        )
        .unwrap();
    }
    path
}

#[test]
fn the_gate_fails_on_a_wrong_finding_and_on_a_broken_relationship() {
    let dir = tempfile::tempdir().unwrap();
    let src = header(RG1);
    let study = SourceStudy::from_dataset(&src).unwrap();
    let req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 9, None)]),
        true,
    );
    let path = gate(dir.path(), "good", &req, None);

    // The circulating wrong Infiltration code must be caught by the read-back.
    let mut exp: Value =
        serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    let infiltration = exp["findings"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["code"] == "112121")
        .unwrap();
    infiltration["code"] = json!("47693006");
    infiltration["scheme"] = json!("SCT");
    let err = check_py(&path, &exp).unwrap_err();
    assert!(err.contains("47693006"), "{err}");

    // CONTAINER "has properties" CODE breaks the Comprehensive 3D SR relationship constraints.
    let (status, out) = run(Command::new("dcmodify")
        .arg("-nb")
        .arg("-m")
        .arg("(0040,A730)[0].(0040,A010)=HAS PROPERTIES")
        .arg(&path));
    assert_eq!(status, 0, "{out}");
    let err = dsrdump(&path).unwrap_err();
    assert!(
        err.contains("E: Cannot add \"has properties CODE\" to CONTAINER"),
        "{err}"
    );
}

#[test]
fn findings_report_from_a_real_chest_cr_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let src = header(RG1);
    let study = SourceStudy::from_dataset(&src).unwrap();
    assert_eq!(study.patient_birth_date, "19400305");
    let req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 1, Some(0.47))]),
        true,
    );
    gate(dir.path(), "rg1", &req, None);
}

#[test]
fn untrained_model_two_images_and_a_request_reference_pass_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = header(SIIM);
    // The SIIM header has no Referenced Request Sequence: add one in memory.
    let mut code = InMemDicomObject::new_empty();
    code.put(DataElement::new(tags::CODE_VALUE, VR::SH, "RPCHEST"));
    code.put(DataElement::new(
        tags::CODING_SCHEME_DESIGNATOR,
        VR::SH,
        "99LOCAL",
    ));
    code.put(DataElement::new(
        tags::CODE_MEANING,
        VR::LO,
        "Chest X-ray PA",
    ));
    let mut item = InMemDicomObject::new_empty();
    item.put(DataElement::new(tags::ACCESSION_NUMBER, VR::SH, "ACC123"));
    item.put(DataElement::new(
        tags::REQUESTED_PROCEDURE_ID,
        VR::SH,
        "RP1",
    ));
    item.put(DataElement::new(
        tags::REQUESTED_PROCEDURE_CODE_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![code]),
    ));
    src.put(DataElement::new(
        tags::REFERENCED_REQUEST_SEQUENCE,
        VR::SQ,
        dicom_core::value::DataSetSequence::from(vec![item]),
    ));
    let study = SourceStudy::from_dataset(&src).unwrap();
    assert_eq!(study.requests.len(), 1);
    assert_eq!(
        study.requests[0].study_instance_uid,
        study.study_instance_uid
    );
    // A second frontal image of the same study, another series.
    let mut second = src.clone();
    second.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        "1.2.3.4.5.6.7.8",
    ));
    second.put(DataElement::new(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        "1.2.3.4.5.6.7",
    ));
    let images = vec![analysed(&src, 2, Some(0.61)), analysed(&second, 3, None)];
    let req = request(study, ReportContent::Findings(images), false);
    let path = gate(dir.path(), "siim-untrained", &req, None);

    let sr = dicom_object::open_file(&path).unwrap();
    let rrs = sr
        .element(tags::REFERENCED_REQUEST_SEQUENCE)
        .unwrap()
        .items()
        .unwrap();
    assert_eq!(
        rrs[0]
            .element(tags::ACCESSION_NUMBER)
            .unwrap()
            .to_str()
            .unwrap(),
        "ACC123"
    );
}

#[test]
fn revised_report_names_its_predecessor_and_keeps_tracking_uids() {
    let dir = tempfile::tempdir().unwrap();
    let src = header(RG1);
    let study = SourceStudy::from_dataset(&src).unwrap();
    let first_req = request(
        study.clone(),
        ReportContent::Findings(vec![analysed(&src, 4, Some(0.49))]),
        true,
    );
    let first = build_sr(&first_req).unwrap();
    let mut req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 5, Some(0.5))]),
        true,
    );
    req.predecessor = Some(Predecessor {
        study_instance_uid: req.study.study_instance_uid.clone(),
        series_instance_uid: first.series_instance_uid.clone(),
        sop_class_uid: SR_SOP_CLASS_UID.to_string(),
        sop_instance_uid: first.sop_instance_uid.clone(),
    });
    req.series_instance_uid = Some(first.series_instance_uid.clone());
    req.instance_number = 2;
    let path = gate(dir.path(), "revised", &req, None);

    let revised = dicom_object::open_file(&path).unwrap();
    assert_ne!(
        revised
            .element(tags::SOP_INSTANCE_UID)
            .unwrap()
            .to_str()
            .unwrap(),
        first.sop_instance_uid
    );
    assert_eq!(tracking_uids(&revised), tracking_uids(&first.file));
}

fn tracking_uids(obj: &InMemDicomObject) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(items: &[InMemDicomObject], out: &mut Vec<String>) {
        for it in items {
            let name = it
                .get(tags::CONCEPT_NAME_CODE_SEQUENCE)
                .and_then(|e| e.items())
                .and_then(|i| i.first())
                .and_then(|c| c.get(tags::CODE_VALUE))
                .map(|e| e.to_str().unwrap().to_string());
            if name.as_deref() == Some("112040") {
                out.push(it.element(tags::UID).unwrap().to_str().unwrap().to_string());
            }
            if let Some(children) = it.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()) {
                walk(children, out);
            }
        }
    }
    walk(
        obj.element(tags::CONTENT_SEQUENCE)
            .unwrap()
            .items()
            .unwrap(),
        &mut out,
    );
    out.sort();
    out
}

#[test]
fn non_ascii_patient_name_gives_iso_ir_192() {
    let dir = tempfile::tempdir().unwrap();
    let mut src = header(RG1);
    src.put(DataElement::new(
        tags::PATIENT_NAME,
        VR::PN,
        "Müller^Zoë=山田^太郎",
    ));
    let study = SourceStudy::from_dataset(&src).unwrap();
    let req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 6, None)]),
        true,
    );
    let path = gate(dir.path(), "utf8", &req, Some("ISO_IR 192"));
    // The raw bytes hold the name in UTF-8.
    let bytes = std::fs::read(&path).unwrap();
    let needle = "Müller^Zoë=山田^太郎".as_bytes();
    assert!(bytes.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn not_analysed_report_says_why_and_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let src = header(DX966);
    let study = SourceStudy::from_dataset(&src).unwrap();
    // The fixture's birth date is a hash, not a date: it must not be copied.
    assert_eq!(study.patient_birth_date, "");
    // Its accession number (56 characters) breaks SH (16): dropped, not truncated.
    assert_eq!(study.accession_number, "");
    let content = ReportContent::NotAnalysed {
        received: vec![image_ref(&src)],
        reason: "no frontal chest image (lateral only)".into(),
    };
    let mut req = request(study.clone(), content, true);
    req.completion = Completion::Partial;
    gate(dir.path(), "not-analysed", &req, None);

    let empty = ReportContent::NotAnalysed {
        received: vec![],
        reason: "no image could be decoded".into(),
    };
    gate(
        dir.path(),
        "not-analysed-empty",
        &request(study, empty, false),
        None,
    );
}

#[test]
fn bad_inputs_are_typed_errors() {
    let src = header(RG1);
    let study = SourceStudy::from_dataset(&src).unwrap();
    let mut img = analysed(&src, 7, None);
    img.labels[0].label = "Pleural Thickening".into();
    let req = request(study.clone(), ReportContent::Findings(vec![img]), true);
    assert!(matches!(build_sr(&req), Err(SrError::UnknownLabel { .. })));

    let mut img = analysed(&src, 7, None);
    img.labels[3].probability = f32::NAN;
    let req = request(study.clone(), ReportContent::Findings(vec![img]), true);
    assert!(matches!(build_sr(&req), Err(SrError::OutOfRange { .. })));

    let req = request(study.clone(), ReportContent::Findings(vec![]), true);
    assert!(matches!(build_sr(&req), Err(SrError::NoAnalysedImage)));

    let mut req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 7, None)]),
        true,
    );
    req.sop_instance_uid = Some("1.2.abc".into());
    assert!(matches!(build_sr(&req), Err(SrError::InvalidUid { .. })));

    let mut no_study = src.clone();
    no_study.remove_element(tags::STUDY_INSTANCE_UID);
    assert!(matches!(
        SourceStudy::from_dataset(&no_study),
        Err(SrError::MissingStudyInstanceUid)
    ));
}

#[test]
fn given_uids_and_uid_root_are_used() {
    let src = header(RG1);
    let study = SourceStudy::from_dataset(&src).unwrap();
    let mut req = request(
        study,
        ReportContent::Findings(vec![analysed(&src, 8, None)]),
        true,
    );
    req.sop_instance_uid = Some("1.2.826.0.1.3680043.10.99.1".into());
    let built = build_sr(&req).unwrap();
    assert_eq!(built.sop_instance_uid, "1.2.826.0.1.3680043.10.99.1");
    assert_eq!(
        built.file.meta().media_storage_sop_instance_uid(),
        built.sop_instance_uid
    );
    req.sop_instance_uid = None;
    req.uid_root = Some("1.2.826.0.1.3680043.10".into());
    let built = build_sr(&req).unwrap();
    assert!(
        built
            .sop_instance_uid
            .starts_with("1.2.826.0.1.3680043.10.")
    );
    assert!(
        built
            .series_instance_uid
            .starts_with("1.2.826.0.1.3680043.10.")
    );
}

/// Issue 11: the SR references the image outputs. Each organ of the SEG is a TID 1410 planar
/// ROI group whose region is the SEG frame (with the source image and the area), the
/// cardiothoracic ratio is inferred from the SEG frames it was measured on, and the SEG and
/// SC are listed as other evidence; highdicom follows every reference.
#[test]
fn regions_reference_the_seg_frames_and_the_outputs_are_evidence() {
    use cxr_worker::report::{ImageOutputRefs, SegReference};
    let dir = tempfile::tempdir().unwrap();
    let src = header(DX966);
    let study = SourceStudy::from_dataset(&src).unwrap();
    let mut img = analysed(&src, 3, Some(0.48));
    img.measurements.right_lung_mm2 = Some(31_000.5);
    img.measurements.left_lung_mm2 = Some(27_500.0);
    img.measurements.heart_mm2 = None; // no spacing for it: no area, the region stays
    let source_uid = img.image.sop_instance_uid.clone();
    let seg = ImageRef {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.66.4".into(),
        sop_instance_uid: "2.25.1001".into(),
        series_instance_uid: "2.25.1002".into(),
    };
    let sc = ImageRef {
        sop_class_uid: "1.2.840.10008.5.1.4.1.1.7".into(),
        sop_instance_uid: "2.25.2001".into(),
        series_instance_uid: "2.25.2002".into(),
    };
    let mut req = request(study, ReportContent::Findings(vec![img]), false);
    req.image_outputs = vec![ImageOutputRefs {
        source_sop_instance_uid: source_uid.clone(),
        seg: Some(SegReference {
            object: seg,
            segments: vec![
                ("right_lung".into(), 1),
                ("left_lung".into(), 2),
                ("heart".into(), 3),
            ],
        }),
        sc: Some(sc),
    }];
    let path = gate(dir.path(), "regions", &req, None);
    let (status, out) = run(Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/python/sr_findings.py"))
        .arg(&path));
    assert_eq!(status, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["other_evidence"], json!(["2.25.1001", "2.25.2001"]));
    assert_eq!(v["evidence"], json!([source_uid]));
    let regions = v["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3, "{v}");
    for (r, (code, number, area)) in regions.iter().zip([
        ("3341006", 1, Some(31_000.5)),
        ("44029006", 2, Some(27_500.0)),
        ("80891009", 3, None),
    ]) {
        assert_eq!(r["finding"], code, "{r}");
        assert_eq!(r["seg"], "2.25.1001");
        assert_eq!(r["frame"], json!([number]));
        assert_eq!(r["source"], source_uid.as_str());
        assert_eq!(r["area_mm2"].as_f64(), area, "{r}");
    }
    assert_eq!(
        v["ctr_basis"],
        json!([["2.25.1001", 1], ["2.25.1001", 2], ["2.25.1001", 3]])
    );
    // the findings are still read back as before
    assert_eq!(v["findings"].as_array().unwrap().len(), 14);
}

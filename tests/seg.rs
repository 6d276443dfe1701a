//! SEG builder tests (report stage): every Segmentation built here, from real chest DICOM headers
//! (DX, CR, SC), must pass dciodvfy (dicom3tools), a highdicom/pydicom read-back
//! (tests/python/check_seg.py) that finds each segment and every mask pixel for pixel, and a
//! dcmjs read-back (tests/node/check_seg.mjs; `scripts/setup-node.sh` installs it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod builders;

use builders::{dciodvfy, fixture, header, root, run};

use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::NaiveDate;
use cxr_worker::analyse::contract::SEGMENTER_CHANNELS;
use cxr_worker::analyse::masks::resample_all;
use cxr_worker::findings::BitMask;
use cxr_worker::report::seg::{BuiltSeg, SEG_SOP_CLASS_UID, SegRequest, build_seg};
use cxr_worker::report::sr::UNTRAINED_COMMENT;
use cxr_worker::report::{ImageRef, ModelInfo, Placement, SourceImage, SourceStudy};
use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use serde_json::{Value, json};

const RG1: &str = "RG1_UNCR.dcm";
const SIIM: &str = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";
const DX966: &str = "966_fixed.dcm";

/// The organs a SEG must name, in segment order: channel, label, SNOMED CT code, meaning.
const ORGANS: [(&str, &str, &str, &str); 3] = [
    ("right_lung", "Right lung", "3341006", "Right lung"),
    ("left_lung", "Left lung", "44029006", "Left lung"),
    ("heart", "Heart", "80891009", "Heart"),
];

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .trim()
        .to_string()
}

/// Rows, columns, UIDs and the pixel spacing (Pixel Spacing, else Imager Pixel Spacing) of a
/// source header.
fn source_image(obj: &InMemDicomObject) -> SourceImage {
    let int = |t| obj.element(t).unwrap().to_int::<usize>().unwrap();
    let pixel_spacing = [tags::PIXEL_SPACING, tags::IMAGER_PIXEL_SPACING]
        .into_iter()
        .find_map(
            |t| match obj.element(t).ok()?.to_multi_float64().ok()?[..] {
                [r, c] if r > 0.0 && c > 0.0 => Some((r, c)),
                _ => None,
            },
        );
    SourceImage {
        image: ImageRef {
            sop_class_uid: text(obj, tags::SOP_CLASS_UID),
            sop_instance_uid: text(obj, tags::SOP_INSTANCE_UID),
            series_instance_uid: text(obj, tags::SERIES_INSTANCE_UID),
        },
        rows: int(tags::ROWS),
        columns: int(tags::COLUMNS),
        pixel_spacing,
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

fn placement() -> Placement {
    Placement {
        series_instance_uid: None,
        series_number: 9002,
        instance_number: 1,
        content_datetime: NaiveDate::from_ymd_opt(2025, 3, 14)
            .unwrap()
            .and_hms_opt(9, 26, 53)
            .unwrap(),
        sop_instance_uid: None,
        uid_root: None,
    }
}

/// A filled ellipse: centre and radii as fractions of rows and columns.
fn ellipse(rows: usize, columns: usize, centre: (f64, f64), radii: (f64, f64)) -> BitMask {
    let (cy, cx) = (centre.0 * rows as f64, centre.1 * columns as f64);
    let (ry, rx) = (radii.0 * rows as f64, radii.1 * columns as f64);
    let mut bits = vec![0u8; rows * columns];
    for y in 0..rows {
        for x in 0..columns {
            let (dy, dx) = ((y as f64 - cy) / ry, (x as f64 - cx) / rx);
            bits[y * columns + x] = u8::from(dy * dy + dx * dx <= 1.0);
        }
    }
    BitMask {
        rows,
        columns,
        bits,
    }
}

/// Two lung ellipses and a heart disc (it overlaps the left lung), in the contract's channel
/// order.
fn organ_masks(src: &SourceImage) -> Vec<(String, BitMask)> {
    let (r, c) = (src.rows, src.columns);
    let disc = 0.12 * r.min(c) as f64;
    vec![
        (
            "left_lung".into(),
            ellipse(r, c, (0.48, 0.72), (0.30, 0.14)),
        ),
        (
            "right_lung".into(),
            ellipse(r, c, (0.50, 0.28), (0.32, 0.16)),
        ),
        (
            "heart".into(),
            ellipse(r, c, (0.62, 0.55), (disc / r as f64, disc / c as f64)),
        ),
    ]
}

fn request(name: &str, trained: bool) -> (SegRequest, PathBuf) {
    let obj = header(name);
    let source = source_image(&obj);
    let req = SegRequest {
        study: SourceStudy::from_dataset(&obj).unwrap(),
        channels: organ_masks(&source),
        source,
        model: model(trained),
        placement: placement(),
    };
    (req, fixture(name))
}

/// What the read-backs must find, from the request (never from the built SEG), and the masks
/// in segment order.
fn expected(req: &SegRequest, built: &BuiltSeg) -> (Value, Vec<u8>) {
    let mut segments = Vec::new();
    let mut masks = Vec::new();
    for (channel, label, code, meaning) in ORGANS {
        let Some((_, mask)) = req.channels.iter().find(|(n, _)| n == channel) else {
            continue;
        };
        segments.push(json!({
            "number": segments.len() + 1, "channel": channel, "label": label,
            "code": code, "scheme": "SCT", "meaning": meaning,
            "pixels": mask.bits.iter().filter(|b| **b != 0).count(),
        }));
        masks.extend_from_slice(&mask.bits);
    }
    let m = &req.model;
    let img = &req.source.image;
    let exp = json!({
        "sop_instance_uid": built.object.sop_instance_uid,
        "series_instance_uid": built.object.series_instance_uid,
        "study_instance_uid": req.study.study_instance_uid,
        "patient_name": req.study.patient_name,
        "device_uid": m.device_uid(),
        "rows": req.source.rows,
        "columns": req.source.columns,
        "algorithm_name": m.segmenter_name,
        // the segmenter's own version, marked when untrained
        "algorithm_version": if m.trained {
            m.segmenter_version.clone()
        } else {
            format!("{} UNTRAINED", m.segmenter_version)
        },
        "algorithm_parameters": if m.trained { Value::Null } else { json!({"weights": "untrained"}) },
        "segment_description": if m.trained { Value::Null } else { json!(UNTRAINED_COMMENT) },
        "source": {
            "sop_class_uid": img.sop_class_uid,
            "sop_instance_uid": img.sop_instance_uid,
            "series_instance_uid": img.series_instance_uid,
        },
        "segments": segments,
    });
    (exp, masks)
}

/// highdicom/pydicom read-back (tests/python/check_seg.py).
fn check_py(seg: &Path, source: &Path) -> Result<(), String> {
    let (status, out) = run(Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/python/check_seg.py"))
        .arg(seg)
        .arg(source)
        .arg(seg.with_extension("bin"))
        .arg(seg.with_extension("json")));
    if status == 0 {
        Ok(())
    } else {
        Err(format!("check_seg.py ({status}):\n{out}"))
    }
}

/// dcmjs read-back (tests/node/check_seg.mjs).
fn check_node(seg: &Path) -> Result<(), String> {
    let node_dir = root().join("tests/node");
    assert!(
        node_dir.join("node_modules/dcmjs").is_dir(),
        "dcmjs is not installed in tests/node: run scripts/setup-node.sh"
    );
    let (status, out) = run(Command::new("node")
        .arg(node_dir.join("check_seg.mjs"))
        .arg(seg)
        .arg(seg.with_extension("json")));
    if status == 0 {
        Ok(())
    } else {
        Err(format!("check_seg.mjs ({status}):\n{out}"))
    }
}

/// Build, write (SEG, masks, expectation) and pass the three checks.
fn gate(dir: &Path, name: &str, req: &SegRequest, source: &Path) -> (PathBuf, BuiltSeg) {
    let built = build_seg(req).unwrap();
    let path = dir.join(format!("{name}.dcm"));
    built.object.file.write_to_file(&path).unwrap();
    let (exp, masks) = expected(req, &built);
    std::fs::write(
        path.with_extension("json"),
        serde_json::to_vec_pretty(&exp).unwrap(),
    )
    .unwrap();
    std::fs::write(path.with_extension("bin"), masks).unwrap();

    let warnings = dciodvfy(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    eprintln!("{name}: dciodvfy warnings: {warnings:#?}");
    check_py(&path, source).unwrap_or_else(|e| panic!("{name}: {e}"));
    check_node(&path).unwrap_or_else(|e| panic!("{name}: {e}"));

    // To look at the SEGs: CXR_SEG_KEEP_DIR=/some/dir cargo test --test seg
    if let Some(keep) = std::env::var_os("CXR_SEG_KEEP_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        for ext in ["dcm", "json"] {
            let p = path.with_extension(ext);
            std::fs::copy(&p, Path::new(&keep).join(p.file_name().unwrap())).unwrap();
        }
    }
    (path, built)
}

#[test]
fn seg_of_a_real_chest_dx_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let (req, source) = request(DX966, true);
    let (_, built) = gate(dir.path(), "dx966", &req, &source);
    assert_eq!(built.object.sop_class_uid, SEG_SOP_CLASS_UID);
    let labels: Vec<&str> = built.segments.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["Right lung", "Left lung", "Heart"]);
}

#[test]
fn seg_of_a_real_chest_cr_with_an_empty_mask_and_an_unknown_channel_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut req, source) = request(RG1, false);
    req.channels.reverse();
    let heart = req.channels.iter_mut().find(|(n, _)| n == "heart").unwrap();
    heart.1.bits.fill(0);
    let extra = BitMask {
        rows: 2,
        columns: 2,
        bits: vec![1; 4],
    };
    req.channels.push(("trachea".into(), extra));
    let (_, built) = gate(dir.path(), "rg1-untrained", &req, &source);
    let channels: Vec<&str> = built.segments.iter().map(|s| s.channel.as_str()).collect();
    assert_eq!(channels, ["right_lung", "left_lung", "heart"]);
}

#[test]
fn seg_of_a_secondary_capture_with_lungs_only_passes_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let (mut req, source) = request(SIIM, true);
    req.channels.retain(|(n, _)| n != "heart");
    // A name outside ASCII makes the SEG UTF-8 (ISO_IR 192).
    req.study.patient_name = "Müller^Zoë".into();
    req.placement.series_instance_uid = Some("1.2.826.0.1.3680043.10.999.1".into());
    req.placement.sop_instance_uid = Some("1.2.826.0.1.3680043.10.999.1.1".into());
    let (path, built) = gate(dir.path(), "siim-lungs", &req, &source);
    assert_eq!(built.segments.len(), 2);
    let seg = dicom_object::open_file(&path).unwrap();
    assert_eq!(
        text(&seg, tags::SERIES_INSTANCE_UID),
        "1.2.826.0.1.3680043.10.999.1"
    );
    assert_eq!(text(&seg, tags::NUMBER_OF_FRAMES), "2");
    assert_eq!(text(&seg, tags::SPECIFIC_CHARACTER_SET), "ISO_IR 192");
}

#[test]
fn resampled_segmenter_output_reads_back_as_resampled() {
    // The daemon's path: the segmenter's S×S probabilities, resampled to the source geometry.
    const S: usize = 64;
    let blob = |cy: f32, cx: f32, r: f32| -> Vec<f32> {
        (0..S * S)
            .map(|i| {
                let (y, x) = ((i / S) as f32, (i % S) as f32);
                let d = ((y - cy).powi(2) + (x - cx).powi(2)).sqrt() / r;
                (1.0 - d).clamp(0.0, 1.0) * 0.9 + 0.05
            })
            .collect()
    };
    let planes = [
        blob(30.0, 45.0, 16.0), // left_lung: the viewer's right
        blob(31.0, 18.0, 17.0), // right_lung
        blob(40.0, 35.0, 9.0),  // heart
    ]
    .concat();
    let dir = tempfile::tempdir().unwrap();
    let (mut req, source) = request(RG1, true);
    let masks = resample_all(&planes, S, req.source.rows, req.source.columns);
    assert_eq!(masks.len(), SEGMENTER_CHANNELS.len());
    assert!(masks.iter().all(|m| m.bits.contains(&1)));
    req.channels = SEGMENTER_CHANNELS
        .iter()
        .map(|c| c.to_string())
        .zip(masks)
        .collect();
    gate(dir.path(), "resampled", &req, &source);
}

#[test]
fn the_gate_fails_on_a_wrong_pixel_a_wrong_segment_reference_and_a_missing_attribute() {
    let dir = tempfile::tempdir().unwrap();
    let (req, source) = request(SIIM, true);
    let (path, _) = gate(dir.path(), "good", &req, &source);

    // One pixel of the second segment's mask differs from what was written.
    let bin = path.with_extension("bin");
    let mut masks = std::fs::read(&bin).unwrap();
    let k = req.source.rows * req.source.columns + 7;
    masks[k] ^= 1;
    std::fs::write(&bin, &masks).unwrap();
    let err = check_py(&path, &source).unwrap_err();
    assert!(err.contains("1 pixels differ"), "{err}");

    // Frame 2 says it holds segment 3.
    let (status, out) = run(Command::new("dcmodify")
        .arg("-nb")
        .arg("-m")
        .arg("(5200,9230)[1].(0062,000a)[0].(0062,000b)=3")
        .arg(&path));
    assert_eq!(status, 0, "{out}");
    let err = check_node(&path).unwrap_err();
    assert!(
        err.contains("frame 2: Referenced Segment Number 3 != 2"),
        "{err}"
    );

    // Segmentation Type is type 1.
    let (status, out) = run(Command::new("dcmodify")
        .arg("-nb")
        .arg("-e")
        .arg("(0062,0001)")
        .arg(&path));
    assert_eq!(status, 0, "{out}");
    let err = dciodvfy(&path).unwrap_err();
    assert!(err.contains("SegmentationType"), "{err}");
}

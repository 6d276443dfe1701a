//! Secondary Capture tests (analyse::overlay → report::sc): the results picture of a real DX chest
//! film, with synthetic masks and class maps, built into an SC that must pass dciodvfy
//! (dicom3tools), a highdicom/pydicom read-back (tests/python/check_sc.py) and a DCMTK conversion
//! to PNG that gives back exactly the pixels drawn.
//!
//! `CXR_WRITE_DOC_IMAGES=1 cargo test --test sc` also writes the picture to
//! docs/images/sc-example.png; `CXR_SC_KEEP_DIR=DIR` keeps the SC as DIR/sc.dcm.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod builders;

use builders::{fixture, header, root, run};

use std::path::Path;
use std::process::Command;

use chrono::NaiveDate;
use cxr_worker::analyse::analyser::{Call, Findings, LabelMap, ModelTag, display_size, measure};
use cxr_worker::analyse::decode::{DecodeLimits, GreyImage, decode_path};
use cxr_worker::analyse::overlay::{self, Picture};
use cxr_worker::analyse::preprocess;
use cxr_worker::findings::LABELS;
use cxr_worker::report::sc::{SC_SOP_CLASS_UID, ScRequest, build_sc};
use cxr_worker::report::{ImageRef, ModelInfo, Placement, SourceImage, SourceStudy};
use dicom_dictionary_std::tags;
use serde_json::json;

const DX966: &str = "966_fixed.dcm";
/// The synthetic segmenter's mask size.
const S: usize = 64;
/// The synthetic classifier's class map size.
const MAP: usize = 16;

/// Lungs (centre row, centre column, radii) in mask pixels: the right lung on the image's left.
const RIGHT_LUNG: ((f32, f32), (f32, f32)) = ((30.0, 20.0), (19.0, 10.0));
const LEFT_LUNG: ((f32, f32), (f32, f32)) = ((30.0, 44.0), (19.0, 10.0));
const HEART: ((f32, f32), (f32, f32)) = ((42.0, 34.0), (8.0, 9.0));

fn ellipse(plane: &mut [f32], ((cy, cx), (ry, rx)): ((f32, f32), (f32, f32))) {
    for y in 0..S {
        for x in 0..S {
            let (dy, dx) = ((y as f32 - cy) / ry, (x as f32 - cx) / rx);
            if dy * dy + dx * dx <= 1.0 {
                plane[y * S + x] = 1.0;
            }
        }
    }
}

/// A Gaussian blob on class map `label` of `[L,MAP,MAP]`, at (row, column) in map cells.
fn blob(maps: &mut [f32], label: usize, (cy, cx): (f32, f32)) {
    let plane = &mut maps[label * MAP * MAP..(label + 1) * MAP * MAP];
    for y in 0..MAP {
        for x in 0..MAP {
            let d2 = (y as f32 - cy).powi(2) + (x as f32 - cx).powi(2);
            plane[y * MAP + x] = (-d2 / 8.0).exp();
        }
    }
}

/// The analysed fixture: its display image, synthetic masks (two lung ellipses, a heart), two
/// positive findings (Effusion 0.87, Cardiomegaly 0.64) with class maps, an untrained model.
fn analysed() -> (Findings, LabelMap<f32>) {
    let (_, grey, voi) = decode_path(&fixture(DX966), &DecodeLimits::default()).unwrap();
    let (rows, columns) = (grey.height, grey.width);
    let (w, h) = display_size(rows, columns);
    let display = preprocess::resize(&grey, w, h);

    let mut masks = vec![0f32; 3 * S * S];
    let (left, rest) = masks.split_at_mut(S * S);
    let (right, heart) = rest.split_at_mut(S * S);
    ellipse(left, LEFT_LUNG);
    ellipse(right, RIGHT_LUNG);
    ellipse(heart, HEART);

    let label = |name: &str| LABELS.iter().position(|l| *l == name).unwrap();
    let mut class_maps = vec![0f32; LABELS.len() * MAP * MAP];
    blob(&mut class_maps, label("Effusion"), (11.5, 4.0));
    blob(&mut class_maps, label("Cardiomegaly"), (10.5, 8.5));
    let probabilities: Vec<f32> = LABELS
        .iter()
        .enumerate()
        .map(|(i, l)| match *l {
            "Effusion" => 0.87,
            "Cardiomegaly" => 0.64,
            _ => (i * 7 % 40) as f32 / 100.0,
        })
        .collect();
    let map = |v: &dyn Fn(usize) -> f32| {
        LabelMap(
            LABELS
                .iter()
                .enumerate()
                .map(|(i, l)| (l.to_string(), v(i)))
                .collect(),
        )
    };
    let tag = |name: &str, version: &str| ModelTag {
        name: name.into(),
        version: version.into(),
        trained: false,
    };
    let findings = Findings {
        calls: LabelMap(
            LABELS
                .iter()
                .zip(&probabilities)
                .map(|(l, &p)| {
                    let call = if p >= 0.5 {
                        Call::Present
                    } else {
                        Call::Absent
                    };
                    (l.to_string(), call)
                })
                .collect(),
        ),
        thresholds: map(&|_| 0.5),
        anatomy: measure(&masks, S, rows, columns, None),
        voi,
        segmenter: tag("anatomy-segmenter", "1.1.0"),
        classifier: tag("anatomy-xnet", "1.2.0"),
        provider: "cpu".into(),
        trained: false,
        warning: Some("UNTRAINED".into()),
        masks,
        mask_channels: vec!["left_lung".into(), "right_lung".into(), "heart".into()],
        class_maps,
        class_map_size: (MAP, MAP),
        grey: GreyImage::default(),
        display,
        source_size: (rows, columns),
    };
    (findings, map(&|i| probabilities[i]))
}

fn model() -> ModelInfo {
    ModelInfo {
        classifier_name: "anatomy-xnet".into(),
        classifier_version: "1.2.0".into(),
        segmenter_name: "anatomy-segmenter".into(),
        segmenter_version: "1.1.0".into(),
        trained: false,
        manufacturer: "cxr-worker project".into(),
        software_version: "0.1.0".into(),
    }
}

fn request(picture: &Picture) -> ScRequest {
    let src = header(DX966);
    let s = |t| {
        src.element(t)
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches('\0')
            .trim()
            .to_string()
    };
    let rows = src.element(tags::ROWS).unwrap().to_int::<usize>().unwrap();
    let columns = src
        .element(tags::COLUMNS)
        .unwrap()
        .to_int::<usize>()
        .unwrap();
    ScRequest {
        study: SourceStudy::from_dataset(&src).unwrap(),
        source: SourceImage {
            image: ImageRef {
                sop_class_uid: s(tags::SOP_CLASS_UID),
                sop_instance_uid: s(tags::SOP_INSTANCE_UID),
                series_instance_uid: s(tags::SERIES_INSTANCE_UID),
            },
            rows,
            columns,
            pixel_spacing: None,
        },
        model: model(),
        columns: picture.width,
        rows: picture.height,
        rgb: picture.rgb.clone(),
        placement: Placement {
            series_instance_uid: None,
            series_number: 9002,
            instance_number: 1,
            content_datetime: NaiveDate::from_ymd_opt(2026, 3, 4)
                .unwrap()
                .and_hms_opt(5, 6, 7)
                .unwrap(),
            sop_instance_uid: None,
            uid_root: None,
        },
    }
}

/// Decode a PNG file's bytes: `(width, height, RGB bytes)`.
fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
    let mut reader = png::Decoder::new(bytes).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    buf.truncate(info.buffer_size());
    (info.width as usize, info.height as usize, buf)
}

/// Canvas pixel of a mask position (row, column).
fn canvas_at(p: &Picture, (row, col): (f32, f32)) -> (usize, usize) {
    let x = p.image.left + ((col + 0.5) * p.image.width as f32 / S as f32) as usize;
    let y = p.image.top + ((row + 0.5) * p.image.height as f32 / S as f32) as usize;
    (x, y)
}

#[test]
fn the_picture_of_a_dx_chest_becomes_a_valid_secondary_capture() {
    let (findings, probabilities) = analysed();
    let picture = overlay::render(&findings, &probabilities);
    assert_eq!(picture.image.width.max(picture.image.height), 1024);
    let built = build_sc(&request(&picture)).unwrap();
    assert_eq!(built.sop_class_uid, SC_SOP_CLASS_UID);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sc.dcm");
    built.file.write_to_file(&path).unwrap();

    // dicom3tools: no error
    let (status, out) = run(Command::new("dciodvfy").arg(&path));
    assert!(
        status < 128 && !out.lines().any(|l| l.starts_with("Error")),
        "dciodvfy ({status}):\n{out}"
    );
    let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("Warning")).collect();
    eprintln!("dciodvfy warnings: {warnings:#?}");

    // highdicom and pydicom
    let lungs: Vec<(usize, usize)> = [RIGHT_LUNG, LEFT_LUNG]
        .iter()
        .map(|((cy, cx), (ry, _))| canvas_at(&picture, (cy - ry / 2.0, *cx)))
        .collect();
    let samples: Vec<serde_json::Value> = [
        (0, 0),
        (
            picture.width / 2,
            picture.image.top + picture.image.height / 2,
        ),
        lungs[0],
        (picture.width - 1, picture.height - 1),
    ]
    .iter()
    .map(|&(x, y)| json!({"x": x, "y": y, "rgb": picture.pixel(x, y).unwrap()}))
    .collect();
    let src = request(&picture).source.image;
    let expected = json!({
        "sop_instance_uid": built.sop_instance_uid,
        "series_instance_uid": built.series_instance_uid,
        "study_instance_uid": built.study_instance_uid,
        "source": {
            "sop_class_uid": src.sop_class_uid,
            "sop_instance_uid": src.sop_instance_uid,
            "series_instance_uid": src.series_instance_uid,
        },
        "rows": picture.height,
        "columns": picture.width,
        "banner_rows": picture.image.top,
        "lungs": lungs,
        "pixels": samples,
    });
    let exp_path = dir.path().join("sc.json");
    std::fs::write(&exp_path, serde_json::to_vec_pretty(&expected).unwrap()).unwrap();
    let (status, out) = run(Command::new(root().join(".venv/bin/python"))
        .arg(root().join("tests/python/check_sc.py"))
        .arg(&path)
        .arg(&exp_path));
    assert_eq!(status, 0, "check_sc.py:\n{out}");

    // DCMTK: to PNG, and the same pixels come back
    let png_path = dir.path().join("dcmtk.png");
    let (status, out) = run(Command::new("dcmj2pnm")
        .arg("+on")
        .arg(&path)
        .arg(&png_path));
    assert_eq!(status, 0, "dcmj2pnm:\n{out}");
    assert!(
        !out.contains("E:") && !out.contains("F:"),
        "dcmj2pnm:\n{out}"
    );
    let (w, h, rgb) = decode_png(&std::fs::read(&png_path).unwrap());
    assert_eq!((w, h), (picture.width, picture.height));
    assert!(
        rgb == picture.rgb,
        "DCMTK's pixels differ from the picture's"
    );

    // To look at the SC: CXR_SC_KEEP_DIR=/some/dir cargo test --test sc
    if let Some(keep) = std::env::var_os("CXR_SC_KEEP_DIR") {
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::copy(&path, Path::new(&keep).join("sc.dcm")).unwrap();
    }
    write_doc_image(&picture);
}

#[test]
fn the_overlay_png_decodes_to_the_picture() {
    let (findings, probabilities) = analysed();
    let picture = overlay::render(&findings, &probabilities);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("overlay.png");
    overlay::write_png(&path, &picture).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes, overlay::encode_png(&picture).unwrap());
    let (w, h, rgb) = decode_png(&bytes);
    assert_eq!((w, h), (picture.width, picture.height));
    let (x, y) = canvas_at(&picture, HEART.0);
    let i = (y * w + x) * 3;
    assert_eq!(rgb[i..i + 3], picture.pixel(x, y).unwrap());
    assert!(rgb == picture.rgb);
}

/// docs/images/sc-example.png, when `CXR_WRITE_DOC_IMAGES=1`: the picture, compressed harder
/// than the worker's fast PNGs since it lives in the repository.
fn write_doc_image(picture: &Picture) {
    if std::env::var_os("CXR_WRITE_DOC_IMAGES").is_none_or(|v| v != "1") {
        return;
    }
    let path = root().join("docs/images/sc-example.png");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, picture.width as u32, picture.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    encoder.set_adaptive_filter(png::AdaptiveFilterType::Adaptive);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&picture.rgb).unwrap();
    writer.finish().unwrap();
    assert_eq!(decode_png(&bytes).2, picture.rgb);
    std::fs::write(&path, bytes).unwrap();
    eprintln!("wrote {}", path.display());
}

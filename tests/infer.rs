//! Inference tests with the tiny conforming models (onnx/tiny): contract violations refused with
//! the mismatch named, execution-provider fallback on this CPU-only machine, Rust inference
//! against Python onnxruntime on the same tensors (≤ 1e-4), and `cxr-worker infer` on every
//! fixture.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_worker::analyse::decode::{self, DecodeLimits};
use cxr_worker::analyse::infer::{Engine, EngineOptions, InferError};
use cxr_worker::analyse::preprocess;
use cxr_worker::config::ExecutionProvider;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/dicom").join(name)
}

/// The ONNX Runtime library: `ORT_DYLIB_PATH` (set by the Makefile) or the venv's wheel.
fn ort_library() -> PathBuf {
    common::ort_library()
}

fn tiny(name: &str) -> PathBuf {
    root().join("onnx/tiny").join(name)
}

fn options(
    segmenter: PathBuf,
    classifier: PathBuf,
    providers: &[ExecutionProvider],
) -> EngineOptions {
    EngineOptions {
        onnxruntime_library: Some(ort_library()),
        segmenter,
        classifier,
        execution_providers: providers.to_vec(),
        intra_threads: 1,
        tensorrt_fp16: true,
        tensorrt_cache_dir: None,
    }
}

fn tiny_options(providers: &[ExecutionProvider]) -> EngineOptions {
    options(
        tiny("anatomy-segmenter.onnx"),
        tiny("anatomy-xnet.onnx"),
        providers,
    )
}

/// A config file for `cxr-worker infer` ([database] and [spool] are required; unused here).
fn write_config(dir: &Path, segmenter: &Path, classifier: &Path, providers: &str) -> PathBuf {
    let path = dir.join("cxr-worker.toml");
    let text = format!(
        "[database]\nurl = \"postgres://test@127.0.0.1/unused\"\n[spool]\ndir = \"{}\"\n\
         [models]\nonnxruntime_library = \"{}\"\nsegmenter = \"{}\"\nclassifier = \"{}\"\n\
         execution_providers = {providers}\nbatch_size = 4\nintra_threads = 1\n",
        dir.join("spool").display(),
        ort_library().display(),
        segmenter.display(),
        classifier.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn contract_violations_are_refused_with_the_mismatch_named() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(python())
        .arg(root().join("tests/python/broken_models.py"))
        .arg(root().join("onnx/tiny"))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "broken_models.py failed");
    let seg = || tiny("anatomy-segmenter.onnx");
    let cls = || tiny("anatomy-xnet.onnx");
    let broken = |name: &str| dir.path().join(name);
    let cases: Vec<(EngineOptions, &str)> = vec![
        (
            options(
                broken("wrong-input-name.onnx"),
                cls(),
                &[ExecutionProvider::Cpu],
            ),
            "input \"image\" is missing",
        ),
        (
            options(broken("wrong-rank.onnx"), cls(), &[ExecutionProvider::Cpu]),
            "input \"image\" has rank 3, expected 4",
        ),
        (
            options(seg(), broken("label-count.onnx"), &[ExecutionProvider::Cpu]),
            "\"probabilities\" has 14 classes but cxr.labels names 13 labels",
        ),
        (
            options(
                broken("missing-metadata.onnx"),
                cls(),
                &[ExecutionProvider::Cpu],
            ),
            "missing metadata cxr.input_size",
        ),
        (
            options(broken("ir14.onnx"), cls(), &[ExecutionProvider::Cpu]),
            "IR version 14 is too new",
        ),
        (
            options(broken("wrong-role.onnx"), cls(), &[ExecutionProvider::Cpu]),
            "cxr.role is \"classifier\", expected \"segmenter\"",
        ),
        (
            options(seg(), seg(), &[ExecutionProvider::Cpu]),
            "cxr.role is \"segmenter\", expected \"classifier\"",
        ),
    ];
    for (opts, expected) in cases {
        let err = Engine::load(&opts)
            .err()
            .unwrap_or_else(|| panic!("{expected}: the model was accepted"));
        assert!(matches!(err, InferError::Contract(_)), "{expected}: {err}");
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?} in: {err}"
        );
    }
    // The command exits non-zero on a model error and says why.
    let config = write_config(dir.path(), &broken("ir14.onnx"), &cls(), "[\"cpu\"]");
    let out = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["infer", "--config"])
        .arg(&config)
        .arg(fixture("RG1_UNCR.dcm"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("IR version 14 is too new"));
}

#[test]
fn tensorrt_and_cuda_fall_back_to_cpu_and_say_so() {
    use ExecutionProvider::{Cpu, Cuda, Tensorrt};
    let engine = Engine::load(&tiny_options(&[Tensorrt, Cuda, Cpu])).unwrap();
    assert_eq!(engine.provider_summary(), "cpu");
    let passed = engine.fallback_summary();
    assert!(
        passed.contains("tensorrt (") && passed.contains("cuda ("),
        "{passed}"
    );
    // Without CPU in the list there is nothing to fall back to: a clear error.
    let err = Engine::load(&tiny_options(&[Cuda]))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no execution provider") && err.contains("cuda"),
        "{err}"
    );

    // The command logs exactly one line naming the provider in use.
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &tiny("anatomy-segmenter.onnx"),
        &tiny("anatomy-xnet.onnx"),
        "[\"tensorrt\", \"cuda\", \"cpu\"]",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["infer", "--json", "--config"])
        .arg(&config)
        .arg(fixture("RG1_UNCR.dcm"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("execution provider in use"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("in use: cpu")
            && lines[0].contains("tensorrt")
            && lines[0].contains("cuda"),
        "{}",
        lines[0]
    );
}

fn write_f32(path: &Path, data: &[f32]) {
    std::fs::write(
        path,
        data.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Run a model in Python onnxruntime on raw inputs; returns the output directory.
fn python_run(model: &Path, dir: &Path, inputs: &[(&str, &Path, &[usize])]) {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/reference.py"))
        .arg("run")
        .arg(model)
        .arg(dir);
    for (name, path, shape) in inputs {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        cmd.arg(format!("{name}={}:{}", path.display(), dims.join(",")));
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rust_inference_matches_python_onnxruntime_on_the_same_tensors() {
    let mut engine = Engine::load(&tiny_options(&[ExecutionProvider::Cpu])).unwrap();
    let (s, k) = (
        engine.segmenter.info.input_size,
        engine.classifier.info.mask_size.unwrap(),
    );
    let (mean, std) = (engine.classifier.info.mean, engine.classifier.info.std);
    let files = [
        "RG1_UNCR.dcm",
        "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        "Fake_MONOHR1.dcm",
    ];
    let n = files.len();
    let (mut seg_in, mut cls_in) = (Vec::new(), Vec::new());
    for f in files {
        let (_, grey, _) = decode::decode_path(&fixture(f), &DecodeLimits::default()).unwrap();
        let small = preprocess::resize(&grey, s, s);
        seg_in.extend_from_slice(&small.pixels);
        preprocess::normalise_into(&small.pixels, &mean, &std, &mut cls_in);
    }
    let masks = engine.segment(&seg_in, n).unwrap();
    let plane = s * s;
    let mut mask_in = Vec::new();
    for i in 0..n {
        let m = &masks.data[i * masks.channels * plane..];
        preprocess::classifier_masks_into(
            &m[..plane],
            &m[plane..2 * plane],
            &m[2 * plane..3 * plane],
            s,
            k,
            &mut mask_in,
        );
    }
    let out = engine.classify(&cls_in, &mask_in, n).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_f32(&d.join("seg_in.f32"), &seg_in);
    write_f32(&d.join("cls_in.f32"), &cls_in);
    write_f32(&d.join("mask_in.f32"), &mask_in);
    python_run(
        &tiny("anatomy-segmenter.onnx"),
        d,
        &[("image", &d.join("seg_in.f32"), &[n, 1, s, s])],
    );
    python_run(
        &tiny("anatomy-xnet.onnx"),
        d,
        &[
            ("image", &d.join("cls_in.f32"), &[n, 3, s, s]),
            ("masks", &d.join("mask_in.f32"), &[n, 2, k, k]),
        ],
    );
    let masks_diff = max_diff(&masks.data, &read_f32(&d.join("masks.f32")));
    let probs_diff = max_diff(&out.probabilities, &read_f32(&d.join("probabilities.f32")));
    let maps_diff = max_diff(&out.class_maps, &read_f32(&d.join("class_maps.f32")));
    assert!(masks_diff <= 1e-4, "segmenter masks differ by {masks_diff}");
    assert!(probs_diff <= 1e-4, "probabilities differ by {probs_diff}");
    assert!(maps_diff <= 1e-4, "class maps differ by {maps_diff}");
    // The images differ, so a batch that repeated one image would show here.
    assert!(max_diff(&out.probabilities[..14], &out.probabilities[14..28]) > 0.0);
}

#[test]
fn infer_command_reports_every_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &tiny("anatomy-segmenter.onnx"),
        &tiny("anatomy-xnet.onnx"),
        "[\"cpu\"]",
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("tests/fixtures/dicom"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "dcm"))
        .collect();
    files.sort();
    let overlays = dir.path().join("overlays");
    let out = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["infer", "--json", "--config"])
        .arg(&config)
        .arg("--overlays")
        .arg(&overlays)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), files.len(), "one JSON line per file");
    let by_name = |name: &str| {
        reports
            .iter()
            .find(|r| r["file"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} reported"))
    };
    let chest = [
        "RG1_UNCR.dcm",
        "RG1_J2KR.dcm",
        "RG1_J2KI.dcm",
        "RG1_UNCI.dcm",
        "RG1_JLSN.dcm",
        "966_fixed.dcm",
        "Fake_MONOHR1.dcm",
        "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    ];
    for name in chest {
        let r = by_name(name);
        assert_eq!(r["eligible"], true, "{name}: {r}");
        let probs = r["probabilities"].as_object().unwrap();
        assert_eq!(probs.len(), 14, "{name}");
        assert!(
            probs
                .values()
                .all(|p| (0.0..=1.0).contains(&p.as_f64().unwrap()))
        );
        let f = &r["findings"];
        assert_eq!(
            f["warning"],
            "UNTRAINED model: findings are not clinically meaningful"
        );
        assert_eq!(f["calls"].as_object().unwrap().len(), 14);
        assert!(f["anatomy"]["heart"]["fraction"].is_number());
        assert!(r["timings"]["decode_ms"].as_f64().unwrap() > 0.0);
        assert!(r["timings"]["classify_ms"].as_f64().unwrap() > 0.0);
        let stem = name.trim_end_matches(".dcm");
        let png = std::fs::read(overlays.join(format!("{stem}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name}: overlay is a PNG");
    }
    // RG1_J2KR decodes bit-exactly to RG1_UNCR: identical findings.
    assert_eq!(
        by_name("RG1_J2KR.dcm")["probabilities"],
        by_name("RG1_UNCR.dcm")["probabilities"]
    );
    // Pixel spacing known (966: 0.16 mm) gives mm²; RG1's spacing is 0 (invalid): fractions only.
    assert!(by_name("966_fixed.dcm")["findings"]["anatomy"]["heart"]["mm2"].is_number());
    assert!(by_name("RG1_UNCR.dcm")["findings"]["anatomy"]["heart"]["mm2"].is_null());
    let skipped = [
        ("966.dcm", "undecodable"),
        ("RG2_JPLY.dcm", "HIP"),
        ("RG3_JPLY.dcm", "EXTREMITY"),
        ("RG2_UNC.dcm", "body part HIP is not chest"),
        ("RG3_UNCR.dcm", "body part EXTREMITY is not chest"),
        ("JPEGLossless_1s_1f_u_16_12.dcm", "modality MR"),
    ];
    for (name, reason) in skipped {
        let r = by_name(name);
        assert_eq!(r["eligible"], false, "{name}");
        assert!(
            r["reason"].as_str().unwrap().contains(reason),
            "{name}: {}",
            r["reason"]
        );
        assert!(r["probabilities"].is_null());
    }
    let eligible = reports.iter().filter(|r| r["eligible"] == true).count();
    assert_eq!(eligible, chest.len());
}

//! The SR validation gate shared by the end-to-end tests: dciodvfy (dicom3tools), dsrdump
//! (DCMTK) and a highdicom read-back (tests/python/sr_findings.py) on every SR a test produces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

use crate::common::{python, root, run, text};

/// Run the three validators on `sr`; panics on any error. Returns what highdicom read back
/// (study, predecessor, evidence, findings with code, probability, call and image, texts).
pub fn validate(sr: &Path) -> serde_json::Value {
    validate_image(sr);
    let d = run("dsrdump", &[sr.to_str().unwrap()]);
    let out = text(&d);
    assert!(d.status.success(), "dsrdump: {out}");
    assert!(
        !out.lines()
            .any(|l| l.starts_with("E:") || l.starts_with("F:")),
        "dsrdump: {out}"
    );
    let h = Command::new(python())
        .arg(root().join("tests/python/sr_findings.py"))
        .arg(sr)
        .output()
        .unwrap();
    assert!(h.status.success(), "highdicom read-back: {}", text(&h));
    serde_json::from_slice(&h.stdout).unwrap()
}

/// A value from a DICOM file's data set, via DCMTK `dcmdump` (`tag` as `gggg,eeee`; UIDs as
/// numbers, never as their names).
pub fn dicom_field(path: &Path, tag: &str) -> String {
    let o = run("dcmdump", &["-q", "-Un", "+P", tag, path.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout)
        .split(['[', ']'])
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The gate of an image output (SEG, SC), and the first step of the SR's: dciodvfy prints no
/// `Error` line and does not crash.
pub fn validate_image(path: &Path) {
    let v = run("dciodvfy", &[path.to_str().unwrap()]);
    let out = text(&v);
    assert!(
        v.status.code().is_some_and(|c| c < 128),
        "dciodvfy crashed: {out}"
    );
    assert!(
        !out.lines().any(|l| l.starts_with("Error")),
        "dciodvfy errors in {}:\n{out}",
        path.display()
    );
}

/// What highdicom reads from image outputs (tests/python/image_outputs.py), one JSON object per
/// file; with `masks`, each SEG is compared pixel for pixel with the masks in that directory.
pub fn image_outputs(files: &[std::path::PathBuf], masks: Option<&Path>) -> Vec<serde_json::Value> {
    if files.is_empty() {
        return Vec::new();
    }
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/python/image_outputs.py"));
    if let Some(dir) = masks {
        cmd.arg("--masks").arg(dir);
    }
    let h = cmd.args(files).output().unwrap();
    assert!(h.status.success(), "image_outputs.py: {}", text(&h));
    serde_json::from_slice(&h.stdout).unwrap()
}

/// The SOP Class UID of a DICOM file.
pub fn sop_class(path: &Path) -> String {
    dicom_field(path, "0008,0016")
}

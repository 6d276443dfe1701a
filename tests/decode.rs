//! Decoding tests on the real fixtures: every file decodes (bit-exact to its uncompressed
//! reference where MANIFEST.tsv names one) or fails cleanly with a reason; DCMTK-made implicit,
//! deflated and big-endian copies decode identically; the grey image and its resize match the
//! independent Python reference (pydicom + pylibjpeg + numpy + Pillow) within 1e-3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::path::{Path, PathBuf};
use std::process::Command;

use cxr_worker::analyse::decode::{self, DecodeError, DecodeLimits, StoredImage};
use cxr_worker::analyse::preprocess;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

fn python() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
}

/// MANIFEST.tsv rows as (file name, decode_check, notes).
fn manifest() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(fixtures().join("MANIFEST.tsv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (file, check, notes) = (col("file"), col("decode_check"), col("notes"));
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let name = f[file].trim_start_matches("dicom/").to_string();
            (
                name,
                f[check].to_string(),
                f.get(notes).unwrap_or(&"").to_string(),
            )
        })
        .collect()
}

fn stored(path: &Path) -> Result<StoredImage, DecodeError> {
    let limits = DecodeLimits::default();
    decode::open_path(path, &limits)?.stored_image(&limits)
}

/// The reference a file must decode bit-exactly to, per its MANIFEST notes.
fn bit_exact_reference(notes: &str) -> Option<String> {
    let at = notes
        .find("bit-exact vs ")
        .map(|i| i + 13)
        .or_else(|| notes.find("bit-exact to ").map(|i| i + 13))?;
    let name: String = notes[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    Some(format!("{name}.dcm"))
}

#[test]
fn every_fixture_decodes_or_fails_cleanly() {
    let rows = manifest();
    assert_eq!(rows.len(), 27, "the manifest lists the 27 fixtures");
    let mut exact = 0;
    for (name, check, notes) in &rows {
        let path = fixtures().join(name);
        let result = stored(&path);
        if check.starts_with("FAILS") {
            let err = result.expect_err(name).to_string();
            assert!(err.len() > 20, "{name}: the reason says something: {err}");
            continue;
        }
        if name == "RG2_JPLY_fixed.dcm" {
            // 12-bit JPEG Extended: not an accepted transfer syntax (no native 12-bit decoder).
            let err = result.expect_err(name);
            assert!(
                matches!(err, DecodeError::TransferSyntax(ref ts) if ts == "1.2.840.10008.1.2.4.51"),
                "{err}"
            );
            continue;
        }
        let image = result.unwrap_or_else(|e| panic!("{name} must decode: {e}"));
        assert_eq!(image.values.len(), image.rows * image.columns, "{name}");
        let max = image.values.iter().copied().max().unwrap();
        assert!(
            max > 0 && max < (1 << image.bits_stored),
            "{name}: max {max} within BitsStored"
        );
        if let Some(reference) = bit_exact_reference(notes) {
            let want = stored(&fixtures().join(&reference)).unwrap();
            assert_eq!(
                (image.rows, image.columns),
                (want.rows, want.columns),
                "{name}"
            );
            assert!(
                image.values == want.values,
                "{name} differs from {reference}"
            );
            exact += 1;
        }
    }
    // RG1_J2KR, RG2 ×4 lossless (JPLL, RLE, JLSL, J2KR), RG3 ×4 lossless.
    assert_eq!(exact, 9, "bit-exact comparisons made");
}

#[test]
fn broken_files_fail_with_a_reason() {
    for name in ["966.dcm", "RG2_JPLY.dcm", "RG3_JPLY.dcm"] {
        let err = stored(&fixtures().join(name)).expect_err(name).to_string();
        assert!(
            err.contains("cannot be decoded") || err.contains("transfer syntax"),
            "{name}: {err}"
        );
    }
}

const SIIM: &str = "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm";

fn read_i32(path: &Path) -> Vec<i32> {
    let bytes = std::fs::read(path).unwrap();
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn write_i32(path: &Path, values: &[i32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn stored_values_match_pydicom() {
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "RG1_UNCR.dcm",
        "RG1_J2KI.dcm",
        "RG3_JLSN.dcm",
        "966_fixed.dcm",
        SIIM,
    ] {
        let out = dir.path().join("stored.i32");
        let status = Command::new(python())
            .args(["tests/python/reference.py", "stored"])
            .arg(fixtures().join(name))
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{name}: python reference failed");
        let want = read_i32(&out);
        let got = stored(&fixtures().join(name)).unwrap();
        assert_eq!(got.values.len(), want.len(), "{name}");
        let max_diff = got
            .values
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .max()
            .unwrap();
        if name == SIIM {
            // Lossy JPEG baseline: IDCT rounding may differ by 1 LSB between decoders (libjpeg and
            // libjpeg-turbo differ from each other on 3 % of this image's pixels, by 1).
            assert!(
                max_diff <= 1,
                "{name}: stored values differ by {max_diff} LSB"
            );
        } else {
            assert_eq!(
                max_diff, 0,
                "{name}: stored values differ from pydicom + pylibjpeg"
            );
        }
    }
}

#[test]
fn dcmtk_transfer_syntax_copies_decode_identically() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["RG1_UNCR.dcm", "RG2_UNC.dcm"] {
        let original = stored(&fixtures().join(name)).unwrap();
        let (grey, _) = decode::to_grey(&original);
        for flag in ["+ti", "+td", "+tb"] {
            let copy = dir.path().join(format!("{flag}-{name}"));
            let status = Command::new("dcmconv")
                .arg(flag)
                .arg(fixtures().join(name))
                .arg(&copy)
                .status()
                .expect("DCMTK dcmconv is installed");
            assert!(status.success(), "dcmconv {flag} {name}");
            let decoded = stored(&copy).unwrap_or_else(|e| panic!("{flag} {name}: {e}"));
            assert!(
                decoded.values == original.values,
                "{flag} {name}: stored values differ"
            );
            assert_eq!(
                decode::to_grey(&decoded).0,
                grey,
                "{flag} {name}: grey differs"
            );
        }
    }
}

#[test]
fn oversized_declared_length_is_refused_before_parsing() {
    let bytes = std::fs::read(fixtures().join("RG1_UNCR.dcm")).unwrap();
    // Keep the header and claim 3.9 GB for the pixel data, with 64 bytes behind it.
    let pixel = bytes
        .windows(8)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0])
        .unwrap();
    let mut evil = bytes[..pixel + 8].to_vec();
    evil.extend_from_slice(&0xF000_0000u32.to_le_bytes());
    evil.extend_from_slice(&[0u8; 64]);
    let err = decode::open_bytes(&evil, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    assert!(err.to_string().contains("(7FE0,0010)"), "{err}");
    // A file cut short in the middle of its pixels is refused the same way.
    let err = decode::open_bytes(&bytes[..bytes.len() / 2], &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed(_)), "{err}");
    // And a file over the size cap is refused without parsing.
    let small = DecodeLimits {
        max_file_bytes: 1000,
        ..DecodeLimits::default()
    };
    assert!(matches!(
        decode::open_bytes(&bytes, &small),
        Err(DecodeError::TooLarge { .. })
    ));
}

/// Rust grey image resized to `size`, and the Python reference's, for one fixture. For the lossy
/// JPEG baseline files the reference is given Rust's stored values (decoders may differ by 1 LSB;
/// `stored_values_match_pydicom` bounds that), so that the preprocessing alone is compared.
fn both_resized(name: &str, size: usize, dir: &Path) -> (Vec<f32>, Vec<f32>) {
    let out = dir.join(format!("{name}.{size}.f32"));
    let mut command = Command::new(python());
    command
        .args(["tests/python/reference.py", "grey"])
        .arg(fixtures().join(name))
        .arg(size.to_string())
        .arg(&out);
    if name == SIIM || name == "Fake_MONOHR1.dcm" {
        let values = dir.join(format!("{name}.i32"));
        write_i32(&values, &stored(&fixtures().join(name)).unwrap().values);
        command.arg(&values);
    }
    let result = command.output().unwrap();
    assert!(
        result.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let want: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (_, grey, _) =
        decode::decode_path(&fixtures().join(name), &DecodeLimits::default()).unwrap();
    (preprocess::resize(&grey, size, size).pixels, want)
}

#[test]
fn preprocessing_matches_the_python_reference_on_chest_files() {
    let dir = tempfile::tempdir().unwrap();
    let chest = [
        "RG1_UNCR.dcm",     // 15-bit MONOCHROME1, window
        "RG1_JLSN.dcm",     // JPEG-LS near-lossless
        "966_fixed.dcm",    // DX, J2K lossless, window
        SIIM,               // 8-bit JPEG, min/max
        "Fake_MONOHR1.dcm", // same, MONOCHROME1
    ];
    for name in chest {
        for size in [512, 64] {
            let (got, want) = both_resized(name, size, dir.path());
            assert_eq!(got.len(), want.len(), "{name} at {size}");
            let max_diff = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max_diff <= 1e-3,
                "{name} at {size}: max |rust − python| = {max_diff}"
            );
            let mean: f32 = got.iter().sum::<f32>() / got.len() as f32;
            assert!(
                mean > 0.05 && mean < 0.95,
                "{name}: a real image, not a flat one (mean {mean})"
            );
        }
    }
}

//! Every crash the fuzzers found (docs/fuzzing.md), replayed through the same harness code as a
//! plain test: each input must now be refused cleanly. The inputs live in tests/fixtures/fuzz,
//! named `<target>-<libFuzzer hash>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/fuzz_targets/image.rs"]
#[allow(dead_code)]
mod image;

#[path = "../fuzz/fuzz_targets/dataset_harness.rs"]
mod dataset_harness;

use std::path::PathBuf;

fn findings() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .filter(|(n, _)| n != "README.md")
        .collect();
    out.sort();
    out
}

#[test]
fn every_fuzzing_crash_is_refused_cleanly() {
    let found = findings();
    assert!(!found.is_empty());
    for (name, data) in found {
        let target = name.rsplit_once('-').map_or(name.as_str(), |(t, _)| t);
        if target == "dataset" {
            // the structural guard now refuses it before any parser sees it
            let refused = dataset_harness::run(&data).unwrap_err();
            eprintln!("{name}: refused by the guard: {refused}");
            continue;
        }
        let ts = match target {
            "rle" => "1.2.840.10008.1.2.5",
            "jpeg_baseline" => "1.2.840.10008.1.2.4.50",
            "jpeg_lossless" => "1.2.840.10008.1.2.4.70",
            "jpeg_ls" => "1.2.840.10008.1.2.4.80",
            "jpeg2000" => "1.2.840.10008.1.2.4.90",
            other => panic!("{name}: no replay for target {other}"),
        };
        // a panic here fails the test: the harness only returns when the input was handled
        image::decode_encapsulated(ts, &data);
        eprintln!("{name}: refused cleanly");
    }
}

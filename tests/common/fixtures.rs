//! The repository's paths (fixtures, the venv's Python), running a program to completion, and
//! reading what a test produced: staged spool files, the data set of a Part 10 file; copies of
//! the real chest CR with new UIDs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/dicom").join(name)
}

pub fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// Run a program to completion.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Staged files left in a spool (`SPOOL/tmp/<receiver>/`), each receiver's lock file aside.
pub fn staged_files(spool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(spool.join("tmp")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.file_name().is_some_and(|n| n != ".lock") {
                    out.push(f);
                }
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The data set part of a Part 10 file: everything after the file meta group.
pub fn dataset_bytes(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    // (0002,0000) UL, 4: explicit VR LE header of 8 bytes, then the group length
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

/// A copy of the real chest CR (RG1_UNCR) in `dir`, with a new SOP Instance UID and a new series
/// in `study`; its SOP Instance UID and path (`dir/SOP.dcm`).
pub fn chest_copy(dir: &Path, study: &str) -> (String, PathBuf) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut obj = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let sop = super::dul::new_uid();
    for (tag, value) in [
        (tags::SOP_INSTANCE_UID, sop.clone()),
        (tags::STUDY_INSTANCE_UID, study.to_string()),
        (tags::SERIES_INSTANCE_UID, super::dul::new_uid()),
    ] {
        obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
    }
    obj.meta_mut().media_storage_sop_instance_uid = sop.clone();
    let path = dir.join(format!("{sop}.dcm"));
    obj.write_to_file(&path).unwrap();
    (sop, path)
}

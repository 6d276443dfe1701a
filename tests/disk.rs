//! A real full disk: the spool on a small tmpfs (root mounts one), filled by a burst from four
//! senders at once. Senders get A700 or a transient refusal, never Success for what was not
//! stored; every acknowledged instance is complete on disk and in the database; no partial file
//! is left behind; and receiving works again as soon as space returns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dul::{self, CR, EXPLICIT_LE};
use common::*;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;

/// A tmpfs of `mib` MiB mounted at a fresh directory; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(mib: u32) -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the full-disk test mounts a tmpfs and must run as root (make test does, in CI)"
        );
        let dir = tempfile::tempdir().unwrap().keep().join("spool");
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {}", text(&out));
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The real chest CR with new UIDs: (SOP Instance UID, data set).
fn fresh_chest(scratch: &Path) -> (String, Vec<u8>) {
    let mut obj = dicom_object::open_file(fixture("RG1_UNCR.dcm")).unwrap();
    let sop = dul::new_uid();
    for (tag, value) in [
        (tags::SOP_INSTANCE_UID, sop.clone()),
        (tags::STUDY_INSTANCE_UID, dul::new_uid()),
        (tags::SERIES_INSTANCE_UID, dul::new_uid()),
    ] {
        obj.put(DataElement::new(tag, VR::UI, PrimitiveValue::from(value)));
    }
    obj.meta_mut().media_storage_sop_instance_uid = sop.clone();
    let path = scratch.join(format!("{sop}.dcm"));
    obj.write_to_file(&path).unwrap();
    let file = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let layout = cxr_worker::dicom::guard::check(&file, Default::default()).unwrap();
    (sop, file[layout.dataset_offset..].to_vec())
}

/// Send `n` fresh chest images over one association; each SOP UID with its status (`None`: the
/// association was refused or broke).
fn burst(addr: std::net::SocketAddr, n: usize, scratch: PathBuf) -> Vec<(String, Option<u16>)> {
    let images: Vec<(String, Vec<u8>)> = (0..n).map(|_| fresh_chest(&scratch)).collect();
    let mut out = Vec::new();
    let mut assoc = dul::associate(addr, "MODALITY", AE, &[(1, CR, EXPLICIT_LE)]).ok();
    for (sop, ds) in images {
        let status = match assoc.as_mut() {
            Some(s) => dul::store(s, 1, CR, &sop, &ds).ok(),
            None => None,
        };
        if status.is_none() {
            assoc = None;
        }
        out.push((sop, status));
    }
    if let Some(s) = assoc {
        dul::release(s);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_spool_refuses_loses_nothing_and_recovers() {
    let spool = Tmpfs::mount(48);
    // the disk is mostly full before the burst
    let filler = spool.0.join("filler");
    std::fs::write(&filler, vec![1u8; 24 << 20]).unwrap();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let config = write_config_with(&dir, &db.url, "", "[study]\nworkers = 0\n");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "dir = \"spool\"",
        &format!("dir = \"{}\"", spool.0.display()),
    );
    std::fs::write(&config, text).unwrap();
    let mut d = Daemon::start_with(dir.clone(), config);
    let addr = d.addr;
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();

    // four senders, four ~7.5 MB images each: about twice what is left
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let scratch = scratch.clone();
            std::thread::spawn(move || burst(addr, 4, scratch))
        })
        .collect();
    let results: Vec<(String, Option<u16>)> = senders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stored: Vec<&String> = results
        .iter()
        .filter(|(_, s)| *s == Some(0))
        .map(|(sop, _)| sop)
        .collect();
    let refused = results.iter().filter(|(_, s)| *s != Some(0)).count();
    assert!(!stored.is_empty(), "nothing stored: {results:?}");
    assert!(refused > 0, "the disk never filled: {results:?}");
    for (_, status) in &results {
        assert!(
            matches!(status, Some(0) | Some(0xA700) | None),
            "unexpected status {status:?}"
        );
    }

    // every acknowledged instance is in the database and whole on disk
    let pool = db.pool().await;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT sop_instance_uid, spool_key, size_bytes FROM instances")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        rows.len(),
        stored.len(),
        "rows for exactly what was acknowledged"
    );
    for (sop, key, size) in &rows {
        assert!(stored.contains(&sop), "{sop} recorded but not acknowledged");
        let path = spool.0.join("objects").join(key);
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len as i64, *size, "{key}");
        let obj = dicom_object::open_file(&path).unwrap();
        assert_eq!(
            obj.element(tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap()
                .trim_end_matches('\0'),
            sop.as_str()
        );
    }
    // no staged leftovers: only each receiver's lock file
    for entry in std::fs::read_dir(spool.0.join("tmp")).unwrap() {
        let staged: Vec<_> = std::fs::read_dir(entry.unwrap().path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(
            staged,
            vec![".lock".to_string()],
            "partial files left behind"
        );
    }
    assert!(d.is_running());

    // space returns: the next image is stored
    std::fs::remove_file(&filler).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let again = burst(addr, 1, scratch.clone());
    assert_eq!(again[0].1, Some(0), "{again:?}\n{}", d.log_text());
    assert!(d.terminate().success());
}

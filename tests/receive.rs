//! Receive, end to end: the real daemon on 127.0.0.1, a fresh database per test, DCMTK and
//! pynetdicom as senders, real chest DICOM fixtures.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Copies of fixtures in the syntaxes that are not in the fixture set, made with DCMTK, each
/// with a new SOP Instance UID so that none is a duplicate of another.
fn derived_fixtures(dir: &Path) -> Vec<PathBuf> {
    let make = |name: &str, src: &str, tool: &str, opts: &[&str]| -> PathBuf {
        let out = dir.join(name);
        let mut args: Vec<&str> = opts.to_vec();
        let src = fixture(src);
        args.push(src.to_str().unwrap());
        args.push(out.to_str().unwrap());
        let o = run(tool, &args);
        assert!(o.status.success(), "{tool}: {}", text(&o));
        let o = run("dcmodify", &["-nb", "-gin", out.to_str().unwrap()]);
        assert!(o.status.success(), "dcmodify: {}", text(&o));
        out
    };
    let baseline = {
        // the only 8-bit chest image is Secondary Capture: relabel a copy as CR for transport
        let out = make(
            "jpeg-baseline.dcm",
            "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
            "dcmconv",
            &[],
        );
        let o = run(
            "dcmodify",
            &[
                "-nb",
                "-i",
                "SOPClassUID=1.2.840.10008.5.1.4.1.1.1",
                "-i",
                "Modality=CR",
                out.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
        out
    };
    vec![
        make("implicit.dcm", "RG3_UNCR.dcm", "dcmconv", &["+ti"]),
        make("deflated.dcm", "RG2_UNC.dcm", "dcmconv", &["+td"]),
        make("big-endian.dcm", "RG1_UNCI.dcm", "dcmconv", &["+tb"]),
        make("jpeg-p14.dcm", "RG3_UNCR.dcm", "dcmcjpeg", &["+el"]),
        baseline,
    ]
}

fn transfer_syntax_of(path: &Path) -> String {
    let o = run(
        "dcmdump",
        &["-M", "-Un", "+P", "0002,0010", "-q", path.to_str().unwrap()],
    );
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    line.split(['[', ']'])
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn sop_instance_of(path: &Path) -> String {
    let o = run(
        "dcmdump",
        &["-q", "+P", "0008,0018", path.to_str().unwrap()],
    );
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    line.split(['[', ']'])
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// The fixtures and derived copies: one file per accepted transfer syntax (12).
fn every_syntax(tmp: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = [
        "RG1_UNCR.dcm",  // explicit VR LE
        "RG1_J2KR.dcm",  // JPEG 2000 lossless
        "RG1_JLSN.dcm",  // JPEG-LS near-lossless
        "RG2_JPLL.dcm",  // JPEG lossless SV1
        "RG2_RLE.dcm",   // RLE
        "RG2_J2KI.dcm",  // JPEG 2000
        "RG3_JLSL.dcm",  // JPEG-LS lossless
        "966_fixed.dcm", // DX, JPEG 2000 lossless
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    files.extend(derived_fixtures(tmp));
    let syntaxes: std::collections::BTreeSet<String> =
        files.iter().map(|f| transfer_syntax_of(f)).collect();
    let accepted: std::collections::BTreeSet<String> =
        cxr_worker::dicom::sop_classes::TRANSFER_SYNTAXES
            .iter()
            .map(|t| t.uid.to_string())
            .collect();
    assert_eq!(syntaxes, accepted, "fixtures cover every accepted syntax");
    files
}

async fn stored_key(pool: &sqlx::PgPool, f: &Path, same_syntax: bool) -> String {
    let (key, ts): (String, String) = sqlx::query_as(
        "SELECT spool_key, transfer_syntax_uid FROM instances WHERE sop_instance_uid = $1",
    )
    .bind(sop_instance_of(f))
    .fetch_one(pool)
    .await
    .unwrap_or_else(|e| panic!("{} not recorded: {e}", f.display()));
    if same_syntax {
        assert_eq!(ts, transfer_syntax_of(f), "{}", f.display());
    } else {
        assert!(cxr_worker::dicom::sop_classes::is_accepted_transfer_syntax(
            &ts
        ));
    }
    key
}

#[tokio::test(flavor = "multi_thread")]
async fn echo_then_dcmsend_every_transfer_syntax_in_one_association() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    let echo = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(echo.status.success(), "echoscu: {}", text(&echo));

    let tmp = tempfile::tempdir().unwrap();
    let files = every_syntax(tmp.path());
    let port = d.port();
    let mut args = vec!["-aec", AE, "127.0.0.1", &port];
    let paths: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let send = run("dcmsend", &args);
    assert!(send.status.success(), "dcmsend: {}", text(&send));
    let log = d.log_text();
    assert_eq!(
        log.matches("association established").count(),
        2,
        "echo + one dcmsend association:\n{log}"
    );
    let pool = db.pool().await;
    for f in &files {
        // DCMTK may negotiate another syntax it can convert to (explicit for an implicit file)
        let key = stored_key(&pool, f, false).await;
        // DCMTK re-encodes what it sends (it may drop group lengths): compare element by element
        // with pydicom, pixel data included
        let stored = d.spool_objects().join(&key);
        let same = std::process::Command::new(python())
            .arg(root().join("tests/python/same_dataset.py"))
            .args([f, &stored])
            .output()
            .unwrap();
        assert!(same.status.success(), "{}: {}", f.display(), text(&same));
    }
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n as usize, files.len());
    let (modality, view): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT modality, view_position FROM instances WHERE sop_instance_uid = $1")
            .bind(sop_instance_of(&fixture("RG1_UNCR.dcm")))
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(modality.as_deref(), Some("CR"));
    assert_eq!(view.as_deref(), Some("PA"));
}

#[tokio::test(flavor = "multi_thread")]
async fn pynetdicom_every_transfer_syntax_stored_byte_identical() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    let tmp = tempfile::tempdir().unwrap();
    let files = every_syntax(tmp.path());
    // pynetdicom sends a file's data set bytes as they are in the file: what was sent is known
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, &files);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let pool = db.pool().await;
    for f in &files {
        let key = stored_key(&pool, f, true).await;
        let stored = std::fs::read(d.spool_objects().join(&key)).unwrap();
        let sent = std::fs::read(f).unwrap();
        if transfer_syntax_of(f) == "1.2.840.10008.1.2.1.99" {
            // pynetdicom re-deflates: compare element by element
            let same = std::process::Command::new(python())
                .arg(root().join("tests/python/same_dataset.py"))
                .arg(f)
                .arg(d.spool_objects().join(&key))
                .output()
                .unwrap();
            assert!(same.status.success(), "{}: {}", f.display(), text(&same));
            continue;
        }
        assert!(
            dataset_bytes(&stored) == dataset_bytes(&sent),
            "{}: stored data set differs from the one sent",
            f.display()
        );
        let o = run(
            "dcmdump",
            &["-q", d.spool_objects().join(&key).to_str().unwrap()],
        );
        assert!(o.status.success(), "dcmdump of stored {key}: {}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_associations_from_pynetdicom() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    let files: Vec<PathBuf> = [
        "RG1_UNCR.dcm",
        "RG1_J2KR.dcm",
        "RG2_RLE.dcm",
        "RG2_JPLL.dcm",
        "RG3_JLSL.dcm",
        "RG3_J2KR.dcm",
        "966_fixed.dcm",
        "RG2_JLSN.dcm",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let acks = pynetdicom_send(&d, "PYNETDICOM", 4, &files);
    assert_eq!(acks.len(), files.len());
    for a in &acks {
        assert_eq!(a.status, 0, "{a:?}");
    }
    let log = d.log_text();
    assert!(log.matches("association established").count() >= 4, "{log}");
    let pool = db.pool().await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE calling_ae_title = 'PYNETDICOM'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(n, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicates_are_acknowledged_counted_and_the_first_copy_kept() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    let tmp = tempfile::tempdir().unwrap();
    // a second copy with the same SOP Instance UID but different content
    let altered = tmp.path().join("altered.dcm");
    std::fs::copy(fixture("RG2_RLE.dcm"), &altered).unwrap();
    let o = run(
        "dcmodify",
        &[
            "-nb",
            "-i",
            "SeriesDescription=ALTERED COPY",
            altered.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));

    let first = fixture("RG2_RLE.dcm");
    let acks = pynetdicom_send(
        &d,
        "PYNETDICOM",
        1,
        &[first.clone(), first.clone(), altered],
    );
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let pool = db.pool().await;
    let (count, dups, key): (i64, i32, String) =
        sqlx::query_as("SELECT count(*) OVER (), duplicate_count, spool_key FROM instances")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((count, dups), (1, 2));
    let stored = std::fs::read(d.spool_objects().join(key)).unwrap();
    assert!(dataset_bytes(&stored) == dataset_bytes(&std::fs::read(&first).unwrap()));
    let staged = staged_files(&d.dir.join("spool"));
    assert!(staged.is_empty(), "duplicates leave no staged files");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_called_ae_and_unknown_calling_ae_are_rejected() {
    let db = TestDb::create().await;
    let d = Daemon::start(
        &db.url,
        r#"allowed_calling_ae_titles = ["MODALITY", "PACS@127.0.0.1", "FAR@10.9.9.9"]"#,
    );
    let port = d.port();
    let wrong_called = run("echoscu", &["-aec", "NOT_US", "127.0.0.1", &port]);
    assert!(!wrong_called.status.success());
    assert!(
        text(&wrong_called).contains("Called AE Title Not Recognized"),
        "{}",
        text(&wrong_called)
    );

    let unknown = run(
        "echoscu",
        &["-aet", "ROGUE", "-aec", AE, "127.0.0.1", &port],
    );
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&unknown)
    );

    // allowed title from the wrong host
    let far = run("echoscu", &["-aet", "FAR", "-aec", AE, "127.0.0.1", &port]);
    assert!(!far.status.success(), "{}", text(&far));

    for ok in ["MODALITY", "PACS"] {
        let o = run("echoscu", &["-aet", ok, "-aec", AE, "127.0.0.1", &port]);
        assert!(o.status.success(), "{ok}: {}", text(&o));
    }
    assert!(d.log_text().contains("association not established"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sop_class_not_accepted_is_refused_at_negotiation() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    // MR image storage is not a chest radiograph class
    let mr = fixture("JPEGLossless_1s_1f_u_16_12.dcm");
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, &[mr]);
    assert_eq!(acks.len(), 1);
    assert_ne!(acks[0].status, 0, "{acks:?}");
    let o = run(
        "storescu",
        &[
            "-aec",
            AE,
            "127.0.0.1",
            &d.port(),
            fixture("JPEGLossless_1s_1f_u_16_12.dcm").to_str().unwrap(),
        ],
    );
    assert!(text(&o).contains("No presentation context"), "{}", text(&o));
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_data_set_gets_out_of_resources_and_the_association_goes_on() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "max_dataset_mb = 2");
    let big = fixture("RG1_UNCR.dcm"); // 7 MB
    let small = fixture("RG3_JLSN.dcm"); // 0.3 MB
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, &[big, small]);
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[0].status, 0xA700, "{acks:?}");
    assert!(acks[0].comment.contains("MiB"), "{acks:?}");
    assert_eq!(acks[1].status, 0, "{acks:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn truncated_and_mismatched_data_sets_get_failure_statuses() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "");
    let raw_store = |args: &[&str]| {
        let out = std::process::Command::new(python())
            .arg(root().join("tests/python/raw_store.py"))
            .args(["127.0.0.1", &d.port(), AE])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    // a data set cut in the middle of its pixel data element
    let rle = fixture("RG2_RLE.dcm");
    let o = raw_store(&[rle.to_str().unwrap(), "--truncate", "100000"]);
    assert!(o.contains("status=0xc000"), "{o}");
    // cut inside the header
    let o = raw_store(&[rle.to_str().unwrap(), "--truncate", "301"]);
    assert!(o.contains("status=0xc000"), "{o}");
    // a data set whose SOP Instance UID differs from the command's
    let o = raw_store(&[fixture("RG2_J2KR.dcm").to_str().unwrap(), "--mismatch"]);
    assert!(o.contains("status=0xa900"), "{o}");
    // a data set with no Study Instance UID
    let tmp = tempfile::tempdir().unwrap();
    let no_study = tmp.path().join("no-study.dcm");
    std::fs::copy(fixture("RG3_RLE.dcm"), &no_study).unwrap();
    let m = run(
        "dcmodify",
        &["-nb", "-e", "StudyInstanceUID", no_study.to_str().unwrap()],
    );
    assert!(m.status.success(), "{}", text(&m));
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, &[no_study, fixture("RG3_RLE.dcm")]);
    assert_eq!(acks[0].status, 0xA900, "{acks:?}");
    assert!(acks[0].comment.contains("Study Instance UID"), "{acks:?}");
    assert_eq!(acks[1].status, 0, "the association goes on: {acks:?}");
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the good instance is recorded");
    let staged = staged_files(&d.dir.join("spool"));
    assert!(staged.is_empty(), "refused instances leave no staged files");
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_on_the_wire_aborts_that_association_only() {
    use std::io::{Read, Write};
    let db = TestDb::create().await;
    let mut d = Daemon::start(&db.url, "");
    // not DICOM at all
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    // an association, then a P-DATA-TF whose item length runs past the PDU
    let out = std::process::Command::new(python())
        .arg(root().join("tests/python/garbage.py"))
        .args(["127.0.0.1", &d.port(), AE])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(d.is_running());
    let echo = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(echo.status.success(), "still serving: {}", text(&echo));
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_peer_is_disconnected_after_the_read_timeout() {
    use std::io::Read;
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let cfg = write_config(&dir, &db.url, "");
    let text_cfg = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("read_timeout_secs = 20", "read_timeout_secs = 1");
    std::fs::write(&cfg, text_cfg).unwrap();
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace(
        "read_timeout_secs = 1",
        "read_timeout_secs = 1\nassociation_request_timeout_secs = 2",
    );
    std::fs::write(&cfg, text_cfg).unwrap();
    let d = Daemon::start_with(dir, cfg);
    // a connection that never asks for an association: closed after its request deadline
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "connection closed by the daemon");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // an association that goes silent: closed after the read timeout
    let mut s = dul::associate(
        d.addr,
        "SILENT",
        AE,
        &[(1, dul::VERIFICATION, dul::IMPLICIT_LE)],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "association closed by the daemon");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test(flavor = "multi_thread")]
async fn association_limit_rejects_transiently() {
    let db = TestDb::create().await;
    let d = Daemon::start(&db.url, "max_associations = 1");
    // a connection that sends nothing does not take the slot (capacity is decided once the
    // association is requested)
    let idle = std::net::TcpStream::connect(d.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let o = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(
        o.status.success(),
        "an idle socket locked a sender out: {}",
        text(&o)
    );
    drop(idle);
    // an established association does
    let held = dul::associate(
        d.addr,
        "HOLDER",
        AE,
        &[(1, dul::VERIFICATION, dul::IMPLICIT_LE)],
    )
    .unwrap();
    let o = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("Local Limit Exceeded"), "{}", text(&o));
    dul::release(held);
    let o = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(o.status.success(), "the slot is free again: {}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_store_in_flight_and_exits_zero() {
    let db = TestDb::create().await;
    let mut d = Daemon::start(&db.url, "");
    let files: Vec<PathBuf> = [
        "RG1_UNCR.dcm",
        "RG2_UNC.dcm",
        "RG3_UNCR.dcm",
        "RG1_UNCI.dcm",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let port = d.port();
    let sender = std::thread::spawn(move || {
        let mut args = vec!["-aec".to_string(), AE.into(), "127.0.0.1".into(), port];
        args.extend(files.iter().map(|f| f.display().to_string()));
        std::process::Command::new("storescu")
            .args(&args)
            .output()
            .unwrap()
    });
    // wait until the first instance is stored, then ask the daemon to stop
    for _ in 0..200 {
        if d.log_text().contains("\"stored\"") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = d.terminate();
    assert!(status.success(), "exit status {status:?}");
    let _ = sender.join().unwrap();
    // whatever was acknowledged is there; nothing half-written is
    let pool = db.pool().await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT spool_key FROM instances")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(d.spool_objects().join(k).is_file());
    }
    assert!(d.log_text().contains("\"stopped\""));
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_answers_out_of_resources_and_loses_nothing() {
    let pg = PrivatePg::start();
    let db = TestDb::create_on(&pg.admin_url()).await;
    let d = Daemon::start(&db.url, "");
    let first = fixture("RG3_RLE.dcm");
    let second = fixture("RG2_RLE.dcm");
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, std::slice::from_ref(&first));
    assert_eq!(acks[0].status, 0, "{acks:?}");

    pg.pg_stop();
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, std::slice::from_ref(&second));
    assert_eq!(
        acks[0].status, 0xA700,
        "database down: out of resources, not Success: {acks:?}"
    );
    assert!(acks[0].comment.contains("database"), "{acks:?}");
    let staged = staged_files(&d.dir.join("spool"));
    assert!(
        staged.is_empty(),
        "a refused instance leaves no staged file"
    );

    pg.pg_start();
    // the sender retries, as a PACS does after a failure status
    let acks = pynetdicom_send(&d, "PYNETDICOM", 1, &[first.clone(), second.clone()]);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let pool = db.pool().await;
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT spool_key, duplicate_count FROM instances ORDER BY received_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1, 1, "the first instance was sent twice");
    for ((key, _), sent) in rows.iter().zip([&first, &second]) {
        let stored = std::fs::read(d.spool_objects().join(key)).unwrap();
        assert!(dataset_bytes(&stored) == dataset_bytes(&std::fs::read(sent).unwrap()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_study_loses_no_acknowledged_instance() {
    use std::io::BufRead;
    let db = TestDb::create().await;
    let mut d = Daemon::start(&db.url, "");
    let files: Vec<PathBuf> = [
        "RG3_RLE.dcm",
        "RG3_JLSL.dcm",
        "RG3_J2KR.dcm",
        "RG1_UNCR.dcm",
        "RG2_UNC.dcm",
        "RG3_UNCR.dcm",
        "RG1_UNCI.dcm",
        "RG1_J2KR.dcm",
        "966_fixed.dcm",
        "RG2_JPLL.dcm",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    let mut sender = std::process::Command::new(python())
        .arg(root().join("tests/python/send.py"))
        .args(["127.0.0.1", &d.port(), AE])
        .args(&files)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sender.stdout.take().unwrap();
    let mut acks: Vec<Ack> = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let ack: Ack = serde_json::from_str(&line.unwrap()).unwrap();
        acks.push(ack);
        if acks.len() == 3 {
            d.kill9(); // while the fourth (7 MB) instance is on the wire
        }
    }
    let _ = sender.wait();
    let acknowledged: Vec<&Ack> = acks.iter().filter(|a| a.status == 0).collect();
    assert!(acknowledged.len() >= 3, "{acks:?}");
    assert!(
        acknowledged.len() < files.len(),
        "the kill interrupted the study: {acks:?}"
    );

    // restart on the same spool and database
    let mut d2 = Daemon::start_with(d.dir.clone(), d.config.clone());
    let pool = db.pool().await;
    for a in &acknowledged {
        let key: String =
            sqlx::query_scalar("SELECT spool_key FROM instances WHERE sop_instance_uid = $1")
                .bind(a.sop.as_deref().unwrap())
                .fetch_one(&pool)
                .await
                .unwrap_or_else(|e| panic!("acknowledged {} not in the database: {e}", a.file));
        let stored = std::fs::read(d2.spool_objects().join(&key)).unwrap();
        assert!(
            dataset_bytes(&stored) == dataset_bytes(&std::fs::read(&a.file).unwrap()),
            "{}",
            a.file
        );
    }
    let staged = staged_files(&d2.dir.join("spool"));
    assert!(staged.is_empty(), "staged leftovers are swept at start-up");
    // the sender resends the whole study: everything is acknowledged, nothing twice
    let acks = pynetdicom_send(&d2, "PYNETDICOM", 1, &files);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n as usize, files.len());
    assert!(d2.terminate().success());
}

/// Instances that complete at the same moment on several associations are committed together
/// (the group committer takes them as one batch), and each still gets its own outcome: the same
/// instance sent by four associations at once is stored once and counted three times as a
/// duplicate — never "restored" because its first copy was still being published in the batch.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_associations_group_commit_and_keep_each_outcome() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let config = write_config(&dir, &db.url, "");
    let d = Daemon::start_env(
        dir,
        config,
        &[("RUST_LOG", "info,cxr_worker::ingest=debug")],
    );
    let distinct: Vec<PathBuf> = [
        "RG3_J2KI.dcm",
        "RG1_J2KI.dcm",
        "RG2_J2KI.dcm",
        "RG3_JLSN.dcm",
        "RG2_JLSN.dcm",
        "RG1_JLSN.dcm",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    // four copies of each in a row: send.py deals them round-robin, so every association sends
    // the same instance at the same moment
    let files: Vec<PathBuf> = distinct
        .iter()
        .flat_map(|f| std::iter::repeat_n(f.clone(), 4))
        .collect();
    let acks = pynetdicom_send(&d, "PYNETDICOM", 4, &files);
    assert_eq!(acks.len(), files.len());
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");

    let pool = db.pool().await;
    let rows: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT sop_instance_uid, spool_key, duplicate_count FROM instances ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), distinct.len(), "{rows:?}");
    for f in &distinct {
        let (_, key, dups) = rows
            .iter()
            .find(|(sop, _, _)| *sop == sop_instance_of(f))
            .unwrap_or_else(|| panic!("{} not recorded", f.display()));
        assert_eq!(*dups, 3, "{}", f.display());
        let stored = std::fs::read(d.spool_objects().join(key)).unwrap();
        assert!(dataset_bytes(&stored) == dataset_bytes(&std::fs::read(f).unwrap()));
    }
    assert!(staged_files(&d.dir.join("spool")).is_empty());
    let m = parse_metrics(&http_get(d.http_addr(), "/metrics").1);
    assert_eq!(
        m["cxr_instances_received_total"],
        distinct.len() as f64,
        "{m:?}"
    );
    assert_eq!(
        m["cxr_instances_duplicate_total"],
        3.0 * distinct.len() as f64
    );
    assert_eq!(m["cxr_instances_restored_total"], 0.0);
    // and they were committed in batches: at least one took instances of several associations
    let log = d.log_text();
    let batches: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"group commit\""))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["instances"]
                .as_u64()
                .or(v["fields"]["instances"].as_u64())
        })
        .collect();
    assert_eq!(
        batches.iter().sum::<u64>(),
        files.len() as u64,
        "{batches:?}"
    );
    assert!(batches.iter().any(|&n| n > 1), "{batches:?}");
}

/// With the database down, instances arriving together on several associations (one batch) are
/// all refused with A700 and none is acknowledged; nothing is left staged. Once it is back, the
/// senders' retries are all stored.
#[tokio::test(flavor = "multi_thread")]
async fn database_outage_refuses_a_whole_batch_and_acknowledges_nothing() {
    let pg = PrivatePg::start();
    let db = TestDb::create_on(&pg.admin_url()).await;
    let d = Daemon::start(&db.url, "");
    let files: Vec<PathBuf> = [
        "RG3_J2KI.dcm",
        "RG1_J2KI.dcm",
        "RG2_J2KI.dcm",
        "RG3_JLSN.dcm",
        "RG2_JLSN.dcm",
        "RG1_JLSN.dcm",
        "RG3_J2KR.dcm",
        "RG3_JLSL.dcm",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    pg.pg_stop();
    let acks = pynetdicom_send(&d, "PYNETDICOM", 4, &files);
    assert_eq!(acks.len(), files.len());
    for a in &acks {
        assert_eq!(a.status, 0xA700, "database down: never Success: {acks:?}");
        assert!(a.comment.contains("database"), "{acks:?}");
    }
    assert!(staged_files(&d.dir.join("spool")).is_empty());
    assert!(
        std::fs::read_dir(d.spool_objects())
            .unwrap()
            .next()
            .is_none(),
        "nothing published for refused instances"
    );

    pg.pg_start();
    let acks = pynetdicom_send(&d, "PYNETDICOM", 4, &files);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let pool = db.pool().await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM instances WHERE duplicate_count = 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, files.len() as i64);
    for f in &files {
        let key = stored_key(&pool, f, true).await;
        let stored = std::fs::read(d.spool_objects().join(key)).unwrap();
        assert!(dataset_bytes(&stored) == dataset_bytes(&std::fs::read(f).unwrap()));
    }
}

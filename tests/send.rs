//! Send stage tests: real SRs (built from real chest DICOM headers) delivered through the
//! PostgreSQL outbox to real peers on 127.0.0.1: DCMTK `storescp` (explicit and implicit-only,
//! down then up, answering a failure status, refusing the association, forking with a slow
//! store for concurrent senders) and Orthanc (a real PACS, checked through its REST API).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod orthanc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use cxr_worker::config::Destination;
use cxr_worker::dicom::ae::AeTitle;
use cxr_worker::report::sr::SR_SOP_CLASS_UID;
use cxr_worker::report::{
    AnalysedImage, BuiltReport, Completion, ImageRef, LabelResult, ModelInfo, ReportContent,
    ReportRequest, SourceStudy, build_sr, codes::LABELS,
};
use cxr_worker::send::outbox::{self, OutboxRow, OutboxSettings, RetryPolicy};
use cxr_worker::send::scu::{self, ScuOptions};
use dicom_dictionary_std::tags;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use common::{StoreScp, TestDb, reserve_port};
use orthanc::{ORTHANC_AET, Orthanc};

const CALLING: &str = "CXR_TEST";

// ---- a real SR --------------------------------------------------------------------------------

fn header(name: &str) -> InMemDicomObject {
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(common::fixture(name))
        .unwrap()
        .into_inner()
}

fn text_of(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// A findings SR for the RG1 chest CR header; `seed` varies the probabilities. Fresh UIDs.
fn real_sr(seed: u32) -> BuiltReport {
    let src = header("RG1_UNCR.dcm");
    let image = ImageRef {
        sop_class_uid: text_of(&src, tags::SOP_CLASS_UID),
        sop_instance_uid: text_of(&src, tags::SOP_INSTANCE_UID),
        series_instance_uid: text_of(&src, tags::SERIES_INSTANCE_UID),
    };
    let labels = LABELS
        .iter()
        .enumerate()
        .map(|(i, c)| LabelResult {
            label: c.label.to_string(),
            probability: ((i as u32 * 37 + seed * 11) % 100) as f32 / 99.0,
            threshold: 0.5,
        })
        .collect();
    let req = ReportRequest {
        study: SourceStudy::from_dataset(&src).unwrap(),
        model: ModelInfo {
            classifier_name: "anatomy-xnet".into(),
            classifier_version: "1.0.0".into(),
            segmenter_name: "anatomy-segmenter".into(),
            segmenter_version: "1.0.0".into(),
            trained: true,
            manufacturer: "cxr-worker project".into(),
            software_version: "0.1.0".into(),
        },
        content: ReportContent::Findings(vec![AnalysedImage {
            image,
            labels,
            cardiothoracic_ratio: Some(0.46),
            ..AnalysedImage::default()
        }]),
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
    };
    build_sr(&req).unwrap()
}

fn study_uid(sr: &BuiltReport) -> String {
    text_of(&sr.file, tags::STUDY_INSTANCE_UID)
}

fn encoded(obj: &InMemDicomObject, implicit: bool) -> Vec<u8> {
    let ts = if implicit {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, &ts).unwrap();
    out
}

/// The validation gate of issue 4 on a file as the peer stored it: dciodvfy prints no `Error`
/// line and does not crash; dsrdump prints no `E:`/`F:` line.
fn gate(path: &Path) {
    let out = Command::new("dciodvfy").arg(path).output().unwrap();
    let text = common::text(&out);
    assert!(
        out.status.code().is_some_and(|c| c < 128) && !text.lines().any(|l| l.starts_with("Error")),
        "dciodvfy {}:\n{text}",
        path.display()
    );
    let out = Command::new("dsrdump")
        .args(["-v", "+Pu"])
        .arg(path)
        .output()
        .unwrap();
    let text = common::text(&out);
    assert!(
        out.status.success()
            && !text
                .lines()
                .any(|l| l.starts_with("E:") || l.starts_with("F:")),
        "dsrdump {}:\n{text}",
        path.display()
    );
}

// ---- outbox harness ---------------------------------------------------------------------------

fn destination(name: &str, ae: &str, port: u16) -> Destination {
    Destination {
        name: name.into(),
        ae_title: AeTitle::parse(ae).unwrap(),
        host: "127.0.0.1".into(),
        port,
        calling_ae_title: AeTitle::parse(CALLING).unwrap(),
        tls: None,
        outputs: Default::default(),
    }
}

fn settings(
    dests: Vec<Destination>,
    base_ms: u64,
    max_ms: u64,
    max_attempts: u32,
) -> OutboxSettings {
    OutboxSettings {
        destinations: dests,
        scu: ScuOptions {
            connect_timeout: Duration::from_secs(3),
            dimse_timeout: Duration::from_secs(10),
            ..ScuOptions::default()
        },
        retry: RetryPolicy {
            base: Duration::from_millis(base_ms),
            max: Duration::from_millis(max_ms),
            max_attempts,
        },
        poll_interval: Duration::from_millis(100),
        max_concurrent_sends: 2,
        auditor: None,
    }
}

async fn migrated(db: &TestDb) -> PgPool {
    let pool = db.pool().await;
    cxr_worker::db::migrate(&pool).await.unwrap();
    pool
}

/// archive, then enqueue in a transaction, as the worker does.
async fn archive_and_enqueue(
    pool: &PgPool,
    archive: &Path,
    sr: &BuiltReport,
    dests: &[Destination],
) -> PathBuf {
    let path = outbox::archive(archive, sr).unwrap();
    let mut tx = pool.begin().await.unwrap();
    let n = outbox::enqueue(&mut tx, sr, &path, dests).await.unwrap();
    assert_eq!(n, dests.len() as u64);
    tx.commit().await.unwrap();
    path
}

struct Sender {
    token: CancellationToken,
    handle: JoinHandle<()>,
}

fn spawn_sender(pool: &PgPool, settings: &OutboxSettings) -> Sender {
    let token = CancellationToken::new();
    let handle = tokio::spawn(outbox::run(
        pool.clone(),
        Arc::new(settings.clone()),
        token.clone(),
    ));
    Sender { token, handle }
}

impl Sender {
    async fn stop(self) {
        self.token.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the sender stops on shutdown")
            .unwrap();
    }
}

async fn rows(pool: &PgPool, study: &str) -> Vec<OutboxRow> {
    outbox::rows_for_study(pool, study).await.unwrap()
}

/// Poll the study's rows until `done` holds.
async fn wait_rows(
    pool: &PgPool,
    study: &str,
    limit: Duration,
    done: impl Fn(&[OutboxRow]) -> bool,
) -> Vec<OutboxRow> {
    let deadline = Instant::now() + limit;
    loop {
        let r = rows(pool, study).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out; rows: {r:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, sqlx::FromRow)]
struct Attempt {
    attempt: i32,
    lease_owner: String,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: chrono::DateTime<chrono::Utc>,
    outcome: String,
    status: Option<i32>,
    error: Option<String>,
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn attempts(pool: &PgPool, outbox_id: i64) -> Vec<Attempt> {
    sqlx::query_as(
        "SELECT attempt, lease_owner, started_at, finished_at, outcome, status, error, retry_at \
         FROM outbox_attempts WHERE outbox_id = $1 ORDER BY id",
    )
    .bind(outbox_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

// ---- tests ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sr_reaches_storescp_intact_through_the_outbox() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    let scp = StoreScp::start_on(
        reserved,
        &dir.path().join("in"),
        &["-aet", "STORESCP", "+B"],
    );
    let dests = [destination("storescp", "STORESCP", port)];
    let sr = real_sr(1);
    let study = study_uid(&sr);
    let archived = archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;

    // archived durably where documented, byte-identical to the built SR
    assert_eq!(
        archived,
        dir.path()
            .join("archive")
            .join(&study)
            .join(format!("{}.dcm", sr.sop_instance_uid))
    );
    let mut expected_file = Vec::new();
    sr.file.write_all(&mut expected_file).unwrap();
    assert_eq!(std::fs::read(&archived).unwrap(), expected_file);

    // enqueueing the same SR again is a no-op
    let mut tx = pool.begin().await.unwrap();
    let again = outbox::enqueue(&mut tx, &sr, &archived, &dests)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again, 0);

    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 200, 1000, 0));
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r.iter().all(|x| x.state == "sent")
    })
    .await;
    sender.stop().await;

    assert_eq!(r.len(), 1);
    let row = &r[0];
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_status, Some(0));
    assert_eq!(row.last_error, None);
    assert_eq!(
        row.transfer_syntax_uid.as_deref(),
        Some("1.2.840.10008.1.2.1")
    );
    assert!(row.sent_at.is_some() && row.lease_owner.is_none());
    let a = attempts(&pool, row.id).await;
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].outcome, "sent");

    // storescp wrote exactly what it received (+B): the data set bytes must be ours
    let files = scp.files();
    assert_eq!(files.len(), 1, "{files:?}\n{}", scp.log());
    let received = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        common::dataset_bytes(&received),
        &encoded(&sr.file, false)[..],
        "the SR arrived altered"
    );
    gate(&files[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_only_peer_receives_a_re_encoded_sr() {
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    // +xi: accept Implicit VR Little Endian only
    let scp = StoreScp::start_on(reserved, &dir.path().join("in"), &["+xi", "+B"]);
    let sr = real_sr(2);
    let delivered = scu::store(
        &destination("implicit", "ANY", port),
        &sr.file,
        &ScuOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(delivered.status, 0);
    assert!(!delivered.is_warning());
    assert_eq!(delivered.transfer_syntax_uid, "1.2.840.10008.1.2");
    let files = scp.files();
    assert_eq!(files.len(), 1, "{}", scp.log());
    let received = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        common::dataset_bytes(&received),
        &encoded(&sr.file, true)[..]
    );
    let back: FileDicomObject<InMemDicomObject> =
        OpenFileOptions::new().open_file(&files[0]).unwrap();
    assert_eq!(back.meta().transfer_syntax(), "1.2.840.10008.1.2");
    // the same content as the explicit original, element by element
    assert_eq!(encoded(&back, false), encoded(&sr.file, false));
    gate(&files[0]);

    // store_bytes: the same path from Part 10 bytes
    let mut bytes = Vec::new();
    sr.file.write_all(&mut bytes).unwrap();
    let d = scu::store_bytes(
        &destination("implicit", "ANY", port),
        &bytes,
        &ScuOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(d.status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_down_then_up_gets_exactly_one_sr_after_backoff() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port(); // nothing listens yet: held, connections are refused
    let port = reserved.port();
    let dests = [destination("late", "STORESCP", port)];
    let sr = real_sr(3);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    let s = settings(dests.to_vec(), 300, 1200, 0);
    let sender = spawn_sender(&pool, &s);

    // attempts is counted when a row is claimed: wait until the attempt is recorded too
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].attempts >= 3 && r[0].state == "queued"
    })
    .await;
    assert_eq!(r[0].state, "queued");
    assert_eq!(r[0].last_status, None);
    let err = r[0].last_error.clone().unwrap();
    assert!(err.contains("cannot connect to 127.0.0.1:"), "{err}");

    let scp = StoreScp::start_on(reserved, &dir.path().join("in"), &["+B"]);
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].state == "sent"
    })
    .await;
    // a little longer: nothing more may arrive
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender.stop().await;
    assert_eq!(scp.files().len(), 1, "{}", scp.log());

    // every attempt is recorded; each retry waited its backoff (±25 % jitter)
    let a = attempts(&pool, r[0].id).await;
    assert_eq!(a.len() as i32, r[0].attempts, "{a:#?}");
    assert_eq!(a.last().unwrap().outcome, "sent");
    for (i, pair) in a.windows(2).enumerate() {
        let (prev, next) = (&pair[0], &pair[1]);
        assert_eq!(prev.outcome, "retry");
        assert_eq!(prev.attempt as usize, i + 1);
        let nominal = s.retry.delay(prev.attempt as u32, 0.5).as_secs_f64();
        let planned = (prev.retry_at.unwrap() - prev.finished_at).as_seconds_f64();
        assert!(
            planned >= nominal * 0.74 && planned <= (nominal * 1.26).min(1.2) + 0.01,
            "attempt {}: planned {planned}s, nominal {nominal}s",
            prev.attempt
        );
        let waited = (next.started_at - prev.finished_at).as_seconds_f64();
        assert!(
            waited >= planned - 0.05,
            "attempt {}: waited {waited}s < {planned}s",
            next.attempt
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_status_is_retried_then_failed_then_requeued_and_sent() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    let inbox = dir.path().join("in");
    let scp = StoreScp::start_on(reserved, &inbox, &["+B"]);
    // storescp answers A700 (out of resources) when it cannot write the file
    std::fs::remove_dir(&inbox).unwrap();
    let dests = [destination("full", "STORESCP", port)];
    let sr = real_sr(4);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 200, 400, 3));

    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].state == "failed"
    })
    .await;
    let row = &r[0];
    assert_eq!(row.attempts, 3);
    assert_eq!(row.last_status, Some(0xA700));
    let err = row.last_error.clone().unwrap();
    assert!(
        err.contains("0xA700") && err.contains("gave up after 3 attempts"),
        "{err}"
    );
    let a = attempts(&pool, row.id).await;
    let outcomes: Vec<&str> = a.iter().map(|x| x.outcome.as_str()).collect();
    assert_eq!(outcomes, ["retry", "retry", "failed"]);
    assert!(a.iter().all(|x| x.status == Some(0xA700)));
    assert!(
        a.iter()
            .all(|x| x.error.as_deref().is_some_and(|e| e.contains("0xA700")))
    );

    // failed stays failed: nothing more is attempted
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(rows(&pool, &study).await[0].attempts, 3);

    // the admin fixes the peer and requeues
    std::fs::create_dir(&inbox).unwrap();
    assert_eq!(outbox::requeue(&pool, &study).await.unwrap(), 1);
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].state == "sent"
    })
    .await;
    sender.stop().await;
    assert_eq!(r[0].attempts, 1);
    assert_eq!(r[0].requeued_count, 1);
    assert_eq!(r[0].last_status, Some(0));
    assert_eq!(attempts(&pool, r[0].id).await.len(), 4);
    assert_eq!(scp.files().len(), 1, "{}", scp.log());
    assert_eq!(
        outbox::requeue(&pool, &study).await.unwrap(),
        0,
        "sent rows are not requeued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejection_fails_at_once_and_a_removed_destination_fails() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    let _scp = StoreScp::start_on(reserved, &dir.path().join("in"), &["--refuse"]);
    let gone = reserve_port(); // held to the end: nothing ever listens there
    let dests = [
        destination("refuser", "STORESCP", port),
        destination("gone", "GONE", gone.port()),
    ];
    let sr = real_sr(5);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    // the sender knows only the first destination: "gone" was removed from the config
    let sender = spawn_sender(&pool, &settings(dests[..1].to_vec(), 200, 400, 0));
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r.iter().all(|x| x.state == "failed")
    })
    .await;
    sender.stop().await;
    let refused = r.iter().find(|x| x.destination_name == "refuser").unwrap();
    assert_eq!(refused.attempts, 1);
    let err = refused.last_error.clone().unwrap();
    assert!(
        err.contains("association rejected (permanent)") && err.contains("not retryable"),
        "{err}"
    );
    let gone = r.iter().find(|x| x.destination_name == "gone").unwrap();
    assert!(
        gone.last_error
            .clone()
            .unwrap()
            .contains("no longer configured")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_taken_over_and_a_live_lease_is_respected() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    let scp = StoreScp::start_on(reserved, &dir.path().join("in"), &["+B"]);
    let dests = [destination("storescp", "STORESCP", port)];
    let crashed = real_sr(6);
    let alive = real_sr(7);
    for sr in [&crashed, &alive] {
        archive_and_enqueue(&pool, &dir.path().join("archive"), sr, &dests).await;
    }
    // a sender crashed while holding `crashed`; another one is busy with `alive`
    for (sr, owner, expires) in [
        (&crashed, "crashed", "-1 second"),
        (&alive, "busy", "1 hour"),
    ] {
        sqlx::query(
            "UPDATE outbox SET state = 'sending', lease_owner = $2, attempts = 1, \
             lease_expires_at = now() + $3::interval WHERE sop_instance_uid = $1",
        )
        .bind(&sr.sop_instance_uid)
        .bind(owner)
        .bind(expires)
        .execute(&pool)
        .await
        .unwrap();
    }
    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 200, 400, 0));
    let study = study_uid(&crashed);
    wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r.iter()
            .any(|x| x.sop_instance_uid == crashed.sop_instance_uid && x.state == "sent")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender.stop().await;
    let r = rows(&pool, &study).await;
    let c = r
        .iter()
        .find(|x| x.sop_instance_uid == crashed.sop_instance_uid)
        .unwrap();
    assert_eq!(c.attempts, 2);
    let a = attempts(&pool, c.id).await;
    assert_eq!(a.len(), 1);
    assert_ne!(a[0].lease_owner, "crashed");
    let b = r
        .iter()
        .find(|x| x.sop_instance_uid == alive.sop_instance_uid)
        .unwrap();
    assert_eq!(
        (b.state.as_str(), b.lease_owner.as_deref()),
        ("sending", Some("busy"))
    );
    assert_eq!(scp.files().len(), 1, "{}", scp.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_senders_on_one_database_never_send_a_row_twice() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    // a child per association, each store takes a second: sends overlap; +uf keeps duplicates
    let scp = StoreScp::start_on(
        reserved,
        &dir.path().join("in"),
        &["--fork", "--sleep-during", "1", "+uf"],
    );
    let dests = [destination("storescp", "STORESCP", port)];
    let mut sops = Vec::new();
    let mut study = String::new();
    for seed in 10..18 {
        let sr = real_sr(seed);
        study = study_uid(&sr);
        archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
        sops.push(sr.sop_instance_uid.clone());
    }
    let s = settings(dests.to_vec(), 200, 400, 0);
    // two "processes": separate pools, separate loops
    let pool2 = db.pool().await;
    let a = spawn_sender(&pool, &s);
    let b = spawn_sender(&pool2, &s);
    let r = wait_rows(&pool, &study, Duration::from_secs(60), |r| {
        r.len() == 8 && r.iter().all(|x| x.state == "sent")
    })
    .await;
    a.stop().await;
    b.stop().await;
    assert!(r.iter().all(|x| x.attempts == 1), "{r:#?}");
    let all: Vec<Attempt> = sqlx::query_as(
        "SELECT attempt, lease_owner, started_at, finished_at, outcome, status, error, retry_at \
         FROM outbox_attempts ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(all.len(), 8);
    let owners: std::collections::BTreeSet<&str> =
        all.iter().map(|x| x.lease_owner.as_str()).collect();
    assert_eq!(owners.len(), 2, "both senders took part: {owners:?}");

    let files = scp.files();
    assert_eq!(files.len(), 8, "{files:?}");
    let mut received: Vec<String> = files
        .iter()
        .map(|f| {
            let o = OpenFileOptions::new().open_file(f).unwrap();
            text_of(&o, tags::SOP_INSTANCE_UID)
        })
        .collect();
    received.sort();
    sops.sort();
    assert_eq!(received, sops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_down_then_up_stores_exactly_one_intact_sr() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port(); // Orthanc is not running yet: held, connections are refused
    let port = reserved.port();
    let dests = [destination("orthanc", ORTHANC_AET, port)];
    let sr = real_sr(20);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 300, 1000, 0));
    wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].attempts >= 2
    })
    .await;

    let pacs = Orthanc::start(reserved, CALLING);
    let r = wait_rows(&pool, &study, Duration::from_secs(30), |r| {
        r[0].state == "sent"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender.stop().await;
    assert_eq!(r[0].last_status, Some(0));

    let instances = pacs.get("/instances");
    let ids = instances.as_array().unwrap();
    assert_eq!(ids.len(), 1, "exactly one SR: {instances}");
    assert_eq!(pacs.get("/statistics")["CountInstances"], 1);
    let id = ids[0].as_str().unwrap();
    let t = pacs.get(&format!("/instances/{id}/simplified-tags"));
    assert_eq!(t["SOPClassUID"], SR_SOP_CLASS_UID);
    assert_eq!(t["SOPInstanceUID"], sr.sop_instance_uid.as_str());
    assert_eq!(t["StudyInstanceUID"], study.as_str());
    assert_eq!(t["Modality"], "SR");
    assert_eq!(t["VerificationFlag"], "UNVERIFIED");
    assert_eq!(
        t["ConceptNameCodeSequence"][0]["CodeValue"], "126000",
        "TID 1500 root: {t}"
    );
    // the stored file, as Orthanc serves it, holds our data set and passes the gate
    let stored = dir.path().join("from-orthanc.dcm");
    std::fs::write(&stored, pacs.get_bytes(&format!("/instances/{id}/file"))).unwrap();
    let back: FileDicomObject<InMemDicomObject> =
        OpenFileOptions::new().open_file(&stored).unwrap();
    assert_eq!(
        encoded(&back, false),
        encoded(&sr.file, false),
        "the SR arrived altered"
    );
    gate(&stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orthanc_refuses_an_unknown_calling_ae_and_the_row_fails_visibly() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port();
    let port = reserved.port();
    let pacs = Orthanc::start(reserved, "SOMEONE_ELSE");
    let dests = [destination("orthanc", ORTHANC_AET, port)];
    let sr = real_sr(21);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 200, 400, 0));
    let r = wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].state == "failed"
    })
    .await;
    sender.stop().await;
    let err = r[0].last_error.clone().unwrap();
    assert!(err.contains("association rejected (permanent)"), "{err}");
    assert_eq!(pacs.get("/instances").as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_rides_out_a_database_outage() {
    let pg = common::PrivatePg::start();
    let db = TestDb::create_on(&pg.admin_url()).await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let reserved = reserve_port(); // the destination is down too, at first: held
    let port = reserved.port();
    let dests = [destination("storescp", "STORESCP", port)];
    let sr = real_sr(30);
    let study = study_uid(&sr);
    archive_and_enqueue(&pool, &dir.path().join("archive"), &sr, &dests).await;
    let sender = spawn_sender(&pool, &settings(dests.to_vec(), 200, 400, 0));
    wait_rows(&pool, &study, Duration::from_secs(20), |r| {
        r[0].attempts >= 1 && r[0].state == "queued"
    })
    .await;

    pg.pg_stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !sender.handle.is_finished(),
        "the sender must survive the outage"
    );
    let scp = StoreScp::start_on(reserved, &dir.path().join("in"), &["+B"]);
    pg.pg_start();

    let r = wait_rows(&pool, &study, Duration::from_secs(60), |r| {
        r[0].state == "sent"
    })
    .await;
    sender.stop().await;
    assert_eq!(r[0].last_status, Some(0));
    assert_eq!(scp.files().len(), 1, "{}", scp.log());
}

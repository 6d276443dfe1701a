//! Disk watermark and retention: above `[spool] max_used_percent` new associations get a
//! transient rejection (and a reload that raises it opens the door again); with
//! `retention_days` set, a study's spooled instances are removed once its report was delivered
//! and the time has passed, and never before.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use sqlx::PgPool;

/// `write_config_with`, plus `spool` lines in the `[spool]` section (a `max_used_percent` there
/// replaces the tests' 100).
fn write_config_spool(dir: &Path, db_url: &str, spool: &str, sections: &str) -> PathBuf {
    let path = write_config_with(dir, db_url, "", sections);
    let text = std::fs::read_to_string(&path).unwrap();
    let patched = if spool.contains("max_used_percent") {
        text.replacen("max_used_percent = 100", spool, 1)
    } else {
        text.replacen("dir = \"spool\"", &format!("dir = \"spool\"\n{spool}"), 1)
    };
    assert_ne!(text, patched);
    std::fs::write(&path, patched).unwrap();
    path
}

fn metrics(d: &Daemon) -> BTreeMap<String, f64> {
    let (code, body) = http_get(d.http_addr(), "/metrics");
    assert_eq!(code, 200);
    parse_metrics(&body)
}

#[tokio::test(flavor = "multi_thread")]
async fn above_the_watermark_associations_are_refused_until_it_is_raised() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let used = cxr_worker::ingest::diskspace::usage(&dir)
        .unwrap()
        .used_percent();
    assert!(used > 0.0001, "the test's file system is empty: {used}%");
    let config = write_config_spool(
        &dir,
        &db.url,
        &format!("max_used_percent = {}", used / 2.0),
        "[study]\nworkers = 0\n",
    );
    let d = Daemon::start_with(dir, config.clone());

    let echo = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(!echo.status.success());
    let out = text(&echo).to_lowercase();
    assert!(
        out.contains("rejected transient") && out.contains("congestion"),
        "{out}"
    );
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("RG1_UNCR.dcm")]);
    assert_eq!(acks[0].status, -1, "stored above the watermark: {acks:?}");
    let m = metrics(&d);
    assert!(m["cxr_associations_rejected_total{reason=\"disk_space\"}"] >= 1.0);
    assert_eq!(m["cxr_spool_above_watermark"], 1.0);
    let (code, body) = http_get(d.http_addr(), "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("watermark"), "{body}");
    assert!(d.log_text().contains("above its watermark"));

    // raise it and reload: the next association is accepted and stores
    let text_now = std::fs::read_to_string(&config).unwrap();
    let raised = text_now
        .lines()
        .map(|l| {
            if l.starts_with("max_used_percent") {
                "max_used_percent = 100".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&config, raised).unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    let line = d.wait_log("configuration reloaded", mark, Duration::from_secs(10));
    assert!(line.contains("spool.max_used_percent"), "{line}");
    let echo = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(echo.status.success(), "{}", text(&echo));
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("RG1_UNCR.dcm")]);
    assert_eq!(acks[0].status, 0, "{acks:?}");
    assert_eq!(metrics(&d)["cxr_spool_above_watermark"], 0.0);
    let (code, body) = http_get(d.http_addr(), "/readyz");
    assert_eq!(code, 200, "{body}");
}

async fn wait_until(pool: &PgPool, sql: &str, uid: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(uid)
            .fetch_one(pool)
            .await
            .unwrap();
        if done {
            return;
        }
        if Instant::now() >= deadline {
            let rows: Vec<(String, String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT study_instance_uid, kind, state, attempts, last_error FROM outbox ORDER BY id",
            )
            .fetch_all(pool)
            .await
            .unwrap();
            panic!("{sql} ({uid}) after {within:?}; the outbox: {rows:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The study, spool key and purge time of the instance with this SOP Instance UID.
async fn instance(pool: &PgPool, study: &str) -> (String, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("SELECT spool_key, purged_at FROM instances WHERE study_instance_uid = $1")
        .bind(study)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn study_of(pool: &PgPool, n: i64) -> String {
    sqlx::query_scalar(
        "SELECT study_instance_uid FROM instances ORDER BY received_at OFFSET $1 LIMIT 1",
    )
    .bind(n)
    .fetch_one(pool)
    .await
    .unwrap()
}

const DELIVERED: &str =
    "SELECT EXISTS (SELECT 1 FROM outbox WHERE study_instance_uid = $1 AND state = 'sent')";
const RETRYING: &str = "SELECT EXISTS (SELECT 1 FROM outbox WHERE study_instance_uid = $1 AND state = 'queued' AND attempts >= 1)";
const ALL_SENT: &str = "SELECT bool_and(state = 'sent') FROM outbox WHERE study_instance_uid = $1";
const OUTPUTS_PURGED: &str = "SELECT count(*) = 2 AND bool_and(purged_at IS NOT NULL) \
     FROM image_outputs WHERE study_instance_uid = $1";
const PURGED: &str =
    "SELECT bool_and(purged_at IS NOT NULL) FROM instances WHERE study_instance_uid = $1";

#[tokio::test(flavor = "multi_thread")]
async fn retention_removes_delivered_studies_only() {
    let db = TestDb::create().await;
    let mut pacs = Some(StoreScp::start());
    let (pacs_port, pacs_dir) = pacs.as_ref().map(|p| (p.port, p.dir.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "[study]\nquiet_period_secs = 1\nworkers = 1\npoll_interval_secs = 0.2\n\
         [report]\nretry_base_secs = 0.5\nretry_max_secs = 1\n\
         [[destinations]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {}\n",
        pacs_port
    );
    // about 2.6 s after delivery; looked at twice a second
    let config = write_config_spool(
        &dir,
        &db.url,
        "retention_days = 0.00003\nretention_interval_secs = 0.5",
        &sections,
    );
    let d = Daemon::start_with(dir, config);
    let pool = db.pool().await;

    // study A is delivered
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("RG1_UNCR.dcm")]);
    assert_eq!(acks[0].status, 0);
    let a = study_of(&pool, 0).await;
    // all of A: its SR, SEG and SC
    wait_until(&pool, DELIVERED, &a, Duration::from_secs(120)).await;
    wait_until(&pool, ALL_SENT, &a, Duration::from_secs(60)).await;

    // study B is analysed and reported, but the PACS is down: not delivered
    let down = pacs.take().unwrap().stop(); // the PACS goes down; its port stays held
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("966_fixed.dcm")]);
    assert_eq!(acks[0].status, 0);
    let b = study_of(&pool, 1).await;
    assert_ne!(a, b);
    wait_until(&pool, RETRYING, &b, Duration::from_secs(120)).await;

    // A's file goes once the retention time has passed; B's stays
    wait_until(&pool, PURGED, &a, Duration::from_secs(30)).await;
    let (a_key, a_purged) = instance(&pool, &a).await;
    assert!(a_purged.is_some());
    assert!(
        !d.spool_objects().join(&a_key).exists(),
        "{a_key} still in the spool"
    );
    let (b_key, _) = instance(&pool, &b).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // past B's retention time, were it delivered
    let (_, b_purged) = instance(&pool, &b).await;
    assert_eq!(b_purged, None, "an undelivered study was purged");
    assert!(d.spool_objects().join(&b_key).exists());
    let m = metrics(&d);
    assert_eq!(m["cxr_spool_purged_instances_total"], 1.0);
    assert_eq!(m["cxr_spool_instances"], 1.0);
    assert!(m["cxr_spool_purged_bytes_total"] > 0.0);
    // the archived SR of A is kept
    let archive: String =
        sqlx::query_scalar("SELECT archive_path FROM reports WHERE study_instance_uid = $1")
            .bind(&a)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(Path::new(&archive).exists());
    // A's SEG and SC, delivered, leave the archive too (their rows stay, marked); B's stay
    wait_until(&pool, OUTPUTS_PURGED, &a, Duration::from_secs(30)).await;
    let outputs: Vec<(String, String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT study_instance_uid, archive_path, purged_at FROM image_outputs ORDER BY id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outputs.len(), 4, "{outputs:?}");
    for (study, path, purged) in &outputs {
        if *study == a {
            assert!(purged.is_some() && !Path::new(path).exists(), "{path}");
        } else {
            assert!(purged.is_none() && Path::new(path).exists(), "{path}");
        }
    }

    // the PACS comes back: B is delivered, then removed in its turn
    pacs = Some(StoreScp::start_on(
        down,
        &pacs_dir,
        &["-aet", "PACS", "+xa", "-uf"],
    ));
    wait_until(&pool, ALL_SENT, &b, Duration::from_secs(60)).await;
    wait_until(&pool, PURGED, &b, Duration::from_secs(30)).await;
    assert!(!d.spool_objects().join(&b_key).exists());
    assert!(d.log_text().contains("retention: removed"));
    // each study's SR, SEG and SC
    assert_eq!(pacs.as_ref().unwrap().files().len(), 6);

    // A is sent again after retention removed its file: not acknowledged and dropped as a
    // duplicate, but stored again, analysed again, and reported again (a revised SR)
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("RG1_UNCR.dcm")]);
    assert_eq!(acks[0].status, 0);
    let (key, purged) = instance(&pool, &a).await;
    assert_eq!(purged, None, "the re-sent instance is on disk again");
    assert_eq!(key, a_key);
    assert!(d.spool_objects().join(&key).exists());
    wait_until(
        &pool,
        "SELECT count(*) >= 2 FROM reports r JOIN outbox o ON o.sop_instance_uid = r.sr_sop_instance_uid \
         WHERE r.study_instance_uid = $1 AND o.state = 'sent'",
        &a,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(metrics(&d)["cxr_instances_restored_total"], 1.0);
    // the revised SR and the new SEG and SC of the image analysed again
    wait_until(
        &pool,
        "SELECT count(*) = 9 AND bool_and(state = 'sent') FROM outbox WHERE $1::text IS NOT NULL",
        &a,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(pacs.unwrap().files().len(), 9);
}

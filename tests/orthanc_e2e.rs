//! End to end with a real PACS: Orthanc (Debian `orthanc`) holds real chest studies and PUSHES
//! them to cxr-worker (`POST /modalities/cxr/store`); cxr-worker (the real daemon, tiny conforming
//! models) analyses them and sends the SR back to Orthanc, where it is fetched through the REST
//! API and put through the gate (dciodvfy, dsrdump, highdicom read-back) and compared with the
//! database. Also: Orthanc down while the SR is due (exactly one SR once it is back), the daemon
//! killed with SIGKILL in the middle of a job (one SR per study after the restart), a late image
//! (a revised SR naming its predecessor) and a non-chest study (a "not analysed" SR with why).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod gate;
mod orthanc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use cxr_worker::analyse::analyser::display_size;
use cxr_worker::analyse::overlay::image_rect;
use gate::{dicom_field, image_outputs, validate, validate_image};
use orthanc::{Orthanc, daemon_config};
use serde_json::Value;
use sqlx::PgPool;

/// Orthanc and cxr-worker, each registered with the other.
/// Fields drop in order: the daemon and Orthanc stop before the database is dropped.
struct Site {
    daemon: Daemon,
    pacs: Orthanc,
    pool: PgPool,
    _db: TestDb,
}

impl Site {
    /// Orthanc receives the SRs only.
    async fn start(study: &str) -> Self {
        Self::start_with(study, "", "outputs = [\"sr\"]").await
    }

    /// With `dicom_extra` lines in the daemon's `[dicom]` section and `destination` lines in
    /// Orthanc's `[[destinations]]` entry (`""`: the default outputs, SR, SEG and SC).
    async fn start_with(study: &str, dicom_extra: &str, destination: &str) -> Self {
        let db = TestDb::create().await;
        let pool = db.pool().await;
        let orthanc = reserve_port(); // held until Orthanc starts on it
        let orthanc_port = orthanc.port();
        let dir = tempfile::tempdir().unwrap().keep();
        let config = daemon_config(
            &dir,
            &db.url,
            orthanc_port,
            (study, dicom_extra, destination),
        );
        let daemon = Daemon::start_with(dir, config);
        let pacs = Orthanc::start_with_peer(orthanc, AE, daemon.addr.port());
        Self {
            daemon,
            pacs,
            pool,
            _db: db,
        }
    }

    /// Upload fixtures to Orthanc; returns (Orthanc instance ID, Orthanc study ID) per file.
    fn upload(&self, files: &[&Path]) -> Vec<(String, String)> {
        files
            .iter()
            .map(|f| {
                let v = self.pacs.upload(f);
                (
                    v["ID"].as_str().unwrap().to_string(),
                    v["ParentStudy"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Wait until Orthanc holds at least `want` SRs in the study; returns them, downloaded
    /// (`/instances/ID/file`) into a temporary folder, with their simplified tags.
    fn wait_srs(&self, study_id: &str, want: usize, within: Duration) -> Vec<(PathBuf, Value)> {
        self.wait_instances(study_id, "SR", want, within)
    }

    /// [`Self::wait_srs`] for instances of any modality (`SEG`, `OT` for our SC).
    fn wait_instances(
        &self,
        study_id: &str,
        modality: &str,
        want: usize,
        within: Duration,
    ) -> Vec<(PathBuf, Value)> {
        let deadline = Instant::now() + within;
        loop {
            let srs = self.pacs.instances_of_study(study_id, modality);
            if srs.len() >= want {
                return srs.into_iter().map(|t| (self.download(&t), t)).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{} {modality} instance(s) in Orthanc study {study_id} after {within:?}, want {want}\ndaemon log:\n{}",
                srs.len(),
                self.daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn download(&self, tags: &Value) -> PathBuf {
        let id = tags["ID"].as_str().unwrap();
        let bytes = self.pacs.get_bytes(&format!("/instances/{id}/file"));
        let path = self.pacs.dir.join(format!("{id}.dcm"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    async fn count(&self, sql: &'static str, study: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(study)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// Delivery attempts of a study's SRs with this outcome (`sent`, `retry`, `failed`).
async fn attempts(pool: &PgPool, study: &str, outcome: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id
         WHERE o.study_instance_uid = $1 AND a.outcome = $2",
    )
    .bind(study)
    .bind(outcome)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The SR's findings are the database's findings for `sop`, label by label.
async fn assert_findings_match(pool: &PgPool, sr: &Value, sop: &str) {
    let rows: Vec<(String, f32, bool)> = sqlx::query_as(
        "SELECT label, probability, present FROM findings WHERE sop_instance_uid = $1
         ORDER BY label_index",
    )
    .bind(sop)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 14, "findings of {sop}");
    let found: Vec<&Value> = sr["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["image"] == sop)
        .collect();
    assert_eq!(found.len(), 14, "{sr}");
    for (label, p, present) in &rows {
        let coding = cxr_worker::report::codes::coding_for_label(label).unwrap();
        let f = found
            .iter()
            .find(|f| f["code"] == coding.finding.value && f["scheme"] == coding.finding.scheme)
            .unwrap_or_else(|| panic!("{label} not in the SR"));
        assert!(
            (f["probability"].as_f64().unwrap() - *p as f64).abs() < 1e-5,
            "{label}: SR {} vs database {p}",
            f["probability"]
        );
        assert_eq!(f["present"].as_bool().unwrap(), *present, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_pushes_studies_and_stores_validated_srs_then_a_revision() {
    // Orthanc takes every output: the SR, the SEG and the SC
    let site = Site::start_with("quiet_period_secs = 1", "", "").await;
    let chest = fixture("RG1_UNCR.dcm"); // chest CR PA
    let dx = fixture("966_fixed.dcm"); // chest DX PA (JPEG 2000), another study
    let knee = fixture("RG3_UNCR.dcm"); // extremity CR: not chest
    let uploaded = site.upload(&[&chest, &dx, &knee]);
    let studies: Vec<&str> = uploaded.iter().map(|(_, s)| s.as_str()).collect();
    site.pacs.push(&studies);

    // each study gets exactly one SR, which passes the gate; Orthanc files it under the same
    // study (its study ID hashes PatientID and StudyInstanceUID: both were copied)
    let mut received = Vec::new();
    for ((_, study_id), file) in uploaded.iter().zip([&chest, &dx, &knee]) {
        let srs = site.wait_srs(study_id, 1, Duration::from_secs(180));
        assert_eq!(srs.len(), 1, "{}", file.display());
        let (path, tags) = &srs[0];
        assert_eq!(tags["SOPClassUID"], "1.2.840.10008.5.1.4.1.1.88.34");
        assert_eq!(tags["StudyInstanceUID"], dicom_field(file, "0020,000d"));
        assert_eq!(tags["PatientID"], dicom_field(file, "0010,0020"));
        assert_eq!(tags["VerificationFlag"], "UNVERIFIED");
        received.push((validate(path), tags.clone()));
    }

    for (file, (sr, _)) in [&chest, &dx].into_iter().zip(&received) {
        let sop = dicom_field(file, "0008,0018");
        assert_eq!(sr["evidence"], serde_json::json!([sop]));
        assert_eq!(sr["predecessor"], serde_json::json!([]));
        assert_findings_match(&site.pool, sr, &sop).await;
    }

    // each analysed image's SEG and SC, filed by Orthanc under the same study, referencing the
    // image; the SR references exactly them; Orthanc's rendered preview of the SC shows colour
    // inside the lung fields (the SEG's, mapped into the picture) and text in the banner
    for (((_, study_id), file), (sr, _)) in uploaded.iter().zip([&chest, &dx]).zip(&received) {
        let sop = dicom_field(file, "0008,0018");
        let segs = site.wait_instances(study_id, "SEG", 1, Duration::from_secs(60));
        let scs = site.wait_instances(study_id, "OT", 1, Duration::from_secs(60));
        assert_eq!((segs.len(), scs.len()), (1, 1), "{}", file.display());
        let ((seg_path, _), (sc_path, sc_tags)) = (&segs[0], &scs[0]);
        validate_image(seg_path);
        validate_image(sc_path);
        let read = image_outputs(&[seg_path.clone(), sc_path.clone()], None);
        assert!(
            read.iter().all(|o| o["sources"] == serde_json::json!([sop])
                && o["study_instance_uid"] == dicom_field(file, "0020,000d").as_str()),
            "{read:#?}"
        );
        let mut made: Vec<&str> = read
            .iter()
            .map(|o| o["sop_instance_uid"].as_str().unwrap())
            .collect();
        made.sort();
        assert_eq!(sr["other_evidence"], serde_json::json!(made));
        let preview = site.pacs.dir.join(format!("{sop}.preview.png"));
        let png = site.pacs.get_bytes(&format!(
            "/instances/{}/preview",
            sc_tags["ID"].as_str().unwrap()
        ));
        std::fs::write(&preview, png).unwrap();
        let header = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .open_file(file)
            .unwrap();
        let size = |tag| header.element(tag).unwrap().to_int::<usize>().unwrap();
        let (w, h) = display_size(
            size(dicom_dictionary_std::tags::ROWS),
            size(dicom_dictionary_std::tags::COLUMNS),
        );
        let r = image_rect(w, h, false);
        let out = run(
            python().to_str().unwrap(),
            &[
                root()
                    .join("tests/python/check_preview.py")
                    .to_str()
                    .unwrap(),
                preview.to_str().unwrap(),
                seg_path.to_str().unwrap(),
                &r.left.to_string(),
                &r.top.to_string(),
                &r.width.to_string(),
                &r.height.to_string(),
            ],
        );
        assert!(out.status.success(), "check_preview.py: {}", text(&out));
        let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("preview of {}: {stats}", file.display());
        assert_eq!(
            stats["size"],
            serde_json::json!([
                sc_tags["Columns"].as_str().unwrap().parse::<u64>().unwrap(),
                sc_tags["Rows"].as_str().unwrap().parse::<u64>().unwrap()
            ])
        );
        assert!(stats["lung_pixels"].as_u64().unwrap() > 1000, "{stats}");
        assert!(
            stats["lung_coloured_fraction"].as_f64().unwrap() > 0.9,
            "{stats}"
        );
        assert!(
            stats["banner_bright_pixels"].as_u64().unwrap() > 500,
            "{stats}"
        );
        if let Some(keep) = std::env::var_os("CXR_PREVIEW_KEEP_DIR") {
            std::fs::create_dir_all(&keep).unwrap();
            std::fs::copy(
                &preview,
                Path::new(&keep).join(preview.file_name().unwrap()),
            )
            .unwrap();
            std::fs::copy(seg_path, Path::new(&keep).join(format!("{sop}.seg.dcm"))).unwrap();
        }
    }

    // the non-chest study: a report that says it was not analysed, and why
    let (knee_sr, _) = &received[2];
    assert_eq!(knee_sr["findings"], serde_json::json!([]), "{knee_sr}");
    let texts: Vec<&str> = knee_sr["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let knee_study = dicom_field(&knee, "0020,000d");
    let (kind, reason): (String, Option<String>) =
        sqlx::query_as("SELECT kind, reason FROM reports WHERE study_instance_uid = $1")
            .bind(&knee_study)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_eq!(kind, "not_analysed");
    let reason = reason.unwrap();
    assert!(reason.to_lowercase().contains("chest"), "{reason}");
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("not analysed") && t.contains(&reason)),
        "{texts:?} lacks the reason {reason:?}"
    );

    // a late image of the chest study: Orthanc pushes it, a revised SR names its predecessor
    let chest_study_id = &uploaded[0].1;
    let first_sop = received[0].1["SOPInstanceUID"]
        .as_str()
        .unwrap()
        .to_string();
    let late = fixture("RG1_J2KR.dcm");
    assert_eq!(
        dicom_field(&late, "0020,000d"),
        dicom_field(&chest, "0020,000d")
    );
    let (late_id, late_study) = site.upload(&[&late]).remove(0);
    assert_eq!(&late_study, chest_study_id);
    site.pacs.push(&[&late_id]);
    let srs = site.wait_srs(chest_study_id, 2, Duration::from_secs(180));
    assert_eq!(srs.len(), 2);
    let (path, tags) = srs
        .iter()
        .find(|(_, t)| t["SOPInstanceUID"] != first_sop.as_str())
        .unwrap();
    assert_eq!(tags["InstanceNumber"], "2");
    let revised = validate(path);
    assert_eq!(revised["predecessor"], serde_json::json!([first_sop]));
    let late_sop = dicom_field(&late, "0008,0018");
    let mut both = vec![dicom_field(&chest, "0008,0018"), late_sop.clone()];
    both.sort();
    assert_eq!(revised["evidence"], serde_json::json!(both));
    assert_findings_match(&site.pool, &revised, &late_sop).await;
    // the late image's SEG and SC continue the study's series; the revision references all four
    let segs = site.wait_instances(chest_study_id, "SEG", 2, Duration::from_secs(60));
    let scs = site.wait_instances(chest_study_id, "OT", 2, Duration::from_secs(60));
    assert_eq!((segs.len(), scs.len()), (2, 2));
    assert_eq!(
        revised["other_evidence"].as_array().unwrap().len(),
        4,
        "{revised}"
    );
    for (_, t) in segs.iter().chain(&scs) {
        assert!(
            revised["other_evidence"]
                .as_array()
                .unwrap()
                .contains(&t["SOPInstanceUID"]),
            "{t}"
        );
    }

    // every SR was sent exactly once; nothing else is pending
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT o.state, count(a.*) FILTER (WHERE a.outcome = 'sent')
         FROM outbox o LEFT JOIN outbox_attempts a ON a.outbox_id = o.id GROUP BY o.id",
    )
    .fetch_all(&site.pool)
    .await
    .unwrap();
    // four SRs; a SEG and an SC for each of the three analysed images
    assert_eq!(rows.len(), 10, "{rows:?}");
    assert!(rows.iter().all(|(s, n)| s == "sent" && *n == 1), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_down_when_the_sr_is_due_gets_exactly_one_sr_once_back() {
    let mut site = Site::start("quiet_period_secs = 1").await;
    let chest = fixture("RG1_UNCR.dcm");
    let (_, study_id) = site.upload(&[&chest]).remove(0);
    site.pacs.push(&[&study_id]);
    site.pacs.stop();
    let study = dicom_field(&chest, "0020,000d");

    // the sender retries with backoff while nothing listens
    let deadline = Instant::now() + Duration::from_secs(120);
    while attempts(&site.pool, &study, "retry").await < 3 {
        assert_eq!(
            attempts(&site.pool, &study, "sent").await,
            0,
            "the SR was delivered before Orthanc stopped"
        );
        assert!(
            Instant::now() < deadline,
            "no retries:\n{}",
            site.daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (state, error): (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM outbox WHERE study_instance_uid = $1")
            .bind(&study)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_ne!(state, "sent");
    assert!(error.is_some());

    site.pacs.restart();
    let srs = site.wait_srs(&study_id, 1, Duration::from_secs(60));
    validate(&srs[0].0);
    // nothing more arrives: wait past the longest retry delay (retry_max_secs = 2)
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(site.pacs.srs_of_study(&study_id).len(), 1);
    assert_eq!(attempts(&site.pool, &study, "sent").await, 1);
    assert_eq!(
        site.count(
            "SELECT count(*) FROM outbox WHERE study_instance_uid = $1 AND state = 'sent'",
            &study
        )
        .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn daemon_killed_mid_job_restarts_and_sends_one_sr_per_study() {
    // a short lease: the dead worker's job is taken over two seconds after it was started
    let mut site = Site::start("quiet_period_secs = 1\nlease_secs = 2").await;
    let a1 = fixture("RG1_UNCR.dcm");
    let a2 = fixture("RG1_J2KR.dcm"); // same study as a1: a two-image job (JPEG 2000 is slow)
    let b = fixture("966_fixed.dcm"); // another study
    let uploaded = site.upload(&[&a1, &a2, &b]);
    let mut study_ids: Vec<&str> = uploaded.iter().map(|(_, s)| s.as_str()).collect();
    study_ids.dedup();
    assert_eq!(study_ids.len(), 2);
    site.pacs.push(&study_ids);

    // SIGKILL the daemon as soon as a worker holds a job
    let deadline = Instant::now() + Duration::from_secs(60);
    let running: i64 = loop {
        let id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE state = 'running' LIMIT 1")
                .fetch_optional(&site.pool)
                .await
                .unwrap();
        if let Some(id) = id {
            site.daemon.kill9();
            break id;
        }
        assert!(Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // the kill landed mid-job: the job is still leased to the dead worker, nothing reported
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(running)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("running", 1));
    let reports: i64 = sqlx::query_scalar("SELECT count(*) FROM reports")
        .fetch_one(&site.pool)
        .await
        .unwrap();
    assert_eq!(reports, 0, "the job finished before the kill");

    // restart on the same spool and database: the expired lease is taken over
    let (dir, config) = (site.daemon.dir.clone(), site.daemon.config.clone());
    site.daemon = Daemon::start_with(dir, config);
    let mut total = 0;
    for study_id in &study_ids {
        let srs = site.wait_srs(study_id, 1, Duration::from_secs(180));
        for (path, _) in &srs {
            validate(path);
        }
        total += srs.len();
    }
    assert_eq!(total, 2);
    // nothing else comes: no second report for the job that ran twice
    tokio::time::sleep(Duration::from_secs(3)).await;
    for study_id in &study_ids {
        assert_eq!(site.pacs.srs_of_study(study_id).len(), 1, "{study_id}");
    }
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(running)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("done", 2));
    let per_study: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT r.study_instance_uid, count(DISTINCT r.id), count(o.id)
         FROM reports r JOIN outbox o ON o.sop_instance_uid = r.sr_sop_instance_uid
         GROUP BY r.study_instance_uid",
    )
    .fetch_all(&site.pool)
    .await
    .unwrap();
    assert_eq!(per_study.len(), 2, "{per_study:?}");
    assert!(
        per_study.iter().all(|(_, r, o)| *r == 1 && *o == 1),
        "{per_study:?}"
    );
    // the two-image study's SR lists both images
    let a_study = dicom_field(&a1, "0020,000d");
    let analysed: i32 =
        sqlx::query_scalar("SELECT analysed_images FROM reports WHERE study_instance_uid = $1")
            .bind(&a_study)
            .fetch_one(&site.pool)
            .await
            .unwrap();
    assert_eq!(analysed, 2);
}

/// A chest film stored as Secondary Capture (the SIIM file), pushed by Orthanc to a worker that
/// accepts SC: analysed, and its SR filed back under the same study.
#[tokio::test(flavor = "multi_thread")]
async fn orthanc_pushes_a_secondary_capture_chest_film_when_sc_is_configured() {
    let sc = r#"accepted_sop_classes = ["1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7"]"#;
    let site = Site::start_with("quiet_period_secs = 1", sc, "outputs = [\"sr\"]").await;
    let siim = fixture("siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm");
    let uploaded = site.upload(&[&siim]);
    site.pacs.push(&[uploaded[0].1.as_str()]);
    let srs = site.wait_srs(&uploaded[0].1, 1, Duration::from_secs(180));
    let (path, tags) = &srs[0];
    assert_eq!(tags["StudyInstanceUID"], dicom_field(&siim, "0020,000d"));
    let sr = validate(path);
    let sop = dicom_field(&siim, "0008,0018");
    assert_eq!(sr["evidence"], serde_json::json!([sop]));
    assert_findings_match(&site.pool, &sr, &sop).await;
}

//! The admin commands against a real database filled by the real daemon (tiny models, real chest
//! fixtures, DCMTK storescp as the PACS): findings and its filters in table, JSON and CSV (read
//! back by Python's csv module), status, resend (the SR arrives again), reprocess (a revised SR
//! naming its predecessor), and check-config's checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use sqlx::PgPool;

/// Run `cxr-worker ARGS --config CONFIG`.
fn cli(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// Run a command that must succeed; its stdout.
fn ok(config: &Path, args: &[&str]) -> String {
    let o = cli(config, args);
    assert!(o.status.success(), "{args:?} failed: {}", text(&o));
    stdout(&o)
}

/// `findings --format json` with extra filters: one object per line.
fn findings_json(config: &Path, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["findings", "--format", "json"];
    args.extend_from_slice(filters);
    ok(config, &args)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The (study, label) pairs of JSON rows; label "" for a study without findings.
fn pairs(rows: &[Value]) -> BTreeSet<(String, String)> {
    rows.iter()
        .map(|r| {
            (
                r["study_instance_uid"].as_str().unwrap().to_string(),
                r["label"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn studies(rows: &[Value]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let s = r["study_instance_uid"].as_str().unwrap().to_string();
        if out.last() != Some(&s) {
            out.push(s);
        }
    }
    out
}

async fn wait_for(pool: &PgPool, sql: &str, bind: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(bind)
            .fetch_one(pool)
            .await
            .unwrap();
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} ({bind}): {n} < {want} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A value from a fixture's data set, via DCMTK.
fn field(path: &Path, tag: &str) -> String {
    let o = run("dcmdump", &["-q", "+P", tag, path.to_str().unwrap()]);
    String::from_utf8_lossy(&o.stdout)
        .split(['[', ']'])
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Parse CSV with Python's csv module (a second implementation): the header and the records.
fn parse_csv(csv: &str) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
    let mut child = Command::new(python())
        .args([
            "-c",
            "import csv, json, sys\n\
             r = list(csv.reader(sys.stdin))\n\
             print(json.dumps({'header': r[0], 'rows': [dict(zip(r[0], x)) for x in r[1:]], \
             'widths': sorted({len(x) for x in r})}))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), csv.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "python csv: {}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["widths"].as_array().unwrap().len(),
        1,
        "ragged CSV: {csv}"
    );
    (
        serde_json::from_value(v["header"].clone()).unwrap(),
        serde_json::from_value(v["rows"].clone()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_find_report_resend_and_reprocess() {
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let config = write_config_with(&dir, &db.url, "", &analysis_sections(pacs.port));
    let mut d = Daemon::start_with(dir.clone(), config.clone());
    let pool = db.pool().await;

    // four studies: three chest (dated 2004, undated, 1901), one hip (2003, not analysed)
    let chest = fixture("RG1_UNCR.dcm");
    let dx = fixture("966_fixed.dcm");
    let hip = fixture("RG2_RLE.dcm");
    // a third chest study: a copy of a chest image with new UIDs, dated 1901, with a comma and
    // quotes in its accession number and patient ID
    let siim = dir.join("third.dcm");
    std::fs::copy(fixture("RG1_J2KI.dcm"), &siim).unwrap();
    let odd_accession = "ACC,\"7\"";
    let m = run(
        "dcmodify",
        &[
            "-nb",
            "-gst",
            "-gse",
            "-gin",
            "-i",
            &format!("(0008,0050)={odd_accession}"),
            "-i",
            "(0010,0020)=P,1",
            "-i",
            "(0008,0020)=19010101",
            siim.to_str().unwrap(),
        ],
    );
    assert!(m.status.success(), "dcmodify: {}", text(&m));
    let acks = pynetdicom_send(
        &d,
        "MODALITY",
        1,
        &[chest.clone(), dx.clone(), siim.clone(), hip.clone()],
    );
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox WHERE state = 'sent' AND $1 <> ''",
        "x",
        4,
        Duration::from_secs(120),
    )
    .await;
    let chest_study = field(&chest, "0020,000d");
    let dx_study = field(&dx, "0020,000d");
    let siim_study = field(&siim, "0020,000d");
    let hip_study = field(&hip, "0020,000d");

    // ---- findings, JSON: every study × label, newest study date first, undated last
    let all = findings_json(&config, &[]);
    assert_eq!(all.len(), 3 * 14 + 1, "{all:#?}");
    assert_eq!(
        studies(&all),
        [
            chest_study.as_str(),
            hip_study.as_str(),
            siim_study.as_str(),
            dx_study.as_str()
        ]
    );
    let truth: Vec<(String, String, f32, bool, i64)> = sqlx::query_as(
        "SELECT study_instance_uid, label, max_probability, present, images FROM study_findings",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(truth.len(), 42);
    for (study, label, p, present, images) in &truth {
        let row = all
            .iter()
            .find(|r| r["study_instance_uid"] == study.as_str() && r["label"] == label.as_str())
            .unwrap_or_else(|| panic!("{study} {label} missing"));
        assert_eq!(row["max_probability"].as_f64().unwrap() as f32, *p);
        assert_eq!(row["present"].as_bool().unwrap(), *present);
        assert_eq!(row["images"].as_i64().unwrap(), *images);
        assert_eq!(row["report"]["kind"], "findings");
        assert_eq!(row["report"]["instance_number"], 1);
        assert_eq!(row["delivery"], serde_json::json!({"sent": 1}));
        assert_eq!(row["instances"], serde_json::json!({"analysed": 1}));
    }
    let chest_row = &all[0];
    assert_eq!(chest_row["study_date"], "2004-08-26");
    assert_eq!(chest_row["accession_number"], "exam Number");
    assert_eq!(chest_row["patient_id"], "9RG1");
    assert_eq!(chest_row["label"], "Atelectasis", "labels in NIH order");
    let hip_row = &all[14];
    assert_eq!(hip_row["label"], Value::Null);
    assert_eq!(hip_row["instances"], serde_json::json!({"skipped": 1}));
    assert_eq!(hip_row["report"]["kind"], "not_analysed");

    // ---- findings, CSV: a header, every record as wide, values as in JSON
    let csv = ok(&config, &["findings", "--format", "csv"]);
    let (header, records) = parse_csv(&csv);
    assert_eq!(header, cxr_worker::admin::findings::CSV_HEADER);
    assert_eq!(records.len(), all.len());
    for (rec, row) in records.iter().zip(&all) {
        assert_eq!(
            rec["study_instance_uid"],
            row["study_instance_uid"].as_str().unwrap()
        );
        assert_eq!(rec["label"], row["label"].as_str().unwrap_or(""));
        assert_eq!(
            rec["accession_number"],
            row["accession_number"].as_str().unwrap_or("")
        );
        if let Some(p) = row["max_probability"].as_f64() {
            assert_eq!(rec["max_probability"].parse::<f32>().unwrap(), p as f32);
        }
    }
    let siim_rec = records
        .iter()
        .find(|r| r["study_instance_uid"] == siim_study)
        .unwrap();
    assert_eq!(siim_rec["accession_number"], odd_accession);
    assert_eq!(siim_rec["study_date"], "1901-01-01");
    assert_eq!(siim_rec["patient_id"], "P,1");
    assert_eq!(siim_rec["delivery"], "sent=1");

    // ---- findings, table
    let table = ok(&config, &["findings"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2 + all.len(), "{table}");
    assert!(lines[0].starts_with("STUDY DATE"), "{table}");
    assert!(lines[1].starts_with("----------"), "{table}");
    assert!(lines[2].contains("9RG1") && lines[2].contains("Atelectasis"));
    assert!(lines[2].contains("findings #1") && lines[2].contains("sent=1"));
    assert!(table.contains("not_analysed #1"), "{table}");

    // ---- filters
    let label = findings_json(&config, &["--label", "cardiomegaly"]);
    assert_eq!(label.len(), 3);
    assert!(label.iter().all(|r| r["label"] == "Cardiomegaly"));

    let mut ps: Vec<f32> = truth.iter().map(|t| t.2).collect();
    ps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p = ps[ps.len() / 2];
    let want: BTreeSet<(String, String)> = truth
        .iter()
        .filter(|t| t.2 >= p)
        .map(|t| (t.0.clone(), t.1.clone()))
        .collect();
    let got = findings_json(&config, &["--min-probability", &p.to_string()]);
    assert_eq!(pairs(&got), want);
    assert!(!want.is_empty() && want.len() < 42);

    let (lbl, lp) = (&truth[0].1, truth[0].2);
    let want: BTreeSet<(String, String)> = truth
        .iter()
        .filter(|t| &t.1 == lbl && t.2 >= lp)
        .map(|t| (t.0.clone(), t.1.clone()))
        .collect();
    let got = findings_json(
        &config,
        &["--label", lbl, "--min-probability", &lp.to_string()],
    );
    assert_eq!(pairs(&got), want);

    let want: BTreeSet<(String, String)> = truth
        .iter()
        .filter(|t| t.3)
        .map(|t| (t.0.clone(), t.1.clone()))
        .collect();
    assert_eq!(pairs(&findings_json(&config, &["--present"])), want);

    let y2004 = findings_json(&config, &["--from", "2004-01-01", "--to", "2004-12-31"]);
    assert_eq!(studies(&y2004), [chest_study.as_str()]);
    assert_eq!(y2004.len(), 14);
    let hip_day = findings_json(&config, &["--from", "20031208", "--to", "2003-12-08"]);
    assert_eq!(
        pairs(&hip_day),
        BTreeSet::from([(hip_study.clone(), String::new())])
    );
    let old = findings_json(&config, &["--to", "1950-01-01"]);
    assert_eq!(studies(&old), [siim_study.as_str()]);
    let recent = findings_json(&config, &["--from", "2003-01-01"]);
    assert_eq!(
        studies(&recent),
        [chest_study.as_str(), hip_study.as_str()],
        "undated studies drop out"
    );

    let acc = findings_json(&config, &["--accession", "exam Number"]);
    assert_eq!(studies(&acc), [chest_study.as_str()]);
    let acc = findings_json(&config, &["--accession", odd_accession]);
    assert_eq!(studies(&acc), [siim_study.as_str()]);
    let pid = findings_json(&config, &["--patient-id", &field(&dx, "0010,0020")]);
    assert_eq!(studies(&pid), [dx_study.as_str()]);

    let skipped = findings_json(&config, &["--state", "skipped"]);
    assert_eq!(studies(&skipped), [hip_study.as_str()]);
    let not_analysed = findings_json(&config, &["--state", "not-analysed"]);
    assert_eq!(studies(&not_analysed), [hip_study.as_str()]);
    let analysed = findings_json(&config, &["--state", "analysed"]);
    assert_eq!(
        studies(&analysed),
        [chest_study.as_str(), siim_study.as_str(), dx_study.as_str()]
    );
    assert_eq!(
        studies(&findings_json(&config, &["--state", "delivered"])).len(),
        4
    );
    assert!(findings_json(&config, &["--state", "send-failed"]).is_empty());
    assert!(findings_json(&config, &["--state", "unreported"]).is_empty());
    assert_eq!(
        ok(&config, &["findings", "--state", "failed"]).trim(),
        "no study matches"
    );
    let first = findings_json(&config, &["--limit", "1"]);
    assert_eq!(studies(&first), [chest_study.as_str()]);
    assert_eq!(first.len(), 14);
    let hip_and_label = findings_json(&config, &["--patient-id", "10RG2", "--label", "Edema"]);
    assert!(hip_and_label.is_empty(), "a label filter asks for findings");

    // ---- bad filters: clear messages, non-zero exit
    let o = cli(&config, &["findings", "--label", "Covid"]);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(err.contains("unknown label \"Covid\""), "{err}");
    for l in cxr_worker::analyse::contract::LABELS {
        assert!(err.contains(l), "{err}");
    }
    let o = cli(&config, &["findings", "--min-probability", "1.5"]);
    assert!(!o.status.success() && text(&o).contains("--min-probability"));
    let o = cli(&config, &["findings", "--from", "yesterday"]);
    assert!(!o.status.success() && text(&o).contains("--from"));

    // ---- status
    let s: Value = serde_json::from_str(&ok(&config, &["status", "--format", "json"])).unwrap();
    assert_eq!(s["jobs"]["done"], 4, "{s:#}");
    assert_eq!(s["jobs"]["queued"], 0);
    assert_eq!(s["oldest_queued"], Value::Null);
    assert_eq!(s["instances_last_24h"]["analysed"], 3);
    assert_eq!(s["instances_last_24h"]["skipped"], 1);
    let failures = s["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{s:#}");
    assert_eq!(failures[0]["study_instance_uid"], hip_study.as_str());
    assert_eq!(failures[0]["state"], "skipped");
    assert!(!failures[0]["reason"].as_str().unwrap().is_empty());
    let dest = &s["destinations"][0];
    assert_eq!(dest["name"], "PACS");
    assert_eq!(dest["configured"], true);
    assert_eq!(dest["sent"], 4);
    assert_eq!(dest["failed"], 0);
    assert_eq!(dest["address"], format!("PACS@127.0.0.1:{}", pacs.port));
    let table = ok(&config, &["status"]);
    for want in [
        "QUEUE",
        "jobs: done 4",
        "INSTANCES",
        "analysed 3",
        "FAILURES",
        "OUTBOX",
        "PACS@127.0.0.1",
    ] {
        assert!(table.contains(want), "{want} not in\n{table}");
    }
    assert!(table.contains(&hip_study), "{table}");
    assert!(
        !cli(&config, &["status", "--format", "csv"])
            .status
            .success()
    );

    // ---- resend: the delivered SR goes to the PACS again while the daemon runs
    let (sr1, outbox_id): (String, i64) =
        sqlx::query_as("SELECT sop_instance_uid, id FROM outbox WHERE study_instance_uid = $1")
            .bind(&chest_study)
            .fetch_one(&pool)
            .await
            .unwrap();
    let received = pacs.file_of(&sr1).expect("the SR reached the PACS");
    std::fs::remove_file(&received).unwrap();
    let out = ok(&config, &["resend", &chest_study]);
    assert!(out.contains(&sr1), "{out}");
    assert!(out.contains("PACS: requeued (was sent)"), "{out}");
    wait_for(
        &pool,
        "SELECT count(*) FROM outbox_attempts a JOIN outbox o ON o.id = a.outbox_id
         WHERE o.sop_instance_uid = $1 AND a.outcome = 'sent'",
        &sr1,
        2,
        Duration::from_secs(60),
    )
    .await;
    let (state, requeued): (String, i32) =
        sqlx::query_as("SELECT state, requeued_count FROM outbox WHERE id = $1")
            .bind(outbox_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), requeued), ("sent", 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while pacs.file_of(&sr1).is_none() {
        assert!(Instant::now() < deadline, "the resent SR did not arrive");
        std::thread::sleep(Duration::from_millis(100));
    }

    // ---- unknown studies
    for cmd in ["resend", "reprocess"] {
        let o = cli(&config, &[cmd, "1.2.3.4.5"]);
        assert!(!o.status.success(), "{cmd}");
        assert!(text(&o).contains("unknown study 1.2.3.4.5"), "{}", text(&o));
    }

    // ---- reprocess: queued while the daemon is down (a second one is refused), done when it
    // is back: a revised SR (#2) naming the first, delivered
    assert!(d.terminate().success());
    let out = ok(&config, &["reprocess", &chest_study]);
    assert!(out.contains("reprocess job"), "{out}");
    assert!(out.contains(&format!("will name SR {sr1} (#1)")), "{out}");
    let o = cli(&config, &["reprocess", &chest_study]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already queued"), "{}", text(&o));
    let s: Value = serde_json::from_str(&ok(&config, &["status", "--format", "json"])).unwrap();
    assert_eq!(s["jobs"]["queued"], 1);
    assert_eq!(s["oldest_queued"]["kind"], "reprocess");
    assert_eq!(
        s["oldest_queued"]["study_instance_uid"],
        chest_study.as_str()
    );
    assert!(ok(&config, &["status"]).contains("oldest queued: job"));
    let _d = Daemon::start_with(dir.clone(), config.clone());
    wait_for(
        &pool,
        "SELECT count(*) FROM reports r JOIN outbox o ON o.sop_instance_uid = r.sr_sop_instance_uid
         WHERE r.study_instance_uid = $1 AND r.instance_number = 2 AND o.state = 'sent'",
        &chest_study,
        1,
        Duration::from_secs(120),
    )
    .await;
    let (sr2, predecessor): (String, Option<String>) = sqlx::query_as(
        "SELECT sr_sop_instance_uid, predecessor_sop_instance_uid FROM reports
         WHERE study_instance_uid = $1 AND instance_number = 2",
    )
    .bind(&chest_study)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(predecessor.as_deref(), Some(sr1.as_str()));
    assert!(pacs.file_of(&sr2).is_some(), "revised SR not at the PACS");
    let rows = findings_json(&config, &["--accession", "exam Number"]);
    assert_eq!(rows.len(), 14);
    assert!(rows.iter().all(|r| r["report"]["instance_number"] == 2
        && r["report"]["sr_sop_instance_uid"] == sr2.as_str()));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_reports_each_check_with_its_key() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();

    // all good: tiny models, a reachable (not yet migrated) database
    let good = write_config_with(&dir, &db.url, "", "");
    let o = cli(&good, &["check-config"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for key in [
        "config",
        "models.segmenter",
        "models.classifier",
        "database.url",
    ] {
        assert!(out.contains(&format!("OK      {key}: ")), "{key}: {out}");
    }
    assert!(out.contains("contract OK"), "{out}");
    assert!(out.contains("UNTRAINED"), "{out}");
    assert!(out.contains("0 of "), "{out}");
    let password = db
        .url
        .split_once("://")
        .unwrap()
        .1
        .split_once('@')
        .unwrap()
        .0;
    assert!(!out.contains(password), "credentials printed: {out}");

    // a missing model, a model that is not a classifier, an unreachable database
    let root = root();
    let models = |classifier: &str| {
        format!(
            "[models]\nonnxruntime_library = \"{}\"\nsegmenter = \"{}\"\nclassifier = \"{classifier}\"\nexecution_providers = [\"cpu\"]\n",
            ort_library().display(),
            root.join("onnx/tiny/anatomy-segmenter.onnx").display(),
        )
    };
    let closed = reserve_port(); // held to the end: connections are refused
    let closed_port = closed.port();
    let nowhere = format!("postgres://cxr:secret@127.0.0.1:{closed_port}/cxr");
    let sub = dir.join("missing");
    std::fs::create_dir_all(&sub).unwrap();
    let missing = write_config_with(&sub, &nowhere, "", &models("/nonexistent/xnet.onnx"));
    let started = Instant::now();
    let o = cli(&missing, &["check-config"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("FAILED  models.classifier: /nonexistent/xnet.onnx: no such file"),
        "{out}"
    );
    assert!(out.contains("FAILED  database.url: 127.0.0.1:"), "{out}");
    assert!(!out.contains("secret"), "{out}");
    assert!(out.contains("OK      models.segmenter: "), "{out}");
    assert!(out.contains("2 of 5 checks FAILED"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(20));

    let sub = dir.join("wrong-role");
    std::fs::create_dir_all(&sub).unwrap();
    let seg = root.join("onnx/tiny/anatomy-segmenter.onnx");
    let wrong = write_config_with(&sub, &db.url, "", &models(seg.to_str().unwrap()));
    let o = cli(&wrong, &["check-config"]);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("FAILED  models: "), "{out}");
    assert!(out.contains("OK      database.url"), "{out}");

    // a process that does not analyse loads no models: they are not checked
    let sub = dir.join("no-analysis");
    std::fs::create_dir_all(&sub).unwrap();
    let sections = format!(
        "[process]\nroles = [\"receive\", \"send\"]\n{}",
        models("/nonexistent/xnet.onnx")
    );
    let no_analysis = write_config_with(&sub, &db.url, "", &sections);
    let o = cli(&no_analysis, &["check-config"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("roles receive,send"), "{out}");
    assert!(out.contains("0 analysis worker(s)"), "{out}");
    assert!(!out.contains("models."), "{out}");

    // --offline checks the file only
    let o = cli(&missing, &["check-config", "--offline"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("database.url"));

    // an invalid file: FAILED naming the key
    let sub = dir.join("invalid");
    std::fs::create_dir_all(&sub).unwrap();
    let invalid = write_config_with(&sub, &db.url, "max_associations = 0", "");
    let o = cli(&invalid, &["check-config", "--offline"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("FAILED  config: "), "{}", text(&o));
    assert!(text(&o).contains("max_associations"), "{}", text(&o));

    // admin queries on a database the daemon never migrated, or cannot reach
    let o = cli(&good, &["findings"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("no cxr-worker schema"), "{}", text(&o));
    let o = cli(&missing, &["status"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("cannot reach the database 127.0.0.1:"),
        "{}",
        text(&o)
    );
    assert!(!text(&o).contains("secret"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_read_only_role_can_read_every_admin_view_and_write_nothing() {
    let db = TestDb::create().await;
    let pool = db.pool().await;
    cxr_worker::db::migrate(&pool).await.unwrap();
    // the test's login (CREATEROLE) takes the role, as a DBA would grant it to an admin's login
    sqlx::query("GRANT cxr_readonly TO CURRENT_USER")
        .execute(&pool)
        .await
        .unwrap();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE cxr_readonly")
        .execute(&mut *tx)
        .await
        .unwrap();
    for view in [
        "studies",
        "instances",
        "jobs",
        "findings",
        "reports",
        "outbox",
        "outbox_attempts",
        "latest_results",
        "study_findings",
        "positive_findings",
        "failures",
    ] {
        let sql = format!("SELECT count(*) FROM {view}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("cxr_readonly cannot read {view}: {e}"));
    }
    let write = sqlx::query("DELETE FROM jobs").execute(&mut *tx).await;
    assert!(write.is_err(), "cxr_readonly must not write");
}

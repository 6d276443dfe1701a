//! DICOM TLS with a real PACS (issue 10): Orthanc 1.10 with `DicomTlsEnabled` pushes a chest
//! study to cxr-worker's TLS listener (mutual TLS, Orthanc's AE title bound to its certificate
//! name) and receives the SR back over TLS, its certificate checked against the test CA.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
mod orthanc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use orthanc::{ORTHANC_AET, Orthanc, daemon_config};

fn pki() -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let out = Command::new(root().join("tests/tls/make-pki.sh"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-pki.sh: {}", text(&out));
    dir
}

fn config(dir: &Path, db_url: &str, pki: &Path, orthanc_port: u16) -> PathBuf {
    let p = |f: &str| pki.join(f).display().to_string();
    let tls = format!(
        r#"tls = true
outputs = ["sr"]
ca_file = "{ca}"
certificate = "{crt}"
private_key = "{key}"

[dicom.tls]
listen = "127.0.0.1:0"
certificate = "{crt}"
private_key = "{key}"
ca_file = "{ca}"
certificate_names = {{ {ORTHANC_AET} = "pacs.example.org" }}
"#,
        ca = p("ca.crt"),
        crt = p("server.crt"),
        key = p("server.key"),
    );
    daemon_config(
        dir,
        db_url,
        orthanc_port,
        ("quiet_period_secs = 1", "", &tls),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn orthanc_pushes_over_tls_and_gets_the_sr_back_over_tls() {
    let pki = pki();
    let db = TestDb::create().await;
    let pool = db.pool().await;
    let reserved = reserve_port();
    let dir = tempfile::tempdir().unwrap().keep();
    let d = Daemon::start_with(dir.clone(), config(&dir, &db.url, &pki, reserved.port()));
    let line = d.wait_log("listening (DICOM TLS)", 0, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let tls: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let pacs = Orthanc::start_tls(
        reserved,
        AE,
        tls.port(),
        [
            &pki.join("pacs.crt"),
            &pki.join("pacs.key"),
            &pki.join("ca.crt"),
        ],
    );

    let uploaded = pacs.upload(&fixture("RG1_UNCR.dcm"));
    let study = uploaded["ParentStudy"].as_str().unwrap().to_string();
    pacs.push(&[&study]);
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE calling_ae_title = $1")
            .bind(ORTHANC_AET)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1, "{}", d.log_text());
    assert!(
        d.log_text().contains("pacs.example.org"),
        "the TLS client (Orthanc) by its certificate:\n{}",
        d.log_text()
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let srs = pacs.srs_of_study(&study);
        if !srs.is_empty() {
            assert_eq!(srs.len(), 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SR in Orthanc over TLS:\n{}\n{}",
            d.log_text(),
            pacs.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent: (String, Option<String>) =
        sqlx::query_as("SELECT state, last_error FROM outbox WHERE destination_name = 'orthanc'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(sent.0, "sent", "{sent:?}");
}

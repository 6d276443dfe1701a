//! The daemon in-process through its build step: `Daemon::build` binds both listeners on port 0
//! and reports the real addresses before anything runs, so a caller (or a test) never races for a
//! free port; the shutdown token drains it as SIGTERM does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;
use cxr_worker::config::Config;
use cxr_worker::daemon::Daemon;

#[tokio::test(flavor = "multi_thread")]
async fn build_binds_port_zero_and_reports_the_real_addresses() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let config = Config::load(&write_config(&dir, &db.url, "")).unwrap();
    assert_eq!(config.dicom.listen.unwrap().port(), 0);
    let daemon = Daemon::build(config).await.unwrap().expect("not shut down");
    let dicom = daemon.dicom_addr().unwrap();
    let http = daemon.http_addr().expect("[http] enabled");
    assert_ne!(dicom.port(), 0);
    assert_ne!(http.port(), 0);
    assert_ne!(dicom.port(), http.port());
    let stop = daemon.shutdown_token();
    let running = tokio::spawn(daemon.run());

    // the reported addresses are the ones that answer
    let port = dicom.port().to_string();
    let echo =
        tokio::task::spawn_blocking(move || run("echoscu", &["-aec", AE, "127.0.0.1", &port]))
            .await
            .unwrap();
    assert!(echo.status.success(), "{}", text(&echo));
    let (code, body) = tokio::task::spawn_blocking(move || http_get(http, "/healthz"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("drains within 30 s")
        .unwrap()
        .unwrap();
    assert!(
        std::net::TcpStream::connect(dicom).is_err(),
        "the DICOM listener is closed after the drain"
    );
}

/// Secure by default: a file that lists no calling AE title and does not say
/// `allow_any_calling_ae = true` is refused by `serve` and `check-config`, naming the key.
#[tokio::test(flavor = "multi_thread")]
async fn an_open_allow_list_refuses_to_start_naming_the_key() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let config = write_config(
        &dir,
        &db.url,
        "allowed_calling_ae_titles = []\nallow_any_calling_ae = false",
    );
    let serve = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
            .args(["serve", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!serve.status.success(), "{}", text(&serve));
    assert!(
        text(&serve).contains("dicom.allowed_calling_ae_titles"),
        "{}",
        text(&serve)
    );
    let check = run(
        env!("CARGO_BIN_EXE_cxr-worker"),
        &[
            "check-config",
            "--offline",
            "--config",
            dir.join("cxr-worker.toml").to_str().unwrap(),
        ],
    );
    assert!(!check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains("dicom.allowed_calling_ae_titles"),
        "{}",
        text(&check)
    );
    // in-process too: the build step refuses before binding anything
    let config = Config::load(&dir.join("cxr-worker.toml")).unwrap();
    let err = Daemon::build(config).await.err().expect("refused");
    assert!(
        err.to_string().contains("dicom.allowed_calling_ae_titles"),
        "{err}"
    );
}

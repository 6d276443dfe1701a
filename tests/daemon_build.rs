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
    assert_eq!(config.dicom.listen.port(), 0);
    let daemon = Daemon::build(config).await.unwrap().expect("not shut down");
    let dicom = daemon.dicom_addr();
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

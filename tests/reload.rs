//! SIGHUP (`systemctl reload`): a changed allow-list and log level take effect without a restart;
//! a file that does not validate is refused with the key named and the running configuration
//! stays. systemd hears RELOADING=1 then READY=1 either way.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::*;

fn echo(d: &Daemon, calling: &str) -> bool {
    run(
        "echoscu",
        &["-aet", calling, "-aec", AE, "127.0.0.1", &d.port()],
    )
    .status
    .success()
}

/// Start a daemon with a manager socket; returns it once READY=1 arrived.
fn start(dir: &Path, db_url: &str, allowed: &str) -> (Daemon, UnixDatagram) {
    let sock = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&sock).unwrap();
    let config = write_config(
        dir,
        db_url,
        &format!("allowed_calling_ae_titles = [{allowed}]"),
    );
    let d = Daemon::start_env(
        dir.to_path_buf(),
        config,
        &[("NOTIFY_SOCKET", sock.to_str().unwrap())],
    );
    messages_until(&manager, "READY=1", Duration::from_secs(30));
    (d, manager)
}

/// SIGHUP and wait for RELOADING=1 followed by READY=1.
fn reload(d: &Daemon, manager: &UnixDatagram) {
    d.signal(libc::SIGHUP);
    let seen = messages_until(manager, "READY=1", Duration::from_secs(10));
    assert!(
        seen.iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_swaps_the_allow_list_and_the_log_level() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (mut d, manager) = start(&dir, &db.url, "\"OLD_AE\"");
    assert!(echo(&d, "OLD_AE"));
    assert!(!echo(&d, "NEW_AE"));

    write_config(&dir, &db.url, "allowed_calling_ae_titles = [\"NEW_AE\"]");
    let mark = d.log_len();
    reload(&d, &manager);
    let line = d.wait_log("configuration reloaded", mark, Duration::from_secs(5));
    assert!(line.contains("dicom.allowed_calling_ae_titles"), "{line}");
    assert!(
        !d.log_text().contains("need a restart"),
        "an unchanged file named sections as changed"
    );
    assert!(echo(&d, "NEW_AE"), "the newly allowed AE is refused");
    assert!(!echo(&d, "OLD_AE"), "the removed AE is still allowed");

    // log level: from debug to warn; the info lines of an association stop
    assert!(d.log_text().contains("association established"));
    let config = dir.join("cxr-worker.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("level = \"info,cxr_worker=debug\"", "level = \"warn\""),
    )
    .unwrap();
    reload(&d, &manager);
    let mark = d.log_len();
    assert!(echo(&d, "NEW_AE"));
    assert!(!echo(&d, "OLD_AE"));
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<String> = d.log.lock().unwrap()[mark..].to_vec();
    assert!(
        after
            .iter()
            .all(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\"")),
        "below-warn lines after the reload: {after:#?}"
    );
    assert!(d.is_running());
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_to_an_open_allow_list_is_refused_unless_explicit() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (mut d, manager) = start(&dir, &db.url, "\"OLD_AE\"");
    // emptied without saying so: refused, the running list stays
    write_config(
        &dir,
        &db.url,
        "allowed_calling_ae_titles = []\nallow_any_calling_ae = false",
    );
    let mark = d.log_len();
    reload(&d, &manager);
    let line = d.wait_log("configuration reload refused", mark, Duration::from_secs(5));
    assert!(line.contains("dicom.allowed_calling_ae_titles"), "{line}");
    assert!(echo(&d, "OLD_AE"));
    assert!(!echo(&d, "ANY_AE"));
    // said on purpose: applied
    write_config(&dir, &db.url, "allow_any_calling_ae = true");
    let mark = d.log_len();
    reload(&d, &manager);
    d.wait_log("configuration reloaded", mark, Duration::from_secs(5));
    assert!(echo(&d, "ANY_AE"));
    assert!(d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_an_invalid_file_keeps_the_running_configuration() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let (mut d, manager) = start(&dir, &db.url, "\"GOOD_AE\"");
    assert!(echo(&d, "GOOD_AE"));

    // a value that does not validate: the key is named
    write_config(
        &dir,
        &db.url,
        "allowed_calling_ae_titles = [\"THIS_AE_TITLE_IS_FAR_TOO_LONG\"]",
    );
    let mark = d.log_len();
    reload(&d, &manager);
    let line = d.wait_log("configuration reload refused", mark, Duration::from_secs(5));
    assert!(line.contains("dicom.allowed_calling_ae_titles"), "{line}");
    assert!(echo(&d, "GOOD_AE"), "the running allow-list was lost");
    assert!(!echo(&d, "OTHER_AE"));

    // a file that is not TOML at all
    let config = dir.join("cxr-worker.toml");
    std::fs::write(&config, "[dicom\nallowed_calling_ae_titles = [").unwrap();
    let mark = d.log_len();
    reload(&d, &manager);
    let line = d.wait_log("configuration reload refused", mark, Duration::from_secs(5));
    assert!(line.contains("not valid TOML"), "{line}");
    assert!(echo(&d, "GOOD_AE"));

    // a change that needs a restart is named and not applied; the rest is
    write_config(
        &dir,
        &db.url,
        "allowed_calling_ae_titles = [\"GOOD_AE\", \"SECOND_AE\"]\nmax_associations = 3",
    );
    let mark = d.log_len();
    reload(&d, &manager);
    let line = d.wait_log("need a restart", mark, Duration::from_secs(5));
    assert!(line.contains("dicom"), "{line}");
    assert!(echo(&d, "SECOND_AE"));
    assert!(d.is_running());
    assert!(d.terminate().success());
}

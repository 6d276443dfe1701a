//! The daemon under a systemd-like manager: READY=1 only once the port is bound and migrations
//! applied, STATUS lines, WATCHDOG pings while the receive loop lives, STOPPING=1 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn ready_after_bind_watchdog_while_alive_stopping_on_sigterm() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let sock_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&sock_path).unwrap();
    let config = write_config(&dir, &db.url, "");
    let mut d = Daemon::start_env(
        dir.clone(),
        config,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let before_ready = messages_until(&manager, "READY=1", Duration::from_secs(30));
    assert!(
        before_ready
            .iter()
            .any(|m| m.contains("STATUS=applying database migrations")),
        "{before_ready:?}"
    );
    // READY came after the port was bound: the daemon answers right away
    let echo = run("echoscu", &["-aec", AE, "127.0.0.1", &d.port()]);
    assert!(echo.status.success(), "{}", text(&echo));
    let pings = messages_until(&manager, "WATCHDOG=1", Duration::from_secs(5));
    assert!(pings.last().unwrap().contains("WATCHDOG=1"));
    let _ = messages_until(&manager, "WATCHDOG=1", Duration::from_secs(5));
    let status = d.terminate();
    assert!(status.success());
    let _ = messages_until(&manager, "STOPPING=1", Duration::from_secs(5));
}

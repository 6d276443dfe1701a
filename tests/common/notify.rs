//! The systemd notify protocol seen from the service manager's side: datagrams on a socket.

use std::time::{Duration, Instant};

/// Datagrams received on a systemd-like notify socket until one contains `want`.
pub fn messages_until(
    socket: &std::os::unix::net::UnixDatagram,
    want: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = m.contains(want);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; saw {seen:?}");
}

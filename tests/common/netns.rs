//! Several "hosts" on one machine: a network namespace per daemon (root creates them), joined to
//! the test's own namespace by a veth pair, and a TCP relay that lets a daemon in a namespace
//! reach the shared PostgreSQL (which listens on the test namespace's loopback only).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::text;

/// A network namespace with a point-to-point link to the test's namespace: the test side is
/// `host_ip`, the namespace side `ns_ip` (a /30 of 10.213.0.0/16). Deleted when dropped.
pub struct NetNs {
    pub name: String,
    pub host_ip: Ipv4Addr,
    pub ns_ip: Ipv4Addr,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        text(&out)
    );
}

impl NetNs {
    /// A fresh namespace, its loopback up and its link configured.
    pub fn create() -> Self {
        assert!(
            rustix::process::geteuid().is_root(),
            "the multi-host tests create network namespaces and must run as root (make test does, in CI)"
        );
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(n < 64, "at most 64 namespaces per test binary");
        let pid = std::process::id();
        let name = format!("cxr-test-{pid}-{n}");
        let host_if = format!("cxh{}x{n}", pid % 100_000);
        let ns_if = format!("cxn{}x{n}", pid % 100_000);
        let (third, fourth) = ((pid % 256) as u8, (n * 4) as u8);
        let host_ip = Ipv4Addr::new(10, 213, third, fourth + 1);
        let ns_ip = Ipv4Addr::new(10, 213, third, fourth + 2);
        // a namespace of the same name left by a killed run of an earlier process
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self {
            name: name.clone(),
            host_ip,
            ns_ip,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &name]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{ns_ip}/30"),
            "dev",
            &ns_if,
        ]);
        ip(&["-n", &name, "link", "set", &ns_if, "up"]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// `url` (a PostgreSQL URL of the test's namespace) as this namespace reaches it: through a
    /// relay on `host_ip` to the URL's host and port.
    pub fn database_url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("scheme://");
        let (credentials, rest) = rest.rsplit_once('@').expect("user@host");
        let (server, path) = rest.split_once('/').expect("host/db");
        let target = server
            .to_socket_addrs()
            .expect("the database's address")
            .next()
            .expect("one address");
        let relay = relay(SocketAddr::new(self.host_ip.into(), 0), target);
        format!("{scheme}://{credentials}@{relay}/{path}")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // deleting the namespace deletes its end of the link, and so the pair
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Relay TCP connections from a listener on `listen` (port 0: any) to `target`, for the rest of
/// the test process; returns the listener's address.
pub fn relay(listen: SocketAddr, target: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(listen).expect("bind the relay");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for inbound in listener.incoming() {
            let Ok(inbound) = inbound else { return };
            let Ok(outbound) = TcpStream::connect(target) else {
                continue;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (a, b) = (inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
            std::thread::spawn(move || pipe(inbound, outbound));
            std::thread::spawn(move || pipe(b, a));
        }
    });
    addr
}

/// Copy `from` into `to` until `from` ends, then end `to`'s writing side (and `from`'s reading).
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

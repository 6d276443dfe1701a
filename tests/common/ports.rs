//! TCP ports on 127.0.0.1 for the peers a test starts (DCMTK `storescp`, Orthanc, PostgreSQL):
//! reserved until the peer starts on them, and a check that the peer itself listens there.
//!
//! A reservation is a socket bound to the port but not listening. While it is held the kernel
//! gives the port to no other socket (another test's reservation, a daemon's port-0 bind, an
//! outgoing connection), and a connection to it is refused, as to a peer that is down. It is
//! released at the moment the peer is started on the port. Between a bind-and-close "free port"
//! and the peer's start, anything could take the port; here only that last instant is open.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpSocket;

/// A port on 127.0.0.1 held for a peer that is not running (yet, or for now).
#[derive(Debug)]
pub struct PortReservation {
    socket: TcpSocket,
    port: u16,
}

/// Reserve a port the kernel picks on 127.0.0.1.
pub fn reserve_port() -> PortReservation {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind 127.0.0.1:0");
    let port = socket.local_addr().expect("the reserved address").port();
    PortReservation { socket, port }
}

impl PortReservation {
    /// Hold `port` again once the peer on it has stopped, until it starts again. `SO_REUSEADDR`:
    /// the stopped peer's connections may linger on the port (`TIME_WAIT`); the peers used here
    /// listen with it too, so that they can start again in spite of those.
    pub fn hold(port: u16) -> std::io::Result<Self> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        Ok(Self { socket, port })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Free the port for the peer about to start on it; returns it.
    pub fn release(self) -> u16 {
        let Self { socket, port } = self;
        drop(socket);
        port
    }
}

/// Whether process `pid` itself listens on TCP `port` (on any address, IPv4 or IPv6): one of its
/// file descriptors is a socket that `/proc/net/tcp` or `/proc/net/tcp6` shows listening there.
/// A connection that succeeds proves only that someone listens.
pub fn listens(pid: u32, port: u16) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_string())
        })
        .collect();
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
        text.lines().skip(1).any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 9
                && f[3] == "0A" // LISTEN
                && f[1]
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    == Some(port)
                && inodes.contains(f[9])
        })
    })
}

//! Where audit messages go: the syslog collector over UDP (RFC 5426) or TLS (RFC 5425), and
//! the local audit file. Each takes a batch of messages and says which of them it delivered.
//!
//! What "delivered" means differs: for the file, written and fsynced; for TLS, written and
//! flushed into a connection the collector has not closed (syslog has no acknowledgements, so
//! a collector that dies with unread data loses it); for UDP, a datagram sent without error on
//! a connected socket, which notices a collector that is down only when the host answers with
//! ICMP port unreachable (on loopback and most LANs, not through firewalls that drop).

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::AuditError;
use super::syslog::{fit_datagram, octet_frame};
use crate::config::{AuditConfig, AuditTlsFiles, SyslogTransport};
use crate::tls;

/// Time limit of a TCP connect, a TLS handshake, and each write to the collector.
const NETWORK_TIMEOUT: Duration = Duration::from_secs(10);

/// The syslog collector and how to reach it.
#[derive(Debug, Clone)]
pub enum Collector {
    /// RFC 5426: one datagram per message.
    Udp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// RFC 5425: octet-counted messages over one TLS connection, kept open between batches.
    Tls {
        /// Host name or IP address to connect to.
        host: String,
        /// Port.
        port: u16,
        /// Roots, client certificate, protocol versions.
        config: Arc<ClientConfig>,
        /// The name the collector's certificate must carry.
        server_name: ServerName<'static>,
    },
}

impl Collector {
    /// The collector `config` names, with the TLS client configuration built from its files;
    /// `None` when no collector is configured.
    pub fn from_config(config: &AuditConfig) -> Result<Option<Self>, AuditError> {
        let Some(target) = &config.syslog else {
            return Ok(None);
        };
        let host = target.host.clone();
        let port = target.port;
        Ok(Some(match (target.transport, &config.tls) {
            (SyslogTransport::Udp, _) => Self::Udp { host, port },
            (SyslogTransport::Tls, Some(files)) => Self::Tls {
                server_name: server_name(&host)?,
                config: client_config(files)?,
                host,
                port,
            },
            (SyslogTransport::Tls, None) => {
                return Err(AuditError::TlsConfig {
                    message: "tls:// collector without a CA file".into(),
                });
            }
        }))
    }

    /// `host:port`, for errors and logs.
    pub fn address(&self) -> String {
        match self {
            Self::Udp { host, port } | Self::Tls { host, port, .. } => format!("{host}:{port}"),
        }
    }
}

/// `host` as a TLS server name (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, AuditError> {
    ServerName::try_from(host.to_string()).map_err(|e| AuditError::TlsConfig {
        message: format!("{host:?} is not a DNS name or IP address: {e}"),
    })
}

/// A TLS client configuration (ring provider, TLS 1.2 and 1.3) trusting the CAs in
/// `files.ca_file`, presenting `files.client` when set.
pub fn client_config(files: &AuditTlsFiles) -> Result<Arc<ClientConfig>, AuditError> {
    // the same BCP 195 profile and file checks as DICOM TLS (crate::tls)
    let anchors = tls::Anchors::load(&files.ca_file).map_err(|e| AuditError::ReadTlsFile {
        path: files.ca_file.clone(),
        message: e.to_string(),
    })?;
    let identity = match &files.client {
        None => None,
        Some((cert_file, key_file)) => Some(tls::Identity::load(cert_file, key_file).map_err(
            |e| AuditError::ReadTlsFile {
                path: cert_file.clone(),
                message: e.to_string(),
            },
        )?),
    };
    tls::client_config(&tls::ServerCheck::Hostname(anchors), identity.as_ref()).map_err(|e| {
        AuditError::TlsConfig {
            message: e.to_string(),
        }
    })
}

/// A batch's result: how many of the messages (a prefix, in order) were delivered, and the
/// error that stopped the rest.
pub(crate) struct Delivery {
    pub(crate) delivered: usize,
    pub(crate) error: Option<AuditError>,
}

/// The open connection to the collector, kept between batches (TLS only).
#[derive(Default)]
pub(crate) struct Connection {
    tls: Option<TlsStream<TcpStream>>,
}

impl Connection {
    /// Send `messages` (whole RFC 5424 messages) in order, stopping at the first failure.
    pub(crate) async fn send(&mut self, collector: &Collector, messages: &[Vec<u8>]) -> Delivery {
        match collector {
            Collector::Udp { host, port } => send_udp(host, *port, messages).await,
            Collector::Tls {
                host,
                port,
                config,
                server_name,
            } => {
                let delivery = self
                    .send_tls(host, *port, config, server_name, messages)
                    .await;
                if delivery.error.is_some() {
                    self.tls = None;
                }
                delivery
            }
        }
    }

    async fn send_tls(
        &mut self,
        host: &str,
        port: u16,
        config: &Arc<ClientConfig>,
        server_name: &ServerName<'static>,
        messages: &[Vec<u8>],
    ) -> Delivery {
        let address = format!("{host}:{port}");
        if self.tls.as_mut().is_some_and(|s| !still_open(s)) {
            self.tls = None;
        }
        if self.tls.is_none() {
            match connect_tls(host, port, config, server_name).await {
                Ok(s) => self.tls = Some(s),
                Err(error) => {
                    return Delivery {
                        delivered: 0,
                        error: Some(error),
                    };
                }
            }
        }
        let Some(stream) = self.tls.as_mut() else {
            return Delivery {
                delivered: 0,
                error: None,
            };
        };
        for (i, m) in messages.iter().enumerate() {
            let frame = octet_frame(m);
            let written = tokio::time::timeout(NETWORK_TIMEOUT, async {
                stream.write_all(&frame).await?;
                stream.flush().await
            })
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
            if let Err(source) = written {
                return Delivery {
                    delivered: i,
                    error: Some(AuditError::Send {
                        address: address.clone(),
                        source,
                    }),
                };
            }
        }
        Delivery {
            delivered: messages.len(),
            error: None,
        }
    }
}

/// Whether a kept connection still looks usable: a collector never writes to us, so anything
/// readable (its close, an alert, an error) means the connection is over.
fn still_open(stream: &mut TlsStream<TcpStream>) -> bool {
    let mut buf = [0u8; 64];
    stream.read(&mut buf).now_or_never().is_none()
}

async fn connect_tls(
    host: &str,
    port: u16,
    config: &Arc<ClientConfig>,
    server_name: &ServerName<'static>,
) -> Result<TlsStream<TcpStream>, AuditError> {
    let address = format!("{host}:{port}");
    let tcp = tokio::time::timeout(NETWORK_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(|source| AuditError::Connect {
            address: address.clone(),
            source,
        })?;
    let connector = TlsConnector::from(Arc::clone(config));
    tokio::time::timeout(NETWORK_TIMEOUT, connector.connect(server_name.clone(), tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
        .map_err(|source| AuditError::Handshake { address, source })
}

/// One datagram per message on a fresh connected socket. After each send the socket's pending
/// error is read: an ICMP port unreachable from a down collector shows there (on loopback
/// before `send` returns), so that message and the rest stay queued.
async fn send_udp(host: &str, port: u16, messages: &[Vec<u8>]) -> Delivery {
    let address = format!("{host}:{port}");
    let fail = |delivered, error| Delivery {
        delivered,
        error: Some(error),
    };
    let socket = match udp_socket(host, port).await {
        Ok(s) => s,
        Err(e) => return fail(0, e),
    };
    for (i, m) in messages.iter().enumerate() {
        let sent = match socket.send(fit_datagram(m)).await {
            Ok(_) => socket.take_error().and_then(|e| e.map_or(Ok(()), Err)),
            Err(e) => Err(e),
        };
        if let Err(source) = sent {
            return fail(
                i,
                AuditError::Send {
                    address: address.clone(),
                    source,
                },
            );
        }
    }
    Delivery {
        delivered: messages.len(),
        error: None,
    }
}

async fn udp_socket(host: &str, port: u16) -> Result<UdpSocket, AuditError> {
    let address = format!("{host}:{port}");
    let connect = |source| AuditError::Connect {
        address: address.clone(),
        source,
    };
    let peer = tokio::net::lookup_host((host, port))
        .await
        .map_err(connect)?
        .next()
        .ok_or_else(|| connect(std::io::ErrorKind::NotFound.into()))?;
    let local: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(connect)?;
    socket.connect(peer).await.map_err(connect)?;
    Ok(socket)
}

/// Append `lines` to the audit file (created with mode 0640 if missing) and fsync it. The file
/// is opened per batch, so it may be rotated (renamed) at any time.
pub(crate) async fn append(path: &Path, lines: String) -> Result<(), AuditError> {
    let owned: PathBuf = path.to_path_buf();
    tokio::task::spawn_blocking(move || append_blocking(&owned, lines.as_bytes()))
        .await
        .map_err(|e| AuditError::WriteFile {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?
}

fn append_blocking(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| AuditError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_data().map_err(err)
}

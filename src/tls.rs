//! DICOM TLS (PS3.15 Annex B): the certificates, keys and trust anchors read from PEM files, and
//! the rustls configurations built from them for the TLS listener and for destinations.
//!
//! Profile: the Non-Downgrading BCP 195 TLS Secure Transport Connection Profile (PS3.15 B.11).
//! TLS 1.3 and TLS 1.2 only; TLS 1.2 only with ECDHE key exchange and AES-GCM
//! (`TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}_GCM_SHA{256,384}`), so every session has forward
//! secrecy and an AEAD cipher; nothing older is offered or accepted. Crypto: rustls with *ring*.
//!
//! Files are read whole and checked once: a certificate file must hold at least one PEM
//! certificate, a key file exactly one private key matching its certificate, a CA file at least
//! one certificate usable as a trust anchor. Errors name the file; a key's content never appears
//! in an error or a log.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme,
    SupportedProtocolVersion,
};
use sha2::{Digest, Sha256};

/// The largest PEM file read: a certificate chain or a CA bundle, never megabytes.
const MAX_PEM_BYTES: u64 = 4 * 1024 * 1024;

/// A TLS file or configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is {size} bytes; a PEM file here is at most {MAX_PEM_BYTES}")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path} holds no usable PEM certificate{detail}")]
    NoCertificate { path: PathBuf, detail: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { path: PathBuf },
    #[error("{path} is not a certificate this worker can read: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path} holds no certificate usable as a trust anchor: {message}")]
    BadAnchors { path: PathBuf, message: String },
    #[error("the private key {key} cannot serve the certificate {certificate}: {message}")]
    KeyMismatch {
        certificate: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Build(String),
}

/// The crypto provider of every TLS connection: *ring*, limited to the BCP 195 suites.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite as s;
    let mut p = ring::default_provider();
    p.cipher_suites = vec![
        s::TLS13_AES_256_GCM_SHA384,
        s::TLS13_AES_128_GCM_SHA256,
        s::TLS13_CHACHA20_POLY1305_SHA256,
        s::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        s::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        s::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ];
    Arc::new(p)
}

/// TLS 1.3 and 1.2; nothing older.
pub static VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// What a certificate says about itself, for logs, metrics and the AE-title binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject's distinguished name, as `CN=..., O=...`.
    pub subject: String,
    /// The DNS and IP subject alternative names, then the subject's common names.
    pub names: Vec<String>,
    /// Not valid before / after, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the DER encoding, lower-case hex (what `openssl x509 -fingerprint -sha256`
    /// prints, without colons).
    pub sha256: String,
}

impl CertificateInfo {
    /// Parse a DER certificate.
    pub fn of(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push((*dns).to_string()),
                    GeneralName::IPAddress(ip) => {
                        if let Some(ip) = ip_of(ip) {
                            names.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        for cn in cert.subject().iter_common_name() {
            if let Ok(text) = cn.as_str() {
                names.push(text.to_string());
            }
        }
        Ok(Self {
            subject: cert.subject().to_string(),
            names,
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sha256: hex(&Sha256::digest(der)),
        })
    }

    /// Whether `name` is one of the certificate's names (DNS names without regard to case), or
    /// its whole subject DN.
    pub fn has_name(&self, name: &str) -> bool {
        self.subject == name || self.names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// Seconds from `now` (Unix seconds) until the certificate expires; negative once expired.
    pub fn seconds_left(&self, now: i64) -> i64 {
        self.not_after - now
    }
}

fn ip_of(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fingerprint given as hex, with or without colons (`AB:CD:...` or `abcd...`): 32 bytes.
pub fn parse_sha256(text: &str) -> Result<String, String> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "{text:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)"
        ));
    }
    Ok(digits.to_ascii_lowercase())
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read)?.len();
    if size > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge {
            path: path.to_path_buf(),
            size,
        });
    }
    std::fs::read(path).map_err(read)
}

fn certificates_in(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NoCertificate {
            path: path.to_path_buf(),
            detail: format!(": {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
            detail: String::new(),
        });
    }
    Ok(certs)
}

fn digest_of(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex(&h.finalize())
}

/// A certificate chain and its private key, read from two PEM files: who we are.
pub struct Identity {
    pub certificate_file: PathBuf,
    pub key_file: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The end-entity certificate (the first of the chain).
    pub info: CertificateInfo,
    /// SHA-256 over both files' bytes: a reload that changed either is seen (the key itself is
    /// never shown).
    digest: String,
}

impl Identity {
    /// Read and check `certificate` (PEM chain, end entity first) and `key` (PEM private key),
    /// and that the key belongs to the certificate.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read_pem(certificate)?;
        let chain = certificates_in(certificate, &cert_pem)?;
        let info = CertificateInfo::of(&chain[0]).map_err(|message| TlsError::BadCertificate {
            path: certificate.to_path_buf(),
            message,
        })?;
        let key_pem = read_pem(key)?;
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::NoKey {
            path: key.to_path_buf(),
        })?;
        let signing = provider()
            .key_provider
            .load_private_key(private.clone_key())
            .map_err(|e| TlsError::KeyMismatch {
                certificate: certificate.to_path_buf(),
                key: key.to_path_buf(),
                message: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        certified.keys_match().map_err(|e| TlsError::KeyMismatch {
            certificate: certificate.to_path_buf(),
            key: key.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Self {
            certificate_file: certificate.to_path_buf(),
            key_file: key.to_path_buf(),
            digest: digest_of(&[&cert_pem, &key_pem]),
            chain,
            key: private,
            info,
        })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            certificate_file: self.certificate_file.clone(),
            key_file: self.key_file.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            info: self.info.clone(),
            digest: self.digest.clone(),
        }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("certificate_file", &self.certificate_file)
            .field("key_file", &self.key_file)
            .field("subject", &self.info.subject)
            .field("sha256", &self.info.sha256)
            .field("files_sha256", &self.digest)
            .finish()
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.certificate_file == other.certificate_file
            && self.key_file == other.key_file
            && self.digest == other.digest
    }
}

/// Trust anchors read from one PEM file: the CAs a peer's certificate must chain to.
#[derive(Clone)]
pub struct Anchors {
    pub file: PathBuf,
    store: Arc<RootCertStore>,
    /// The certificates of the file, in order.
    pub certificates: Vec<CertificateInfo>,
    digest: String,
}

impl Anchors {
    /// Read `path`: every certificate in it becomes a trust anchor.
    pub fn load(path: &Path) -> Result<Self, TlsError> {
        let pem = read_pem(path)?;
        let certs = certificates_in(path, &pem)?;
        let mut store = RootCertStore::empty();
        let mut certificates = Vec::with_capacity(certs.len());
        for cert in certs {
            certificates.push(CertificateInfo::of(&cert).map_err(|message| {
                TlsError::BadAnchors {
                    path: path.to_path_buf(),
                    message,
                }
            })?);
            store.add(cert).map_err(|e| TlsError::BadAnchors {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        Ok(Self {
            file: path.to_path_buf(),
            store: Arc::new(store),
            certificates,
            digest: digest_of(&[&pem]),
        })
    }
}

impl std::fmt::Debug for Anchors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Anchors")
            .field("file", &self.file)
            .field(
                "subjects",
                &self
                    .certificates
                    .iter()
                    .map(|c| c.subject.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("files_sha256", &self.digest)
            .finish()
    }
}

impl PartialEq for Anchors {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.digest == other.digest
    }
}

/// Whether the listener asks clients for a certificate.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A client may present a certificate; if it does, it must chain to these anchors.
    Optional(Anchors),
    /// Mutual TLS: every client must present a certificate chaining to these anchors.
    Required(Anchors),
}

/// The TLS listener's configuration: our identity, and what we ask of clients.
pub fn server_config(
    identity: &Identity,
    clients: &ClientAuth,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Build(e.to_string()))?;
    let builder = match clients {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(anchors) | ClientAuth::Required(anchors) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(anchors.store.clone(), provider);
            let verifier = match clients {
                ClientAuth::Optional(_) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| TlsError::BadAnchors {
                path: anchors.file.clone(),
                message: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| TlsError::KeyMismatch {
            certificate: identity.certificate_file.clone(),
            key: identity.key_file.clone(),
            message: e.to_string(),
        })?;
    Ok(Arc::new(config))
}

/// How a destination's certificate is checked.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerCheck {
    /// It must chain to these anchors and name the host we connect to (or `server_name`).
    Hostname(Anchors),
    /// It must be exactly this certificate (SHA-256 of its DER, lower-case hex) and be within
    /// its validity period; chain and name are not checked.
    Pinned(String),
}

/// A TLS client configuration for a destination.
pub fn client_config(
    check: &ServerCheck,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| TlsError::Build(e.to_string()))?;
    let builder = match check {
        ServerCheck::Hostname(anchors) => builder.with_root_certificates(anchors.store.clone()),
        ServerCheck::Pinned(sha256) => {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                    sha256: sha256.clone(),
                    provider,
                }))
        }
    };
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .map_err(|e| TlsError::KeyMismatch {
                certificate: id.certificate_file.clone(),
                key: id.key_file.clone(),
                message: e.to_string(),
            })?,
    };
    Ok(Arc::new(config))
}

/// The server name to verify for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host:?}: {e}"))
}

/// Accepts exactly one certificate, by fingerprint, while it is valid; handshake signatures are
/// verified as usual.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError;
        let info = CertificateInfo::of(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if info.sha256 != self.sha256 {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        let now = now.as_secs() as i64;
        if now > info.not_after {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
        }
        if now < info.not_before {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The end-entity certificate a peer presented, when it presented one we could read.
pub fn peer_certificate(certs: Option<&[CertificateDer<'_>]>) -> Option<CertificateInfo> {
    certs
        .and_then(|c| c.first())
        .and_then(|der| CertificateInfo::of(der).ok())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn fingerprints_take_colons_and_any_case() {
        let colons = (0..32).map(|_| "AB").collect::<Vec<_>>().join(":");
        assert_eq!(parse_sha256(&colons).unwrap(), "ab".repeat(32));
        assert!(parse_sha256("abcd").is_err());
        assert!(parse_sha256(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn the_provider_offers_only_bcp195_suites() {
        let names: Vec<String> = provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.contains("GCM") || n.starts_with("TLS13_"))
        );
        assert!(!names.iter().any(|n| n.contains("CBC")));
        assert_eq!(names.len(), 7);
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = Anchors::load(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not pem").unwrap();
        let e = Anchors::load(&empty).unwrap_err().to_string();
        assert!(
            e.contains("empty.pem") && e.contains("no usable PEM certificate"),
            "{e}"
        );
    }
}

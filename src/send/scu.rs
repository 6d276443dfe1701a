//! Send stage (… → report → **send**): a C-STORE SCU that delivers one Part 10 object to one
//! destination over one association, and says in a typed outcome whether a retry could help.
//!
//! It proposes Explicit VR Little Endian then Implicit VR Little Endian for the object's SOP class
//! and encodes the data set in whichever the peer accepted. Every network step has a timeout
//! (dicom-ul's async client has none by default) and the socket has `TCP_NODELAY`. A destination
//! with `tls = true` is reached over DICOM TLS (PS3.15 Annex B, BCP 195 profile): its certificate
//! is checked against its CA file and name, or its pinned fingerprint; a failed handshake is a
//! retryable [`SendError::Tls`] saying why.

use std::path::Path;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR, dicom_value};
use dicom_dictionary_std::tags;
use dicom_object::file::ReadPreamble;
use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use dicom_ul::association::client::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{
    AssociationRJResult, PDataValue, PDataValueType, Pdu, PresentationContextResultReason,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::config::Destination;
use crate::dicom::dimse::{command_field, status};
use crate::dicom::text::trim_padding;

/// Network settings of the SCU.
#[derive(Debug, Clone)]
pub struct ScuOptions {
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read or write: negotiation, the data set, the response, the release.
    pub dimse_timeout: Duration,
    /// Largest PDU we accept from the peer.
    pub max_pdu_length: u32,
}

impl Default for ScuOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            dimse_timeout: Duration::from_secs(60),
            max_pdu_length: 131_072,
        }
    }
}

impl ScuOptions {
    /// An upper bound of one whole [`store`]: connect, negotiate, command, data, response,
    /// release. The outbox holds its lease longer than this.
    pub fn worst_case(&self) -> Duration {
        self.connect_timeout + self.dimse_timeout * 5
    }
}

/// The peer stored the object: status Success (0000) or a Warning (0001, 0107, 0116, Bxxx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// The C-STORE response status.
    pub status: u16,
    /// The peer's Error Comment, if any.
    pub comment: Option<String>,
    /// The transfer syntax the data set was sent in.
    pub transfer_syntax_uid: String,
}

impl Delivered {
    /// Whether the peer stored it with a warning (still delivered).
    pub fn is_warning(&self) -> bool {
        self.status != status::SUCCESS
    }
}

/// Why an object was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The object lacks a UID the C-STORE request needs.
    #[error("the object has no {0}")]
    MissingUid(&'static str),
    /// The object could not be read or encoded (our side).
    #[error("cannot read or encode the object: {0}")]
    Encode(String),
    /// Nothing accepted the TCP connection, or it could not be made in time.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// What the system said.
        message: String,
    },
    /// The TLS handshake failed: the destination's certificate did not verify, it asked for a
    /// client certificate we do not have, or it does not speak TLS on that port.
    #[error("TLS with {addr} failed: {message}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// What rustls said.
        message: String,
    },
    /// The peer rejected the association.
    #[error("association rejected ({}): {reason}", permanence(*.permanent))]
    Rejected {
        /// Rejected-permanent (a retry will meet the same answer until someone reconfigures).
        permanent: bool,
        /// Source and reason as the peer gave them.
        reason: String,
    },
    /// The peer accepted the association but neither syntax for the SOP class.
    #[error("the peer accepted no presentation context for SOP class {sop_class_uid}")]
    NoPresentationContext {
        /// The object's SOP class.
        sop_class_uid: String,
    },
    /// The peer answered the C-STORE with a failure status.
    #[error("C-STORE failed with status {status:#06X}{}", suffix(.comment))]
    Failure {
        /// The status (Axxx, Cxxx, 01xx, 02xx…).
        status: u16,
        /// The peer's Error Comment, if any.
        comment: Option<String>,
    },
    /// A step took longer than its timeout.
    #[error("timed out while {0}")]
    Timeout(&'static str),
    /// The peer aborted the association.
    #[error("the peer aborted the association")]
    Aborted,
    /// Any other network or protocol failure.
    #[error("association failed while {step}: {message}")]
    Association {
        /// What we were doing.
        step: &'static str,
        /// The error.
        message: String,
    },
}

fn permanence(permanent: bool) -> &'static str {
    if permanent { "permanent" } else { "transient" }
}

fn suffix(comment: &Option<String>) -> String {
    comment
        .as_deref()
        .map(|c| format!(": {c}"))
        .unwrap_or_default()
}

impl SendError {
    /// Whether sending the same object later could succeed without anyone changing anything:
    /// false for our own errors, a permanent rejection, an unsupported SOP class, and the
    /// failure statuses that describe the object (0122, 0124, A9xx); true otherwise.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::MissingUid(_) | Self::Encode(_) | Self::NoPresentationContext { .. } => false,
            Self::Rejected { permanent, .. } => !permanent,
            Self::Failure { status, .. } => !matches!(status, 0x0122 | 0x0124 | 0xA900..=0xA9FF),
            Self::Connect { .. }
            | Self::Tls { .. }
            | Self::Timeout(_)
            | Self::Aborted
            | Self::Association { .. } => true,
        }
    }

    /// The DIMSE status the peer answered, when it answered one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Failure { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Whether a C-STORE response status means "stored" (Success or Warning, PS3.7 C.1).
pub fn is_delivered(status: u16) -> bool {
    matches!(status, 0x0000 | 0x0001 | 0x0107 | 0x0116 | 0xB000..=0xBFFF)
}

/// Read a Part 10 file and send it.
pub async fn store_file(
    dest: &Destination,
    path: &Path,
    opts: &ScuOptions,
) -> Result<Delivered, SendError> {
    let path = path.to_path_buf();
    let file = tokio::task::spawn_blocking(move || {
        OpenFileOptions::new()
            .open_file(&path)
            .map_err(|e| SendError::Encode(format!("{}: {e}", path.display())))
    })
    .await
    .map_err(|e| SendError::Encode(e.to_string()))??;
    store(dest, &file, opts).await
}

/// Parse Part 10 bytes (with the 128-byte preamble) and send them.
pub async fn store_bytes(
    dest: &Destination,
    bytes: &[u8],
    opts: &ScuOptions,
) -> Result<Delivered, SendError> {
    let file = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Always)
        .from_reader(bytes)
        .map_err(|e| SendError::Encode(e.to_string()))?;
    store(dest, &file, opts).await
}

/// Send one object to `dest` over a new association, then release it.
pub async fn store(
    dest: &Destination,
    file: &FileDicomObject<InMemDicomObject>,
    opts: &ScuOptions,
) -> Result<Delivered, SendError> {
    let sop_class_uid = uid_of(file, tags::SOP_CLASS_UID, "SOP Class UID")?;
    let sop_instance_uid = uid_of(file, tags::SOP_INSTANCE_UID, "SOP Instance UID")?;
    let options = association_options(dest, &sop_class_uid, opts);
    let addr = format!("{}:{}", dest.host, dest.port);
    // the connect has its own timeout; this bounds the handshake and the negotiation too
    let deadline = opts.connect_timeout + opts.dimse_timeout * 2;
    let uids = (sop_class_uid.as_str(), sop_instance_uid.as_str());
    match &dest.tls {
        None => {
            let establishing = options.establish_async(addr.as_str());
            let mut assoc = within(deadline, establishing, &addr, uids.0, false).await?;
            nodelay(assoc.inner_stream());
            deliver(assoc, dest, file, uids, opts).await
        }
        Some(tls) => {
            let options = options
                .tls_config(tls.client.clone())
                .server_name(&tls.server_name);
            let establishing = options.establish_tls_async(addr.as_str());
            let mut assoc = within(deadline, establishing, &addr, uids.0, true).await?;
            nodelay(assoc.inner_stream().get_ref().0);
            deliver(assoc, dest, file, uids, opts).await
        }
    }
}

/// An association being established, within `deadline`; its failure as a [`SendError`].
async fn within<S>(
    deadline: Duration,
    establishing: impl std::future::Future<
        Output = Result<AsyncClientAssociation<S>, dicom_ul::association::Error>,
    >,
    addr: &str,
    sop_class_uid: &str,
    tls: bool,
) -> Result<AsyncClientAssociation<S>, SendError> {
    tokio::time::timeout(deadline, establishing)
        .await
        .map_err(|_| SendError::Timeout("associating"))?
        .map_err(|e| association_error(e, addr, sop_class_uid, tls))
}

fn nodelay(socket: &tokio::net::TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

/// The C-STORE on an established association, then its release (or abort on failure).
async fn deliver<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut assoc: AsyncClientAssociation<S>,
    dest: &Destination,
    file: &FileDicomObject<InMemDicomObject>,
    (sop_class_uid, sop_instance_uid): (&str, &str),
    opts: &ScuOptions,
) -> Result<Delivered, SendError> {
    let result = exchange(&mut assoc, file, sop_class_uid, sop_instance_uid, opts).await;
    match &result {
        Ok(_) | Err(SendError::Failure { .. }) => {
            // the answer is in; a failed release changes nothing about it
            if let Err(e) = with_timeout(opts.dimse_timeout, "releasing", assoc.release()).await {
                tracing::debug!(error = %e, destination = %dest.name, "release failed");
            }
        }
        Err(_) => {
            let _ = tokio::time::timeout(opts.dimse_timeout, assoc.abort()).await;
        }
    }
    result
}

fn association_options<'a>(
    dest: &'a Destination,
    sop_class_uid: &'a str,
    opts: &ScuOptions,
) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(dest.calling_ae_title.as_str())
        .called_ae_title(dest.ae_title.as_str())
        .with_presentation_context(
            sop_class_uid,
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.uid(),
                IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            ],
        )
        .max_pdu_length(opts.max_pdu_length)
        .connection_timeout(opts.connect_timeout)
        .read_timeout(opts.dimse_timeout)
        .write_timeout(opts.dimse_timeout)
}

/// `tls`: the association was to start with a TLS handshake, whose failures tokio-rustls
/// reports as I/O errors of kind `InvalidData` (a certificate or protocol problem) or
/// `UnexpectedEof` (the peer hung up: it does not speak TLS, or refused our certificate).
fn association_error(
    e: dicom_ul::association::Error,
    addr: &str,
    sop_class: &str,
    tls: bool,
) -> SendError {
    use dicom_ul::association::Error as E;
    use std::io::ErrorKind;
    match e {
        E::TlsHandshake { source, .. } => SendError::Tls {
            addr: addr.to_string(),
            message: format!(
                "the handshake ended early ({source}): the peer may not speak TLS on this port, or refused our certificate"
            ),
        },
        E::Connect { source, .. }
            if tls
                && matches!(
                    source.kind(),
                    ErrorKind::InvalidData | ErrorKind::ConnectionReset
                ) =>
        {
            SendError::Tls {
                addr: addr.to_string(),
                message: source.to_string(),
            }
        }
        // TLS 1.3: the handshake completes on our side before the peer checks our certificate;
        // its refusal (an alert) arrives as the answer to the A-ASSOCIATE-RQ
        other if tls && other.to_string().contains("TLS") => SendError::Tls {
            addr: addr.to_string(),
            message: format!(
                "the peer ended the TLS session while associating ({other}): it may require a \
                 client certificate we did not present, or refuse ours"
            ),
        },
        E::Connect { source, .. } | E::ToAddress { source, .. } => SendError::Connect {
            addr: addr.to_string(),
            message: source.to_string(),
        },
        E::Timeout { .. } => SendError::Timeout("associating"),
        E::Rejected { association_rj, .. } => SendError::Rejected {
            permanent: association_rj.result == AssociationRJResult::Permanent,
            reason: association_rj.source.to_string(),
        },
        E::NoAcceptedPresentationContexts { .. } => SendError::NoPresentationContext {
            sop_class_uid: sop_class.to_string(),
        },
        E::Aborted { .. } => SendError::Aborted,
        other => SendError::Association {
            step: "associating",
            message: other.to_string(),
        },
    }
}

/// Command, data set, response on an established association.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send>(
    assoc: &mut AsyncClientAssociation<S>,
    file: &FileDicomObject<InMemDicomObject>,
    sop_class_uid: &str,
    sop_instance_uid: &str,
    opts: &ScuOptions,
) -> Result<Delivered, SendError> {
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| {
            pc.reason == PresentationContextResultReason::Acceptance
                && trim_padding(&pc.abstract_syntax) == sop_class_uid
        })
        .ok_or_else(|| SendError::NoPresentationContext {
            sop_class_uid: sop_class_uid.to_string(),
        })?;
    let pc_id = pc.id;
    let ts_uid = trim_padding(&pc.transfer_syntax).to_string();
    let ts = if ts_uid == IMPLICIT_VR_LITTLE_ENDIAN.uid() {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    } else if ts_uid == EXPLICIT_VR_LITTLE_ENDIAN.uid() {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        return Err(SendError::Association {
            step: "negotiating",
            message: format!("the peer chose transfer syntax {ts_uid}, which was not proposed"),
        });
    };
    let mut data = Vec::with_capacity(64 * 1024);
    file.write_dataset_with_ts(&mut data, &ts)
        .map_err(|e| SendError::Encode(e.to_string()))?;
    let command = store_request(1, sop_class_uid, sop_instance_uid)?;
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data: command,
        }],
    };
    with_timeout(opts.dimse_timeout, "sending the command", assoc.send(&pdu)).await?;
    let write_data = async {
        let mut writer = assoc.send_pdata(pc_id);
        writer.write_all(&data).await?;
        writer.finish().await
    };
    tokio::time::timeout(opts.dimse_timeout, write_data)
        .await
        .map_err(|_| SendError::Timeout("sending the data set"))?
        .map_err(|e| SendError::Association {
            step: "sending the data set",
            message: e.to_string(),
        })?;
    let (status, comment) = read_response(assoc, opts).await?;
    if is_delivered(status) {
        Ok(Delivered {
            status,
            comment,
            transfer_syntax_uid: ts_uid,
        })
    } else {
        Err(SendError::Failure { status, comment })
    }
}

async fn read_response<S: AsyncRead + AsyncWrite + Unpin + Send>(
    assoc: &mut AsyncClientAssociation<S>,
    opts: &ScuOptions,
) -> Result<(u16, Option<String>), SendError> {
    let mut command = Vec::new();
    loop {
        let pdu = with_timeout(
            opts.dimse_timeout,
            "waiting for the response",
            assoc.receive(),
        )
        .await?;
        match pdu {
            Pdu::PData { data } => {
                for value in data {
                    if value.value_type != PDataValueType::Command {
                        continue;
                    }
                    command.extend_from_slice(&value.data);
                    if value.is_last {
                        return parse_response(&command);
                    }
                }
            }
            Pdu::AbortRQ { .. } => return Err(SendError::Aborted),
            other => {
                return Err(SendError::Association {
                    step: "waiting for the response",
                    message: format!("unexpected PDU {}", other.short_description()),
                });
            }
        }
    }
}

fn parse_response(bytes: &[u8]) -> Result<(u16, Option<String>), SendError> {
    let bad = |message: String| SendError::Association {
        step: "reading the response",
        message,
    };
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| bad(e.to_string()))?;
    let field = obj
        .element(tags::COMMAND_FIELD)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok());
    if field != Some(command_field::C_STORE_RSP) {
        return Err(bad(format!(
            "expected a C-STORE-RSP, got command {field:?}"
        )));
    }
    let status = obj
        .element(tags::STATUS)
        .ok()
        .and_then(|e| e.to_int::<u16>().ok())
        .ok_or_else(|| bad("the response has no Status".into()))?;
    let comment = obj
        .element(tags::ERROR_COMMENT)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| trim_padding(&s).to_string())
        .filter(|s| !s.is_empty());
    Ok((status, comment))
}

/// A C-STORE-RQ command set (Implicit VR Little Endian, with its group length).
fn store_request(
    message_id: u16,
    sop_class_uid: &str,
    sop_instance_uid: &str,
) -> Result<Vec<u8>, SendError> {
    let elements = vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class_uid),
        ),
        DataElement::new(
            tags::COMMAND_FIELD,
            VR::US,
            dicom_value!(U16, [command_field::C_STORE_RQ]),
        ),
        DataElement::new(tags::MESSAGE_ID, VR::US, dicom_value!(U16, [message_id])),
        // medium
        DataElement::new(tags::PRIORITY, VR::US, dicom_value!(U16, [0])),
        // a data set follows
        DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, dicom_value!(U16, [0])),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance_uid),
        ),
    ];
    let obj = InMemDicomObject::command_from_element_iter(elements);
    let mut out = Vec::with_capacity(256);
    obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| SendError::Encode(e.to_string()))?;
    Ok(out)
}

fn uid_of(
    file: &FileDicomObject<InMemDicomObject>,
    tag: dicom_core::Tag,
    name: &'static str,
) -> Result<String, SendError> {
    file.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| trim_padding(&s).to_string())
        .filter(|s| !s.is_empty())
        .ok_or(SendError::MissingUid(name))
}

async fn with_timeout<T>(
    limit: Duration,
    step: &'static str,
    fut: impl Future<Output = Result<T, dicom_ul::association::Error>>,
) -> Result<T, SendError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(SendError::Timeout(step)),
        Ok(Ok(v)) => Ok(v),
        Ok(Err(dicom_ul::association::Error::Timeout { .. })) => Err(SendError::Timeout(step)),
        Ok(Err(dicom_ul::association::Error::Aborted { .. })) => Err(SendError::Aborted),
        Ok(Err(e)) => Err(SendError::Association {
            step,
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        for s in [0x0000, 0x0001, 0x0107, 0x0116, 0xB000, 0xB007] {
            assert!(is_delivered(s), "{s:#06x}");
        }
        for s in [0xA700, 0xA900, 0xC000, 0x0122, 0x0211, 0xFF00] {
            assert!(!is_delivered(s), "{s:#06x}");
        }
        let f = |status| SendError::Failure {
            status,
            comment: None,
        };
        assert!(f(0xA700).is_retryable());
        assert!(f(0xC000).is_retryable());
        assert!(!f(0x0122).is_retryable());
        assert!(!f(0xA900).is_retryable());
        assert!(
            !SendError::Rejected {
                permanent: true,
                reason: String::new()
            }
            .is_retryable()
        );
        assert!(
            SendError::Rejected {
                permanent: false,
                reason: String::new()
            }
            .is_retryable()
        );
        assert_eq!(f(0xA700).to_string(), "C-STORE failed with status 0xA700");
    }

    #[test]
    fn store_request_is_a_c_store_command() {
        let bytes = store_request(7, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.4").unwrap();
        let cmd = crate::dicom::dimse::Command::parse(&bytes).unwrap();
        assert_eq!(cmd.field, command_field::C_STORE_RQ);
        assert_eq!(cmd.message_id, 7);
        assert!(cmd.has_data_set);
        assert_eq!(cmd.affected_sop_instance_uid.as_deref(), Some("1.2.3.4"));
        assert_eq!(
            cmd.affected_sop_class_uid.as_deref(),
            Some("1.2.840.10008.5.1.4.1.1.88.34")
        );
    }
}

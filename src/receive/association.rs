//! One association: negotiation (called AE, calling-AE allow-list, SOP classes, transfer
//! syntaxes), then the DIMSE loop. A peer's bad input is answered with a status and the
//! association goes on; a protocol violation aborts this association only.
//!
//! Generic over the byte stream (TCP today, TLS later). The A-ASSOCIATE-RQ is read by the caller
//! (see [`super::run`]), which decides on capacity before anything is accepted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dicom_dictionary_std::uids;
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationAC, AssociationRJ, AssociationRJResult,
    AssociationRJServiceUserReason, AssociationRJSource, AssociationRQ, PDataValue, PDataValueType,
    Pdu, PresentationContextResult, PresentationContextResultReason, UserVariableItem,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{ScpSettings, ScpStats};
use crate::dicom::ae::{AeTitle, AllowedPeer, canonical_ip};
use crate::dicom::dimse::{Command, MAX_COMMAND_BYTES, Response, command_field, status};
use crate::dicom::header::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};
use crate::dicom::pdu::{PduError, PduStream};
use crate::dicom::sop_classes;
use crate::dicom::text::trim_value_lenient;
use crate::ingest::budget::MemoryBudget;
use crate::ingest::{DataSink, Outcome, Received, Refusal, StoreHandler, Transfer};
use crate::tls::CertificateInfo;

/// Instances of one association named in its audit message; a longer association is audited
/// for its first ones (a bound on what a peer can make us hold).
const MAX_AUDITED_INSTANCES: usize = 100_000;

/// The DICOM application context (PS3.7 A.2.1).
const APPLICATION_CONTEXT: &str = "1.2.840.10008.3.1.1.1";

/// A presentation context as negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub id: u8,
    pub abstract_syntax: String,
    pub transfer_syntax: String,
    pub accepted: bool,
}

/// What negotiation agreed.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// The calling AE title, trimmed.
    pub calling_ae: String,
    pub contexts: Vec<Context>,
    /// The largest P-DATA-TF PDU the requester takes (0: no limit).
    pub peer_max_pdu: u32,
}

fn rejected_by_user(reason: AssociationRJServiceUserReason) -> AssociationRJ {
    AssociationRJ {
        result: AssociationRJResult::Permanent,
        source: AssociationRJSource::ServiceUser(reason),
    }
}

/// Whether `calling` (from `ip`) may associate: always when the allow-list is empty.
fn admitted(allowed: &[AllowedPeer], calling: &str, ip: IpAddr) -> bool {
    allowed.is_empty() || allowed.iter().any(|p| p.admits(calling, canonical_ip(ip)))
}

/// Whether the binding of `calling` to a certificate name, if it has one, holds.
fn certificate_matches(
    bindings: &[(AeTitle, String)],
    calling: &str,
    certificate: Option<&CertificateInfo>,
) -> bool {
    let Some((_, name)) = bindings.iter().find(|(ae, _)| ae.as_str() == calling) else {
        return true;
    };
    let holds = certificate.is_some_and(|c| c.has_name(name));
    if !holds {
        tracing::warn!(
            calling_ae = calling,
            bound_to = %name,
            client_certificate = ?certificate.map(|c| (&c.subject, &c.names)),
            "calling AE title is bound to a certificate name the client did not present"
        );
    }
    holds
}

/// Answer an A-ASSOCIATE-RQ: the A-ASSOCIATE-AC with the outcome of every presentation context,
/// or the permanent rejection (wrong called AE, calling AE not on the allow-list, unsupported
/// protocol version or application context). Each presentation context takes the first
/// transfer syntax of the requester's list that we accept.
///
/// A calling AE title bound to a certificate name (`dicom.tls.certificate_names`) is admitted
/// only with a client `certificate` carrying that name: over TLS, from a client whose
/// certificate the handshake verified.
pub fn negotiate(
    rq: &AssociationRQ,
    settings: &ScpSettings,
    peer: IpAddr,
    certificate: Option<&CertificateInfo>,
) -> Result<(AssociationAC, Negotiated), AssociationRJ> {
    if rq.protocol_version & 1 == 0 {
        return Err(rejected_by_user(
            AssociationRJServiceUserReason::NoReasonGiven,
        ));
    }
    if trim_value_lenient(&rq.application_context_name) != APPLICATION_CONTEXT {
        return Err(rejected_by_user(
            AssociationRJServiceUserReason::ApplicationContextNameNotSupported,
        ));
    }
    if trim_value_lenient(&rq.called_ae_title) != settings.ae_title.as_str() {
        return Err(rejected_by_user(
            AssociationRJServiceUserReason::CalledAETitleNotRecognized,
        ));
    }
    let calling_ae = trim_value_lenient(&rq.calling_ae_title).to_string();
    if !admitted(&settings.allowed, &calling_ae, peer)
        || !certificate_matches(&settings.certificate_names, &calling_ae, certificate)
    {
        return Err(rejected_by_user(
            AssociationRJServiceUserReason::CallingAETitleNotRecognized,
        ));
    }
    let contexts: Vec<Context> = rq
        .presentation_contexts
        .iter()
        .map(|pc| {
            let abstract_syntax = trim_value_lenient(&pc.abstract_syntax).to_string();
            let offered = abstract_syntax == uids::VERIFICATION
                || settings.accepted_sop_classes.contains(&abstract_syntax);
            let chosen = pc
                .transfer_syntaxes
                .iter()
                .map(|ts| trim_value_lenient(ts))
                .find(|ts| sop_classes::is_accepted_transfer_syntax(ts));
            Context {
                id: pc.id,
                abstract_syntax,
                transfer_syntax: chosen
                    .unwrap_or(uids::IMPLICIT_VR_LITTLE_ENDIAN)
                    .to_string(),
                accepted: offered && chosen.is_some(),
            }
        })
        .collect();
    let results = rq
        .presentation_contexts
        .iter()
        .zip(&contexts)
        .map(|(pc, c)| {
            let offered = c.abstract_syntax == uids::VERIFICATION
                || settings.accepted_sop_classes.contains(&c.abstract_syntax);
            let reason = if c.accepted {
                PresentationContextResultReason::Acceptance
            } else if !offered {
                PresentationContextResultReason::AbstractSyntaxNotSupported
            } else {
                PresentationContextResultReason::TransferSyntaxesNotSupported
            };
            PresentationContextResult {
                id: pc.id,
                reason,
                transfer_syntax: c.transfer_syntax.clone(),
            }
        })
        .collect();
    let peer_max_pdu = rq
        .user_variables
        .iter()
        .find_map(|v| match v {
            UserVariableItem::MaxLength(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(dicom_ul::pdu::DEFAULT_MAX_PDU);
    let ac = AssociationAC {
        protocol_version: 1,
        calling_ae_title: rq.calling_ae_title.clone(),
        called_ae_title: rq.called_ae_title.clone(),
        application_context_name: APPLICATION_CONTEXT.to_string(),
        presentation_contexts: results,
        user_variables: vec![
            UserVariableItem::MaxLength(settings.max_pdu_length),
            UserVariableItem::ImplementationClassUID(IMPLEMENTATION_CLASS_UID.to_string()),
            UserVariableItem::ImplementationVersionName(IMPLEMENTATION_VERSION_NAME.to_string()),
        ],
    };
    Ok((
        ac,
        Negotiated {
            calling_ae,
            contexts,
            peer_max_pdu,
        },
    ))
}

/// What serving an association works with.
pub struct Env<'a, H> {
    pub peer: SocketAddr,
    pub settings: &'a ScpSettings,
    pub handler: &'a H,
    pub stats: &'a ScpStats,
    pub budget: &'a Arc<MemoryBudget>,
    pub shutdown: &'a CancellationToken,
}

/// Serve an association that was just accepted (its A-ASSOCIATE-AC sent) until release, abort,
/// error or shutdown.
pub async fn serve<S, H>(pdus: &mut PduStream<S>, negotiated: Negotiated, env: Env<'_, H>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: StoreHandler,
{
    let Env {
        peer,
        settings,
        handler,
        stats,
        budget,
        shutdown,
    } = env;
    let accepted = negotiated.contexts.iter().filter(|c| c.accepted).count();
    tracing::info!(accepted_contexts = accepted, "association established");
    let mut session = Session {
        peer,
        calling_ae: negotiated.calling_ae.clone(),
        called_ae: settings.ae_title.as_str().to_string(),
        max_dataset_bytes: settings.max_dataset_bytes,
        max_pdu: settings.max_pdu_length,
        patience: settings.read_timeout,
        negotiated,
        message: None,
        stored: 0,
        stored_uids: Vec::new(),
        stats,
        budget,
    };
    let end = session.run(pdus, handler, shutdown).await;
    let stored = session.stored;
    handler.association_ended(Transfer {
        peer,
        calling_ae_title: session.calling_ae.clone(),
        called_ae_title: session.called_ae.clone(),
        instances: std::mem::take(&mut session.stored_uids),
    });
    match end {
        End::Released => {
            let _ = pdus.write(&Pdu::ReleaseRP).await;
            tracing::info!(stored, "association released");
        }
        End::PeerAborted => tracing::warn!(stored, "association aborted by peer"),
        End::Abort(reason) => {
            tracing::warn!(stored, %reason, "aborting association");
            let abort = Pdu::AbortRQ {
                source: AbortRQSource::ServiceProvider(
                    AbortRQServiceProviderReason::ReasonNotSpecified,
                ),
            };
            let _ = pdus.write(&abort).await;
        }
        End::Closed(reason) => tracing::info!(stored, %reason, "association closed"),
    }
    pdus.shutdown().await;
}

/// How an association ended.
enum End {
    Released,
    PeerAborted,
    /// We abort: protocol violation or shutdown while idle.
    Abort(String),
    /// The connection failed or timed out.
    Closed(String),
}

/// A DIMSE message being assembled from P-DATA fragments.
struct Message<S> {
    pc_id: u8,
    command_bytes: Vec<u8>,
    command: Option<Command>,
    /// Where the data set's fragments go (from [`StoreHandler::begin`]).
    sink: Option<S>,
    /// Data set bytes received so far.
    received: usize,
    /// The data set exceeded the size cap: its fragments are drained, not kept.
    oversize: bool,
    /// The memory budget could not hold a fragment: the rest is drained, not kept.
    over_budget: bool,
}

struct Session<'a, S> {
    peer: SocketAddr,
    calling_ae: String,
    called_ae: String,
    max_dataset_bytes: usize,
    max_pdu: u32,
    /// How long a fragment may wait for memory before its data set is refused.
    patience: std::time::Duration,
    negotiated: Negotiated,
    message: Option<Message<S>>,
    stored: u64,
    /// The SOP Instance UIDs stored, for the audit trail (at most [`MAX_AUDITED_INSTANCES`]).
    stored_uids: Vec<String>,
    stats: &'a ScpStats,
    budget: &'a Arc<MemoryBudget>,
}

impl<K: DataSink> Session<'_, K> {
    async fn run<S, H>(
        &mut self,
        pdus: &mut PduStream<S>,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin,
        H: StoreHandler<Sink = K>,
    {
        loop {
            // Only an idle association (no message half received) is cut by shutdown:
            // a C-STORE in flight completes and is answered first.
            let pdu = if self.message.is_none() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return End::Abort("shutting down".into()),
                    pdu = pdus.read(self.max_pdu) => pdu,
                }
            } else {
                pdus.read(self.max_pdu).await
            };
            let pdu = match pdu {
                Ok(pdu) => pdu,
                Err(e @ (PduError::TooLarge { .. } | PduError::Malformed { .. })) => {
                    return End::Abort(e.to_string());
                }
                Err(e) => return End::Closed(e.to_string()),
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        if let Err(end) = self.on_pdata(value, pdus, handler).await {
                            return end;
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    if self.message.is_some() {
                        return End::Abort("release requested in the middle of a message".into());
                    }
                    return End::Released;
                }
                Pdu::AbortRQ { source } => {
                    tracing::debug!(?source, "peer abort");
                    return End::PeerAborted;
                }
                other => {
                    return End::Abort(format!("unexpected PDU {}", pdu_name(&other)));
                }
            }
        }
    }

    async fn on_pdata<S, H>(
        &mut self,
        value: PDataValue,
        pdus: &mut PduStream<S>,
        handler: &H,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        H: StoreHandler<Sink = K>,
    {
        let Some(pc) = self
            .negotiated
            .contexts
            .iter()
            .find(|c| c.id == value.presentation_context_id && c.accepted)
        else {
            return Err(End::Abort(format!(
                "P-DATA on presentation context {} which was not accepted",
                value.presentation_context_id
            )));
        };
        let transfer_syntax = pc.transfer_syntax.clone();
        let abstract_syntax = pc.abstract_syntax.clone();
        let message = self.message.get_or_insert_with(|| Message {
            pc_id: value.presentation_context_id,
            command_bytes: Vec::new(),
            command: None,
            sink: None,
            received: 0,
            oversize: false,
            over_budget: false,
        });
        if message.pc_id != value.presentation_context_id {
            return Err(End::Abort(
                "message fragments on two presentation contexts".into(),
            ));
        }
        match value.value_type {
            PDataValueType::Command => {
                if message.command.is_some() {
                    return Err(End::Abort(
                        "command fragment after a complete command".into(),
                    ));
                }
                if message.command_bytes.len() + value.data.len() > MAX_COMMAND_BYTES {
                    return Err(End::Abort("command set too large".into()));
                }
                message.command_bytes.extend_from_slice(&value.data);
                if !value.is_last {
                    return Ok(());
                }
                let command = Command::parse(&message.command_bytes)
                    .map_err(|e| End::Abort(format!("unreadable command: {e}")))?;
                if command.has_data_set {
                    if command.field == command_field::C_STORE_RQ {
                        let received = received(
                            &command,
                            &transfer_syntax,
                            (&self.calling_ae, &self.called_ae),
                            self.peer,
                        );
                        message.sink = Some(handler.begin(&received));
                    }
                    message.command = Some(command);
                    return Ok(());
                }
                self.message = None;
                let response = self.answer_command(&command, &abstract_syntax);
                send_response(
                    pdus,
                    &self.negotiated,
                    value.presentation_context_id,
                    &response,
                )
                .await
            }
            PDataValueType::Data => {
                let Some(command) = message.command.clone() else {
                    return Err(End::Abort("data set fragment before its command".into()));
                };
                message.received = message.received.saturating_add(value.data.len());
                if message.received > self.max_dataset_bytes {
                    // abandon what was kept; drain the rest
                    message.oversize = true;
                    message.sink = None;
                } else if message.sink.is_some() {
                    match self.budget.take(value.data.len(), self.patience).await {
                        Some(grant) => {
                            if let Some(sink) = message.sink.as_mut() {
                                sink.push(value.data, grant).await;
                            }
                        }
                        None => {
                            message.over_budget = true;
                            message.sink = None;
                        }
                    }
                }
                if !value.is_last {
                    return Ok(());
                }
                let Some(message) = self.message.take() else {
                    return Ok(());
                };
                // one span per C-STORE: its events (here and in ingest) carry the instance
                let span = tracing::info_span!(
                    "c_store",
                    sop_instance_uid = command.affected_sop_instance_uid.as_deref().unwrap_or(""),
                    message_id = command.message_id,
                );
                let response = self
                    .answer_store(command, message, transfer_syntax, &abstract_syntax, handler)
                    .instrument(span)
                    .await;
                send_response(
                    pdus,
                    &self.negotiated,
                    value.presentation_context_id,
                    &response,
                )
                .await
            }
        }
    }

    /// A command without a data set: C-ECHO, or something we do not offer.
    fn answer_command(&self, command: &Command, abstract_syntax: &str) -> Response {
        if command.field == command_field::C_ECHO_RQ && abstract_syntax == uids::VERIFICATION {
            tracing::debug!("C-ECHO");
            return Response::to(command, status::SUCCESS);
        }
        Response::to(command, status::UNRECOGNIZED_OPERATION)
            .with_comment("only C-ECHO and C-STORE are supported")
    }

    async fn answer_store<H: StoreHandler<Sink = K>>(
        &mut self,
        command: Command,
        message: Message<K>,
        transfer_syntax: String,
        abstract_syntax: &str,
        handler: &H,
    ) -> Response {
        if command.field != command_field::C_STORE_RQ {
            return Response::to(&command, status::UNRECOGNIZED_OPERATION)
                .with_comment("only C-ECHO and C-STORE are supported");
        }
        let sop_class = command.affected_sop_class_uid.clone().unwrap_or_default();
        if sop_class != abstract_syntax {
            return Response::to(&command, status::SOP_CLASS_NOT_SUPPORTED).with_comment(
                "Affected SOP Class UID differs from the presentation context's abstract syntax",
            );
        }
        if message.oversize {
            self.stats
                .instances_oversize
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                max_bytes = self.max_dataset_bytes,
                "data set over the size limit: refused"
            );
            return Response::to(&command, status::OUT_OF_RESOURCES).with_comment(&format!(
                "data set exceeds the {} MiB limit",
                self.max_dataset_bytes >> 20
            ));
        }
        if message.over_budget {
            self.stats
                .instances_over_budget
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                budget_bytes = self.budget.limit(),
                "receive memory budget exhausted: data set refused"
            );
            return Response::to(&command, status::OUT_OF_RESOURCES)
                .with_comment("receive memory budget exhausted; retry later");
        }
        let Some(sink) = message.sink else {
            return Response::to(&command, status::OUT_OF_RESOURCES)
                .with_comment("data set was not kept");
        };
        let received = received(
            &command,
            &transfer_syntax,
            (&self.calling_ae, &self.called_ae),
            self.peer,
        );
        let sop_instance_uid = received.sop_instance_uid.clone();
        match handler.store(received, sink).await {
            Outcome::Stored | Outcome::Duplicate | Outcome::Restored => {
                self.stored += 1;
                if self.stored_uids.len() < MAX_AUDITED_INSTANCES {
                    self.stored_uids.push(sop_instance_uid);
                }
                Response::to(&command, status::SUCCESS)
            }
            Outcome::Refused { reason, detail } => {
                Response::to(&command, dimse_status(reason)).with_comment(&detail)
            }
        }
    }
}

/// The protocol-neutral description of the instance a C-STORE announces.
fn received(
    command: &Command,
    transfer_syntax: &str,
    (calling, called): (&str, &str),
    peer: SocketAddr,
) -> Received {
    Received {
        sop_class_uid: command.affected_sop_class_uid.clone().unwrap_or_default(),
        sop_instance_uid: command
            .affected_sop_instance_uid
            .clone()
            .unwrap_or_default(),
        transfer_syntax: transfer_syntax.to_string(),
        calling_ae_title: calling.to_string(),
        called_ae_title: called.to_string(),
        peer,
    }
}

/// The C-STORE status of a refusal (PS3.4 Annex B).
fn dimse_status(reason: Refusal) -> u16 {
    match reason {
        Refusal::Malformed => status::CANNOT_UNDERSTAND,
        Refusal::Mismatch => status::DATA_SET_MISMATCH,
        Refusal::OverLimit | Refusal::Unavailable => status::OUT_OF_RESOURCES,
    }
}

/// Send a response command set, split into PDUs no larger than the peer takes.
async fn send_response<S: AsyncRead + AsyncWrite + Unpin>(
    pdus: &mut PduStream<S>,
    negotiated: &Negotiated,
    pc_id: u8,
    response: &Response,
) -> Result<(), End> {
    let data = response
        .encode()
        .map_err(|e| End::Abort(format!("cannot encode response: {e}")))?;
    // a PDV item costs 6 bytes (length, context id, control header) inside the PDU
    let room = match negotiated.peer_max_pdu {
        0 => data.len().max(1),
        n => (n as usize).saturating_sub(6).max(1),
    };
    let pieces: Vec<&[u8]> = data.chunks(room).collect();
    let last = pieces.len().saturating_sub(1);
    for (i, piece) in pieces.into_iter().enumerate() {
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: i == last,
                data: piece.to_vec(),
            }],
        };
        pdus.write(&pdu)
            .await
            .map_err(|e| End::Closed(format!("cannot send response: {e}")))?;
    }
    Ok(())
}

fn pdu_name(pdu: &Pdu) -> &'static str {
    match pdu {
        Pdu::Unknown { .. } => "unknown",
        Pdu::AssociationRQ(_) => "A-ASSOCIATE-RQ",
        Pdu::AssociationAC(_) => "A-ASSOCIATE-AC",
        Pdu::AssociationRJ(_) => "A-ASSOCIATE-RJ",
        Pdu::PData { .. } => "P-DATA-TF",
        Pdu::ReleaseRQ => "A-RELEASE-RQ",
        Pdu::ReleaseRP => "A-RELEASE-RP",
        Pdu::AbortRQ { .. } => "A-ABORT",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;
    use dicom_ul::pdu::PresentationContextProposed;

    fn settings(allowed: Vec<AllowedPeer>) -> ScpSettings {
        ScpSettings {
            ae_title: crate::dicom::ae::AeTitle::parse("CXR").unwrap(),
            allowed,
            max_associations: 4,
            max_associations_per_host: 4,
            max_pending_associations: 8,
            max_pending_per_host: 4,
            association_request_timeout: std::time::Duration::from_secs(1),
            max_pdu_length: 16_384,
            read_timeout: std::time::Duration::from_secs(1),
            write_timeout: std::time::Duration::from_secs(1),
            max_dataset_bytes: 1 << 20,
            accepted_sop_classes: vec![uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE.to_string()],
            tls: None,
            certificate_names: vec![],
        }
    }

    fn rq(calling: &str, called: &str) -> AssociationRQ {
        AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: called.into(),
            application_context_name: APPLICATION_CONTEXT.into(),
            presentation_contexts: vec![
                PresentationContextProposed {
                    id: 1,
                    abstract_syntax: uids::COMPUTED_RADIOGRAPHY_IMAGE_STORAGE.into(),
                    transfer_syntaxes: vec![
                        "1.2.840.10008.1.2.4.51".into(),
                        uids::EXPLICIT_VR_LITTLE_ENDIAN.into(),
                    ],
                },
                PresentationContextProposed {
                    id: 3,
                    abstract_syntax: uids::CT_IMAGE_STORAGE.into(),
                    transfer_syntaxes: vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.into()],
                },
            ],
            user_variables: vec![UserVariableItem::MaxLength(32_768)],
        }
    }

    #[test]
    fn negotiation_picks_the_first_accepted_syntax_and_names_refusals() {
        let s = settings(vec![]);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (ac, n) = negotiate(&rq("MOD", "CXR"), &s, ip, None).unwrap();
        assert_eq!(n.peer_max_pdu, 32_768);
        assert_eq!(
            n.contexts[0].transfer_syntax,
            uids::EXPLICIT_VR_LITTLE_ENDIAN
        );
        assert!(n.contexts[0].accepted && !n.contexts[1].accepted);
        assert_eq!(
            ac.presentation_contexts[1].reason,
            PresentationContextResultReason::AbstractSyntaxNotSupported
        );
        let rj = negotiate(&rq("MOD", "OTHER"), &s, ip, None).unwrap_err();
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CalledAETitleNotRecognized
            )
        );
        let allowed = vec![AllowedPeer {
            ae_title: crate::dicom::ae::AeTitle::parse("MOD").unwrap(),
            host: Some("10.0.0.1".parse().unwrap()),
        }];
        let s = settings(allowed);
        let rj = negotiate(&rq("MOD", "CXR"), &s, ip, None).unwrap_err();
        assert_eq!(
            rj.source,
            AssociationRJSource::ServiceUser(
                AssociationRJServiceUserReason::CallingAETitleNotRecognized
            )
        );
        assert!(negotiate(&rq("MOD", "CXR"), &s, "10.0.0.1".parse().unwrap(), None).is_ok());
    }
}

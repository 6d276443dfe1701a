//! One association: negotiation (called AE, calling-AE allow-list, SOP classes, transfer
//! syntaxes), then the DIMSE loop. A peer's bad input is answered with a status and the
//! association goes on; a protocol violation aborts this association only.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use dicom_dictionary_std::uids;
use dicom_ul::ServerAssociationOptions;
use dicom_ul::association::server::AccessControl;
use dicom_ul::association::{Association, AsyncServerAssociation};
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::dimse::{Command, Response, command_field, status};
use super::{DataSink, ScpSettings, ScpStats, StoreHandler, StoreRequest, sop_classes};
use crate::config::{AllowedPeer, canonical_ip};

/// Largest command set accepted (real ones are a few hundred bytes).
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Called AE must be ours; calling AE (and host, where given) must be on the allow-list when
/// there is one.
struct PeerAccess<'a> {
    allowed: &'a [AllowedPeer],
    peer: SocketAddr,
}

impl AccessControl for PeerAccess<'_> {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim_matches(' ') != this_ae_title {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        let ip = canonical_ip(self.peer.ip());
        if !self.allowed.is_empty() && !self.allowed.iter().any(|p| p.admits(calling_ae_title, ip))
        {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// Negotiate and serve one association until release, abort, error or shutdown. Returns
/// whether the association was established.
pub async fn serve<H: StoreHandler>(
    socket: TcpStream,
    peer: SocketAddr,
    settings: &ScpSettings,
    handler: &H,
    stats: &ScpStats,
    shutdown: &CancellationToken,
) -> bool {
    let access = PeerAccess {
        allowed: &settings.allowed,
        peer,
    };
    let mut options = ServerAssociationOptions::new()
        .ae_access_control(access)
        .ae_title(settings.ae_title.as_str())
        .with_abstract_syntax(uids::VERIFICATION)
        .max_pdu_length(settings.max_pdu_length)
        .read_timeout(settings.read_timeout)
        .write_timeout(settings.write_timeout);
    for class in &settings.accepted_sop_classes {
        options = options.with_abstract_syntax(class.as_str());
    }
    for ts in sop_classes::TRANSFER_SYNTAXES {
        options = options.with_transfer_syntax(ts.uid);
    }
    let mut association = match options.establish_async(socket).await {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%peer, error = %e, "association not established");
            return false;
        }
    };
    let calling = association.peer_ae_title().trim_matches(' ').to_string();
    let accepted = association
        .presentation_contexts()
        .iter()
        .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .count();
    tracing::info!(%peer, calling_ae = %calling, accepted_contexts = accepted, "association established");

    let mut state = Session {
        peer,
        calling_ae: calling.clone(),
        called_ae: settings.ae_title.as_str().to_string(),
        max_dataset_bytes: settings.max_dataset_bytes,
        message: None,
        stored: 0,
        stats,
    };
    let end = state.run(&mut association, handler, shutdown).await;
    match end {
        End::Released => {
            let _ = association.send(&Pdu::ReleaseRP).await;
            tracing::info!(%peer, calling_ae = %calling, stored = state.stored, "association released");
        }
        End::PeerAborted => {
            tracing::warn!(%peer, calling_ae = %calling, stored = state.stored, "association aborted by peer");
        }
        End::Abort(reason) => {
            tracing::warn!(%peer, calling_ae = %calling, stored = state.stored, %reason, "aborting association");
            let _ = association.abort().await;
        }
        End::Closed(reason) => {
            tracing::info!(%peer, calling_ae = %calling, stored = state.stored, %reason, "association closed");
        }
    }
    true
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
}

struct Session<'a, S> {
    peer: SocketAddr,
    calling_ae: String,
    called_ae: String,
    max_dataset_bytes: usize,
    message: Option<Message<S>>,
    stored: u64,
    stats: &'a ScpStats,
}

impl<S: DataSink> Session<'_, S> {
    async fn run<H: StoreHandler<Sink = S>>(
        &mut self,
        association: &mut AsyncServerAssociation<TcpStream>,
        handler: &H,
        shutdown: &CancellationToken,
    ) -> End {
        loop {
            // Only an idle association (no message half received) is cut by shutdown:
            // a C-STORE in flight completes and is answered first.
            let pdu = if self.message.is_none() {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return End::Abort("shutting down".into()),
                    pdu = association.receive() => pdu,
                }
            } else {
                association.receive().await
            };
            let pdu = match pdu {
                Ok(pdu) => pdu,
                Err(e) => return End::Closed(e.to_string()),
            };
            match pdu {
                Pdu::PData { data } => {
                    for value in data {
                        if let Err(end) = self.on_pdata(value, association, handler).await {
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
                    tracing::debug!(peer = %self.peer, ?source, "peer abort");
                    return End::PeerAborted;
                }
                other => {
                    return End::Abort(format!("unexpected PDU {}", pdu_name(&other)));
                }
            }
        }
    }

    async fn on_pdata<H: StoreHandler<Sink = S>>(
        &mut self,
        value: PDataValue,
        association: &mut AsyncServerAssociation<TcpStream>,
        handler: &H,
    ) -> Result<(), End> {
        let Some(pc) = association
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == value.presentation_context_id)
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        else {
            return Err(End::Abort(format!(
                "P-DATA on presentation context {} which was not accepted",
                value.presentation_context_id
            )));
        };
        let transfer_syntax = pc.transfer_syntax.trim_end_matches(['\0', ' ']).to_string();
        let abstract_syntax = pc.abstract_syntax.trim_end_matches(['\0', ' ']).to_string();
        let message = self.message.get_or_insert_with(|| Message {
            pc_id: value.presentation_context_id,
            command_bytes: Vec::new(),
            command: None,
            sink: None,
            received: 0,
            oversize: false,
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
                        message.sink =
                            Some(handler.begin(&command, &transfer_syntax, &self.calling_ae));
                    }
                    message.command = Some(command);
                    return Ok(());
                }
                self.message = None;
                let response = self.answer_command(&command, &abstract_syntax);
                send_response(association, value.presentation_context_id, &response).await
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
                } else if let Some(sink) = message.sink.as_mut() {
                    sink.push(value.data).await;
                }
                if !value.is_last {
                    return Ok(());
                }
                let Some(message) = self.message.take() else {
                    return Ok(());
                };
                let response = self
                    .answer_store(command, message, transfer_syntax, &abstract_syntax, handler)
                    .await;
                send_response(association, value.presentation_context_id, &response).await
            }
        }
    }

    /// A command without a data set: C-ECHO, or something we do not offer.
    fn answer_command(&self, command: &Command, abstract_syntax: &str) -> Response {
        if command.field == command_field::C_ECHO_RQ && abstract_syntax == uids::VERIFICATION {
            tracing::debug!(peer = %self.peer, calling_ae = %self.calling_ae, "C-ECHO");
            return Response::to(command, status::SUCCESS);
        }
        Response::to(command, status::UNRECOGNIZED_OPERATION)
            .with_comment("only C-ECHO and C-STORE are supported")
    }

    async fn answer_store<H: StoreHandler<Sink = S>>(
        &mut self,
        command: Command,
        message: Message<S>,
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
        let sop_instance = command
            .affected_sop_instance_uid
            .clone()
            .unwrap_or_default();
        if message.oversize {
            self.stats
                .instances_oversize
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                peer = %self.peer, sop_instance_uid = %sop_instance,
                max_bytes = self.max_dataset_bytes, "data set over the size limit: refused"
            );
            return Response::to(&command, status::OUT_OF_RESOURCES).with_comment(&format!(
                "data set exceeds the {} MiB limit",
                self.max_dataset_bytes >> 20
            ));
        }
        let Some(sink) = message.sink else {
            return Response::to(&command, status::OUT_OF_RESOURCES)
                .with_comment("data set was not kept");
        };
        let request = StoreRequest {
            command: command.clone(),
            transfer_syntax,
            calling_ae_title: self.calling_ae.clone(),
            called_ae_title: self.called_ae.clone(),
            peer: self.peer,
        };
        let outcome = handler.store(request, sink).await;
        if outcome.status == status::SUCCESS {
            self.stored += 1;
        }
        let response = Response::to(&command, outcome.status);
        match &outcome.comment {
            Some(c) => response.with_comment(c),
            None => response,
        }
    }
}

async fn send_response(
    association: &mut AsyncServerAssociation<TcpStream>,
    pc_id: u8,
    response: &Response,
) -> Result<(), End> {
    let data = response
        .encode()
        .map_err(|e| End::Abort(format!("cannot encode response: {e}")))?;
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc_id,
            value_type: PDataValueType::Command,
            is_last: true,
            data,
        }],
    };
    association
        .send(&pdu)
        .await
        .map_err(|e| End::Closed(format!("cannot send response: {e}")))
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
mod tests {
    use super::*;

    #[test]
    fn access_control() {
        let allowed = vec![crate::config::AllowedPeer {
            ae_title: crate::config::AeTitle::parse("MOD").unwrap(),
            host: None,
        }];
        let access = PeerAccess {
            allowed: &allowed,
            peer: "127.0.0.1:1000".parse().unwrap(),
        };
        assert!(access.check_access("CXR", "MOD", "CXR", None).is_ok());
        assert_eq!(
            access.check_access("CXR", "MOD", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        assert_eq!(
            access.check_access("CXR", "ROGUE", "CXR", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
    }
}

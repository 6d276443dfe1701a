//! The audited events, typed, and their PS3.15 A.5 XML `AuditMessage`: what happened
//! (`EventIdentification`), who took part (`ActiveParticipant`), who reports it
//! (`AuditSourceIdentification`) and what it was about (`ParticipantObjectIdentification`),
//! in the element order of the A.5.1 schema.

use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};

use super::xml::Xml;

// ---- coded values -------------------------------------------------------------------------------

/// A coded value: `csd-code`, `codeSystemName`, `originalText` (the code meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The code value.
    pub code: &'static str,
    /// The coding scheme (`DCM`, `RFC-3881`).
    pub system: &'static str,
    /// The code meaning.
    pub meaning: &'static str,
}

const fn dcm(code: &'static str, meaning: &'static str) -> Code {
    Code {
        code,
        system: "DCM",
        meaning,
    }
}

/// The codes this module uses (PS3.16 CID 400–405, PS3.15 A.5.1.2).
pub mod codes {
    use super::{Code, dcm};

    /// EventID of application start and stop.
    pub const APPLICATION_ACTIVITY: Code = dcm("110100", "Application Activity");
    /// EventID of a received or sent study.
    pub const INSTANCES_TRANSFERRED: Code = dcm("110104", "DICOM Instances Transferred");
    /// EventID of an admin resending an SR.
    pub const EXPORT: Code = dcm("110106", "Export");
    /// EventID of an admin reading findings from the database.
    pub const QUERY: Code = dcm("110112", "Query");
    /// EventID of a refused or unauthenticated peer.
    pub const SECURITY_ALERT: Code = dcm("110113", "Security Alert");
    /// EventTypeCode: the application started.
    pub const APPLICATION_START: Code = dcm("110120", "Application Start");
    /// EventTypeCode: the application stopped.
    pub const APPLICATION_STOP: Code = dcm("110121", "Application Stop");
    /// EventTypeCode: a node failed to authenticate (TLS) or was not admitted.
    pub const NODE_AUTHENTICATION: Code = dcm("110126", "Node Authentication");
    /// EventTypeCode: a peer was refused by the security configuration (allow-list).
    pub const SECURITY_CONFIGURATION: Code = dcm("110128", "Security Configuration");
    /// RoleIDCode of the application in Application Activity.
    pub const APPLICATION: Code = dcm("110150", "Application");
    /// RoleIDCode of whoever launched the application.
    pub const APPLICATION_LAUNCHER: Code = dcm("110151", "Application Launcher");
    /// RoleIDCode of the receiving side of a transfer.
    pub const DESTINATION: Code = dcm("110152", "Destination Role ID");
    /// RoleIDCode of the sending side of a transfer.
    pub const SOURCE: Code = dcm("110153", "Source Role ID");
    /// ParticipantObjectIDTypeCode of a study.
    pub const STUDY_INSTANCE_UID: Code = dcm("110180", "Study Instance UID");
    /// ParticipantObjectIDTypeCode of a network node (the alert subject).
    pub const NODE_ID: Code = dcm("110182", "Node ID");
    /// ParticipantObjectIDTypeCode of a patient.
    pub const PATIENT_NUMBER: Code = Code {
        code: "2",
        system: "RFC-3881",
        meaning: "Patient Number",
    };
    /// ParticipantObjectIDTypeCode of a database query (not a DICOM query, which would be
    /// identified by its SOP Class UID, DCM 110181).
    pub const SEARCH_CRITERIA: Code = Code {
        code: "10",
        system: "RFC-3881",
        meaning: "Search Criteria",
    };
}

// ---- the parts of an event ----------------------------------------------------------------------

/// Where a participant is on the network: `NetworkAccessPointID` and its type code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkAccessPoint {
    /// An IP address (type code 2).
    Ip(IpAddr),
    /// A host name (type code 1).
    Name(String),
}

impl NetworkAccessPoint {
    fn id(&self) -> String {
        match self {
            Self::Ip(ip) => ip.to_canonical().to_string(),
            Self::Name(n) => n.clone(),
        }
    }

    fn type_code(&self) -> &'static str {
        match self {
            Self::Ip(_) => "2",
            Self::Name(_) => "1",
        }
    }
}

impl From<IpAddr> for NetworkAccessPoint {
    fn from(ip: IpAddr) -> Self {
        Self::Ip(ip)
    }
}

/// This daemon as a participant: its AE title and the address peers reach it at. Its process
/// ID and name are added from the running process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalApplication {
    /// Our AE title (`dicom.ae_title`, or the calling AE title towards a destination).
    pub ae_title: String,
    /// Our address (the local address of the association, or the host name).
    pub access_point: NetworkAccessPoint,
}

/// A remote DICOM node: a peer that called us, or a destination we called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    /// Its AE title (the calling AE title of a peer; unknown when refused before the
    /// association request).
    pub ae_title: Option<String>,
    /// Its address.
    pub access_point: NetworkAccessPoint,
}

/// A person at this machine (an admin command's user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    /// The login name; the message's UserID is `login@host`.
    pub login: String,
}

impl LocalUser {
    /// The user running this process: `$USER`, else `$LOGNAME`, else `uid:N`.
    pub fn current() -> Self {
        let login = ["USER", "LOGNAME"]
            .iter()
            .filter_map(|v| std::env::var(v).ok())
            .find(|v| !v.trim().is_empty())
            .unwrap_or_else(|| format!("uid:{}", rustix::process::getuid().as_raw()));
        Self { login }
    }
}

/// The patient an event is about. Appears only inside audit messages, never in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// Patient ID (0010,0020).
    pub id: String,
    /// Patient's Name (0010,0010), as received (`Family^Given`).
    pub name: Option<String>,
}

/// How many instances of one SOP Class a transfer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SopClassCount {
    /// The SOP Class UID.
    pub uid: String,
    /// The number of instances.
    pub instances: u32,
}

/// The study an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Study {
    /// Study Instance UID (0020,000D).
    pub instance_uid: String,
    /// The instances concerned, per SOP Class.
    pub sop_classes: Vec<SopClassCount>,
    /// Accession Number (0008,0050), if any.
    pub accession_number: Option<String>,
}

/// A query of the database: what was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseQuery {
    /// What was queried (`findings`): the ParticipantObjectID.
    pub name: String,
    /// The query and its parameters as text (`study_uid=1.2.3`); base64 in
    /// `ParticipantObjectQuery`.
    pub text: String,
}

/// How the event ended: `EventOutcomeIndicator`, with `EventOutcomeDescription` for failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 0: success.
    Success,
    /// 4: minor failure, the action went on or may be retried (a refused peer).
    MinorFailure(String),
    /// 8: serious failure, the action was terminated.
    SeriousFailure(String),
    /// 12: major failure, the application became unavailable.
    MajorFailure(String),
}

impl Outcome {
    /// The `EventOutcomeIndicator` value.
    pub fn indicator(&self) -> &'static str {
        match self {
            Self::Success => "0",
            Self::MinorFailure(_) => "4",
            Self::SeriousFailure(_) => "8",
            Self::MajorFailure(_) => "12",
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            Self::Success => None,
            Self::MinorFailure(d) | Self::SeriousFailure(d) | Self::MajorFailure(d) => Some(d),
        }
    }

    /// RFC 5424 severity: 5 (notice) for a success, 4 (warning) otherwise (IHE ITI-20).
    pub fn severity(&self) -> u8 {
        match self {
            Self::Success => 5,
            _ => 4,
        }
    }
}

/// Application start or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Application Start (DCM 110120).
    Start,
    /// Application Stop (DCM 110121).
    Stop,
}

/// What kind of security alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// Node Authentication (DCM 110126): a TLS peer that failed to authenticate.
    NodeAuthentication,
    /// Security Configuration (DCM 110128): a peer the allow-list refuses.
    SecurityConfiguration,
}

/// Which way instances went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A peer stored them here (EventActionCode `C`).
    Received,
    /// We sent them to a destination (EventActionCode `R`).
    Sent,
}

// ---- the events ---------------------------------------------------------------------------------

/// An event of the audit trail. Build one with the constructors (`application_start`,
/// `peer_refused`, `study_received`, `sr_sent`, `findings_queried`, `sr_resent`) and pass it
/// to [`record`](super::record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditEvent {
    /// Application Activity (DCM 110100): the daemon started or stopped.
    ApplicationActivity {
        /// Start or stop.
        activity: Activity,
        /// This daemon.
        application: LocalApplication,
        /// Who launched it, if known (role Application Launcher).
        launcher: Option<LocalUser>,
        /// How it went.
        outcome: Outcome,
    },
    /// Security Alert (DCM 110113): a refused or unauthenticated peer.
    SecurityAlert {
        /// Node authentication or security configuration.
        kind: AlertKind,
        /// This daemon, which reports it.
        application: LocalApplication,
        /// The peer that was refused.
        peer: RemoteNode,
        /// A failure (4 or 8) whose text says why.
        outcome: Outcome,
    },
    /// DICOM Instances Transferred (DCM 110104): a study received or an SR sent.
    InstancesTransferred {
        /// Received (`C`) or sent (`R`).
        direction: Direction,
        /// This daemon.
        application: LocalApplication,
        /// The sender of a received study, or the destination of a sent SR.
        peer: RemoteNode,
        /// The patient.
        patient: Patient,
        /// The study and its instances.
        study: Study,
        /// How it went.
        outcome: Outcome,
    },
    /// Query (DCM 110112): a user read findings from the database.
    Query {
        /// Who asked.
        user: LocalUser,
        /// This daemon (its database).
        application: LocalApplication,
        /// What was asked.
        query: DatabaseQuery,
        /// How it went.
        outcome: Outcome,
    },
    /// Export (DCM 110106): a user sent an SR again to a destination.
    Export {
        /// Who asked.
        user: LocalUser,
        /// This daemon.
        application: LocalApplication,
        /// Where it went.
        destination: RemoteNode,
        /// The patient.
        patient: Patient,
        /// The study (the SR's SOP Class and count).
        study: Study,
        /// How it went.
        outcome: Outcome,
    },
}

impl AuditEvent {
    /// The daemon started.
    pub fn application_start(application: LocalApplication, launcher: Option<LocalUser>) -> Self {
        Self::ApplicationActivity {
            activity: Activity::Start,
            application,
            launcher,
            outcome: Outcome::Success,
        }
    }

    /// The daemon stopped.
    pub fn application_stop(application: LocalApplication, launcher: Option<LocalUser>) -> Self {
        Self::ApplicationActivity {
            activity: Activity::Stop,
            application,
            launcher,
            outcome: Outcome::Success,
        }
    }

    /// A peer was refused (minor failure, indicator 4): `reason` says why.
    pub fn peer_refused(
        kind: AlertKind,
        application: LocalApplication,
        peer: RemoteNode,
        reason: impl Into<String>,
    ) -> Self {
        Self::SecurityAlert {
            kind,
            application,
            peer,
            outcome: Outcome::MinorFailure(reason.into()),
        }
    }

    /// A peer stored a study here.
    pub fn study_received(
        application: LocalApplication,
        peer: RemoteNode,
        patient: Patient,
        study: Study,
    ) -> Self {
        Self::InstancesTransferred {
            direction: Direction::Received,
            application,
            peer,
            patient,
            study,
            outcome: Outcome::Success,
        }
    }

    /// We sent an SR to a destination.
    pub fn sr_sent(
        application: LocalApplication,
        destination: RemoteNode,
        patient: Patient,
        study: Study,
    ) -> Self {
        Self::InstancesTransferred {
            direction: Direction::Sent,
            application,
            peer: destination,
            patient,
            study,
            outcome: Outcome::Success,
        }
    }

    /// A user read findings from the database.
    pub fn findings_queried(
        user: LocalUser,
        application: LocalApplication,
        query: DatabaseQuery,
    ) -> Self {
        Self::Query {
            user,
            application,
            query,
            outcome: Outcome::Success,
        }
    }

    /// A user resent an SR to a destination.
    pub fn sr_resent(
        user: LocalUser,
        application: LocalApplication,
        destination: RemoteNode,
        patient: Patient,
        study: Study,
    ) -> Self {
        Self::Export {
            user,
            application,
            destination,
            patient,
            study,
            outcome: Outcome::Success,
        }
    }

    /// The same event with another outcome (a failed transfer, a serious alert).
    pub fn with_outcome(mut self, new: Outcome) -> Self {
        match &mut self {
            Self::ApplicationActivity { outcome, .. }
            | Self::SecurityAlert { outcome, .. }
            | Self::InstancesTransferred { outcome, .. }
            | Self::Query { outcome, .. }
            | Self::Export { outcome, .. } => *outcome = new,
        }
        self
    }

    /// How the event ended.
    pub fn outcome(&self) -> &Outcome {
        match self {
            Self::ApplicationActivity { outcome, .. }
            | Self::SecurityAlert { outcome, .. }
            | Self::InstancesTransferred { outcome, .. }
            | Self::Query { outcome, .. }
            | Self::Export { outcome, .. } => outcome,
        }
    }

    /// A short name of the event (`audit_queue.event_kind`, logs): never patient data.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ApplicationActivity {
                activity: Activity::Start,
                ..
            } => "application_start",
            Self::ApplicationActivity {
                activity: Activity::Stop,
                ..
            } => "application_stop",
            Self::SecurityAlert { .. } => "security_alert",
            Self::InstancesTransferred {
                direction: Direction::Received,
                ..
            } => "instances_received",
            Self::InstancesTransferred {
                direction: Direction::Sent,
                ..
            } => "instances_sent",
            Self::Query { .. } => "query",
            Self::Export { .. } => "export",
        }
    }

    /// The XML `AuditMessage` of this event, reported by `source` at `time`.
    pub fn to_xml(&self, source: &Source, time: DateTime<Utc>) -> String {
        self.message(source, time).to_xml()
    }

    fn message(&self, source: &Source, time: DateTime<Utc>) -> Message {
        let base = |event_id, action, event_type: Option<Code>, outcome: &Outcome| Message {
            event_id,
            action,
            time,
            outcome: outcome.clone(),
            event_types: event_type.into_iter().collect(),
            participants: Vec::new(),
            source: source.clone(),
            objects: Vec::new(),
        };
        match self {
            Self::ApplicationActivity {
                activity,
                application,
                launcher,
                outcome,
            } => {
                let event_type = match activity {
                    Activity::Start => codes::APPLICATION_START,
                    Activity::Stop => codes::APPLICATION_STOP,
                };
                let mut m = base(codes::APPLICATION_ACTIVITY, "E", Some(event_type), outcome);
                m.participants
                    .push(us(source, application, false, codes::APPLICATION));
                if let Some(user) = launcher {
                    m.participants.push(person(
                        source,
                        user,
                        true,
                        Some(codes::APPLICATION_LAUNCHER),
                    ));
                }
                m
            }
            Self::SecurityAlert {
                kind,
                application,
                peer,
                outcome,
            } => {
                let event_type = match kind {
                    AlertKind::NodeAuthentication => codes::NODE_AUTHENTICATION,
                    AlertKind::SecurityConfiguration => codes::SECURITY_CONFIGURATION,
                };
                let mut m = base(codes::SECURITY_ALERT, "E", Some(event_type), outcome);
                m.participants.push(us_without_role(source, application));
                m.participants.push(node(peer, true, None));
                m.objects.push(alert_subject(peer, outcome));
                m
            }
            Self::InstancesTransferred {
                direction,
                application,
                peer,
                patient,
                study,
                outcome,
            } => {
                let (action, ours, theirs) = match direction {
                    Direction::Received => ("C", codes::DESTINATION, codes::SOURCE),
                    Direction::Sent => ("R", codes::SOURCE, codes::DESTINATION),
                };
                let mut m = base(codes::INSTANCES_TRANSFERRED, action, None, outcome);
                // the side that opened the association asked for the transfer
                let (first, second) = (
                    node(peer, *direction == Direction::Received, Some(theirs)),
                    us(source, application, *direction == Direction::Sent, ours),
                );
                m.participants.extend(match direction {
                    Direction::Received => [first, second],
                    Direction::Sent => [second, first],
                });
                m.objects.push(patient_object(patient));
                m.objects.push(study_object(study));
                m
            }
            Self::Query {
                user,
                application,
                query,
                outcome,
            } => {
                let mut m = base(codes::QUERY, "E", None, outcome);
                m.participants
                    .push(person(source, user, true, Some(codes::SOURCE)));
                m.participants
                    .push(us(source, application, false, codes::DESTINATION));
                m.objects.push(query_object(query));
                m
            }
            Self::Export {
                user,
                application,
                destination,
                patient,
                study,
                outcome,
            } => {
                let mut m = base(codes::EXPORT, "R", None, outcome);
                m.participants.push(person(source, user, true, None));
                m.participants
                    .push(us(source, application, false, codes::SOURCE));
                m.participants
                    .push(node(destination, false, Some(codes::DESTINATION)));
                m.objects.push(patient_object(patient));
                m.objects.push(study_object(study));
                m
            }
        }
    }
}

/// Who reports the events: `AuditSourceIdentification`, and this process's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// `AuditSourceID` (`audit.source_id`).
    pub id: String,
    /// `AuditEnterpriseSiteID` (`audit.enterprise_site_id`).
    pub enterprise_site_id: Option<String>,
    /// This machine's host name (the domain of a local user's UserID).
    pub hostname: String,
    /// This process's ID: the UserID of the application, as in the system logs.
    pub process_id: u32,
}

// ---- the message, as the schema shapes it -------------------------------------------------------

/// An `ActiveParticipant`.
#[derive(Debug, Clone)]
struct Participant {
    user_id: String,
    alternative_user_id: Option<String>,
    user_name: Option<String>,
    requestor: bool,
    access_point: Option<NetworkAccessPoint>,
    role: Option<Code>,
}

/// A `ParticipantObjectIdentification`.
#[derive(Debug, Clone)]
struct Object {
    id: String,
    type_code: &'static str,
    role: &'static str,
    id_type: Code,
    name: Option<String>,
    /// Already base64.
    query: Option<String>,
    /// `(type, value)`; the value is base64-encoded when written.
    details: Vec<(&'static str, String)>,
    accession: Option<String>,
    sop_classes: Vec<SopClassCount>,
}

#[derive(Debug, Clone)]
struct Message {
    event_id: Code,
    action: &'static str,
    time: DateTime<Utc>,
    outcome: Outcome,
    event_types: Vec<Code>,
    participants: Vec<Participant>,
    source: Source,
    objects: Vec<Object>,
}

/// The application's process name (`UserName` of the application).
const PROCESS_NAME: &str = "cxr-worker";

fn aetitles(ae: &str) -> String {
    format!("AETITLES={ae}")
}

/// This daemon: UserID is its process ID, AlternativeUserID its AE title (PS3.15 A.5.2.1–2).
fn us(source: &Source, app: &LocalApplication, requestor: bool, role: Code) -> Participant {
    Participant {
        role: Some(role),
        requestor,
        ..us_without_role(source, app)
    }
}

fn us_without_role(source: &Source, app: &LocalApplication) -> Participant {
    Participant {
        user_id: source.process_id.to_string(),
        alternative_user_id: Some(aetitles(&app.ae_title)),
        user_name: Some(PROCESS_NAME.to_string()),
        requestor: false,
        access_point: Some(app.access_point.clone()),
        role: None,
    }
}

/// A remote node: UserID is its AE title (its address when the title is unknown).
fn node(peer: &RemoteNode, requestor: bool, role: Option<Code>) -> Participant {
    Participant {
        user_id: peer
            .ae_title
            .clone()
            .unwrap_or_else(|| peer.access_point.id()),
        alternative_user_id: peer.ae_title.as_deref().map(aetitles),
        user_name: None,
        requestor,
        access_point: Some(peer.access_point.clone()),
        role,
    }
}

/// A person at this machine: UserID `login@host`.
fn person(source: &Source, user: &LocalUser, requestor: bool, role: Option<Code>) -> Participant {
    Participant {
        user_id: format!("{}@{}", user.login, source.hostname),
        alternative_user_id: None,
        user_name: Some(user.login.clone()),
        requestor,
        access_point: Some(NetworkAccessPoint::Name(source.hostname.clone())),
        role,
    }
}

fn patient_object(p: &Patient) -> Object {
    Object {
        id: p.id.clone(),
        type_code: "1",
        role: "1",
        id_type: codes::PATIENT_NUMBER,
        name: p.name.clone(),
        query: None,
        details: Vec::new(),
        accession: None,
        sop_classes: Vec::new(),
    }
}

fn study_object(s: &Study) -> Object {
    Object {
        id: s.instance_uid.clone(),
        type_code: "2",
        role: "3",
        id_type: codes::STUDY_INSTANCE_UID,
        name: None,
        query: None,
        details: Vec::new(),
        accession: s.accession_number.clone(),
        sop_classes: s.sop_classes.clone(),
    }
}

fn query_object(q: &DatabaseQuery) -> Object {
    Object {
        id: q.name.clone(),
        type_code: "2",
        role: "24",
        id_type: codes::SEARCH_CRITERIA,
        name: None,
        query: Some(BASE64.encode(q.text.as_bytes())),
        details: Vec::new(),
        accession: None,
        sop_classes: Vec::new(),
    }
}

/// The refused node (Security Resource), with the reason as its "Alert Description".
fn alert_subject(peer: &RemoteNode, outcome: &Outcome) -> Object {
    Object {
        id: peer.access_point.id(),
        type_code: "2",
        role: "13",
        id_type: codes::NODE_ID,
        name: None,
        query: None,
        details: outcome
            .description()
            .map(|d| ("Alert Description", d.to_string()))
            .into_iter()
            .collect(),
        accession: None,
        sop_classes: Vec::new(),
    }
}

fn code_attrs(c: &Code) -> [(&'static str, Option<&str>); 3] {
    [
        ("csd-code", Some(c.code)),
        ("codeSystemName", Some(c.system)),
        ("originalText", Some(c.meaning)),
    ]
}

impl Message {
    fn to_xml(&self) -> String {
        let mut x = Xml::new();
        x.open("AuditMessage", &[]);
        self.event_identification(&mut x);
        for p in &self.participants {
            participant(&mut x, p);
        }
        let s = &self.source;
        x.open(
            "AuditSourceIdentification",
            &[
                ("AuditEnterpriseSiteID", s.enterprise_site_id.as_deref()),
                ("AuditSourceID", Some(&s.id)),
            ],
        );
        // 4: application server process (PS3.15 A.5.1.2.1)
        x.empty("AuditSourceTypeCode", &[("csd-code", Some("4"))]);
        x.close("AuditSourceIdentification");
        for o in &self.objects {
            object(&mut x, o);
        }
        x.close("AuditMessage");
        x.finish()
    }

    fn event_identification(&self, x: &mut Xml) {
        let time = self.time.to_rfc3339_opts(SecondsFormat::Millis, true);
        x.open(
            "EventIdentification",
            &[
                ("EventActionCode", Some(self.action)),
                ("EventDateTime", Some(&time)),
                ("EventOutcomeIndicator", Some(self.outcome.indicator())),
            ],
        );
        x.empty("EventID", &code_attrs(&self.event_id));
        for t in &self.event_types {
            x.empty("EventTypeCode", &code_attrs(t));
        }
        if let Some(d) = self.outcome.description() {
            x.text("EventOutcomeDescription", d);
        }
        x.close("EventIdentification");
    }
}

fn participant(x: &mut Xml, p: &Participant) {
    let nap_id = p.access_point.as_ref().map(NetworkAccessPoint::id);
    let attrs = [
        ("UserID", Some(p.user_id.as_str())),
        ("AlternativeUserID", p.alternative_user_id.as_deref()),
        ("UserName", p.user_name.as_deref()),
        (
            "UserIsRequestor",
            Some(if p.requestor { "true" } else { "false" }),
        ),
        ("NetworkAccessPointID", nap_id.as_deref()),
        (
            "NetworkAccessPointTypeCode",
            p.access_point.as_ref().map(NetworkAccessPoint::type_code),
        ),
    ];
    match &p.role {
        Some(role) => {
            x.open("ActiveParticipant", &attrs);
            x.empty("RoleIDCode", &code_attrs(role));
            x.close("ActiveParticipant");
        }
        None => x.empty("ActiveParticipant", &attrs),
    }
}

fn object(x: &mut Xml, o: &Object) {
    x.open(
        "ParticipantObjectIdentification",
        &[
            ("ParticipantObjectID", Some(&o.id)),
            ("ParticipantObjectTypeCode", Some(o.type_code)),
            ("ParticipantObjectTypeCodeRole", Some(o.role)),
        ],
    );
    x.empty("ParticipantObjectIDTypeCode", &code_attrs(&o.id_type));
    if let Some(name) = &o.name {
        x.text("ParticipantObjectName", name);
    } else if let Some(query) = &o.query {
        x.text("ParticipantObjectQuery", query);
    }
    for (kind, value) in &o.details {
        let value = BASE64.encode(value.as_bytes());
        x.empty(
            "ParticipantObjectDetail",
            &[("type", Some(kind)), ("value", Some(&value))],
        );
    }
    if o.accession.is_some() || !o.sop_classes.is_empty() {
        x.open("ParticipantObjectDescription", &[]);
        if let Some(a) = &o.accession {
            x.empty("Accession", &[("Number", Some(a))]);
        }
        for c in &o.sop_classes {
            let n = c.instances.to_string();
            x.empty(
                "SOPClass",
                &[("UID", Some(&c.uid)), ("NumberOfInstances", Some(&n))],
            );
        }
        x.close("ParticipantObjectDescription");
    }
    x.close("ParticipantObjectIdentification");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> Source {
        Source {
            id: "site-a".into(),
            enterprise_site_id: None,
            hostname: "host1".into(),
            process_id: 42,
        }
    }

    fn app() -> LocalApplication {
        LocalApplication {
            ae_title: "CXR_WORKER".into(),
            access_point: NetworkAccessPoint::Ip("10.0.0.1".parse().unwrap()),
        }
    }

    #[test]
    fn a_received_study_renders_in_schema_order_and_escapes_the_name() {
        let event = AuditEvent::study_received(
            app(),
            RemoteNode {
                ae_title: Some("PACS".into()),
                access_point: NetworkAccessPoint::Ip("::ffff:10.0.0.2".parse().unwrap()),
            },
            Patient {
                id: "P<1>".into(),
                name: Some(r#"Doe^J<&">"#.into()),
            },
            Study {
                instance_uid: "1.2.3".into(),
                sop_classes: vec![SopClassCount {
                    uid: "1.2.840.10008.5.1.4.1.1.1".into(),
                    instances: 2,
                }],
                accession_number: Some("A1".into()),
            },
        );
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
            .unwrap()
            .with_timezone(&Utc);
        let xml = event.to_xml(&source(), time);
        assert!(xml.starts_with(r#"<?xml version="1.0" encoding="UTF-8"?><AuditMessage><EventIdentification EventActionCode="C" EventDateTime="2026-01-02T03:04:05.678Z" EventOutcomeIndicator="0"><EventID csd-code="110104" codeSystemName="DCM" originalText="DICOM Instances Transferred"/></EventIdentification><ActiveParticipant UserID="PACS" AlternativeUserID="AETITLES=PACS" UserIsRequestor="true" NetworkAccessPointID="10.0.0.2" NetworkAccessPointTypeCode="2"><RoleIDCode csd-code="110153""#), "{xml}");
        assert!(xml.contains(r#"<ParticipantObjectIdentification ParticipantObjectID="P&lt;1&gt;" ParticipantObjectTypeCode="1" ParticipantObjectTypeCodeRole="1"><ParticipantObjectIDTypeCode csd-code="2" codeSystemName="RFC-3881" originalText="Patient Number"/><ParticipantObjectName>Doe^J&lt;&amp;&quot;&gt;</ParticipantObjectName></ParticipantObjectIdentification>"#), "{xml}");
        assert!(xml.contains(r#"<ParticipantObjectDescription><Accession Number="A1"/><SOPClass UID="1.2.840.10008.5.1.4.1.1.1" NumberOfInstances="2"/></ParticipantObjectDescription>"#), "{xml}");
        assert!(!xml.contains('\n'));
    }

    #[test]
    fn failures_carry_their_reason_and_a_warning_severity() {
        let e = AuditEvent::peer_refused(
            AlertKind::SecurityConfiguration,
            app(),
            RemoteNode {
                ae_title: None,
                access_point: NetworkAccessPoint::Ip("10.0.0.9".parse().unwrap()),
            },
            "calling AE title not allowed",
        );
        assert_eq!(e.outcome().severity(), 4);
        assert_eq!(e.kind(), "security_alert");
        let xml = e.to_xml(&source(), Utc::now());
        assert!(xml.contains(r#"EventOutcomeIndicator="4""#), "{xml}");
        assert!(xml.contains(
            "<EventOutcomeDescription>calling AE title not allowed</EventOutcomeDescription>"
        ));
        assert!(xml.contains(r#"<ActiveParticipant UserID="10.0.0.9" UserIsRequestor="true""#));
        let ok = AuditEvent::application_start(app(), None);
        assert_eq!(ok.outcome().severity(), 5);
    }
}

//! Audit trail tests: events recorded into a real PostgreSQL queue and delivered by the real
//! sender to collectors on 127.0.0.1 — a UDP syslog listener (RFC 5426), a TLS collector with
//! mutual authentication and certificates made by the `openssl` CLI (RFC 5425), the local
//! file — including collectors that are down at first and nothing lost when they come up, and
//! two senders sharing one database without sending a message twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use cxr_worker::audit::{
    self, AlertKind, AuditEvent, DatabaseQuery, LocalApplication, LocalUser, NetworkAccessPoint,
    Patient, RemoteNode, SopClassCount, Study,
};
use cxr_worker::config::{AuditConfig, AuditTlsFiles, SyslogTarget, SyslogTransport};
use cxr_worker::db;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sqlx::PgPool;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use common::{TestDb, reserve_port};

const PATIENT_NAME: &str = r#"Doe^Jane<&">"#;
const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.1";
const CR: &str = "1.2.840.10008.5.1.4.1.1.1";
const SR: &str = "1.2.840.10008.5.1.4.1.1.88.34";

// ---- set-up -------------------------------------------------------------------------------------

async fn migrated(db: &TestDb) -> PgPool {
    let pool = db.pool().await;
    db::migrate(&pool).await.unwrap();
    pool
}

fn config() -> AuditConfig {
    AuditConfig {
        enabled: true,
        source_id: "audit-test".into(),
        retry_max: Duration::from_millis(200),
        poll_interval: Duration::from_millis(50),
        ..AuditConfig::default()
    }
}

fn udp_target(port: u16) -> Option<SyslogTarget> {
    Some(SyslogTarget {
        transport: SyslogTransport::Udp,
        host: "127.0.0.1".into(),
        port,
    })
}

fn app() -> LocalApplication {
    LocalApplication {
        ae_title: "CXR_WORKER".into(),
        access_point: NetworkAccessPoint::Ip("127.0.0.1".parse().unwrap()),
    }
}

fn pacs() -> RemoteNode {
    RemoteNode {
        ae_title: Some("PACS".into()),
        access_point: NetworkAccessPoint::Ip("192.0.2.10".parse().unwrap()),
    }
}

fn patient() -> Patient {
    Patient {
        id: "PID-0001".into(),
        name: Some(PATIENT_NAME.into()),
    }
}

fn study(sop_class: &str, n: u32) -> Study {
    Study {
        instance_uid: STUDY_UID.into(),
        sop_classes: vec![SopClassCount {
            uid: sop_class.into(),
            instances: n,
        }],
        accession_number: Some("ACC-7".into()),
    }
}

fn admin() -> LocalUser {
    LocalUser {
        login: "alice".into(),
    }
}

fn query(text: &str) -> AuditEvent {
    AuditEvent::findings_queried(
        admin(),
        app(),
        DatabaseQuery {
            name: "findings".into(),
            text: text.into(),
        },
    )
}

/// One event of every kind the daemon emits.
fn every_event() -> Vec<AuditEvent> {
    vec![
        AuditEvent::application_start(app(), Some(admin())),
        AuditEvent::peer_refused(
            AlertKind::SecurityConfiguration,
            app(),
            RemoteNode {
                ae_title: Some("INTRUDER".into()),
                access_point: NetworkAccessPoint::Ip("198.51.100.7".parse().unwrap()),
            },
            "calling AE title INTRUDER is not allowed",
        ),
        AuditEvent::study_received(app(), pacs(), patient(), study(CR, 2)),
        AuditEvent::sr_sent(app(), pacs(), patient(), study(SR, 1)),
        query("study_uid=1.2.3"),
        AuditEvent::sr_resent(admin(), app(), pacs(), patient(), study(SR, 1)),
        AuditEvent::application_stop(app(), None),
    ]
}

async fn record_all(pool: &PgPool, config: &AuditConfig, events: &[AuditEvent]) {
    for e in events {
        audit::record(pool, config, e).await.unwrap().unwrap();
    }
}

fn start_sender(pool: &PgPool, config: AuditConfig) -> CancellationToken {
    let stop = CancellationToken::new();
    let (p, s) = (pool.clone(), stop.clone());
    tokio::spawn(async move { audit::run_sender(p, config, s).await.unwrap() });
    stop
}

async fn queued(pool: &PgPool) -> Vec<db::audit::AuditRow> {
    db::audit::list(pool).await.unwrap()
}

async fn wait_until_empty(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !queued(pool).await.is_empty() {
        assert!(Instant::now() < deadline, "the audit queue never drained");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every queued row has failed at least once.
async fn wait_until_failed(pool: &PgPool, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = queued(pool).await;
        if rows.len() == n && rows.iter().all(|r| r.attempts > 0) {
            return;
        }
        assert!(Instant::now() < deadline, "rows never failed: {rows:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- parsing what the collector got -------------------------------------------------------------

/// An RFC 5424 message: its header fields and its XML.
#[derive(Debug)]
struct Received {
    pri: u8,
    version: String,
    timestamp: String,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: String,
    structured_data: String,
    xml: String,
}

fn parse_syslog(bytes: &[u8], bom: bool) -> Received {
    let text = std::str::from_utf8(bytes).unwrap();
    let (header, xml) = if bom {
        text.split_once('\u{FEFF}').expect("a BOM before the XML")
    } else {
        let i = text.find("<?xml").expect("the XML");
        text.split_at(i)
    };
    let rest = header.strip_prefix('<').unwrap();
    let (pri, rest) = rest.split_once('>').unwrap();
    let fields: Vec<&str> = rest.trim_end().split(' ').collect();
    assert_eq!(fields.len(), 7, "{header:?}");
    assert!(header.ends_with(' '));
    Received {
        pri: pri.parse().unwrap(),
        version: fields[0].into(),
        timestamp: fields[1].into(),
        hostname: fields[2].into(),
        app_name: fields[3].into(),
        procid: fields[4].into(),
        msgid: fields[5].into(),
        structured_data: fields[6].into(),
        xml: xml.to_string(),
    }
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> roxmltree::Node<'a, 'i> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .unwrap_or_else(|| panic!("no <{name}> in <{}>", node.tag_name().name()))
}

fn children<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Vec<roxmltree::Node<'a, 'i>> {
    node.children().filter(|c| c.has_tag_name(name)).collect()
}

/// `(UserID, UserIsRequestor, role code)` of each ActiveParticipant, in order.
fn participants(root: roxmltree::Node) -> Vec<(String, String, Option<String>)> {
    children(root, "ActiveParticipant")
        .into_iter()
        .map(|p| {
            let role = p
                .children()
                .find(|c| c.has_tag_name("RoleIDCode"))
                .map(|r| r.attribute("csd-code").unwrap().to_string());
            (
                p.attribute("UserID").unwrap().to_string(),
                p.attribute("UserIsRequestor").unwrap().to_string(),
                role,
            )
        })
        .collect()
}

/// `(ParticipantObjectID, type, role, ID type code)` of each ParticipantObjectIdentification.
fn objects(root: roxmltree::Node) -> Vec<(String, String, String, String)> {
    children(root, "ParticipantObjectIdentification")
        .into_iter()
        .map(|o| {
            (
                o.attribute("ParticipantObjectID").unwrap().to_string(),
                o.attribute("ParticipantObjectTypeCode")
                    .unwrap()
                    .to_string(),
                o.attribute("ParticipantObjectTypeCodeRole")
                    .unwrap()
                    .to_string(),
                child(o, "ParticipantObjectIDTypeCode")
                    .attribute("csd-code")
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

fn element_names(node: roxmltree::Node) -> Vec<String> {
    node.children()
        .filter(|c| c.is_element())
        .map(|c| c.tag_name().name().to_string())
        .collect()
}

/// Check one message against what its event must say; returns its EventID code.
fn check_message(m: &Received) -> String {
    assert_eq!(m.version, "1");
    assert_eq!(m.app_name, "cxr-worker");
    assert_eq!(m.msgid, "IHE+RFC-3881");
    assert_eq!(m.structured_data, "-");
    assert_eq!(m.procid, std::process::id().to_string());
    assert!(!m.hostname.is_empty());
    chrono::DateTime::parse_from_rfc3339(&m.timestamp).unwrap();
    assert!(
        m.timestamp.ends_with('Z') && m.timestamp.len() == 24,
        "{}",
        m.timestamp
    );
    let doc = roxmltree::Document::parse(&m.xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "AuditMessage");
    // schema order: event, participants, source, objects
    let names = element_names(root);
    assert_eq!(names[0], "EventIdentification");
    let source_at = names
        .iter()
        .position(|n| n == "AuditSourceIdentification")
        .unwrap();
    assert!(names[1..source_at].iter().all(|n| n == "ActiveParticipant"));
    assert!(source_at >= 2);
    assert!(
        names[source_at + 1..]
            .iter()
            .all(|n| n == "ParticipantObjectIdentification")
    );
    let source = child(root, "AuditSourceIdentification");
    assert_eq!(source.attribute("AuditSourceID"), Some("audit-test"));
    assert_eq!(
        child(source, "AuditSourceTypeCode").attribute("csd-code"),
        Some("4")
    );

    let event = child(root, "EventIdentification");
    assert_eq!(event.attribute("EventDateTime"), Some(m.timestamp.as_str()));
    let id = child(event, "EventID");
    assert_eq!(id.attribute("codeSystemName"), Some("DCM"));
    let code = id.attribute("csd-code").unwrap().to_string();
    let action = event.attribute("EventActionCode").unwrap();
    let outcome = event.attribute("EventOutcomeIndicator").unwrap();
    let event_types: Vec<&str> = children(event, "EventTypeCode")
        .iter()
        .map(|t| t.attribute("csd-code").unwrap())
        .collect();
    let pid = std::process::id().to_string();
    let who = |u: &str, req: &str, role: Option<&str>| {
        (u.to_string(), req.to_string(), role.map(str::to_string))
    };
    let patient_obj = (
        "PID-0001".to_string(),
        "1".to_string(),
        "1".to_string(),
        "2".to_string(),
    );
    let study_obj = (
        STUDY_UID.to_string(),
        "2".to_string(),
        "3".to_string(),
        "110180".to_string(),
    );
    let user = format!("alice@{}", m.hostname);
    match code.as_str() {
        "110100" => {
            assert_eq!(action, "E");
            assert_eq!(outcome, "0");
            assert_eq!(m.pri, 85);
            assert!(event_types == ["110120"] || event_types == ["110121"]);
            let ps = participants(root);
            assert_eq!(ps[0], who(&pid, "false", Some("110150")));
            if event_types == ["110120"] {
                assert_eq!(ps[1], who(&user, "true", Some("110151")));
            }
            let alt = children(root, "ActiveParticipant")[0]
                .attribute("AlternativeUserID")
                .unwrap();
            assert_eq!(alt, "AETITLES=CXR_WORKER");
        }
        "110113" => {
            assert_eq!(action, "E");
            assert_eq!(outcome, "4");
            assert_eq!(m.pri, 84);
            assert_eq!(event_types, ["110128"]);
            assert_eq!(
                child(event, "EventOutcomeDescription").text(),
                Some("calling AE title INTRUDER is not allowed")
            );
            let ps = participants(root);
            assert_eq!(ps[0], who(&pid, "false", None));
            assert_eq!(ps[1], who("INTRUDER", "true", None));
            assert_eq!(
                children(root, "ActiveParticipant")[1].attribute("NetworkAccessPointID"),
                Some("198.51.100.7")
            );
            assert_eq!(
                objects(root),
                [(
                    "198.51.100.7".into(),
                    "2".into(),
                    "13".into(),
                    "110182".into()
                )]
            );
        }
        "110104" => {
            assert_eq!(outcome, "0");
            let ps = participants(root);
            match action {
                "C" => {
                    assert_eq!(ps[0], who("PACS", "true", Some("110153")));
                    assert_eq!(ps[1], who(&pid, "false", Some("110152")));
                }
                "R" => {
                    assert_eq!(ps[0], who(&pid, "true", Some("110153")));
                    assert_eq!(ps[1], who("PACS", "false", Some("110152")));
                }
                other => panic!("EventActionCode {other}"),
            }
            assert_eq!(objects(root), [patient_obj, study_obj]);
            let objs = children(root, "ParticipantObjectIdentification");
            assert_eq!(
                child(objs[0], "ParticipantObjectName").text(),
                Some(PATIENT_NAME)
            );
            let desc = child(objs[1], "ParticipantObjectDescription");
            assert_eq!(child(desc, "Accession").attribute("Number"), Some("ACC-7"));
            let sop = child(desc, "SOPClass");
            let (uid, n) = if action == "C" { (CR, "2") } else { (SR, "1") };
            assert_eq!(sop.attribute("UID"), Some(uid));
            assert_eq!(sop.attribute("NumberOfInstances"), Some(n));
        }
        "110112" => {
            assert_eq!(action, "E");
            let ps = participants(root);
            assert_eq!(ps[0], who(&user, "true", Some("110153")));
            assert_eq!(ps[1], who(&pid, "false", Some("110152")));
            assert_eq!(
                objects(root),
                [("findings".into(), "2".into(), "24".into(), "10".into())]
            );
            let q = child(
                children(root, "ParticipantObjectIdentification")[0],
                "ParticipantObjectQuery",
            );
            let text = base64::engine::general_purpose::STANDARD
                .decode(q.text().unwrap())
                .unwrap();
            assert!(String::from_utf8(text).unwrap().starts_with("study_uid="));
        }
        "110106" => {
            assert_eq!(action, "R");
            let ps = participants(root);
            assert_eq!(ps[0], who(&user, "true", None));
            assert_eq!(ps[1], who(&pid, "false", Some("110153")));
            assert_eq!(ps[2], who("PACS", "false", Some("110152")));
            assert_eq!(objects(root), [patient_obj, study_obj]);
        }
        other => panic!("unexpected EventID {other}"),
    }
    code
}

// ---- UDP ----------------------------------------------------------------------------------------

async fn receive_datagrams(socket: &UdpSocket, n: usize) -> Vec<Received> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while out.len() < n {
        let len = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
            .await
            .expect("a datagram within 20 s")
            .unwrap();
        out.push(parse_syslog(&buf[..len], true));
    }
    out
}

#[tokio::test]
async fn every_event_reaches_a_udp_collector_as_one_rfc5424_message() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let collector = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = AuditConfig {
        syslog: udp_target(collector.local_addr().unwrap().port()),
        ..config()
    };
    record_all(&pool, &cfg, &every_event()).await;
    let kinds: Vec<String> = queued(&pool)
        .await
        .into_iter()
        .map(|r| r.event_kind)
        .collect();
    assert_eq!(
        kinds,
        [
            "application_start",
            "security_alert",
            "instances_received",
            "instances_sent",
            "query",
            "export",
            "application_stop"
        ]
    );
    let stop = start_sender(&pool, cfg);
    let got = receive_datagrams(&collector, 7).await;
    let codes: Vec<String> = got.iter().map(check_message).collect();
    assert_eq!(
        codes,
        [
            "110100", "110113", "110104", "110104", "110112", "110106", "110100"
        ]
    );
    wait_until_empty(&pool).await;
    stop.cancel();
}

#[tokio::test]
async fn a_down_udp_collector_keeps_messages_queued_and_the_file_gets_each_once() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    // a port nothing listens on: loopback answers ICMP port unreachable
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.log");
    let cfg = AuditConfig {
        syslog: udp_target(port),
        file: Some(file.clone()),
        ..config()
    };
    let events: Vec<AuditEvent> = (0..3).map(|i| query(&format!("study_uid={i}"))).collect();
    record_all(&pool, &cfg, &events).await;
    let stop = start_sender(&pool, cfg.clone());
    wait_until_failed(&pool, 3).await;
    // several failed rounds later, still queued for the collector, written to the file once
    tokio::time::sleep(Duration::from_millis(600)).await;
    let rows = queued(&pool).await;
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.syslog_sent_at.is_none()));
    assert!(rows.iter().all(|r| r.file_written_at.is_some()));
    assert!(rows[0].attempts >= 2, "{rows:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);

    let collector = UdpSocket::bind(("127.0.0.1", port)).await.unwrap();
    let got = receive_datagrams(&collector, 3).await;
    for m in &got {
        assert_eq!(check_message(m), "110112");
    }
    wait_until_empty(&pool).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    stop.cancel();
}

#[tokio::test]
async fn two_senders_on_one_database_deliver_each_message_once() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let collector = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = AuditConfig {
        syslog: udp_target(collector.local_addr().unwrap().port()),
        batch_size: 2,
        ..config()
    };
    let texts: Vec<String> = (0..20).map(|i| format!("study_uid=shared.{i}")).collect();
    record_all(
        &pool,
        &cfg,
        &texts.iter().map(|t| query(t)).collect::<Vec<_>>(),
    )
    .await;
    let stops = [start_sender(&pool, cfg.clone()), start_sender(&pool, cfg)];
    let mut buf = vec![0u8; 70_000];
    let mut got = BTreeMap::new();
    for _ in 0..20 {
        let len = tokio::time::timeout(Duration::from_secs(20), collector.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let xml = parse_syslog(&buf[..len], true).xml;
        let doc = roxmltree::Document::parse(&xml).unwrap();
        let q = doc
            .descendants()
            .find(|n| n.has_tag_name("ParticipantObjectQuery"))
            .unwrap();
        *got.entry(q.text().unwrap().to_string()).or_insert(0) += 1;
    }
    wait_until_empty(&pool).await;
    stops.iter().for_each(CancellationToken::cancel);
    assert_eq!(got.len(), 20);
    assert!(got.values().all(|n| *n == 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), collector.recv(&mut buf))
            .await
            .is_err(),
        "no duplicate afterwards"
    );
}

// ---- the file -----------------------------------------------------------------------------------

#[tokio::test]
async fn the_file_gets_every_message_one_per_line() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.log");
    let cfg = AuditConfig {
        file: Some(file.clone()),
        batch_size: 3, // several rounds
        ..config()
    };
    record_all(&pool, &cfg, &every_event()).await;
    let stop = start_sender(&pool, cfg);
    wait_until_empty(&pool).await;
    stop.cancel();
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    let codes: Vec<String> = lines
        .iter()
        .map(|l| check_message(&parse_syslog(l.as_bytes(), false)))
        .collect();
    assert_eq!(
        codes,
        [
            "110100", "110113", "110104", "110104", "110112", "110106", "110100"
        ]
    );
    // the patient's name is in the audit file, escaped, and nowhere unescaped
    assert!(text.contains("Doe^Jane&lt;&amp;&quot;&gt;"));
    assert!(!text.contains(PATIENT_NAME));
}

#[tokio::test]
async fn disabled_audit_records_nothing() {
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let cfg = AuditConfig {
        enabled: false,
        ..config()
    };
    assert_eq!(
        audit::record(&pool, &cfg, &every_event()[0]).await.unwrap(),
        None
    );
    assert!(queued(&pool).await.is_empty());
    // the sender returns at once
    let stop = CancellationToken::new();
    tokio::time::timeout(
        Duration::from_secs(1),
        audit::run_sender(pool.clone(), cfg, stop),
    )
    .await
    .unwrap()
    .unwrap();
}

// ---- TLS ----------------------------------------------------------------------------------------

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by `openssl`.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-subj",
                "/CN=audit test CA",
                "-days",
                "2",
            ],
        ]
        .concat(),
    );
    for (name, usage, san) in [
        ("server", "serverAuth", "IP:127.0.0.1,DNS:localhost"),
        ("client", "clientAuth", "DNS:cxr-worker.test"),
    ] {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
                 extendedKeyUsage={usage}\nsubjectAltName={san}\n"
            ),
        )
        .unwrap();
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
}

/// A TLS collector on `listener` that requires a client certificate from the test CA and
/// forwards every octet-counted message it reads.
fn start_tls_collector(
    listener: TcpListener,
    dir: &Path,
) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(frame) = read_frame(&mut tls).await {
                    let _ = tx.send(frame);
                }
            });
        }
    });
    rx
}

/// One RFC 5425 frame: `MSG-LEN SP SYSLOG-MSG`; `None` at the end of the stream.
async fn read_frame(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Vec<u8>> {
    let mut len = String::new();
    loop {
        let b = stream.read_u8().await.ok()?;
        if b == b' ' {
            break;
        }
        assert!(b.is_ascii_digit() && len.len() < 10, "bad frame length");
        len.push(char::from(b));
    }
    let mut msg = vec![0u8; len.parse().unwrap()];
    stream.read_exact(&mut msg).await.ok()?;
    Some(msg)
}

fn tls_config(dir: &Path, port: u16) -> AuditConfig {
    AuditConfig {
        syslog: Some(SyslogTarget {
            transport: SyslogTransport::Tls,
            host: "127.0.0.1".into(),
            port,
        }),
        tls: Some(AuditTlsFiles {
            ca_file: dir.join("ca.pem"),
            client: Some((dir.join("client.pem"), dir.join("client.key"))),
        }),
        ..config()
    }
}

/// The query texts of received Query messages, counted.
fn query_texts(messages: &[Vec<u8>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in messages {
        let r = parse_syslog(m, true);
        assert_eq!(check_message(&r), "110112");
        let doc = roxmltree::Document::parse(&r.xml).unwrap();
        let q = doc
            .descendants()
            .find(|n| n.has_tag_name("ParticipantObjectQuery"))
            .unwrap();
        let text = base64::engine::general_purpose::STANDARD
            .decode(q.text().unwrap())
            .unwrap();
        *out.entry(String::from_utf8(text).unwrap()).or_default() += 1;
    }
    out
}

async fn receive_frames(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    n: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a frame within 20 s")
            .unwrap();
        out.push(m);
    }
    out
}

#[tokio::test]
async fn a_tls_collector_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    // the collector's port, held without listening: connections are refused
    let reservation = reserve_port();
    let port = reservation.port();
    let cfg = tls_config(dir.path(), port);
    let first: Vec<String> = (0..5).map(|i| format!("study_uid=first.{i}")).collect();
    record_all(
        &pool,
        &cfg,
        &first.iter().map(|t| query(t)).collect::<Vec<_>>(),
    )
    .await;
    let stop = start_sender(&pool, cfg.clone());
    wait_until_failed(&pool, 5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rows = queued(&pool).await;
    assert_eq!(
        rows.len(),
        5,
        "nothing delivered while the collector is down"
    );
    assert!(
        rows.iter()
            .all(|r| r.syslog_sent_at.is_none() && r.attempts >= 1)
    );
    assert!(
        rows[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("127.0.0.1")),
        "{rows:?}"
    );

    // the collector comes up: everything queued arrives, then new events on the same connection
    reservation.release();
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let mut rx = start_tls_collector(listener, dir.path());
    let mut got = receive_frames(&mut rx, 5).await;
    wait_until_empty(&pool).await;
    let second: Vec<String> = (0..3).map(|i| format!("study_uid=second.{i}")).collect();
    record_all(
        &pool,
        &cfg,
        &second.iter().map(|t| query(t)).collect::<Vec<_>>(),
    )
    .await;
    got.extend(receive_frames(&mut rx, 3).await);
    wait_until_empty(&pool).await;
    stop.cancel();
    // no crash here, so exactly once: every message, none twice
    let expected: BTreeMap<String, usize> = first
        .iter()
        .chain(&second)
        .map(|t| (t.clone(), 1))
        .collect();
    assert_eq!(query_texts(&got), expected);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no duplicate afterwards"
    );
}

#[tokio::test]
async fn a_collector_with_a_certificate_we_do_not_trust_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let other = tempfile::tempdir().unwrap();
    make_certificates(other.path());
    let db = TestDb::create().await;
    let pool = migrated(&db).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // the collector's certificate comes from another CA
    let mut rx = start_tls_collector(listener, other.path());
    let cfg = tls_config(dir.path(), port);
    record_all(&pool, &cfg, &[query("study_uid=x")]).await;
    let stop = start_sender(&pool, cfg);
    wait_until_failed(&pool, 1).await;
    let row = &queued(&pool).await[0];
    assert!(
        row.last_error
            .as_deref()
            .is_some_and(|e| e.contains("TLS handshake")),
        "{row:?}"
    );
    stop.cancel();
    assert!(rx.try_recv().is_err());
}

#[test]
fn a_tls_client_config_needs_a_ca_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = audit::client_config(&AuditTlsFiles {
        ca_file: empty,
        client: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty.pem"), "{err}");
}

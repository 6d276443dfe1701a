//! The audit trail of the running daemon (issue 10): a UDP syslog collector on loopback receives
//! one well-formed PS3.15 A.5 message per event — application start, a refused peer (security
//! alert), a study received, an SR sent, an admin `findings` read (query), an admin `resend`
//! (export), application stop — each parsed and checked for its event ID, action, participants
//! and object identifiers. Patient identity is in the messages and nowhere in the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use dicom_dictionary_std::tags;

/// A UDP syslog collector: every datagram, as text.
struct Collector {
    port: u16,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while let Ok(n) = socket.recv(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        });
        Self { port, messages }
    }

    /// Wait for a message whose XML has EventID `code` (and `also`, when given).
    fn wait_for(&self, code: &str, also: &str, within: Duration) -> roxml::Message {
        let deadline = Instant::now() + within;
        loop {
            let found = self
                .messages
                .lock()
                .unwrap()
                .iter()
                .map(|m| roxml::Message::parse(m))
                .find(|m| m.event_id == code && m.xml.contains(also));
            if let Some(m) = found {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no audit message {code} with {also:?}; got:\n{:#?}",
                self.messages.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

mod roxml {
    /// One syslog message: its header checked, its XML parsed.
    #[derive(Debug)]
    pub struct Message {
        pub pri: u8,
        pub msgid: String,
        pub xml: String,
        pub event_id: String,
        pub action: String,
        /// (UserID, UserIsRequestor, RoleIDCode csd-code)
        pub participants: Vec<(String, String, String)>,
        /// ParticipantObjectID of each object
        pub objects: Vec<String>,
    }

    impl Message {
        pub fn parse(text: &str) -> Self {
            let i = text.find("<?xml").expect("XML in the message");
            let (header, xml) = text.split_at(i);
            let header = header
                .trim_start_matches('\u{FEFF}')
                .trim_end_matches('\u{FEFF}');
            let pri: u8 = header[1..header.find('>').unwrap()].parse().unwrap();
            let fields: Vec<&str> = header.split(' ').collect();
            assert!(fields[0].ends_with(">1"), "RFC 5424 version 1: {header}");
            let doc = roxmltree::Document::parse(xml).expect("well-formed XML");
            let root = doc.root_element();
            assert_eq!(root.tag_name().name(), "AuditMessage");
            let ev = root
                .children()
                .find(|c| c.has_tag_name("EventIdentification"))
                .expect("EventIdentification");
            let event_id = ev
                .children()
                .find(|c| c.has_tag_name("EventID"))
                .and_then(|e| e.attribute("csd-code"))
                .unwrap_or_default()
                .to_string();
            let participants = root
                .children()
                .filter(|c| c.has_tag_name("ActiveParticipant"))
                .map(|p| {
                    let role = p
                        .children()
                        .find(|c| c.has_tag_name("RoleIDCode"))
                        .and_then(|r| r.attribute("csd-code"))
                        .unwrap_or_default();
                    (
                        p.attribute("UserID").unwrap_or_default().to_string(),
                        p.attribute("UserIsRequestor")
                            .unwrap_or_default()
                            .to_string(),
                        role.to_string(),
                    )
                })
                .collect();
            let objects = root
                .children()
                .filter(|c| c.has_tag_name("ParticipantObjectIdentification"))
                .map(|o| {
                    o.attribute("ParticipantObjectID")
                        .unwrap_or_default()
                        .to_string()
                })
                .collect();
            Self {
                pri,
                msgid: fields.get(5).copied().unwrap_or_default().to_string(),
                action: ev
                    .attribute("EventActionCode")
                    .unwrap_or_default()
                    .to_string(),
                xml: xml.to_string(),
                event_id,
                participants,
                objects,
            }
        }
    }
}

fn attribute(file: &Path, tag: dicom_core::Tag) -> String {
    let obj = dicom_object::open_file(file).unwrap();
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn cli(config: &Path, args: &[&str]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    o
}

#[tokio::test(flavor = "multi_thread")]
async fn every_event_of_the_daemon_and_the_admin_commands_reaches_the_collector() {
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let collector = Collector::start();
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "{}\n[audit]\nenabled = true\nsyslog = \"udp://127.0.0.1:{}\"\nsource_id = \"cxr-test\"\n",
        analysis_sections(pacs.port),
        collector.port
    );
    let config = write_config_with(
        &dir,
        &db.url,
        r#"allowed_calling_ae_titles = ["MODALITY"]"#,
        &sections,
    );
    let mut d = Daemon::start_with(dir, config.clone());
    let wait = Duration::from_secs(60);

    let start = collector.wait_for("110100", "110120", wait);
    assert_eq!(start.msgid, "IHE+RFC-3881");
    assert_eq!(start.pri, 10 * 8 + 5, "authpriv.notice");
    assert!(
        start.participants.iter().any(|p| p.2 == "110150"),
        "{start:?}"
    );

    // a refused peer: security alert, a minor failure (warning)
    let rogue = run(
        "echoscu",
        &["-aet", "ROGUE", "-aec", AE, "127.0.0.1", &d.port()],
    );
    assert!(!rogue.status.success());
    let alert = collector.wait_for("110113", "ROGUE", wait);
    assert_eq!(alert.pri, 10 * 8 + 4, "authpriv.warning: {alert:?}");
    assert!(
        alert.xml.contains("EventOutcomeIndicator=\"4\""),
        "{}",
        alert.xml
    );
    assert!(alert.xml.contains("127.0.0.1"));

    // a study received, then its SR sent
    let chest = fixture("RG1_UNCR.dcm");
    let (study, patient_id) = (
        attribute(&chest, tags::STUDY_INSTANCE_UID),
        attribute(&chest, tags::PATIENT_ID),
    );
    let acks = pynetdicom_send(&d, "MODALITY", 1, std::slice::from_ref(&chest));
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let received = collector.wait_for("110104", "EventActionCode=\"C\"", wait);
    assert_eq!(received.action, "C", "{received:?}");
    assert!(received.objects.contains(&study), "{received:?}");
    assert!(received.objects.contains(&patient_id), "{received:?}");
    let roles: Vec<&str> = received.participants.iter().map(|p| p.2.as_str()).collect();
    assert!(
        roles.contains(&"110153") && roles.contains(&"110152"),
        "{received:?}"
    );
    assert!(
        received.participants.iter().any(|p| p.0 == "MODALITY"),
        "the sender by its AE title: {received:?}"
    );
    let sent = collector.wait_for("110104", "EventActionCode=\"R\"", Duration::from_secs(120));
    assert_eq!(sent.action, "R", "{sent:?}");
    assert!(sent.objects.contains(&study), "{sent:?}");
    assert!(sent.participants.iter().any(|p| p.0 == "PACS"), "{sent:?}");

    // the admin commands: findings (query), resend (export)
    cli(&config, &["findings"]);
    let query = collector.wait_for("110112", "", wait);
    assert!(
        query.participants.iter().any(|p| p.1 == "true"),
        "a requestor: {query:?}"
    );
    cli(&config, &["resend", &study]);
    let export = collector.wait_for("110106", "", wait);
    assert!(export.objects.contains(&study), "{export:?}");

    // stop
    assert!(d.terminate().success());
    collector.wait_for("110100", "110121", wait);

    // patient identity only in audit messages, never in the log
    let name = attribute(&chest, tags::PATIENT_NAME);
    let log = d.log_text();
    assert!(
        !name.is_empty() && !log.contains(&name),
        "patient name in the log"
    );
    assert!(
        !log.contains(&format!("\"{patient_id}\"")),
        "patient ID in the log"
    );
}

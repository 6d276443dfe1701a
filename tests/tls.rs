//! DICOM TLS (issue 10), with real peers on loopback: DCMTK `echoscu`/`storescu +tls` and
//! `openssl s_client` against the TLS listener, DCMTK `storescp +tls` as the destination, and a
//! PKI made by `openssl` in `tests/tls/make-pki.sh` (CA, server, clients, a rogue CA, an expired
//! client, a certificate that expires in 10 days).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use cxr_worker::config::Config;
use cxr_worker::send::scu::{self, ScuOptions, SendError};

/// The PKI, made once per test binary.
fn pki() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = Command::new(root().join("tests/tls/make-pki.sh"))
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "make-pki.sh: {}", text(&out));
        dir
    })
}

fn pem(name: &str) -> String {
    pki().join(name).display().to_string()
}

/// A daemon with a plain listener and a TLS listener (mutual TLS, `MOD` bound to the
/// certificate name `modality.example.org`) serving `server.crt`-like files copied into its own
/// directory (so a test may replace them).
fn start_tls(db_url: &str, server: &str) -> (Daemon, std::net::SocketAddr) {
    let dir = tempfile::tempdir().unwrap().keep();
    std::fs::copy(pki().join(format!("{server}.crt")), dir.join("server.crt")).unwrap();
    std::fs::copy(pki().join(format!("{server}.key")), dir.join("server.key")).unwrap();
    let sections = format!(
        r#"[study]
workers = 0

[dicom.tls]
listen = "127.0.0.1:0"
certificate = "server.crt"
private_key = "server.key"
ca_file = "{ca}"
certificate_names = {{ MOD = "modality.example.org" }}
"#,
        ca = pem("ca.crt")
    );
    let config = write_config_with(&dir, db_url, "", &sections);
    let d = Daemon::start_with(dir, config);
    let line = d.wait_log("listening (DICOM TLS)", 0, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr = v["addr"].as_str().unwrap().parse().unwrap();
    (d, addr)
}

/// `echoscu` over TLS with a client certificate (`None`: none) as `calling`.
fn echo_tls(port: u16, client: Option<&str>, calling: &str) -> Output {
    let port = port.to_string();
    let (key, crt) = client.map_or((String::new(), String::new()), |c| {
        (pem(&format!("{c}.key")), pem(&format!("{c}.crt")))
    });
    let mut args: Vec<&str> = vec!["-aet", calling, "-aec", AE, "-to", "10"];
    match client {
        Some(_) => args.extend(["+tls", &key, &crt]),
        None => args.push("+tla"),
    }
    let ca = pem("ca.crt");
    args.extend(["+cf", &ca, "127.0.0.1", &port]);
    run("echoscu", &args)
}

/// `storescu` over TLS as `MOD` with the modality's certificate: one chest CR.
fn store_tls(port: u16) -> Output {
    let file = fixture("RG1_UNCR.dcm").display().to_string();
    let (key, crt, ca) = (pem("modality.key"), pem("modality.crt"), pem("ca.crt"));
    let p = port.to_string();
    let args = [
        "-aet",
        "MOD",
        "-aec",
        AE,
        "+tls",
        &key,
        &crt,
        "+cf",
        &ca,
        "127.0.0.1",
        &p,
        &file,
    ];
    run("storescu", &args)
}

/// `openssl s_client` with the given protocol switch and the modality's certificate.
fn s_client(port: u16, protocol: &[&str]) -> Output {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec![
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        &pki().join("ca.crt").display().to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(["-cert", &pem("modality.crt"), "-key", &pem("modality.key")].map(String::from));
    args.extend(protocol.iter().map(|s| s.to_string()));
    Command::new("openssl")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn metric(d: &Daemon, name: &str) -> f64 {
    let (code, body) = http_get(d.http_addr(), "/metrics");
    assert_eq!(code, 200);
    *parse_metrics(&body)
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in\n{body}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn dcmtk_with_a_trusted_certificate_is_accepted_and_every_bad_peer_refused() {
    let db = TestDb::create().await;
    let (d, tls) = start_tls(&db.url, "server");
    let port = tls.port();

    // a trusted client: C-ECHO and a C-STORE over TLS, stored like any other
    let ok = echo_tls(port, Some("modality"), "MOD");
    assert!(ok.status.success(), "echoscu +tls: {}", text(&ok));
    let store = store_tls(port);
    assert!(store.status.success(), "storescu +tls: {}", text(&store));
    let p = port.to_string();
    let pool = db.pool().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM instances WHERE calling_ae_title = 'MOD'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 1);

    // refused in the handshake: another CA, expired, no certificate (mutual TLS)
    for (client, what) in [
        (Some("rogue"), "a certificate from another CA"),
        (Some("expired"), "an expired certificate"),
        (None, "no client certificate"),
    ] {
        let o = echo_tls(port, client, "MOD");
        assert!(!o.status.success(), "{what} was accepted: {}", text(&o));
    }
    // plain DICOM on the TLS port
    let plain = run("echoscu", &["-aec", AE, "-to", "10", "127.0.0.1", &p]);
    assert!(
        !plain.status.success(),
        "plain TCP on the TLS port: {}",
        text(&plain)
    );
    // TLS 1.1 (the client must be allowed to offer it at all: security level 0)
    let old = s_client(port, &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(!old.status.success(), "TLS 1.1 accepted: {}", text(&old));
    // ... while 1.2 and 1.3 with the same certificate are
    for (switch, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let o = s_client(port, &[switch]);
        assert!(
            o.status.success() && text(&o).contains(name),
            "{name}: {}",
            text(&o)
        );
    }
    let refused = d.log_text().matches("TLS handshake failed").count();
    assert!(
        refused >= 5,
        "5 handshakes refused, {refused} logged:\n{}",
        d.log_text()
    );
    assert!(metric(&d, "cxr_tls_handshakes_failed_total") >= 5.0);

    // the AE title MOD is bound to modality.example.org: another trusted certificate, or plain
    // TCP, may not call as MOD; an unbound AE title is free to use plain TCP
    let other = echo_tls(port, Some("other"), "MOD");
    assert!(!other.status.success());
    assert!(
        text(&other).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&other)
    );
    let as_mod = run(
        "echoscu",
        &["-aet", "MOD", "-aec", AE, "127.0.0.1", &d.port()],
    );
    assert!(
        !as_mod.status.success(),
        "MOD over plain TCP: {}",
        text(&as_mod)
    );
    let unbound = run(
        "echoscu",
        &["-aet", "OTHER", "-aec", AE, "127.0.0.1", &d.port()],
    );
    assert!(unbound.status.success(), "{}", text(&unbound));
    let other_ae = echo_tls(port, Some("other"), "OTHER");
    assert!(other_ae.status.success(), "{}", text(&other_ae));
    assert!(
        d.log_text()
            .contains("bound to a certificate name the client did not present")
    );

    let left = metric(
        &d,
        "cxr_tls_certificate_expiry_seconds{certificate=\"dicom.tls.certificate\"}",
    );
    assert!(left > 800.0 * 86_400.0 && left < 826.0 * 86_400.0, "{left}");
    assert!(
        metric(
            &d,
            "cxr_tls_certificate_expiry_seconds{certificate=\"dicom.tls.ca_file\"}"
        ) > 0.0
    );
}

fn fingerprint_served(port: u16) -> String {
    let o = s_client(port, &["-tls1_3"]);
    assert!(o.status.success(), "{}", text(&o));
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin.take().unwrap().write_all(&o.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()
}

fn fingerprint_of(name: &str) -> String {
    let o = run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-fingerprint",
            "-sha256",
            "-in",
            &pem(name),
        ],
    );
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_serves_the_renewed_certificate_and_readyz_warns_a_month_ahead() {
    let db = TestDb::create().await;
    let (mut d, tls) = start_tls(&db.url, "soon");
    assert_eq!(fingerprint_served(tls.port()), fingerprint_of("soon.crt"));
    let (code, body) = http_get(d.http_addr(), "/readyz");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "expiring is a warning, not unready: {v}");
    let warning = v["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.contains("dicom.tls.certificate") && warning.contains("expires in"),
        "{v}"
    );
    assert!(d.log_text().contains("TLS certificate expired or expiring"));
    let days = metric(
        &d,
        "cxr_tls_certificate_expiry_seconds{certificate=\"dicom.tls.certificate\"}",
    ) / 86_400.0;
    assert!((9.0..=10.0).contains(&days), "{days}");

    // renew: new files in place, SIGHUP
    std::fs::copy(pki().join("server2.crt"), d.dir.join("server.crt")).unwrap();
    std::fs::copy(pki().join("server2.key"), d.dir.join("server.key")).unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_log(
        "DICOM TLS certificate and trust reloaded",
        mark,
        Duration::from_secs(10),
    );
    assert_eq!(
        fingerprint_served(tls.port()),
        fingerprint_of("server2.crt")
    );
    let (code, body) = http_get(d.http_addr(), "/readyz");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");

    // a broken renewal (the key of another certificate) is refused and the old one kept
    std::fs::copy(pki().join("modality.key"), d.dir.join("server.key")).unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    let line = d.wait_log("dicom.tls.private_key", mark, Duration::from_secs(10));
    assert!(line.contains("cannot serve the certificate"), "{line}");
    assert_eq!(
        fingerprint_served(tls.port()),
        fingerprint_of("server2.crt")
    );
    assert!(d.is_running());
}

fn check_config(dir: &Path, text: &str) -> String {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!o.status.success(), "accepted:\n{text}");
    text_of(&o)
}

fn text_of(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn unusable_tls_files_are_configuration_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n[spool]\ndir = \"{}\"\n[dicom]\nallow_any_calling_ae = true\n",
        dir.path().display()
    );
    let tls = |extra: &str| format!("{base}[dicom.tls]\n{extra}\n");
    let server = format!(
        "certificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"",
        pem("server.crt"),
        pem("server.key"),
        pem("ca.crt")
    );
    for (text, key, says) in [
        (
            tls(&server.replace("server.key", "missing.key")),
            "dicom.tls.private_key",
            "missing.key",
        ),
        (
            tls(&server.replace("server.key", "modality.key")),
            "dicom.tls.private_key",
            "cannot serve the certificate",
        ),
        (
            tls(&server.replace("server.key", "server.crt")),
            "dicom.tls.private_key",
            "no PEM private key",
        ),
        (
            tls(&server.replace("server.crt", "server.key")),
            "dicom.tls.certificate",
            "no usable PEM certificate",
        ),
        (
            tls(&server.replace(&format!("ca_file = \"{}\"", pem("ca.crt")), "")),
            "dicom.tls.ca_file",
            "mutual TLS",
        ),
        (
            format!("{base}listen = \"off\"\n"),
            "dicom.listen",
            "nothing would receive",
        ),
        (
            format!(
                "{base}[[destinations]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 2762\ntls = true\n"
            ),
            "destinations[0].ca_file",
            "pinned_sha256",
        ),
        (
            format!(
                "{base}[[destinations]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 2762\ntls = true\npinned_sha256 = \"abc\"\n"
            ),
            "destinations[0].pinned_sha256",
            "64 hex digits",
        ),
    ] {
        let out = check_config(dir.path(), &text);
        assert!(
            out.contains(key) && out.contains(says),
            "want {key} / {says}, got: {out}"
        );
        assert!(!out.contains("BEGIN"), "no PEM content in errors: {out}");
    }
}

/// A destination PACS: DCMTK storescp over TLS with `pacs.crt`, trusting our CA; `extra` adds
/// options (`-rc`: a client certificate is required).
fn storescp_tls(extra: &[&str]) -> StoreScp {
    let dir = tempfile::tempdir().unwrap().keep();
    let (key, crt, ca) = (pem("pacs.key"), pem("pacs.crt"), pem("ca.crt"));
    let mut args = vec!["-aet", "PACS", "+xa", "-uf", "+tls", &key, &crt, "+cf", &ca];
    args.extend(extra);
    StoreScp::start_on(reserve_port(), &dir, &args)
}

fn destination(port: u16, tls_lines: &str) -> cxr_worker::config::Destination {
    let text = format!(
        "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n[spool]\ndir = \"/tmp/spool\"\n\
         [[destinations]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = {port}\n{tls_lines}\n"
    );
    let c = Config::from_toml_str(&text, Path::new("/tmp/t.toml"), std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    c.destinations[0].clone()
}

/// Generous: the tests beside these run the models on the same two cores.
fn opts() -> ScuOptions {
    ScuOptions {
        connect_timeout: Duration::from_secs(10),
        dimse_timeout: Duration::from_secs(60),
        ..ScuOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn srs_go_to_storescp_over_tls_checked_by_ca_and_name_or_by_pin() {
    // -vc: a client certificate is verified if presented, not required (storescp's default)
    let pacs = storescp_tls(&["-vc"]);
    let file = fixture("RG1_UNCR.dcm");
    let ca = format!("tls = true\nca_file = \"{}\"", pem("ca.crt"));
    let sent = scu::store_file(&destination(pacs.port, &ca), &file, &opts()).await;
    assert!(sent.is_ok(), "{sent:?}\n{}", pacs.log());
    let pin = fingerprint_of("pacs.crt")
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .to_string();
    let pinned = format!("tls = true\npinned_sha256 = \"{pin}\"");
    let sent = scu::store_file(&destination(pacs.port, &pinned), &file, &opts()).await;
    assert!(sent.is_ok(), "{sent:?}");
    // the same instance twice: storescp stored it, then overwrote it
    assert_eq!(pacs.files().len(), 1, "{}", pacs.log());
    assert!(
        pacs.log().contains("already exists, overwriting"),
        "{}",
        pacs.log()
    );

    // each failure is a retryable TLS failure saying why
    let wrong_pin = format!("tls = true\npinned_sha256 = \"{}\"", "ab".repeat(32));
    for (lines, why) in [
        (
            format!("{ca}\nserver_name = \"wrong.example.org\""),
            "not valid for name",
        ),
        (
            format!("tls = true\nca_file = \"{}\"", pem("rogue-ca.crt")),
            "UnknownIssuer",
        ),
        (wrong_pin, "ApplicationVerificationFailure"),
    ] {
        let e = scu::store_file(&destination(pacs.port, &lines), &file, &opts())
            .await
            .unwrap_err();
        assert!(matches!(e, SendError::Tls { .. }), "{lines}: {e:?}");
        assert!(e.is_retryable());
        assert!(e.to_string().contains(why), "{lines}: {e}");
    }
    // a plain association to a TLS port fails, and may be retried once someone fixes it
    let e = scu::store_file(&destination(pacs.port, ""), &file, &opts())
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(pacs.files().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destination_that_requires_client_certificates_gets_ours() {
    let pacs = storescp_tls(&["-rc"]);
    let file = fixture("RG1_UNCR.dcm");
    let ca = format!("tls = true\nca_file = \"{}\"", pem("ca.crt"));
    let e = scu::store_file(&destination(pacs.port, &ca), &file, &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(e, SendError::Tls { .. }) && e.is_retryable(),
        "{e:?}"
    );
    assert!(e.to_string().contains("client certificate"), "{e}");
    let with_cert = format!(
        "{ca}\ncertificate = \"{}\"\nprivate_key = \"{}\"",
        pem("server.crt"),
        pem("server.key")
    );
    let sent = scu::store_file(&destination(pacs.port, &with_cert), &file, &opts()).await;
    assert!(sent.is_ok(), "{sent:?}\n{}", pacs.log());
    assert_eq!(pacs.files().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_study_received_over_tls_is_reported_over_tls() {
    let db = TestDb::create().await;
    let pacs = storescp_tls(&["-rc"]);
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "{}tls = true\nca_file = \"{ca}\"\ncertificate = \"{crt}\"\nprivate_key = \"{key}\"\n\n\
         [dicom.tls]\nlisten = \"127.0.0.1:0\"\ncertificate = \"{crt}\"\nprivate_key = \"{key}\"\nca_file = \"{ca}\"\n",
        analysis_sections(pacs.port),
        ca = pem("ca.crt"),
        crt = pem("server.crt"),
        key = pem("server.key"),
    );
    let config = write_config_with(&dir, &db.url, "", &sections);
    let d = Daemon::start_with(dir, config);
    let line = d.wait_log("listening (DICOM TLS)", 0, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let tls: std::net::SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
    let store = store_tls(tls.port());
    assert!(store.status.success(), "{}", text(&store));
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if sent >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no SR sent over TLS:\n{}\n{}",
            d.log_text(),
            pacs.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pacs.files().len(), 1, "{}", pacs.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_only_the_plain_listener_off() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "[study]\nworkers = 0\n\n[dicom.tls]\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n",
        pem("server.crt"),
        pem("server.key"),
        pem("ca.crt")
    );
    let path = write_config_with(&dir, &db.url, "", &sections);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replacen("listen = \"127.0.0.1:0\"", "listen = \"off\"", 1),
    )
    .unwrap();
    let config = Config::load(&path).unwrap();
    assert!(config.dicom.listen.is_none());
    let daemon = cxr_worker::daemon::Daemon::build(config)
        .await
        .unwrap()
        .expect("not shut down");
    assert!(daemon.dicom_addr().is_none(), "no plain listener");
    let tls = daemon.tls_addr().expect("the TLS listener");
    let stop = daemon.shutdown_token();
    let running = tokio::spawn(daemon.run());
    let echo = tokio::task::spawn_blocking(move || echo_tls(tls.port(), Some("modality"), "MOD"))
        .await
        .unwrap();
    assert!(echo.status.success(), "{}", text_of(&echo));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("drains")
        .unwrap()
        .unwrap();
}

#[test]
fn serve_refuses_to_start_without_its_key_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[database]\nurl = \"postgres://u@127.0.0.1:1/db\"\n[spool]\ndir = \"{}\"\n[dicom]\nallow_any_calling_ae = true\n[dicom.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n",
        dir.path().display(),
        pem("server.crt"),
        dir.path().join("gone.key").display(),
        pem("ca.crt")
    );
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
        .args(["serve", "--config"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let out = text_of(&o);
    assert!(
        out.contains("dicom.tls.private_key") && out.contains("gone.key"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_failure_waits_in_the_outbox_with_its_reason_until_a_reload_fixes_it() {
    let db = TestDb::create().await;
    let pacs = storescp_tls(&["-vc"]);
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "{}tls = true\nca_file = \"{}\"\n",
        analysis_sections(pacs.port),
        pem("rogue-ca.crt")
    );
    let config = write_config_with(&dir, &db.url, "", &sections);
    let d = Daemon::start_with(dir, config.clone());
    let acks = pynetdicom_send(&d, "MODALITY", 1, &[fixture("RG1_UNCR.dcm")]);
    assert!(acks.iter().all(|a| a.status == 0), "{acks:?}");
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let error = loop {
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT state, last_error FROM outbox WHERE attempts >= 1 AND last_error IS NOT NULL",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some((state, Some(error))) = row {
            assert_ne!(state, "failed", "a TLS failure is retried");
            break error;
        }
        assert!(Instant::now() < deadline, "no attempt:\n{}", d.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        error.contains("TLS with 127.0.0.1") && error.contains("UnknownIssuer"),
        "{error}"
    );
    assert!(pacs.files().is_empty());

    // the right CA, a reload: what waited is delivered
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("rogue-ca.crt", "ca.crt")).unwrap();
    let mark = d.log_len();
    d.signal(libc::SIGHUP);
    d.wait_log("destinations", mark, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE state = 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap();
        if sent == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not sent after the reload:\n{}",
            d.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pacs.files().len(), 1, "{}", pacs.log());
}

#[test]
fn check_config_shows_each_certificate_and_fails_an_expired_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = |server: &str| {
        format!(
            "[database]\nurl = \"postgres://u@127.0.0.1:1/db\"\n[spool]\ndir = \"{}\"\n[dicom]\nallow_any_calling_ae = true\n[dicom.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\n",
            dir.path().display(),
            pem(&format!("{server}.crt")),
            pem(&format!("{server}.key")),
            pem("ca.crt")
        )
    };
    let check = |server: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text(server)).unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
            .args(["check-config", "--offline", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (o.status.success(), text_of(&o))
    };
    let (ok, out) = check("server");
    assert!(ok, "{out}");
    assert!(
        out.contains("OK      dicom.tls.certificate: CN=cxr-worker.example.org")
            && out.contains("valid for")
            && out.contains("OK      dicom.tls.ca_file: CN=cxr-worker test CA"),
        "{out}"
    );
    let (ok, out) = check("soon");
    assert!(ok && out.contains("WARNING: expires in"), "{out}");
    let (ok, out) = check("expired");
    assert!(
        !ok && out.contains("FAILED  dicom.tls.certificate") && out.contains("expired"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn optional_client_certificates_are_verified_when_presented() {
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap().keep();
    let sections = format!(
        "[study]\nworkers = 0\n\n[dicom.tls]\nlisten = \"127.0.0.1:0\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nca_file = \"{}\"\nrequire_client_certificate = false\n",
        pem("server.crt"),
        pem("server.key"),
        pem("ca.crt")
    );
    let d = Daemon::start_with(dir.clone(), write_config_with(&dir, &db.url, "", &sections));
    let line = d.wait_log("listening (DICOM TLS)", 0, Duration::from_secs(10));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let port = v["addr"]
        .as_str()
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let anonymous = echo_tls(port, None, "ANY");
    assert!(
        anonymous.status.success(),
        "no certificate: {}",
        text(&anonymous)
    );
    let trusted = echo_tls(port, Some("modality"), "ANY");
    assert!(trusted.status.success(), "{}", text(&trusted));
    let rogue = echo_tls(port, Some("rogue"), "ANY");
    assert!(
        !rogue.status.success(),
        "a certificate presented is still verified"
    );
}

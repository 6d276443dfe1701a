//! Hostile input against the real daemon over real sockets (issue 8): crafted PDUs, command sets
//! and data sets, decoder bombs, idle and flooding connections, half-sent HTTP requests, a job
//! that kills its worker. After each attack the daemon must still be the same process, answer a
//! C-ECHO within 5 s, stay under [`RSS_BOUND_MIB`] of peak resident memory, and turn a normal real
//! chest study sent afterwards into an SR delivered to the PACS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::dul::{self, CR, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, VERIFICATION};
use common::*;
use sqlx::PgPool;

/// The daemon's peak resident set size may not exceed this: about 45 MiB at rest (tiny models,
/// one worker), plus the 64 MiB receive memory budget, plus slack. Before the fixes one 400 MiB
/// C-STORE alone cost 800 MiB, and a crafted 4 GB length allocated 4 GB. (The decode helper is a
/// process of its own, held by its own limit.)
const RSS_BOUND_MIB: u64 = 192;

struct Target {
    _db: TestDb,
    pacs: StoreScp,
    d: Daemon,
    pid: u32,
    pool: PgPool,
    dir: PathBuf,
}

impl Target {
    async fn start(dicom_extra: &str, sections_extra: &str) -> Self {
        let db = TestDb::create().await;
        let pacs = StoreScp::start();
        let dir = tempfile::tempdir().unwrap().keep();
        let dicom = format!("receive_memory_mb = 64\n{dicom_extra}");
        let sections = format!("{}\n{sections_extra}", analysis_sections(pacs.port));
        let config = write_config_with(&dir, &db.url, &dicom, &sections);
        let d = Daemon::start_with(dir.clone(), config);
        let pid = d.pid();
        let pool = db.pool().await;
        Self {
            _db: db,
            pacs,
            d,
            pid,
            pool,
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.d.addr
    }

    /// The checks after every attack.
    async fn survives(&mut self, what: &str) {
        assert!(
            self.d.is_running(),
            "{what}: the daemon died:\n{}",
            self.d.log_text()
        );
        assert_eq!(self.d.pid(), self.pid, "{what}: another process");
        let took = dul::echo(self.addr(), AE)
            .unwrap_or_else(|e| panic!("{what}: C-ECHO failed: {e}\n{}", self.d.log_text()));
        assert!(
            took < Duration::from_secs(5),
            "{what}: C-ECHO took {took:?}"
        );
        let rss = self.d.peak_rss_mib();
        assert!(
            rss <= RSS_BOUND_MIB,
            "{what}: peak RSS {rss} MiB > {RSS_BOUND_MIB} MiB"
        );
        let study = send_fresh_chest(self.addr(), &self.dir, None);
        wait_true(
            &self.pool,
            "SELECT EXISTS (SELECT 1 FROM outbox WHERE study_instance_uid = $1 AND state = 'sent')",
            &study,
            Duration::from_secs(120),
        )
        .await;
        eprintln!("{what}: survived (peak RSS {rss} MiB, C-ECHO {took:?})");
    }
}

async fn wait_true(pool: &PgPool, sql: &str, arg: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let done: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .bind(arg)
            .fetch_one(pool)
            .await
            .unwrap();
        if done == Some(true) {
            return;
        }
        assert!(Instant::now() < deadline, "{sql} ({arg}) after {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A copy of the real chest CR (RG1_UNCR) with new UIDs (in `study`); its data set.
fn fresh_chest_dataset(dir: &std::path::Path, study: &str) -> (String, Vec<u8>) {
    let (sop, path) = chest_copy(dir, study);
    let file = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    let layout = cxr_worker::dicom::guard::check(&file, Default::default()).unwrap();
    (sop, file[layout.dataset_offset..].to_vec())
}

/// Send a fresh copy of the real chest CR; its study UID.
fn send_fresh_chest(addr: SocketAddr, dir: &std::path::Path, study: Option<&str>) -> String {
    let study = study.map_or_else(dul::new_uid, str::to_string);
    let (sop, ds) = fresh_chest_dataset(dir, &study);
    let mut s = dul::associate(addr, "MODALITY", AE, &[(1, CR, EXPLICIT_LE)]).unwrap();
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0), "{sop}");
    dul::release(s);
    study
}

/// Whether the daemon ended the association: an A-ABORT, or the connection closed.
fn ended(s: &mut std::net::TcpStream) -> bool {
    match dul::read_one(s) {
        Ok(dicom_ul::pdu::Pdu::AbortRQ { .. }) => true,
        Ok(other) => panic!("expected the association to end, got {other:?}"),
        Err(_) => true,
    }
}

fn header(sop: &str) -> Vec<u8> {
    dul::cr_header(sop, &dul::new_uid(), &dul::new_uid())
}

#[tokio::test(flavor = "multi_thread")]
async fn crafted_messages_cannot_take_the_daemon_down() {
    let mut t = Target::start("", "").await;
    let addr = t.addr();

    // 1. a C-ECHO command set nesting 3000 undefined-length sequences
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, VERIFICATION, IMPLICIT_LE)]).unwrap();
    let mut nested = Vec::new();
    for _ in 0..3000 {
        nested.extend_from_slice(&[0x00, 0x00, 0x00, 0x09, 0xFF, 0xFF, 0xFF, 0xFF]);
        nested.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }
    let mut cmd = dul::c_echo_rq(1);
    cmd.extend(nested);
    s.write_all(&dul::pdata(1, true, true, &cmd)).unwrap();
    assert!(ended(&mut s));
    t.survives("command set nesting 3000 sequences").await;

    // 2. a command element declaring 0xFFFFFFF0 bytes
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, VERIFICATION, IMPLICIT_LE)]).unwrap();
    let mut cmd = dul::element(0, 0x0100, &0x0030u16.to_le_bytes());
    cmd.extend_from_slice(&[0x00, 0x00, 0x02, 0x00, 0xF0, 0xFF, 0xFF, 0xFF, b'1', b'.']);
    s.write_all(&dul::pdata(1, true, true, &cmd)).unwrap();
    assert!(ended(&mut s));
    t.survives("command element of 0xFFFFFFF0 bytes").await;

    // 3. PDUs declaring 4 GB, before and after association; garbage
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, VERIFICATION, IMPLICIT_LE)]).unwrap();
    s.write_all(&[0x04, 0, 0xFF, 0xFF, 0xFF, 0xF0, 0, 0])
        .unwrap();
    assert!(ended(&mut s));
    let mut s = dul::connect(addr);
    s.write_all(&[0x01, 0, 0xFF, 0xFF, 0xFF, 0xF0, 0, 1])
        .unwrap();
    assert!(ended(&mut s));
    let mut s = dul::connect(addr);
    let garbage: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let _ = s.write_all(&garbage);
    assert!(ended(&mut s));
    t.survives("PDUs declaring 4 GB, garbage").await;

    // 4. a data set with an unknown VR declaring 0xFFFFFFF0 bytes: C000
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, CR, EXPLICIT_LE)]).unwrap();
    let sop = dul::new_uid();
    let mut ds = header(&sop);
    ds.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2,
    ]);
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0xC000));
    // ... and 3000 sequences nested inside an undefined-length UN: A700 (a structural limit)
    let sop = dul::new_uid();
    let mut ds = header(&sop);
    ds.extend(dul::ex_long(0x0009, 0x1010, b"UN", 0xFFFF_FFFF));
    for _ in 0..3000 {
        ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        ds.extend(dul::ex_long(0x0009, 0x1010, b"SQ", 0xFFFF_FFFF));
    }
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0xA700));
    dul::release(s);
    t.survives("unknown VR, hidden deep nesting").await;

    // 5. a deflate bomb: 640 MiB of zeros in a few hundred KB
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, CR, DEFLATED)]).unwrap();
    let sop = dul::new_uid();
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&header(&sop)).unwrap();
    z.write_all(&dul::ex_long(0x0009, 0x1010, b"OB", 640 << 20))
        .unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..640 {
        z.write_all(&zeros).unwrap();
    }
    let bomb = z.finish().unwrap();
    assert!(bomb.len() < 2 << 20, "{} bytes", bomb.len());
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &bomb), Ok(0xA700));
    dul::release(s);
    t.survives("deflate bomb").await;

    // 6. a 400 MiB C-STORE is streamed to disk, not held in memory
    let mut s = dul::associate(addr, "ATTACKER", AE, &[(1, CR, EXPLICIT_LE)]).unwrap();
    let sop = dul::new_uid();
    let mut head = dul::cr_header(&sop, &dul::new_uid(), &dul::new_uid());
    head.extend(dul::pixel_module(10_240, 20_480, 16, 12));
    head.extend(dul::ex_long(0x7FE0, 0x0010, b"OW", 400 << 20));
    s.write_all(&dul::pdata(1, true, true, &dul::c_store_rq(9, CR, &sop)))
        .unwrap();
    s.write_all(&dul::pdata(1, false, false, &head)).unwrap();
    let chunk = vec![0u8; 60 * 1024];
    let mut left = 400usize << 20;
    while left > 0 {
        let n = left.min(chunk.len());
        left -= n;
        s.write_all(&dul::pdata(1, false, left == 0, &chunk[..n]))
            .unwrap();
    }
    let status = dul::status_of(&dul::read_one(&mut s).unwrap());
    assert_eq!(status, Some(0), "the 400 MiB instance is stored");
    // ... but 20 MiB of attributes before the pixel data exceed the header cap (16 MiB): A700
    let sop = dul::new_uid();
    let mut ds = header(&sop);
    ds.extend(dul::ex_long(0x0009, 0x1010, b"OB", 20 << 20));
    ds.extend(std::iter::repeat_n(0u8, 20 << 20));
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0xA700));
    dul::release(s);
    t.survives("400 MiB C-STORE").await;

    // 7. newlines and escape codes in an AE title and in UIDs, to forge log lines
    let forged = "A\n{\"level\":\"X";
    let mut s = dul::associate(addr, forged, AE, &[(1, CR, EXPLICIT_LE)]).unwrap();
    let sop = "1.2.3\n{\"level\":\"ERROR\"}\u{1b}[2J";
    let mut ds = header(sop);
    ds.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x00, b'Z', b'Z', 0, 0, 4, 0, 0, 0, 1, 2, 3, 4,
    ]);
    assert_eq!(dul::store(&mut s, 1, CR, sop, &ds), Ok(0xC000));
    dul::release(s);
    t.survives("log injection").await;

    let m = parse_metrics(&http_get(t.d.http_addr(), "/metrics").1);
    assert!(
        m["cxr_instances_rejected_total{reason=\"limits\"}"] >= 2.0,
        "{m:?}"
    );
    assert!(m["cxr_instances_rejected_total{reason=\"unreadable\"}"] >= 1.0);
    assert_eq!(m["cxr_receive_memory_limit_bytes"], (64u64 << 20) as f64);
    // every log line stayed one JSON object: nothing a peer sent split a line
    let log = t.d.log_text();
    for line in log.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON log line: {line:?}"
        );
    }
    assert!(
        log.contains(r#"A\\n{\\\"level"#),
        "the forged AE title, escaped:\n{log}"
    );
    drop(t.pacs);
    // passed: the spool (with the 400 MiB instance) need not outlive the test
    let dir = t.dir.clone();
    drop(t.d);
    let _ = std::fs::remove_dir_all(dir);
}

/// Connect from `source` (another loopback address: another host to the daemon).
async fn connect_from(source: &str, addr: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    lim.current = lim.maximum.map(|m| m.min(65_536)).or(Some(65_536));
    let _ = setrlimit(Resource::Nofile, lim);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_and_flooding_connections_do_not_lock_senders_out() {
    raise_fd_limit();
    let mut t = Target::start("", "").await;
    let addr = t.addr();

    // 32 idle sockets from one host: a sender from another host still gets in at once
    let mut idle = Vec::new();
    for _ in 0..32 {
        idle.push(connect_from("127.0.0.2", addr).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = dul::echo(addr, AE).unwrap();
    assert!(took < Duration::from_secs(2), "{took:?}");
    t.survives("32 idle sockets").await;
    drop(idle);

    // a flood of 2000 connections: no file descriptor runs out, /readyz answers
    let mut flood = Vec::new();
    for _ in 0..2000 {
        flood.push(connect_from("127.0.0.3", addr).await);
    }
    let started = Instant::now();
    let (code, body) = http_get(t.d.http_addr(), "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    t.survives("2000 connections").await;
    drop(flood);
    let m = parse_metrics(&http_get(t.d.http_addr(), "/metrics").1);
    assert!(
        m["cxr_connections_refused_total{reason=\"pending\"}"] >= 1900.0,
        "{m:?}"
    );
    assert!(!t.d.log_text().contains("Too many open files"));

    // 500 half-sent HTTP requests: the endpoints still answer, and the stragglers are cut
    let http = t.d.http_addr();
    let mut half = Vec::new();
    for _ in 0..500 {
        let mut s = std::net::TcpStream::connect(http).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
        half.push(s);
    }
    // the 64 connection slots are taken by half-sent requests until their 5 s header deadline:
    // a health check gets in as soon as they are cut
    let started = Instant::now();
    loop {
        if let Some((200, _)) = try_http_get(http, "/healthz") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "no /healthz answer within 8 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    for s in &mut half {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = [0u8; 256];
        // the daemon closed it (EOF or reset), or answered the timeout with an error
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            ),
        }
    }
    t.survives("500 half-sent HTTP requests").await;
}

/// `GET path`, or `None` when the connection is refused or closed without an answer.
fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

fn jpeg_header(marker: u8, precision: u8, lines: u16, cols: u16, comps: u8) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, marker];
    v.extend_from_slice(&(8 + 3 * u16::from(comps)).to_be_bytes());
    v.push(precision);
    v.extend_from_slice(&lines.to_be_bytes());
    v.extend_from_slice(&cols.to_be_bytes());
    v.push(comps);
    for c in 0..comps {
        v.extend_from_slice(&[c + 1, 0x11, 0]);
    }
    v.extend_from_slice(&[0xFF, 0xD9]);
    v
}

fn j2k_header(width: u32, height: u32) -> Vec<u8> {
    let mut v = vec![0xFF, 0x4F, 0xFF, 0x51, 0, 41, 0, 0];
    for f in [width, height, 0, 0, width, height, 0, 0] {
        v.extend_from_slice(&f.to_be_bytes());
    }
    v.extend_from_slice(&[0, 1, 7, 1, 1, 0xFF, 0xD9]);
    v
}

/// Store an encapsulated CR image of `rows` × `cols` in `study`, in transfer syntax `ts`.
fn store_image(
    addr: SocketAddr,
    study: &str,
    ts: &str,
    (rows, cols, bits): (u16, u16, u16),
    fragment: Vec<u8>,
) -> String {
    let sop = dul::new_uid();
    let mut ds = dul::cr_header(&sop, study, &dul::new_uid());
    ds.extend(dul::pixel_module(
        rows,
        cols,
        if bits > 8 { 16 } else { 8 },
        bits,
    ));
    ds.extend(dul::encapsulated(&[fragment]));
    let mut s = dul::associate(addr, "MODALITY", AE, &[(1, CR, ts)]).unwrap();
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0), "{ts}");
    dul::release(s);
    sop
}

/// Store a native (uncompressed) 16-bit CR image of `rows` × `cols` in `study`.
fn store_native(addr: SocketAddr, study: &str, rows: u16, cols: u16) -> String {
    let sop = dul::new_uid();
    let mut ds = dul::cr_header(&sop, study, &dul::new_uid());
    ds.extend(dul::pixel_module(rows, cols, 16, 12));
    let n = usize::from(rows) * usize::from(cols) * 2;
    ds.extend(dul::ex_long(0x7FE0, 0x0010, b"OW", n as u32));
    ds.extend(std::iter::repeat_n(7u8, n));
    let mut s = dul::associate(addr, "MODALITY", AE, &[(1, CR, EXPLICIT_LE)]).unwrap();
    assert_eq!(dul::store(&mut s, 1, CR, &sop, &ds), Ok(0));
    dul::release(s);
    sop
}

#[tokio::test(flavor = "multi_thread")]
async fn images_that_break_decoders_cost_one_image_each() {
    // a decode helper held to 256 MiB of address space: a 7000 x 7000 image outgrows it
    let mut t = Target::start("", "[decode]\nmemory_limit_mb = 256\n").await;
    let addr = t.addr();
    let study = dul::new_uid();
    let mut bad = Vec::new();
    // an RLE segment table pointing outside its fragment
    let mut rle = vec![0u8; 80];
    rle[0] = 2;
    rle[4] = 64;
    rle[8] = 200;
    bad.push(store_image(addr, &study, dul::RLE, (4, 4, 12), rle));
    // a JPEG baseline frame of 64 x 64 in a 4 x 4 image
    bad.push(store_image(
        addr,
        &study,
        "1.2.840.10008.1.2.4.50",
        (4, 4, 8),
        jpeg_header(0xC0, 8, 64, 64, 1),
    ));
    // a JPEG 2000 image of 64 x 64 in a 4 x 4 image
    bad.push(store_image(
        addr,
        &study,
        "1.2.840.10008.1.2.4.90",
        (4, 4, 8),
        j2k_header(64, 64),
    ));
    // a JPEG-LS header claiming 65535 x 65535 x 3 samples (25.7 GB)
    bad.push(store_image(
        addr,
        &study,
        dul::JPEG_LS,
        (4, 4, 12),
        jpeg_header(0xF7, 16, 65535, 65535, 3),
    ));
    // an RLE segment that ends in the middle of a literal run (the codec unwraps its read)
    let mut cut = vec![0u8; 68];
    cut[0] = 2;
    cut[4] = 64;
    cut[8] = 66;
    cut[64] = 5;
    cut[66] = 5;
    bad.push(store_image(addr, &study, dul::RLE, (4, 4, 12), cut));
    // a valid 7000 x 7000 image whose decoding outgrows the helper's memory limit: it aborts
    let big = store_native(addr, &study, 7000, 7000);
    // and a real chest image in the same study
    send_fresh_chest(addr, &t.dir, Some(&study));

    wait_true(
        &t.pool,
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE study_instance_uid = $1 AND state = 'sent')",
        &study,
        Duration::from_secs(180),
    )
    .await;
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT sop_instance_uid, state, state_reason FROM instances WHERE study_instance_uid = $1",
    )
    .bind(&study)
    .fetch_all(&t.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 7);
    for (sop, state, reason) in &rows {
        let reason = reason.clone().unwrap_or_default();
        if let Some(i) = bad.iter().position(|b| b == sop) {
            assert_eq!(state, "skipped", "{sop}: {reason}");
            assert!(reason.starts_with("undecodable"), "{sop}: {reason}");
            if i < 4 {
                assert!(reason.contains("does not match"), "{sop}: {reason}");
            }
        } else if *sop == big {
            assert_eq!(state, "skipped", "{reason}");
            assert!(reason.contains("decoder crashed"), "{reason}");
        } else {
            assert_eq!(state, "analysed", "the real chest image: {reason}");
        }
    }
    let kind: String = sqlx::query_scalar("SELECT kind FROM reports WHERE study_instance_uid = $1")
        .bind(&study)
        .fetch_one(&t.pool)
        .await
        .unwrap();
    assert_eq!(kind, "findings");
    let (code, body) = http_get(t.d.http_addr(), "/readyz");
    assert_eq!(code, 200, "{body}");
    t.survives("decoder bombs").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_that_kills_its_worker_ends_failed_with_an_sr() {
    let db = TestDb::create().await;
    let pacs = StoreScp::start();
    let pool = db.pool().await;
    // receive only: the study arrives
    let dir = tempfile::tempdir().unwrap().keep();
    let config = write_config(&dir, &db.url, "");
    let mut receiver = Daemon::start_with(dir.clone(), config);
    let study = send_fresh_chest(receiver.addr, &dir, None);
    assert!(receiver.terminate().success());
    // the state a worker leaves when it dies mid-job for the third time
    sqlx::query(
        "INSERT INTO jobs (study_instance_uid, state, attempts, lease_owner, lease_expires_at, last_error)
         VALUES ($1, 'running', 3, 'dead-host:1:0', now() - interval '1 minute', 'worker died')",
    )
    .bind(&study)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE instances SET state = 'analysing' WHERE study_instance_uid = $1")
        .bind(&study)
        .execute(&pool)
        .await
        .unwrap();
    // a worker with max_attempts = 3 fails it instead of taking it a fourth time
    let sections = analysis_sections(pacs.port).replace("[study]\n", "[study]\nmax_attempts = 3\n");
    assert!(sections.contains("max_attempts = 3"));
    let config = write_config_with(&dir, &db.url, "", &sections);
    let mut worker = Daemon::start_with(dir.clone(), config);
    wait_true(
        &pool,
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE study_instance_uid = $1 AND state = 'sent')",
        &study,
        Duration::from_secs(60),
    )
    .await;
    let (state, attempts, error): (String, i32, String) = sqlx::query_as(
        "SELECT state, attempts, last_error FROM jobs WHERE study_instance_uid = $1",
    )
    .bind(&study)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts), ("failed", 3), "{error}");
    assert!(error.contains("taken 3 times"), "{error}");
    let (kind, reason): (String, String) =
        sqlx::query_as("SELECT kind, reason FROM reports WHERE study_instance_uid = $1")
            .bind(&study)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "not_analysed");
    assert!(reason.contains("analysis failed"), "{reason}");
    let instance_state: String =
        sqlx::query_scalar("SELECT state FROM instances WHERE study_instance_uid = $1")
            .bind(&study)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(instance_state, "failed");
    assert_eq!(pacs.files().len(), 1, "one SR naming the failure");
    let (code, _) = http_get(worker.http_addr(), "/healthz");
    assert_eq!(code, 200);
    assert!(worker.terminate().success());
}

//! Test harness: a fresh database per test, the real daemon binary on 127.0.0.1 port 0, real
//! DCMTK tools and pynetdicom as peers, and a private PostgreSQL cluster for outage tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool};

pub mod dul;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/dicom").join(name)
}

pub fn python() -> PathBuf {
    root().join(".venv/bin/python")
}

/// The server's admin URL: `DATABASE_URL` (set by `make test`).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .expect("DATABASE_URL must point at a PostgreSQL role with CREATEDB (make test sets it)")
}

fn with_db(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').expect("URL has a database part");
    format!("{base}/{db}")
}

/// A database created for one test and dropped afterwards.
pub struct TestDb {
    pub url: String,
    admin: String,
    name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        Self::create_on(&admin_url()).await
    }

    pub async fn create_on(admin: &str) -> Self {
        let name = format!("cxr_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(admin).await.expect("connect admin");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        Self {
            url: with_db(admin, &name),
            admin: admin.to_string(),
            name,
        }
    }

    pub async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.expect("connect test db")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // best effort, on a thread of its own (Drop may run inside a runtime)
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

/// The daemon under test.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub const AE: &str = "CXR_TEST";

/// The ONNX Runtime library of the project's Python environment (`ORT_DYLIB_PATH`, else the
/// venv's wheel, whatever its Python version).
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    venv_ort_library()
}

/// The venv's `libonnxruntime.so.1.31.1`, under `lib/python3.*`.
pub fn venv_ort_library() -> PathBuf {
    std::fs::read_dir(root().join(".venv/lib"))
        .expect("the project's .venv (make setup)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .map(|p| p.join("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"))
        .find(|p| p.exists())
        .expect("ONNX Runtime 1.31.1 in .venv")
}

/// `[models]` with the tiny conforming models on the CPU.
pub fn tiny_models_section() -> String {
    format!(
        r#"
[models]
onnxruntime_library = "{}"
segmenter = "{}"
classifier = "{}"
execution_providers = ["cpu"]
intra_threads = 1
"#,
        ort_library().display(),
        root().join("onnx/tiny/anatomy-segmenter.onnx").display(),
        root().join("onnx/tiny/anatomy-xnet.onnx").display(),
    )
}

/// Write a config for a receive-only daemon (no analysis workers) on 127.0.0.1:0 with its spool
/// in `dir`; `dicom_extra` is appended to the `[dicom]` section.
pub fn write_config(dir: &Path, db_url: &str, dicom_extra: &str) -> PathBuf {
    write_config_with(dir, db_url, dicom_extra, "[study]\nworkers = 0\n")
}

/// Write a config; `sections` is appended (e.g. `[study]`, `[[destinations]]`, `[report]`).
/// The tiny models are configured unless `sections` has a `[models]` of its own.
pub fn write_config_with(dir: &Path, db_url: &str, dicom_extra: &str, sections: &str) -> PathBuf {
    let path = dir.join("cxr-worker.toml");
    let models = if sections.contains("[models]") {
        String::new()
    } else {
        tiny_models_section()
    };
    // the HTTP endpoints on a free port: tests run daemons side by side
    let http = if sections.contains("[http]") {
        ""
    } else {
        "[http]\nlisten = \"127.0.0.1:0\"\n"
    };
    let text = format!(
        r#"
[dicom]
ae_title = "{AE}"
listen = "127.0.0.1:0"
read_timeout_secs = 20
{dicom_extra}

[database]
url = "{db_url}"
acquire_timeout_secs = 2

[spool]
dir = "spool"

[log]
level = "info,cxr_worker=debug"
format = "json"
{models}
{http}
{sections}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Daemon {
    /// Start a daemon with a fresh spool directory.
    pub fn start(db_url: &str, dicom_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let config = write_config(&dir, db_url, dicom_extra);
        Self::start_with(dir, config)
    }

    /// Start (or restart) a daemon on an existing directory and config.
    pub fn start_with(dir: PathBuf, config: PathBuf) -> Self {
        Self::start_env(dir, config, &[])
    }

    /// Start a daemon with extra environment variables.
    pub fn start_env(dir: PathBuf, config: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cxr-worker"))
            .args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cxr-worker");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let _ = tx.send(v["addr"].as_str().unwrap().to_string());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("daemon did not start: {:#?}", log.lock().unwrap());
            }
        };
        Self {
            child: Some(child),
            addr,
            dir,
            config,
            log,
        }
    }

    pub fn port(&self) -> String {
        self.addr.port().to_string()
    }

    pub fn spool_objects(&self) -> PathBuf {
        self.dir.join("spool/objects")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The daemon's peak resident set size so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Run a program to completion.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One acknowledgement printed by tests/python/send.py.
#[derive(Debug, serde::Deserialize)]
pub struct Ack {
    pub file: String,
    pub sop: Option<String>,
    pub status: i64,
    #[serde(default)]
    pub comment: String,
}

/// Send files with pynetdicom over `assocs` concurrent associations.
pub fn pynetdicom_send(d: &Daemon, calling: &str, assocs: usize, files: &[PathBuf]) -> Vec<Ack> {
    let mut args: Vec<String> = vec![
        root().join("tests/python/send.py").display().to_string(),
        "127.0.0.1".into(),
        d.port(),
        AE.into(),
        "--aet".into(),
        calling.into(),
        "--assocs".into(),
        assocs.to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let out = Command::new(python()).args(&args).output().unwrap();
    assert!(out.status.success(), "send.py failed: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Staged files left in a spool (`SPOOL/tmp/<receiver>/`), each receiver's lock file aside.
pub fn staged_files(spool: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(spool.join("tmp")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for f in std::fs::read_dir(&path).unwrap() {
                let f = f.unwrap().path();
                if f.file_name().is_some_and(|n| n != ".lock") {
                    out.push(f);
                }
            }
        } else {
            out.push(path);
        }
    }
    out
}

/// The data set part of a Part 10 file: everything after the file meta group.
pub fn dataset_bytes(file: &[u8]) -> &[u8] {
    assert_eq!(&file[128..132], b"DICM");
    // (0002,0000) UL, 4: explicit VR LE header of 8 bytes, then the group length
    let group_len = u32::from_le_bytes(file[140..144].try_into().unwrap()) as usize;
    &file[144 + group_len..]
}

/// A private PostgreSQL cluster (own data directory and port) that a test may stop and start.
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
}

fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries in /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop().expect("an initdb")
}

fn as_postgres(program: &Path, args: &[&str]) -> Output {
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut cmd = if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).output().unwrap()
}

impl PrivatePg {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let is_root = unsafe { libc::geteuid() } == 0;
        if is_root {
            assert!(
                run("chown", &["-R", "postgres", dir.to_str().unwrap()])
                    .status
                    .success()
            );
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let bin = pg_bin();
        let data = dir.join("data");
        let out = as_postgres(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
            ],
        );
        assert!(out.status.success(), "initdb: {}", text(&out));
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n",
            dir.display()
        );
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let pg = Self { dir, port, bin };
        pg.pg_start();
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn pg_start(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
        assert!(out.status.success(), "pg_ctl start: {}", text(&out));
    }

    pub fn pg_stop(&self) {
        let data = self.dir.join("data");
        let out = as_postgres(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(out.status.success(), "pg_ctl stop: {}", text(&out));
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = as_postgres(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Daemon {
    /// Send a signal (e.g. `libc::SIGHUP`) to the running daemon.
    pub fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("running");
        unsafe {
            libc::kill(child.id() as i32, sig);
        }
    }

    /// Wait until a log line contains `needle` (after the first `skip` lines); returns it.
    pub fn wait_log(&self, needle: &str, skip: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .log
                .lock()
                .unwrap()
                .iter()
                .skip(skip)
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines logged so far.
    pub fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The address of the HTTP endpoints, from the start-up log.
    pub fn http_addr(&self) -> SocketAddr {
        let line = self.wait_log("HTTP endpoints", 0, Duration::from_secs(5));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        v["addr"].as_str().unwrap().parse().unwrap()
    }
}

/// `GET path` over HTTP/1.1 (a plain socket: no HTTP client crate); status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

/// Parse Prometheus text: `name{labels}` → value, for every sample line.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// DCMTK storescp as a destination PACS. It listens on all interfaces: the tests only ever send
/// to 127.0.0.1.
pub struct StoreScp {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
}

impl StoreScp {
    /// AE `PACS` on a free port, accepting every storage class, files named after the SOP
    /// Instance UID, in a fresh folder.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        Self::start_on(free_port(), &dir, &["-aet", "PACS", "+xa", "-uf"])
    }

    /// storescp on `port` writing into `dir`, with extra options.
    pub fn start_on(port: u16, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let mut child = Command::new("storescp")
            .arg("-od")
            .arg(dir)
            .args(extra)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("storescp (DCMTK)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "storescp exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "storescp did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// The files received so far.
    pub fn files(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The received file of a SOP instance (with `-uf` files are named after the UID).
    pub fn file_of(&self, sop_uid: &str) -> Option<PathBuf> {
        self.files()
            .into_iter()
            .find(|p| p.file_name().unwrap().to_string_lossy().contains(sop_uid))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for StoreScp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Datagrams received on a systemd-like notify socket until one contains `want`.
pub fn messages_until(
    socket: &std::os::unix::net::UnixDatagram,
    want: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = m.contains(want);
            seen.push(m);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; saw {seen:?}");
}

/// Config sections for a daemon that analyses (one worker, 1 s quiet period, quick polling) and
/// sends its SRs to the AE `PACS` on 127.0.0.1:`pacs_port`.
pub fn analysis_sections(pacs_port: u16) -> String {
    format!(
        r#"
[study]
quiet_period_secs = 1
workers = 1
poll_interval_secs = 0.2

[report]
retry_base_secs = 0.5

[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
"#
    )
}

//! The daemon under test: the real binary as a child process, its JSON log captured line by line
//! (its DICOM and HTTP addresses are read from it), stopped by signal or SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::write_config;

/// The daemon under test.
pub struct Daemon {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
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
        Self::spawn(
            Command::new(env!("CARGO_BIN_EXE_cxr-worker")),
            dir,
            config,
            env,
        )
    }

    /// Start a daemon inside the network namespace `netns` (`ip netns exec`, which execs the
    /// daemon: its pid is the daemon's).
    pub fn start_in(netns: &str, dir: PathBuf, config: PathBuf) -> Self {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", netns])
            .arg(env!("CARGO_BIN_EXE_cxr-worker"));
        Self::spawn(command, dir, config, &[])
    }

    /// Run `command` (the daemon binary, or a wrapper that execs it) with `serve --config`, and
    /// wait until it runs: its DICOM listener's address is read from the log ("listening"); a
    /// process that does not receive logs "running" instead, and gets the address 0.0.0.0:0.
    fn spawn(mut command: Command, dir: PathBuf, config: PathBuf, env: &[(&str, &str)]) -> Self {
        let mut child = command
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
                } else if line.contains("\"running\"") {
                    let _ = tx.send("0.0.0.0:0".to_string());
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
        send_signal(child.id(), libc::SIGTERM);
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

    /// Send a signal (e.g. `libc::SIGHUP`) to the running daemon.
    pub fn signal(&self, sig: i32) {
        let child = self.child.as_ref().expect("running");
        send_signal(child.id(), sig);
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

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `kill(pid, sig)` (a named signal such as `libc::SIGHUP`), through rustix.
fn send_signal(pid: u32, sig: i32) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child's pid is positive");
    let sig = rustix::process::Signal::from_named_raw(sig).expect("a named signal");
    rustix::process::kill_process(pid, sig).expect("signal the daemon");
}

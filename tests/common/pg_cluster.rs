//! A private PostgreSQL cluster (own data directory and port) that a test may stop and start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use super::{PortReservation, reserve_port, run, text};

/// A private PostgreSQL cluster (own data directory and port) that a test may stop and start.
/// While it is stopped its port stays reserved, when that can be (refusing connections).
pub struct PrivatePg {
    dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    held: Mutex<Option<PortReservation>>,
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
    let is_root = rustix::process::geteuid().is_root();
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
        let is_root = rustix::process::geteuid().is_root();
        if is_root {
            assert!(
                run("chown", &["-R", "postgres", dir.to_str().unwrap()])
                    .status
                    .success()
            );
        }
        let reserved = reserve_port();
        let port = reserved.port();
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
        let pg = Self {
            dir,
            port,
            bin,
            held: Mutex::new(Some(reserved)),
        };
        pg.pg_start();
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn pg_start(&self) {
        let data = self.dir.join("data");
        let log = self.dir.join("server.log");
        if let Some(reserved) = self.held.lock().unwrap().take() {
            reserved.release();
        }
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
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
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
        // best effort: connections of the stopped server may linger on the port
        *self.held.lock().unwrap() = PortReservation::hold(self.port).ok();
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

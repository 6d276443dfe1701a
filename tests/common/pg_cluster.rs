//! A private PostgreSQL cluster (own data directory and port) that a test may stop and start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::{run, text};

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

//! DCMTK `storescp` as a destination PACS, on a port of ours, writing into a folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

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

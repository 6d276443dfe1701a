//! DCMTK `storescp` as a destination PACS, on a reserved port, writing into a folder.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{PortReservation, listens, reserve_port};

/// DCMTK storescp as a destination PACS. It listens on all interfaces: the tests only ever send
/// to 127.0.0.1.
pub struct StoreScp {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
}

impl StoreScp {
    /// AE `PACS` on a port of its own, accepting every storage class, files named after the SOP
    /// Instance UID, in a fresh folder.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        Self::start_on(reserve_port(), &dir, &["-aet", "PACS", "+xa", "-uf"])
    }

    /// storescp on the reserved `port` (released now) writing into `dir`, with extra options.
    /// Started once storescp itself listens on the port; should it exit instead (the port taken
    /// after all, a bad option), the panic carries its log.
    pub fn start_on(port: PortReservation, dir: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.with_extension("log");
        let stderr = std::fs::File::create(&log).unwrap();
        let port = port.release();
        let mut child = Command::new("storescp")
            .arg("-od")
            .arg(dir)
            .args(extra)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("storescp (DCMTK)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listens(child.id(), port) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "storescp exited ({status}) instead of listening on port {port}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "storescp did not start on port {port}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
            log,
        }
    }

    /// Stop storescp (the PACS goes down) and hold its port, for [`StoreScp::start_on`] to bring
    /// it back on the same port; meanwhile connections to it are refused.
    pub fn stop(mut self) -> PortReservation {
        let _ = self.child.kill();
        let _ = self.child.wait();
        PortReservation::hold(self.port).unwrap_or_else(|e| {
            panic!("cannot hold port {} after storescp stopped: {e}", self.port)
        })
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

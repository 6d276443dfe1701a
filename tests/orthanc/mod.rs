//! Orthanc (Debian package `orthanc`) as a real PACS in tests: started from our own config
//! (tests/orthanc/orthanc.json) on free loopback ports, in a temporary directory, stopped on drop.
//!
//! Orthanc 1.10 has no bind-address option: its DICOM and HTTP servers listen on all interfaces.
//! The config keeps it closed anyway: HTTP refuses non-loopback clients (`RemoteAccessAllowed`
//! false), and DICOM admits only the one modality registered here, checked by AE title, called
//! AE title and host 127.0.0.1 (`DicomAlwaysAllow*` false, `DicomCheckModalityHost` true).
//! REST calls go through `curl` to 127.0.0.1 only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ORTHANC_AET: &str = "ORTHANC_TEST";

/// A running Orthanc.
pub struct Orthanc {
    child: Child,
    pub dicom_port: u16,
    pub http_port: u16,
    pub dir: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Orthanc {
    /// Start Orthanc on `dicom_port`, admitting C-STOREs from `calling_ae` on 127.0.0.1 only.
    pub fn start(dicom_port: u16, calling_ae: &str) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let http_port = free_port();
        let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/orthanc/orthanc.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&template).unwrap()).unwrap();
        let storage = dir.join("storage");
        config["StorageDirectory"] = storage.display().to_string().into();
        config["IndexDirectory"] = storage.display().to_string().into();
        config["HttpPort"] = http_port.into();
        config["DicomPort"] = dicom_port.into();
        config["DicomModalities"] = serde_json::json!({ "cxr": [calling_ae, "127.0.0.1", 11112] });
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("orthanc.log")).unwrap();
        let child = Command::new("Orthanc")
            .arg(&config_path)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Orthanc (Debian package `orthanc`; scripts/setup.sh installs it)");
        let mut o = Self {
            child,
            dicom_port,
            http_port,
            dir,
        };
        o.wait_ready();
        o
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("Orthanc exited ({status}):\n{}", self.log());
            }
            if self.try_get("/system").is_some()
                && std::net::TcpStream::connect(("127.0.0.1", self.dicom_port)).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Orthanc did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("orthanc.log")).unwrap_or_default()
    }

    fn curl(&self, path: &str) -> Option<Vec<u8>> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    fn try_get(&self, path: &str) -> Option<Value> {
        serde_json::from_slice(&self.curl(path)?).ok()
    }

    /// GET a JSON resource of the REST API.
    pub fn get(&self, path: &str) -> Value {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log()))
    }

    /// GET raw bytes (e.g. `/instances/ID/file`).
    pub fn get_bytes(&self, path: &str) -> Vec<u8> {
        self.curl(path)
            .unwrap_or_else(|| panic!("GET {path} failed:\n{}", self.log()))
    }
}

impl Drop for Orthanc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

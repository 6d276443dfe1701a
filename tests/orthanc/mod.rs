//! Orthanc (Debian package `orthanc`) as a real PACS in tests: started from our own config
//! (tests/orthanc/orthanc.json) on reserved loopback ports, in a temporary directory, stopped on
//! drop. While it is stopped its ports stay reserved, when that can be (refusing connections).
//!
//! Orthanc 1.10 has no bind-address option: its DICOM and HTTP servers listen on all interfaces.
//! The config keeps it closed anyway: HTTP refuses non-loopback clients (`RemoteAccessAllowed`
//! false), and DICOM admits only the one modality registered here, checked by AE title, called
//! AE title and host 127.0.0.1 (`DicomAlwaysAllow*` false, `DicomCheckModalityHost` true).
//! REST calls go through `curl` to 127.0.0.1 only.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{PortReservation, listens, reserve_port, write_config_with};

pub const ORTHANC_AET: &str = "ORTHANC_TEST";

/// The name under which cxr-worker is registered in Orthanc's `DicomModalities`.
pub const CXR_MODALITY: &str = "cxr";

/// The daemon's config: Orthanc as the only peer allowed to send (by AE title and address) and
/// the only destination; a short quiet period, lease and retry delays so that the file runs fast.
/// `study` goes into `[study]`, `dicom_extra` into `[dicom]`, `more` right after the destination
/// (its own keys, then further sections).
pub fn daemon_config(
    dir: &Path,
    db_url: &str,
    orthanc_port: u16,
    (study, dicom_extra, more): (&str, &str, &str),
) -> PathBuf {
    let sections = format!(
        r#"
[study]
workers = 1
poll_interval_secs = 0.2
{study}

[report]
retry_base_secs = 0.5
retry_max_secs = 2
poll_interval_secs = 0.5

[[destinations]]
name = "orthanc"
ae_title = "{ORTHANC_AET}"
host = "127.0.0.1"
port = {orthanc_port}
{more}
"#
    );
    let dicom = format!("allowed_calling_ae_titles = [\"{ORTHANC_AET}@127.0.0.1\"]\n{dicom_extra}");
    write_config_with(dir, db_url, &dicom, &sections)
}

/// A running Orthanc.
pub struct Orthanc {
    child: Option<Child>,
    pub dicom_port: u16,
    pub http_port: u16,
    pub dir: PathBuf,
    config_path: PathBuf,
    /// The ports, held while Orthanc is not running.
    held: Vec<PortReservation>,
}

impl Orthanc {
    /// Start Orthanc with its DICOM server on the reserved port `dicom`, admitting C-STOREs from
    /// `calling_ae` on 127.0.0.1 only.
    pub fn start(dicom: PortReservation, calling_ae: &str) -> Self {
        Self::start_with_peer(dicom, calling_ae, 11112)
    }

    /// Start Orthanc with its DICOM server on the reserved port `dicom` and cxr-worker registered
    /// as the modality [`CXR_MODALITY`]: AE title `ae` on 127.0.0.1:`peer_port`. Orthanc admits
    /// C-STOREs from `ae` on 127.0.0.1 only, and sends to it with `POST /modalities/cxr/store`
    /// ([`Orthanc::push`]).
    pub fn start_with_peer(dicom: PortReservation, ae: &str, peer_port: u16) -> Self {
        Self::launch(dicom, serde_json::json!([ae, "127.0.0.1", peer_port]), None)
    }

    /// Orthanc with DICOM TLS (`DicomTlsEnabled`, Orthanc 1.9+): its DICOM server speaks TLS only,
    /// with `certificate` and `key` (PEM, also its client certificate), trusting the CAs in
    /// `trusted` and requiring a client certificate; cxr-worker is registered with
    /// `UseDicomTls` at its TLS listener, `peer_tls_port`.
    pub fn start_tls(
        dicom: PortReservation,
        ae: &str,
        peer_tls_port: u16,
        [certificate, key, trusted]: [&Path; 3],
    ) -> Self {
        let modality = serde_json::json!({
            "AET": ae, "Host": "127.0.0.1", "Port": peer_tls_port, "UseDicomTls": true
        });
        let tls = serde_json::json!({
            "DicomTlsEnabled": true,
            "DicomTlsCertificate": certificate.display().to_string(),
            "DicomTlsPrivateKey": key.display().to_string(),
            "DicomTlsTrustedCertificates": trusted.display().to_string(),
            "DicomTlsRemoteCertificateRequired": true,
        });
        Self::launch(dicom, modality, Some(tls))
    }

    fn launch(dicom: PortReservation, modality: Value, extra: Option<Value>) -> Self {
        let dir = tempfile::tempdir().unwrap().keep();
        let http = reserve_port();
        let (dicom_port, http_port) = (dicom.port(), http.port());
        let template = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/orthanc/orthanc.json");
        let mut config: Value = serde_json::from_slice(&std::fs::read(&template).unwrap()).unwrap();
        let storage = dir.join("storage");
        config["StorageDirectory"] = storage.display().to_string().into();
        config["IndexDirectory"] = storage.display().to_string().into();
        config["HttpPort"] = http_port.into();
        config["DicomPort"] = dicom_port.into();
        config["DicomModalities"] = serde_json::json!({ CXR_MODALITY: modality });
        if let Some(Value::Object(extra)) = extra {
            for (k, v) in extra {
                config[k.as_str()] = v;
            }
        }
        let config_path = dir.join("orthanc.json");
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let mut o = Self {
            child: None,
            dicom_port,
            http_port,
            dir,
            config_path,
            held: vec![dicom, http],
        };
        o.restart();
        o
    }

    /// Start the stopped Orthanc again, on the same ports and storage (its index and the
    /// instances it holds survive).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "Orthanc is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("orthanc.log"))
            .unwrap();
        for port in self.held.drain(..) {
            port.release();
        }
        let child = Command::new("Orthanc")
            .arg(&self.config_path)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start Orthanc (Debian package `orthanc`; scripts/setup.sh installs it)");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Stop Orthanc at once (SIGKILL: a crash or a power cut; SIGTERM takes it seconds) and wait
    /// until its DICOM port is closed; the storage stays for [`Orthanc::restart`], and the ports
    /// are held until then (best effort: connections of the stopped Orthanc may linger there).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("Orthanc is running");
        child.kill().unwrap();
        child.wait().unwrap();
        self.held = [self.dicom_port, self.http_port]
            .into_iter()
            .filter_map(|port| PortReservation::hold(port).ok())
            .collect();
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", self.dicom_port)).is_err(),
            "something still listens on Orthanc's DICOM port"
        );
    }

    /// Until Orthanc itself listens on both ports and answers over HTTP; should it exit instead
    /// (a port taken after all), the panic carries its log.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let child = self.child.as_mut().unwrap();
            if let Some(status) = child.try_wait().unwrap() {
                panic!("Orthanc exited ({status}):\n{}", self.log());
            }
            let pid = child.id();
            if listens(pid, self.dicom_port)
                && listens(pid, self.http_port)
                && self.try_get("/system").is_some()
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
        self.curl_with(path, &[])
    }

    fn curl_with(&self, path: &str, args: &[&str]) -> Option<Vec<u8>> {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "120"])
            .args(args)
            .arg(format!("http://127.0.0.1:{}{path}", self.http_port))
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// POST a JSON body; the JSON answer.
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        let body = body.to_string();
        let out = self
            .curl_with(
                path,
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "--data-binary",
                    &body,
                ],
            )
            .unwrap_or_else(|| panic!("POST {path} {body} failed:\n{}", self.log()));
        serde_json::from_slice(&out).unwrap()
    }

    /// Upload a DICOM file (`POST /instances`); returns Orthanc's answer (`ID`, `ParentStudy`…).
    pub fn upload(&self, file: &Path) -> Value {
        let data = format!("@{}", file.display());
        let out = self
            .curl_with("/instances", &["-X", "POST", "--data-binary", &data])
            .unwrap_or_else(|| panic!("upload {} failed:\n{}", file.display(), self.log()));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["Status"], "Success", "upload {}: {v}", file.display());
        v
    }

    /// Send resources (instance, series or study IDs) to cxr-worker with a synchronous C-STORE
    /// job (`POST /modalities/cxr/store`); panics unless every instance was sent.
    pub fn push(&self, resources: &[&str]) -> Value {
        let v = self.post_json(
            &format!("/modalities/{CXR_MODALITY}/store"),
            &serde_json::json!({ "Resources": resources, "Synchronous": true }),
        );
        assert_eq!(v["FailedInstancesCount"], 0, "push: {v}");
        v
    }

    /// The SR instances Orthanc holds for a study (by Orthanc study ID), as
    /// `/instances/ID/simplified-tags` objects with the Orthanc ID under `"ID"`.
    pub fn srs_of_study(&self, study_id: &str) -> Vec<Value> {
        self.instances_of_study(study_id, "SR")
    }

    /// The instances of one modality (`SR`, `SEG`, `OT`) Orthanc holds for a study, as
    /// [`Self::srs_of_study`] gives them.
    pub fn instances_of_study(&self, study_id: &str, modality: &str) -> Vec<Value> {
        let Some(instances) = self.try_get(&format!("/studies/{study_id}/instances")) else {
            return Vec::new();
        };
        instances
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| {
                let id = i["ID"].as_str().unwrap();
                let mut tags = self.get(&format!("/instances/{id}/simplified-tags"));
                (tags["Modality"] == modality).then(|| {
                    tags["ID"] = id.into();
                    tags
                })
            })
            .collect()
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
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! scripts/install.sh and scripts/uninstall.sh into a DESTDIR: the tree, the modes, the installed
//! unit checked by systemd's own tools (verify, security, sysusers, tmpfiles) in that root, the
//! configuration kept across upgrades, data kept by uninstall unless --purge.
// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_cxr-worker");

/// A staging root and the model files to install.
struct Stage {
    root: tempfile::TempDir,
    models: tempfile::TempDir,
}

impl Stage {
    fn new() -> Self {
        let models = tempfile::tempdir().unwrap();
        // Opaque files: the installer copies models, it does not read them.
        fs::write(models.path().join("anatomy-segmenter.onnx"), b"segmenter").unwrap();
        fs::write(models.path().join("anatomy-xnet.onnx"), b"classifier").unwrap();
        Self {
            root: tempfile::tempdir().unwrap(),
            models,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p.trim_start_matches('/'))
    }

    fn script(&self, script: &str, prefix: &str, args: &[&str]) -> Output {
        let out = Command::new(Path::new(REPO).join("scripts").join(script))
            .args(args)
            .env("DESTDIR", self.root.path())
            .env("PREFIX", prefix)
            .env("CXR_WORKER_BIN", BIN)
            .env("MODELS_DIR", self.models.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn install(&self, prefix: &str, args: &[&str]) -> String {
        String::from_utf8(self.script("install.sh", prefix, args).stderr).unwrap()
    }

    fn mode(&self, p: &str) -> u32 {
        let path = self.path(p);
        let meta = fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        meta.permissions().mode() & 0o7777
    }

    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.path(p)).unwrap()
    }

    /// What `systemd-analyze` needs besides our files to load a unit in this root: the
    /// distribution's units (targets) and the ExecReload= binary.
    fn add_systemd_base(&self) {
        fs::create_dir_all(self.path("/bin")).unwrap();
        fs::copy("/bin/kill", self.path("/bin/kill")).unwrap();
        fs::create_dir_all(self.path("/usr/lib/systemd")).unwrap();
        let status = Command::new("cp")
            .args(["-r", "/usr/lib/systemd/system"])
            .arg(self.path("/usr/lib/systemd/"))
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn analyze(&self, args: &[&str]) -> Output {
        Command::new("systemd-analyze")
            .args(args)
            .arg(format!("--root={}", self.root.path().display()))
            .arg("cxr-worker.service")
            .output()
            .expect("systemd-analyze (Debian package systemd) must be installed")
    }

    /// `systemd-analyze verify` prints nothing and succeeds; `security` scores ≤ 2.0.
    fn check_unit(&self) -> f64 {
        let verify = self.analyze(&["verify"]);
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        assert!(
            verify.status.success() && said.trim().is_empty(),
            "verify: {said}"
        );
        let security = self.analyze(&["security", "--offline=yes"]);
        let report = String::from_utf8_lossy(&security.stdout);
        let score = exposure(&report);
        assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");
        score
    }
}

/// The number in "Overall exposure level for cxr-worker.service: 1.5 OK".
fn exposure(report: &str) -> f64 {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level for cxr-worker.service:"))
        .unwrap_or_else(|| panic!("no overall score in:\n{report}"));
    line.rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn install_lays_out_the_tree_and_the_unit_verifies_in_it() {
    let s = Stage::new();
    s.install("/usr/local", &[]);

    for (path, mode) in [
        ("/usr/local/bin/cxr-worker", 0o755),
        ("/usr/local/lib/cxr-worker/libonnxruntime.so.1.31.1", 0o644),
        (
            "/usr/local/share/cxr-worker/models/anatomy-segmenter.onnx",
            0o644,
        ),
        (
            "/usr/local/share/cxr-worker/models/anatomy-xnet.onnx",
            0o644,
        ),
        ("/usr/local/lib/systemd/system/cxr-worker.service", 0o644),
        ("/usr/local/lib/sysusers.d/cxr-worker.conf", 0o644),
        ("/usr/local/lib/tmpfiles.d/cxr-worker.conf", 0o644),
        ("/usr/local/share/cxr-worker/systemd/gpu.conf", 0o644),
        (
            "/usr/local/share/doc/cxr-worker/conformance-statement.md",
            0o644,
        ),
        ("/etc/cxr-worker", 0o750),
        ("/etc/cxr-worker/cxr-worker.toml", 0o640),
    ] {
        assert_eq!(s.mode(path), mode, "{path}: mode {:o}", s.mode(path));
    }
    assert_eq!(
        fs::read(s.path("/usr/local/bin/cxr-worker")).unwrap(),
        fs::read(BIN).unwrap()
    );
    let ort = common::venv_ort_library();
    assert_eq!(
        fs::metadata(s.path("/usr/local/lib/cxr-worker/libonnxruntime.so.1.31.1"))
            .unwrap()
            .len(),
        fs::metadata(ort).unwrap().len()
    );
    assert!(!s.path("/etc/cxr-worker/cxr-worker.toml.new").exists());
    assert!(
        !s.path("/etc/systemd/system/cxr-worker.service.d").exists(),
        "GPU drop-in without --gpu"
    );
    // Nothing outside the staging root's own tree: no user, no state created by the installer.
    assert!(!s.path("/etc/passwd").exists());
    assert!(!s.path("/var").exists());

    // The installed configuration is valid for this binary and names the installed paths.
    let config = s.read("/etc/cxr-worker/cxr-worker.toml");
    let placeholder = config.match_indices('@').find_map(|(i, _)| {
        let word: String = config[i + 1..]
            .chars()
            .take_while(char::is_ascii_uppercase)
            .collect();
        (!word.is_empty() && config[i + 1 + word.len()..].starts_with('@')).then_some(word)
    });
    assert_eq!(placeholder, None, "unrendered placeholder in:\n{config}");
    assert!(config.contains("\"/usr/local/lib/cxr-worker/libonnxruntime.so.1.31.1\""));
    assert!(config.contains("\"/usr/local/share/cxr-worker/models/anatomy-xnet.onnx\""));
    assert!(config.contains("\"/var/lib/cxr-worker/spool\""));
    // --offline: the models and the database it names are those of the target machine
    let check = Command::new(BIN)
        .args(["check-config", "--offline", "--config"])
        .arg(s.path("/etc/cxr-worker/cxr-worker.toml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check-config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // systemd's own tools on the staged files.
    let sysusers = Command::new("systemd-sysusers")
        .arg(format!("--root={}", s.root.path().display()))
        .output()
        .unwrap();
    assert!(
        sysusers.status.success(),
        "{}",
        String::from_utf8_lossy(&sysusers.stderr)
    );
    let passwd = s.read("/etc/passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("cxr-worker:"))
        .unwrap_or_else(|| panic!("no user in {passwd}"));
    let fields: Vec<&str> = user.split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "not a system user: {user}");
    assert_eq!(fields[5], "/var/lib/cxr-worker");
    assert_eq!(fields[6], "/usr/sbin/nologin");

    let tmpfiles = Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", s.root.path().display()))
        .arg("--create")
        .arg(s.path("/usr/local/lib/tmpfiles.d/cxr-worker.conf"))
        .output()
        .unwrap();
    assert!(
        tmpfiles.status.success(),
        "{}",
        String::from_utf8_lossy(&tmpfiles.stderr)
    );
    for (dir, mode, owner) in [
        ("/var/lib/cxr-worker", 0o700, uid),
        ("/var/lib/cxr-worker/spool", 0o700, uid),
        ("/var/log/cxr-worker", 0o750, uid),
        ("/etc/cxr-worker", 0o750, 0),
    ] {
        let meta = fs::metadata(s.path(dir)).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid()),
            (mode, owner),
            "{dir}"
        );
        assert_eq!(meta.gid(), uid, "{dir}: group must be cxr-worker");
    }

    let unit = s.read("/usr/local/lib/systemd/system/cxr-worker.service");
    assert!(unit.contains(
        "\nExecStart=/usr/local/bin/cxr-worker serve --config /etc/cxr-worker/cxr-worker.toml\n"
    ));
    s.add_systemd_base();
    let score = s.check_unit();
    assert!(score <= 2.0);
}

#[test]
fn upgrade_keeps_the_configuration_and_the_data() {
    let s = Stage::new();
    s.install("/usr/local", &[]);
    let template = s.read("/etc/cxr-worker/cxr-worker.toml");

    // The operator edits the configuration; the service has spooled data.
    let edited = template.replace("ae_title = \"CXR_WORKER\"", "ae_title = \"HOSPITAL_AI\"");
    assert_ne!(edited, template);
    fs::write(s.path("/etc/cxr-worker/cxr-worker.toml"), &edited).unwrap();
    let spooled = s.path("/var/lib/cxr-worker/spool/1.2.3.4.dcm");
    fs::create_dir_all(spooled.parent().unwrap()).unwrap();
    fs::write(&spooled, b"DICM").unwrap();

    let said = s.install("/usr/local", &[]);
    assert_eq!(
        s.read("/etc/cxr-worker/cxr-worker.toml"),
        edited,
        "the operator's configuration was overwritten"
    );
    assert_eq!(s.read("/etc/cxr-worker/cxr-worker.toml.new"), template);
    assert_eq!(s.mode("/etc/cxr-worker/cxr-worker.toml.new"), 0o640);
    assert!(
        said.contains("cxr-worker.toml.new"),
        "the installer did not say where the new template is: {said}"
    );
    assert_eq!(fs::read(&spooled).unwrap(), b"DICM");
    assert_eq!(s.mode("/usr/local/bin/cxr-worker"), 0o755);

    // Back to the shipped template: the stale .new goes.
    fs::write(s.path("/etc/cxr-worker/cxr-worker.toml"), &template).unwrap();
    s.install("/usr/local", &[]);
    assert!(!s.path("/etc/cxr-worker/cxr-worker.toml.new").exists());
    // No temporary files left next to what was replaced.
    let leftovers: Vec<_> = fs::read_dir(s.path("/usr/local/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("cxr-worker")]);
}

#[test]
fn uninstall_keeps_configuration_and_data_unless_purged() {
    let s = Stage::new();
    s.install("/usr/local", &["--gpu"]);
    fs::create_dir_all(s.path("/var/lib/cxr-worker/spool")).unwrap();
    fs::write(s.path("/var/lib/cxr-worker/spool/x.dcm"), b"DICM").unwrap();

    s.script("uninstall.sh", "/usr/local", &[]);
    for gone in [
        "/usr/local/bin/cxr-worker",
        "/usr/local/lib/cxr-worker",
        "/usr/local/share/cxr-worker",
        "/usr/local/lib/systemd/system/cxr-worker.service",
        "/usr/local/lib/sysusers.d/cxr-worker.conf",
        "/usr/local/lib/tmpfiles.d/cxr-worker.conf",
        "/etc/systemd/system/cxr-worker.service.d",
    ] {
        assert!(!s.path(gone).exists(), "{gone} is still there");
    }
    assert!(s.path("/etc/cxr-worker/cxr-worker.toml").exists());
    assert!(s.path("/var/lib/cxr-worker/spool/x.dcm").exists());

    s.script("uninstall.sh", "/usr/local", &["--purge"]);
    assert!(!s.path("/etc/cxr-worker").exists());
    assert!(!s.path("/var/lib/cxr-worker").exists());
}

#[test]
fn another_prefix_with_the_gpu_drop_in() {
    let s = Stage::new();
    s.install("/opt/cxr-worker", &["--gpu"]);
    // systemd does not read /opt: unit, sysusers.d and tmpfiles.d go to /etc.
    let unit = s.read("/etc/systemd/system/cxr-worker.service");
    assert!(
        unit.contains("\nExecStart=/opt/cxr-worker/bin/cxr-worker serve "),
        "{unit}"
    );
    assert!(!unit.contains("/usr/local"), "{unit}");
    assert!(s.path("/etc/sysusers.d/cxr-worker.conf").exists());
    assert!(s.path("/etc/tmpfiles.d/cxr-worker.conf").exists());
    assert_eq!(
        s.mode("/etc/systemd/system/cxr-worker.service.d/gpu.conf"),
        0o644
    );
    let config = s.read("/etc/cxr-worker/cxr-worker.toml");
    assert!(
        config.contains("\"/opt/cxr-worker/lib/cxr-worker/libonnxruntime.so.1.31.1\""),
        "{config}"
    );

    s.add_systemd_base();
    let score = s.check_unit();
    // The drop-in is loaded: it relaxes PrivateDevices and MemoryDenyWriteExecute.
    let security =
        String::from_utf8_lossy(&s.analyze(&["security", "--offline=yes"]).stdout).to_string();
    assert!(
        security.contains("char-nvidia-frontend:rw"),
        "drop-in not applied:\n{security}"
    );
    assert!(
        score > 1.5,
        "the GPU drop-in should cost some exposure, got {score}"
    );
}

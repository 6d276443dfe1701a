//! What the output builder tests (`sr`, `seg`, `sc`) share: fixture headers, running a tool,
//! and dciodvfy. They build objects in the process, without a daemon or a database.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A DICOM fixture's path.
pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/dicom").join(name)
}

/// The header of a fixture (everything before the pixel data).
pub fn header(name: &str) -> InMemDicomObject {
    let path = fixture(name);
    OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
        .into_inner()
}

/// Run a command: its exit status (a signal, a crash, as 255) and stdout + stderr.
pub fn run(cmd: &mut Command) -> (i32, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(255), text)
}

/// dciodvfy: no line starting with `Error`, no crash. Returns the warnings.
pub fn dciodvfy(path: &Path) -> Result<Vec<String>, String> {
    let (status, out) = run(Command::new("dciodvfy").arg(path));
    if status >= 128 || out.lines().any(|l| l.starts_with("Error")) {
        return Err(format!("dciodvfy ({status}):\n{out}"));
    }
    Ok(out
        .lines()
        .filter(|l| l.starts_with("Warning"))
        .map(String::from)
        .collect())
}

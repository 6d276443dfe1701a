//! Sending to the daemon with pynetdicom (tests/python/send.py), one acknowledgement per file.

use std::path::PathBuf;
use std::process::Command;

use super::{AE, Daemon, python, root, text};

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
        d.addr.ip().to_string(),
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

//! Configuration files for the daemon under test: receive-only, or with analysis and a
//! destination; always on 127.0.0.1 port 0.

use std::path::{Path, PathBuf};

use super::tiny_models_section;

/// The daemon's AE title in every config written here.
pub const AE: &str = "CXR_TEST";

/// Write a config for a receive-only daemon (no analysis workers) on 127.0.0.1:0 with its spool
/// in `dir`; `dicom_extra` is appended to the `[dicom]` section.
pub fn write_config(dir: &Path, db_url: &str, dicom_extra: &str) -> PathBuf {
    write_config_with(dir, db_url, dicom_extra, "[study]\nworkers = 0\n")
}

/// Write a config; `sections` is appended (e.g. `[study]`, `[[destinations]]`, `[report]`).
/// The tiny models are configured unless `sections` has a `[models]` of its own.
pub fn write_config_with(dir: &Path, db_url: &str, dicom_extra: &str, sections: &str) -> PathBuf {
    let path = dir.join("cxr-worker.toml");
    // a daemon under test takes any calling AE title unless the test lists some
    let lists_peers = dicom_extra
        .split("allowed_calling_ae_titles = [")
        .nth(1)
        .is_some_and(|rest| !rest.trim_start().starts_with(']'));
    let any = if lists_peers || dicom_extra.contains("allow_any_calling_ae") {
        ""
    } else {
        "allow_any_calling_ae = true"
    };
    let models = if sections.contains("[models]") {
        String::new()
    } else {
        tiny_models_section()
    };
    // the HTTP endpoints on a free port: tests run daemons side by side
    let http = if sections.contains("[http]") {
        ""
    } else {
        "[http]\nlisten = \"127.0.0.1:0\"\n"
    };
    // The test machine's disk may be nearly full (a CI machine was at 90 %): the default
    // watermark would refuse associations there, so tests run without one unless they set it
    // (tests/retention.rs, tests/disk.rs); the watermark itself is tested with its own value.
    let watermark = if sections.contains("max_used_percent") {
        ""
    } else {
        "max_used_percent = 100"
    };
    let text = format!(
        r#"
[dicom]
ae_title = "{AE}"
listen = "127.0.0.1:0"
read_timeout_secs = 20
{any}
{dicom_extra}

[database]
url = "{db_url}"
acquire_timeout_secs = 2

[spool]
dir = "spool"
{watermark}

[log]
level = "info,cxr_worker=debug"
format = "json"
{models}
{http}
{sections}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Config sections for a daemon that analyses (one worker, 1 s quiet period, quick polling) and
/// sends its SRs to the AE `PACS` on 127.0.0.1:`pacs_port`.
pub fn analysis_sections(pacs_port: u16) -> String {
    // the SR only: the tests of jobs, reloads and admin count SRs; the image outputs (SEG, SC)
    // have their own tests (pipeline, orthanc_e2e)
    analysis_sections_with(pacs_port, "outputs = [\"sr\"]")
}

/// [`analysis_sections`] with `destination` lines added to the PACS destination (`""`: the
/// defaults, every output).
pub fn analysis_sections_with(pacs_port: u16, destination: &str) -> String {
    format!(
        r#"
[study]
quiet_period_secs = 1
workers = 1
poll_interval_secs = 0.2

[report]
retry_base_secs = 0.5

[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = {pacs_port}
{destination}
"#
    )
}

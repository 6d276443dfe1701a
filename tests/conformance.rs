//! Keeps docs/conformance-statement.md true: its SOP class and transfer syntax tables must list
//! exactly what `scp::sop_classes` accepts, UID and name, in both directions.
// Tests may unwrap and panic: a failure is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use cxr_worker::dicom::sop_classes::{STORAGE, TRANSFER_SYNTAXES};
use dicom_dictionary_std::uids;

fn statement() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/conformance-statement.md");
    std::fs::read_to_string(path).unwrap()
}

/// The rows of the Markdown table that follows `<!-- table: NAME -->`, header and rule skipped,
/// as trimmed cells.
fn table(doc: &str, name: &str) -> Vec<Vec<String>> {
    let marker = format!("<!-- table: {name} -->");
    let start = doc
        .find(&marker)
        .unwrap_or_else(|| panic!("no {marker} in the statement"));
    let rows: Vec<Vec<String>> = doc[start + marker.len()..]
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect();
    assert!(rows.len() > 2, "table {name} has no rows");
    assert!(
        rows[1]
            .iter()
            .all(|c| c.chars().all(|ch| ch == '-' || ch == ':')),
        "table {name}: second line is not a rule"
    );
    rows[2..].to_vec()
}

/// (UID, name) pairs from a table whose first column is the name and second the UID.
fn name_uid_pairs(rows: &[Vec<String>]) -> BTreeSet<(String, String)> {
    rows.iter().map(|r| (r[1].clone(), r[0].clone())).collect()
}

fn diff(doc: &BTreeSet<(String, String)>, code: &BTreeSet<(String, String)>) -> String {
    format!(
        "only in the statement: {:?}\nonly in the code: {:?}",
        doc.difference(code).collect::<Vec<_>>(),
        code.difference(doc).collect::<Vec<_>>()
    )
}

#[test]
fn scp_sop_classes_match_the_code() {
    let rows = table(&statement(), "scp-sop-classes");
    assert!(
        rows.iter().all(|r| r.len() == 3 && r[2] == "SCP"),
        "{rows:?}"
    );
    let doc = name_uid_pairs(&rows);
    let mut code: BTreeSet<(String, String)> = STORAGE
        .iter()
        .map(|c| (c.uid.to_string(), c.name.to_string()))
        .collect();
    code.insert((uids::VERIFICATION.to_string(), "Verification".to_string()));
    assert_eq!(doc.len(), rows.len(), "duplicate rows in the SCP table");
    assert_eq!(doc, code, "{}", diff(&doc, &code));
}

#[test]
fn scu_sop_classes_are_the_outputs_we_send() {
    let rows = table(&statement(), "scu-sop-classes");
    assert!(
        rows.iter().all(|r| r.len() == 3 && r[2] == "SCU"),
        "{rows:?}"
    );
    let doc = name_uid_pairs(&rows);
    // the SOP classes of the builders: the SR, the SEG and the SC
    let code = BTreeSet::from([
        (
            cxr_worker::report::sr::SR_SOP_CLASS_UID.to_string(),
            "Comprehensive 3D SR Storage".to_string(),
        ),
        (
            cxr_worker::report::seg::SEG_SOP_CLASS_UID.to_string(),
            "Segmentation Storage".to_string(),
        ),
        (
            cxr_worker::report::sc::SC_SOP_CLASS_UID.to_string(),
            "Secondary Capture Image Storage".to_string(),
        ),
    ]);
    assert_eq!(doc, code, "{}", diff(&doc, &code));
}

#[test]
fn transfer_syntaxes_match_the_code() {
    let rows = table(&statement(), "transfer-syntaxes");
    assert!(rows.iter().all(|r| r.len() == 2), "{rows:?}");
    let doc = name_uid_pairs(&rows);
    let code: BTreeSet<(String, String)> = TRANSFER_SYNTAXES
        .iter()
        .map(|t| (t.uid.to_string(), t.name.to_string()))
        .collect();
    assert_eq!(
        doc.len(),
        rows.len(),
        "duplicate rows in the transfer syntax table"
    );
    assert_eq!(doc, code, "{}", diff(&doc, &code));
}

#[test]
fn defaults_stated_are_the_config_defaults() {
    let doc = statement();
    let minimal =
        "[database]\nurl = \"postgres://u@127.0.0.1/db\"\n[spool]\ndir = \"/tmp/spool\"\n";
    let cfg = cxr_worker::config::Config::from_toml_str(
        minimal,
        std::path::Path::new("/etc/cxr-worker/cxr-worker.toml"),
        std::iter::empty(),
    )
    .unwrap();
    let d = &cfg.dicom;
    for fact in [
        format!("`{}`", d.ae_title),
        format!("`{}`", d.listen.unwrap()),
        format!("default {} bytes", d.max_pdu_length),
        format!("(default {})", d.max_associations),
        format!(
            "read_timeout_secs` (default {} s)",
            d.read_timeout.as_secs()
        ),
        format!(
            "write_timeout_secs` (default {} s)",
            d.write_timeout.as_secs()
        ),
        format!("(default {} MB)", d.max_dataset_bytes / (1024 * 1024)),
        format!("{} (dicom-rs", dicom_ul::IMPLEMENTATION_CLASS_UID),
        dicom_ul::IMPLEMENTATION_VERSION_NAME.to_string(),
    ] {
        assert!(doc.contains(&fact), "the statement does not say {fact:?}");
    }
}

#[test]
fn finding_codes_stated_are_the_codes_the_sr_uses() {
    let doc = statement();
    for coding in cxr_worker::report::codes::LABELS {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| {} ", coding.label)))
            .unwrap_or_else(|| panic!("no row for {} in the statement", coding.label));
        let finding = format!("{} {}", coding.finding.scheme, coding.finding.value);
        let private = format!(
            "scheme {}, code {}",
            coding.finding.scheme, coding.finding.value
        );
        assert!(
            row.contains(&finding) || row.contains(&private),
            "{}: the statement says {row:?}, the code uses {finding}",
            coding.label
        );
        match coding.site {
            Some(site) => assert!(
                row.contains(&format!("{} {}", site.scheme, site.value)),
                "{row}"
            ),
            None => assert!(
                row.trim_end()
                    .ends_with("| —                                  |")
                    || row.contains("| — "),
                "{row}"
            ),
        }
    }
}

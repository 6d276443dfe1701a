//! One label table: the 14 ChestX-ray14 labels are written once in Rust (`findings::LABELS`),
//! and that list must equal the Python model contract's (`onnx/cxr_models/contract.py`, which
//! the export writes into `cxr.labels`), in the same order; the SR's codes and the model
//! contract check read it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cxr_worker::findings::LABELS;

/// The `LABELS = ( "…", … )` tuple of contract.py, parsed as text (no Python needed).
fn python_labels() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/onnx/cxr_models/contract.py");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text
        .find("\nLABELS = (")
        .expect("contract.py defines LABELS = (...)");
    let body = &text[start + "\nLABELS = (".len()..];
    let body = &body[..body.find(')').expect("LABELS tuple closes")];
    body.split(',')
        .map(|item| item.split('#').next().unwrap().trim())
        .filter(|item| !item.is_empty())
        .map(|item| {
            item.strip_prefix('"')
                .and_then(|i| i.strip_suffix('"'))
                .unwrap_or_else(|| panic!("LABELS item {item:?} is not a plain string"))
                .to_string()
        })
        .collect()
}

#[test]
fn the_rust_labels_are_the_python_contracts() {
    let python = python_labels();
    assert_eq!(python.len(), 14, "{python:?}");
    assert_eq!(python, LABELS.to_vec());
}

#[test]
fn the_sr_codes_and_the_model_contract_use_the_one_list() {
    let coded: Vec<&str> = cxr_worker::report::codes::LABELS
        .iter()
        .map(|c| c.label)
        .collect();
    assert_eq!(coded, LABELS.to_vec());
    assert_eq!(cxr_worker::analyse::contract::LABELS, LABELS);
}

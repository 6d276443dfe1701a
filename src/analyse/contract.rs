//! The model contract (`onnx/CONTRACT.md`), checked when a model is loaded: a non-conforming
//! model is refused with a message naming every mismatch found (load → **contract** → infer).
//!
//! Checked: IR version ≤ 13 and default-domain opset ≥ 17 (read from the file's protobuf header
//! before ONNX Runtime sees it), the `cxr.*` metadata, the role, input and output names, element
//! type float32, ranks, a dynamic batch axis and the fixed dimensions implied by the metadata
//! (S = `cxr.input_size`, K = `cxr.mask_size`, C = number of `cxr.mask_channels`, 14 labels).

use serde::Serialize;

/// Highest ONNX IR version ONNX Runtime 1.31 reads.
pub const MAX_IR_VERSION: i64 = 13;
/// Lowest default-domain opset accepted.
pub const MIN_OPSET: i64 = 17;
/// The contract version this worker implements (`cxr.contract`).
pub const CONTRACT_VERSION: &str = "1";
/// The 14 ChestX-ray14 labels, in the order of the classifier's outputs (`findings::LABELS`).
pub use crate::findings::LABELS;
/// Segmenter channels that must come first, in this order.
pub const SEGMENTER_CHANNELS: [&str; 3] = ["left_lung", "right_lung", "heart"];
/// Classifier mask channels.
pub const CLASSIFIER_MASK_CHANNELS: [&str; 2] = ["lungs", "heart"];
/// Backbone stride: class maps are S/32 on a side.
pub const CLASS_MAP_STRIDE: usize = 32;

/// Which model of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Segmenter,
    Classifier,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Segmenter => "segmenter",
            Role::Classifier => "classifier",
        }
    }
}

/// A model refused at load.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("model {path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("model {path}: not an ONNX model: {message}")]
    NotOnnx { path: String, message: String },
    #[error("model {path} does not satisfy the contract: {}", problems.join("; "))]
    Mismatch { path: String, problems: Vec<String> },
}

/// What the contract tells the pipeline about a conforming model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: String,
    pub role: Role,
    pub model_name: String,
    pub model_version: String,
    pub trained: bool,
    /// S: the side of the square input image.
    pub input_size: usize,
    pub mask_channels: Vec<String>,
    pub ir_version: i64,
    pub opset: i64,
    /// Classifier only: K, the side of the mask input.
    pub mask_size: Option<usize>,
    pub labels: Vec<String>,
    pub thresholds: Vec<f32>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// IR version and default-domain opset read from the ModelProto header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ir_version: i64,
    pub opset: Option<i64>,
}

fn varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Visit the top-level fields of a protobuf message: `(field, varint value or bytes)`.
fn fields(b: &[u8], mut visit: impl FnMut(u64, Result<u64, &[u8]>)) -> Option<()> {
    let mut pos = 0;
    while pos < b.len() {
        let key = varint(b, &mut pos)?;
        match key & 7 {
            0 => visit(key >> 3, Ok(varint(b, &mut pos)?)),
            1 => pos += 8,
            2 => {
                let len = usize::try_from(varint(b, &mut pos)?).ok()?;
                let end = pos.checked_add(len).filter(|e| *e <= b.len())?;
                visit(key >> 3, Err(&b[pos..end]));
                pos = end;
            }
            5 => pos += 4,
            _ => return None,
        }
    }
    (pos == b.len()).then_some(())
}

/// Read the IR version (field 1) and the default-domain opset (field 8) of a ModelProto.
pub fn read_header(bytes: &[u8]) -> Option<Header> {
    let mut ir_version = None;
    let mut opset = None;
    fields(bytes, |field, value| match (field, value) {
        (1, Ok(v)) => ir_version = Some(v as i64),
        (8, Err(msg)) => {
            let (mut domain, mut version) = (String::new(), None);
            let _ = fields(msg, |f, v| match (f, v) {
                (1, Err(s)) => domain = String::from_utf8_lossy(s).into_owned(),
                (2, Ok(n)) => version = Some(n as i64),
                _ => {}
            });
            if domain.is_empty() || domain == "ai.onnx" {
                opset = version.or(opset);
            }
        }
        _ => {}
    })?;
    Some(Header {
        ir_version: ir_version?,
        opset,
    })
}

/// Problems with the header alone (checked before ONNX Runtime parses the model).
pub fn header_problems(h: &Header) -> Vec<String> {
    let mut problems = Vec::new();
    if h.ir_version > MAX_IR_VERSION {
        problems.push(format!(
            "IR version {} is too new (ONNX Runtime reads at most {MAX_IR_VERSION}; save with ir_version <= {MAX_IR_VERSION})",
            h.ir_version
        ));
    }
    match h.opset {
        Some(v) if v >= MIN_OPSET => {}
        other => problems.push(format!(
            "opset {} is older than {MIN_OPSET}",
            other.map_or("(none)".to_string(), |v| v.to_string())
        )),
    }
    problems
}

/// One graph input or output as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub float32: bool,
    /// Dimensions, -1 for dynamic.
    pub dims: Vec<i64>,
}

/// What a loaded session exposes: metadata and ports.
pub struct SessionView<'a> {
    pub metadata: &'a dyn Fn(&str) -> Option<String>,
    pub inputs: &'a [Port],
    pub outputs: &'a [Port],
}

fn parse_floats(text: &str, key: &str, count: usize, problems: &mut Vec<String>) -> Vec<f32> {
    let values: Result<Vec<f32>, _> = text.split(',').map(|v| v.trim().parse::<f32>()).collect();
    match values {
        Ok(v) if v.len() == count && v.iter().all(|x| x.is_finite()) => v,
        Ok(v) if v.len() != count => {
            problems.push(format!("{key} has {} values, expected {count}", v.len()));
            Vec::new()
        }
        _ => {
            problems.push(format!(
                "{key} is not a list of {count} finite numbers: {text:?}"
            ));
            Vec::new()
        }
    }
}

fn positive(text: &str, key: &str, problems: &mut Vec<String>) -> usize {
    match text.trim().parse::<usize>() {
        Ok(v) if v > 0 => v,
        _ => {
            problems.push(format!("{key} is not a positive integer: {text:?}"));
            0
        }
    }
}

/// Check one port: present, float32, rank, dynamic batch, fixed dimensions.
fn check_port(
    ports: &[Port],
    kind: &str,
    name: &str,
    expected: &[i64],
    problems: &mut Vec<String>,
) {
    let Some(p) = ports.iter().find(|p| p.name == name) else {
        let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
        problems.push(format!(
            "{kind} {name:?} is missing (the model has {names:?})"
        ));
        return;
    };
    if !p.float32 {
        problems.push(format!("{kind} {name:?} is not float32"));
    }
    if p.dims.len() != expected.len() + 1 {
        problems.push(format!(
            "{kind} {name:?} has rank {}, expected {} ([N,{}])",
            p.dims.len(),
            expected.len() + 1,
            expected
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
        return;
    }
    if p.dims[0] >= 0 {
        problems.push(format!(
            "{kind} {name:?} has a fixed batch dimension {}, expected dynamic",
            p.dims[0]
        ));
    }
    for (axis, (&got, &want)) in p.dims[1..].iter().zip(expected).enumerate() {
        if got != want {
            problems.push(format!(
                "{kind} {name:?} dimension {} is {got}, expected {want}",
                axis + 1
            ));
        }
    }
}

fn check_names(ports: &[Port], kind: &str, expected: &[&str], problems: &mut Vec<String>) {
    for p in ports {
        if !expected.contains(&p.name.as_str()) {
            problems.push(format!(
                "unexpected {kind} {:?} (expected {expected:?})",
                p.name
            ));
        }
    }
}

/// Check a loaded model against the contract for `role`.
pub fn check(
    path: &str,
    header: &Header,
    view: &SessionView<'_>,
    role: Role,
) -> Result<ModelInfo, ContractError> {
    let mut problems = header_problems(header);
    let meta = view.metadata;
    // A model of the other role is named as such before its metadata is judged.
    if let Some(problem) = other_role(meta, role).or_else(|| missing_metadata(meta, role)) {
        problems.push(problem);
        return Err(mismatch(path, problems));
    }
    let get = |k: &str| meta(k).unwrap_or_default();
    let mut info = read_metadata(path, header, role, &get, &mut problems);
    match role {
        Role::Segmenter => check_segmenter(&info, view, &mut problems),
        Role::Classifier => check_classifier(&mut info, &get, view, &mut problems),
    }
    if problems.is_empty() {
        Ok(info)
    } else {
        Err(mismatch(path, problems))
    }
}

/// The problem with a `cxr.role` naming the other role, if it does.
fn other_role(meta: &dyn Fn(&str) -> Option<String>, role: Role) -> Option<String> {
    let found = meta("cxr.role").filter(|found| found != role.as_str())?;
    Some(format!(
        "cxr.role is {found:?}, expected {:?}",
        role.as_str()
    ))
}

/// The metadata keys a model of `role` must have.
fn required_metadata(role: Role) -> Vec<&'static str> {
    let mut required = vec![
        "cxr.contract",
        "cxr.role",
        "cxr.model_name",
        "cxr.model_version",
        "cxr.input_size",
        "cxr.trained",
        "cxr.mask_channels",
    ];
    if role == Role::Classifier {
        required.extend([
            "cxr.labels",
            "cxr.thresholds",
            "cxr.normalization_mean",
            "cxr.normalization_std",
            "cxr.mask_size",
        ]);
    }
    required
}

/// The problem naming every required metadata key the model lacks, if any.
fn missing_metadata(meta: &dyn Fn(&str) -> Option<String>, role: Role) -> Option<String> {
    let missing: Vec<&str> = required_metadata(role)
        .into_iter()
        .filter(|k| meta(k).is_none())
        .collect();
    (!missing.is_empty()).then(|| format!("missing metadata {}", missing.join(", ")))
}

/// The metadata both roles have, checked in order (contract version, role, trained, input size)
/// and read into a [`ModelInfo`] whose classifier fields are still unset.
fn read_metadata(
    path: &str,
    header: &Header,
    role: Role,
    get: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) -> ModelInfo {
    if get("cxr.contract") != CONTRACT_VERSION {
        problems.push(format!(
            "cxr.contract is {:?}, expected {CONTRACT_VERSION:?}",
            get("cxr.contract")
        ));
    }
    if get("cxr.role") != role.as_str() {
        problems.push(format!(
            "cxr.role is {:?}, expected {:?}",
            get("cxr.role"),
            role.as_str()
        ));
    }
    let trained = parse_trained(&get("cxr.trained"), problems);
    let input_size = positive(&get("cxr.input_size"), "cxr.input_size", problems);
    ModelInfo {
        path: path.to_string(),
        role,
        model_name: get("cxr.model_name"),
        model_version: get("cxr.model_version"),
        trained,
        input_size,
        mask_channels: mask_channels(&get("cxr.mask_channels")),
        ir_version: header.ir_version,
        opset: header.opset.unwrap_or(0),
        mask_size: None,
        labels: Vec::new(),
        thresholds: Vec::new(),
        mean: [0.0; 3],
        std: [1.0; 3],
    }
}

/// `cxr.trained`: `"true"` or `"false"`; anything else is a problem (and untrained).
fn parse_trained(value: &str, problems: &mut Vec<String>) -> bool {
    match value {
        "true" => true,
        "false" => false,
        other => {
            problems.push(format!(
                "cxr.trained is {other:?}, expected \"true\" or \"false\""
            ));
            false
        }
    }
}

/// `cxr.mask_channels`: comma-separated names, trimmed, empty ones dropped.
fn mask_channels(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Segmenter: its mask channels start with [`SEGMENTER_CHANNELS`]; one input `image`
/// [N,1,S,S], one output `masks` [N,C,S,S].
fn check_segmenter(info: &ModelInfo, view: &SessionView<'_>, problems: &mut Vec<String>) {
    let channels = &info.mask_channels;
    if channels.len() < 3 || channels[..3] != SEGMENTER_CHANNELS {
        problems.push(format!(
            "cxr.mask_channels is {:?}, expected to start with {}",
            channels.join(","),
            SEGMENTER_CHANNELS.join(",")
        ));
    }
    let si = info.input_size as i64;
    check_names(view.inputs, "input", &["image"], problems);
    check_names(view.outputs, "output", &["masks"], problems);
    check_port(view.inputs, "input", "image", &[1, si, si], problems);
    check_port(
        view.outputs,
        "output",
        "masks",
        &[channels.len() as i64, si, si],
        problems,
    );
}

/// Classifier: its metadata (mask channels, labels and thresholds, normalisation, mask size,
/// input size), then its ports.
fn check_classifier(
    info: &mut ModelInfo,
    get: &dyn Fn(&str) -> String,
    view: &SessionView<'_>,
    problems: &mut Vec<String>,
) {
    if info.mask_channels != CLASSIFIER_MASK_CHANNELS {
        problems.push(format!(
            "cxr.mask_channels is {:?}, expected {:?}",
            info.mask_channels.join(","),
            CLASSIFIER_MASK_CHANNELS.join(",")
        ));
    }
    read_labels_and_thresholds(info, get, problems);
    read_normalization(info, get, problems);
    let k = positive(&get("cxr.mask_size"), "cxr.mask_size", problems);
    info.mask_size = Some(k);
    let s = info.input_size;
    if !s.is_multiple_of(CLASS_MAP_STRIDE) {
        problems.push(format!(
            "cxr.input_size {s} is not a multiple of {CLASS_MAP_STRIDE}"
        ));
    }
    check_classifier_ports(info, k, view, problems);
}

/// `cxr.labels` must be [`LABELS`]; `cxr.thresholds`, one per label, must lie in [0, 1].
fn read_labels_and_thresholds(
    info: &mut ModelInfo,
    get: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) {
    let labels: Vec<String> = get("cxr.labels")
        .split(',')
        .map(|l| l.trim().to_string())
        .collect();
    if labels != LABELS {
        problems.push(format!(
            "cxr.labels is {:?}, expected {:?}",
            get("cxr.labels"),
            LABELS.join(",")
        ));
    }
    info.thresholds = parse_floats(
        &get("cxr.thresholds"),
        "cxr.thresholds",
        labels.len(),
        problems,
    );
    if info.thresholds.iter().any(|t| !(0.0..=1.0).contains(t)) {
        problems.push("cxr.thresholds must lie in [0, 1]".into());
    }
    info.labels = labels;
}

/// `cxr.normalization_mean` and `cxr.normalization_std`: three numbers each, the std positive.
fn read_normalization(
    info: &mut ModelInfo,
    get: &dyn Fn(&str) -> String,
    problems: &mut Vec<String>,
) {
    let mean = parse_floats(
        &get("cxr.normalization_mean"),
        "cxr.normalization_mean",
        3,
        problems,
    );
    let std = parse_floats(
        &get("cxr.normalization_std"),
        "cxr.normalization_std",
        3,
        problems,
    );
    if let (Ok(m), Ok(s)) = (<[f32; 3]>::try_from(mean), <[f32; 3]>::try_from(std)) {
        if s.iter().any(|v| *v <= 0.0) {
            problems.push("cxr.normalization_std must be positive".into());
        }
        info.mean = m;
        info.std = s;
    }
}

/// The classifier's ports: inputs `image` [N,3,S,S] and `masks` [N,2,K,K], outputs
/// `probabilities` [N,L] and `class_maps` [N,L,S/32,S/32] for L labels.
fn check_classifier_ports(
    info: &ModelInfo,
    k: usize,
    view: &SessionView<'_>,
    problems: &mut Vec<String>,
) {
    let s = info.input_size;
    let (si, ki, hi, n) = (
        s as i64,
        k as i64,
        (s / CLASS_MAP_STRIDE) as i64,
        info.labels.len() as i64,
    );
    check_names(view.inputs, "input", &["image", "masks"], problems);
    check_names(
        view.outputs,
        "output",
        &["probabilities", "class_maps"],
        problems,
    );
    check_port(view.inputs, "input", "image", &[3, si, si], problems);
    check_port(
        view.inputs,
        "input",
        "masks",
        &[CLASSIFIER_MASK_CHANNELS.len() as i64, ki, ki],
        problems,
    );
    // The label count must match the outputs: this names the mismatch when it does not.
    if let Some(p) = view.outputs.iter().find(|p| p.name == "probabilities")
        && p.dims.len() == 2
        && p.dims[1] != n
    {
        problems.push(format!(
            "output \"probabilities\" has {} classes but cxr.labels names {n} labels",
            p.dims[1]
        ));
    } else {
        check_port(view.outputs, "output", "probabilities", &[n], problems);
    }
    check_port(view.outputs, "output", "class_maps", &[n, hi, hi], problems);
}

fn mismatch(path: &str, problems: Vec<String>) -> ContractError {
    ContractError::Mismatch {
        path: path.to_string(),
        problems,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly
mod tests {
    use super::*;

    #[test]
    fn header_is_read_from_protobuf() {
        // ir_version = 14 (field 1 varint), opset_import { domain "" version 17 } (field 8).
        let bytes = [0x08, 14, 0x42, 0x04, 0x0A, 0x00, 0x10, 17];
        let h = read_header(&bytes).unwrap();
        assert_eq!(
            h,
            Header {
                ir_version: 14,
                opset: Some(17)
            }
        );
        let p = header_problems(&h);
        assert!(p.len() == 1 && p[0].contains("IR version 14"), "{p:?}");
        assert!(read_header(b"not a model at all").is_none());
    }
}

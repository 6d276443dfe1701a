//! Findings: what the analysis of one image yields, in the one shape that goes from the analyser
//! (`analyse`) through the database (`db::analysis` stores and reads it) into the report (the SR
//! builder writes it). Plain data with no behaviour beyond the call at the threshold; like
//! `dicom`, it sits below every other layer.

use serde::{Deserialize, Serialize};

/// The 14 ChestX-ray14 labels, in the order of the classifier's outputs: the one list. The model
/// contract (`cxr.labels`), the SR's codes (`report::codes::LABELS`) and the admin commands read
/// it; `tests/labels.rs` checks it against the Python contract (`onnx/cxr_models/contract.py`).
pub const LABELS: [&str; 14] = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
];

/// A reference to one received image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRef {
    /// SOP Class UID.
    pub sop_class_uid: String,
    /// SOP Instance UID.
    pub sop_instance_uid: String,
    /// Series Instance UID.
    pub series_instance_uid: String,
}

/// A binary mask at some image geometry: one byte per pixel, 0 or 1, row-major.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BitMask {
    pub rows: usize,
    pub columns: usize,
    pub bits: Vec<u8>,
}

/// One label's result for one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelResult {
    /// The label as the model contract spells it, e.g. `Pleural_Thickening`.
    pub label: String,
    /// The model's probability, in [0, 1].
    pub probability: f32,
    /// The model's threshold for this label (`cxr.thresholds`), in [0, 1].
    pub threshold: f32,
}

impl LabelResult {
    /// The call at the threshold: present when `probability >= threshold`.
    pub fn is_present(&self) -> bool {
        self.probability >= self.threshold
    }
}

/// Areas measured on the segmenter's masks (mm² where the pixel spacing is known).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Measurements {
    pub left_lung_mm2: Option<f64>,
    pub right_lung_mm2: Option<f64>,
    /// Both lungs, as a fraction of the image.
    pub lung_area_fraction: Option<f64>,
    pub heart_mm2: Option<f64>,
    /// The heart, as a fraction of the image.
    pub heart_area_fraction: Option<f64>,
}

/// The models that produced the findings, as their metadata names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersions {
    pub segmenter_name: String,
    pub segmenter_version: String,
    pub classifier_name: String,
    pub classifier_version: String,
    /// Both models have trained weights.
    pub trained: bool,
    /// The ONNX Runtime execution provider that ran them.
    pub execution_provider: String,
}

/// Wall-clock time of each stage for the image, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageTimings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    pub segment_ms: f64,
    pub classify_ms: f64,
}

/// One analysed (frontal chest) image and its results.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AnalysedImage {
    /// The image.
    pub image: ImageRef,
    /// One result per label, in the model's label order; each label at most once.
    pub labels: Vec<LabelResult>,
    /// Cardiothoracic ratio from the segmentation masks, where they give one.
    pub cardiothoracic_ratio: Option<f32>,
    /// Areas from the segmentation masks.
    #[serde(default)]
    pub measurements: Measurements,
    /// Which models found it.
    #[serde(default)]
    pub models: ModelVersions,
    /// How long each stage took.
    #[serde(default)]
    pub timings: StageTimings,
}

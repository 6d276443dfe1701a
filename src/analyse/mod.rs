//! The analysis pipeline: decode → eligibility → preprocess → infer (segment, classify) →
//! measure. Plain blocking functions, to be run off the async threads (`spawn_blocking`).
//!
//! - [`decode`]: DICOM → stored values → grey image in [0, 1] (modality LUT, VOI, MONOCHROME1).
//! - [`helper`]: decoding in a helper process with memory and time limits.
//! - [`eligibility`]: chest CR/DX frontal views are analysed; the rest are skipped with a reason.
//! - [`preprocess`]: anti-aliased resize and the models' normalisation.
//! - [`contract`]: the model contract, checked at load.
//! - [`infer`]: ONNX Runtime sessions, execution providers, batched runs.
//! - [`masks`]: the segmenter's masks resampled to the source (SEG) or display geometry.
//! - [`overlay`]: the results picture of an analysed image (the Secondary Capture's pixels, or a
//!   PNG for the CLI).
//! - [`analyser`]: the per-file flow, timings and serialisable results.

pub mod analyser;
pub mod contract;
pub mod decode;
pub mod eligibility;
pub mod helper;
pub mod infer;
pub mod masks;
pub mod overlay;
pub mod preprocess;

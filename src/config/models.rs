//! `[models]`: the ONNX Runtime library, the model files, execution providers and threads; the
//! file's shape, its validation and the typed form.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, invalid, positive, resolve};

/// An ONNX Runtime execution provider, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    Tensorrt,
    Cuda,
    Cpu,
}

impl ExecutionProvider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tensorrt => "tensorrt",
            Self::Cuda => "cuda",
            Self::Cpu => "cpu",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ModelsConfig {
    /// Path of `libonnxruntime.so*`; `ORT_DYLIB_PATH` is used when unset.
    pub onnxruntime_library: Option<PathBuf>,
    pub segmenter: PathBuf,
    pub classifier: PathBuf,
    pub execution_providers: Vec<ExecutionProvider>,
    /// Images per inference run.
    pub batch_size: usize,
    /// Intra-op threads for the CPU provider; 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModels {
    onnxruntime_library: Option<PathBuf>,
    segmenter: Option<PathBuf>,
    classifier: Option<PathBuf>,
    execution_providers: Option<Vec<String>>,
    batch_size: Option<i64>,
    intra_threads: Option<i64>,
    tensorrt_fp16: Option<bool>,
    tensorrt_cache_dir: Option<PathBuf>,
}

impl RawModels {
    pub(super) fn validate(self, base: &Path) -> Result<ModelsConfig, ConfigError> {
        let execution_providers = match self.execution_providers {
            None => vec![
                ExecutionProvider::Tensorrt,
                ExecutionProvider::Cuda,
                ExecutionProvider::Cpu,
            ],
            Some(list) => {
                let mut out = Vec::new();
                for name in list {
                    let ep = match name.to_ascii_lowercase().as_str() {
                        "tensorrt" => ExecutionProvider::Tensorrt,
                        "cuda" => ExecutionProvider::Cuda,
                        "cpu" => ExecutionProvider::Cpu,
                        other => {
                            return Err(invalid(
                                "models.execution_providers",
                                format!(
                                    "unknown provider {other:?}; expected tensorrt, cuda or cpu"
                                ),
                            ));
                        }
                    };
                    if !out.contains(&ep) {
                        out.push(ep);
                    }
                }
                if out.is_empty() {
                    return Err(invalid("models.execution_providers", "must not be empty"));
                }
                out
            }
        };
        Ok(ModelsConfig {
            onnxruntime_library: self.onnxruntime_library.map(|p| resolve(base, p)),
            segmenter: resolve(
                base,
                self.segmenter
                    .unwrap_or_else(|| PathBuf::from("../onnx/anatomy-segmenter.onnx")),
            ),
            classifier: resolve(
                base,
                self.classifier
                    .unwrap_or_else(|| PathBuf::from("../onnx/anatomy-xnet.onnx")),
            ),
            execution_providers,
            batch_size: positive("models.batch_size", self.batch_size.unwrap_or(8), 256)? as usize,
            intra_threads: match self.intra_threads.unwrap_or(0) {
                v @ 0..=256 => v as usize,
                v => {
                    return Err(invalid(
                        "models.intra_threads",
                        format!("{v} is out of range 0..=256"),
                    ));
                }
            },
            tensorrt_fp16: self.tensorrt_fp16.unwrap_or(true),
            tensorrt_cache_dir: self.tensorrt_cache_dir.map(|p| resolve(base, p)),
        })
    }
}

//! Inference: ONNX Runtime sessions for the segmenter and the classifier, created once, checked
//! against the contract, run on batches (preprocess → **infer** → measure → store).
//!
//! ONNX Runtime is loaded at run time (`ort` load-dynamic) from `[models] onnxruntime_library`
//! or `ORT_DYLIB_PATH`. Execution providers are tried in the configured order; for each model a
//! session is built with that provider (TensorRT with CUDA behind it for the nodes TensorRT does
//! not take), a registration failure moves on to the next, and the first provider whose session
//! builds is kept. TensorRT uses `tensorrt_fp16` and, when `tensorrt_cache_dir` is set, its
//! engine and timing caches there (the first run of each input shape builds an engine). One log line names the provider in use and why the
//! ones before it were passed over. `Session::run` takes `&mut self`: an [`Engine`] belongs to
//! one thread at a time (put it behind a mutex, or give each inference thread its own); all its
//! methods are plain blocking calls, to be run from `spawn_blocking` or a dedicated thread.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use serde::Serialize;

use super::contract::{self, ContractError, ModelInfo, Port, Role, SessionView};
use crate::config::{ExecutionProvider, ModelsConfig};

/// Why the inference engine could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    #[error(
        "no ONNX Runtime library: set [models] onnxruntime_library or ORT_DYLIB_PATH to libonnxruntime.so (>= 1.31)"
    )]
    NoLibrary,
    #[error("cannot load ONNX Runtime from {path}: {message}")]
    LoadLibrary { path: PathBuf, message: String },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
    #[error(transparent)]
    Contract(#[from] ContractError),
    #[error("model {path}: no execution provider could load it: {}", attempts.join("; "))]
    NoProvider { path: String, attempts: Vec<String> },
    #[error("{role} inference failed: {message}")]
    Run { role: &'static str, message: String },
}

/// Options for building an [`Engine`], taken from `[models]`.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub onnxruntime_library: Option<PathBuf>,
    pub segmenter: PathBuf,
    pub classifier: PathBuf,
    pub execution_providers: Vec<ExecutionProvider>,
    pub intra_threads: usize,
    pub tensorrt_fp16: bool,
    pub tensorrt_cache_dir: Option<PathBuf>,
}

impl From<&ModelsConfig> for EngineOptions {
    fn from(m: &ModelsConfig) -> Self {
        Self {
            onnxruntime_library: m.onnxruntime_library.clone(),
            segmenter: m.segmenter.clone(),
            classifier: m.classifier.clone(),
            execution_providers: m.execution_providers.clone(),
            intra_threads: m.intra_threads,
            tensorrt_fp16: m.tensorrt_fp16,
            tensorrt_cache_dir: m.tensorrt_cache_dir.clone(),
        }
    }
}

/// A provider passed over, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Fallback {
    pub provider: ExecutionProvider,
    pub reason: String,
}

/// One loaded model.
pub struct Model {
    pub info: ModelInfo,
    pub provider: ExecutionProvider,
    pub fallbacks: Vec<Fallback>,
    session: Session,
}

/// The two sessions, created once.
pub struct Engine {
    pub segmenter: Model,
    pub classifier: Model,
}

/// Segmenter output for a batch: `[N, C, S, S]`, row-major.
pub struct Masks {
    pub channels: usize,
    pub size: usize,
    pub data: Vec<f32>,
}

/// Classifier output for a batch.
pub struct Classification {
    /// `[N, L]`.
    pub probabilities: Vec<f32>,
    /// `[N, L, h, w]`.
    pub class_maps: Vec<f32>,
    pub map_size: (usize, usize),
}

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// The process-wide ONNX Runtime environment; the library is loaded on the first call (only one
/// library and one environment can exist per process).
pub fn environment(library: Option<&Path>) -> Result<Environment, InferError> {
    let mut slot = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = slot.as_ref() {
        return Ok(env.clone());
    }
    let path = library
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .ok_or(InferError::NoLibrary)?;
    let builder = ort::init_from(&path).map_err(|e| InferError::LoadLibrary {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("cxr-worker")
        .build()
        .map_err(|e| InferError::Environment(e.to_string()))?;
    // ONNX Runtime's own info messages (one per graph transformer) would drown the service log.
    env.set_log_level(ort::logging::LogLevel::Warning);
    *slot = Some(env.clone());
    Ok(env)
}

/// The execution providers registered for `provider`: TensorRT is paired with CUDA (registered
/// silently) for the nodes TensorRT does not take; CPU needs none.
fn dispatch(provider: ExecutionProvider, opts: &EngineOptions) -> Vec<ExecutionProviderDispatch> {
    match provider {
        ExecutionProvider::Tensorrt => {
            let mut trt = ep::TensorRT::default().with_fp16(opts.tensorrt_fp16);
            if let Some(dir) = &opts.tensorrt_cache_dir {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            vec![
                trt.build().error_on_failure(),
                ep::CUDA::default().build().fail_silently(),
            ]
        }
        ExecutionProvider::Cuda => vec![ep::CUDA::default().build().error_on_failure()],
        ExecutionProvider::Cpu => Vec::new(),
    }
}

/// Whether the loaded library was built with `provider` (CPU always is).
fn compiled_in(provider: ExecutionProvider) -> Result<bool, String> {
    use ort::ep::ExecutionProvider as _;
    let r = match provider {
        ExecutionProvider::Tensorrt => ep::TensorRT::is_available(),
        ExecutionProvider::Cuda => ep::CUDA::is_available(),
        ExecutionProvider::Cpu => Ok(true),
    };
    r.map_err(|e| e.to_string())
}

/// Build a session for `bytes` on `provider` alone.
fn build_session(
    env: &Environment,
    bytes: &[u8],
    provider: ExecutionProvider,
    opts: &EngineOptions,
) -> Result<Session, String> {
    let mut builder = Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| e.to_string())?;
    if opts.intra_threads > 0 {
        builder = builder
            .with_intra_threads(opts.intra_threads)
            .map_err(|e| e.to_string())?;
    }
    let providers = dispatch(provider, opts);
    if !providers.is_empty() {
        builder = builder
            .with_execution_providers(providers)
            .map_err(|e| e.to_string())?;
    }
    builder.commit_from_memory(bytes).map_err(|e| e.to_string())
}

fn ports(outlets: &[ort::value::Outlet]) -> Vec<Port> {
    outlets
        .iter()
        .map(|o| Port {
            name: o.name().to_string(),
            float32: o.dtype().tensor_type() == Some(ort::value::TensorElementType::Float32),
            dims: o
                .dtype()
                .tensor_shape()
                .map(|s| s.iter().copied().collect())
                .unwrap_or_default(),
        })
        .collect()
}

impl Model {
    /// Read, check the header, open a session on the first working provider, check the contract.
    pub fn load(
        env: &Environment,
        path: &Path,
        role: Role,
        opts: &EngineOptions,
    ) -> Result<Self, InferError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| ContractError::Read {
            path: shown.clone(),
            source,
        })?;
        let header = contract::read_header(&bytes).ok_or_else(|| ContractError::NotOnnx {
            path: shown.clone(),
            message: "the file is not a protobuf ModelProto".into(),
        })?;
        let problems = contract::header_problems(&header);
        if !problems.is_empty() {
            return Err(ContractError::Mismatch {
                path: shown,
                problems,
            }
            .into());
        }
        let mut fallbacks = Vec::new();
        for &provider in &opts.execution_providers {
            match compiled_in(provider) {
                Ok(true) => {}
                Ok(false) => {
                    fallbacks.push(Fallback {
                        provider,
                        reason: "not in this ONNX Runtime build".into(),
                    });
                    continue;
                }
                Err(e) => {
                    fallbacks.push(Fallback {
                        provider,
                        reason: e,
                    });
                    continue;
                }
            }
            let session = match build_session(env, &bytes, provider, opts) {
                Ok(s) => s,
                Err(reason) => {
                    fallbacks.push(Fallback { provider, reason });
                    continue;
                }
            };
            let info = check_session(&session, &shown, &header, role)?;
            return Ok(Self {
                info,
                provider,
                fallbacks,
                session,
            });
        }
        Err(InferError::NoProvider {
            path: shown,
            attempts: fallbacks
                .iter()
                .map(|f| format!("{}: {}", f.provider.name(), f.reason))
                .collect(),
        })
    }
}

fn check_session(
    session: &Session,
    path: &str,
    header: &contract::Header,
    role: Role,
) -> Result<ModelInfo, ContractError> {
    let metadata = session.metadata().map_err(|e| ContractError::NotOnnx {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    let lookup = |k: &str| metadata.custom(k);
    let inputs = ports(session.inputs());
    let outputs = ports(session.outputs());
    contract::check(
        path,
        header,
        &SessionView {
            metadata: &lookup,
            inputs: &inputs,
            outputs: &outputs,
        },
        role,
    )
}

fn run_error(role: &'static str) -> impl Fn(ort::Error) -> InferError {
    move |e| InferError::Run {
        role,
        message: e.to_string(),
    }
}

impl Engine {
    /// Load both models (see [`Model::load`]) and log the provider in use, once.
    pub fn load(opts: &EngineOptions) -> Result<Self, InferError> {
        let env = environment(opts.onnxruntime_library.as_deref())?;
        let segmenter = Model::load(&env, &opts.segmenter, Role::Segmenter, opts)?;
        let classifier = Model::load(&env, &opts.classifier, Role::Classifier, opts)?;
        let engine = Self {
            segmenter,
            classifier,
        };
        tracing::info!(
            provider = engine.provider_summary(),
            passed_over = engine.fallback_summary(),
            segmenter = %engine.segmenter.info.model_name,
            classifier = %engine.classifier.info.model_name,
            "inference execution provider in use: {}",
            engine.provider_summary()
        );
        Ok(engine)
    }

    /// The provider in use: one name, or `segmenter=…, classifier=…` when they differ.
    pub fn provider_summary(&self) -> String {
        let (s, c) = (self.segmenter.provider, self.classifier.provider);
        if s == c {
            s.name().to_string()
        } else {
            format!("segmenter={}, classifier={}", s.name(), c.name())
        }
    }

    /// The providers passed over and why, or "none".
    pub fn fallback_summary(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for f in self
            .segmenter
            .fallbacks
            .iter()
            .chain(&self.classifier.fallbacks)
        {
            let line = format!("{} ({})", f.provider.name(), f.reason);
            if !seen.contains(&line) {
                seen.push(line);
            }
        }
        if seen.is_empty() {
            "none".into()
        } else {
            seen.join("; ")
        }
    }

    /// Run the segmenter on `n` images `[n,1,S,S]`.
    pub fn segment(&mut self, images: &[f32], n: usize) -> Result<Masks, InferError> {
        let s = self.segmenter.info.input_size;
        let input =
            TensorRef::from_array_view(([n, 1, s, s], images)).map_err(run_error("segmenter"))?;
        let outputs = self
            .segmenter
            .session
            .run(ort::inputs!["image" => input])
            .map_err(run_error("segmenter"))?;
        let (shape, data) = outputs["masks"]
            .try_extract_tensor::<f32>()
            .map_err(run_error("segmenter"))?;
        Ok(Masks {
            channels: shape.get(1).copied().unwrap_or(0) as usize,
            size: s,
            data: data.to_vec(),
        })
    }

    /// Run the classifier on `n` images `[n,3,S,S]` with their masks `[n,2,K,K]`.
    pub fn classify(
        &mut self,
        images: &[f32],
        masks: &[f32],
        n: usize,
    ) -> Result<Classification, InferError> {
        let s = self.classifier.info.input_size;
        let k = self.classifier.info.mask_size.unwrap_or(s);
        let image =
            TensorRef::from_array_view(([n, 3, s, s], images)).map_err(run_error("classifier"))?;
        let mask =
            TensorRef::from_array_view(([n, 2, k, k], masks)).map_err(run_error("classifier"))?;
        let outputs = self
            .classifier
            .session
            .run(ort::inputs!["image" => image, "masks" => mask])
            .map_err(run_error("classifier"))?;
        let (_, probabilities) = outputs["probabilities"]
            .try_extract_tensor::<f32>()
            .map_err(run_error("classifier"))?;
        let (shape, maps) = outputs["class_maps"]
            .try_extract_tensor::<f32>()
            .map_err(run_error("classifier"))?;
        let dim = |i: usize| shape.get(i).copied().unwrap_or(0) as usize;
        Ok(Classification {
            probabilities: probabilities.to_vec(),
            class_maps: maps.to_vec(),
            map_size: (dim(2), dim(3)),
        })
    }
}

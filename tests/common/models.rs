//! The ONNX Runtime library of the project's venv and the tiny conforming models (`[models]`).

use std::path::PathBuf;

use super::root;

/// The ONNX Runtime library of the project's Python environment (`ORT_DYLIB_PATH`, else the
/// venv's wheel, whatever its Python version).
pub fn ort_library() -> PathBuf {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    venv_ort_library()
}

/// The venv's `libonnxruntime.so.1.31.1`, under `lib/python3.*`.
pub fn venv_ort_library() -> PathBuf {
    std::fs::read_dir(root().join(".venv/lib"))
        .expect("the project's .venv (make setup)")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .map(|p| p.join("site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1"))
        .find(|p| p.exists())
        .expect("ONNX Runtime 1.31.1 in .venv")
}

/// `[models]` with the tiny conforming models on the CPU.
pub fn tiny_models_section() -> String {
    format!(
        r#"
[models]
onnxruntime_library = "{}"
segmenter = "{}"
classifier = "{}"
execution_providers = ["cpu"]
intra_threads = 1
"#,
        ort_library().display(),
        root().join("onnx/tiny/anatomy-segmenter.onnx").display(),
        root().join("onnx/tiny/anatomy-xnet.onnx").display(),
    )
}

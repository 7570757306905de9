//! Where the lab keeps its cache and finds the source tree.

use std::path::PathBuf;

/// The mllm source tree: the guest programs are built from it.
pub fn workspace_root() -> PathBuf {
    std::env::var_os("MLLM_WORKSPACE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            manifest.join("../..").canonicalize().unwrap_or(manifest)
        })
}

/// Downloaded packages and built images (`MLLM_LAB_CACHE`, default `<workspace>/lab-cache`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MLLM_LAB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("lab-cache"))
}

//! Where the lab keeps its cache and finds the source tree.

use std::path::PathBuf;
use std::process::Command;

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

/// The source tree's commit (short), `-dirty` if tracked files changed
/// since: what a result was measured with. None outside a git checkout.
pub fn source_commit() -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|changes| !changes.is_empty());
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit
    })
}

//! Running build tools from the lab: cargo for the programs the lab needs
//! beside the `mllm` binary, and any helper command whose failure must name
//! its cause.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::paths;

/// Runs `command` and returns its standard output, or an error with its stderr.
pub fn run_command(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            command,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `cargo build --release -p PACKAGE` in the mllm source tree, into its own
/// target directory so it never waits on, or invalidates, the main build.
pub fn cargo_release(workspace: &Path, package: &str, target_subdir: &str) -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["build", "--release", "--quiet", "-p", package])
        .arg("--target-dir")
        .arg(workspace.join("target").join(target_subdir))
        .current_dir(workspace);
    command
}

/// The hook library preloaded into QEMU for mllm's methods:
/// `$MLLM_HOOK_LIBRARY`, or built from the source tree.
pub fn hook_library() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("MLLM_HOOK_LIBRARY") {
        return Ok(PathBuf::from(path));
    }
    let workspace = paths::workspace_root();
    run_command(&mut cargo_release(&workspace, "mllm-hook", "hook"))
        .context("building the QEMU hook library (mllm-hook)")?;
    Ok(workspace.join("target/hook/release/libmllm_hook.so"))
}

//! Builds what an integration test needs but cannot depend on (the `mllm`
//! binary, the hook cdylib), with the profile and target directory of the
//! running test binary so nothing is built twice. The agent's and the
//! daemon's integration tests both include this file.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds `packages` and returns the directory holding their outputs
/// (`target/<profile>`).
pub fn build_with_this_profile(packages: &[&str]) -> PathBuf {
    let executable = std::env::current_exe().expect("path of the test binary");
    // The test binary is target/<profile>/deps/<name>.
    let profile_dir = executable
        .parent()
        .and_then(Path::parent)
        .expect("test binary inside target/<profile>/deps");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => panic!("unexpected profile directory {}", profile_dir.display()),
    };
    let mut command = Command::new(env!("CARGO"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--quiet", "--profile", profile, "--target-dir"])
        .arg(profile_dir.parent().expect("target directory"));
    for package in packages {
        command.args(["-p", package]);
    }
    let status = command.status().expect("running cargo build");
    assert!(status.success(), "building {packages:?} failed");
    profile_dir.to_owned()
}

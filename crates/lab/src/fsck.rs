//! `e2fsck` of a migrated Debian root disk: the destination's image, taken
//! as it stood when its QEMU stopped (crash-consistent, like a power cut),
//! must hold a file system with nothing wrong beyond what its journal
//! replays. A block lost or misplaced by a migration shows here as bitmap,
//! inode or directory errors.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What `e2fsck` said of the destination's file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsckResult {
    /// The full read-only check after the journal's replay found nothing.
    pub clean: bool,
    /// Its exit status (0: no errors; bit 4: errors left uncorrected;
    /// bit 8: it could not go on).
    pub exit_code: i32,
    /// Its last lines: the summary, or the errors.
    pub report: String,
}

/// Lines of `e2fsck`'s output kept in the result.
const REPORT_LINES: usize = 12;

/// Checks the ext4 file system in `image` on a copy in `scratch` (the
/// journal replay writes): first the journal alone, then a full check that
/// changes nothing and must find nothing.
pub fn check_ext4(image: &Path, scratch: &Path) -> Result<FsckResult> {
    let copy = scratch.join("fsck.img");
    let copied = run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy))?;
    anyhow::ensure!(
        copied.status.success(),
        "copying {} for fsck failed: {}",
        image.display(),
        String::from_utf8_lossy(&copied.stderr).trim()
    );
    let checked = (|| {
        // Exit 1 here only says the journal was replayed.
        let replay = run(Command::new("e2fsck")
            .args(["-E", "journal_only", "-y"])
            .arg(&copy))?;
        let code = replay.status.code().unwrap_or(-1);
        anyhow::ensure!(
            code <= 1,
            "e2fsck could not replay the journal of {} (exit {code}): {}",
            image.display(),
            tail(&replay)
        );
        let check = run(Command::new("e2fsck").args(["-f", "-n"]).arg(&copy))?;
        let exit_code = check.status.code().unwrap_or(-1);
        Ok(FsckResult {
            clean: exit_code == 0,
            exit_code,
            report: tail(&check),
        })
    })();
    let _ = std::fs::remove_file(&copy);
    checked
}

fn run(command: &mut Command) -> Result<Output> {
    command.output().with_context(|| {
        format!("cannot run {command:?}: install e2fsprogs with scripts/install-deps.sh")
    })
}

/// The last lines of what `e2fsck` printed, stdout then stderr.
fn tail(output: &Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(REPORT_LINES)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_system(dir: &Path) -> std::path::PathBuf {
        let image = dir.join("fs.img");
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&image)
            .arg("16M")
            .status()
            .expect("mkfs.ext4 (scripts/install-deps.sh installs e2fsprogs)");
        assert!(made.success());
        image
    }

    #[test]
    fn a_sound_file_system_is_clean_and_a_damaged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let image = file_system(dir.path());
        let sound = check_ext4(&image, dir.path()).unwrap();
        assert!(sound.clean, "{sound:?}");
        // The root directory's inode wiped, as a lost block would.
        let wiped = Command::new("debugfs")
            .args(["-w", "-R", "clri <2>"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(wiped.status.success(), "{wiped:?}");
        let damaged = check_ext4(&image, dir.path()).unwrap();
        assert!(!damaged.clean, "{damaged:?}");
        assert_ne!(
            damaged.exit_code & 4,
            0,
            "errors left uncorrected: {damaged:?}"
        );
        assert!(
            damaged.report.to_lowercase().contains("root inode"),
            "{}",
            damaged.report
        );
        assert!(!dir.path().join("fsck.img").exists(), "the copy is removed");
    }
}

//! The agent's records of the VMs it owns, one JSON file per VM in its
//! state directory (`STATE/NAME.json`), so that an agent that restarts finds
//! the QEMUs it left running and adopts them. Each record names the QEMU by
//! pid and start time (a pid alone may have been reused), says how it was
//! launched (the spec's text, whether incoming, the RAM file) and where its
//! migration stood, which decides what a restarted agent does with it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Where a VM stands, as far as ownership goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmPhase {
    /// Launched to receive a migration; it never ran before the hand-over.
    Receiving,
    /// This agent's to run.
    Owned,
    /// Being migrated away, before the hand-over: the source may still
    /// resume it (it may be paused for the final round).
    Sending,
    /// Being migrated away, and the hand-over may have been sent: the
    /// destination may run it, so this host never resumes it on its own.
    HandingOver,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub pid: u32,
    /// The QEMU process's start time, in clock ticks since boot
    /// (`/proc/PID/stat`): with the pid, it names one process.
    pub start_ticks: u64,
    pub ram_file: PathBuf,
    /// The VM spec as it was when QEMU started, TOML.
    pub spec: String,
    /// QEMU was started with `-incoming defer`.
    pub incoming: bool,
    /// The disk image was created for this (incoming) VM: removed if the
    /// migration does not complete.
    pub created_image: bool,
    pub phase: VmPhase,
    /// In `HandingOver`: where the VM went and by which migration, so that
    /// a restarted agent can finish a post-copy the destination waits on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_to: Option<HandOverRecord>,
}

/// The migration a VM was handed over by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOverRecord {
    /// The destination agent, as the migration request named it.
    pub destination: String,
    /// The migration's id, 32 hexadecimal digits (JSON numbers are not
    /// exact above 2^53).
    pub migration_id: String,
}

impl HandOverRecord {
    pub fn new(destination: &str, migration_id: u128) -> HandOverRecord {
        HandOverRecord {
            destination: destination.to_owned(),
            migration_id: format!("{migration_id:032x}"),
        }
    }

    pub fn migration_id(&self) -> Result<u128> {
        u128::from_str_radix(&self.migration_id, 16).with_context(|| {
            format!(
                "the recorded migration id {:?} is not 32 hexadecimal digits",
                self.migration_id
            )
        })
    }
}

/// The directory of records.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: &Path) -> StateDir {
        StateDir {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Writes `record` whole or not at all: a temporary file renamed over
    /// the old record, after it reached the disk.
    pub fn write(&self, record: &VmRecord) -> Result<()> {
        let path = self.path(&record.name);
        let temporary = self.dir.join(format!(".{}.json.tmp", record.name));
        let text = serde_json::to_string_pretty(record).expect("records serialize");
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            std::io::Write::write_all(&mut file, text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            // The rename itself must survive a crash too.
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        written.with_context(|| format!("writing VM record {}", path.display()))
    }

    pub fn remove(&self, name: &str) {
        let path = self.path(name);
        if let Err(error) = std::fs::remove_file(&path) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), %error, "cannot remove VM record");
            }
        }
    }

    /// Every record, by file; unreadable ones are reported and skipped.
    pub fn load_all(&self) -> Result<Vec<VmRecord>> {
        let mut records = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading state directory {}", self.dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let record = std::fs::read_to_string(&path)
                .map_err(anyhow::Error::from)
                .and_then(|text| Ok(serde_json::from_str::<VmRecord>(&text)?));
            match record {
                Ok(record) => records.push(record),
                Err(error) => {
                    tracing::warn!(path = %path.display(), "unreadable VM record, ignored: {error:#}")
                }
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }
}

/// The start time of process `pid` in clock ticks since boot, or `None` if
/// there is no such process (or it is a zombie: it has exited).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields count from
    // the last ')'. After it: state (field 3) ... starttime (field 22).
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            pid: std::process::id(),
            start_ticks: start_ticks(std::process::id()).unwrap(),
            ram_file: "/dev/shm/x.ram".into(),
            spec: "memory_mib = 256\n".into(),
            incoming: false,
            created_image: false,
            phase: VmPhase::Owned,
            handed_to: None,
        }
    }

    #[test]
    fn records_are_written_whole_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let mut web = record("web");
        state.write(&web).unwrap();
        state.write(&record("db")).unwrap();
        web.phase = VmPhase::HandingOver;
        web.handed_to = Some(HandOverRecord::new("b.example:7800", u128::MAX - 1));
        state.write(&web).unwrap();
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        std::fs::create_dir(dir.path().join("web")).unwrap();
        let names: Vec<(String, VmPhase)> = state
            .load_all()
            .unwrap()
            .into_iter()
            .map(|r| (r.name, r.phase))
            .collect();
        assert_eq!(
            names,
            [
                ("db".into(), VmPhase::Owned),
                ("web".into(), VmPhase::HandingOver)
            ]
        );
        let handed_to = state.load_all().unwrap()[1].handed_to.clone().unwrap();
        assert_eq!(handed_to.destination, "b.example:7800");
        assert_eq!(handed_to.migration_id().unwrap(), u128::MAX - 1);
        state.remove("db");
        state.remove("db");
        assert_eq!(state.load_all().unwrap().len(), 1);
    }

    #[test]
    fn a_process_is_known_by_its_start_time() {
        let me = start_ticks(std::process::id()).unwrap();
        assert!(me > 0);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(start_ticks(pid), None, "a reaped process has no start time");
    }
}

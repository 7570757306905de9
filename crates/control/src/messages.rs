//! The requests a control client sends and the replies the daemon writes
//! back, one JSON line each (see the crate documentation).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::memory_trace::TraceSummary;
use crate::progress::Progress;
use crate::report::SourceReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
pub enum ControlRequest {
    /// The VMs this agent owns.
    List,
    /// Migrate VM `vm` to the agent listening at `to` (HOST:PORT).
    Migrate(MigrateRequest),
    /// Record a memory write trace of VM `vm` into a file.
    RecordTrace(RecordTraceRequest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub vm: String,
    pub to: String,
    /// `precopy`, `postcopy` or `mllm` (see `mllm migrate --help`).
    pub policy: String,
    pub downtime_ms: u64,
    /// `none`, `lz4`, `zstd` or `zstd:LEVEL`.
    pub compression: String,
    pub max_rounds: u32,
    /// Test mode: compare RAM digests at the switch.
    pub verify: bool,
    /// Record the guest's memory writes during pre-copy into this file,
    /// written by the agent: an absolute path on the agent's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordTraceRequest {
    pub vm: String,
    /// How long to record.
    pub seconds: f64,
    /// Length of one interval: the tracker is scanned this often.
    pub interval_ms: u64,
    /// The binary memory trace to write, by the agent: an absolute path on
    /// the agent's host.
    pub out: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub memory_mib: u64,
    /// `running`, `paused`, `inmigrate`, ... as QEMU says, or `gone`.
    pub status: String,
    /// The latest progress while an outgoing migration runs.
    pub migration: Option<Progress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "reply")]
pub enum ControlReply {
    Vms { vms: Vec<VmInfo> },
    Progress(Progress),
    Migrated(Box<SourceReport>),
    TraceRecorded(TraceSummary),
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_read_back_as_written() {
        let request = ControlRequest::Migrate(MigrateRequest {
            vm: "web".into(),
            to: "10.0.0.2:7800".into(),
            policy: "precopy".into(),
            downtime_ms: 300,
            compression: "zstd".into(),
            max_rounds: 30,
            verify: false,
            trace_file: None,
        });
        let line = serde_json::to_string(&request).unwrap();
        assert!(line.contains(r#""request":"migrate""#), "{line}");
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&line).unwrap(),
            request
        );
        let error = ControlReply::Error {
            message: "no VM named x".into(),
        };
        let line = serde_json::to_string(&error).unwrap();
        assert_eq!(line, r#"{"reply":"error","message":"no VM named x"}"#);
    }

    #[test]
    fn a_migration_request_without_a_trace_file_still_reads() {
        // As sent by an `mllm migrate` that predates trace recording.
        let line = r#"{"request":"migrate","vm":"web","to":"h:7800","policy":"precopy",
            "downtime_ms":300,"compression":"zstd","max_rounds":30,"verify":false}"#;
        match serde_json::from_str::<ControlRequest>(line).unwrap() {
            ControlRequest::Migrate(request) => assert_eq!(request.trace_file, None),
            other => panic!("{other:?}"),
        }
        let record = ControlRequest::RecordTrace(RecordTraceRequest {
            vm: "web".into(),
            seconds: 2.5,
            interval_ms: 100,
            out: "/tmp/web.trace".into(),
        });
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains(r#""request":"record-trace""#), "{line}");
        assert_eq!(
            serde_json::from_str::<ControlRequest>(&line).unwrap(),
            record
        );
    }
}

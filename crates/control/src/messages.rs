//! The requests a control client sends and the replies the daemon writes
//! back, one JSON line each (see the crate documentation).

use std::io::{self, BufRead, BufReader, Read};
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
    /// Migrate VM `vm` to the agent listening at `to` (`[NAME@]HOST:PORT`,
    /// NAME the peer's name in its TLS certificate).
    Migrate(MigrateRequest),
    /// Record a memory write trace of VM `vm` into a file.
    RecordTrace(RecordTraceRequest),
}

/// Longest request line the daemon reads, newline included. A request is a
/// few hundred bytes; a client that goes on without a line break is cut off
/// here instead of growing the daemon's buffer for as long as it sends.
pub const MAX_REQUEST_LEN: usize = 64 << 10;

/// Why a control connection did not carry a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("reading the request failed: {0}")]
    Io(#[from] io::Error),
    #[error("the request line is longer than the {max} bytes allowed")]
    TooLong { max: usize },
    #[error("unreadable request {line:?}: {source}")]
    Unreadable {
        /// The start of the line, enough to recognise it.
        line: String,
        source: serde_json::Error,
    },
}

impl ControlRequest {
    /// Reads the one request of a connection: a JSON line of at most
    /// [`MAX_REQUEST_LEN`] bytes (the newline may be missing at the end of
    /// the stream). Reads no further than that limit.
    pub fn read_from(reader: impl Read) -> Result<ControlRequest, RequestError> {
        const QUOTED: usize = 200;
        let mut line = Vec::new();
        // One byte more than a request may have, so that a longer one is
        // refused as too long rather than parsed cut.
        let limit = u64::try_from(MAX_REQUEST_LEN + 1).expect("the limit fits a u64");
        BufReader::new(reader.take(limit)).read_until(b'\n', &mut line)?;
        if line.len() > MAX_REQUEST_LEN {
            return Err(RequestError::TooLong {
                max: MAX_REQUEST_LEN,
            });
        }
        serde_json::from_slice(&line).map_err(|source| RequestError::Unreadable {
            line: String::from_utf8_lossy(&line[..line.len().min(QUOTED)]).into_owned(),
            source,
        })
    }
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
    /// With the `mllm` policy: how the disk's blocks besides its read
    /// workingset move (`precopy`, `after-switch`,
    /// `precopy-then-after-switch`); the VM spec's `[disk] move` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_move: Option<String>,
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
            disk_move: Some("precopy-then-after-switch".into()),
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
    fn a_line_without_end_is_cut_off_at_the_limit() {
        let endless = io::repeat(b' ');
        assert!(matches!(
            ControlRequest::read_from(endless),
            Err(RequestError::TooLong {
                max: MAX_REQUEST_LEN
            })
        ));
        let padded = format!("{}{{\"request\":\"list\"}}\n", " ".repeat(1000));
        assert_eq!(
            ControlRequest::read_from(padded.as_bytes()).unwrap(),
            ControlRequest::List
        );
        let err = ControlRequest::read_from(&b"{\"request\":\"reboot\"}\n"[..]).unwrap_err();
        assert!(err.to_string().contains("reboot"), "{err}");
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

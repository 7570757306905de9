//! The daemon's control socket: a unix socket where each connection sends
//! one JSON request line and reads JSON reply lines until the connection
//! closes. A migration streams its progress as it goes, then its report or
//! its error; the other requests answer with one line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::progress::Progress;
use crate::report::SourceReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "request")]
pub enum ControlRequest {
    /// The VMs this agent owns.
    List,
    /// Migrate VM `vm` to the agent listening at `to` (HOST:PORT).
    Migrate(MigrateRequest),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub vm: String,
    pub to: String,
    /// Only `precopy` exists so far.
    pub policy: String,
    pub downtime_ms: u64,
    /// `none`, `lz4`, `zstd` or `zstd:LEVEL`.
    pub compression: String,
    pub max_rounds: u32,
    /// Test mode: compare RAM digests at the switch.
    pub verify: bool,
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
    Error { message: String },
}

/// Sends `request` to the daemon at `socket` and hands every reply line to
/// `on_reply` until the daemon closes the connection.
pub fn send_request(
    socket: &Path,
    request: &ControlRequest,
    mut on_reply: impl FnMut(ControlReply) -> Result<()>,
) -> Result<()> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the mllm agent's control socket {} (is `mllm agent` running?)",
            socket.display()
        )
    })?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut replies = 0;
    for line in BufReader::new(stream).lines() {
        let line = line.context("reading the agent's reply")?;
        let reply = serde_json::from_str(&line)
            .with_context(|| format!("unreadable reply from the agent: {line}"))?;
        replies += 1;
        on_reply(reply)?;
    }
    if replies == 0 {
        bail!("the agent closed the control connection without replying");
    }
    Ok(())
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
}

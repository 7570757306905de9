//! The control socket of the `mllm agent` daemon: what a client sends, what
//! the daemon answers, and [`send_request`], the client side. The data the
//! replies carry are plain types shared with the migration engine
//! (`mllm-agent`): a migration's [`Progress`], its [`SourceReport`] (and the
//! destination's [`DestinationReport`]) and a recorded trace's
//! [`TraceSummary`]. Nothing here drives QEMU, so a client links only this.
//!
//! # Transport
//!
//! A unix stream socket (`mllm agent --control`, [`DEFAULT_SOCKET`] by
//! default). Each connection carries one request: the client writes it as
//! one line of JSON, then reads reply lines, one JSON document each, until
//! the daemon closes the connection after its last reply.
//!
//! A request is a [`ControlRequest`], tagged by `"request"`, at most
//! [`MAX_REQUEST_LEN`] bytes; the daemon reads it with
//! [`ControlRequest::read_from`] and waits for it at most a few seconds. A
//! reply is a [`ControlReply`], tagged by `"reply"`, its data's fields beside
//! the tag:
//!
//! ```text
//! -> {"request":"migrate","vm":"web","to":"10.0.0.2:7800","policy":"precopy","downtime_ms":300,"compression":"zstd","max_rounds":30,"verify":false}
//! <- {"reply":"progress","phase":"connecting","round":0,"bytes_sent":0,...}
//! <- {"reply":"progress","phase":"precopy","round":1,"bytes_sent":1048576,...}
//! <- {"reply":"migrated","vm_name":"web","ram_bytes":268435456,...}
//! ```
//!
//! # Requests and their replies
//!
//! - `list`: one `vms` reply, the VMs the daemon owns ([`VmInfo`]), each
//!   with the latest progress of its outgoing migration if one runs.
//! - `migrate` ([`MigrateRequest`]): `progress` replies as the migration
//!   goes (at each change of [`Phase`], and at most every 100 ms between),
//!   then one `migrated` (the [`SourceReport`]) or one `error`. A client
//!   that goes away does not stop the migration.
//! - `record-trace` ([`RecordTraceRequest`]): once the recording is over,
//!   one `trace-recorded` (the [`TraceSummary`]) or one `error`.
//!
//! Paths in requests (`trace_file`, `out`) are written by the daemon: they
//! must be absolute paths on the daemon's host.
//!
//! # Errors
//!
//! A request that fails (no such VM, the VM busy with another migration or
//! recording, the peer unreachable, the migration aborted) ends with an
//! `error` reply: `{"reply":"error","message":"..."}`, the message naming
//! the cause and what it came from. A line that is not a request gets no
//! reply: the daemon closes the connection, which [`send_request`] reports
//! as an error.
//!
//! Fields added to a request later are optional (`trace_file`), so a
//! request from an older client still reads.

mod client;
mod memory_trace;
mod messages;
mod progress;
mod report;

pub use client::send_request;
pub use memory_trace::TraceSummary;
pub use messages::{
    ControlReply, ControlRequest, MigrateRequest, RecordTraceRequest, RequestError, VmInfo,
    MAX_REQUEST_LEN,
};
pub use progress::{Phase, Progress};
pub use report::{
    DedupReport, DestinationPostcopyReport, DestinationReport, DiskPostcopyReport, PostcopyReport,
    RoundReport, SourceReport, SourceTimings, SwitchReason,
};

/// Where the daemon listens and its clients connect unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/mllm/agent.sock";

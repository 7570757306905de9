//! `mllm trace record`: the local agent records which pages one of its VMs
//! writes, interval by interval, into a memory trace file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use clap::{Args, Subcommand};
use mllm_control::{
    send_request, ControlReply, ControlRequest, RecordTraceRequest, DEFAULT_SOCKET,
};

use crate::migrate::describe_trace;

#[derive(Subcommand)]
pub enum TraceCommand {
    /// Record the memory writes of a VM the local agent runs into a binary
    /// memory trace (readable by `mllm sim`, convertible to text with
    /// `mllm sim trace-convert`).
    Record(RecordArgs),
}

#[derive(Args)]
pub struct RecordArgs {
    /// The VM, owned by the local agent (not while it migrates).
    vm: String,
    /// How long to record.
    #[arg(long)]
    seconds: f64,
    /// The trace file, written by the agent.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Length of one interval: the agent scans the guest's writes this often.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
    /// The local agent's control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    control: PathBuf,
}

pub fn run(command: TraceCommand) -> Result<()> {
    match command {
        TraceCommand::Record(args) => record(args),
    }
}

fn record(args: RecordArgs) -> Result<()> {
    ensure!(
        Duration::try_from_secs_f64(args.seconds).is_ok_and(|length| !length.is_zero()),
        "--seconds must be a positive number, not {}",
        args.seconds
    );
    ensure!(args.interval_ms > 0, "--interval-ms must be positive");
    let request = ControlRequest::RecordTrace(RecordTraceRequest {
        vm: args.vm,
        seconds: args.seconds,
        interval_ms: args.interval_ms,
        // The agent resolves nothing against this command's directory.
        out: std::path::absolute(&args.out)?,
    });
    let mut outcome = None;
    send_request(&args.control, &request, |reply| {
        outcome = Some(reply);
        Ok(())
    })?;
    match outcome {
        Some(ControlReply::TraceRecorded(summary)) => {
            println!("{}", describe_trace(&summary));
            Ok(())
        }
        Some(ControlReply::Error { message }) => bail!("{message}"),
        other => bail!("unexpected reply from the agent: {other:?}"),
    }
}

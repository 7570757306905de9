//! The client side of the control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::messages::{ControlReply, ControlRequest};

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

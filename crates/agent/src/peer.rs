//! The one link between two agents: handshake, then framed messages each way,
//! with failures worded by what they mean for the migration.

use std::io::{BufReader, ErrorKind};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result};
use mllm_wire::{
    handshake, Capabilities, FrameReader, FrameWriter, Hello, Negotiated, Role, WireError,
};

#[derive(Debug)]
pub(crate) struct PeerLink {
    pub reader: FrameReader<BufReader<TcpStream>>,
    pub writer: FrameWriter<TcpStream>,
    pub negotiated: Negotiated,
    /// Another handle on the socket, to shut it down from any thread and
    /// so unblock whoever is reading or writing it.
    pub socket: TcpStream,
}

impl PeerLink {
    /// Performs the handshake as `role`. Reads and writes that stall for
    /// `timeout` fail: the link is then considered dead.
    pub fn establish(stream: TcpStream, role: Role, timeout: Duration) -> Result<PeerLink> {
        // Acknowledgements are tiny and the sender measures the link by
        // them: Nagle's algorithm must not hold them back.
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let peer = stream
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let mut handshake_stream = stream.try_clone()?;
        let hello = Hello {
            role,
            capabilities: Capabilities::all(),
        };
        let negotiated = handshake(&mut handshake_stream, &hello)
            .map_err(|e| link_failure(e, "peer agent", timeout))
            .with_context(|| format!("handshake with the agent at {peer}"))?;
        Ok(PeerLink {
            reader: FrameReader::new(BufReader::new(stream.try_clone()?)),
            writer: FrameWriter::new(stream.try_clone()?),
            negotiated,
            socket: stream,
        })
    }
}

impl PeerLink {
    /// Closes after a last message so the peer can read it: closing a socket
    /// with unread data makes the kernel send a reset, and a reset makes the
    /// peer's kernel drop what it had not read yet, the last message included.
    /// So: stop writing, then read and discard until the peer closes too or
    /// `linger` passes.
    pub fn close_gracefully(&mut self, linger: Duration) {
        let _ = self.socket.shutdown(std::net::Shutdown::Write);
        let _ = self
            .socket
            .set_read_timeout(Some(Duration::from_millis(100)));
        let deadline = std::time::Instant::now() + linger;
        let mut discard = [0u8; 64 << 10];
        while std::time::Instant::now() < deadline {
            match std::io::Read::read(&mut self.socket, &mut discard) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }
}

/// Turns a wire error into the cause an operator needs: cut link, dead
/// peer, corruption or incompatibility. `peer` names the other side.
pub(crate) fn link_failure(error: WireError, peer: &str, timeout: Duration) -> anyhow::Error {
    match error {
        WireError::Closed => anyhow::anyhow!(
            "the {peer} closed the link (it exited, was killed, or the link was cut)"
        ),
        WireError::Truncated { within } => {
            anyhow::anyhow!("the link to the {peer} was cut within {within}")
        }
        WireError::Io(io) if matches!(io.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            anyhow::anyhow!("the link to the {peer} was silent for {timeout:?}: considered dead")
        }
        WireError::Io(io) => anyhow::anyhow!("the link to the {peer} failed: {io}"),
        // Corruption and incompatibilities: the wire's own wording names them.
        other => anyhow::Error::new(other),
    }
}

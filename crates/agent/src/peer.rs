//! The one link between two agents: handshake, then framed messages each way,
//! with failures worded by what they mean for the migration.

use std::io::{BufReader, ErrorKind};
use std::net::Shutdown;
use std::time::Duration;

use mllm_tls::PeerStream;
use mllm_wire::{
    handshake, Capabilities, FrameReader, FrameWriter, Hello, Negotiated, Role, WireError,
};

use crate::error::{Context, MigrationError};

#[derive(Debug)]
pub(crate) struct PeerLink {
    pub reader: FrameReader<BufReader<PeerStream>>,
    pub writer: FrameWriter<PeerStream>,
    pub negotiated: Negotiated,
    /// The role of the agent at the other end.
    pub peer: Role,
    /// Silence for this long means the link is dead.
    pub timeout: Duration,
    /// How long the handshake took: both sides send first, so about one
    /// round trip.
    pub rtt: Duration,
    /// Another handle on the socket, to shut it down from any thread and
    /// so unblock whoever is reading or writing it.
    pub socket: PeerStream,
}

impl PeerLink {
    /// Performs the handshake as `role`. Reads and writes that stall for
    /// `timeout` fail: the link is then considered dead.
    pub fn establish(
        stream: PeerStream,
        role: Role,
        timeout: Duration,
    ) -> Result<PeerLink, MigrationError> {
        let socket_error = |error| MigrationError::io("setting up the agent link's socket", error);
        // Acknowledgements are tiny and the sender measures the link by
        // them: Nagle's algorithm must not hold them back.
        stream.set_nodelay(true).map_err(socket_error)?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(socket_error)?;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(socket_error)?;
        let address = stream.describe_peer();
        let peer = match role {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        };
        let clone = || stream.try_clone().map_err(socket_error);
        let mut handshake_stream = clone()?;
        let hello = Hello {
            role,
            capabilities: Capabilities::all(),
        };
        let started = std::time::Instant::now();
        let negotiated = handshake(&mut handshake_stream, &hello)
            .map_err(|e| MigrationError::link(e, peer, timeout))
            .during_with(|| format!("handshake with the agent at {address}"))?;
        Ok(PeerLink {
            reader: FrameReader::new(BufReader::new(clone()?)),
            writer: FrameWriter::new(clone()?),
            negotiated,
            peer,
            timeout,
            rtt: started.elapsed(),
            socket: stream,
        })
    }

    /// A failure of this link, as what it means to the migration.
    pub fn failure(&self, error: WireError) -> MigrationError {
        MigrationError::link(error, self.peer, self.timeout)
    }
}

/// Closes after a last message so the peer can read it: closing a socket
/// with unread data makes the kernel send a reset, and a reset makes the
/// peer's kernel drop what it had not read yet, the last message included.
/// So: stop writing, then read and discard until the peer closes too or
/// `linger` passes.
pub(crate) fn close_gracefully(mut socket: &PeerStream, linger: Duration) {
    let _ = socket.shutdown(Shutdown::Write);
    let _ = socket.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = std::time::Instant::now() + linger;
    let mut discard = [0u8; 64 << 10];
    while std::time::Instant::now() < deadline {
        match std::io::Read::read(&mut socket, &mut discard) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

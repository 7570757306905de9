//! Versioned handshake, the first and only thing each agent sends before frames:
//! `magic (8) | version (u16 LE) | body length (u16 LE) | body | xxh3-64 (u64 LE)`.
//! Magic and version sit at fixed offsets so any version can read and refuse any
//! other; the body (role and capabilities) may change layout between versions.

use std::fmt;
use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use crate::compression::Compression;
use crate::error::WireError;
use crate::frame::read_until_eof;
use mllm_core::memory::PAGE_SIZE_U32;

/// See [`crate::conversation`] for what changes it.
pub const PROTOCOL_VERSION: u16 = 8;

const MAGIC: [u8; 8] = *b"MLLMLINK";
const VERSION_LEN: usize = 2;
const BODY_LEN_LEN: usize = 2;
const CHECKSUM_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Source,
    Destination,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Destination => "destination",
        })
    }
}

/// What an agent can do; the migration uses what both can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Algorithms this agent decodes and is willing to encode.
    pub compressions: Vec<Compression>,
    pub page_size: u32,
}

impl Capabilities {
    /// Everything this build supports.
    pub fn all() -> Self {
        Capabilities {
            compressions: Compression::ALL.to_vec(),
            page_size: PAGE_SIZE_U32,
        }
    }
}

/// What one agent announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    pub capabilities: Capabilities,
}

/// Outcome of a successful handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_role: Role,
    /// Algorithms both agents support, in this agent's order of preference.
    pub compressions: Vec<Compression>,
    pub page_size: u32,
}

impl Negotiated {
    pub fn supports(&self, compression: Compression) -> bool {
        self.compressions.contains(&compression)
    }
}

/// Sends our hello, reads the peer's and agrees on what to use. Both sides send first
/// and read second; a hello is far smaller than any socket buffer, so this cannot deadlock.
pub fn handshake<S: Read + Write>(stream: &mut S, local: &Hello) -> Result<Negotiated, WireError> {
    send_hello(stream, PROTOCOL_VERSION, local)?;
    let peer = read_hello(stream)?;
    negotiate(local, &peer)
}

fn send_hello(writer: &mut impl Write, version: u16, hello: &Hello) -> Result<(), WireError> {
    let body = postcard::to_allocvec(hello).map_err(|e| WireError::HandshakeCorrupted {
        reason: format!("cannot encode our hello: {e}"),
    })?;
    let body_len = u16::try_from(body.len()).map_err(|_| WireError::HandshakeCorrupted {
        reason: format!(
            "our hello of {} bytes does not fit its length field",
            body.len()
        ),
    })?;
    let mut bytes = Vec::with_capacity(MAGIC.len() + VERSION_LEN + BODY_LEN_LEN + body.len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&body);
    let checksum = xxh3_64(&bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

fn read_hello(reader: &mut impl Read) -> Result<Hello, WireError> {
    let mut magic = [0; MAGIC.len()];
    match read_until_eof(reader, &mut magic)? {
        0 => return Err(WireError::Closed),
        n if n < MAGIC.len() => return Err(truncated()),
        // A TLS record: handshake (0x16) or alert (0x15), version 3.x.
        _ if matches!(magic, [0x15 | 0x16, 0x03, ..]) => return Err(WireError::PeerSpeaksTls),
        _ if magic != MAGIC => return Err(WireError::NotMllmPeer { magic }),
        _ => {}
    }
    // The version is judged before anything else, as the rest may be laid out differently.
    let version = read_array::<VERSION_LEN>(reader)?;
    let theirs = u16::from_le_bytes(version);
    if theirs != PROTOCOL_VERSION {
        return Err(WireError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        });
    }
    let body_len_bytes = read_array::<BODY_LEN_LEN>(reader)?;
    let body_len = usize::from(u16::from_le_bytes(body_len_bytes));

    let mut bytes = [&magic[..], &version, &body_len_bytes].concat();
    let body_start = bytes.len();
    bytes.resize(body_start + body_len + CHECKSUM_LEN, 0);
    if read_until_eof(reader, &mut bytes[body_start..])? < body_len + CHECKSUM_LEN {
        return Err(truncated());
    }
    let (covered, checksum) = bytes.split_at(body_start + body_len);
    if xxh3_64(covered).to_le_bytes() != checksum {
        return Err(WireError::HandshakeCorrupted {
            reason: "checksum mismatch".into(),
        });
    }
    let (hello, trailing) =
        postcard::take_from_bytes::<Hello>(&covered[body_start..]).map_err(|e| {
            WireError::HandshakeCorrupted {
                reason: format!("peer hello does not decode: {e}"),
            }
        })?;
    if !trailing.is_empty() {
        return Err(WireError::HandshakeCorrupted {
            reason: format!("{} trailing bytes in peer hello", trailing.len()),
        });
    }
    Ok(hello)
}

fn read_array<const N: usize>(reader: &mut impl Read) -> Result<[u8; N], WireError> {
    let mut bytes = [0; N];
    if read_until_eof(reader, &mut bytes)? < N {
        return Err(truncated());
    }
    Ok(bytes)
}

fn truncated() -> WireError {
    WireError::Truncated {
        within: "the handshake".into(),
    }
}

fn negotiate(local: &Hello, peer: &Hello) -> Result<Negotiated, WireError> {
    if local.role == peer.role {
        return Err(WireError::RoleConflict { role: local.role });
    }
    let (ours, theirs) = (local.capabilities.page_size, peer.capabilities.page_size);
    if ours != theirs {
        return Err(WireError::PageSizeMismatch { ours, theirs });
    }
    let compressions = local
        .capabilities
        .compressions
        .iter()
        .copied()
        .filter(|compression| peer.capabilities.compressions.contains(compression))
        .collect();
    Ok(Negotiated {
        peer_role: peer.role,
        compressions,
        page_size: ours,
    })
}

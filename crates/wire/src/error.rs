//! Every way the agent link can fail, worded so the operator learns the cause.

use std::io;

use crate::compression::Compression;
use crate::conversation::Phase;
use crate::handshake::Role;
use crate::message::{FrameType, MessageType};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("agent link I/O failed: {0}")]
    Io(#[from] io::Error),

    /// The peer closed the link cleanly between two frames.
    #[error("peer closed the agent link")]
    Closed,

    /// The link ended part-way through a handshake or frame: a cut link or a killed peer.
    #[error("agent link cut within {within}")]
    Truncated { within: String },

    #[error("checksum mismatch in a {frame_type} frame: data corrupted on the link")]
    Checksum { frame_type: FrameType },

    #[error("{frame_type} frame of {len} payload bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        frame_type: FrameType,
        len: u64,
        max: u32,
    },

    #[error("unsupported flags {flags:#06x} in a {frame_type} frame")]
    UnsupportedFlags { frame_type: FrameType, flags: u16 },

    #[error("unknown message type {code:#06x}: peer is newer or broken")]
    UnknownMessageType { code: u16 },

    #[error("malformed {message_type} message: {reason}")]
    Malformed {
        message_type: MessageType,
        reason: String,
    },

    #[error("peer is not an mllm agent (handshake began with {magic:02x?})")]
    NotMllmPeer { magic: [u8; 8] },

    #[error("peer speaks TLS and this agent does not: it runs with --insecure-plaintext, the peer with TLS")]
    PeerSpeaksTls,

    #[error("protocol version mismatch: this agent speaks version {ours}, the peer speaks version {theirs}")]
    VersionMismatch { ours: u16, theirs: u16 },

    #[error("corrupted handshake: {reason}")]
    HandshakeCorrupted { reason: String },

    #[error("both agents claim the {role} role")]
    RoleConflict { role: Role },

    #[error("page size mismatch: this agent uses {ours} bytes, the peer {theirs} bytes")]
    PageSizeMismatch { ours: u32, theirs: u32 },

    /// The peer (or this agent) broke the order of [`crate::conversation`].
    #[error("protocol error: the {from} sent {message}, which is not valid while the conversation is {phase}")]
    OutOfOrder {
        message: MessageType,
        from: Role,
        phase: Phase,
    },

    #[error("page batch capacity {requested} is outside 1..={max}")]
    BatchCapacity { requested: usize, max: usize },

    #[error("{algorithm} compression failed: {reason}")]
    Compress {
        algorithm: Compression,
        reason: String,
    },
}

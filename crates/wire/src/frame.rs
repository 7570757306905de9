//! Framing: every message travels as
//! `type (u16 LE) | flags (u16 LE) | payload length (u32 LE) | payload | xxh3-64 (u64 LE)`,
//! the checksum covering header and payload.

use std::fmt;
use std::io::{self, Read, Write};

use xxhash_rust::xxh3::xxh3_64;

use crate::error::WireError;
use crate::message::{FrameType, Message, MessageType};
use crate::traffic::Traffic;

pub const HEADER_LEN: usize = 8;
pub const CHECKSUM_LEN: usize = 8;

/// Largest payload accepted unless configured otherwise: room for a full page batch
/// (4 MiB of pages) with margin, small enough that a corrupt length cannot make the
/// reader allocate much.
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 << 20;

/// No flag is defined in this protocol version; the field exists so a later version
/// can add per-frame options without changing the header layout.
const KNOWN_FLAGS: u16 = 0;

struct FrameHeader {
    type_code: u16,
    flags: u16,
    payload_len: u32,
}

impl FrameHeader {
    fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        bytes[0..2].copy_from_slice(&self.type_code.to_le_bytes());
        bytes[2..4].copy_from_slice(&self.flags.to_le_bytes());
        bytes[4..8].copy_from_slice(&self.payload_len.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Self {
        FrameHeader {
            type_code: u16::from_le_bytes([bytes[0], bytes[1]]),
            flags: u16::from_le_bytes([bytes[2], bytes[3]]),
            payload_len: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        }
    }
}

/// Sends messages as frames and counts the bytes of each message type.
pub struct FrameWriter<W> {
    inner: W,
    max_payload: u32,
    /// Reused across frames so sending does not allocate per message.
    buf: Vec<u8>,
    traffic: Traffic,
}

// By hand: `buf` is scratch space, not state worth printing.
impl<W: fmt::Debug> fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameWriter")
            .field("inner", &self.inner)
            .field("max_payload", &self.max_payload)
            .field("traffic", &self.traffic)
            .finish_non_exhaustive()
    }
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W) -> Self {
        Self::with_max_payload(inner, DEFAULT_MAX_PAYLOAD)
    }

    /// `max_payload` should match the peer reader's limit, so an oversize frame fails
    /// here with a local cause instead of at the peer.
    pub fn with_max_payload(inner: W, max_payload: u32) -> Self {
        FrameWriter {
            inner,
            max_payload,
            buf: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    /// Writes one frame with a single `write_all`, then flushes, so a buffered inner
    /// writer never holds a message back. After an I/O error part of a frame may have
    /// left: the link is unusable and must be dropped.
    pub fn send(&mut self, message: &Message) -> Result<(), WireError> {
        let message_type = message.message_type();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(HEADER_LEN, 0);
        let mut buf = message.encode_body(buf).map_err(|e| WireError::Malformed {
            message_type,
            reason: format!("cannot encode: {e}"),
        })?;
        let payload_len = buf.len() - HEADER_LEN;
        let fits = u32::try_from(payload_len)
            .ok()
            .filter(|&len| len <= self.max_payload);
        let Some(payload_len) = fits else {
            self.buf = buf;
            return Err(WireError::FrameTooLarge {
                frame_type: FrameType(message_type.code()),
                len: payload_len as u64,
                max: self.max_payload,
            });
        };
        let header = FrameHeader {
            type_code: message_type.code(),
            flags: 0,
            payload_len,
        };
        buf[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        let checksum = xxh3_64(&buf);
        buf.extend_from_slice(&checksum.to_le_bytes());

        let result = self.inner.write_all(&buf).and_then(|()| self.inner.flush());
        let frame_len = buf.len() as u64;
        self.buf = buf;
        result?;
        self.traffic.record(message_type, frame_len);
        Ok(())
    }

    /// Bytes sent so far, per message type.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// Receives frames, verifies them and decodes their messages. Wrap a raw socket
/// in a `BufReader`: each frame is read in three parts.
pub struct FrameReader<R> {
    inner: R,
    max_payload: u32,
    buf: Vec<u8>,
    traffic: Traffic,
}

// By hand: `buf` is scratch space, not state worth printing.
impl<R: fmt::Debug> fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameReader")
            .field("inner", &self.inner)
            .field("max_payload", &self.max_payload)
            .field("traffic", &self.traffic)
            .finish_non_exhaustive()
    }
}

impl<R: Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_max_payload(inner, DEFAULT_MAX_PAYLOAD)
    }

    pub fn with_max_payload(inner: R, max_payload: u32) -> Self {
        FrameReader {
            inner,
            max_payload,
            buf: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    /// Reads the next message. `WireError::Closed` means the peer hung up between frames;
    /// every other error means the link or the peer cannot be trusted any more.
    pub fn recv(&mut self) -> Result<Message, WireError> {
        let mut header_bytes = [0; HEADER_LEN];
        match read_until_eof(&mut self.inner, &mut header_bytes)? {
            0 => return Err(WireError::Closed),
            HEADER_LEN => {}
            _ => {
                return Err(WireError::Truncated {
                    within: "a frame header".into(),
                })
            }
        }
        let header = FrameHeader::from_bytes(&header_bytes);
        let frame_type = FrameType(header.type_code);
        // Checked before allocating: a corrupted length must not become a huge buffer.
        if header.payload_len > self.max_payload {
            return Err(WireError::FrameTooLarge {
                frame_type,
                len: header.payload_len.into(),
                max: self.max_payload,
            });
        }

        let body_end = HEADER_LEN + header.payload_len as usize;
        self.buf.clear();
        self.buf.extend_from_slice(&header_bytes);
        self.buf.resize(body_end + CHECKSUM_LEN, 0);
        if read_until_eof(&mut self.inner, &mut self.buf[HEADER_LEN..])?
            < self.buf.len() - HEADER_LEN
        {
            return Err(WireError::Truncated {
                within: format!("a {frame_type} frame"),
            });
        }
        let (covered, checksum) = self.buf.split_at(body_end);
        // The checksum is verified before any header field is trusted, so a corrupted
        // type or flags field reports as corruption, not as a protocol disagreement.
        if xxh3_64(covered).to_le_bytes() != checksum {
            return Err(WireError::Checksum { frame_type });
        }
        if header.flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnsupportedFlags {
                frame_type,
                flags: header.flags,
            });
        }
        let message_type =
            MessageType::from_code(header.type_code).ok_or(WireError::UnknownMessageType {
                code: header.type_code,
            })?;
        self.traffic.record(message_type, self.buf.len() as u64);
        Message::decode_body(message_type, &covered[HEADER_LEN..])
    }

    /// Bytes received so far, per message type.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Like `read_exact`, but tells how much arrived before end of stream, which separates
/// a clean close (nothing) from a cut link (part of a frame).
pub(crate) fn read_until_eof(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

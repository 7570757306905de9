//! The protocol between two mllm agents, synchronous over any `Read`/`Write`
//! (a `TcpStream` in practice).
//!
//! A link starts with [`handshake`]: both agents send magic, protocol version, role and
//! capabilities; a version mismatch fails on both sides, naming both versions, before
//! anything else is sent. After it, every [`Message`] travels as one checksummed frame
//! through a [`FrameWriter`] / [`FrameReader`] pair, which also account the bytes of
//! each message type ([`Traffic`]). Which message may follow which, the sequence of a
//! migration and the rule for changing the protocol version are in [`conversation`].
//!
//! Guest RAM moves in [`PageBatch`]es built by [`PageBatchBuilder`] (zero pages as
//! markers, data pages compressed as one block, content the destination holds as
//! references) and read back by [`PageBatchDecoder`].

mod compression;
pub mod conversation;
mod digest;
mod error;
mod frame;
mod handshake;
mod message;
mod page_batch;
mod traffic;

pub use compression::{compressed_len, Compression, CompressionSetting};
pub use conversation::Conversation;
pub use digest::{page_digest, DigestCache, PageBytes, PageRangeDigest, RamDigest};
pub use error::WireError;
pub use frame::{FrameReader, FrameWriter, CHECKSUM_LEN, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
pub use handshake::{handshake, Capabilities, Hello, Negotiated, Role, PROTOCOL_VERSION};
pub use message::{
    Abort, Ack, BlockBatch, BlockDigests, BlockRequest, DestinationRunning, DeviceState,
    DiskDigest, FrameType, HandOver, HeldContent, Message, MessageType, MigrationAccept,
    MigrationPolicy, MigrationReject, MigrationRequest, PageDigests, PageRequest, PendingBlocks,
    PendingPages, PostcopyComplete, ResendContent, ResumeAccept, ResumeRequest, RoundEnd,
    SourceStopped, HELD_BLOCKS_PER_FRAME, MAX_HELD_BLOCKS,
};
/// What a reference names, defined by `mllm-core`'s content index.
pub use mllm_core::dedup::{ContentHash, Location};
/// The page size pages travel in; defined by `mllm-core`, re-exported for
/// code that only speaks the protocol.
pub use mllm_core::memory::{PageRange, PAGE_SIZE, PAGE_SIZE_U32};
pub use page_batch::{
    is_zero_page, BatchCompressor, ContentRef, DecodedPages, PageBatch, PageBatchBuilder,
    PageBatchDecoder, PageContent, PageEntry, PageKind, UncompressedBatch, MAX_BATCH_PAGES,
};
pub use traffic::{Traffic, TrafficClass, TypeTraffic};

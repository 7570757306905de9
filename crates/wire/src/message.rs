//! Every message the agents exchange, in one table: its type code on the wire,
//! its body, and the traffic class its bytes are accounted under. When each
//! may be sent is the business of [`crate::conversation`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use mllm_core::dedup::{ContentHash, Location};
use mllm_core::memory::{PageIndex, PageRange};

use crate::digest::RamDigest;
use crate::error::WireError;
use crate::frame::{CHECKSUM_LEN, HEADER_LEN};
use crate::page_batch::PageBatch;
use crate::traffic::TrafficClass;

/// Source asks the destination to receive a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationRequest {
    pub vm_name: String,
    pub ram_bytes: u64,
    pub page_size: u32,
    /// Size of each guest disk, in the order the VM attaches them.
    pub disk_bytes: Vec<u64>,
    pub policy: MigrationPolicy,
    /// Random, chosen by the source: names this migration when a new
    /// connection resumes its post-copy ([`ResumeRequest`]).
    pub migration_id: u128,
    /// Test mode: the source sends digests of RAM and disks at the switch
    /// ([`RamDigest`], [`DiskDigest`]), which the destination can prepare
    /// while pages arrive.
    pub verify: bool,
}

/// How the source intends to move the guest's memory: the destination
/// refuses a policy it cannot serve before a page moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MigrationPolicy {
    /// Rounds of pages while the guest runs, the last round with it paused;
    /// the destination holds every page before it resumes.
    Precopy,
    /// Pre-copy rounds, then the guest resumes on the destination while
    /// some pages are still on the source ([`PendingPages`]): those are
    /// pushed in the source's order and fetched on demand when the guest
    /// touches one first ([`PageRequest`]).
    Postcopy,
}

impl MigrationPolicy {
    /// Whether pages may still move after the destination runs.
    pub fn moves_pages_after_switch(self) -> bool {
        matches!(self, MigrationPolicy::Postcopy)
    }
}

impl fmt::Display for MigrationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MigrationPolicy::Precopy => "pre-copy",
            MigrationPolicy::Postcopy => "post-copy",
        })
    }
}

/// Destination is ready to receive pages for the requested VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationAccept;

/// Destination refuses the migration (e.g. RAM size it cannot provide).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReject {
    pub reason: String,
}

/// Source finished a pre-copy round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundEnd {
    pub round: u32,
    /// Pages sent in this round, zero markers included.
    pub pages: u64,
}

/// The source VM is paused: the pages that follow are the final round, and
/// the guest's memory on the source no longer changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceStopped;

/// A chunk of QEMU's device-state migration stream, relayed unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    #[serde(with = "serde_bytes")]
    pub chunk: Vec<u8>,
}

/// The switch's last frame: QEMU's device-state stream is complete (its
/// length lets the destination detect a loss), and the VM is the
/// destination's. The source records the hand-over before sending this and
/// from then on never resumes the VM on its own; the destination never runs
/// the VM before it has this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandOver {
    pub device_state_bytes: u64,
}

/// Blocks of guest disk `disk` (its index in the request's `disk_bytes`),
/// packed and compressed as pages are: the block size is the page size,
/// and entries carry block indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockBatch {
    pub disk: u16,
    pub batch: PageBatch,
}

/// Test mode: the digest of disk `disk` at the switch, in the layout of
/// [`RamDigest`]; the destination refuses to run a VM whose disk differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskDigest {
    pub disk: u16,
    pub digest: RamDigest,
}

/// Post-copy: the pages that move after the switch, sent with the source
/// paused. The destination's copies of them are stale: it drops them, so
/// touching one faults until the source's version arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingPages {
    pub ranges: Vec<PageRange>,
}

/// Post-copy: the destination's guest (or QEMU) touched these missing pages;
/// the source sends them ahead of everything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRequest {
    pub pages: Vec<PageIndex>,
}

/// Post-copy: every pending page is in place on the destination; the
/// source may release its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostcopyComplete;

/// Test mode for post-copy: the digest of each pending page of the
/// source's RAM at the switch ([`crate::page_digest`]); the destination
/// checks each as it installs it. The other pages are checked at the switch
/// by a [`RamDigest`] whose ranges leave the pending pages out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageDigests {
    pub pages: Vec<(PageIndex, u64)>,
}

/// Post-copy of disk `disk`: its blocks that move after the switch. The
/// destination's copies of them are stale: a guest request touching one
/// waits until the source's version arrives (a full overwrite needs none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBlocks {
    pub disk: u16,
    pub ranges: Vec<PageRange>,
}

/// Post-copy: the destination's guest reads (or partly writes) these
/// missing blocks of disk `disk`; the source sends them ahead of the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    pub disk: u16,
    pub blocks: Vec<u32>,
}

/// Test mode, post-copy: the source's digest of each pending block of disk
/// `disk` at the switch, checked as the destination installs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDigests {
    pub disk: u16,
    pub blocks: Vec<(u32, u64)>,
}

/// Pre-copy: the destination refused these references (what it holds at
/// their `from` location does not hash to what the source said) and wrote
/// nothing there; the source sends their content instead. Sent before the
/// acknowledgement of the batch that held them, so a source that has every
/// batch acknowledged has every such request too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResendContent {
    /// The locations the references were to fill.
    pub locations: Vec<Location>,
}

/// Before its answer to a request: content the destination's disk `disk`
/// already holds (a VM moving back to a host it left keeps its old image
/// there), so the source can send references to it instead of the blocks.
/// Several frames for a large disk, each at most [`HELD_BLOCKS_PER_FRAME`].
/// Advice only: every reference is checked against what is held when it
/// arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldContent {
    pub disk: u16,
    /// (block, hash of its content).
    pub blocks: Vec<(u32, ContentHash)>,
}

/// How many held blocks one [`HeldContent`] frame names at most: 64 Ki
/// entries of about 21 bytes, well under a frame's payload limit.
pub const HELD_BLOCKS_PER_FRAME: usize = 1 << 16;

/// How many held blocks a destination names in all, at most: 1 GiB of
/// content, about 5.5 MiB of frames. A source refuses more, so a peer
/// cannot keep it reading them forever.
pub const MAX_HELD_BLOCKS: usize = 1 << 18;

/// Destination's VM runs: the source may release its copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationRunning;

/// Either side gives up the migration; the source keeps (or resumes) the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    pub reason: String,
}

/// From the destination: one page batch is written. From the source, after
/// `DestinationRunning`: the source has let the VM go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack;

/// Post-copy, on a new connection after the link failed: the source asks
/// to go on serving the post-copy of migration `migration_id` (the id of
/// its [`MigrationRequest`]). Sent instead of a request, right after the
/// handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub migration_id: u128,
}

/// The destination resumes the post-copy: its VM runs, and these are the
/// pages, and the blocks of each disk (by its index in the request's
/// `disk_bytes`), it still lacks. Its view is the truth: whatever the source sent before the link
/// failed and is not named here arrived; whatever is named did not. A
/// destination that has no such post-copy answers [`MigrationReject`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeAccept {
    pub pages: Vec<PageRange>,
    /// Flat, so that no entry decodes from fewer bytes than it takes.
    pub blocks: Vec<(u16, PageRange)>,
}

/// Generates `MessageType`, `Message` and their conversions from one table, so a
/// message cannot be added to one without the others.
macro_rules! message_table {
    ($( $code:literal => $name:ident : $class:ident, )+) => {
        /// Kind of a message, carried as a code in every frame header.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum MessageType {
            $( $name = $code, )+
        }

        impl MessageType {
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name),+];

            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $( $code => Some(MessageType::$name), )+
                    _ => None,
                }
            }

            pub fn code(self) -> u16 {
                self as u16
            }

            pub fn name(self) -> &'static str {
                match self {
                    $( MessageType::$name => stringify!($name), )+
                }
            }

            pub fn traffic_class(self) -> TrafficClass {
                match self {
                    $( MessageType::$name => TrafficClass::$class, )+
                }
            }
        }

        /// One message with its body.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Message {
            $( $name($name), )+
        }

        impl Message {
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( Message::$name(_) => MessageType::$name, )+
                }
            }

            /// Bytes this message takes on the link: frame header, body
            /// and checksum. Exact, so flow control and reports count what
            /// the link carries.
            pub fn frame_len(&self) -> u64 {
                let body = match self {
                    $( Message::$name(body) => encoded_len(body), )+
                };
                (HEADER_LEN + body + CHECKSUM_LEN) as u64
            }

            /// Appends the body's encoding to `out`.
            pub(crate) fn encode_body(&self, out: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
                match self {
                    $( Message::$name(body) => postcard::to_extend(body, out), )+
                }
            }

            pub(crate) fn decode_body(
                message_type: MessageType,
                payload: &[u8],
            ) -> Result<Self, WireError> {
                let message = match message_type {
                    $( MessageType::$name => decode_exact(message_type, payload).map(Message::$name)?, )+
                };
                message.check().map_err(|reason| WireError::Malformed {
                    message_type,
                    reason,
                })?;
                Ok(message)
            }
        }

        $(
            impl From<$name> for Message {
                fn from(body: $name) -> Self {
                    Message::$name(body)
                }
            }
        )+
    };
}

// Codes are part of the protocol: never reuse or renumber one; add new ones
// at the end. Retired, never to be reused: 6 (Progress) and 9
// (SwitchoverReady), removed in version 2 as nothing sent them.
message_table! {
    1 => MigrationRequest: Control,
    2 => MigrationAccept: Control,
    3 => MigrationReject: Control,
    4 => PageBatch: Memory,
    5 => RoundEnd: Memory,
    7 => DeviceState: DeviceState,
    8 => HandOver: Control,
    10 => DestinationRunning: Control,
    11 => Abort: Control,
    12 => RamDigest: Verification,
    13 => Ack: Control,
    14 => SourceStopped: Control,
    15 => PendingPages: Memory,
    16 => PageRequest: Memory,
    17 => PostcopyComplete: Control,
    18 => PageDigests: Verification,
    19 => BlockBatch: Disk,
    20 => DiskDigest: Verification,
    21 => PendingBlocks: Disk,
    22 => BlockRequest: Disk,
    23 => BlockDigests: Verification,
    24 => ResendContent: Control,
    // Held content (version 7).
    25 => HeldContent: Control,
    // Post-copy recovery (version 6), numbered apart from the rest so that
    // messages added alongside it elsewhere do not collide.
    40 => ResumeRequest: Control,
    41 => ResumeAccept: Control,
}

impl Message {
    /// What the body's types cannot say: a page range decodes field by
    /// field, and one that ends before it starts would underflow every
    /// length computed from it.
    fn check(&self) -> Result<(), String> {
        let ranges: Vec<&PageRange> = match self {
            Message::HeldContent(held) if held.blocks.len() > HELD_BLOCKS_PER_FRAME => {
                return Err(format!(
                    "{} held blocks in one frame, more than {HELD_BLOCKS_PER_FRAME}",
                    held.blocks.len()
                ))
            }
            Message::PendingPages(pending) => pending.ranges.iter().collect(),
            Message::PendingBlocks(pending) => pending.ranges.iter().collect(),
            Message::ResumeAccept(missing) => missing
                .pages
                .iter()
                .chain(missing.blocks.iter().map(|(_, range)| range))
                .collect(),
            _ => return Ok(()),
        };
        match ranges.into_iter().find(|r| r.start > r.end) {
            Some(range) => Err(format!(
                "range {}..{} ends before it starts",
                range.start, range.end
            )),
            None => Ok(()),
        }
    }
}

/// Encoded size of a body: postcard's size-counting flavor walks the value
/// without writing it.
fn encoded_len<T: Serialize>(body: &T) -> usize {
    postcard::serialize_with_flavor(body, postcard::ser_flavors::Size::default())
        .expect("counting bytes cannot fail")
}

/// Decodes a body that must fill the payload exactly: trailing bytes mean the peer
/// and this agent disagree on the layout, which must not pass silently.
fn decode_exact<T: DeserializeOwned>(
    message_type: MessageType,
    payload: &[u8],
) -> Result<T, WireError> {
    let (body, rest) = postcard::take_from_bytes(payload).map_err(|e| WireError::Malformed {
        message_type,
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(WireError::Malformed {
            message_type,
            reason: format!("{} trailing bytes", rest.len()),
        });
    }
    Ok(body)
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The raw type code of a frame, which may not name a known message (corrupted or
/// newer peer). Displays the message name when it is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameType(pub u16);

impl FrameType {
    pub fn message_type(self) -> Option<MessageType> {
        MessageType::from_code(self.0)
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.message_type() {
            Some(message_type) => message_type.fmt(f),
            None => write!(f, "unknown-type-{:#06x}", self.0),
        }
    }
}

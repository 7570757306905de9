//! The migration conversation: which message may cross, in which direction,
//! at which point. Both agents track it with a [`Conversation`] and check
//! every frame they send and receive against it, so a peer that skips a step,
//! repeats one or sends a message of the other side fails with a protocol
//! error that names the message and the phase, before it can change anything.
//!
//! # Sequence
//!
//! Beneath it the link is a TCP connection carrying a mutual TLS 1.3
//! session (`mllm-tls`: the destination is the TLS server; after its
//! handshake the server sends one byte of acceptance, then the conversation
//! starts with the hellos), or with the operator's explicit
//! `--insecure-plaintext` the bare connection. Nothing here depends on which:
//! a refused peer never reaches the hello.
//!
//! ```text
//!  source agent                                      destination agent
//!       │── hello (magic, version, role, caps) ──────────▶│  both send first,
//!       │◀───────────────────────────────────── hello ────│  then read: no deadlock
//!       │                                                 │  AwaitingRequest
//!       │── MigrationRequest (VM, RAM size, policy) ─────▶│  AwaitingAnswer
//!       │◀──────────────────── HeldContent (0 or more) ───│  its disks' old content
//!       │◀──────────── MigrationAccept | MigrationReject ──│  Precopy | Ended
//!       │── PageBatch, BlockBatch (disks) ──────────────▶│  round 1: every page,
//!       │                                                 │  every used block;
//!       │◀────────────────────────────────────── Ack ─────│  one Ack per batch
//!       │── RoundEnd ───────────────────────────────────▶│  (the source measures
//!       │        … more rounds: pages written meanwhile … │   the link by the Acks)
//!       │── SourceStopped ──────────────────────────────▶│  Switching: VM paused
//!       │── PageBatch … RoundEnd ───────────────────────▶│  final round
//!       │── PendingPages, PendingBlocks (post-copy) ────▶│  dropped, fault now
//!       │── RamDigest, DiskDigest, PageDigests (test) ──▶│  compared, or refuse
//!       │── DeviceState … ──────────────────────────────▶│  DeviceState: QEMU's
//!       │── HandOver (device-state bytes) ──────────────▶│  stream, relayed
//!       │   the VM is the destination's from here         │  AwaitingRunning: load, cont
//!       │◀──────────────────────── DestinationRunning ────│  AwaitingRelease, or
//!       │                                                 │  Postcopy:
//!       │── Page/BlockBatch (pushed, or asked for) ─────▶│    installed
//!       │◀────────────── PageRequest, BlockRequest, Ack ──│    faults, receipts
//!       │◀──────────────────────── PostcopyComplete ──────│  AwaitingRelease
//!       │── Ack ────────────────────────────────────────▶│  Released
//! ```
//!
//! With the post-copy policy (named in the request) the destination may ask
//! for pending pages as soon as it has dropped them, since its QEMU touches
//! guest memory while it loads the device state: `PageRequest` is valid from
//! `Switching` on and the source's `PageBatch` from then until
//! `PostcopyComplete`. Without it, a page after the device state has begun
//! is a protocol error.
//!
//! # References
//!
//! A pre-copy batch may carry references instead of content
//! ([`ContentRef`](crate::ContentRef)): "copy what you hold at `from`, whose
//! content hashes to `H`". The destination checks the hash of what it holds
//! there before it copies; when they differ it writes nothing to the
//! reference's target and, before that batch's `Ack`, sends
//! `ResendContent` naming the targets. The source answers with ordinary
//! batches of their current content. Two rules make this complete before the
//! switch:
//!
//! - References travel only in pre-copy, before `SourceStopped`; the
//!   destination refuses one after it.
//! - The source sends `SourceStopped` only once every batch it queued is
//!   acknowledged (so it has read every `ResendContent`) and it has sent
//!   their answers. The destination refuses `SourceStopped` while an answer
//!   is missing: it never starts a VM with a target left unwritten.
//!
//! ```text
//!       │── PageBatch (… Reference{from, H} → M …) ─────▶│  content at `from`
//!       │◀──────────────── ResendContent [M], Ack ────────│  ≠ H: M not written
//!       │── PageBatch (M, content) ─────────────────────▶│  M written
//!       │── SourceStopped ──────────────────────────────▶│  nothing owed
//! ```
//!
//! A destination whose disk image already holds data (the VM lived here
//! before) names it before its answer: `HeldContent`, block and content
//! hash, as many frames as it takes. The source may refer to those blocks
//! like to anything it sent itself, so a VM moving back sends only the
//! blocks that changed. The destination keeps its image until the source
//! stops, and then empties every block it held that the migration did not
//! write: what the source does not send must read as zeros.
//!
//! Either side may send `Abort` (with its reason) before the hand-over; the
//! conversation then ends and the source keeps the VM, resuming it if it
//! paused it.
//!
//! # Resuming a post-copy
//!
//! In post-copy, after the hand-over, the destination runs the only guest
//! and the source holds the only copy of the pages (and blocks) it still
//! lacks: a failed link must not end the migration. The request carries a
//! random 128-bit `migration_id` for this. When the link fails (cut,
//! closed, or silent for the link timeout) after the hand-over:
//!
//! - the destination keeps the VM running: a vCPU that touches a missing
//!   page sleeps in the fault, its fault thread keeps collecting faults,
//!   requests it cannot send are dropped (they are asked again below). Its
//!   set of missing pages and blocks is the authority. It waits for a new
//!   connection naming the migration, up to its recovery timeout;
//! - the source never resumes its VM (the ownership rule below) and keeps
//!   its RAM file and disk as they were at the switch; it connects again,
//!   with backoff, up to the same timeout. Only the source dials: it is
//!   the side that knows where the other is.
//!
//! ```text
//!  source agent (new connection)                     destination agent
//!       │── hello ⇄ hello ────────────────────────────────│
//!       │── ResumeRequest (migration id) ────────────────▶│  AwaitingResume: its
//!       │◀──── ResumeAccept (pages, blocks still missing) ─│  post-copy, found by id
//!       │◀────────── PageRequest, BlockRequest (awaited) ──│  Postcopy
//!       │── Page/BlockBatch (only what is named) ───────▶│    installed
//!       │◀────────────────────────── PostcopyComplete ─────│  AwaitingRelease
//!       │── Ack ────────────────────────────────────────▶│  Released
//! ```
//!
//! Nothing is lost: whatever was in flight when the link failed either
//! arrived (and is not named in `ResumeAccept`) or did not (and is); the
//! source owes exactly what is named, whatever it handed out before. The
//! destination asks again first for the pages and blocks its guest waits
//! on. Nothing is counted twice: a page installed already is skipped (its
//! second copy, or `EEXIST`, changes nothing). Batches start afresh on the
//! new connection on both sides (compression state, acknowledgements).
//!
//! The destination registers its post-copy for resumption only once it has
//! the hand-over: before it there is no running VM to serve, and a resume
//! is refused (`MigrationReject`), as it is for an unknown id or after the
//! destination gave up. One that finished answers a late resume with an
//! empty `ResumeAccept` and its receipt, so a source that lost the receipt
//! with the link still lets go. A newer resume of the same migration shuts
//! the connection the destination still serves, which may look alive to it
//! while the source knows it dead.
//!
//! After the recovery timeout each side says so plainly and touches
//! nothing: the destination that the guest cannot continue because N pages
//! and M blocks are only on the source host, unreachable for T (its VM is
//! left running, stalled on them); the source that the destination is
//! unreachable and that it still holds every such page (its VM stays
//! paused). An operator decides; neither side can tell alone whether the
//! other is gone for good.
//!
//! # Ownership
//!
//! One frame moves the VM: `HandOver`, the last of the switch. The rule:
//!
//! - The source records the hand-over *before* it sends the frame; from then
//!   on it never resumes the VM on its own. After it, an `Abort` from the
//!   source is a protocol error: it can no longer take the VM back.
//! - The destination never runs the VM before it has the frame (it could not:
//!   the device state is complete only then). Once it has it, it runs the VM
//!   whatever becomes of the link: in pre-copy it needs nothing more.
//! - The one way back: the destination sends `Abort` before
//!   `DestinationRunning` (its QEMU failed to load or to resume). It sends it
//!   only once its VM cannot run (paused, or its QEMU killed), so the source,
//!   reading an `Abort` before `DestinationRunning`, resumes.
//!
//! Each failure, and where the guest runs after it:
//!
//! | failure                                         | source VM        | destination VM |
//! |-------------------------------------------------|------------------|----------------|
//! | link cut, or either side fails, before the source sends `HandOver` | resumed | never ran |
//! | destination fails after `HandOver`, tells the source (`Abort`)      | resumed | never ran, killed |
//! | link cut after `HandOver` arrived (pre-copy)                        | stays paused | runs |
//! | link cut after the source sent `HandOver`, before it arrived        | stays paused | never runs |
//! | link cut after `HandOver` in post-copy, back within the recovery timeout | stays paused, holds the missing pages until the receipt | runs; the post-copy resumes |
//! | link cut after `HandOver` in post-copy, for longer, or the peer agent gone | stays paused, holds the missing pages | runs, stalled on the first missing page |
//!
//! The fourth row is the window no protocol over one link can close (two
//! generals): its length is one frame's one-way trip. The source then
//! reports that it cannot tell whether the destination runs, and stays
//! paused: an operator, who can ask the destination, decides. Nothing is
//! lost either way: the paused source still holds the whole guest. In the
//! last two rows the guest's memory since the switch exists only at the
//! destination and the missing pages only at the source: the agents
//! reconnect ("Resuming a post-copy" above), and past the recovery timeout
//! both say what is where. A restarted source agent does not re-serve a
//! post-copy yet: its pages stay in the RAM file, untouched, but no agent
//! resumes from them.
//!
//! # Phases
//!
//! ```text
//!  AwaitingRequest ─MigrationRequest→ AwaitingAnswer ─MigrationReject→ Ended
//!                                           │MigrationAccept
//!                                           ▼
//!  ┌─ Page/BlockBatch, RoundEnd, Ack,
//!  │  ResendContent ─────────────────── Precopy
//!  └───────────────────────────────────────▶│SourceStopped
//!                                           ▼
//!  ┌─ Page/BlockBatch, RoundEnd, ────── Switching
//!  └─ Ram/DiskDigest, Ack ─────────────────▶│DeviceState
//!                                           ▼
//!           ┌─ DeviceState, Ack ─────── DeviceState
//!           └──────────────────────────────▶│HandOver (the VM moves)
//!                                           ▼
//!           ┌─ Ack (of batches) ─────── AwaitingRunning
//!           └──────────────────────────────▶│DestinationRunning
//!                                           ▼
//!                                     AwaitingRelease ─Ack (source)→ Released
//!
//!  AwaitingRunning ─DestinationRunning→ Postcopy (post-copy policy)
//!           ┌─ PageBatch, PageRequest, Ack ─ Postcopy
//!           └───────────────────────────────▶│PostcopyComplete
//!                                            ▼
//!                                      AwaitingRelease
//!
//!  AwaitingRequest ─ResumeRequest→ AwaitingResume ─MigrationReject→ Ended
//!                                        │ResumeAccept
//!                                        ▼
//!                                     Postcopy (as above, on the new connection)
//!
//!  any phase but Released, Ended ─Abort (destination)→ Ended
//!  any phase before AwaitingRunning but AwaitingResume ─Abort (source)→ Ended
//! ```
//!
//! Acknowledgements of batches trail the batches, so the destination's `Ack`
//! is valid from `Precopy` until it reports its VM running.
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) changes whenever an agent
//! of the old version could misread the new one: a message added, removed or
//! given another code, a field added to or removed from a body, an encoding
//! changed, or a transition of this table added or removed. Agents of
//! different versions refuse each other in the handshake, naming both
//! versions. Capabilities (compression algorithms) are negotiated inside one
//! version and need no new version.

use std::fmt;

use crate::error::WireError;
use crate::handshake::Role;
use crate::message::{Message, MessageType};

/// Where a migration's conversation stands; the same on both sides, up to
/// the frames still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshake done; the source names the VM it wants to move.
    AwaitingRequest,
    /// The destination checks the request and accepts or refuses it.
    AwaitingAnswer,
    /// On a new connection: the destination looks for the post-copy the
    /// source asks to resume, and names what it still lacks or refuses.
    AwaitingResume,
    /// Rounds of pages while the source VM runs.
    Precopy,
    /// The source VM is paused; its final round (and digest) follow.
    Switching,
    /// QEMU's device state is relayed.
    DeviceState,
    /// Everything is sent; the destination loads the device state and resumes.
    AwaitingRunning,
    /// Post-copy: the destination runs the VM while the pending pages arrive.
    Postcopy,
    /// The destination runs the VM; the source lets it go.
    AwaitingRelease,
    /// The VM belongs to the destination.
    Released,
    /// Refused or aborted: the VM stays with the source.
    Ended,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::AwaitingRequest => "awaiting the migration request",
            Phase::AwaitingAnswer => "awaiting the answer to the migration request",
            Phase::AwaitingResume => "awaiting the answer to a request to resume post-copy",
            Phase::Precopy => "in pre-copy",
            Phase::Switching => "switching over (source VM paused, final round)",
            Phase::DeviceState => "relaying device state",
            Phase::AwaitingRunning => "awaiting the destination VM's start",
            Phase::Postcopy => "in post-copy (the destination runs the VM)",
            Phase::AwaitingRelease => "awaiting the source's release",
            Phase::Released => "over (the VM was released)",
            Phase::Ended => "over (refused or aborted)",
        })
    }
}

/// One side's view of the conversation.
#[derive(Debug, Clone)]
pub struct Conversation {
    role: Role,
    phase: Phase,
    /// The request named the post-copy policy.
    postcopy: bool,
}

impl Conversation {
    /// A conversation right after the handshake, seen by `role`.
    pub fn new(role: Role) -> Conversation {
        Conversation {
            role,
            phase: Phase::AwaitingRequest,
            postcopy: false,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the migration moves pages after the switch.
    pub fn is_postcopy(&self) -> bool {
        self.postcopy
    }

    /// Checks a message this side is about to send, and moves on. Call it
    /// before the frame leaves: the peer's reply may arrive at once.
    pub fn sending(&mut self, message: &Message) -> Result<Phase, WireError> {
        self.step(self.role, message)
    }

    /// Checks a message the peer sent, and moves on.
    pub fn received(&mut self, message: &Message) -> Result<Phase, WireError> {
        let peer = match self.role {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        };
        self.step(peer, message)
    }

    fn step(&mut self, from: Role, message: &Message) -> Result<Phase, WireError> {
        let kind = message.message_type();
        let next =
            next_phase(self.phase, from, kind, self.postcopy).ok_or(WireError::OutOfOrder {
                message: kind,
                from,
                phase: self.phase,
            })?;
        match message {
            Message::MigrationRequest(request) => {
                self.postcopy = request.policy.moves_pages_after_switch();
            }
            // Only a post-copy is ever resumed.
            Message::ResumeRequest(_) => self.postcopy = true,
            _ => {}
        }
        self.phase = next;
        Ok(next)
    }
}

/// The transition table of the module documentation; `None` for a message
/// that is not valid from `from` in `phase` (`postcopy`: the request named
/// the post-copy policy).
fn next_phase(phase: Phase, from: Role, message: MessageType, postcopy: bool) -> Option<Phase> {
    use MessageType as M;
    use Phase as P;
    use Role::{Destination as D, Source as S};
    // After the switch, in post-copy: pages still move, both ways asked.
    let pages_after_switch = matches!(
        phase,
        P::Switching | P::DeviceState | P::AwaitingRunning | P::Postcopy
    );
    Some(match (phase, from, message) {
        (P::Released | P::Ended, _, _) => return None,
        // Handed over: the source cannot take the VM back.
        (
            P::AwaitingRunning | P::AwaitingResume | P::Postcopy | P::AwaitingRelease,
            S,
            M::Abort,
        ) => return None,
        (_, _, M::Abort) => P::Ended,
        (P::AwaitingRequest, S, M::MigrationRequest) => P::AwaitingAnswer,
        (P::AwaitingRequest, S, M::ResumeRequest) => P::AwaitingResume,
        (P::AwaitingResume, D, M::ResumeAccept) => P::Postcopy,
        (P::AwaitingResume, D, M::MigrationReject) => P::Ended,
        (P::AwaitingAnswer, D, M::HeldContent) => P::AwaitingAnswer,
        (P::AwaitingAnswer, D, M::MigrationAccept) => P::Precopy,
        (P::AwaitingAnswer, D, M::MigrationReject) => P::Ended,
        (P::Precopy | P::Switching | P::DeviceState | P::AwaitingRunning, D, M::Ack) => phase,
        (P::Precopy, S, M::PageBatch | M::BlockBatch | M::RoundEnd) => P::Precopy,
        (P::Precopy, D, M::ResendContent) => P::Precopy,
        (P::Precopy, S, M::SourceStopped) => P::Switching,
        (
            P::Switching,
            S,
            M::PageBatch | M::BlockBatch | M::RoundEnd | M::RamDigest | M::DiskDigest,
        ) => P::Switching,
        (
            P::Switching,
            S,
            M::PendingPages | M::PageDigests | M::PendingBlocks | M::BlockDigests,
        ) if postcopy => P::Switching,
        (_, S, M::PageBatch | M::BlockBatch) if postcopy && pages_after_switch => phase,
        (_, D, M::PageRequest | M::BlockRequest | M::Ack) if postcopy && pages_after_switch => {
            phase
        }
        (P::Switching | P::DeviceState, S, M::DeviceState) => P::DeviceState,
        (P::DeviceState, S, M::HandOver) => P::AwaitingRunning,
        (P::AwaitingRunning, D, M::DestinationRunning) if postcopy => P::Postcopy,
        (P::AwaitingRunning, D, M::DestinationRunning) => P::AwaitingRelease,
        (P::Postcopy, D, M::PostcopyComplete) => P::AwaitingRelease,
        // Pushed pages the source sent before it read the receipt.
        (P::AwaitingRelease, S, M::PageBatch | M::BlockBatch) | (P::AwaitingRelease, D, M::Ack)
            if postcopy =>
        {
            phase
        }
        (P::AwaitingRelease, S, M::Ack) => P::Released,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::*;
    use crate::{Compression, PageBatch, RamDigest};

    use MessageType as M;

    /// The successful pre-copy migration of the sequence diagram, as
    /// (sender, message).
    const HAPPY_PATH: &[(Role, MessageType)] = &[
        (Role::Source, M::MigrationRequest),
        (Role::Destination, M::MigrationAccept),
        (Role::Source, M::PageBatch),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::ResendContent),
        (Role::Destination, M::Ack),
        (Role::Source, M::RoundEnd),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::Ack),
        (Role::Destination, M::Ack),
        (Role::Source, M::SourceStopped),
        (Role::Source, M::PageBatch),
        (Role::Source, M::RoundEnd),
        (Role::Source, M::RamDigest),
        (Role::Source, M::DeviceState),
        (Role::Destination, M::Ack),
        (Role::Source, M::DeviceState),
        (Role::Source, M::HandOver),
        (Role::Destination, M::DestinationRunning),
        (Role::Source, M::Ack),
    ];

    /// The same with the post-copy policy: faults from the switch on, pages
    /// pushed and asked for while the destination runs, its receipt last.
    const POSTCOPY_PATH: &[(Role, MessageType)] = &[
        (Role::Source, M::MigrationRequest),
        (Role::Destination, M::MigrationAccept),
        (Role::Source, M::PageBatch),
        (Role::Source, M::RoundEnd),
        (Role::Destination, M::Ack),
        (Role::Source, M::SourceStopped),
        (Role::Source, M::PendingPages),
        (Role::Source, M::PageDigests),
        (Role::Destination, M::PageRequest),
        (Role::Source, M::DeviceState),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::Ack),
        (Role::Source, M::HandOver),
        (Role::Destination, M::PageRequest),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::DestinationRunning),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::PageRequest),
        (Role::Destination, M::Ack),
        (Role::Destination, M::PostcopyComplete),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::Ack),
        (Role::Source, M::Ack),
    ];

    /// A message of `kind` with an empty body; a request names `policy`.
    fn message(kind: MessageType, policy: MigrationPolicy) -> Message {
        match kind {
            M::MigrationRequest => MigrationRequest {
                vm_name: "vm".into(),
                ram_bytes: 1 << 20,
                page_size: 4096,
                disk_bytes: vec![],
                policy,
                migration_id: 7,
                verify: false,
            }
            .into(),
            M::ResumeRequest => ResumeRequest { migration_id: 7 }.into(),
            M::ResumeAccept => ResumeAccept {
                pages: vec![],
                blocks: vec![],
            }
            .into(),
            M::HeldContent => HeldContent {
                disk: 0,
                blocks: vec![],
            }
            .into(),
            M::MigrationAccept => MigrationAccept.into(),
            M::MigrationReject => MigrationReject {
                reason: "no".into(),
            }
            .into(),
            M::PageBatch => PageBatch {
                compression: Compression::None,
                pages: vec![],
                payload: vec![],
            }
            .into(),
            M::RoundEnd => RoundEnd { round: 1, pages: 0 }.into(),
            M::DeviceState => DeviceState { chunk: vec![] }.into(),
            M::HandOver => HandOver {
                device_state_bytes: 0,
            }
            .into(),
            M::DestinationRunning => DestinationRunning.into(),
            M::Abort => Abort {
                reason: "stop".into(),
            }
            .into(),
            M::RamDigest => RamDigest { ranges: vec![] }.into(),
            M::Ack => Ack.into(),
            M::SourceStopped => SourceStopped.into(),
            M::PendingPages => PendingPages { ranges: vec![] }.into(),
            M::PageRequest => PageRequest { pages: vec![1] }.into(),
            M::PostcopyComplete => PostcopyComplete.into(),
            M::PageDigests => PageDigests { pages: vec![] }.into(),
            M::BlockBatch => BlockBatch {
                disk: 0,
                batch: PageBatch {
                    compression: Compression::None,
                    pages: vec![],
                    payload: vec![],
                },
            }
            .into(),
            M::PendingBlocks => PendingBlocks {
                disk: 0,
                ranges: vec![],
            }
            .into(),
            M::BlockRequest => BlockRequest {
                disk: 0,
                blocks: vec![1],
            }
            .into(),
            M::BlockDigests => BlockDigests {
                disk: 0,
                blocks: vec![],
            }
            .into(),
            M::DiskDigest => DiskDigest {
                disk: 0,
                digest: RamDigest { ranges: vec![] },
            }
            .into(),
            M::ResendContent => ResendContent {
                locations: vec![mllm_core::dedup::Location::Page(1)],
            }
            .into(),
        }
    }

    /// Plays `messages` on both sides; the sender sends, the other receives.
    fn play_with(
        policy: MigrationPolicy,
        messages: &[(Role, MessageType)],
    ) -> Result<Phase, WireError> {
        let mut source = Conversation::new(Role::Source);
        let mut destination = Conversation::new(Role::Destination);
        for &(from, kind) in messages {
            let (sender, receiver) = match from {
                Role::Source => (&mut source, &mut destination),
                Role::Destination => (&mut destination, &mut source),
            };
            let message = message(kind, policy);
            sender.sending(&message)?;
            receiver.received(&message)?;
        }
        assert_eq!(source.phase(), destination.phase());
        Ok(source.phase())
    }

    fn play(messages: &[(Role, MessageType)]) -> Result<Phase, WireError> {
        play_with(MigrationPolicy::Precopy, messages)
    }

    #[test]
    fn the_documented_sequences_end_released() {
        assert_eq!(play(HAPPY_PATH).unwrap(), Phase::Released);
        assert_eq!(
            play_with(MigrationPolicy::Postcopy, POSTCOPY_PATH).unwrap(),
            Phase::Released
        );
    }

    /// A post-copy resumed on a new connection after the link failed.
    const RESUMED_PATH: &[(Role, MessageType)] = &[
        (Role::Source, M::ResumeRequest),
        (Role::Destination, M::ResumeAccept),
        (Role::Destination, M::PageRequest),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::Ack),
        (Role::Source, M::BlockBatch),
        (Role::Destination, M::Ack),
        (Role::Destination, M::PostcopyComplete),
        (Role::Source, M::Ack),
    ];

    #[test]
    fn a_resumed_post_copy_ends_released_and_never_gives_the_vm_back() {
        // Whatever the policy of the connection it replaces.
        assert_eq!(
            play_with(MigrationPolicy::Precopy, RESUMED_PATH).unwrap(),
            Phase::Released
        );
        let refused = [
            (Role::Source, M::ResumeRequest),
            (Role::Destination, M::MigrationReject),
        ];
        assert_eq!(play(&refused).unwrap(), Phase::Ended);
        for cut in 1..RESUMED_PATH.len() {
            let mut messages = RESUMED_PATH[..cut].to_vec();
            messages.push((Role::Source, M::Abort));
            let error = play(&messages).unwrap_err().to_string();
            assert!(error.contains("the source sent Abort"), "{error}");
        }
        // A resume is no new migration, and a migration resumes nothing.
        let error = play(&[
            (Role::Source, M::ResumeRequest),
            (Role::Source, M::MigrationRequest),
        ])
        .unwrap_err()
        .to_string();
        assert!(error.contains("resume post-copy"), "{error}");
        let error = play(&[
            (Role::Source, M::MigrationRequest),
            (Role::Destination, M::ResumeAccept),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("the destination sent ResumeAccept"),
            "{error}"
        );
    }

    #[test]
    fn post_copy_messages_need_the_post_copy_policy() {
        let error = play(POSTCOPY_PATH).unwrap_err().to_string();
        assert!(error.contains("the source sent PendingPages"), "{error}");
        // Pre-copy's release comes right after the destination runs; in
        // post-copy only after the destination's receipt.
        let mut early_release = POSTCOPY_PATH[..16].to_vec();
        early_release.push((Role::Source, M::Ack));
        let error = play_with(MigrationPolicy::Postcopy, &early_release)
            .unwrap_err()
            .to_string();
        assert!(error.contains("in post-copy"), "{error}");
    }

    #[test]
    fn the_destination_may_abort_until_the_release_the_source_until_the_hand_over() {
        for (policy, path) in [
            (MigrationPolicy::Precopy, HAPPY_PATH),
            (MigrationPolicy::Postcopy, POSTCOPY_PATH),
        ] {
            let hand_over = path
                .iter()
                .position(|&(_, kind)| kind == M::HandOver)
                .unwrap();
            for cut in 0..path.len() {
                let mut messages = path[..cut].to_vec();
                messages.push((Role::Destination, M::Abort));
                assert_eq!(
                    play_with(policy, &messages).unwrap(),
                    Phase::Ended,
                    "after {cut}"
                );
                let mut messages = path[..cut].to_vec();
                messages.push((Role::Source, M::Abort));
                let played = play_with(policy, &messages);
                if cut <= hand_over {
                    assert_eq!(played.unwrap(), Phase::Ended, "after {cut}");
                } else {
                    let error = played.unwrap_err().to_string();
                    assert!(error.contains("the source sent Abort"), "{error}");
                }
            }
            let mut after_release = path.to_vec();
            after_release.push((Role::Destination, M::Abort));
            assert!(play_with(policy, &after_release).is_err());
        }
    }

    #[test]
    fn out_of_order_messages_name_the_message_the_sender_and_the_phase() {
        let cases: &[(&[(Role, MessageType)], &str)] = &[
            (
                &[(Role::Source, M::DeviceState)],
                "the source sent DeviceState, which is not valid while the conversation is awaiting the migration request",
            ),
            (
                &[
                    (Role::Source, M::MigrationRequest),
                    (Role::Destination, M::MigrationAccept),
                    (Role::Source, M::MigrationRequest),
                ],
                "the source sent MigrationRequest, which is not valid while the conversation is in pre-copy",
            ),
            (
                &[
                    (Role::Source, M::MigrationRequest),
                    (Role::Destination, M::MigrationAccept),
                    (Role::Source, M::SourceStopped),
                    (Role::Source, M::DeviceState),
                    (Role::Source, M::PageBatch),
                ],
                "the source sent PageBatch, which is not valid while the conversation is relaying device state",
            ),
            (
                &[
                    (Role::Source, M::MigrationRequest),
                    (Role::Destination, M::MigrationAccept),
                    (Role::Destination, M::DestinationRunning),
                ],
                "the destination sent DestinationRunning, which is not valid while the conversation is in pre-copy",
            ),
            (
                &[(Role::Destination, M::MigrationAccept)],
                "the destination sent MigrationAccept, which is not valid while the conversation is awaiting the migration request",
            ),
        ];
        for (messages, expected) in cases {
            let error = play(messages).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}\nexpected: {expected}");
        }
    }

    #[test]
    fn resend_requests_are_valid_only_in_pre_copy() {
        let stop = HAPPY_PATH
            .iter()
            .position(|&step| step == (Role::Source, M::SourceStopped))
            .unwrap();
        let mut after_stop = HAPPY_PATH[..=stop].to_vec();
        assert_eq!(after_stop.last(), Some(&(Role::Source, M::SourceStopped)));
        after_stop.push((Role::Destination, M::ResendContent));
        let error = play(&after_stop).unwrap_err().to_string();
        assert!(
            error.contains("the destination sent ResendContent"),
            "{error}"
        );
        let from_the_source = [
            (Role::Source, M::MigrationRequest),
            (Role::Destination, M::MigrationAccept),
            (Role::Source, M::ResendContent),
        ];
        assert!(play(&from_the_source).is_err());
    }

    #[test]
    fn each_side_refuses_to_send_what_its_role_cannot() {
        let request = message(M::MigrationRequest, MigrationPolicy::Precopy);
        let accept = message(M::MigrationAccept, MigrationPolicy::Precopy);
        let mut destination = Conversation::new(Role::Destination);
        assert!(destination.sending(&request).is_err());
        let mut source = Conversation::new(Role::Source);
        source.sending(&request).unwrap();
        assert!(source.sending(&accept).is_err());
    }
}

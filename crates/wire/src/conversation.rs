//! The migration conversation: which message may cross, in which direction,
//! at which point. Both agents track it with a [`Conversation`] and check
//! every frame they send and receive against it, so a peer that skips a step,
//! repeats one or sends a message of the other side fails with a protocol
//! error that names the message and the phase, before it can change anything.
//!
//! # Sequence
//!
//! ```text
//!  source agent                                      destination agent
//!       │── hello (magic, version, role, caps) ──────────▶│  both send first,
//!       │◀───────────────────────────────────── hello ────│  then read: no deadlock
//!       │                                                 │  AwaitingRequest
//!       │── MigrationRequest (VM, RAM size, policy) ─────▶│  AwaitingAnswer
//!       │◀──────────── MigrationAccept | MigrationReject ──│  Precopy | Ended
//!       │── PageBatch ──────────────────────────────────▶│  round 1: every page;
//!       │◀────────────────────────────────────── Ack ─────│  one Ack per batch
//!       │── RoundEnd ───────────────────────────────────▶│  (the source measures
//!       │        … more rounds: pages written meanwhile … │   the link by the Acks)
//!       │── SourceStopped ──────────────────────────────▶│  Switching: VM paused
//!       │── PageBatch … RoundEnd ───────────────────────▶│  final round
//!       │── RamDigest (test mode) ──────────────────────▶│  compared, or refuse
//!       │── DeviceState … ──────────────────────────────▶│  DeviceState: QEMU's
//!       │── DeviceStateEnd (total bytes) ───────────────▶│  stream, relayed
//!       │                                                 │  AwaitingRunning: load, cont
//!       │◀──────────────────────── DestinationRunning ────│  AwaitingRelease
//!       │── Ack ────────────────────────────────────────▶│  Released
//! ```
//!
//! Either side may send `Abort` (with its reason) in any phase before
//! `Released`; the conversation then ends and the source keeps the VM,
//! resuming it if it paused it. A destination that does not get the final
//! `Ack` pauses its VM again, so the guest never runs on both sides.
//!
//! # Phases
//!
//! ```text
//!  AwaitingRequest ─MigrationRequest→ AwaitingAnswer ─MigrationReject→ Ended
//!                                           │MigrationAccept
//!                                           ▼
//!           ┌─ PageBatch, RoundEnd, Ack ─ Precopy
//!           └──────────────────────────────▶│SourceStopped
//!                                           ▼
//!           ┌─ PageBatch, RoundEnd, ── Switching
//!           └─ RamDigest, Ack ─────────────▶│DeviceState
//!                                           ▼
//!           ┌─ DeviceState, Ack ─────── DeviceState
//!           └──────────────────────────────▶│DeviceStateEnd
//!                                           ▼
//!           ┌─ Ack (of batches) ─────── AwaitingRunning
//!           └──────────────────────────────▶│DestinationRunning
//!                                           ▼
//!                                     AwaitingRelease ─Ack (source)→ Released
//!
//!  any phase but Released, Ended ─Abort→ Ended
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
use crate::message::MessageType;

/// Where a migration's conversation stands; the same on both sides, up to
/// the frames still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Handshake done; the source names the VM it wants to move.
    AwaitingRequest,
    /// The destination checks the request and accepts or refuses it.
    AwaitingAnswer,
    /// Rounds of pages while the source VM runs.
    Precopy,
    /// The source VM is paused; its final round (and digest) follow.
    Switching,
    /// QEMU's device state is relayed.
    DeviceState,
    /// Everything is sent; the destination loads the device state and resumes.
    AwaitingRunning,
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
            Phase::Precopy => "in pre-copy",
            Phase::Switching => "switching over (source VM paused, final round)",
            Phase::DeviceState => "relaying device state",
            Phase::AwaitingRunning => "awaiting the destination VM's start",
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
}

impl Conversation {
    /// A conversation right after the handshake, seen by `role`.
    pub fn new(role: Role) -> Conversation {
        Conversation {
            role,
            phase: Phase::AwaitingRequest,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Checks a message this side is about to send, and moves on. Call it
    /// before the frame leaves: the peer's reply may arrive at once.
    pub fn sending(&mut self, message: MessageType) -> Result<Phase, WireError> {
        self.step(self.role, message)
    }

    /// Checks a message the peer sent, and moves on.
    pub fn received(&mut self, message: MessageType) -> Result<Phase, WireError> {
        let peer = match self.role {
            Role::Source => Role::Destination,
            Role::Destination => Role::Source,
        };
        self.step(peer, message)
    }

    fn step(&mut self, from: Role, message: MessageType) -> Result<Phase, WireError> {
        let next = next_phase(self.phase, from, message).ok_or(WireError::OutOfOrder {
            message,
            from,
            phase: self.phase,
        })?;
        self.phase = next;
        Ok(next)
    }
}

/// The transition table of the module documentation; `None` for a message
/// that is not valid from `from` in `phase`.
fn next_phase(phase: Phase, from: Role, message: MessageType) -> Option<Phase> {
    use MessageType as M;
    use Phase as P;
    use Role::{Destination as D, Source as S};
    Some(match (phase, from, message) {
        (P::Released | P::Ended, _, _) => return None,
        (_, _, M::Abort) => P::Ended,
        (P::AwaitingRequest, S, M::MigrationRequest) => P::AwaitingAnswer,
        (P::AwaitingAnswer, D, M::MigrationAccept) => P::Precopy,
        (P::AwaitingAnswer, D, M::MigrationReject) => P::Ended,
        (P::Precopy | P::Switching | P::DeviceState | P::AwaitingRunning, D, M::Ack) => phase,
        (P::Precopy, S, M::PageBatch | M::RoundEnd) => P::Precopy,
        (P::Precopy, S, M::SourceStopped) => P::Switching,
        (P::Switching, S, M::PageBatch | M::RoundEnd | M::RamDigest) => P::Switching,
        (P::Switching | P::DeviceState, S, M::DeviceState) => P::DeviceState,
        (P::DeviceState, S, M::DeviceStateEnd) => P::AwaitingRunning,
        (P::AwaitingRunning, D, M::DestinationRunning) => P::AwaitingRelease,
        (P::AwaitingRelease, S, M::Ack) => P::Released,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use MessageType as M;

    /// The successful migration of the sequence diagram, as (sender, message).
    const HAPPY_PATH: &[(Role, MessageType)] = &[
        (Role::Source, M::MigrationRequest),
        (Role::Destination, M::MigrationAccept),
        (Role::Source, M::PageBatch),
        (Role::Source, M::PageBatch),
        (Role::Destination, M::Ack),
        (Role::Source, M::RoundEnd),
        (Role::Destination, M::Ack),
        (Role::Source, M::SourceStopped),
        (Role::Source, M::PageBatch),
        (Role::Source, M::RoundEnd),
        (Role::Source, M::RamDigest),
        (Role::Source, M::DeviceState),
        (Role::Destination, M::Ack),
        (Role::Source, M::DeviceState),
        (Role::Source, M::DeviceStateEnd),
        (Role::Destination, M::DestinationRunning),
        (Role::Source, M::Ack),
    ];

    /// Plays `messages` on both sides; the sender sends, the other receives.
    fn play(messages: &[(Role, MessageType)]) -> Result<Phase, WireError> {
        let mut source = Conversation::new(Role::Source);
        let mut destination = Conversation::new(Role::Destination);
        for &(from, message) in messages {
            let (sender, receiver) = match from {
                Role::Source => (&mut source, &mut destination),
                Role::Destination => (&mut destination, &mut source),
            };
            sender.sending(message)?;
            receiver.received(message)?;
        }
        assert_eq!(source.phase(), destination.phase());
        Ok(source.phase())
    }

    #[test]
    fn the_documented_sequence_ends_released() {
        assert_eq!(play(HAPPY_PATH).unwrap(), Phase::Released);
    }

    #[test]
    fn either_side_may_abort_until_the_release() {
        for cut in 0..HAPPY_PATH.len() {
            for side in [Role::Source, Role::Destination] {
                let mut messages = HAPPY_PATH[..cut].to_vec();
                messages.push((side, M::Abort));
                assert_eq!(play(&messages).unwrap(), Phase::Ended, "after {cut}");
            }
        }
        let mut after_release = HAPPY_PATH.to_vec();
        after_release.push((Role::Destination, M::Abort));
        assert!(play(&after_release).is_err());
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
    fn each_side_refuses_to_send_what_its_role_cannot() {
        let mut destination = Conversation::new(Role::Destination);
        assert!(destination.sending(M::MigrationRequest).is_err());
        let mut source = Conversation::new(Role::Source);
        source.sending(M::MigrationRequest).unwrap();
        assert!(source.sending(M::MigrationAccept).is_err());
    }
}

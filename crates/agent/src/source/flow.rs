//! State shared by the source's three threads: the migration (which queues
//! page batches), the sender (which writes frames) and the receiver (which
//! reads the destination's acknowledgements and verdict).
//!
//! A batch counts as in flight from the moment it is queued until the
//! destination acknowledges it: the queue to the sender, the socket buffers
//! and the link's queue all delay it the same way.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mllm_qemu::qmp::wall_clock_us;
use mllm_wire::{Conversation, Message, Role, WireError};

use super::rate::DeliveryRate;
use crate::error::{LinkError, LinkFailure, MigrationError};

type Result<T, E = MigrationError> = std::result::Result<T, E>;

/// How the link ended, as far as the source's threads can tell.
#[derive(Debug)]
pub(crate) enum PeerOutcome {
    /// The destination reported its VM running.
    Running,
    /// The link failed or the destination gave up.
    Failed(MigrationError),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct FlowSnapshot {
    pub unacked_bytes: u64,
    pub acked_bytes: u64,
    pub sent_bytes: u64,
    pub rate: Option<f64>,
}

struct FlowState {
    /// Every frame sent and received is checked against it; the sender and
    /// receiver threads share it, so it lives here.
    conversation: Conversation,
    /// Sizes of queued, unacknowledged batches, oldest first.
    unacked: VecDeque<u64>,
    unacked_bytes: u64,
    acked_bytes: u64,
    /// Every frame byte the sender handed to the socket.
    sent_bytes: u64,
    rate: DeliveryRate,
    /// Set once: the first outcome wins.
    ended: Option<Ended>,
    /// The failure, until the migration takes it to report it.
    failure: Option<MigrationError>,
    /// When the destination reported its VM running (wall clock, µs).
    destination_running_us: Option<u64>,
    /// The link ended with the destination's `Abort`.
    destination_aborted: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Running,
    Failed,
}

impl FlowState {
    fn snapshot(&self) -> FlowSnapshot {
        FlowSnapshot {
            unacked_bytes: self.unacked_bytes,
            acked_bytes: self.acked_bytes,
            sent_bytes: self.sent_bytes,
            rate: self.rate.bytes_per_second(),
        }
    }

    /// Ok while the link works; the first failure's cause after.
    fn check(&mut self) -> Result<()> {
        match self.ended {
            Some(Ended::Failed) => Err(self.take_failure()),
            _ => Ok(()),
        }
    }

    /// The failure, for the one caller that reports it. The migration stops
    /// at the first error it sees, so nobody asks twice; should someone,
    /// they learn that the link failed before.
    fn take_failure(&mut self) -> MigrationError {
        self.failure.take().unwrap_or_else(|| {
            MigrationError::io(
                "the agent link failed earlier",
                std::io::Error::other("its cause was reported already"),
            )
        })
    }
}

pub(crate) struct Flow {
    state: Mutex<FlowState>,
    changed: Condvar,
}

impl Flow {
    /// Flow of a conversation in which the migration was just accepted.
    pub(crate) fn new(conversation: Conversation) -> Flow {
        Flow {
            state: Mutex::new(FlowState {
                conversation,
                unacked: VecDeque::new(),
                unacked_bytes: 0,
                acked_bytes: 0,
                sent_bytes: 0,
                rate: DeliveryRate::default(),
                ended: None,
                failure: None,
                destination_running_us: None,
                destination_aborted: false,
            }),
            changed: Condvar::new(),
        }
    }

    /// Whether pages move after the switch in this migration.
    pub(crate) fn is_postcopy(&self) -> bool {
        self.lock().conversation.is_postcopy()
    }

    /// The destination reported its VM running: from now on the VM is the
    /// destination's. Returns whether pages still move (post-copy), in
    /// which case the destination's receipt ends the migration.
    pub(crate) fn destination_running(&self) -> bool {
        let mut state = self.lock();
        state.destination_running_us = Some(wall_clock_us());
        let postcopy = state.conversation.is_postcopy();
        drop(state);
        self.changed.notify_all();
        postcopy
    }

    /// When the destination reported its VM running, if it has.
    pub(crate) fn destination_running_us(&self) -> Option<u64> {
        self.lock().destination_running_us
    }

    /// Whether the link ended with the destination's `Abort`: before it
    /// reports its VM running, that means the VM will not run there.
    pub(crate) fn destination_aborted(&self) -> bool {
        self.lock().destination_aborted
    }

    /// Whether the link's outcome is known (the destination's verdict, or
    /// a failure).
    pub(crate) fn has_ended(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Checks a frame about to be sent against the conversation.
    pub(crate) fn sending(&self, message: &Message) -> Result<(), WireError> {
        self.lock().conversation.sending(message).map(drop)
    }

    /// Checks a frame the destination sent against the conversation.
    pub(crate) fn received(&self, message: &Message) -> Result<(), WireError> {
        self.lock().conversation.received(message).map(drop)
    }

    fn lock(&self) -> MutexGuard<'_, FlowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch of about `bytes` link bytes was queued for sending.
    pub(crate) fn queued(&self, bytes: u64) {
        let mut state = self.lock();
        state.unacked.push_back(bytes);
        state.unacked_bytes += bytes;
    }

    /// The sender wrote `bytes` to the socket.
    pub(crate) fn wrote(&self, bytes: u64) {
        self.lock().sent_bytes += bytes;
    }

    /// The destination acknowledged the oldest unacknowledged batch.
    pub(crate) fn acknowledged(&self, at: Instant) -> Result<()> {
        let mut state = self.lock();
        let Some(bytes) = state.unacked.pop_front() else {
            return Err(MigrationError::Invalid(
                "the destination acknowledged a page batch that was never sent".into(),
            ));
        };
        state.unacked_bytes -= bytes;
        state.acked_bytes += bytes;
        let (acked, busy) = (state.acked_bytes, !state.unacked.is_empty());
        state.rate.on_ack(at, acked, busy);
        drop(state);
        self.changed.notify_all();
        Ok(())
    }

    /// Records how the link ended; the first outcome wins, so a cut seen
    /// after an abort does not hide the abort's reason.
    pub(crate) fn end(&self, outcome: PeerOutcome) {
        let mut state = self.lock();
        if state.ended.is_none() {
            match outcome {
                PeerOutcome::Running => state.ended = Some(Ended::Running),
                PeerOutcome::Failed(error) => {
                    state.destination_aborted = matches!(
                        error,
                        MigrationError::PeerAborted {
                            peer: Role::Destination,
                            ..
                        }
                    );
                    state.ended = Some(Ended::Failed);
                    state.failure = Some(error);
                }
            }
        }
        drop(state);
        self.changed.notify_all();
    }

    pub(crate) fn snapshot(&self) -> FlowSnapshot {
        self.lock().snapshot()
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.lock().check()
    }

    /// The link's failure cause if it failed and nobody took it yet, else
    /// `fallback`: a caller whose step failed because the link did may hold
    /// the cause already, taken on its way through `check`.
    pub(crate) fn cause_or(&self, fallback: MigrationError) -> MigrationError {
        self.lock().failure.take().unwrap_or(fallback)
    }

    /// Waits until `ready` holds (returning the state that satisfied it) or
    /// `timeout` passes (returning `None`); fails when the link fails first.
    pub(crate) fn wait_until(
        &self,
        timeout: Duration,
        ready: impl Fn(&FlowSnapshot) -> bool,
    ) -> Result<Option<FlowSnapshot>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            state.check()?;
            let snapshot = state.snapshot();
            if ready(&snapshot) {
                return Ok(Some(snapshot));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the destination's verdict.
    pub(crate) fn wait_for_outcome(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            match state.ended {
                Some(Ended::Running) => return Ok(()),
                Some(Ended::Failed) => return Err(state.take_failure()),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(MigrationError::During {
                    what: format!(
                        "the destination did not report its VM running within {timeout:?} \
                         after the switch-over"
                    ),
                    source: Box::new(MigrationError::Link(LinkError {
                        peer: Role::Destination,
                        kind: LinkFailure::Silent { timeout },
                    })),
                });
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted() -> Flow {
        let mut conversation = Conversation::new(Role::Source);
        let request = mllm_wire::MigrationRequest {
            vm_name: "vm".into(),
            ram_bytes: 1 << 20,
            page_size: 4096,
            disk_bytes: vec![],
            policy: mllm_wire::MigrationPolicy::Precopy,
            migration_id: 1,
            verify: false,
        };
        conversation.sending(&request.into()).unwrap();
        conversation
            .received(&mllm_wire::MigrationAccept.into())
            .unwrap();
        Flow::new(conversation)
    }

    #[test]
    fn acknowledgements_retire_batches_in_order() {
        let flow = accepted();
        flow.queued(100);
        flow.queued(50);
        flow.acknowledged(Instant::now()).unwrap();
        let snapshot = flow.snapshot();
        assert_eq!((snapshot.unacked_bytes, snapshot.acked_bytes), (50, 100));
        flow.acknowledged(Instant::now()).unwrap();
        assert!(flow.acknowledged(Instant::now()).is_err());
    }

    #[test]
    fn the_first_failure_is_the_one_reported() {
        let flow = accepted();
        flow.end(PeerOutcome::Failed(MigrationError::PeerAborted {
            peer: Role::Destination,
            reason: "disk full".into(),
        }));
        flow.end(PeerOutcome::Failed(MigrationError::Invalid(
            "link closed".into(),
        )));
        let err = flow
            .wait_until(Duration::from_secs(1), |_| false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the destination aborted the migration: disk full"
        );
        assert!(flow.wait_for_outcome(Duration::ZERO).is_err());
    }

    #[test]
    fn waiting_ends_when_the_condition_holds() {
        let flow = accepted();
        flow.queued(10);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                flow.acknowledged(Instant::now()).unwrap();
            });
            let drained = flow
                .wait_until(Duration::from_secs(5), |s| s.unacked_bytes == 0)
                .unwrap()
                .expect("drained before the timeout");
            assert_eq!(drained.acked_bytes, 10);
            assert!(flow
                .wait_until(Duration::from_millis(10), |s| s.unacked_bytes > 0)
                .unwrap()
                .is_none());
        });
    }
}

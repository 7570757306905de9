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

use anyhow::{anyhow, bail, Result};
use mllm_wire::{Conversation, MessageType, WireError};

use super::rate::DeliveryRate;

/// How the link ended, as far as the source's threads can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PeerOutcome {
    /// The destination reported its VM running.
    Running,
    /// The link failed or the destination gave up; the text names the cause.
    Failed(String),
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
    outcome: Option<PeerOutcome>,
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
    fn check(&self) -> Result<()> {
        match &self.outcome {
            Some(PeerOutcome::Failed(cause)) => Err(anyhow!("{cause}")),
            _ => Ok(()),
        }
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
                outcome: None,
            }),
            changed: Condvar::new(),
        }
    }

    /// Checks a frame about to be sent against the conversation.
    pub(crate) fn sending(&self, message: MessageType) -> Result<(), WireError> {
        self.lock().conversation.sending(message).map(drop)
    }

    /// Checks a frame the destination sent against the conversation.
    pub(crate) fn received(&self, message: MessageType) -> Result<(), WireError> {
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
            bail!("the destination acknowledged a page batch that was never sent");
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
        self.lock().outcome.get_or_insert(outcome);
        self.changed.notify_all();
    }

    pub(crate) fn snapshot(&self) -> FlowSnapshot {
        self.lock().snapshot()
    }

    pub(crate) fn check(&self) -> Result<()> {
        self.lock().check()
    }

    /// The link's failure cause if it failed, else `fallback`.
    pub(crate) fn cause_or(&self, fallback: anyhow::Error) -> anyhow::Error {
        self.check().err().unwrap_or(fallback)
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
            match &state.outcome {
                Some(PeerOutcome::Running) => return Ok(()),
                Some(PeerOutcome::Failed(cause)) => bail!("{cause}"),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "the destination did not report its VM running within {timeout:?} \
                     after the switch-over"
                );
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
    use mllm_wire::Role;

    use super::*;

    fn accepted() -> Flow {
        let mut conversation = Conversation::new(Role::Source);
        conversation.sending(MessageType::MigrationRequest).unwrap();
        conversation.received(MessageType::MigrationAccept).unwrap();
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
        flow.end(PeerOutcome::Failed("destination aborted: disk full".into()));
        flow.end(PeerOutcome::Failed("link closed".into()));
        let err = flow
            .wait_until(Duration::from_secs(1), |_| false)
            .unwrap_err();
        assert_eq!(err.to_string(), "destination aborted: disk full");
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

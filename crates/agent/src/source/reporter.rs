//! Calls the caller's progress callback at phase changes and at most every
//! `INTERVAL` in between, so a busy round does not flood a terminal.

use std::time::{Duration, Instant};

use mllm_control::{Phase, Progress};

use super::flow::FlowSnapshot;

const INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct Reporter<'a> {
    callback: &'a dyn Fn(&Progress),
    started: Instant,
    last: Option<(Instant, Phase)>,
}

impl<'a> Reporter<'a> {
    pub fn new(callback: &'a dyn Fn(&Progress), started: Instant) -> Reporter<'a> {
        Reporter {
            callback,
            started,
            last: None,
        }
    }

    /// Reports unless the phase is unchanged and the last report is recent.
    /// `pending_bytes` is what is known to be left beyond the unacknowledged
    /// batches (pages still to send in this round, or known dirty).
    pub fn report(&mut self, phase: Phase, round: u32, flow: FlowSnapshot, pending_bytes: u64) {
        let now = Instant::now();
        if let Some((at, last_phase)) = self.last {
            if last_phase == phase && now.duration_since(at) < INTERVAL {
                return;
            }
        }
        self.last = Some((now, phase));
        let bytes_remaining = flow.unacked_bytes + pending_bytes;
        (self.callback)(&Progress {
            phase,
            round,
            bytes_sent: flow.sent_bytes,
            bytes_acknowledged: flow.acked_bytes,
            bytes_remaining,
            rate_bytes_per_s: flow.rate,
            eta_s: flow
                .rate
                .filter(|rate| *rate > 0.0)
                .map(|rate| bytes_remaining as f64 / rate),
            elapsed_s: now.duration_since(self.started).as_secs_f64(),
        });
    }
}

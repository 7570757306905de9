//! One VM's migration, replayed interval by interval.
//!
//! Time. The guest's trace runs in intervals; the link is a single stream
//! whose clock (`link_free_at`) advances by each item's transfer time. Before
//! the switch the sender works through its queue while the interval lasts;
//! the interval's writes are applied at its end, so a page sent during an
//! interval in which it is written is sent again (the tracker cannot order a
//! write and a send inside one interval). When a queue runs dry mid-interval
//! and the policy stops the guest, the writes of that interval are split by a
//! seeded hash in proportion to the elapsed share: those before the stop dirty
//! the source, the others happen on the destination.
//!
//! Revisions. After each interval of a pass the strategy is asked which
//! pages the rest of the pass should leave out, as the live agent asks it
//! while a pass is sent; those stay pending for the next pass.
//!
//! Tracker. A pass is planned from a scan of the dirty-page tracker, which
//! reports every page written since the previous scan, also those the last
//! pass sent after the write: a bitmap cannot order a write and a read that
//! both fell between two scans. Those pages are pending again at the next
//! scan (before each pass and at the stop) and are sent again, as QEMU and
//! mllm's agent send them. The disk mirror has no such scans: a block's dirty
//! bit is cleared as it is copied, so only writes after its copy send it again.
//!
//! Link cost. A page costs its layout's data bytes, or only a marker while it
//! still holds the zeros it held at the start; a written page holds data.
//!
//! Switch. With the guest paused, the policy's downtime items and the device
//! state are sent; the guest resumes half a round trip after the last of them
//! leaves. Downtime is that span.
//!
//! After the switch, an item the guest touches (a page written, a block read
//! or written) that the destination lacks is a fault: it jumps the queue and
//! costs the guest a fetch (round trip, transfer, service time); the rest of
//! the link time pushes the queue. The source is released one round trip after
//! the last item leaves (arrival plus confirmation).

use std::fmt;
use std::sync::Arc;

use mllm_core::link::Link;
use mllm_core::strategy::{
    left_out, GuestInterval, Pass, SendQueue, Space, Strategy, Switch, TransferState,
};
use mllm_core::synth::mix;
use mllm_core::vm::VmLayout;
use mllm_core::PageSet;

use crate::result::SimResult;
use crate::source::IntervalSource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    OnSource,
    OnDestination,
    Done,
}

pub struct Migration {
    method: String,
    source: Arc<dyn IntervalSource>,
    strategy: Box<dyn Strategy>,
    state: TransferState,
    /// Pages written since the tracker's last scan.
    written_since_scan: PageSet,
    sent_pages: PageSet,
    sent_blocks: Option<PageSet>,
    queue: SendQueue,
    /// Pages the rest of the current pass leaves out, as the strategy last
    /// revised it.
    held_back: Option<PageSet>,
    phase: Phase,
    next_interval: u64,
    max_duration_s: f64,
    /// Wall-clock seconds since the migration started.
    now: f64,
    link_free_at: f64,
    result: SimResult,
}

impl fmt::Debug for Migration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Migration")
            .field("method", &self.method)
            .field("phase", &self.phase)
            .field("next_interval", &self.next_interval)
            .field("now", &self.now)
            .field("link_free_at", &self.link_free_at)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// A migration starting at interval `start_interval` of `source`; a
    /// strategy that learns is shown the intervals before it first.
    pub fn new(
        method: String,
        layout: Arc<VmLayout>,
        source: Arc<dyn IntervalSource>,
        mut strategy: Box<dyn Strategy>,
        link: Link,
        start_interval: u64,
        max_duration_s: f64,
    ) -> Migration {
        if strategy.learns() {
            for index in 0..start_interval {
                strategy.observe(&source.interval(index));
            }
        }
        let disk_valid = layout.disk.as_ref().map(|disk| {
            let copied = if strategy.copies_unused_blocks() {
                &disk.allocated
            } else {
                &disk.used
            };
            copied.complement()
        });
        let sent_blocks = layout.disk.as_ref().map(|disk| PageSet::new(disk.blocks()));
        let state = TransferState {
            memory_valid: PageSet::new(layout.memory_pages),
            disk_valid,
            zero_pages: layout.zero_pages.clone(),
            layout: layout.clone(),
            link,
            in_flight_bytes: 0,
            elapsed_s: 0.0,
            memory_bytes_sent: 0,
        };
        Migration {
            result: SimResult::new(method.clone()),
            method,
            source,
            strategy,
            state,
            written_since_scan: PageSet::new(layout.memory_pages),
            sent_pages: PageSet::new(layout.memory_pages),
            sent_blocks,
            queue: SendQueue::new(),
            held_back: None,
            phase: Phase::OnSource,
            next_interval: start_interval,
            max_duration_s,
            now: 0.0,
            link_free_at: 0.0,
        }
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Replays one interval of the guest with the link at `bandwidth` bytes/s;
    /// returns whether the migration is over.
    pub fn advance(&mut self, bandwidth_bytes_per_s: f64) -> bool {
        if self.phase == Phase::Done {
            return true;
        }
        self.state.link.bandwidth_bytes_per_s = bandwidth_bytes_per_s;
        let index = self.next_interval;
        self.next_interval += 1;
        let interval = self.source.interval(index);
        match self.phase {
            Phase::OnSource => self.on_source(index, interval),
            Phase::OnDestination => {
                let duration = interval.duration_s;
                self.on_destination(&interval, duration);
            }
            Phase::Done => {}
        }
        if self.phase != Phase::Done && self.now > self.max_duration_s {
            self.phase = Phase::Done;
            self.result.completed = false;
        }
        self.phase == Phase::Done
    }

    /// Runs to the end with a constant bandwidth.
    pub fn run(mut self) -> SimResult {
        let bandwidth = self.state.link.bandwidth_bytes_per_s;
        while !self.advance(bandwidth) {}
        self.into_result()
    }

    pub fn into_result(mut self) -> SimResult {
        self.result.rounds = self.strategy.rounds();
        self.result.forecast = self.strategy.forecast();
        self.result
    }

    fn on_source(&mut self, index: u64, interval: GuestInterval) {
        let start = self.now;
        let end = start + interval.duration_s;
        while !self.send_until(end) {
            self.scan();
            self.state.elapsed_s = self.link_free_at.max(start);
            self.held_back = None;
            match self.strategy.next_pass(&self.state) {
                Pass::Send(pass) => {
                    self.queue = pass;
                    continue;
                }
                Pass::Switch(_) => {}
                Pass::Abort(_) => {
                    self.phase = Phase::Done;
                    self.result.completed = false;
                    return;
                }
            }
            let stop = self.link_free_at.max(start);
            let elapsed = ((stop - start) / interval.duration_s).clamp(0.0, 1.0);
            let (before, after) = split_at(&interval, index, elapsed);
            self.dirty(&before);
            self.switch(stop);
            if self.phase == Phase::OnDestination {
                self.on_destination(&after, (1.0 - elapsed) * interval.duration_s);
            }
            return;
        }
        self.dirty(&interval);
        self.strategy.observe(&interval);
        self.now = end;
        self.state.elapsed_s = end;
        if let Some(held) = self.strategy.held_back(&self.state) {
            self.held_back = Some(held);
        }
    }

    fn switch(&mut self, stop: f64) {
        // The last scan, with the guest stopped: what it wrote since the one
        // before is sent while it is paused.
        self.scan();
        self.result.precopy_ms = stop * 1e3;
        let Switch {
            mut downtime,
            postcopy,
        } = self.strategy.switch(&self.state);
        self.link_free_at = stop;
        self.held_back = None;
        while let Some((space, item)) = downtime.next(|space, item| !self.is_valid(space, item)) {
            self.send(space, item);
        }
        let device_state = self.state.layout.device_state_bytes;
        self.link_free_at += self.state.link.transfer_s(device_state);
        self.result.link_bytes += device_state;
        let resume = self.link_free_at + self.state.link.rtt_s / 2.0;
        self.result.downtime_ms = (resume - stop) * 1e3;
        self.now = resume;
        self.queue = postcopy;
        self.phase = Phase::OnDestination;
        self.finish_if_complete();
    }

    fn on_destination(&mut self, interval: &GuestInterval, duration_s: f64) {
        let end = self.now + duration_s;
        // The push went on until now; faults are served from here.
        if self.push_until(self.now) {
            return;
        }
        let touched = [
            (Space::Memory, &interval.memory_writes),
            (Space::Disk, &interval.disk_reads),
            (Space::Disk, &interval.disk_writes),
        ];
        for (space, items) in touched {
            for &item in items {
                if !self.is_valid(space, item) {
                    self.fault(space, item);
                }
            }
        }
        if !self.push_until(end) {
            self.now = end;
        }
    }

    /// Pushes until the link is busy past `end`; true when nothing is left.
    fn push_until(&mut self, end: f64) -> bool {
        while !self.send_until(end) {
            if self.finish_if_complete() {
                return true;
            }
            // Whatever the policy's order left out (pages dirtied after it
            // planned) is swept up in address order.
            self.queue = self.state.pending_in_address_order();
        }
        false
    }

    /// Sends queued items until the link is busy past `end` (true) or the
    /// queue runs dry (false).
    fn send_until(&mut self, end: f64) -> bool {
        while self.link_free_at < end {
            let state = &self.state;
            let held = self.held_back.as_ref();
            let Some((space, item)) = self
                .queue
                .next(|space, item| !is_valid(state, space, item) && !left_out(held, space, item))
            else {
                return false;
            };
            self.send(space, item);
        }
        true
    }

    fn send(&mut self, space: Space, item: u32) {
        let bytes = self.item_bytes(space, item);
        self.link_free_at += bytes as f64 / self.state.link.bandwidth_bytes_per_s;
        self.result.link_bytes += bytes;
        let (valid, sent, retransmitted) = match space {
            Space::Memory => {
                self.result.memory_bytes += bytes;
                self.state.memory_bytes_sent += bytes;
                let counter = &mut self.result.retransmitted_pages;
                (&mut self.state.memory_valid, &mut self.sent_pages, counter)
            }
            Space::Disk => {
                self.result.disk_bytes += bytes;
                let disk = "a block was sent for a VM without disk";
                let counter = &mut self.result.retransmitted_blocks;
                (
                    self.state.disk_valid.as_mut().expect(disk),
                    self.sent_blocks.as_mut().expect(disk),
                    counter,
                )
            }
        };
        valid.insert(item);
        if !sent.insert_new(item) {
            *retransmitted += 1;
        }
    }

    fn fault(&mut self, space: Space, item: u32) {
        // The request jumps the queue: the link serves it as soon as the item
        // in flight is out.
        self.link_free_at = self.link_free_at.max(self.now);
        self.send(space, item);
        self.result.postcopy_faults += 1;
        self.result.fault_wait_ms += self.state.link.fetch_s(self.item_bytes(space, item)) * 1e3;
    }

    /// Writes on the source invalidate the destination's copy, and give the
    /// page data and a mark in the tracker.
    fn dirty(&mut self, interval: &GuestInterval) {
        let pages = &interval.memory_writes;
        self.state.memory_valid.remove_all(pages);
        self.state.zero_pages.remove_all(pages);
        self.written_since_scan.insert_all(pages);
        if let Some(valid) = &mut self.state.disk_valid {
            valid.remove_all(&interval.disk_writes);
        }
    }

    /// A scan of the tracker: every page written since the previous one is
    /// pending, even if a pass sent it after the write.
    fn scan(&mut self) {
        let universe = self.written_since_scan.universe();
        let written = std::mem::replace(&mut self.written_since_scan, PageSet::new(universe));
        self.state.memory_valid.subtract(&written);
    }

    fn finish_if_complete(&mut self) -> bool {
        let complete = self.state.memory_valid.complement().is_empty()
            && self
                .state
                .disk_valid
                .as_ref()
                .is_none_or(|valid| valid.complement().is_empty());
        if complete {
            self.phase = Phase::Done;
            self.result.completed = true;
            self.result.total_time_ms = (self.link_free_at + self.state.link.rtt_s) * 1e3;
        }
        complete
    }

    fn is_valid(&self, space: Space, item: u32) -> bool {
        is_valid(&self.state, space, item)
    }

    fn item_bytes(&self, space: Space, item: u32) -> u64 {
        match space {
            Space::Memory => self.state.page_bytes(item),
            Space::Disk => self
                .state
                .layout
                .disk
                .as_ref()
                .map_or(0, |d| u64::from(d.block_size)),
        }
    }
}

fn is_valid(state: &TransferState, space: Space, item: u32) -> bool {
    match space {
        Space::Memory => state.memory_valid.contains(item),
        Space::Disk => state
            .disk_valid
            .as_ref()
            .is_none_or(|valid| valid.contains(item)),
    }
}

/// The interval's accesses before and after a stop at `elapsed` (a share of
/// the interval), split per item by a hash of the item and the interval.
fn split_at(interval: &GuestInterval, index: u64, elapsed: f64) -> (GuestInterval, GuestInterval) {
    let before = |salt: u64, item: u32| {
        let draw = (mix(u64::from(item) ^ salt, index) >> 11) as f64 / (1u64 << 53) as f64;
        draw < elapsed
    };
    let split = |items: &[u32], salt: u64| -> (Vec<u32>, Vec<u32>) {
        items.iter().partition(|&&item| before(salt, item))
    };
    let (memory_before, memory_after) = split(&interval.memory_writes, 0);
    let (reads_before, reads_after) = split(&interval.disk_reads, 1 << 40);
    let (writes_before, writes_after) = split(&interval.disk_writes, 2 << 40);
    (
        GuestInterval {
            duration_s: elapsed * interval.duration_s,
            memory_writes: memory_before,
            disk_reads: reads_before,
            disk_writes: writes_before,
        },
        GuestInterval {
            duration_s: (1.0 - elapsed) * interval.duration_s,
            memory_writes: memory_after,
            disk_reads: reads_after,
            disk_writes: writes_after,
        },
    )
}

#[cfg(test)]
mod tests;

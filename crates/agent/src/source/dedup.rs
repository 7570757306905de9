//! De-duplication at the source: decides which page or block travels as a
//! reference to content the destination already holds, keeps the content
//! index in the order items go on the wire, and queues the content of the
//! references the destination refused for the sender thread.
//!
//! Shared by three threads: the migration (through the pipeline) hashes
//! and records each item it batches; the receiver records the destination's
//! `ResendContent`; the sender sends those contents and forgets their
//! locations. References are made only while the guest runs (pre-copy):
//! before it stops the VM the migration waits until every batch is
//! acknowledged, so every refusal is known and answered before
//! `SourceStopped` (see `mllm_wire::conversation`, "References").

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mllm_control::DedupReport;
use mllm_core::dedup::{ContentHash, ContentIndex, Location};
use mllm_wire::{ContentRef, PAGE_SIZE};

/// Bytes a reference takes in a batch at most (entry index, kind, location,
/// hash, in postcard's varints), counted against what it saves.
const REFERENCE_BYTES: u64 = 31;

#[derive(Debug)]
pub(crate) struct Dedup {
    state: Mutex<DedupState>,
    misdirect_every: Option<NonZeroU32>,
}

#[derive(Debug)]
struct DedupState {
    index: ContentIndex,
    /// Cleared when the VM stops: no reference after that.
    referencing: bool,
    /// Refused references' targets, oldest first, until the sender sends them.
    resend: VecDeque<Location>,
    /// The newest entry: the test hook's wrong location for a reference.
    newest: Option<(Location, ContentHash)>,
    hashed: u64,
    hashing: Duration,
    references: u64,
    references_to_memory: u64,
    cross_space: u64,
    fallbacks: u64,
}

impl Dedup {
    /// An index of `entries` entries; `misdirect_every`: the test hook of
    /// `DedupSettings`.
    pub fn new(entries: usize, misdirect_every: Option<NonZeroU32>) -> Dedup {
        Dedup {
            state: Mutex::new(DedupState {
                index: ContentIndex::new(entries),
                referencing: true,
                resend: VecDeque::new(),
                newest: None,
                hashed: 0,
                hashing: Duration::ZERO,
                references: 0,
                references_to_memory: 0,
                cross_space: 0,
                fallbacks: 0,
            }),
            misdirect_every,
        }
    }

    fn lock(&self) -> MutexGuard<'_, DedupState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `content` (not all zeros) goes to `target` next on the wire: the
    /// reference to send instead, if the destination holds it. Either way
    /// `target` holds it afterwards.
    pub fn reference(&self, target: Location, content: &[u8; PAGE_SIZE]) -> Option<ContentRef> {
        let mut state = self.lock();
        if !state.referencing {
            return None;
        }
        let started = Instant::now();
        let hash = ContentHash::of(content);
        let held = state.index.find(&hash);
        state.index.record(target, hash);
        let newest = state.newest.replace((target, hash));
        state.hashing += started.elapsed();
        state.hashed += 1;
        let mut from = held?;
        state.references += 1;
        if let Some(every) = self.misdirect_every {
            if state.references.is_multiple_of(u64::from(every.get())) {
                // What the destination holds there is other content, as
                // far as the source knows: the destination must refuse.
                if let Some((elsewhere, other)) = newest.filter(|&(_, other)| other != hash) {
                    tracing::debug!(%target, %elsewhere, ?other, "test hook: misdirected reference");
                    from = elsewhere;
                }
            }
        }
        match from {
            Location::Page(_) => state.references_to_memory += 1,
            Location::Block { .. } => {}
        }
        if std::mem::discriminant(&from) != std::mem::discriminant(&target) {
            state.cross_space += 1;
        }
        Some(ContentRef { from, hash })
    }

    /// Disk `disk` at the destination held `blocks` (block, content hash)
    /// before the migration: the oldest entries, so the index evicts them
    /// first.
    pub fn destination_holds(&self, disk: u16, blocks: &[(u32, ContentHash)]) {
        let mut state = self.lock();
        for &(block, hash) in blocks {
            state.index.record(Location::Block { disk, block }, hash);
        }
    }

    /// `target` gets content the index does not keep (a zero page).
    pub fn overwritten(&self, target: Location) {
        self.lock().index.forget(target);
    }

    /// The VM is about to stop: no more references. Returns whether any
    /// was sent.
    pub fn stop_referencing(&self) -> bool {
        let mut state = self.lock();
        state.referencing = false;
        state.references > 0
    }

    /// The destination refused references to fill `targets`.
    pub fn refused(&self, targets: &[Location]) {
        let mut state = self.lock();
        state.fallbacks += targets.len() as u64;
        state.resend.extend(targets);
    }

    /// Up to `max` refused targets, oldest first, for the sender to send
    /// now; until it does, the destination holds something else there.
    pub fn take_refused(&self, max: usize) -> Vec<Location> {
        let mut state = self.lock();
        let count = state.resend.len().min(max);
        let targets: Vec<Location> = state.resend.drain(..count).collect();
        for &target in &targets {
            state.index.forget(target);
        }
        targets
    }

    pub fn report(&self) -> DedupReport {
        let state = self.lock();
        let hashed_gib = (state.hashed * PAGE_SIZE as u64) as f64 / f64::from(1u32 << 30);
        DedupReport {
            entries: state.index.capacity() as u64,
            hashed: state.hashed,
            references: state.references,
            references_to_memory: state.references_to_memory,
            cross_space: state.cross_space,
            bytes_saved: state
                .references
                .saturating_sub(state.fallbacks)
                .saturating_mul(PAGE_SIZE as u64 - REFERENCE_BYTES),
            fallbacks: state.fallbacks,
            cpu_seconds_per_gib: if hashed_gib > 0.0 {
                state.hashing.as_secs_f64() / hashed_gib
            } else {
                0.0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u8) -> Box<[u8; PAGE_SIZE]> {
        Box::new([seed; PAGE_SIZE])
    }

    #[test]
    fn repeated_content_becomes_a_reference_to_where_it_went() {
        let dedup = Dedup::new(16, None);
        assert_eq!(dedup.reference(Location::Page(1), &page(1)), None);
        let disk_block = Location::Block { disk: 0, block: 9 };
        let reference = dedup.reference(disk_block, &page(1)).unwrap();
        assert_eq!(reference.from, Location::Page(1));
        // The same content sent to page 1 again: page 1 now, the newest.
        let again = dedup.reference(Location::Page(1), &page(1)).unwrap();
        assert_eq!(again.from, disk_block);
        let report = dedup.report();
        assert_eq!((report.references, report.cross_space), (2, 2));
    }

    #[test]
    fn no_reference_to_a_location_overwritten_since_or_after_the_stop() {
        let dedup = Dedup::new(16, None);
        let _ = dedup.reference(Location::Page(1), &page(1));
        dedup.overwritten(Location::Page(1));
        assert_eq!(dedup.reference(Location::Page(2), &page(1)), None);
        assert!(!dedup.stop_referencing(), "no reference was made");
        assert_eq!(dedup.reference(Location::Page(3), &page(1)), None);
    }

    #[test]
    fn refused_targets_are_handed_out_once_and_forgotten() {
        let dedup = Dedup::new(16, None);
        let _ = dedup.reference(Location::Page(1), &page(1));
        let _ = dedup.reference(Location::Page(2), &page(1));
        dedup.refused(&[Location::Page(2)]);
        assert_eq!(dedup.take_refused(8), [Location::Page(2)]);
        assert!(dedup.take_refused(8).is_empty());
        // Page 2 may hold anything until its content arrives: not named.
        dedup.overwritten(Location::Page(1));
        assert_eq!(dedup.reference(Location::Page(3), &page(1)), None);
        assert_eq!(dedup.report().fallbacks, 1);
    }

    #[test]
    fn the_test_hook_names_a_location_holding_other_content() {
        let dedup = Dedup::new(16, NonZeroU32::new(1));
        let _ = dedup.reference(Location::Page(1), &page(1));
        let _ = dedup.reference(Location::Page(2), &page(2));
        let reference = dedup.reference(Location::Page(3), &page(1)).unwrap();
        assert_eq!(reference.from, Location::Page(2));
        assert_eq!(reference.hash, ContentHash::of(&page(1)[..]));
    }
}

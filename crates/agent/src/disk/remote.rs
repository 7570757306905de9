//! Post-copy at the destination's disk: blocks that are still on the source.
//!
//! The source names the pending blocks at the switch. From then on a guest
//! request that reads (or partly overwrites) a pending block waits in the
//! NBD worker until the block is here; the first such request asks the
//! source for it, ahead of the background push. A request that overwrites a
//! whole pending block needs nothing from the source: the block counts as
//! here, and the source's copy, when it comes, is dropped. Unlike memory,
//! no kernel mechanism is involved: every guest access passes through the
//! agent's NBD server anyway.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use mllm_control::DiskPostcopyReport;
use mllm_core::memory::PageRange;
use mllm_core::PageSet;

use crate::error::MigrationError;
use crate::latency::percentile_ms;

/// Asks the source for blocks: the destination's outbox, wrapped.
pub type AskForBlocks = Arc<dyn Fn(Vec<u32>) -> Result<(), MigrationError> + Send + Sync>;

/// The pending blocks of one disk and the requests waiting for them.
pub(super) struct RemoteBlocks {
    state: Mutex<RemoteState>,
    arrived: Condvar,
}

struct RemoteState {
    missing: PageSet,
    missing_count: u64,
    ask: Option<AskForBlocks>,
    /// When each asked-for block was first needed.
    asked_at: HashMap<u32, Instant>,
    latencies: Vec<Duration>,
    installed: u64,
    /// Pending blocks the guest overwrote whole before they came.
    overwritten: u64,
    /// Test mode: the source's digest of each pending block at the switch.
    expected: HashMap<u32, u64>,
    mismatched: Vec<u32>,
    /// The migration failed: waiting requests fail with this.
    abandoned: Option<String>,
}

impl fmt::Debug for RemoteBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBlocks")
            .field("missing", &self.lock().missing_count)
            .finish_non_exhaustive()
    }
}

impl RemoteBlocks {
    pub fn new(blocks: u32) -> RemoteBlocks {
        RemoteBlocks {
            state: Mutex::new(RemoteState {
                missing: PageSet::new(blocks),
                missing_count: 0,
                ask: None,
                asked_at: HashMap::new(),
                latencies: Vec::new(),
                installed: 0,
                overwritten: 0,
                expected: HashMap::new(),
                mismatched: Vec::new(),
                abandoned: None,
            }),
            arrived: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RemoteState> {
        // Sets and counters, whole after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on `pending` is missing here; `ask` fetches blocks.
    pub fn arm(&self, pending: &[PageRange], ask: AskForBlocks) -> Result<(), MigrationError> {
        let mut state = self.lock();
        let blocks = state.missing.universe();
        for range in pending {
            for block in range.pages() {
                if block >= blocks {
                    return Err(MigrationError::Invalid(format!(
                        "the source left block {block} for post-copy, beyond the {blocks} \
                         blocks of the disk"
                    )));
                }
                if state.missing.insert_new(block) {
                    state.missing_count += 1;
                }
            }
        }
        state.ask = Some(ask);
        state.abandoned = None;
        Ok(())
    }

    pub fn missing_count(&self) -> u64 {
        self.lock().missing_count
    }

    /// The blocks still on the source, as of now.
    pub fn missing(&self) -> PageSet {
        self.lock().missing.clone()
    }

    /// Blocks a guest request waits for: asked for again first on a
    /// resumed link, since the requests may have been lost with the old one.
    pub fn awaited(&self) -> Vec<u32> {
        let state = self.lock();
        let mut blocks: Vec<u32> = state
            .asked_at
            .keys()
            .copied()
            .filter(|&block| state.missing.contains(block))
            .collect();
        blocks.sort_unstable();
        blocks
    }

    /// Before a guest request on `blocks`: returns once none of them is
    /// missing. `whole` are the blocks the request overwrites entirely:
    /// those become present at once, since nothing of the source's copy
    /// survives the request.
    pub fn wait_for(&self, blocks: Range<u32>, whole: Range<u32>) -> io::Result<()> {
        let mut state = self.lock();
        if state.missing_count == 0 {
            return Ok(());
        }
        let mut wanted = Vec::new();
        let now = Instant::now();
        for block in blocks.clone() {
            if !state.missing.contains(block) {
                continue;
            }
            if whole.contains(&block) {
                state.missing.remove(block);
                state.missing_count -= 1;
                state.overwritten += 1;
                state.asked_at.remove(&block);
            } else if let Entry::Vacant(first_need) = state.asked_at.entry(block) {
                first_need.insert(now);
                wanted.push(block);
            }
        }
        if !wanted.is_empty() {
            // Asked without the lock: the request may wait for room on the
            // link while the receiving thread installs blocks.
            let ask = state.ask.clone();
            drop(state);
            let asked = match ask {
                Some(ask) => ask(wanted),
                None => Err(MigrationError::Invalid(
                    "a pending block is needed, but nobody can fetch it".into(),
                )),
            };
            state = self.lock();
            if let Err(error) = asked {
                return Err(io::Error::other(format!(
                    "asking the source for disk blocks failed: {}",
                    error.chain()
                )));
            }
        }
        while blocks.clone().any(|block| state.missing.contains(block)) {
            if let Some(reason) = &state.abandoned {
                return Err(io::Error::other(format!(
                    "disk blocks still on the source cannot arrive: {reason}"
                )));
            }
            state = self
                .arrived
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if state.missing_count == 0 {
            self.arrived.notify_all();
        }
        Ok(())
    }

    /// Installs `block` with `write` if it is still missing; returns whether
    /// it did (a block asked for and pushed arrives twice, and a block the
    /// guest overwrote must keep the guest's data). The lock is held while
    /// `write` runs, so no guest request sees the block half there.
    pub fn install(
        &self,
        block: u32,
        digest: impl FnOnce() -> u64,
        write: impl FnOnce() -> Result<(), MigrationError>,
    ) -> Result<bool, MigrationError> {
        let mut state = self.lock();
        if block >= state.missing.universe() || !state.missing.contains(block) {
            return Ok(false);
        }
        write()?;
        state.missing.remove(block);
        state.missing_count -= 1;
        state.installed += 1;
        if let Some(asked) = state.asked_at.remove(&block) {
            state.latencies.push(asked.elapsed());
        }
        if let Some(expected) = state.expected.remove(&block) {
            if digest() != expected {
                state.mismatched.push(block);
            }
        }
        drop(state);
        self.arrived.notify_all();
        Ok(true)
    }

    /// Test mode: the source's digests of pending blocks, checked as they
    /// are installed.
    pub fn expect(&self, digests: &[(u32, u64)]) -> Result<(), MigrationError> {
        let mut state = self.lock();
        for &(block, digest) in digests {
            if block >= state.missing.universe() || !state.missing.contains(block) {
                return Err(MigrationError::Invalid(format!(
                    "the source sent the digest of block {block}, which is not pending"
                )));
            }
            state.expected.insert(block, digest);
        }
        Ok(())
    }

    /// Lets waiting requests fail: no block will come any more.
    pub fn abandon(&self, reason: &str) {
        let mut state = self.lock();
        state.ask = None;
        if state.missing_count > 0 {
            state.abandoned = Some(reason.to_owned());
        }
        drop(state);
        self.arrived.notify_all();
    }

    /// Every pending block is here: what the phase did. Test mode fails on a
    /// block whose installed content was not the source's.
    pub fn finish(&self, verify: bool) -> Result<DiskPostcopyReport, MigrationError> {
        let mut state = self.lock();
        state.ask = None;
        if verify && !state.mismatched.is_empty() {
            state.mismatched.sort_unstable();
            return Err(MigrationError::MemoryMismatch(format!(
                "BLOCK DIGEST MISMATCH after post-copy: {} blocks differ from the source's at \
                 the switch (first: {:?})",
                state.mismatched.len(),
                &state.mismatched[..state.mismatched.len().min(8)]
            )));
        }
        let mut latencies = std::mem::take(&mut state.latencies);
        latencies.sort_unstable();
        Ok(DiskPostcopyReport {
            blocks_installed: state.installed,
            blocks_overwritten: state.overwritten,
            fetches: latencies.len() as u64,
            fetch_p50_ms: percentile_ms(&latencies, 0.5),
            fetch_p99_ms: percentile_ms(&latencies, 0.99),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_read_waits_for_its_blocks_and_asks_once() {
        let remote = Arc::new(RemoteBlocks::new(64));
        let asks = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&asks);
        remote
            .arm(
                &[PageRange::new(4, 8)],
                Arc::new(move |blocks| {
                    assert_eq!(blocks, [5, 6]);
                    counted.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                }),
            )
            .unwrap();
        let reader = {
            let remote = Arc::clone(&remote);
            std::thread::spawn(move || remote.wait_for(5..7, 0..0))
        };
        while asks.load(Ordering::Relaxed) == 0 {
            std::thread::yield_now();
        }
        assert!(remote.install(5, || 0, || Ok(())).unwrap());
        std::thread::sleep(Duration::from_millis(20));
        assert!(!reader.is_finished(), "block 6 is still missing");
        assert!(remote.install(6, || 0, || Ok(())).unwrap());
        reader.join().unwrap().unwrap();
        assert!(
            !remote.install(6, || 0, || Ok(())).unwrap(),
            "installed twice"
        );
        assert_eq!(asks.load(Ordering::Relaxed), 1);
        assert_eq!(remote.missing_count(), 2);
    }

    #[test]
    fn a_whole_overwrite_needs_nothing_from_the_source_and_wins_over_its_copy() {
        let remote = RemoteBlocks::new(16);
        remote
            .arm(
                &[PageRange::new(0, 4)],
                Arc::new(|blocks| panic!("asked for {blocks:?}")),
            )
            .unwrap();
        remote.wait_for(1..3, 1..3).unwrap();
        assert!(!remote
            .install(1, || 0, || panic!("overwrote the guest's data"))
            .unwrap());
        assert_eq!(remote.missing_count(), 2);
        let report = remote.finish(true).unwrap();
        assert_eq!(report.blocks_overwritten, 2);
    }

    #[test]
    fn an_abandoned_migration_fails_waiting_requests() {
        let remote = Arc::new(RemoteBlocks::new(16));
        remote
            .arm(&[PageRange::new(0, 1)], Arc::new(|_| Ok(())))
            .unwrap();
        let reader = {
            let remote = Arc::clone(&remote);
            std::thread::spawn(move || remote.wait_for(0..1, 0..0))
        };
        std::thread::sleep(Duration::from_millis(20));
        remote.abandon("the link was cut");
        let error = reader.join().unwrap().unwrap_err();
        assert!(error.to_string().contains("the link was cut"), "{error}");
    }

    #[test]
    fn test_mode_names_a_block_whose_content_differs() {
        let remote = RemoteBlocks::new(16);
        remote
            .arm(&[PageRange::new(2, 4)], Arc::new(|_| Ok(())))
            .unwrap();
        remote.expect(&[(2, 7), (3, 8)]).unwrap();
        remote.install(2, || 7, || Ok(())).unwrap();
        remote.install(3, || 9, || Ok(())).unwrap();
        let error = remote.finish(true).unwrap_err().to_string();
        assert!(
            error.contains("BLOCK DIGEST MISMATCH") && error.contains("[3]"),
            "{error}"
        );
    }
}

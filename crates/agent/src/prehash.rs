//! Test mode at a destination: while pages and blocks arrive, a thread
//! hashes the ranges of RAM and disk that have stopped changing, so the
//! digests the paused VM waits for at the switch rehash only what was
//! written since (each range's digest stays valid until a write marks it:
//! `mllm_wire::DigestCache`). Before its VM runs, only the agent writes a
//! destination's RAM and disks, and it marks every write.
//!
//! Not at a source: there the marks would have to come from the guest's
//! write tracking, the very thing the digests check (a write the tracking
//! missed would leave both the page unsent and its digest stale, and the
//! check would pass). The source hashes everything while the final round
//! crosses the link instead (`source/switchover.rs`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::disk::TrackedDisk;
use crate::guest_ram::GuestRam;

/// How long a range must go unwritten before it is hashed: a range still
/// being filled would be hashed again and again.
const QUIET_PERIOD: Duration = Duration::from_millis(500);
/// The hashing thread's nice value: the guest and the migration's own
/// threads come first.
const NICE: libc::c_int = 10;

/// The hashing thread; stopped (and joined) by [`Prehasher::stop`] or when
/// dropped.
pub(crate) struct Prehasher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prehasher {
    /// Starts hashing `ram` (a reader sharing the writer's kept digests,
    /// `GuestRam::reader`) and `disks`.
    pub fn start(ram: Option<GuestRam>, disks: Vec<Arc<TrackedDisk>>) -> Prehasher {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("digest-prehash".into())
            .spawn(move || run(ram.as_ref(), &disks, &stopping))
            .map_err(
                |error| tracing::warn!(%error, "test mode: no thread to hash ahead of the switch"),
            )
            .ok();
        Prehasher { stop, thread }
    }

    /// Stops hashing; returns once the thread has left the range it was
    /// hashing (a range is a MiB).
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::warn!("test mode: the thread hashing ahead of the switch panicked");
            }
        }
    }
}

impl Drop for Prehasher {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(ram: Option<&GuestRam>, disks: &[Arc<TrackedDisk>], stop: &AtomicBool) {
    // SAFETY: setpriority on this thread's own id; no memory is passed.
    // Failing leaves the thread at the default priority, which is harmless.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::gettid().cast_unsigned(), NICE);
    }
    let mut quiet_ram = Vec::new();
    let mut quiet_disks = vec![Vec::new(); disks.len()];
    let (mut ranges, mut passes) = (0, 0u64);
    while !stop.load(Ordering::Relaxed) {
        if let Some(ram) = ram {
            ranges += ram.hash_quiet(&mut quiet_ram, stop);
        }
        for (disk, quiet) in disks.iter().zip(&mut quiet_disks) {
            match disk.hash_quiet(quiet, stop) {
                Ok(hashed) => ranges += hashed,
                Err(error) => {
                    // The digest at the switch hashes whatever is left.
                    tracing::warn!(error = %error.chain(), "test mode: hashing a disk ahead of the switch failed");
                    return;
                }
            }
        }
        passes += 1;
        std::thread::park_timeout(QUIET_PERIOD);
    }
    tracing::debug!(
        ranges,
        passes,
        "test mode: ranges hashed ahead of the switch"
    );
}

//! Post-copy at the destination: the pages that arrive after the switch.
//!
//! When the source names the pending pages, the destination registers guest
//! RAM for missing-page faults (through the hook inside its QEMU) and then
//! drops its stale copies of those pages from the RAM file, in that order so
//! no access in between can read a hole as zeros. From then on anyone in the
//! destination QEMU who touches a pending page (the guest, or QEMU itself
//! while it loads the device state) sleeps until the page is installed; a
//! fault thread asks the source for it. Pages are installed atomically with
//! `UFFDIO_COPY`, which wakes the sleepers; pages present before the switch
//! never fault.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mllm_control::DestinationPostcopyReport;
use mllm_core::memory::{PageIndex, PageRange, PAGE_SIZE};
use mllm_core::PageSet;
use mllm_faults::{arm_missing, punch_holes, Installed, MissingPages};
use mllm_qemu::QemuProcess;
use mllm_tracker::find_ram_mapping;
use mllm_wire::{page_digest, Message, PageDigests, PageRequest, RamDigest};

use crate::error::MigrationError;
use crate::guest_ram::GuestRam;
use crate::latency::percentile_ms;

/// How long the fault thread waits for a fault before it looks whether it
/// should stop.
const FAULT_POLL: Duration = Duration::from_millis(20);
/// Faults gathered into one request when several are pending at once.
const PAGES_PER_REQUEST: usize = 64;

#[derive(Debug)]
pub(super) struct Postcopy {
    faults: MissingPages,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Pending pages not installed yet.
    missing: PageSet,
    missing_count: u64,
    /// When each asked-for page was first faulted on.
    asked_at: HashMap<PageIndex, Instant>,
    fault_latencies: Vec<Duration>,
    installed: u64,
    /// Pages the kernel already had when they were installed: someone
    /// populated them behind the fault mechanism.
    already_present: u64,
    /// Test mode: the source's digest of each pending page at the switch.
    expected: HashMap<PageIndex, u64>,
    mismatched: Vec<PageIndex>,
    /// The VM runs here: the receipt may go once the last page is in.
    vm_started: bool,
    receipt_sent: bool,
}

impl State {
    fn take_receipt(&mut self, blocks_done: bool) -> bool {
        let due = self.vm_started && self.missing_count == 0 && blocks_done && !self.receipt_sent;
        self.receipt_sent |= due;
        due
    }
}

impl Postcopy {
    /// Registers `ram` of `vm` for missing-page faults through the hook at
    /// `hook_socket`, then drops the destination's copies of `pending`.
    pub fn arm(
        vm: &QemuProcess,
        ram: &GuestRam,
        hook_socket: &Path,
        pending: &[PageRange],
    ) -> Result<Postcopy, MigrationError> {
        let mapping = find_ram_mapping(vm.pid().cast_signed(), ram.path())?;
        let faults = arm_missing(hook_socket, mapping)?;
        let file = OpenOptions::new()
            .write(true)
            .open(ram.path())
            .map_err(|e| {
                MigrationError::io(
                    format!("opening guest RAM file {}", ram.path().display()),
                    e,
                )
            })?;
        punch_holes(&file, pending)?;
        let mut missing = PageSet::new(ram.pages());
        let mut missing_count = 0;
        for range in pending {
            for page in range.pages() {
                if page >= ram.pages() {
                    return Err(MigrationError::Invalid(format!(
                        "the source left page {page} for post-copy, beyond the {} pages of \
                         guest RAM",
                        ram.pages()
                    )));
                }
                if missing.insert_new(page) {
                    missing_count += 1;
                }
            }
        }
        tracing::info!(pages = missing_count, "post-copy armed");
        Ok(Postcopy {
            faults,
            state: Mutex::new(State {
                missing,
                missing_count,
                asked_at: HashMap::new(),
                fault_latencies: Vec::new(),
                installed: 0,
                already_present: 0,
                expected: HashMap::new(),
                mismatched: Vec::new(),
                vm_started: false,
                receipt_sent: false,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_missing(&self, page: PageIndex) -> bool {
        let state = self.lock();
        page < state.missing.universe() && state.missing.contains(page)
    }

    /// Pending pages not installed yet.
    pub fn missing_count(&self) -> u64 {
        self.lock().missing_count
    }

    /// Pending pages not installed yet, as ranges: what a resumed source
    /// must send.
    pub fn missing_ranges(&self) -> Vec<PageRange> {
        self.lock().missing.ranges()
    }

    /// Pages faulted on and still missing: asked for again first on a
    /// resumed link, since the requests may have been lost with the old one.
    pub fn awaited(&self) -> Vec<PageIndex> {
        let state = self.lock();
        let mut pages: Vec<PageIndex> = state
            .asked_at
            .keys()
            .copied()
            .filter(|&page| state.missing.contains(page))
            .collect();
        pages.sort_unstable();
        pages
    }

    /// Whether the receipt went to the source (on some connection).
    pub fn receipt_sent(&self) -> bool {
        self.lock().receipt_sent
    }

    /// The receipt could not be sent: it is due again once a link is back.
    pub fn receipt_lost(&self) {
        self.lock().receipt_sent = false;
    }

    /// The VM runs here; the caller then asks whether the receipt is due.
    pub fn vm_started(&self) {
        self.lock().vm_started = true;
    }

    /// Whether the receipt is due now: the VM runs, every pending page is
    /// in, and (`blocks_done`) every pending disk block. True once; the
    /// caller sends it. Each caller looks at the blocks after its own
    /// change (a start, a page, a block), so the last change sees it due.
    pub fn receipt_due(&self, blocks_done: bool) -> bool {
        self.lock().take_receipt(blocks_done)
    }

    /// Test mode: the digest of the pages present since before the switch,
    /// leaving out the pending ones (which must not be read).
    pub fn digest_present(&self, ram: &GuestRam) -> RamDigest {
        let state = self.lock();
        ram.digest_without(|page| state.missing.contains(page))
    }

    /// Test mode: keeps the source's digests of pending pages for when they
    /// are installed. Fails on a page that is not pending.
    pub fn expect(&self, digests: &PageDigests) -> Result<(), MigrationError> {
        let mut state = self.lock();
        for &(page, digest) in &digests.pages {
            if page >= state.missing.universe() || !state.missing.contains(page) {
                return Err(MigrationError::Invalid(format!(
                    "the source sent the digest of page {page}, which is not pending"
                )));
            }
            state.expected.insert(page, digest);
        }
        Ok(())
    }

    /// Installs `content` as `page` if it is still missing; a page pushed
    /// and asked for arrives twice, the second copy is dropped.
    pub fn install(
        &self,
        page: PageIndex,
        content: &[u8; PAGE_SIZE],
    ) -> Result<(), MigrationError> {
        if !self.is_missing(page) {
            return Ok(());
        }
        let outcome = self.faults.install(page, content)?;
        let now = Instant::now();
        let mut state = self.lock();
        state.missing.remove(page);
        state.missing_count -= 1;
        state.installed += 1;
        if outcome == Installed::AlreadyPresent {
            state.already_present += 1;
        }
        if let Some(asked) = state.asked_at.remove(&page) {
            state.fault_latencies.push(now - asked);
        }
        if let Some(expected) = state.expected.remove(&page) {
            if page_digest(content) != expected {
                state.mismatched.push(page);
            }
        }
        Ok(())
    }

    /// Until `stop`: reads faults and asks the source (through `ask`) for
    /// each missing page once.
    pub fn serve_faults(
        &self,
        stop: &AtomicBool,
        ask: impl Fn(Message) -> Result<(), MigrationError>,
    ) -> Result<(), MigrationError> {
        let mut faulted = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            faulted.clear();
            if self.faults.wait_faults(FAULT_POLL, &mut faulted)? == 0 {
                continue;
            }
            let now = Instant::now();
            let mut new = Vec::new();
            {
                let mut state = self.lock();
                for &page in &faulted {
                    let missing = page < state.missing.universe() && state.missing.contains(page);
                    if missing && !state.asked_at.contains_key(&page) {
                        state.asked_at.insert(page, now);
                        new.push(page);
                    }
                }
            }
            for new in new.chunks(PAGES_PER_REQUEST).map(<[PageIndex]>::to_vec) {
                ask(Message::PageRequest(PageRequest { pages: new }))?;
            }
        }
        Ok(())
    }

    /// What the post-copy phase did; test mode fails on any page whose
    /// installed content is not the source's.
    pub fn finish(&self, verify: bool) -> Result<DestinationPostcopyReport, MigrationError> {
        let mut state = self.lock();
        if verify && !state.mismatched.is_empty() {
            state.mismatched.sort_unstable();
            return Err(MigrationError::MemoryMismatch(format!(
                "PAGE DIGEST MISMATCH after post-copy: {} pages differ from the source's at the \
                 switch (first: {:?})",
                state.mismatched.len(),
                &state.mismatched[..state.mismatched.len().min(8)]
            )));
        }
        let mut latencies = std::mem::take(&mut state.fault_latencies);
        latencies.sort_unstable();
        Ok(DestinationPostcopyReport {
            pages_installed: state.installed,
            faults: latencies.len() as u64,
            fault_p50_ms: percentile_ms(&latencies, 0.5),
            fault_p99_ms: percentile_ms(&latencies, 0.99),
            fault_max_ms: latencies.last().map(|d| d.as_secs_f64() * 1000.0),
            already_present: state.already_present,
            verified: verify,
        })
    }
}

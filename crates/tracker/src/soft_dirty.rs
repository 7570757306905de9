//! Tracking with soft-dirty bits, as CRIU does: writing `4` to
//! `/proc/PID/clear_refs` clears them (and write-protects every page), a
//! later write sets the page's bit 55 in `/proc/PID/pagemap`.
//!
//! Reading the bits and clearing them are two separate steps that cover the
//! whole process, so a write between them would be lost. The process is
//! therefore stopped (SIGSTOP) for the length of a scan: milliseconds per GiB
//! of guest RAM. This is the fallback for kernels without `PAGEMAP_SCAN`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use crate::error::{ProcAccess, TrackerError};
use crate::maps::RamMapping;
use crate::procfs::{self, open_pagemap};
use crate::{ScanStats, TrackingMethod, WriteTracker};
use mllm_core::memory::{push_merged, total_pages, PageIndex, PageRange, PAGE_SIZE};

const SOFT_DIRTY_BIT: u64 = 1 << 55;
const PAGEMAP_ENTRY_LEN: usize = 8;
/// Pagemap entries read per call: 512 KiB of entries, 256 MiB of guest RAM.
const ENTRIES_PER_READ: PageIndex = 64 * 1024;
const CLEAR_SOFT_DIRTY: &[u8] = b"4";
/// How long a process may take to stop all its threads after SIGSTOP.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

pub struct SoftDirtyTracker {
    pid: i32,
    ram: RamMapping,
    pagemap: File,
    clear_refs: File,
    entries: Vec<u8>,
}

impl std::fmt::Debug for SoftDirtyTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftDirtyTracker")
            .field("pid", &self.pid)
            .field("ram", &self.ram)
            .finish_non_exhaustive()
    }
}

impl SoftDirtyTracker {
    /// Tracks `ram` of process `pid` from now on.
    pub fn new(pid: i32, ram: RamMapping) -> Result<SoftDirtyTracker, TrackerError> {
        SoftDirtyTracker::check_kernel_support()?;
        let pagemap = open_pagemap(pid)?;
        let mut clear_refs = open_clear_refs(pid)?;
        clear_soft_dirty(&mut clear_refs, pid)?;
        Ok(SoftDirtyTracker {
            pid,
            ram,
            pagemap,
            clear_refs,
            entries: vec![0; ENTRIES_PER_READ as usize * PAGEMAP_ENTRY_LEN],
        })
    }

    /// Checks on a page of this process that a write after clearing sets its
    /// soft-dirty bit: kernels built without `CONFIG_MEM_SOFT_DIRTY` accept
    /// the clear but never set the bit.
    pub fn check_kernel_support() -> Result<(), TrackerError> {
        let pid = std::process::id().cast_signed();
        let mut page = vec![0u8; 2 * PAGE_SIZE];
        let offset = page.as_ptr().align_offset(PAGE_SIZE);
        let page = &mut page[offset..offset + PAGE_SIZE];
        let pagemap_path = procfs::path(pid, "pagemap");
        let pagemap = open_pagemap(pid)?;
        let entry_at = (page.as_ptr() as u64 / PAGE_SIZE as u64) * PAGEMAP_ENTRY_LEN as u64;
        let soft_dirty = |page: &[u8]| -> Result<bool, TrackerError> {
            // Read the page so the compiler keeps the writes before this point.
            std::hint::black_box(page[0]);
            let mut entry = [0u8; PAGEMAP_ENTRY_LEN];
            pagemap
                .read_exact_at(&mut entry, entry_at)
                .map_err(TrackerError::proc(ProcAccess::Read, &pagemap_path))?;
            Ok(u64::from_ne_bytes(entry) & SOFT_DIRTY_BIT != 0)
        };
        page[0] = 1;
        clear_soft_dirty(&mut open_clear_refs(pid)?, pid)?;
        if soft_dirty(page)? {
            return Err(TrackerError::SoftDirtyNotCleared);
        }
        page[0] = 2;
        if !soft_dirty(page)? {
            return Err(TrackerError::SoftDirtyUnsupported);
        }
        Ok(())
    }
}

impl WriteTracker for SoftDirtyTracker {
    fn method(&self) -> TrackingMethod {
        TrackingMethod::SoftDirty
    }

    fn scan(&mut self, written: &mut Vec<PageRange>) -> Result<ScanStats, TrackerError> {
        let started = Instant::now();
        written.clear();
        let _stopped = Stopped::stop(self.pid)?;
        let mut kernel_calls = 0;
        let mut page = 0;
        while page < self.ram.pages() {
            let count = (self.ram.pages() - page).min(ENTRIES_PER_READ);
            let bytes = &mut self.entries[..count as usize * PAGEMAP_ENTRY_LEN];
            let entry_at =
                (self.ram.start / PAGE_SIZE as u64 + u64::from(page)) * PAGEMAP_ENTRY_LEN as u64;
            self.pagemap
                .read_exact_at(bytes, entry_at)
                .map_err(|source| TrackerError::Proc {
                    access: ProcAccess::Read,
                    path: procfs::path(self.pid, "pagemap"),
                    source,
                })?;
            collect_soft_dirty(bytes, page, written);
            kernel_calls += 1;
            page += count;
        }
        clear_soft_dirty(&mut self.clear_refs, self.pid)?;
        Ok(ScanStats {
            pages_written: total_pages(written),
            ranges: written.len(),
            kernel_calls: kernel_calls + 1,
            duration: started.elapsed(),
        })
    }
}

/// Appends the pages whose pagemap entry (in `entries`, the entry of page
/// `first_page` first) has the soft-dirty bit.
fn collect_soft_dirty(entries: &[u8], first_page: PageIndex, written: &mut Vec<PageRange>) {
    for (page, entry) in (first_page..).zip(entries.chunks_exact(PAGEMAP_ENTRY_LEN)) {
        let entry = u64::from_ne_bytes(entry.try_into().expect("chunk of 8 bytes"));
        if entry & SOFT_DIRTY_BIT != 0 {
            push_merged(written, PageRange::new(page, page + 1));
        }
    }
}

fn open_clear_refs(pid: i32) -> Result<File, TrackerError> {
    let path = procfs::path(pid, "clear_refs");
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(TrackerError::proc(ProcAccess::Open, &path))
}

/// Clears the soft-dirty bits of process `pid` through its `clear_refs`.
fn clear_soft_dirty(clear_refs: &mut File, pid: i32) -> Result<(), TrackerError> {
    clear_refs
        .write_all(CLEAR_SOFT_DIRTY)
        .map_err(|source| TrackerError::ClearSoftDirty { pid, source })
}

/// Keeps a process stopped while alive; resumes it on drop unless it was
/// already stopped by someone else.
struct Stopped {
    pid: i32,
    resume: bool,
}

impl Stopped {
    fn stop(pid: i32) -> Result<Stopped, TrackerError> {
        if all_threads_stopped(pid)? {
            return Ok(Stopped { pid, resume: false });
        }
        signal(pid, libc::SIGSTOP)?;
        let stopped = Stopped { pid, resume: true };
        let deadline = Instant::now() + STOP_TIMEOUT;
        while !all_threads_stopped(pid)? {
            if Instant::now() > deadline {
                return Err(TrackerError::ProcessNotStopped {
                    pid,
                    timeout: STOP_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(stopped)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.resume {
            if let Err(error) = signal(self.pid, libc::SIGCONT) {
                tracing::error!(pid = self.pid, %error, "cannot resume the tracked process");
            }
        }
    }
}

fn signal(pid: i32, signal: libc::c_int) -> Result<(), TrackerError> {
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(TrackerError::Signal {
            pid,
            signal,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// True when no thread of `pid` can run: all stopped (`T`, `t`) or exiting.
fn all_threads_stopped(pid: i32) -> Result<bool, TrackerError> {
    let tasks = procfs::path(pid, "task");
    for task in std::fs::read_dir(&tasks).map_err(TrackerError::proc(ProcAccess::List, &tasks))? {
        let task = task.map_err(TrackerError::proc(ProcAccess::List, &tasks))?;
        let stat_path = task.path().join("stat");
        let stat = std::fs::read_to_string(&stat_path)
            .map_err(TrackerError::proc(ProcAccess::Read, &stat_path))?;
        // The state follows the command name, which is in parentheses and may
        // itself contain spaces or parentheses.
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next());
        if !matches!(state, Some('T' | 't' | 'Z' | 'X')) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(values: &[u64]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|value| value.to_ne_bytes())
            .collect()
    }

    #[test]
    fn soft_dirty_entries_become_merged_ranges() {
        let present = 1 << 63;
        let dirty = present | SOFT_DIRTY_BIT;
        let mut written = vec![PageRange::new(0, 1)];
        collect_soft_dirty(
            &entries(&[dirty, dirty, present, 0, dirty, SOFT_DIRTY_BIT]),
            100,
            &mut written,
        );
        let expected = [
            PageRange::new(0, 1),
            PageRange::new(100, 102),
            PageRange::new(104, 106),
        ];
        assert_eq!(written, expected);
    }

    #[test]
    fn this_process_is_reported_running() {
        assert!(!all_threads_stopped(std::process::id().cast_signed()).unwrap());
    }
}

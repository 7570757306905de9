//! A stand-in for QEMU in the tracker's and mllm-faults' tests and the
//! tracker's benchmark: maps a shared-memory file the way QEMU maps guest RAM
//! (`memory-backend-file`, `share=on`) and writes or reads pages on command,
//! so the pages touched are known.
//!
//! Usage: `page_writer FILE BYTES`. Prints `ready` once the file is mapped,
//! then answers each command line on stdin with `done <count>`:
//! - `pages P...`: writes to each listed page (count: pages written);
//! - `stride FIRST STEP COUNT`: writes pages FIRST, FIRST+STEP, ... wrapping
//!   around the end (count: pages written);
//! - `spin HOT MILLIS`: writes random pages among the first HOT for MILLIS
//!   milliseconds (count: writes done);
//! - `read P...`: reads each listed page whole, in order (count: a checksum
//!   of their bytes, std's `DefaultHasher::new()` fed each page in turn). A
//!   page missing under a missing-page userfaultfd blocks the read until it
//!   is installed.
//!
//! It exits at the end of its input.

use std::fs::OpenOptions;
use std::hash::{DefaultHasher, Hasher};
use std::io::{self, BufRead, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mllm_tracker::PAGE_SIZE;

struct SharedRam {
    base: *mut u8,
    pages: u64,
}

impl SharedRam {
    fn map(path: &str, bytes: u64) -> io::Result<SharedRam> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.set_len(bytes)?;
        // SAFETY: a fresh shared mapping of the whole file, never unmapped:
        // the process exits with it.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                usize::try_from(bytes).expect("the RAM size fits the address space"),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(SharedRam {
            base: base.cast(),
            pages: bytes / PAGE_SIZE as u64,
        })
    }

    fn write_page(&self, page: u64) {
        // SAFETY: a word at the start of a page of the mapping is aligned.
        // Volatile so that every requested write reaches memory.
        unsafe {
            let word = self.page_start(page).cast::<u64>();
            word.write_volatile(word.read_volatile().wrapping_add(1));
        }
    }

    fn read_page(&self, page: u64) -> [u8; PAGE_SIZE] {
        let start = self.page_start(page);
        let mut content = [0u8; PAGE_SIZE];
        for (offset, byte) in content.iter_mut().enumerate() {
            // SAFETY: the byte lies inside the page. Volatile because other
            // processes write the file.
            *byte = unsafe { start.add(offset).read_volatile() };
        }
        content
    }

    fn page_start(&self, page: u64) -> *mut u8 {
        assert!(page < self.pages, "page {page} is beyond {}", self.pages);
        let page = usize::try_from(page).expect("a page within the mapping");
        // SAFETY: the page lies inside the mapping.
        unsafe { self.base.add(page * PAGE_SIZE) }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, path, bytes] = args.as_slice() else {
        eprintln!("usage: page_writer FILE BYTES");
        std::process::exit(2);
    };
    let bytes = bytes.parse().expect("BYTES is a byte count");
    let ram = SharedRam::map(path, bytes)?;
    let mut output = io::stdout().lock();
    writeln!(output, "ready")?;
    output.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        let command = words.next().unwrap_or_default();
        let numbers: Vec<u64> = words.map(|word| word.parse().expect("a number")).collect();
        let count = match (command, numbers.as_slice()) {
            ("pages", pages) => {
                pages.iter().for_each(|&page| ram.write_page(page));
                pages.len() as u64
            }
            ("stride", &[first, step, count]) => {
                (0..count).for_each(|i| ram.write_page((first + i * step) % ram.pages));
                count
            }
            ("spin", &[hot, millis]) => spin(&ram, hot, Duration::from_millis(millis)),
            ("read", pages) => {
                let mut checksum = DefaultHasher::new();
                pages
                    .iter()
                    .for_each(|&page| checksum.write(&ram.read_page(page)));
                checksum.finish()
            }
            _ => panic!("unknown command {line:?}"),
        };
        writeln!(output, "done {count}")?;
        output.flush()?;
    }
    Ok(())
}

/// Writes random pages among the first `hot` for `duration`, like a guest
/// workload with a hot set; returns the number of writes.
fn spin(ram: &SharedRam, hot: u64, duration: Duration) -> u64 {
    let deadline = Instant::now() + duration;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut writes = 0;
    while Instant::now() < deadline {
        // Check the clock every 1024 writes, not on each one.
        for _ in 0..1024 {
            // xorshift64: cheap, and enough to defeat the prefetcher.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ram.write_page(state % hot);
        }
        writes += 1024;
    }
    writes
}

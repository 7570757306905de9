//! A stand-in for QEMU in the tracker's tests and benchmark: maps a
//! shared-memory file the way QEMU maps guest RAM (`memory-backend-file`,
//! `share=on`) and writes pages on command, so the written set is known.
//!
//! Usage: `page_writer FILE BYTES`. Prints `ready` once the file is mapped,
//! then answers each command line on stdin with `done <count>`:
//! - `pages P...`: writes to each listed page (count: pages written);
//! - `stride FIRST STEP COUNT`: writes pages FIRST, FIRST+STEP, ... wrapping
//!   around the end (count: pages written);
//! - `spin HOT MILLIS`: writes random pages among the first HOT for MILLIS
//!   milliseconds (count: writes done).
//!
//! It exits at the end of its input.

use std::fs::OpenOptions;
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
        assert!(page < self.pages, "page {page} is beyond {}", self.pages);
        // SAFETY: the page lies inside the mapping; a word at its start is
        // aligned. Volatile so that every requested write reaches memory.
        unsafe {
            let page = usize::try_from(page).expect("a page within the mapping");
            let word = self.base.add(page * PAGE_SIZE).cast::<u64>();
            word.write_volatile(word.read_volatile().wrapping_add(1));
        }
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

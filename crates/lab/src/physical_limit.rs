//! The physical limit of one run: the least time in which any method could
//! move the source's content across the link.
//!
//! At the start of the migration the lab reads the source's guest RAM file
//! (and disk image) page by page: zero pages are dropped (every method can
//! send them as a marker or skip them), identical pages are kept once
//! (BLAKE3: a collision would understate the content, so the hash must be
//! one nobody can collide by accident), and what remains is compressed as one
//! zstd stream at a high level ([`ZSTD_LEVEL`]). Those bytes at the link's rate,
//! plus the one round trip every transfer needs to be requested and
//! acknowledged, is the time no method can beat.
//!
//! It is a snapshot at the start: the guest keeps running while the files are
//! read, and what it writes afterwards (which every method has to send on top)
//! is not in it. The compression runs after the migration, once the VMs are
//! gone, so that it never competes with a measured migration for the CPUs.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use mllm_core::memory::PAGE_SIZE;
use serde::{Deserialize, Serialize};

/// Far above what any live sender uses (mllm's agents and QEMU's multifd
/// compress at level 1), so the limit stays below what they can reach;
/// level 19 would tighten it a little more at several times the cost (a
/// few MB/s, paid after every run, tens of seconds per test in CI).
pub const ZSTD_LEVEL: i32 = 9;

/// The distinct non-zero pages of the source at the start of the migration.
#[derive(Debug, Default)]
pub struct ContentSnapshot {
    ram_bytes: u64,
    disk_bytes: u64,
    nonzero_pages: u64,
    ram_nonzero_pages: u64,
    seen: HashSet<blake3::Hash>,
    /// The distinct pages, in the order first seen.
    unique: Vec<u8>,
    read_time: Duration,
}

impl ContentSnapshot {
    /// Reads the guest RAM file and, if the VM has one, its disk image.
    pub fn take(ram: &Path, disk: Option<&Path>) -> Result<ContentSnapshot> {
        let started = Instant::now();
        let mut snapshot = ContentSnapshot::default();
        snapshot.ram_bytes = snapshot
            .add(open(ram)?)
            .with_context(|| format!("reading guest RAM {}", ram.display()))?;
        snapshot.ram_nonzero_pages = snapshot.nonzero_pages;
        if let Some(disk) = disk {
            snapshot.disk_bytes = snapshot
                .add(open(disk)?)
                .with_context(|| format!("reading disk image {}", disk.display()))?;
        }
        snapshot.read_time = started.elapsed();
        Ok(snapshot)
    }

    /// Adds every page `content` holds (a short last page counts as if
    /// padded with zeros); returns the bytes read.
    pub fn add(&mut self, mut content: impl Read) -> io::Result<u64> {
        let mut chunk = vec![0u8; 256 * PAGE_SIZE];
        let mut total = 0u64;
        loop {
            let filled = fill(&mut content, &mut chunk)?;
            if filled == 0 {
                return Ok(total);
            }
            total += filled as u64;
            let padded = filled.div_ceil(PAGE_SIZE) * PAGE_SIZE;
            chunk[filled..padded].fill(0);
            for page in chunk[..padded].chunks_exact(PAGE_SIZE) {
                if page.iter().all(|&b| b == 0) {
                    continue;
                }
                self.nonzero_pages += 1;
                if self.seen.insert(blake3::hash(page)) {
                    self.unique.extend_from_slice(page);
                }
            }
        }
    }

    /// Compresses the distinct pages and turns their size into time on a
    /// link of `bits_per_s` and round trip `rtt`.
    pub fn limit(&self, bits_per_s: u64, rtt: Duration) -> Result<PhysicalLimit> {
        let started = Instant::now();
        let bytes = if self.unique.is_empty() {
            0
        } else {
            zstd::bulk::compress(&self.unique, ZSTD_LEVEL)
                .context("compressing the source's content")?
                .len() as u64
        };
        let compress_time = started.elapsed();
        Ok(PhysicalLimit {
            bytes,
            seconds: bytes as f64 * 8.0 / bits_per_s as f64 + rtt.as_secs_f64(),
            ram_bytes: self.ram_bytes,
            disk_bytes: self.disk_bytes,
            nonzero_pages: self.nonzero_pages,
            ram_nonzero_pages: self.ram_nonzero_pages,
            unique_pages: self.seen.len() as u64,
            read_ms: self.read_time.as_secs_f64() * 1000.0,
            compress_ms: compress_time.as_secs_f64() * 1000.0,
            how: format!(
                "snapshot of the source's guest RAM file{} read while the guest ran, \
                 just before the migration started; zero {PAGE_SIZE}-byte pages dropped, \
                 identical pages kept once (BLAKE3), the rest compressed as one zstd \
                 stream at level {ZSTD_LEVEL}; seconds = bytes at the link's rate + one RTT",
                if self.disk_bytes > 0 {
                    " and disk image"
                } else {
                    ""
                }
            ),
        })
    }
}

/// The least time any method could take, per run (`result.json`'s
/// `physical_limit`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhysicalLimit {
    /// Compressed size of the source's distinct non-zero pages.
    pub bytes: u64,
    /// `bytes` at the link's rate plus one round trip.
    pub seconds: f64,
    /// Guest RAM read.
    pub ram_bytes: u64,
    /// Disk image read (0 without a disk).
    pub disk_bytes: u64,
    pub nonzero_pages: u64,
    /// Of `nonzero_pages`, those in guest RAM.
    #[serde(default)]
    pub ram_nonzero_pages: u64,
    /// Distinct non-zero pages: what was compressed.
    pub unique_pages: u64,
    /// How long the snapshot took to read: the guest ran meanwhile.
    pub read_ms: f64,
    /// How long the compression took (after the run).
    pub compress_ms: f64,
    /// How it was measured, in words.
    pub how: String,
}

fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RTT: Duration = Duration::from_millis(50);
    const MBIT_100: u64 = 100_000_000;

    fn snapshot_of(content: &[u8]) -> ContentSnapshot {
        let mut snapshot = ContentSnapshot::default();
        assert_eq!(snapshot.add(content).unwrap(), content.len() as u64);
        snapshot
    }

    /// Pages no compressor can shrink (xorshift; a different seed per call).
    fn random_pages(pages: usize, seed: u64) -> Vec<u8> {
        let mut state = seed | 1;
        (0..pages * PAGE_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect()
    }

    #[test]
    fn zero_pages_cost_nothing_but_the_round_trip() {
        let snapshot = snapshot_of(&vec![0u8; 1000 * PAGE_SIZE]);
        let limit = snapshot.limit(MBIT_100, RTT).unwrap();
        assert_eq!(limit.bytes, 0);
        assert_eq!(limit.nonzero_pages, 0);
        assert_eq!(limit.unique_pages, 0);
        assert_eq!(limit.seconds, RTT.as_secs_f64());
    }

    #[test]
    fn identical_pages_count_once() {
        let page = random_pages(1, 7);
        let once = snapshot_of(&page).limit(MBIT_100, RTT).unwrap();
        let many: Vec<u8> = (0..500).flat_map(|_| page.iter().copied()).collect();
        let repeated = snapshot_of(&many).limit(MBIT_100, RTT).unwrap();
        assert_eq!(repeated.nonzero_pages, 500);
        assert_eq!(repeated.unique_pages, 1);
        assert_eq!(repeated.bytes, once.bytes);
    }

    #[test]
    fn random_pages_do_not_compress_and_set_the_time() {
        let pages = 256;
        let limit = snapshot_of(&random_pages(pages, 11))
            .limit(MBIT_100, RTT)
            .unwrap();
        let raw = (pages * PAGE_SIZE) as u64;
        assert_eq!(limit.unique_pages, pages as u64);
        // zstd adds a few bytes of framing to what it cannot shrink.
        assert!(
            (raw..raw + raw / 100).contains(&limit.bytes),
            "{} bytes",
            limit.bytes
        );
        let expected = limit.bytes as f64 * 8.0 / MBIT_100 as f64 + 0.05;
        assert!((limit.seconds - expected).abs() < 1e-9);
    }

    #[test]
    fn half_random_pages_compress_to_about_half() {
        // The lab's synthetic disk blocks: half random, half zero.
        let mut content = random_pages(64, 3);
        for page in content.chunks_exact_mut(PAGE_SIZE) {
            page[PAGE_SIZE / 2..].fill(0);
        }
        let limit = snapshot_of(&content).limit(MBIT_100, RTT).unwrap();
        let half = (content.len() / 2) as u64;
        assert!(
            (half..half + half / 20).contains(&limit.bytes),
            "{} bytes",
            limit.bytes
        );
    }

    #[test]
    fn a_short_last_page_counts_as_zero_padded() {
        let mut content = vec![0u8; PAGE_SIZE + 10];
        content[PAGE_SIZE + 3] = 1;
        let snapshot = snapshot_of(&content);
        assert_eq!(snapshot.nonzero_pages, 1);
        assert_eq!(snapshot.unique.len(), PAGE_SIZE);
    }

    #[test]
    fn ram_and_disk_pages_are_deduplicated_together() {
        // A file's page in the guest's page cache is the same as on its disk.
        let dir = tempfile::tempdir().unwrap();
        let page = random_pages(1, 5);
        let ram = dir.path().join("ram");
        let disk = dir.path().join("disk");
        std::fs::write(&ram, [page.clone(), vec![0u8; PAGE_SIZE]].concat()).unwrap();
        std::fs::write(&disk, [vec![0u8; PAGE_SIZE], page].concat()).unwrap();
        let limit = ContentSnapshot::take(&ram, Some(&disk))
            .unwrap()
            .limit(MBIT_100, RTT)
            .unwrap();
        assert_eq!(limit.ram_bytes, 2 * PAGE_SIZE as u64);
        assert_eq!(limit.disk_bytes, 2 * PAGE_SIZE as u64);
        assert_eq!(limit.nonzero_pages, 2);
        assert_eq!(limit.unique_pages, 1);
        assert!(limit.how.contains("disk image"));
    }
}

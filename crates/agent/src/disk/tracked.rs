//! A raw disk image that the NBD server reads and writes through, noting
//! every request, and that the agent reads and writes block by block.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mllm_control::DiskPostcopyReport;
use mllm_core::memory::{pages_in, PageRange};
use mllm_core::trace::{DiskAccess, DiskOp};
use mllm_core::PageSet;
use mllm_nbd::{BlockStore, FileRegion, RawFile, Zeroing};
use mllm_wire::{page_digest, ContentHash, DigestCache, PageBytes, RamDigest};

use super::activity::{blocks_covering, Activity, DiskActivity, RequestTotals};
use super::mapping::ReadOnlyMapping;
use super::remote::{AskForBlocks, RemoteBlocks};
use super::{BLOCK_SIZE, BLOCK_SIZE_U64};
use crate::error::MigrationError;
use crate::guest_ram::DIGEST_PAGES_PER_RANGE;

/// Blocks read at once when looking for used blocks: 1 MiB.
const SCAN_BLOCKS: u32 = 256;

pub struct TrackedDisk {
    path: PathBuf,
    image: RawFile,
    /// The file `image` serves, for the digest's mapping (`RawFile` keeps
    /// its own handle to itself).
    file: File,
    size: u64,
    blocks: u32,
    activity: Mutex<Activity>,
    /// Post-copy at a destination: blocks still on the source.
    remote: RemoteBlocks,
    /// Test mode at a destination: digests of ranges of blocks, kept while
    /// nothing writes them. Every write path (NBD requests, the agent's
    /// own) marks it.
    digests: DigestCache,
}

impl fmt::Debug for TrackedDisk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrackedDisk")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

impl TrackedDisk {
    /// Opens a raw (sparse) image for reading and writing. Its size must be
    /// a positive multiple of [`BLOCK_SIZE`], of at most `u32::MAX` blocks.
    pub fn open(path: &Path) -> Result<Arc<TrackedDisk>, MigrationError> {
        let failed =
            |error| MigrationError::io(format!("opening disk image {}", path.display()), error);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(failed)?;
        let size = file.metadata().map_err(failed)?.len();
        // A block is a page, so core's page count says it.
        let Some(blocks) = pages_in(size) else {
            return Err(MigrationError::Invalid(format!(
                "disk image {} is {size} bytes, not a positive multiple of the \
                 {BLOCK_SIZE}-byte block (or more than {} blocks)",
                path.display(),
                u32::MAX
            )));
        };
        let image = RawFile::from_file(file.try_clone().map_err(failed)?).map_err(failed)?;
        Ok(Arc::new(TrackedDisk {
            path: path.to_owned(),
            image,
            file,
            size,
            blocks,
            activity: Mutex::new(Activity::new(blocks)),
            remote: RemoteBlocks::new(blocks),
            digests: DigestCache::new(blocks, DIGEST_PAGES_PER_RANGE),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// Blocks written, trimmed or zeroed through NBD since the previous call
    /// (or since the disk was opened), increasing. A request covering part
    /// of a block marks the whole block. Blocks written with
    /// [`TrackedDisk::write_block`] are not marked.
    pub fn take_dirty(&self) -> Vec<u32> {
        let empty = PageSet::new(self.blocks);
        let dirty = self.activity().swap_dirty(empty);
        dirty.iter().collect()
    }

    /// Blocks read and written through NBD since the previous call, for the
    /// workingset estimators. Independent of [`TrackedDisk::take_dirty`].
    pub fn take_activity(&self) -> DiskActivity {
        let (empty_reads, empty_writes) = (PageSet::new(self.blocks), PageSet::new(self.blocks));
        let (reads, writes) = self
            .activity()
            .swap_reads_and_writes(empty_reads, empty_writes);
        DiskActivity {
            reads: reads.iter().collect(),
            writes: writes.iter().collect(),
        }
    }

    /// The latest NBD requests, oldest first, timed from the opening of the
    /// disk; at most 64 Ki of them. Trims and zeroing appear as writes.
    pub fn recent_accesses(&self) -> Vec<DiskAccess> {
        self.activity().recent()
    }

    /// Requests that fell out of [`TrackedDisk::recent_accesses`] since the
    /// disk was opened.
    pub fn dropped_accesses(&self) -> u64 {
        self.activity().dropped()
    }

    /// Every NBD request since the disk was opened, counted with its bytes.
    pub fn request_totals(&self) -> RequestTotals {
        self.activity().totals()
    }

    /// Blocks holding data: allocated in the image and not all zeros. Reads
    /// every allocated block. A block the guest changes during the scan may
    /// be counted either way: take the dirty blocks just before the scan,
    /// and the next [`TrackedDisk::take_dirty`] names every such block.
    pub fn used_blocks(&self) -> Result<PageSet, MigrationError> {
        self.scan_used(|_, _| {})
    }

    /// What this image holds before a migration writes into it: its used
    /// blocks, and the content hash of the first `max_hashed` of them. A
    /// VM that moves back to a host it left finds its old image there, and
    /// the source refers to these blocks instead of sending them again.
    pub fn held_content(
        &self,
        max_hashed: usize,
    ) -> Result<(PageSet, Vec<(u32, ContentHash)>), MigrationError> {
        let mut hashes = Vec::new();
        let used = self.scan_used(|block, content| {
            if hashes.len() < max_hashed {
                hashes.push((block, ContentHash::of(content)));
            }
        })?;
        Ok((used, hashes))
    }

    /// [`TrackedDisk::used_blocks`], showing each used block to `each`.
    fn scan_used(&self, mut each: impl FnMut(u32, &[u8])) -> Result<PageSet, MigrationError> {
        let failed = |error| {
            MigrationError::io(
                format!("finding the used blocks of disk {}", self.path.display()),
                error,
            )
        };
        let holes = self.image.zero_ranges(0, self.size).map_err(failed)?;
        let mut used = PageSet::new(self.blocks);
        let mut buffer = vec![0u8; SCAN_BLOCKS as usize * BLOCK_SIZE];
        for extent in allocated_extents(&holes, self.size) {
            let blocks = blocks_covering(extent.start, extent.end - extent.start);
            let mut first = blocks.start;
            while first < blocks.end {
                let count = (blocks.end - first).min(SCAN_BLOCKS);
                let bytes = &mut buffer[..count as usize * BLOCK_SIZE];
                self.image
                    .read_at(bytes, u64::from(first) * BLOCK_SIZE_U64)
                    .map_err(failed)?;
                for (block, content) in (first..).zip(bytes.chunks_exact(BLOCK_SIZE)) {
                    if content.iter().any(|&byte| byte != 0) {
                        used.insert(block);
                        each(block, content);
                    }
                }
                first += count;
            }
        }
        Ok(used)
    }

    pub fn read_block(&self, block: u32, out: &mut [u8; BLOCK_SIZE]) -> Result<(), MigrationError> {
        let offset = self.offset_of(block, "reading")?;
        self.image
            .read_at(out, offset)
            .map_err(|error| self.block_failed("reading", block, error))
    }

    /// Writes a block behind the NBD server's back (the destination filling
    /// its image): neither dirty nor traced.
    pub fn write_block(&self, block: u32, data: &[u8; BLOCK_SIZE]) -> Result<(), MigrationError> {
        let offset = self.offset_of(block, "writing")?;
        let written = self.image.write_at(data, offset, false);
        self.digests.written(block..block + 1);
        written.map_err(|error| self.block_failed("writing", block, error))
    }

    /// Makes a block read as zeros by punching it out of the image, like
    /// [`TrackedDisk::write_block`] behind the NBD server's back.
    pub fn zero_block(&self, block: u32) -> Result<(), MigrationError> {
        let offset = self.offset_of(block, "zeroing")?;
        let zeroed = self
            .image
            .write_zeroes(offset, BLOCK_SIZE_U64, Zeroing::MayTrim, false);
        self.digests.written(block..block + 1);
        zeroed.map_err(|error| self.block_failed("zeroing", block, error))
    }

    /// Makes every block of `blocks` read as zeros, range by range, behind
    /// the NBD server's back.
    pub fn zero_blocks(&self, blocks: &PageSet) -> Result<(), MigrationError> {
        for range in blocks.ranges() {
            let offset = self.offset_of(range.start, "zeroing")?;
            let len = u64::from(range.end - range.start) * BLOCK_SIZE_U64;
            let zeroed = self
                .image
                .write_zeroes(offset, len, Zeroing::MayTrim, false);
            self.digests.written(range.start..range.end);
            zeroed.map_err(|error| self.block_failed("zeroing", range.start, error))?;
        }
        Ok(())
    }

    /// Makes every write so far durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), MigrationError> {
        self.image.flush().map_err(|error| {
            MigrationError::io(format!("syncing disk image {}", self.path.display()), error)
        })
    }

    /// Test mode: the image's digest, in the ranges of guest RAM digests.
    /// Only meaningful while nothing writes the disk.
    pub fn digest(&self) -> Result<RamDigest, MigrationError> {
        self.digest_without(|_| false)
    }

    /// Test mode: the digest of every block but those `skip` names (the
    /// ones a post-copy source still owes), in the ranges of
    /// [`TrackedDisk::digest`], every range hashed now.
    ///
    /// A source never takes kept digests: their marks come from the same
    /// NBD request path that marks blocks dirty, so a write the migration
    /// missed would be missed by the digest too, and the check exists to
    /// catch exactly that.
    pub fn digest_without(
        &self,
        skip: impl Fn(u32) -> bool + Sync,
    ) -> Result<RamDigest, MigrationError> {
        self.hashing(skip, |content| {
            RamDigest::compute_pages(self.blocks, DIGEST_PAGES_PER_RANGE, content)
        })
    }

    /// Test mode at a destination: hashes the ranges of blocks nothing
    /// wrote since the previous call (see [`DigestCache::hash_quiet`]), so
    /// that [`TrackedDisk::digest_present`] has less to hash at the switch.
    pub fn hash_quiet(
        &self,
        quiet: &mut Vec<u64>,
        stop: &AtomicBool,
    ) -> Result<usize, MigrationError> {
        self.hashing(
            |_| false,
            |content| self.digests.hash_quiet(quiet, content, stop),
        )
    }

    /// Runs `hash` on the image's content block by block, `skip`'s blocks
    /// left out.
    ///
    /// Holes are not read: reading a hole fills the page cache with zeros,
    /// about 2 s per GiB of holes on a cold cache, and digests run while
    /// the VM is paused; a range of nothing but holes is not even hashed.
    fn hashing<R>(
        &self,
        skip: impl Fn(u32) -> bool + Sync,
        hash: impl for<'m> FnOnce(&(dyn Fn(u32) -> PageBytes<'m> + Sync)) -> R,
    ) -> Result<R, MigrationError> {
        let holes = self.image.zero_ranges(0, self.size).map_err(|error| {
            MigrationError::io(
                format!("finding the holes of disk image {}", self.path.display()),
                error,
            )
        })?;
        let mapping = self.map()?;
        let bytes = mapping.bytes();
        let content = |block: u32| {
            if skip(block) {
                return PageBytes::Left;
            }
            // The mapping is the whole image: offsets within it fit usize.
            let start = block as usize * BLOCK_SIZE;
            let end = (start + BLOCK_SIZE).min(bytes.len());
            let (start_at, end_at) = (start as u64, end as u64);
            // The first hole that ends past the block's start.
            let hole = holes.partition_point(|hole| hole.end <= start_at);
            if holes
                .get(hole)
                .is_some_and(|hole| hole.start <= start_at && end_at <= hole.end)
            {
                return PageBytes::Zero;
            }
            PageBytes::Data(&bytes[start..end])
        };
        Ok(hash(&content))
    }

    /// Test mode: the digest of each of `blocks`, as a page's.
    pub fn block_digests(&self, blocks: &[u32]) -> Result<Vec<(u32, u64)>, MigrationError> {
        let mut content = Box::new([0; BLOCK_SIZE]);
        blocks
            .iter()
            .map(|&block| {
                self.read_block(block, &mut content)?;
                Ok((block, page_digest(&content)))
            })
            .collect()
    }

    /// Post-copy at the destination: `pending` blocks are stale here from
    /// now on; a guest request that needs one asks for it through `ask`
    /// and waits until [`TrackedDisk::install_block`] brings it.
    pub fn arm_remote(
        &self,
        pending: &[PageRange],
        ask: AskForBlocks,
    ) -> Result<(), MigrationError> {
        self.remote.arm(pending, ask)
    }

    /// Writes a block that came from the source after the switch, if it is
    /// still pending; returns whether it was.
    pub fn install_block(
        &self,
        block: u32,
        data: &[u8; BLOCK_SIZE],
    ) -> Result<bool, MigrationError> {
        self.remote.install(
            block,
            || page_digest(data),
            || self.write_block(block, data),
        )
    }

    /// Blocks still on the source.
    pub fn missing_blocks(&self) -> u64 {
        self.remote.missing_count()
    }

    /// Blocks still on the source, as ranges.
    pub fn missing_block_ranges(&self) -> Vec<PageRange> {
        self.remote.missing().ranges()
    }

    /// Blocks guest requests wait for, still on the source.
    pub fn awaited_blocks(&self) -> Vec<u32> {
        self.remote.awaited()
    }

    /// Test mode at a destination: the digest of the blocks here, those
    /// pending in post-copy (stale here) left out; ranges hashed by
    /// [`TrackedDisk::hash_quiet`] and not written since are not hashed
    /// again. The marks come from the agent's own writes of what arrived,
    /// not from the source's tracking, so the check stays independent of it.
    pub fn digest_present(&self) -> Result<RamDigest, MigrationError> {
        let missing = self.remote.missing();
        self.hashing(
            |block| missing.contains(block),
            |content| RamDigest::compute_cached(&self.digests, content),
        )
    }

    /// Test mode: the source's digests of pending blocks.
    pub fn expect_blocks(&self, digests: &[(u32, u64)]) -> Result<(), MigrationError> {
        self.remote.expect(digests)
    }

    /// Every pending block arrived: what the post-copy did.
    pub fn finish_remote(&self, verify: bool) -> Result<DiskPostcopyReport, MigrationError> {
        self.remote.finish(verify)
    }

    /// The migration failed: guest requests waiting for pending blocks fail
    /// with `reason` rather than wait forever.
    pub fn abandon_remote(&self, reason: &str) {
        self.remote.abandon(reason);
    }

    fn map(&self) -> Result<ReadOnlyMapping, MigrationError> {
        let len = usize::try_from(self.size).map_err(|_| {
            MigrationError::Invalid(format!(
                "disk image {} of {} bytes is too large to map",
                self.path.display(),
                self.size
            ))
        })?;
        ReadOnlyMapping::new(&self.file, len).map_err(|error| {
            MigrationError::io(format!("mapping disk image {}", self.path.display()), error)
        })
    }

    /// Waits until the blocks under a guest request are here; `overwrite`:
    /// the request replaces the blocks it covers whole.
    fn await_remote(&self, offset: u64, len: u64, overwrite: bool) -> io::Result<()> {
        let blocks = blocks_covering(offset, len);
        let whole = if overwrite {
            whole_blocks(offset, len)
        } else {
            0..0
        };
        self.remote.wait_for(blocks, whole)
    }

    fn offset_of(&self, block: u32, doing: &str) -> Result<u64, MigrationError> {
        if block >= self.blocks {
            return Err(MigrationError::Invalid(format!(
                "{doing} block {block} of disk {}, which has {} blocks",
                self.path.display(),
                self.blocks
            )));
        }
        Ok(u64::from(block) * BLOCK_SIZE_U64)
    }

    fn block_failed(&self, doing: &str, block: u32, error: io::Error) -> MigrationError {
        MigrationError::io(
            format!("{doing} block {block} of disk {}", self.path.display()),
            error,
        )
    }

    fn activity(&self) -> MutexGuard<'_, Activity> {
        // The state is a set of marks and a ring, whole after any panic.
        self.activity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, op: DiskOp, offset: u64, length: u64) {
        if op == DiskOp::Write {
            self.digests.written(blocks_covering(offset, length));
        }
        self.activity().record(op, offset, length);
    }
}

/// The blocks `offset..offset + len` covers entirely.
fn whole_blocks(offset: u64, len: u64) -> Range<u32> {
    let first = offset.div_ceil(BLOCK_SIZE_U64);
    let end = offset.saturating_add(len) / BLOCK_SIZE_U64;
    let block = |at: u64| u32::try_from(at).unwrap_or(u32::MAX);
    block(first)..block(end).max(block(first))
}

/// The ranges of `0..size` outside `holes` (sorted, not overlapping).
fn allocated_extents(holes: &[Range<u64>], size: u64) -> Vec<Range<u64>> {
    let mut extents = Vec::with_capacity(holes.len() + 1);
    let mut position = 0;
    for hole in holes {
        if hole.start > position {
            extents.push(position..hole.start);
        }
        position = hole.end;
    }
    if position < size {
        extents.push(position..size);
    }
    extents
}

/// Every request is recorded after the image has carried it out, failed or
/// not (a failed write may have changed part of its range). Marking a block
/// dirty before its data lands would let the migration take the mark, read
/// the old content and never see the block again.
///
/// `zero_ranges` keeps its default (no range known to be zeros): on the
/// source the image's holes are zeros, but a destination serving this same
/// type fills its image lazily, and there a hole may be a block that has not
/// arrived yet. Reading a hole costs only a page of zeros from the page
/// cache.
impl BlockStore for TrackedDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.await_remote(offset, buf.len() as u64, false)?;
        let result = self.image.read_at(buf, offset);
        self.record(DiskOp::Read, offset, buf.len() as u64);
        result
    }

    /// The read is recorded before the server sends the bytes from the
    /// image: a read changes no block, so nothing depends on the order.
    fn read_region(&self, offset: u64, len: u64) -> io::Result<Option<FileRegion<'_>>> {
        self.await_remote(offset, len, false)?;
        self.record(DiskOp::Read, offset, len);
        self.image.read_region(offset, len)
    }

    fn write_at(&self, data: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.await_remote(offset, data.len() as u64, true)?;
        let result = self.image.write_at(data, offset, fua);
        self.record(DiskOp::Write, offset, data.len() as u64);
        result
    }

    fn flush(&self) -> io::Result<()> {
        self.image.flush()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.await_remote(offset, len, true)?;
        let result = self.image.trim(offset, len, fua);
        self.record(DiskOp::Write, offset, len);
        result
    }

    fn write_zeroes(&self, offset: u64, len: u64, zeroing: Zeroing, fua: bool) -> io::Result<()> {
        self.await_remote(offset, len, true)?;
        let result = self.image.write_zeroes(offset, len, zeroing, fua);
        self.record(DiskOp::Write, offset, len);
        result
    }

    /// The wrapper keeps no per-connection state, and the image's own
    /// flushes cover every connection.
    fn shared_by_connections(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(blocks: u64) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(blocks * BLOCK_SIZE_U64).unwrap();
        file
    }

    #[test]
    fn an_image_of_partial_blocks_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(BLOCK_SIZE_U64 + 512).unwrap();
        let error = TrackedDisk::open(file.path()).unwrap_err();
        assert!(matches!(error, MigrationError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("multiple"), "{error}");
    }

    #[test]
    fn nbd_writes_dirty_exactly_the_blocks_they_touch() {
        let file = image(64);
        let disk = TrackedDisk::open(file.path()).unwrap();
        assert_eq!(disk.blocks(), 64);
        disk.write_at(&[1], 5 * BLOCK_SIZE_U64 + 17, false).unwrap();
        disk.write_at(&[2; 2], 8 * BLOCK_SIZE_U64 - 1, false)
            .unwrap();
        disk.trim(20 * BLOCK_SIZE_U64, 2 * BLOCK_SIZE_U64, false)
            .unwrap();
        disk.write_zeroes(30 * BLOCK_SIZE_U64, 1, Zeroing::Allocate, false)
            .unwrap();
        let mut buf = [0; 100];
        disk.read_at(&mut buf, 40 * BLOCK_SIZE_U64).unwrap();
        disk.flush().unwrap();
        assert_eq!(disk.take_dirty(), [5, 7, 8, 20, 21, 30]);
        assert_eq!(disk.take_dirty(), [] as [u32; 0]);
        let activity = disk.take_activity();
        assert_eq!(activity.reads, [40]);
        assert_eq!(activity.writes, [5, 7, 8, 20, 21, 30]);
        assert_eq!(disk.take_activity(), DiskActivity::default());
        let ops: Vec<_> = disk.recent_accesses().iter().map(|a| a.op).collect();
        assert_eq!(
            ops,
            [
                DiskOp::Write,
                DiskOp::Write,
                DiskOp::Write,
                DiskOp::Write,
                DiskOp::Read
            ]
        );
    }

    #[test]
    fn requests_from_many_threads_at_once_are_all_marked() {
        let file = image(1024);
        let disk = TrackedDisk::open(file.path()).unwrap();
        std::thread::scope(|scope| {
            for worker in 0..4u64 {
                let disk = &disk;
                scope.spawn(move || {
                    for block in (worker..1024).step_by(4) {
                        disk.write_at(&[1; 512], block * BLOCK_SIZE_U64, false)
                            .unwrap();
                    }
                });
            }
        });
        assert_eq!(disk.take_dirty(), (0..1024).collect::<Vec<u32>>());
        assert_eq!(disk.recent_accesses().len(), 1024);
    }

    #[test]
    fn agent_writes_change_the_image_without_marking_it() {
        let file = image(8);
        let disk = TrackedDisk::open(file.path()).unwrap();
        disk.write_block(3, &[0x5a; BLOCK_SIZE]).unwrap();
        let mut block = [0; BLOCK_SIZE];
        disk.read_block(3, &mut block).unwrap();
        assert_eq!(block, [0x5a; BLOCK_SIZE]);
        assert_eq!(disk.used_blocks().unwrap().iter().collect::<Vec<_>>(), [3]);
        disk.zero_block(3).unwrap();
        disk.read_block(3, &mut block).unwrap();
        assert_eq!(block, [0; BLOCK_SIZE]);
        assert!(disk.used_blocks().unwrap().is_empty());
        assert!(disk.take_dirty().is_empty());
        assert!(disk.recent_accesses().is_empty());
        let error = disk.read_block(8, &mut block).unwrap_err();
        assert!(error.to_string().contains("8 blocks"), "{error}");
    }

    #[test]
    fn allocated_zeros_are_not_used_blocks() {
        let file = image(600);
        let disk = TrackedDisk::open(file.path()).unwrap();
        disk.write_block(2, &[0; BLOCK_SIZE]).unwrap();
        disk.write_block(599, &[7; BLOCK_SIZE]).unwrap();
        let mut mostly_zero = [0; BLOCK_SIZE];
        mostly_zero[BLOCK_SIZE - 1] = 1;
        disk.write_block(300, &mostly_zero).unwrap();
        disk.sync().unwrap();
        let used: Vec<_> = disk.used_blocks().unwrap().iter().collect();
        assert_eq!(used, [300, 599]);
    }

    #[test]
    fn held_content_names_used_blocks_and_zeroing_them_leaves_holes_of_the_same_size() {
        let file = image(600);
        let disk = TrackedDisk::open(file.path()).unwrap();
        let content = |block: u32| [u8::try_from(block % 251 + 1).unwrap(); BLOCK_SIZE];
        for block in [0, 255, 256, 599] {
            disk.write_block(block, &content(block)).unwrap();
        }
        let (used, hashes) = disk.held_content(3).unwrap();
        assert_eq!(used.iter().collect::<Vec<_>>(), [0, 255, 256, 599]);
        let expected: Vec<(u32, ContentHash)> = [0, 255, 256]
            .into_iter()
            .map(|block| (block, ContentHash::of(&content(block))))
            .collect();
        assert_eq!(hashes, expected, "the first three, by block");
        disk.zero_blocks(&used).unwrap();
        assert!(disk.used_blocks().unwrap().is_empty());
        assert_eq!(
            file.as_file().metadata().unwrap().len(),
            600 * BLOCK_SIZE_U64
        );
        let empty = image(600);
        assert!(disk
            .digest()
            .unwrap()
            .mismatches(&TrackedDisk::open(empty.path()).unwrap().digest().unwrap())
            .is_empty());
    }

    #[test]
    fn digests_differ_exactly_in_the_range_of_a_changed_block() {
        let (a, b) = (image(600), image(600));
        let (left, right) = (
            TrackedDisk::open(a.path()).unwrap(),
            TrackedDisk::open(b.path()).unwrap(),
        );
        for disk in [&left, &right] {
            disk.write_block(10, &[1; BLOCK_SIZE]).unwrap();
            disk.write_block(590, &[2; BLOCK_SIZE]).unwrap();
        }
        assert!(left
            .digest()
            .unwrap()
            .mismatches(&right.digest().unwrap())
            .is_empty());
        left.write_block(300, &[3; BLOCK_SIZE]).unwrap();
        let mismatches = left.digest().unwrap().mismatches(&right.digest().unwrap());
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].first_page, 256);
        assert_eq!(mismatches[0].page_count, 256);
    }

    #[test]
    fn the_digest_of_an_image_is_that_of_the_same_bytes_as_ram() {
        let blocks = 4 * DIGEST_PAGES_PER_RANGE + 44;
        let file = image(u64::from(blocks));
        let disk = TrackedDisk::open(file.path()).unwrap();
        // Data between holes, zeros written (allocated, not a hole), and
        // ranges of nothing but holes: the digest hashes holes without
        // reading them, and whole ranges of holes not at all, to the same
        // result.
        let last = blocks - 1;
        disk.write_block(7, &[0; BLOCK_SIZE]).unwrap();
        disk.write_block(100, &[5; BLOCK_SIZE]).unwrap();
        disk.write_block(last, &[4; BLOCK_SIZE]).unwrap();
        let mut bytes = vec![0; blocks as usize * BLOCK_SIZE];
        bytes[100 * BLOCK_SIZE..101 * BLOCK_SIZE].fill(5);
        bytes[last as usize * BLOCK_SIZE..].fill(4);
        assert_eq!(
            disk.digest().unwrap(),
            RamDigest::compute(&bytes, DIGEST_PAGES_PER_RANGE)
        );
        // Blocks left out of a range of holes (a post-copy destination's
        // pending ones) leave a range of fewer zeros.
        let pending = |block: u32| (300..310).contains(&block) || block == 100;
        assert_eq!(
            disk.digest_without(pending).unwrap(),
            RamDigest::compute_without(&bytes, DIGEST_PAGES_PER_RANGE, pending)
        );
    }

    #[test]
    fn every_write_path_marks_the_digests_kept_ahead_of_the_switch() {
        let blocks = 3 * DIGEST_PAGES_PER_RANGE;
        let file = image(u64::from(blocks));
        let disk = TrackedDisk::open(file.path()).unwrap();
        let settle = || {
            let (mut quiet, never) = (Vec::new(), AtomicBool::new(false));
            disk.hash_quiet(&mut quiet, &never).unwrap();
            disk.hash_quiet(&mut quiet, &never).unwrap()
        };
        // A freshly opened disk keeps no digests: it hashes everything.
        let uncached = || TrackedDisk::open(file.path()).unwrap().digest().unwrap();
        let block = |index: u32| u64::from(index) * BLOCK_SIZE_U64;
        assert_eq!(settle(), 3);
        let writes: [&dyn Fn(); 6] = [
            &|| disk.write_at(&[9; 3], block(5) + 1, false).unwrap(),
            &|| disk.write_block(300, &[8; BLOCK_SIZE]).unwrap(),
            &|| disk.trim(block(5), BLOCK_SIZE_U64, false).unwrap(),
            &|| disk.zero_block(300).unwrap(),
            &|| {
                disk.write_zeroes(block(700), 10, Zeroing::Allocate, false)
                    .unwrap()
            },
            &|| {
                let mut some = PageSet::new(blocks);
                some.insert_all(&[600, 601]);
                disk.write_block(600, &[7; BLOCK_SIZE]).unwrap();
                assert_eq!(disk.digest_present().unwrap(), uncached());
                settle();
                disk.zero_blocks(&some).unwrap();
            },
        ];
        for (index, write) in writes.iter().enumerate() {
            settle();
            write();
            assert_eq!(
                disk.digest_present().unwrap(),
                uncached(),
                "write path {index}"
            );
        }
    }
}

//! The agent's own view of guest RAM: a shared, writable mapping of the same
//! shared-memory file QEMU maps with `share=on`, so a byte one side writes is
//! the byte the other reads.
//!
//! QEMU writes this memory concurrently while the guest runs, so the mapping
//! is only ever accessed through raw-pointer copies: no Rust reference to it
//! exists while another process may change it.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use mllm_core::memory::{pages_in, PageIndex, PAGE_SIZE};
use mllm_wire::{page_digest, DigestCache, PageBytes, PageDigests, RamDigest};

use crate::error::MigrationError;

/// Pages per digest range: 1 MiB, so a mismatch points at a small region
/// while the digest of a 4 GiB guest stays a few thousand entries. Disk
/// digests use the same ranges (`disk::TrackedDisk::digest`).
pub(crate) const DIGEST_PAGES_PER_RANGE: PageIndex = 256;

pub struct GuestRam {
    path: PathBuf,
    base: *mut u8,
    len: usize,
    pages: PageIndex,
    /// Test mode at a destination: digests kept while pages arrive (see
    /// [`GuestRam::keep_digests`]). Every write through this value marks it.
    digests: Option<Arc<DigestCache>>,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access
// goes through raw-pointer copies whose ranges are bounds-checked, and writes
// take `&mut self`, so sending or sharing the value between threads adds no
// hazard beyond the documented concurrent writes of QEMU.
unsafe impl Send for GuestRam {}
// SAFETY: as for Send: shared access only copies through bounds-checked raw
// pointers, and mutation needs `&mut self`.
unsafe impl Sync for GuestRam {}

impl std::fmt::Debug for GuestRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestRam")
            .field("path", &self.path)
            .field("pages", &self.pages)
            .finish_non_exhaustive()
    }
}

impl GuestRam {
    /// Maps the whole RAM file `path` shared and read-write.
    pub fn open(path: &Path) -> Result<GuestRam, MigrationError> {
        let failed =
            |error| MigrationError::io(format!("mapping guest RAM file {}", path.display()), error);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(failed)?;
        let file_len = file.metadata().map_err(failed)?.len();
        let (Some(pages), Ok(len)) = (pages_in(file_len), usize::try_from(file_len)) else {
            return Err(MigrationError::Invalid(format!(
                "guest RAM file {} is {file_len} bytes, not a positive multiple of the \
                 {PAGE_SIZE}-byte page (or more than {} pages)",
                path.display(),
                PageIndex::MAX
            )));
        };
        // SAFETY: a fresh shared mapping of a file we opened read-write; the
        // kernel picks the address; the result is checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(failed(std::io::Error::last_os_error()));
        }
        Ok(GuestRam {
            path: path.to_owned(),
            base: base.cast(),
            len,
            pages,
            digests: None,
        })
    }

    /// Test mode at a destination: from now on every write through this
    /// value marks its digest range, so that [`GuestRam::digest`] rehashes
    /// only the ranges written since a reader's [`GuestRam::hash_quiet`]
    /// hashed them. Only for RAM that nothing but this value writes: the
    /// guest's own writes mark nothing.
    pub fn keep_digests(&mut self) {
        self.digests = Some(Arc::new(DigestCache::new(
            self.pages,
            DIGEST_PAGES_PER_RANGE,
        )));
    }

    /// A second mapping of the same file sharing this one's kept digests,
    /// for a thread that hashes while this value writes.
    pub fn reader(&self) -> Result<GuestRam, MigrationError> {
        let mut reader = GuestRam::open(&self.path)?;
        reader.digests.clone_from(&self.digests);
        Ok(reader)
    }

    /// Test mode: hashes the ranges nothing wrote since the previous call
    /// (see [`DigestCache::hash_quiet`]); nothing without kept digests.
    pub fn hash_quiet(&self, quiet: &mut Vec<u64>, stop: &AtomicBool) -> usize {
        let Some(digests) = &self.digests else {
            return 0;
        };
        // SAFETY: the mapping is valid for `len` bytes for the life of self.
        // Another mapping may write it meanwhile: a range read while written
        // hashes wrong, and the write's mark discards that digest.
        let bytes = unsafe { std::slice::from_raw_parts(self.base, self.len) };
        digests.hash_quiet(quiet, |page| PageBytes::Data(page_bytes(bytes, page)), stop)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Allocates every page of the RAM file now. Writing through the
    /// mapping into a hole of a full tmpfs raises SIGBUS, which would kill
    /// the agent mid-migration (or QEMU once the guest runs); reserving
    /// first turns a lack of room into an error before anything is sent.
    pub fn reserve(&self) -> Result<(), MigrationError> {
        let file = OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(|error| self.no_room(error))?;
        let len = libc::off_t::try_from(self.len).map_err(|_| {
            MigrationError::Invalid(format!("guest RAM of {} bytes is too large", self.len))
        })?;
        // SAFETY: fallocate on a descriptor we own; no memory is passed.
        let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if result != 0 {
            return Err(self.no_room(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn no_room(&self, error: std::io::Error) -> MigrationError {
        MigrationError::io(
            format!(
                "reserving {} MiB for guest RAM in {}",
                self.len >> 20,
                self.path.display()
            ),
            error,
        )
    }

    pub fn len_bytes(&self) -> u64 {
        self.len as u64
    }

    pub fn pages(&self) -> PageIndex {
        self.pages
    }

    fn page_ptr(&self, index: PageIndex) -> *mut u8 {
        assert!(
            index < self.pages(),
            "page {index} outside guest RAM of {} pages",
            self.pages()
        );
        // SAFETY: index < pages, so the offset stays inside the mapping.
        unsafe { self.base.add(index as usize * PAGE_SIZE) }
    }

    /// Copies page `index` as it is now; the guest may be changing it, in
    /// which case the tracker reports the page again.
    pub fn read_page(&self, index: PageIndex, out: &mut [u8; PAGE_SIZE]) {
        // SAFETY: page_ptr checked the bounds; `out` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(self.page_ptr(index), out.as_mut_ptr(), PAGE_SIZE) }
    }

    pub fn write_page(&mut self, index: PageIndex, data: &[u8; PAGE_SIZE]) {
        // SAFETY: page_ptr checked the bounds; `data` is a separate buffer.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.page_ptr(index), PAGE_SIZE) }
        self.written(index);
    }

    pub fn zero_page(&mut self, index: PageIndex) {
        // SAFETY: page_ptr checked the bounds.
        unsafe { std::ptr::write_bytes(self.page_ptr(index), 0, PAGE_SIZE) }
        self.written(index);
    }

    /// After the write, never before (see [`DigestCache`]).
    fn written(&self, index: PageIndex) {
        if let Some(digests) = &self.digests {
            digests.written(index..index + 1);
        }
    }

    /// Digest of each of `pages`. Only meaningful while nothing writes them
    /// (the source VM stopped).
    pub fn page_digests(&self, pages: &[PageIndex]) -> PageDigests {
        let mut page = Box::new([0; PAGE_SIZE]);
        PageDigests {
            pages: pages
                .iter()
                .map(|&index| {
                    self.read_page(index, &mut page);
                    (index, page_digest(&page))
                })
                .collect(),
        }
    }

    /// Digest of every page but those `skip` names: the pages a post-copy
    /// destination lacks, which must not be read (reading a missing page
    /// through this mapping would fill it with zeros behind the fault
    /// mechanism). Meaningful while nothing writes the other pages.
    pub fn digest_without(&self, skip: impl Fn(PageIndex) -> bool + Sync) -> RamDigest {
        // SAFETY: as in `digest`; the skipped pages are never read, only
        // their place in the range is passed over.
        let bytes = unsafe { std::slice::from_raw_parts(self.base, self.len) };
        RamDigest::compute_without(bytes, DIGEST_PAGES_PER_RANGE, skip)
    }

    /// Digest of every page, from the kept digests where they are fresh.
    /// Only meaningful while nothing writes the RAM: the source VM stopped,
    /// the destination VM not yet running.
    pub fn digest(&self) -> RamDigest {
        // SAFETY: the mapping is valid for `len` bytes for the life of self.
        // The caller guarantees no process writes it meanwhile; if one did,
        // the digest would be wrong, never unsound for this process.
        let bytes = unsafe { std::slice::from_raw_parts(self.base, self.len) };
        match &self.digests {
            Some(digests) => {
                RamDigest::compute_cached(digests, |page| PageBytes::Data(page_bytes(bytes, page)))
            }
            None => RamDigest::compute(bytes, DIGEST_PAGES_PER_RANGE),
        }
    }
}

/// Page `page` of a whole RAM mapping.
fn page_bytes(ram: &[u8], page: PageIndex) -> &[u8] {
    let start = page as usize * PAGE_SIZE;
    &ram[start..start + PAGE_SIZE]
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        // SAFETY: base and len are the mapping created in `open`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram_file(pages: usize) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len((pages * PAGE_SIZE) as u64).unwrap();
        file
    }

    #[test]
    fn two_mappings_of_one_file_see_each_others_writes() {
        let file = ram_file(4);
        let mut writer = GuestRam::open(file.path()).unwrap();
        let reader = GuestRam::open(file.path()).unwrap();
        assert_eq!(reader.pages(), 4);
        writer.write_page(2, &[0xab; PAGE_SIZE]);
        let mut page = [0; PAGE_SIZE];
        reader.read_page(2, &mut page);
        assert_eq!(page, [0xab; PAGE_SIZE]);
        writer.zero_page(2);
        reader.read_page(2, &mut page);
        assert_eq!(page, [0; PAGE_SIZE]);
    }

    #[test]
    fn digests_differ_exactly_where_a_page_differs() {
        let (a, b) = (ram_file(600), ram_file(600));
        let mut left = GuestRam::open(a.path()).unwrap();
        let right = GuestRam::open(b.path()).unwrap();
        assert!(left.digest().mismatches(&right.digest()).is_empty());
        left.write_page(300, &[1; PAGE_SIZE]);
        let mismatches = left.digest().mismatches(&right.digest());
        assert_eq!(mismatches.len(), 1);
        assert_eq!(mismatches[0].first_page, 256);
    }

    #[test]
    fn a_file_of_partial_pages_is_refused() {
        let file = tempfile::NamedTempFile::new_in("/dev/shm").unwrap();
        file.as_file().set_len(100).unwrap();
        let err = GuestRam::open(file.path()).err().unwrap();
        assert!(err.to_string().contains("multiple"), "{err}");
    }

    #[test]
    fn kept_digests_follow_the_writes_of_the_value_that_keeps_them() {
        let file = ram_file(600);
        let mut writer = GuestRam::open(file.path()).unwrap();
        writer.keep_digests();
        let reader = writer.reader().unwrap();
        let (mut quiet, never) = (Vec::new(), std::sync::atomic::AtomicBool::new(false));
        reader.hash_quiet(&mut quiet, &never);
        assert_eq!(reader.hash_quiet(&mut quiet, &never), 3);
        writer.write_page(300, &[1; PAGE_SIZE]);
        let uncached = || GuestRam::open(file.path()).unwrap().digest();
        assert_eq!(writer.digest(), uncached());
        writer.zero_page(300);
        assert_eq!(writer.digest(), uncached());
        // Without kept digests there is nothing to hash ahead.
        let plain = GuestRam::open(file.path()).unwrap();
        assert_eq!(plain.hash_quiet(&mut Vec::new(), &never), 0);
    }
}

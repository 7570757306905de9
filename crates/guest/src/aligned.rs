//! Zeroed, page-aligned byte buffers.
//!
//! Needed twice: the memory workload's records must coincide with guest pages
//! (one record = one 4 KiB page, so a page's dirtiness is a record's write),
//! and `O_DIRECT` I/O requires aligned buffers.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub const PAGE_SIZE: usize = 4096;

#[derive(Debug)]
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` zero bytes (at least one) starting on a page boundary. Large
    /// buffers come from fresh anonymous mappings, so their pages are only
    /// touched when first written.
    pub fn zeroed(len: usize) -> Self {
        let layout = Layout::from_size_align(len.max(1), PAGE_SIZE)
            .expect("buffer size overflows the address space");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, layout }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with exactly this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_zeroed_and_writable() {
        for len in [1, 512, 4096, 3 * 4096 + 100] {
            let mut buf = AlignedBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % PAGE_SIZE, 0);
            assert!(buf.iter().all(|&b| b == 0));
            buf[len - 1] = 7;
            assert_eq!(buf[len - 1], 7);
        }
    }
}

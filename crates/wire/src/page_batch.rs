//! Page batches: up to `MAX_BATCH_PAGES` guest pages in one message. Zero pages travel
//! as markers only; data pages are concatenated and compressed as one block, which
//! compresses far better than page by page; a page whose content the destination
//! already holds travels as a [`ContentRef`] (see `mllm_core::dedup`).

use std::{fmt, slice};

use mllm_core::dedup::{ContentHash, Location};
use mllm_core::memory::{PageIndex, PAGE_SIZE};
use serde::{Deserialize, Serialize};

use crate::compression::{Compression, CompressionSetting, Compressor, Decompressor};
use crate::error::WireError;
use crate::message::MessageType;

/// Upper bound on pages per batch, enforced by the decoder: it caps the memory a
/// received batch can make the destination allocate (4 MiB of page data).
pub const MAX_BATCH_PAGES: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PageKind {
    /// All bytes zero; nothing in the payload.
    Zero,
    /// The next `PAGE_SIZE` bytes of the decompressed payload.
    Data,
    /// The content the destination holds at another location (or this
    /// one); nothing in the payload.
    Reference(ContentRef),
}

/// "Copy what you hold at `from` here; its content hashes to `hash`." The
/// destination checks the hash of what it holds at `from` before it copies,
/// and asks for the content instead when they differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentRef {
    pub from: Location,
    pub hash: ContentHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    pub index: PageIndex,
    pub kind: PageKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageBatch {
    pub compression: Compression,
    pub pages: Vec<PageEntry>,
    /// The data pages, in entry order, compressed as one block.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl PageBatch {
    pub fn data_pages(&self) -> usize {
        self.pages
            .iter()
            .filter(|page| page.kind == PageKind::Data)
            .count()
    }
}

/// Collects pages into a batch. Reusable: `finish` empties it for the next batch.
pub struct PageBatchBuilder {
    compressor: Compressor,
    capacity: usize,
    pages: Vec<PageEntry>,
    data: Vec<u8>,
}

impl fmt::Debug for PageBatchBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageBatchBuilder")
            .field("compressor", &self.compressor)
            .field("capacity", &self.capacity)
            .field("pages", &self.pages.len())
            .finish_non_exhaustive()
    }
}

impl PageBatchBuilder {
    /// `capacity` pages per batch, at most `MAX_BATCH_PAGES`.
    pub fn new(compression: CompressionSetting, capacity: usize) -> Result<Self, WireError> {
        if !(1..=MAX_BATCH_PAGES).contains(&capacity) {
            return Err(WireError::BatchCapacity {
                requested: capacity,
                max: MAX_BATCH_PAGES,
            });
        }
        Ok(PageBatchBuilder {
            compressor: Compressor::new(compression)?,
            capacity,
            pages: Vec::with_capacity(capacity),
            data: Vec::with_capacity(capacity * PAGE_SIZE),
        })
    }

    /// Adds a page, as a zero marker when all its bytes are zero. Returns true when the
    /// batch is now full and must be finished before the next push.
    ///
    /// # Panics
    /// If the batch was already full.
    #[must_use = "a full batch must be finished before the next push"]
    pub fn push(&mut self, index: PageIndex, page: &[u8; PAGE_SIZE]) -> bool {
        assert!(!self.is_full(), "push into a full page batch");
        let kind = if is_zero_page(page) {
            PageKind::Zero
        } else {
            self.data.extend_from_slice(page);
            PageKind::Data
        };
        self.pages.push(PageEntry { index, kind });
        self.is_full()
    }

    /// Adds a page as a reference to content the destination holds. Returns
    /// true when the batch is now full, as [`PageBatchBuilder::push`].
    ///
    /// # Panics
    /// If the batch was already full.
    #[must_use = "a full batch must be finished before the next push"]
    pub fn push_reference(&mut self, index: PageIndex, reference: ContentRef) -> bool {
        assert!(!self.is_full(), "push into a full page batch");
        self.pages.push(PageEntry {
            index,
            kind: PageKind::Reference(reference),
        });
        self.is_full()
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.pages.len() == self.capacity
    }

    /// Compresses the collected data pages and returns the batch, leaving the builder empty.
    pub fn finish(&mut self) -> Result<PageBatch, WireError> {
        let batch = self.take_uncompressed();
        batch.compress_with(&mut self.compressor)
    }

    /// The collected pages, uncompressed, leaving the builder empty: for
    /// compressing them on another thread ([`UncompressedBatch::compress`]).
    pub fn take_uncompressed(&mut self) -> UncompressedBatch {
        UncompressedBatch {
            pages: std::mem::replace(&mut self.pages, Vec::with_capacity(self.capacity)),
            data: std::mem::replace(
                &mut self.data,
                Vec::with_capacity(self.capacity * PAGE_SIZE),
            ),
        }
    }
}

/// A batch's entries and data pages before compression.
#[derive(Debug)]
pub struct UncompressedBatch {
    pages: Vec<PageEntry>,
    data: Vec<u8>,
}

impl UncompressedBatch {
    /// The data pages, concatenated.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The batch compressed by `compressor`.
    pub fn compress(self, compressor: &mut BatchCompressor) -> Result<PageBatch, WireError> {
        self.compress_with(&mut compressor.0)
    }

    fn compress_with(self, compressor: &mut Compressor) -> Result<PageBatch, WireError> {
        let compressed = compressor.compress(&self.data)?;
        // Incompressible pages (encrypted or already compressed data) are sent as they
        // are: the link carries (nearly) as much and the receiver skips a pointless
        // decompression.
        let (compression, payload) = match compressed {
            Some(block) if pays(block.len(), self.data.len()) => (compressor.algorithm(), block),
            _ => (Compression::None, self.data),
        };
        Ok(PageBatch {
            compression,
            pages: self.pages,
            payload,
        })
    }
}

/// Compresses batches with one setting, keeping its codec context from one
/// batch to the next.
#[derive(Debug)]
pub struct BatchCompressor(Compressor);

impl BatchCompressor {
    pub fn new(setting: CompressionSetting) -> Result<BatchCompressor, WireError> {
        Compressor::new(setting).map(BatchCompressor)
    }

    pub fn setting(&self) -> CompressionSetting {
        self.0.setting()
    }
}

/// A compressed block pays when it saves at least 5 % of the data: less is
/// within what one batch's content varies by, and costs the receiver a
/// decompression for nothing.
fn pays(compressed: usize, raw: usize) -> bool {
    compressed.saturating_mul(20) <= raw.saturating_mul(19)
}

/// Whether every byte of `page` is zero: such a page travels as a marker.
pub fn is_zero_page(page: &[u8; PAGE_SIZE]) -> bool {
    // OR-folding fixed-size chunks lets the compiler vectorise; `iter().all` would stop
    // at every byte to test for an early exit.
    page.chunks_exact(64)
        .all(|chunk| chunk.iter().fold(0, |acc, &byte| acc | byte) == 0)
}

/// What a page of a decoded batch holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageContent<'a> {
    Zero,
    Data(&'a [u8; PAGE_SIZE]),
    Reference(ContentRef),
}

/// Decodes batches; reuses its decompression context and buffer across batches.
#[derive(Debug)]
pub struct PageBatchDecoder {
    decompressor: Decompressor,
    data: Vec<u8>,
}

impl Default for PageBatchDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl PageBatchDecoder {
    pub fn new() -> Self {
        PageBatchDecoder {
            decompressor: Decompressor::new(),
            data: Vec::new(),
        }
    }

    /// Validates the batch (page count, payload size) and yields its pages in order.
    pub fn decode<'a>(&'a mut self, batch: &'a PageBatch) -> Result<DecodedPages<'a>, WireError> {
        let malformed = |reason: String| WireError::Malformed {
            message_type: MessageType::PageBatch,
            reason,
        };
        if batch.pages.len() > MAX_BATCH_PAGES {
            return Err(malformed(format!(
                "{} pages exceed the batch limit of {MAX_BATCH_PAGES}",
                batch.pages.len()
            )));
        }
        let expected_len = batch.data_pages() * PAGE_SIZE;
        self.decompressor
            .decompress(
                batch.compression,
                &batch.payload,
                expected_len,
                &mut self.data,
            )
            .map_err(malformed)?;
        Ok(DecodedPages {
            pages: batch.pages.iter(),
            data: self.data.chunks_exact(PAGE_SIZE),
        })
    }
}

/// Pages of one decoded batch, as (page index, content).
#[derive(Debug)]
pub struct DecodedPages<'a> {
    pages: slice::Iter<'a, PageEntry>,
    data: slice::ChunksExact<'a, u8>,
}

impl<'a> Iterator for DecodedPages<'a> {
    type Item = (PageIndex, PageContent<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.pages.next()?;
        let content = match entry.kind {
            PageKind::Zero => PageContent::Zero,
            PageKind::Data => {
                let page = self.data.next().expect("decode checked the payload size");
                PageContent::Data(page.try_into().expect("chunks are PAGE_SIZE long"))
            }
            PageKind::Reference(reference) => PageContent::Reference(reference),
        };
        Some((entry.index, content))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.pages.size_hint()
    }
}

impl ExactSizeIterator for DecodedPages<'_> {}

//! Pages and blocks in, batches out: reads pages from guest RAM and blocks
//! from the guest's disk, packs them into compressed batches (content the
//! destination holds as references) and queues them (and any other message)
//! for the sender thread, counting what each round sent.

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::time::Instant;

use mllm_core::memory::PageIndex;
use mllm_core::vm::PAGE_HEADER_BYTES;
use mllm_wire::{
    is_zero_page, BatchCompressor, BlockBatch, CompressionSetting, ContentRef, Location, Message,
    PageBatch, PageBatchBuilder, PageKind, RoundEnd, UncompressedBatch, PAGE_SIZE,
};

use super::codec::{self, CodecTuner};
use super::compressors::Compressors;
use super::dedup::Dedup;
use super::flow::Flow;
use super::threads::Outgoing;
use crate::disk::TrackedDisk;
use crate::error::MigrationError;
use crate::guest_ram::GuestRam;

type Result<T, E = MigrationError> = std::result::Result<T, E>;
use mllm_control::RoundReport;

struct RoundCounter {
    round: u32,
    pages: u64,
    zero_pages: u64,
    bytes: u64,
    blocks: u64,
    disk_bytes: u64,
    started: Instant,
}

impl RoundCounter {
    fn new(round: u32) -> RoundCounter {
        RoundCounter {
            round,
            pages: 0,
            zero_pages: 0,
            bytes: 0,
            blocks: 0,
            disk_bytes: 0,
            started: Instant::now(),
        }
    }
}

/// Which builder a batch came from.
#[derive(Debug, Clone, Copy)]
enum BatchKind {
    Pages,
    Blocks,
}

pub(crate) struct Pipeline<'a> {
    queue: SyncSender<Outgoing>,
    flow: &'a Flow,
    dedup: Option<&'a Dedup>,
    codec: CodecTuner,
    /// Compresses on this thread while one thread is enough.
    compressor: BatchCompressor,
    compressors: Compressors<BatchKind>,
    builder: PageBatchBuilder,
    /// Blocks of the one disk a VM may have (see `SourceContext::disk`).
    blocks: PageBatchBuilder,
    page: Box<[u8; PAGE_SIZE]>,
    current: RoundCounter,
    rounds: Vec<RoundReport>,
    /// Over the whole migration: data (non-zero) pages and their share of
    /// batch bytes, to predict what a dirty page costs.
    data_pages: u64,
    data_bytes: u64,
}

impl<'a> Pipeline<'a> {
    pub fn new(
        queue: SyncSender<Outgoing>,
        flow: &'a Flow,
        dedup: Option<&'a Dedup>,
        codec: CodecTuner,
        batch_pages: usize,
    ) -> Result<Pipeline<'a>> {
        let compression = codec.current();
        let compressors = Compressors::start(codec.max_threads())
            .map_err(|error| MigrationError::io("starting the compression threads", error))?;
        Ok(Pipeline {
            queue,
            flow,
            dedup,
            compressor: BatchCompressor::new(compression)?,
            compressors,
            codec,
            builder: PageBatchBuilder::new(compression, batch_pages)?,
            blocks: PageBatchBuilder::new(compression, batch_pages)?,
            page: Box::new([0; PAGE_SIZE]),
            current: RoundCounter::new(1),
            rounds: Vec::new(),
            data_pages: 0,
            data_bytes: 0,
        })
    }

    pub fn round(&self) -> u32 {
        self.current.round
    }

    /// Queues any message for the sender, in order after everything before.
    pub fn send(&mut self, message: Message) -> Result<()> {
        self.drain_compressors()?;
        self.send_now(message)
    }

    fn send_now(&mut self, message: Message) -> Result<()> {
        self.queue.send(Outgoing::Frame(message)).map_err(|_| {
            self.flow
                .cause_or(MigrationError::Invalid("the sender thread stopped".into()))
        })
    }

    /// Reads page `index` now and adds it to the current batch.
    pub fn send_page(&mut self, ram: &GuestRam, index: PageIndex) -> Result<()> {
        ram.read_page(index, &mut self.page);
        let full = match self.reference(Location::Page(index)) {
            Some(reference) => {
                if matches!(reference.from, Location::Block { .. }) {
                    // The block may still wait in the block batch: it must
                    // reach the destination first.
                    self.flush_blocks()?;
                }
                self.builder.push_reference(index, reference)
            }
            None => self.builder.push(index, &self.page),
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    /// Reads block `block` of `disk` now and adds it to the current block batch.
    pub fn send_block(&mut self, disk: &TrackedDisk, block: u32) -> Result<()> {
        disk.read_block(block, &mut self.page)?;
        let full = match self.reference(Location::Block { disk: 0, block }) {
            Some(reference) => {
                if matches!(reference.from, Location::Page(_)) {
                    self.flush_pages()?;
                }
                self.blocks.push_reference(block, reference)
            }
            None => self.blocks.push(block, &self.page),
        };
        if full {
            self.flush_blocks()?;
        }
        Ok(())
    }

    /// The reference to send for the content just read for `target`, if
    /// the destination holds it. Zero content travels as a marker, cheaper
    /// than a reference.
    fn reference(&self, target: Location) -> Option<ContentRef> {
        let dedup = self.dedup?;
        if is_zero_page(&self.page) {
            dedup.overwritten(target);
            return None;
        }
        dedup.reference(target, &self.page)
    }

    /// Whether the next page or block starts a new batch, every batch
    /// before it queued.
    pub fn batch_is_empty(&self) -> bool {
        self.builder.is_empty() && self.blocks.is_empty() && self.compressors.in_progress() == 0
    }

    /// Pages (and blocks) per batch from the next batch on; the current
    /// ones must be empty.
    pub fn set_batch_pages(&mut self, compression: CompressionSetting, pages: usize) -> Result<()> {
        debug_assert!(self.batch_is_empty());
        self.builder = PageBatchBuilder::new(compression, pages)?;
        self.blocks = PageBatchBuilder::new(compression, pages)?;
        Ok(())
    }

    /// Compresses and queues the pages and blocks collected so far.
    pub fn flush(&mut self) -> Result<()> {
        self.flush_blocks()?;
        self.flush_pages()?;
        self.drain_compressors()
    }

    fn flush_pages(&mut self) -> Result<()> {
        if self.builder.is_empty() {
            return Ok(());
        }
        let batch = self.builder.take_uncompressed();
        self.compress(BatchKind::Pages, batch)
    }

    fn flush_blocks(&mut self) -> Result<()> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        let batch = self.blocks.take_uncompressed();
        self.compress(BatchKind::Blocks, batch)
    }

    /// Compresses `batch` with the codec chosen for it, on this thread or,
    /// when the choice wants more than one, on the compression threads;
    /// batches are queued in the order they come here either way.
    fn compress(&mut self, kind: BatchKind, batch: UncompressedBatch) -> Result<()> {
        let setting = self
            .codec
            .for_batch(batch.data(), self.flow.snapshot().rate)?;
        let threads = self.codec.threads();
        if threads <= 1 {
            self.drain_compressors()?;
            if self.compressor.setting() != setting {
                self.compressor = BatchCompressor::new(setting)?;
            }
            let compressed = batch.compress(&mut self.compressor)?;
            return self.queue_compressed(kind, compressed);
        }
        self.compressors.submit(kind, batch, setting);
        while self.compressors.in_progress() >= threads {
            self.queue_oldest_compressed()?;
        }
        Ok(())
    }

    fn queue_oldest_compressed(&mut self) -> Result<()> {
        match self.compressors.next() {
            Some((kind, batch)) => self.queue_compressed(kind, batch?),
            None => Ok(()),
        }
    }

    /// Queues every batch the compression threads hold.
    fn drain_compressors(&mut self) -> Result<()> {
        while self.compressors.in_progress() > 0 {
            self.queue_oldest_compressed()?;
        }
        Ok(())
    }

    fn queue_compressed(&mut self, kind: BatchKind, batch: PageBatch) -> Result<()> {
        match kind {
            BatchKind::Pages => {
                let data = batch.data_pages() as u64;
                self.current.pages += batch.pages.len() as u64;
                self.current.zero_pages += batch
                    .pages
                    .iter()
                    .filter(|page| page.kind == PageKind::Zero)
                    .count() as u64;
                if data > 0 {
                    self.data_pages += data;
                    self.data_bytes +=
                        batch.payload.len() as u64 + data * u64::from(PAGE_HEADER_BYTES);
                }
                self.current.bytes += self.queue_batch(Message::PageBatch(batch))?;
            }
            BatchKind::Blocks => {
                self.current.blocks += batch.pages.len() as u64;
                let message = Message::BlockBatch(BlockBatch { disk: 0, batch });
                self.current.disk_bytes += self.queue_batch(message)?;
            }
        }
        Ok(())
    }

    /// Queues a batch the destination acknowledges; returns its link bytes.
    fn queue_batch(&mut self, message: Message) -> Result<u64> {
        let bytes = message.frame_len();
        self.flow.queued(bytes);
        self.send_now(message)?;
        // A failure seen by the I/O threads stops the round at once rather
        // than when the queue next blocks.
        self.flow.check()?;
        Ok(bytes)
    }

    /// Ends the current round; the next pages belong to the next round.
    pub fn end_round(&mut self, stopped: bool) -> Result<RoundReport> {
        self.flush()?;
        let report = RoundReport {
            round: self.current.round,
            pages: self.current.pages,
            zero_pages: self.current.zero_pages,
            bytes: self.current.bytes,
            blocks: self.current.blocks,
            disk_bytes: self.current.disk_bytes,
            duration_ms: self.current.started.elapsed().as_secs_f64() * 1000.0,
            stopped,
        };
        self.send(Message::RoundEnd(RoundEnd {
            round: report.round,
            pages: report.pages,
        }))?;
        self.rounds.push(report.clone());
        self.current = RoundCounter::new(self.current.round + 1);
        Ok(report)
    }

    /// Expected link bytes of a page the guest wrote: written pages are
    /// rarely zero, so this is the cost of a data page seen so far.
    pub fn bytes_per_written_page(&self) -> f64 {
        if self.data_pages == 0 {
            (PAGE_SIZE as u64 + u64::from(PAGE_HEADER_BYTES)) as f64
        } else {
            self.data_bytes as f64 / self.data_pages as f64
        }
    }

    /// Expected link bytes of the pages left in the current round: its
    /// average so far (round 1 has many cheap zero pages), else a data page.
    pub fn bytes_per_page_this_round(&self) -> f64 {
        if self.current.pages == 0 {
            self.bytes_per_written_page()
        } else {
            self.current.bytes as f64 / self.current.pages as f64
        }
    }

    /// Page-batch bytes queued so far, in every round.
    pub fn memory_bytes(&self) -> u64 {
        self.rounds.iter().map(|round| round.bytes).sum::<u64>() + self.current.bytes
    }

    /// The codec in use last, and how many batches each codec compressed.
    pub fn compression_used(&self) -> (String, BTreeMap<String, u64>) {
        (codec::name(self.codec.current()), self.codec.batches())
    }

    pub fn into_rounds(self) -> Vec<RoundReport> {
        self.rounds
    }
}

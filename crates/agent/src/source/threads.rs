//! The source's two I/O threads. The sender keeps the link busy with queued
//! frames while the migration reads and compresses the next pages, and
//! sends ahead of them the content of references the destination refused
//! and, in post-copy, the pages the destination asks for; the
//! receiver turns the destination's replies into flow events. Either one,
//! on a failure, records the cause and shuts the socket down, which unblocks
//! the other and the migration.

use std::io::BufReader;
use std::net::Shutdown;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use mllm_tls::PeerStream;
use mllm_wire::{
    BlockBatch, CompressionSetting, FrameReader, FrameWriter, Location, Message, PageBatchBuilder,
    Role, Traffic, PAGE_SIZE,
};

use super::dedup::Dedup;
use super::flow::{Flow, PeerOutcome};
use super::postcopy::Owed;
use crate::disk::TrackedDisk;
use crate::error::MigrationError;
use crate::guest_ram::GuestRam;

/// Asked-for pages per batch: small, so one answer is one page's trip and
/// the next request does not wait behind a large batch.
const ASKED_PAGES_PER_BATCH: usize = 16;

/// What the sender thread is handed.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// A frame to send after those queued before it.
    Frame(Message),
    /// The destination asked for pages (or refused references): look at
    /// [`Owed`] and [`Dedup`] now.
    Asked,
}

/// Where asked-for pages and blocks come from: the source's RAM and disk,
/// which no longer change once the VM has stopped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AskedPages<'a> {
    pub owed: &'a Owed,
    pub ram: &'a GuestRam,
    /// Blocks of the VM's disk, if it has one.
    pub owed_blocks: &'a Owed,
    pub disk: Option<&'a TrackedDisk>,
    /// Refused references, whose content is sent instead.
    pub dedup: Option<&'a Dedup>,
    pub compression: CompressionSetting,
}

/// Writes queued messages until the queue closes, asked-for pages first;
/// returns what it sent.
pub(crate) fn send_frames(
    mut writer: FrameWriter<PeerStream>,
    queue: Receiver<Outgoing>,
    asked: AskedPages<'_>,
    flow: &Flow,
    socket: &PeerStream,
    timeout: Duration,
) -> Traffic {
    let mut send = |message: Message, counts_as_batch: bool| -> bool {
        if let Err(error) = flow.sending(&message) {
            flow.end(PeerOutcome::Failed(error.into()));
            let _ = socket.shutdown(Shutdown::Both);
            return false;
        }
        if counts_as_batch {
            // Queued by this thread, so in the order the frames leave.
            flow.queued(message.frame_len());
        }
        let before = writer.traffic().total_bytes();
        if let Err(error) = writer.send(&message) {
            let cause = MigrationError::link(error, Role::Destination, timeout)
                .during(format!("sending a {} frame", message.message_type()));
            flow.end(PeerOutcome::Failed(cause));
            let _ = socket.shutdown(Shutdown::Both);
            return false;
        }
        flow.wrote(writer.traffic().total_bytes() - before);
        true
    };
    for outgoing in queue {
        loop {
            let mut pages = asked.owed.take_asked(ASKED_PAGES_PER_BATCH);
            let mut blocks = match pages.is_empty() {
                true => asked.owed_blocks.take_asked(ASKED_PAGES_PER_BATCH),
                false => Vec::new(),
            };
            if pages.is_empty() && blocks.is_empty() {
                let refused = asked
                    .dedup
                    .map_or_else(Vec::new, |dedup| dedup.take_refused(ASKED_PAGES_PER_BATCH));
                (pages, blocks) = split_locations(&refused);
            }
            if pages.is_empty() && blocks.is_empty() {
                break;
            }
            // One batch per space: refused references may name both.
            let spaces = [(&pages[..], &[][..]), (&[][..], &blocks[..])];
            for (pages, blocks) in spaces
                .into_iter()
                .filter(|(pages, blocks)| !pages.is_empty() || !blocks.is_empty())
            {
                let batch = match asked_batch(&asked, pages, blocks) {
                    Ok(batch) => batch,
                    Err(error) => {
                        flow.end(PeerOutcome::Failed(error));
                        let _ = socket.shutdown(Shutdown::Both);
                        return writer.traffic().clone();
                    }
                };
                if !send(batch, true) {
                    return writer.traffic().clone();
                }
            }
        }
        if let Outgoing::Frame(message) = outgoing {
            if !send(message, false) {
                break;
            }
        }
    }
    writer.traffic().clone()
}

/// Pages and blocks of `locations`, each in the locations' order.
fn split_locations(locations: &[Location]) -> (Vec<u32>, Vec<u32>) {
    let mut pages = Vec::new();
    let mut blocks = Vec::new();
    for &location in locations {
        match location {
            Location::Page(page) => pages.push(page),
            Location::Block { block, .. } => blocks.push(block),
        }
    }
    (pages, blocks)
}

/// One batch of the asked-for `pages`, or if there are none of `blocks`,
/// read now.
fn asked_batch(
    asked: &AskedPages<'_>,
    pages: &[u32],
    blocks: &[u32],
) -> Result<Message, MigrationError> {
    let mut builder = PageBatchBuilder::new(asked.compression, pages.len().max(blocks.len()))?;
    let mut content = Box::new([0; PAGE_SIZE]);
    if !pages.is_empty() {
        for &index in pages {
            asked.ram.read_page(index, &mut content);
            let _ = builder.push(index, &content);
        }
        return Ok(Message::PageBatch(builder.finish()?));
    }
    let disk = asked.disk.ok_or_else(|| {
        MigrationError::Invalid("the destination asked for disk blocks of a VM without one".into())
    })?;
    for &block in blocks {
        disk.read_block(block, &mut content)?;
        let _ = builder.push(block, &content);
    }
    Ok(Message::BlockBatch(BlockBatch {
        disk: 0,
        batch: builder.finish()?,
    }))
}

/// Reads the destination's replies until its verdict or a failure; returns
/// what it received. Pages asked for and references refused are recorded
/// in `asked`; `wake` tells the sender of them.
pub(crate) fn receive_frames(
    mut reader: FrameReader<BufReader<PeerStream>>,
    asked: AskedPages<'_>,
    wake: SyncSender<Outgoing>,
    flow: &Flow,
    socket: &PeerStream,
    timeout: Duration,
) -> Traffic {
    let failure = loop {
        let message = reader.recv().and_then(|message| {
            flow.received(&message)?;
            Ok(message)
        });
        match message {
            Ok(Message::Ack(_)) => {
                if let Err(error) = flow.acknowledged(Instant::now()) {
                    break error;
                }
            }
            Ok(Message::PageRequest(request)) => {
                // A full queue means the sender will look soon anyway.
                if asked.owed.ask(&request.pages) {
                    let _ = wake.try_send(Outgoing::Asked);
                }
            }
            Ok(Message::ResendContent(refused)) => match asked.dedup {
                Some(dedup) => {
                    dedup.refused(&refused.locations);
                    let _ = wake.try_send(Outgoing::Asked);
                }
                None => {
                    break MigrationError::Invalid(
                        "the destination refused references, but none were sent".into(),
                    )
                }
            },
            Ok(Message::BlockRequest(request)) => {
                if asked.owed_blocks.ask(&request.blocks) {
                    let _ = wake.try_send(Outgoing::Asked);
                }
            }
            Ok(Message::DestinationRunning(_)) => {
                if !flow.destination_running() {
                    flow.end(PeerOutcome::Running);
                    return reader.traffic().clone();
                }
            }
            Ok(Message::PostcopyComplete(_)) => {
                flow.end(PeerOutcome::Running);
                return reader.traffic().clone();
            }
            Ok(Message::Abort(abort)) => {
                break MigrationError::PeerAborted {
                    peer: Role::Destination,
                    reason: abort.reason,
                }
            }
            Ok(other) => unreachable!(
                "the conversation admitted {} from the destination",
                other.message_type()
            ),
            Err(error) => break MigrationError::link(error, Role::Destination, timeout),
        }
    };
    flow.end(PeerOutcome::Failed(failure));
    let _ = socket.shutdown(Shutdown::Both);
    reader.traffic().clone()
}

//! The destination's loop: pages into RAM (acknowledging each batch, which
//! is how the source measures the link), the digest check in test mode,
//! device state into QEMU, then `cont`. In post-copy the loop goes on after
//! the switch, installing the pages that arrive while a fault thread asks
//! for those the destination touches first, and QEMU loads the device state
//! and resumes on a thread of its own (it may fault while it loads).

use std::io::BufReader;
use std::net::Shutdown;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mllm_control::{DestinationPostcopyReport, DestinationReport};
use mllm_core::memory::PageRange;
use mllm_core::PageSet;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use mllm_tls::PeerStream;
use mllm_wire::{
    Abort, Ack, BlockBatch, BlockRequest, Conversation, DestinationRunning, DiskDigest,
    FrameReader, FrameWriter, Location, Message, PageBatch, PageBatchDecoder, PageContent,
    PageRequest, PendingBlocks, PostcopyComplete, RamDigest, ResumeAccept, Role, TrafficClass,
};
use serde_json::json;

use super::postcopy::Postcopy;
use super::references::References;
use super::resumes::{PostcopyResumes, Registration, ResumedLink};
use super::IncomingAbort;
use super::IncomingMigration;
use crate::device_state::IncomingDeviceState;
use crate::disk::{TrackedDisk, ZERO_BLOCK};
use crate::error::{Context, MigrationError};
use crate::guest_ram::GuestRam;
use crate::peer::{close_gracefully, PeerLink};
use crate::prehash::Prehasher;
use crate::vm_setup::hook_socket_of;

type Result<T, E = MigrationError> = std::result::Result<T, E>;

/// How often the destination QEMU is asked whether it is still there while
/// pages arrive, so its death aborts the migration before the switch.
const QEMU_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Mismatching digest ranges named in the error; the rest are counted.
const MISMATCHES_SHOWN: usize = 8;
/// How long an aborting destination keeps draining the link so its `Abort`
/// reaches the source (which stops sending once it reads it).
const ABORT_LINGER: Duration = Duration::from_secs(3);
/// Pages or blocks per request when a resumed link asks again for those
/// the guest waits for.
const ITEMS_PER_REQUEST: usize = 64;

/// The sending half of the link, shared with the post-copy threads; every
/// message in and out is checked against the conversation it holds. In
/// post-copy the link may be replaced by a resumed one.
#[derive(Debug)]
struct Outbox {
    state: Mutex<OutboxState>,
    /// The current connection, to shut down without waiting for a writer
    /// stuck on it.
    socket: Mutex<PeerStream>,
    /// False from a link failure until a resumed link replaces it.
    connected: AtomicBool,
    timeout: Duration,
}

#[derive(Debug)]
struct OutboxState {
    writer: FrameWriter<PeerStream>,
    conversation: Conversation,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, message: &Message) -> Result<()> {
        let mut state = self.lock();
        state.conversation.sending(message)?;
        let sent = state.writer.send(message);
        drop(state);
        sent.map_err(|e| {
            // Whoever reads the link learns of it too.
            self.disconnect();
            MigrationError::link(e, Role::Source, self.timeout)
        })
    }

    /// Sends `message` unless the link is down or goes down now; returns
    /// whether it went. A lost request or receipt is made up for once the
    /// source resumes (see `Receiver::resume`).
    fn send_unless_down(&self, message: &Message) -> Result<bool> {
        if !self.connected.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match self.send(message) {
            Ok(()) => Ok(true),
            Err(error) if error.is_link_failure() => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The link failed: nothing more goes out on it.
    fn disconnect(&self) {
        self.connected.store(false, Ordering::Relaxed);
        let _ = self.socket().shutdown(Shutdown::Both);
    }

    /// A resumed link replaces the failed one.
    fn reconnect(
        &self,
        writer: FrameWriter<PeerStream>,
        conversation: Conversation,
        socket: PeerStream,
    ) {
        let mut state = self.lock();
        state.writer = writer;
        state.conversation = conversation;
        *self.socket() = socket;
        self.connected.store(true, Ordering::Relaxed);
    }

    fn socket(&self) -> MutexGuard<'_, PeerStream> {
        self.socket.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn received(&self, message: &Message) -> Result<()> {
        self.lock().conversation.received(message)?;
        Ok(())
    }

    fn bytes_sent(&self) -> u64 {
        self.lock().writer.traffic().total_bytes()
    }
}

/// What the VM's start (device state loaded, `cont`) took.
struct Started {
    device_state_loaded_us: u64,
    running_us: u64,
}

pub(super) struct Receiver<'a> {
    vm: &'a QemuProcess,
    ram: GuestRam,
    /// The VM's disks here, in the request's order.
    disks: &'a [Arc<TrackedDisk>],
    /// Per disk, the blocks it held before the migration that nothing has
    /// written since: zeroed when the source stops (see `mllm_wire`'s
    /// conversation, "References").
    held: Vec<PageSet>,
    hook_socket: Option<PathBuf>,
    device_state: Option<IncomingDeviceState>,
    reader: FrameReader<BufReader<PeerStream>>,
    outbox: Arc<Outbox>,
    abort: IncomingAbort,
    decoder: PageBatchDecoder,
    references: References,
    vm_name: String,
    started_us: u64,
    rounds: u32,
    pages: u64,
    zero_pages: u64,
    blocks: u64,
    /// The source left disk blocks for after the switch.
    disk_postcopy: bool,
    device_state_bytes: u64,
    verified: bool,
    /// Test mode: time spent on digests before the VM ran here.
    verifying: Duration,
    /// Test mode: hashes what stopped changing until the first check.
    prehasher: Option<Prehasher>,
    qemu_checked: Instant,
    /// Names this migration when the source resumes its post-copy.
    migration_id: u128,
    /// Where the source agent connected from, for an operator's error.
    source_host: String,
    recovery_timeout: Duration,
    resumes: PostcopyResumes,
    /// Post-copy after the hand-over: where a resumed link arrives.
    registration: Option<Registration>,
}

impl<'a> Receiver<'a> {
    /// Receives the migration `accepted` (whose acceptance was sent) into
    /// `vm`, its RAM and device-state listener prepared.
    pub fn new(
        vm: &'a QemuProcess,
        mut ram: GuestRam,
        disks: &'a [Arc<TrackedDisk>],
        held: Vec<PageSet>,
        device_state: IncomingDeviceState,
        accepted: IncomingMigration,
    ) -> Receiver<'a> {
        let IncomingMigration {
            link,
            conversation,
            request,
            timeout,
            recovery_timeout,
            resumes,
            started_us,
            abort,
        } = accepted;
        let PeerLink {
            reader,
            writer,
            socket,
            ..
        } = link;
        let source_host = socket.describe_peer();
        // The source will send digests: hashing what arrives as it settles
        // leaves the paused VM less to wait for.
        let prehasher = request.verify.then(|| {
            ram.keep_digests();
            let reader = ram
                .reader()
                .map_err(|error| tracing::warn!(error = %error.chain(), "test mode: no second mapping of guest RAM to hash ahead of the switch"))
                .ok();
            Prehasher::start(reader, disks.to_vec())
        });
        Receiver {
            vm,
            ram,
            disks,
            held,
            hook_socket: hook_socket_of(&vm.config),
            device_state: Some(device_state),
            reader,
            outbox: Arc::new(Outbox {
                state: Mutex::new(OutboxState {
                    writer,
                    conversation,
                }),
                socket: Mutex::new(socket),
                connected: AtomicBool::new(true),
                timeout,
            }),
            abort,
            decoder: PageBatchDecoder::new(),
            references: References::new(),
            vm_name: request.vm_name,
            started_us,
            rounds: 0,
            pages: 0,
            zero_pages: 0,
            blocks: 0,
            disk_postcopy: false,
            device_state_bytes: 0,
            verified: false,
            verifying: Duration::ZERO,
            prehasher,
            qemu_checked: Instant::now(),
            migration_id: request.migration_id,
            source_host,
            recovery_timeout,
            resumes,
            registration: None,
        }
    }

    /// Receives until the VM runs here (and, in post-copy, holds every
    /// page); on failure tells the source why.
    pub fn run(mut self) -> Result<DestinationReport> {
        match self.receive() {
            Ok(report) => Ok(report),
            Err(error) => {
                for disk in self.disks {
                    disk.abandon_remote(&error.chain());
                }
                let abort = Message::Abort(Abort {
                    reason: error.chain(),
                });
                // After the source's own abort there is nobody to tell; the
                // source learns of a broken link by itself.
                if self.outbox.send(&abort).is_ok() {
                    close_gracefully(&self.outbox.socket(), ABORT_LINGER);
                }
                Err(error)
            }
        }
    }

    fn receive(&mut self) -> Result<DestinationReport> {
        loop {
            match self.next_message()? {
                Message::PageBatch(batch) => self.write_pages(&batch)?,
                Message::BlockBatch(blocks) => self.write_blocks(&blocks)?,
                Message::DiskDigest(digest) => self.timed(|this| this.verify_disk(&digest))?,
                Message::RoundEnd(end) => {
                    self.rounds = end.round;
                    tracing::info!(round = end.round, pages = end.pages, "round received");
                }
                Message::SourceStopped(_) => {
                    self.references.source_stopped()?;
                    self.drop_held_content()?;
                    tracing::info!("source VM paused: final round");
                }
                Message::RamDigest(digest) => self.timed(|this| this.verify(&digest))?,
                Message::PendingBlocks(pending) => self.arm_disk(&pending)?,
                Message::BlockDigests(digests) => {
                    self.timed(|this| this.disk(digests.disk)?.expect_blocks(&digests.blocks))?
                }
                Message::PendingPages(pending) => return self.receive_postcopy(&pending.ranges),
                Message::DeviceState(state) => self.write_device_state(&state.chunk)?,
                Message::HandOver(end) => {
                    self.take_hand_over()?;
                    let started = start_vm(
                        self.vm,
                        self.take_device_state()?,
                        end.device_state_bytes,
                        &self.outbox,
                        self.started_us,
                    )?;
                    self.sync_disks();
                    self.await_release();
                    return Ok(self.report(&started, None));
                }
                Message::Abort(abort) => return Err(aborted(abort)),
                other => unreachable!(
                    "the conversation admitted {} from the source while receiving",
                    other.message_type()
                ),
            }
        }
    }

    /// After the source named the pending pages: install what arrives, ask
    /// for what is touched, start the VM once the device state is in, and
    /// report once every pending page is here.
    fn receive_postcopy(&mut self, pending: &[PageRange]) -> Result<DestinationReport> {
        let hook_socket = self.hook_socket.clone().ok_or_else(|| {
            MigrationError::Invalid(
                "post-copy needs the hook preloaded into the destination QEMU, and this QEMU \
                 has none"
                    .into(),
            )
        })?;
        let postcopy = Postcopy::arm(self.vm, &self.ram, &hook_socket, pending)
            .during("arming post-copy on the destination")?;
        let stop = AtomicBool::new(false);
        let outbox = Arc::clone(&self.outbox);
        std::thread::scope(|scope| {
            let faults = scope.spawn(|| {
                postcopy.serve_faults(&stop, |ask| outbox.send_unless_down(&ask).map(drop))
            });
            let received = self.receive_after_switch(&postcopy, scope);
            stop.store(true, Ordering::Relaxed);
            let served = faults.join().expect("the fault thread panicked");
            let started = received?;
            served.during("serving missing-page faults")?;
            let report = postcopy.finish(self.verified)?;
            let disk_report = match self.disks.first() {
                Some(disk) if self.disk_postcopy => Some(disk.finish_remote(self.verified)?),
                _ => None,
            };
            self.sync_disks();
            let mut report = self.report(&started, Some(report));
            report.disk_postcopy = disk_report;
            Ok(report)
        })
    }

    fn receive_after_switch<'scope>(
        &mut self,
        postcopy: &'scope Postcopy,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) -> Result<Started>
    where
        'a: 'scope,
    {
        let mut starting = None;
        loop {
            let handled = self
                .next_message()
                .and_then(|message| self.after_switch(message, postcopy, scope, &mut starting));
            match handled {
                Ok(Flow::Continue) => {}
                Ok(Flow::Released) => break,
                // The VM runs here (or is starting) and the pages it lacks
                // are on the source: the link's failure is waited out.
                Err(error) if self.registration.is_some() && error.is_link_failure() => {
                    if postcopy.receipt_sent() {
                        tracing::warn!(
                            error = %error.chain(),
                            "the source's release did not arrive; every page is here"
                        );
                        break;
                    }
                    self.resume(postcopy, error)?;
                }
                Err(error) => return Err(error),
            }
        }
        if let Some(registration) = &mut self.registration {
            registration.finished();
        }
        starting
            .expect("the release comes after the VM started")
            .join()
            .expect("the thread starting the VM panicked")
    }

    /// One message of the post-copy phase.
    fn after_switch<'scope>(
        &mut self,
        message: Message,
        postcopy: &'scope Postcopy,
        scope: &'scope std::thread::Scope<'scope, '_>,
        starting: &mut Option<std::thread::ScopedJoinHandle<'scope, Result<Started>>>,
    ) -> Result<Flow>
    where
        'a: 'scope,
    {
        match message {
            Message::PageBatch(batch) => {
                self.install_pages(&batch, postcopy)?;
                self.send_receipt_if_due(postcopy)?;
            }
            Message::BlockBatch(blocks) => {
                self.install_blocks(&blocks)?;
                self.send_receipt_if_due(postcopy)?;
            }
            Message::RamDigest(digest) => self.timed(|this| {
                let ours = postcopy.digest_present(&this.ram);
                this.compare(&digest, &ours)
            })?,
            Message::PageDigests(digests) => self.timed(|_| postcopy.expect(&digests))?,
            Message::DiskDigest(digest) => self.timed(|this| this.verify_disk(&digest))?,
            Message::BlockDigests(digests) => {
                self.timed(|this| this.disk(digests.disk)?.expect_blocks(&digests.blocks))?
            }
            Message::DeviceState(state) => self.write_device_state(&state.chunk)?,
            Message::HandOver(end) => {
                self.take_hand_over()?;
                // From here the VM runs here whatever becomes of the link,
                // so a source that lost it may come back to finish.
                let current = self
                    .outbox
                    .socket()
                    .try_clone()
                    .map_err(|e| MigrationError::io("setting up the agent link's socket", e))?;
                self.registration = Some(self.resumes.register(
                    self.migration_id,
                    &self.vm_name,
                    current,
                ));
                let (vm, outbox, started_us, disks) = (
                    self.vm,
                    Arc::clone(&self.outbox),
                    self.started_us,
                    self.disks,
                );
                let device_state = self.take_device_state()?;
                *starting = Some(scope.spawn(move || {
                    let started = start_vm(
                        vm,
                        device_state,
                        end.device_state_bytes,
                        &outbox,
                        started_us,
                    )?;
                    // The last page or block may have come before the start.
                    postcopy.vm_started();
                    send_receipt_if_due(&outbox, postcopy, disks)?;
                    Ok(started)
                }));
            }
            // The source's release, once it has read our receipt.
            Message::Ack(_) => return Ok(Flow::Released),
            Message::Abort(abort) => return Err(aborted(abort)),
            other => unreachable!(
                "the conversation admitted {} from the source in post-copy",
                other.message_type()
            ),
        }
        Ok(Flow::Continue)
    }

    /// The link failed in post-copy: waits for the source to resume on a
    /// new connection, tells it what is still missing and asks again for
    /// what the guest waits for. Fails, saying the guest cannot continue,
    /// when no source comes back within the recovery timeout.
    fn resume(&mut self, postcopy: &Postcopy, failure: MigrationError) -> Result<()> {
        let lost_at = Instant::now();
        let mut failure = failure;
        loop {
            self.outbox.disconnect();
            tracing::warn!(
                error = %failure.chain(),
                missing_pages = postcopy.missing_count(),
                "the link to the source failed in post-copy; waiting for it to resume"
            );
            let registration = self
                .registration
                .as_ref()
                .expect("only a registered post-copy resumes");
            let Some(ResumedLink { link, conversation }) =
                registration.wait(self.recovery_timeout.saturating_sub(lost_at.elapsed()))
            else {
                return Err(MigrationError::SourceUnreachable {
                    missing_pages: postcopy.missing_count(),
                    missing_blocks: self.disks.iter().map(|disk| disk.missing_blocks()).sum(),
                    source_host: self.source_host.clone(),
                    unreachable_for: lost_at.elapsed(),
                    last_failure: Box::new(failure),
                });
            };
            let PeerLink {
                reader,
                writer,
                socket,
                ..
            } = link;
            if let Ok(current) = socket.try_clone() {
                registration.serving_on(current);
            }
            self.reader = reader;
            // Batches on the new link start afresh, as the source's do.
            self.decoder = PageBatchDecoder::new();
            self.outbox.reconnect(writer, conversation, socket);
            match self.answer_resume(postcopy) {
                Ok(()) => {
                    tracing::info!(
                        after = ?lost_at.elapsed(),
                        missing_pages = postcopy.missing_count(),
                        "the source resumed the post-copy"
                    );
                    return Ok(());
                }
                Err(error) if error.is_link_failure() => failure = error,
                Err(error) => return Err(error),
            }
        }
    }

    /// What a resumed source must send: every page and block still missing
    /// (the truth, whatever was in flight), those the guest waits for
    /// first; and the receipt if nothing is missing.
    fn answer_resume(&self, postcopy: &Postcopy) -> Result<()> {
        self.outbox.send(&Message::ResumeAccept(ResumeAccept {
            pages: postcopy.missing_ranges(),
            blocks: (0..)
                .zip(self.disks)
                .flat_map(|(index, disk)| {
                    disk.missing_block_ranges()
                        .into_iter()
                        .map(move |range| (index, range))
                })
                .collect(),
        }))?;
        for pages in postcopy.awaited().chunks(ITEMS_PER_REQUEST) {
            self.outbox.send(&Message::PageRequest(PageRequest {
                pages: pages.to_vec(),
            }))?;
        }
        for (index, disk) in (0..).zip(self.disks) {
            for blocks in disk.awaited_blocks().chunks(ITEMS_PER_REQUEST) {
                self.outbox.send(&Message::BlockRequest(BlockRequest {
                    disk: index,
                    blocks: blocks.to_vec(),
                }))?;
            }
        }
        self.send_receipt_if_due(postcopy)
    }

    /// The next message, checked against the conversation.
    fn next_message(&mut self) -> Result<Message> {
        let message = self
            .reader
            .recv()
            .map_err(|e| MigrationError::link(e, Role::Source, self.outbox.timeout))?;
        self.outbox.received(&message)?;
        Ok(message)
    }

    fn take_device_state(&mut self) -> Result<IncomingDeviceState> {
        self.device_state
            .take()
            .ok_or_else(|| MigrationError::Invalid("device state ended twice".into()))
    }

    fn write_device_state(&mut self, chunk: &[u8]) -> Result<()> {
        self.device_state_bytes += chunk.len() as u64;
        self.device_state
            .as_mut()
            .ok_or_else(|| MigrationError::Invalid("device state arrived after its end".into()))?
            .write(chunk)
    }

    fn write_pages(&mut self, batch: &PageBatch) -> Result<()> {
        let pages = self.ram.pages();
        for (index, content) in self.decoder.decode(batch)? {
            if index >= pages {
                return Err(MigrationError::Invalid(format!(
                    "the source sent page {index}, beyond the {pages} pages of guest RAM"
                )));
            }
            let target = Location::Page(index);
            match content {
                PageContent::Zero => {
                    self.ram.zero_page(index);
                    self.zero_pages += 1;
                }
                PageContent::Data(data) => self.ram.write_page(index, data),
                PageContent::Reference(reference) => {
                    match self
                        .references
                        .resolve(&reference, target, &self.ram, self.disks)?
                    {
                        Some(data) => self.ram.write_page(index, data),
                        None => continue,
                    }
                }
            }
            self.references.written(target);
        }
        self.pages += batch.pages.len() as u64;
        self.acknowledge()?;
        if self.qemu_checked.elapsed() >= QEMU_CHECK_INTERVAL {
            self.qemu_checked = Instant::now();
            self.vm
                .qmp
                .execute("query-status", json!({}))
                .map_err(|e| MigrationError::qemu("the destination QEMU failed", e))?;
        }
        Ok(())
    }

    /// Acknowledges the batch just written, after asking for the content of
    /// the references it refused: a source holding every acknowledgement
    /// then knows every refusal.
    fn acknowledge(&mut self) -> Result<()> {
        if let Some(refused) = self.references.take_refused() {
            self.outbox.send(&Message::ResendContent(refused))?;
        }
        self.outbox.send(&Message::Ack(Ack))
    }

    fn disk(&self, disk: u16) -> Result<&'a Arc<TrackedDisk>> {
        self.disks.get(usize::from(disk)).ok_or_else(|| {
            MigrationError::Invalid(format!(
                "the source named disk {disk}, but the VM has {} disks",
                self.disks.len()
            ))
        })
    }

    /// Post-copy: the source's pending blocks are stale here; guest
    /// requests that need one ask the source through the outbox.
    fn arm_disk(&mut self, pending: &PendingBlocks) -> Result<()> {
        let disk = self.disk(pending.disk)?;
        let (outbox, index) = (Arc::clone(&self.outbox), pending.disk);
        disk.arm_remote(
            &pending.ranges,
            Arc::new(move |blocks| {
                outbox
                    .send_unless_down(&Message::BlockRequest(BlockRequest {
                        disk: index,
                        blocks,
                    }))
                    .map(drop)
            }),
        )?;
        self.disk_postcopy = true;
        tracing::info!(blocks = disk.missing_blocks(), "disk post-copy armed");
        Ok(())
    }

    /// After the switch: blocks pushed or asked for, installed unless the
    /// guest overwrote them meanwhile.
    fn install_blocks(&mut self, blocks: &BlockBatch) -> Result<()> {
        let disk = self.disk(blocks.disk)?;
        for (index, content) in self.decoder.decode(&blocks.batch)? {
            let data = match content {
                PageContent::Zero => &ZERO_BLOCK,
                PageContent::Data(data) => data,
                PageContent::Reference(_) => return Err(reference_after_switch()),
            };
            disk.install_block(index, data)?;
        }
        self.blocks += blocks.batch.pages.len() as u64;
        self.outbox.send(&Message::Ack(Ack))
    }

    fn send_receipt_if_due(&self, postcopy: &Postcopy) -> Result<()> {
        send_receipt_if_due(&self.outbox, postcopy, self.disks)
    }

    fn write_blocks(&mut self, blocks: &BlockBatch) -> Result<()> {
        let disk = self.disk(blocks.disk)?;
        for (index, content) in self.decoder.decode(&blocks.batch)? {
            if index >= disk.blocks() {
                return Err(MigrationError::Invalid(format!(
                    "the source sent block {index}, beyond the {} blocks of disk {}",
                    disk.blocks(),
                    blocks.disk
                )));
            }
            let target = Location::Block {
                disk: blocks.disk,
                block: index,
            };
            match content {
                PageContent::Zero => disk.zero_block(index)?,
                PageContent::Data(data) => disk.write_block(index, data)?,
                PageContent::Reference(reference) => {
                    match self
                        .references
                        .resolve(&reference, target, &self.ram, self.disks)?
                    {
                        Some(data) => disk.write_block(index, data)?,
                        None => continue,
                    }
                }
            }
            self.references.written(target);
            if let Some(held) = self.held.get_mut(usize::from(blocks.disk)) {
                held.remove(index);
            }
        }
        self.blocks += blocks.batch.pages.len() as u64;
        self.acknowledge()
    }

    /// The source stopped, and with it its references: a block held from
    /// before that the migration did not write is not the source's, and
    /// must read as zeros like every block the source does not send.
    fn drop_held_content(&mut self) -> Result<()> {
        for (disk, held) in self.disks.iter().zip(&mut self.held) {
            if !held.is_empty() {
                tracing::info!(
                    disk = %disk.path().display(),
                    blocks = held.count(),
                    "zeroing the blocks held from before that the source did not send"
                );
                disk.zero_blocks(held)?;
                *held = PageSet::new(held.universe());
            }
        }
        Ok(())
    }

    /// Test mode: the disk must equal the source's at the switch.
    fn verify_disk(&mut self, theirs: &DiskDigest) -> Result<()> {
        let disk = self.disk(theirs.disk)?;
        // Pending blocks are stale here: their digests come one by one.
        let ours = disk.digest_present()?;
        let mismatches = theirs.digest.mismatches(&ours);
        if let Some(first) = mismatches.first() {
            return Err(MigrationError::MemoryMismatch(format!(
                "DISK DIGEST MISMATCH: {} of {} ranges of disk {} differ from the source's \
                 (first: blocks {}..{}); refusing to start the VM",
                mismatches.len(),
                theirs.digest.ranges.len(),
                theirs.disk,
                first.first_page,
                first.first_page + first.page_count
            )));
        }
        tracing::info!(disk = theirs.disk, "disk digests match");
        Ok(())
    }

    /// The VM runs on these disks now, and the source lets its copy go:
    /// what arrived must survive a crash of this host. A failure is only
    /// logged: the VM runs, and its own flushes will retry.
    fn sync_disks(&self) {
        for disk in self.disks {
            if let Err(error) = disk.sync() {
                tracing::warn!(disk = %disk.path().display(), error = %error.chain(), "syncing a migrated disk failed");
            }
        }
    }

    /// After the switch every page the source sends is a pending one: it is
    /// installed through the fault mechanism, never written behind it.
    fn install_pages(&mut self, batch: &PageBatch, postcopy: &Postcopy) -> Result<()> {
        for (index, content) in self.decoder.decode(batch)? {
            let data = match content {
                PageContent::Zero => {
                    self.zero_pages += 1;
                    &ZERO_BLOCK
                }
                PageContent::Data(data) => data,
                PageContent::Reference(_) => return Err(reference_after_switch()),
            };
            postcopy.install(index, data)?;
        }
        self.pages += batch.pages.len() as u64;
        self.outbox.send(&Message::Ack(Ack))
    }

    /// Runs a test-mode check, which the paused VM waits for, timed.
    fn timed(&mut self, check: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let started = Instant::now();
        if let Some(prehasher) = self.prehasher.take() {
            prehasher.stop();
        }
        let checked = check(self);
        self.verifying += started.elapsed();
        tracing::debug!(
            took_ms = started.elapsed().as_secs_f64() * 1000.0,
            "test-mode check while the VM is paused"
        );
        checked
    }

    /// Test mode: every page here must equal the source's at the switch.
    fn verify(&mut self, theirs: &RamDigest) -> Result<()> {
        let ours = self.ram.digest();
        self.compare(theirs, &ours)
    }

    fn compare(&mut self, theirs: &RamDigest, ours: &RamDigest) -> Result<()> {
        let mismatches = theirs.mismatches(ours);
        if !mismatches.is_empty() {
            let shown: Vec<String> = mismatches
                .iter()
                .take(MISMATCHES_SHOWN)
                .map(ToString::to_string)
                .collect();
            return Err(MigrationError::MemoryMismatch(format!(
                "RAM DIGEST MISMATCH: {} of {} ranges differ from the source's ({}{}); \
                 the destination's memory is not the source's, refusing to start the VM",
                mismatches.len(),
                theirs.ranges.len(),
                shown.join(", "),
                if mismatches.len() > MISMATCHES_SHOWN {
                    ", ..."
                } else {
                    ""
                }
            )));
        }
        self.verified = true;
        tracing::info!(ranges = ours.ranges.len(), "RAM digests match");
        Ok(())
    }

    /// Waits for the source's release after the VM started here. The VM is
    /// ours since the hand-over and needs nothing more from the source, so
    /// a release that does not come is only worth a warning.
    fn await_release(&mut self) {
        match self.next_message() {
            Ok(Message::Ack(_)) => {}
            Ok(Message::Abort(abort)) => unreachable!(
                "the conversation admits no abort from the source after the hand-over: {}",
                abort.reason
            ),
            Ok(other) => unreachable!(
                "the conversation admitted {} while awaiting the release",
                other.message_type()
            ),
            Err(error) => tracing::warn!(
                error = %error.chain(),
                "the source's release did not arrive; the VM runs here, as handed over"
            ),
        }
    }

    fn report(
        &self,
        started: &Started,
        postcopy: Option<DestinationPostcopyReport>,
    ) -> DestinationReport {
        let received = self.reader.traffic();
        DestinationReport {
            vm_name: self.vm_name.clone(),
            rounds: self.rounds,
            pages_received: self.pages,
            zero_pages: self.zero_pages,
            memory_bytes: received.class_bytes(TrafficClass::Memory),
            blocks_received: self.blocks,
            disk_bytes: received.class_bytes(TrafficClass::Disk),
            device_state_bytes: self.device_state_bytes,
            link_bytes_received: received.total_bytes(),
            link_bytes_sent: self.outbox.bytes_sent(),
            verified: self.verified,
            verify_ms: self.verifying.as_secs_f64() * 1000.0,
            references_copied: self.references.copied(),
            references_refused: self.references.refused(),
            started_us: self.started_us,
            device_state_loaded_us: started.device_state_loaded_us,
            running_us: started.running_us,
            postcopy,
            disk_postcopy: None,
        }
    }
}

/// Finishes QEMU's load of the device state, runs the VM and tells the
/// source.
fn start_vm(
    vm: &QemuProcess,
    device_state: IncomingDeviceState,
    total_bytes: u64,
    outbox: &Outbox,
    started_us: u64,
) -> Result<Started> {
    device_state.finish(vm, total_bytes, outbox.timeout)?;
    let device_state_loaded_us = wall_clock_us();
    if let Err(error) = vm.qmp.execute("cont", json!({})) {
        // The source resumes on our abort, so the VM must not run here
        // whatever `cont` did before it failed.
        make_sure_it_cannot_run(vm);
        return Err(MigrationError::qemu("starting the destination VM", error));
    }
    let running_us = vm
        .qmp
        .wait_event(
            "RESUME of the destination VM",
            Duration::from_secs(10),
            |e| e.name == "RESUME" && e.timestamp_us >= started_us,
        )
        .map(|event| event.timestamp_us)
        .unwrap_or_else(|_| wall_clock_us());
    if let Err(error) = outbox.send(&Message::DestinationRunning(DestinationRunning)) {
        // The VM is ours since the hand-over; the source stays paused
        // without this and says it cannot tell.
        tracing::warn!(error = %error.chain(), "could not tell the source the VM runs here");
    }
    Ok(Started {
        device_state_loaded_us,
        running_us,
    })
}

/// Whether the post-copy phase goes on after a message.
enum Flow {
    Continue,
    /// The source let the VM go.
    Released,
}

/// Sends the receipt once it is due; on a link that is down it is due
/// again once a resumed link is up.
fn send_receipt_if_due(
    outbox: &Outbox,
    postcopy: &Postcopy,
    disks: &[Arc<TrackedDisk>],
) -> Result<()> {
    if postcopy.receipt_due(blocks_done(disks))
        && !outbox.send_unless_down(&Message::PostcopyComplete(PostcopyComplete))?
    {
        postcopy.receipt_lost();
    }
    Ok(())
}

/// Whether no disk waits for blocks from the source.
fn blocks_done(disks: &[Arc<TrackedDisk>]) -> bool {
    disks.iter().all(|disk| disk.missing_blocks() == 0)
}

/// Pauses the VM, or kills its QEMU if it does not answer.
fn make_sure_it_cannot_run(vm: &QemuProcess) {
    if vm.qmp.execute("stop", json!({})).is_err() {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child's, which cannot be reaped (and reused) while `vm` lives.
        unsafe { libc::kill(vm.pid().cast_signed(), libc::SIGKILL) };
    }
}

impl Receiver<'_> {
    /// From here the VM is this side's, unless this agent aborted the
    /// migration just before (then it must not run here).
    fn take_hand_over(&self) -> Result<(), MigrationError> {
        if self.abort.take_hand_over() {
            Ok(())
        } else {
            Err(MigrationError::Invalid(
                "this agent aborted the migration before the hand-over".into(),
            ))
        }
    }
}

fn reference_after_switch() -> MigrationError {
    MigrationError::Invalid("the source sent a reference after the switch".into())
}

fn aborted(abort: Abort) -> MigrationError {
    MigrationError::PeerAborted {
        peer: Role::Source,
        reason: abort.reason,
    }
}

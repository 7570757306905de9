//! The destination's loop: pages into RAM (acknowledging each batch, which
//! is how the source measures the link), the digest check in test mode,
//! device state into QEMU, then `cont`.

use std::time::{Duration, Instant};

use mllm_control::DestinationReport;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use mllm_wire::{
    Abort, Ack, Conversation, DestinationRunning, Message, PageBatch, PageBatchDecoder,
    PageContent, RamDigest, Role, TrafficClass,
};
use serde_json::json;

use super::IncomingMigration;
use crate::device_state::IncomingDeviceState;
use crate::error::MigrationError;
use crate::guest_ram::GuestRam;
use crate::peer::PeerLink;

type Result<T, E = MigrationError> = std::result::Result<T, E>;

/// How often the destination QEMU is asked whether it is still there while
/// pages arrive, so its death aborts the migration before the switch.
const QEMU_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Mismatching digest ranges named in the error; the rest are counted.
const MISMATCHES_SHOWN: usize = 8;
/// How long an aborting destination keeps draining the link so its `Abort`
/// reaches the source (which stops sending once it reads it).
const ABORT_LINGER: Duration = Duration::from_secs(3);

pub(super) struct Receiver<'a> {
    vm: &'a QemuProcess,
    ram: GuestRam,
    device_state: Option<IncomingDeviceState>,
    link: PeerLink,
    /// Every message in and out is checked against it.
    conversation: Conversation,
    timeout: Duration,
    decoder: PageBatchDecoder,
    vm_name: String,
    started_us: u64,
    rounds: u32,
    pages: u64,
    zero_pages: u64,
    device_state_bytes: u64,
    verified: bool,
    qemu_checked: Instant,
}

impl<'a> Receiver<'a> {
    /// Receives the migration `accepted` (whose acceptance was sent) into
    /// `vm`, its RAM and device-state listener prepared.
    pub fn new(
        vm: &'a QemuProcess,
        ram: GuestRam,
        device_state: IncomingDeviceState,
        accepted: IncomingMigration,
    ) -> Receiver<'a> {
        let IncomingMigration {
            link,
            conversation,
            request,
            timeout,
            started_us,
        } = accepted;
        Receiver {
            vm,
            ram,
            device_state: Some(device_state),
            link,
            conversation,
            timeout,
            decoder: PageBatchDecoder::new(),
            vm_name: request.vm_name,
            started_us,
            rounds: 0,
            pages: 0,
            zero_pages: 0,
            device_state_bytes: 0,
            verified: false,
            qemu_checked: Instant::now(),
        }
    }

    /// Receives until the VM runs here; on failure tells the source why.
    pub fn run(mut self) -> Result<DestinationReport> {
        match self.receive() {
            Ok(report) => Ok(report),
            Err(error) => {
                let abort = Message::Abort(Abort {
                    reason: error.chain(),
                });
                // After the source's own abort there is nobody to tell; the
                // source learns of a broken link by itself.
                if self.send(&abort).is_ok() {
                    self.link.close_gracefully(ABORT_LINGER);
                }
                Err(error)
            }
        }
    }

    fn receive(&mut self) -> Result<DestinationReport> {
        loop {
            match self.next_message()? {
                Message::PageBatch(batch) => self.write_pages(&batch)?,
                Message::RoundEnd(end) => {
                    self.rounds = end.round;
                    tracing::info!(round = end.round, pages = end.pages, "round received");
                }
                Message::SourceStopped(_) => tracing::info!("source VM paused: final round"),
                Message::RamDigest(digest) => self.verify(&digest)?,
                Message::DeviceState(state) => {
                    self.device_state_bytes += state.chunk.len() as u64;
                    self.device_state()?.write(&state.chunk)?;
                }
                Message::DeviceStateEnd(end) => return self.start_vm(end.total_bytes),
                Message::Abort(abort) => {
                    return Err(MigrationError::PeerAborted {
                        peer: Role::Source,
                        reason: abort.reason,
                    })
                }
                other => unreachable!(
                    "the conversation admitted {} from the source while receiving",
                    other.message_type()
                ),
            }
        }
    }

    /// The next message, checked against the conversation.
    fn next_message(&mut self) -> Result<Message> {
        let message = self.link.reader.recv().map_err(|e| self.link.failure(e))?;
        self.conversation.received(&message)?;
        Ok(message)
    }

    fn send(&mut self, message: &Message) -> Result<()> {
        self.conversation.sending(message)?;
        let sent = self.link.writer.send(message);
        sent.map_err(|e| self.link.failure(e))
    }

    fn device_state(&mut self) -> Result<&mut IncomingDeviceState> {
        self.device_state
            .as_mut()
            .ok_or_else(|| MigrationError::Invalid("device state arrived after its end".into()))
    }

    fn write_pages(&mut self, batch: &PageBatch) -> Result<()> {
        let pages = self.ram.pages();
        for (index, content) in self.decoder.decode(batch)? {
            if index >= pages {
                return Err(MigrationError::Invalid(format!(
                    "the source sent page {index}, beyond the {pages} pages of guest RAM"
                )));
            }
            match content {
                PageContent::Zero => {
                    self.ram.zero_page(index);
                    self.zero_pages += 1;
                }
                PageContent::Data(data) => self.ram.write_page(index, data),
            }
        }
        self.pages += batch.pages.len() as u64;
        self.send(&Message::Ack(Ack))?;
        if self.qemu_checked.elapsed() >= QEMU_CHECK_INTERVAL {
            self.qemu_checked = Instant::now();
            self.vm
                .qmp
                .execute("query-status", json!({}))
                .map_err(|e| MigrationError::qemu("the destination QEMU failed", e))?;
        }
        Ok(())
    }

    /// Test mode: every page here must equal the source's at the switch.
    fn verify(&mut self, theirs: &RamDigest) -> Result<()> {
        let ours = self.ram.digest();
        let mismatches = theirs.mismatches(&ours);
        if !mismatches.is_empty() {
            let shown: Vec<String> = mismatches
                .iter()
                .take(MISMATCHES_SHOWN)
                .map(|r| format!("pages {}..{}", r.first_page, r.first_page + r.page_count))
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

    /// Finishes QEMU's load, runs the VM, and waits for the source to
    /// confirm it released its copy.
    fn start_vm(&mut self, total_bytes: u64) -> Result<DestinationReport> {
        let device_state = self
            .device_state
            .take()
            .ok_or_else(|| MigrationError::Invalid("device state ended twice".into()))?;
        device_state.finish(self.vm, total_bytes, self.timeout)?;
        let device_state_loaded_us = wall_clock_us();
        self.vm
            .qmp
            .execute("cont", json!({}))
            .map_err(|e| MigrationError::qemu("starting the destination VM", e))?;
        let started_us = self.started_us;
        let running_us = self
            .vm
            .qmp
            .wait_event(
                "RESUME of the destination VM",
                Duration::from_secs(10),
                |e| e.name == "RESUME" && e.timestamp_us >= started_us,
            )
            .map(|event| event.timestamp_us)
            .unwrap_or_else(|_| wall_clock_us());
        if let Err(error) = self.confirm_running() {
            // The source resumes when it does not hear from us: never let the
            // VM run on both sides. Paused here, it can still be resumed by
            // hand once the source is known to be stopped.
            let paused = self.vm.qmp.execute("stop", json!({}));
            return Err(error.during(match paused {
                Ok(_) => "the source did not confirm it released the VM; the destination VM was paused again so it cannot run twice",
                Err(_) => "the source did not confirm it released the VM, and pausing the destination VM failed too",
            }));
        }
        let received = self.link.reader.traffic();
        Ok(DestinationReport {
            vm_name: self.vm_name.clone(),
            rounds: self.rounds,
            pages_received: self.pages,
            zero_pages: self.zero_pages,
            memory_bytes: received.class_bytes(TrafficClass::Memory),
            device_state_bytes: self.device_state_bytes,
            link_bytes_received: received.total_bytes(),
            link_bytes_sent: self.link.writer.traffic().total_bytes(),
            verified: self.verified,
            started_us: self.started_us,
            device_state_loaded_us,
            running_us,
        })
    }

    /// Tells the source the VM runs and waits for its acknowledgement.
    fn confirm_running(&mut self) -> Result<()> {
        self.send(&Message::DestinationRunning(DestinationRunning))?;
        match self.next_message()? {
            Message::Ack(_) => Ok(()),
            Message::Abort(abort) => Err(MigrationError::PeerAborted {
                peer: Role::Source,
                reason: format!("after the VM started here: {}", abort.reason),
            }),
            other => unreachable!(
                "the conversation admitted {} while awaiting the release",
                other.message_type()
            ),
        }
    }
}

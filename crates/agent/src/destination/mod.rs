//! The receiving side: [`receive_migration`], or [`IncomingMigration`] when
//! the caller must see the request (which VM, how much RAM) before it
//! starts the destination QEMU.

mod abort;
mod postcopy;
mod receiver;
mod references;
mod resumes;

pub use abort::IncomingAbort;
pub use resumes::PostcopyResumes;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mllm_control::DestinationReport;
use mllm_core::PageSet;
use mllm_qemu::qmp::wall_clock_us;
use mllm_qemu::QemuProcess;
use mllm_tls::PeerStream;
use mllm_wire::{
    ContentHash, Conversation, HeldContent, Message, MigrationAccept, MigrationPolicy,
    MigrationReject, MigrationRequest, Role, HELD_BLOCKS_PER_FRAME, MAX_HELD_BLOCKS, PAGE_SIZE,
    PAGE_SIZE_U32,
};

use crate::device_state::IncomingDeviceState;
use crate::disk::TrackedDisk;
use crate::error::{Context, MigrationError};
use crate::guest_ram::GuestRam;
use crate::peer::PeerLink;
use crate::settings::DEFAULT_RECOVERY_TIMEOUT;
use crate::vm_setup::hook_socket_of;
use resumes::ResumedLink;

/// Settings of the destination agent.
#[derive(Debug, Clone)]
pub struct DestinationSettings {
    /// Silence from the source for this long means the link is dead.
    pub link_timeout: Duration,
    /// Post-copy, after the link failed: how long the destination waits
    /// for the source to resume before it says the guest cannot continue.
    pub recovery_timeout: Duration,
    /// Where a resumed connection finds its post-copy: shared by every
    /// connection this agent accepts ([`accept_incoming`]).
    pub resumes: PostcopyResumes,
}

impl Default for DestinationSettings {
    fn default() -> Self {
        DestinationSettings {
            link_timeout: Duration::from_secs(30),
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            resumes: PostcopyResumes::default(),
        }
    }
}

/// What a connection from a source agent brought.
#[derive(Debug)]
pub enum Incoming {
    /// A new migration, its request read (boxed: it holds the link).
    Migration(Box<IncomingMigration>),
    /// A source resumed the post-copy of `vm_name` on this connection after
    /// the link failed; the migration's receiver goes on with it. `None`:
    /// that post-copy had finished, and the source was told so.
    Resumed { vm_name: Option<String> },
}

/// Handshake, then the source's first message: a new migration's request,
/// or a request to resume a post-copy in progress, which is handed to its
/// receiver through `settings.resumes`.
pub fn accept_incoming(
    stream: impl Into<PeerStream>,
    settings: &DestinationSettings,
) -> Result<Incoming, MigrationError> {
    let started_us = wall_clock_us();
    let timeout = settings.link_timeout;
    let mut link = PeerLink::establish(stream.into(), Role::Destination, timeout)?;
    let mut conversation = Conversation::new(Role::Destination);
    let first = link
        .reader
        .recv()
        .map_err(|e| link.failure(e))
        .during("waiting for the migration request")?;
    conversation.received(&first)?;
    let request = match first {
        Message::MigrationRequest(request) => request,
        Message::ResumeRequest(resume) => {
            let vm_name = settings
                .resumes
                .route(resume.migration_id, ResumedLink { link, conversation })?;
            return Ok(Incoming::Resumed { vm_name });
        }
        other => unreachable!(
            "the conversation admits only a request first, not {}",
            other.message_type()
        ),
    };
    let abort = IncomingAbort::new(
        link.socket
            .try_clone()
            .map_err(|e| MigrationError::io("setting up the agent link's socket", e))?,
    );
    Ok(Incoming::Migration(Box::new(IncomingMigration {
        link,
        conversation,
        request,
        timeout,
        recovery_timeout: settings.recovery_timeout,
        resumes: settings.resumes.clone(),
        started_us,
        abort,
    })))
}

/// Receives a migration into `vm`, a QEMU started with `-incoming defer`
/// and its guest RAM in the shared file `ram_file`, from the source agent
/// at the other end of `stream` (a TCP connection, or a TLS session of
/// `mllm-tls`). Returns once the VM runs here. `disks` are
/// the VM's disks as this agent serves them to QEMU, in the source's order:
/// what they hold is named to the source (which may refer to it), and when
/// the source stops, every block the migration did not write is zeroed.
///
/// On failure the destination VM never ran; the caller discards it (kills
/// the QEMU, removes the RAM file). The source is told why.
pub fn receive_migration(
    vm: &QemuProcess,
    ram_file: &Path,
    disks: &[Arc<TrackedDisk>],
    stream: impl Into<PeerStream>,
    settings: &DestinationSettings,
) -> Result<DestinationReport, MigrationError> {
    IncomingMigration::accept(stream, settings)?.receive(vm, ram_file, disks)
}

/// A migration whose request has arrived but is not yet accepted.
#[derive(Debug)]
pub struct IncomingMigration {
    link: PeerLink,
    conversation: Conversation,
    request: MigrationRequest,
    timeout: Duration,
    recovery_timeout: Duration,
    resumes: PostcopyResumes,
    started_us: u64,
    abort: IncomingAbort,
}

impl IncomingMigration {
    /// Handshake, then the source's request. A connection that resumes a
    /// post-copy instead is handed to it (see [`accept_incoming`]) and
    /// reported as an error here: it is no new migration.
    pub fn accept(
        stream: impl Into<PeerStream>,
        settings: &DestinationSettings,
    ) -> Result<IncomingMigration, MigrationError> {
        match accept_incoming(stream, settings)? {
            Incoming::Migration(incoming) => Ok(*incoming),
            Incoming::Resumed { vm_name } => Err(MigrationError::Invalid(format!(
                "the connection resumed the post-copy of VM {}; it brought no new migration",
                vm_name.as_deref().unwrap_or("(finished)")
            ))),
        }
    }

    pub fn request(&self) -> &MigrationRequest {
        &self.request
    }

    /// A handle that aborts this migration from another thread as long as
    /// the VM has not been handed over.
    pub fn abort_handle(&self) -> IncomingAbort {
        self.abort.clone()
    }

    /// Refuses the migration, telling the source `reason`.
    pub fn reject(mut self, reason: &str) -> Result<(), MigrationError> {
        let reject = Message::MigrationReject(MigrationReject {
            reason: reason.to_owned(),
        });
        self.conversation.sending(&reject)?;
        self.link
            .writer
            .send(&reject)
            .map_err(|e| self.link.failure(e))
    }

    /// Checks the request against `vm`, accepts it and receives the VM.
    pub fn receive(
        self,
        vm: &QemuProcess,
        ram_file: &Path,
        disks: &[Arc<TrackedDisk>],
    ) -> Result<DestinationReport, MigrationError> {
        let vm_name = self.request.vm_name.clone();
        let prepared = self.prepare(vm, ram_file, disks);
        let (ram, device_state, held) = match prepared {
            Ok(ready) => ready,
            Err(error) => {
                // The refusal is the error; failing to deliver it adds nothing.
                let _ = self.reject(&error.chain());
                return Err(error.during(format!("refused to receive VM {vm_name}")));
            }
        };
        let mut accepted = self;
        let mut answer: Vec<Message> = Vec::new();
        for (disk, held) in (0u16..).zip(&held) {
            answer.extend(held.hashes.chunks(HELD_BLOCKS_PER_FRAME).map(|blocks| {
                Message::HeldContent(HeldContent {
                    disk,
                    blocks: blocks.to_vec(),
                })
            }));
        }
        answer.push(Message::MigrationAccept(MigrationAccept));
        for message in &answer {
            accepted.conversation.sending(message)?;
            accepted
                .link
                .writer
                .send(message)
                .map_err(|e| accepted.link.failure(e))?;
        }
        let held = held.into_iter().map(|held| held.blocks).collect();
        receiver::Receiver::new(vm, ram, disks, held, device_state, accepted)
            .run()
            .map_err(|error| {
                let what = match error.root() {
                    MigrationError::SourceUnreachable { .. } => {
                        format!("receiving VM {vm_name} failed after it started here")
                    }
                    _ => format!("receiving VM {vm_name} failed; the destination VM never ran"),
                };
                error.during(what)
            })
    }

    /// Everything that can be checked before a page moves.
    fn prepare(
        &self,
        vm: &QemuProcess,
        ram_file: &Path,
        disks: &[Arc<TrackedDisk>],
    ) -> Result<(GuestRam, IncomingDeviceState, Vec<Held>), MigrationError> {
        let request = &self.request;
        // Policies this agent cannot serve do not decode; the match is the
        // place a policy with its own needs gets them checked.
        match request.policy {
            MigrationPolicy::Precopy => {}
            MigrationPolicy::Postcopy => {
                if hook_socket_of(&vm.config).is_none() {
                    return Err(MigrationError::Invalid(
                        "post-copy needs the hook preloaded into the destination QEMU, and this \
                         QEMU has none"
                            .into(),
                    ));
                }
            }
        }
        if request.page_size != PAGE_SIZE_U32 {
            return Err(MigrationError::Invalid(format!(
                "page size differs: the source uses {} bytes, this agent {PAGE_SIZE}",
                request.page_size
            )));
        }
        let ram = GuestRam::open(ram_file)?;
        if ram.len_bytes() != request.ram_bytes {
            return Err(MigrationError::Invalid(format!(
                "RAM size differs: the source VM has {} MiB, the destination VM {} MiB",
                request.ram_bytes >> 20,
                ram.len_bytes() >> 20
            )));
        }
        ram.reserve()?;
        let sizes: Vec<u64> = disks.iter().map(|disk| disk.size()).collect();
        if sizes != request.disk_bytes {
            return Err(MigrationError::Invalid(format!(
                "disks differ: the source VM has {}, the destination VM {}",
                describe_disks(&request.disk_bytes),
                describe_disks(&sizes)
            )));
        }
        // Kept until the source stops: the source may refer to it. Then
        // what the source did not write must read as zeros (the receiver).
        let mut budget = MAX_HELD_BLOCKS;
        let mut held = Vec::with_capacity(disks.len());
        for disk in disks {
            let (blocks, hashes) = disk.held_content(budget)?;
            budget -= hashes.len();
            held.push(Held { blocks, hashes });
        }
        let device_state = IncomingDeviceState::listen(vm)
            .during("the destination QEMU cannot receive device state")?;
        Ok((ram, device_state, held))
    }
}

/// What one of the destination's disks held before the migration.
#[derive(Debug)]
struct Held {
    /// Every used block: zeroed at the switch unless the migration wrote it.
    blocks: PageSet,
    /// Those named to the source, with their content hash.
    hashes: Vec<(u32, ContentHash)>,
}

/// "no disk", or the sizes in MiB: "2 disks (1024 MiB, 64 MiB)".
fn describe_disks(sizes: &[u64]) -> String {
    match sizes {
        [] => "no disk".into(),
        [size] => format!("one disk of {} MiB", size >> 20),
        _ => format!(
            "{} disks ({})",
            sizes.len(),
            sizes
                .iter()
                .map(|size| format!("{} MiB", size >> 20))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

//! The mllm agent: moves a VM's guest RAM itself, around an unmodified QEMU
//! that migrates only its device state.
//!
//! Guest RAM lives in a shared-memory file that QEMU maps with `share=on`
//! and the agent maps too ([`GuestRam`]). The source agent tracks which
//! pages the guest writes from outside QEMU (`mllm-tracker`, through the
//! preloaded `mllm-hook`), sends them in pre-copy rounds over one link to the
//! destination agent, which writes them into the destination's RAM file
//! before its QEMU runs. At the switch the source VM is stopped, the last
//! written pages follow, and QEMU migrates its device state with
//! `x-ignore-shared` through the agents' link. The source lets the VM go only
//! once the destination reports it running; any failure before that resumes
//! the source VM with its memory untouched.
//!
//! The library is synchronous and thread-based:
//! - [`migrate_source`] on the source, [`receive_migration`] (or
//!   [`IncomingMigration`]) on the destination, each given the local
//!   [`mllm_qemu::QemuProcess`], its RAM file and a connected `TcpStream`;
//! - [`make_migratable`] prepares a `QemuConfig` (shared RAM file, hook);
//! - [`record_memory_trace`] records which pages a running VM writes, interval
//!   by interval, as a migration can too ([`SourceSettings::trace_file`]).
//! - [`DiskServer`] serves a guest disk image to the local QEMU over NBD
//!   through a [`TrackedDisk`], which records what the guest does to it:
//!   dirty blocks, blocks read and written per interval, and the access
//!   trace ([`write_disk_trace`]).
//!
//! The long-running `mllm agent` built on them is the `mllm-daemon` crate.
//! See `crates/agent/README.md` for the protocol sequence.

mod destination;
mod device_state;
mod disk;
mod error;
mod guest_ram;
mod latency;
mod memory_trace;
mod peer;
mod prehash;
mod settings;
mod source;
mod tracking;
mod vm_setup;

pub use destination::{
    accept_incoming, receive_migration, DestinationSettings, Incoming, IncomingAbort,
    IncomingMigration, PostcopyResumes,
};
pub use disk::{
    write_disk_trace, DiskActivity, DiskServer, RequestTotals, TrackedDisk, BLOCK_SIZE,
};
pub use error::{LinkError, LinkFailure, MigrationError, Recovery, SourceError};
pub use guest_ram::GuestRam;
pub use memory_trace::record_memory_trace;
// What the engine reports, defined where clients can read it without
// linking the engine.
pub use mllm_control::{
    DedupReport, DestinationReport, Phase, Progress, RoundReport, SourceReport, SourceTimings,
    SwitchReason, TraceSummary,
};
pub use mllm_wire::CompressionSetting;
pub use settings::{
    parse_compression, BoundAction, DedupSettings, DiskMove, EstimatorKind, MigrationPolicy,
    SourceSettings, SourceStrategy, UnknownCompression,
};
pub use source::{migrate_source, migrate_source_with_reconnect, resume_postcopy_after_restart};
pub use vm_setup::{
    find_hook_library, hook_socket_of, make_migratable, ram_file_of, HOOK_LIBRARY_ENV,
    HOOK_SOCKET_ENV,
};

//! The guest disk as the agent serves it: each disk is a raw, sparse image
//! that the agent serves to its local QEMU over NBD on a unix socket
//! ([`DiskServer`], `mllm_qemu::DiskAttachment::Nbd` on QEMU's side), so
//! every guest request passes through a [`TrackedDisk`]. That gives the
//! migration its dirty blocks ([`TrackedDisk::take_dirty`]), the estimators
//! the blocks read and written per interval ([`TrackedDisk::take_activity`]),
//! and the access trace ([`TrackedDisk::recent_accesses`],
//! [`write_disk_trace`]). The agent itself reads, writes and punches blocks
//! of the image without going through NBD: the source to send them, the
//! destination to fill its image, both unseen by the tracking.
//!
//! Blocks are pages: [`BLOCK_SIZE`] is the page size, so a disk block moves,
//! de-duplicates and compresses like a page of RAM, and its digest ranges are
//! those of guest RAM.

mod activity;
mod mapping;
mod remote;
mod server;
mod trace_file;
mod tracked;

pub use activity::{DiskActivity, RequestTotals};
pub use server::DiskServer;
pub use trace_file::write_disk_trace;
pub use tracked::TrackedDisk;

/// The unit of dirty tracking and of transfer.
pub const BLOCK_SIZE: usize = mllm_core::memory::PAGE_SIZE;

const BLOCK_SIZE_U64: u64 = BLOCK_SIZE as u64;
/// A page or block of zeros.
pub(crate) const ZERO_BLOCK: [u8; BLOCK_SIZE] = [0; BLOCK_SIZE];

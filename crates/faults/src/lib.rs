//! Missing-page faults of a process's guest RAM, served from outside the
//! process: the building blocks of post-copy memory on a destination. Nothing
//! here knows about migration.
//!
//! - [`arm_missing`] asks the `mllm-hook` preloaded into QEMU for a
//!   userfaultfd registering guest RAM in missing mode. From then on, a QEMU
//!   thread touching a page the shared RAM file does not hold sleeps, whether
//!   a vCPU, device emulation, or the kernel on QEMU's behalf.
//! - [`MissingPages::wait_fault`] and [`MissingPages::wait_faults`] report
//!   the pages slept on; [`MissingPages::install`] fills a missing page
//!   atomically and wakes its sleepers.
//! - [`punch_holes`] makes pages of the RAM file missing again.
//!
//! Only pages absent from the file fault. Pages written through another
//! mapping of the file (the agent's) are present and never fault, and so are
//! pages read through one: reading a hole of a shared-memory file fills it
//! with a zero page. A page whose content the destination holds in a stale
//! version must therefore be punched before the guest runs.
//!
//! Every failure is a [`FaultError`].

mod error;
mod holes;
mod missing;

pub use error::FaultError;
pub use holes::punch_holes;
pub use missing::{arm_missing, Installed, MissingPages};
pub use mllm_core::memory::{PageIndex, PageRange, PAGE_SIZE};
pub use mllm_tracker::RamMapping;

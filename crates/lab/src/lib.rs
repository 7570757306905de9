//! The migration lab: a real guest, an emulated inter-datacenter link, and
//! every migration method measured on both.
//!
//! - [`image`] builds the guest; [`scenario`] reads what to run;
//! - [`run`] boots, migrates and measures, using [`qemu_migration`] for
//!   QEMU's own methods;
//! - [`analysis`] turns guest output into measurements, [`result`],
//!   [`report`] and [`plot`] present them;
//! - [`disk_io`] measures the guest's disk throughput through the agent's
//!   NBD server against the image attached directly.

pub mod analysis;
pub mod build;
pub mod disk;
pub mod disk_io;
pub mod fsck;
pub mod image;
pub mod method;
pub mod mllm_migration;
pub mod outcome;
pub mod paths;
pub mod physical_limit;
pub mod placement;
pub mod plot;
pub mod qemu_migration;
pub mod qemu_settings;
pub mod report;
pub mod result;
pub mod rootfs;
pub mod run;
pub mod scenario;
pub mod scoreboard;
pub mod suite;

//! End-to-end tests of the hook and the trackers on real processes: a
//! `page_writer` stand-in whose writes are known exactly, and QEMU itself.
//!
//! `contract` is what every tracker backend must do; each backend's module
//! runs it and adds what is specific to that backend.

mod contract;
mod detect;
mod hook;
mod pagemap_scan;
mod qemu;
mod qemu_process;
mod soft_dirty;
mod support;

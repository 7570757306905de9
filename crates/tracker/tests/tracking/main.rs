//! End-to-end tests of the hook and the trackers on real processes: a
//! `page_writer` stand-in whose writes are known exactly, and QEMU itself.

mod qemu;
mod support;
mod writer;

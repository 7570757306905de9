//! Missing-page faults served on real processes: a `page_writer` stand-in
//! for QEMU (mllm-tracker's example) whose reads report what they saw, and
//! QEMU itself. The helpers that build and drive them are mllm-tracker's.

#[path = "../../../tracker/tests/tracking/support.rs"]
mod support;

#[path = "../../../tracker/tests/tracking/qemu_process.rs"]
mod qemu_process;

mod page_writer;
mod qemu;

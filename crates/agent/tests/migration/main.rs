//! The agents migrating real QEMU 10 guests (TCG) through the emulated link,
//! and refusing or surviving what can go wrong.

mod dedup;
mod fault_matrix;
mod postcopy_recovery;
mod protocol;
mod real_guest;
mod support;
mod trace;
#[path = "../common/workspace_build.rs"]
mod workspace_build;

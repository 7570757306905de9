//! The long-running `mllm agent`: see [`run`], and `mllm-control` for the
//! protocol of its control socket.

mod server;
mod spec;
mod vms;

pub use server::{run, DaemonOptions};
pub use spec::VmSpec;

//! The long-running `mllm agent`: see [`run`] and the control protocol in
//! [`control`].

pub mod control;
mod server;
mod spec;
mod vms;

pub use server::{run, DaemonOptions};
pub use spec::VmSpec;

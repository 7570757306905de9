//! The long-running `mllm agent`: owns VMs launched from their specs
//! ([`VmSpec`]), migrates them away on request and receives migrations from
//! peer agents, with the migration engine of `mllm-agent`. See [`run`], and
//! `mllm-control` for the protocol of its control socket.
//!
//! See `crates/daemon/README.md` for the command line and the VM specs.

mod control_socket;
mod disk;
mod inflight;
mod limits;
mod peers;
mod server;
mod spec;
mod state;
mod vms;

pub use limits::Limits;
/// Where the hook library is unless the operator names it: the daemon
/// preloads it into every QEMU it starts.
pub use mllm_agent::find_hook_library;
pub use peers::PeerSecurity;
pub use server::{run, DaemonOptions};
pub use spec::{DiskSpec, KernelBoot, VmSpec};

//! `mllm agent`: runs the daemon (`mllm-daemon`) on this host.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use mllm_control::DEFAULT_SOCKET;
use mllm_daemon::DaemonOptions;

#[derive(Args)]
pub struct AgentArgs {
    /// Address peer agents connect to when they migrate a VM here.
    #[arg(long, default_value = "0.0.0.0:7800")]
    listen: String,
    /// Unix socket `mllm migrate` talks to.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    control: PathBuf,
    /// Directory of VM specs, one NAME.toml per VM (see crates/daemon/README.md).
    #[arg(long, default_value = "/etc/mllm/vms")]
    vms: PathBuf,
    /// Where each VM's QMP and serial sockets and logs go.
    #[arg(long, default_value = "/run/mllm/vms")]
    state: PathBuf,
    /// Boot this VM from its spec at start (repeatable).
    #[arg(long = "start", value_name = "VM")]
    start: Vec<String>,
    /// libmllm_hook.so to preload into QEMU [default: next to this binary].
    #[arg(long)]
    hook: Option<PathBuf>,
}

pub fn run(args: AgentArgs) -> Result<()> {
    let hook_library = match args.hook {
        Some(path) => path,
        None => mllm_daemon::find_hook_library()?,
    };
    mllm_daemon::run(&DaemonOptions {
        listen: args.listen,
        control_socket: args.control,
        specs: args.vms,
        state: args.state,
        start: args.start,
        hook_library,
    })
}

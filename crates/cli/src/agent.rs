//! `mllm agent`: runs the daemon (`mllm-daemon`) on this host.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use mllm_control::DEFAULT_SOCKET;
use mllm_daemon::{DaemonOptions, Limits, PeerSecurity};

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
    /// Where each VM's QMP and serial sockets and logs go, and the records
    /// of the VMs this agent owns, which a restarted agent adopts.
    #[arg(long, default_value = "/run/mllm/vms")]
    state: PathBuf,
    /// Boot this VM from its spec at start (repeatable).
    #[arg(long = "start", value_name = "VM")]
    start: Vec<String>,
    /// libmllm_hook.so to preload into QEMU [default: next to this binary].
    #[arg(long)]
    hook: Option<PathBuf>,
    /// Migrations received at the same time; more are refused.
    #[arg(long, default_value_t = Limits::default().max_incoming)]
    max_incoming: usize,
    /// Peer connections in their handshake at the same time; more are closed.
    #[arg(long, default_value_t = Limits::default().max_handshakes)]
    max_handshakes: usize,
    /// Seconds a peer has for the handshake and its migration request.
    #[arg(long, default_value_t = Limits::default().handshake_timeout.as_secs_f64())]
    handshake_timeout: f64,
    /// Seconds a shutdown (SIGTERM, SIGINT) waits for migrations past their
    /// hand-over to finish.
    #[arg(long, default_value_t = 60.0)]
    shutdown_grace: f64,
    /// This agent's TLS files: ca.pem (the CA it trusts), cert.pem and
    /// key.pem (its own), as `mllm certs host` writes them.
    #[arg(long, value_name = "DIR", default_value = "/etc/mllm/tls")]
    tls_dir: PathBuf,
    /// A peer agent this one may migrate VMs to and from, by the name in
    /// its certificate (repeatable). Required with TLS.
    #[arg(long = "allow-peer", value_name = "NAME")]
    allow_peers: Vec<String>,
    /// Talk to peers without TLS: no authentication, no encryption. Anyone
    /// who reaches the port can send a VM here, anyone on the path can read
    /// the VMs in transit. For a trusted test network only.
    #[arg(long, conflicts_with = "allow_peers")]
    insecure_plaintext: bool,
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
        limits: Limits {
            max_incoming: args.max_incoming,
            max_handshakes: args.max_handshakes,
            handshake_timeout: seconds(args.handshake_timeout, "--handshake-timeout")?,
        },
        shutdown_grace: seconds(args.shutdown_grace, "--shutdown-grace")?,
        peer_security: match args.insecure_plaintext {
            true => PeerSecurity::InsecurePlaintext,
            false => PeerSecurity::Tls {
                dir: args.tls_dir,
                allowed_peers: args.allow_peers,
            },
        },
    })
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| anyhow::anyhow!("{flag} {value}: give a number of seconds, 0 or more"))
}

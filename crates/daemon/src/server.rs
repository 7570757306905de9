//! `mllm agent`: owns VMs, receives migrations on a TCP port, and takes
//! requests (list, migrate, record a trace) on a unix control socket. One
//! thread per connection: migrations and recordings are few and long.

use std::io::Write;
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use mllm_agent::{
    accept_incoming, migrate_source_with_reconnect, parse_compression, record_memory_trace,
    resume_postcopy_after_restart, DestinationSettings, DiskMove, EstimatorKind, Incoming,
    IncomingMigration, MigrationError, Recovery, SourceSettings, SourceStrategy,
};
use mllm_control::{
    ControlReply, ControlRequest, DestinationReport, MigrateRequest, Phase, PostcopyReport,
    Progress, RecordTraceRequest, SourceReport, TraceSummary,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::inflight::{Direction, OutgoingAbort, Stopper};
use crate::limits::{Deadline, Limits, Slot, Slots};
use crate::state::{HandOverRecord, VmPhase};

use crate::peers::{split_target, PeerLinks, PeerSecurity};
use crate::vms::{TrackerUser, VmHost};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where peer agents connect to migrate VMs here (HOST:PORT).
    pub listen: String,
    pub control_socket: PathBuf,
    /// Directory of `NAME.toml` VM specs.
    pub specs: PathBuf,
    /// Sockets and serial logs of the VMs, one directory each, and the
    /// records of the VMs this agent owns.
    pub state: PathBuf,
    /// VMs to boot at start (unless adopted: already running).
    pub start: Vec<String>,
    pub hook_library: PathBuf,
    pub limits: Limits,
    /// How long a shutdown waits for migrations past their hand-over.
    pub shutdown_grace: Duration,
    /// Mutual TLS with peer agents, or explicitly none.
    pub peer_security: PeerSecurity,
}

/// Runs the daemon until SIGTERM or SIGINT, then shuts down (see the
/// README, "Shutdown and restart"): migrations before their hand-over are
/// aborted, those after it may finish within the grace period, and the VMs
/// keep running for the next agent, which adopts them.
pub fn run(options: &DaemonOptions) -> Result<()> {
    // First: a signal from here on means a clean shutdown.
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("handling SIGTERM and SIGINT")?;
    // Before any thread (it sets the umask for a moment).
    let control = crate::control_socket::bind(&options.control_socket)?;
    let links = Arc::new(PeerLinks::new(&options.peer_security)?);
    if matches!(options.peer_security, PeerSecurity::InsecurePlaintext) {
        eprintln!(
            "mllm agent: WARNING: --insecure-plaintext: migrations are neither authenticated nor \
             encrypted; anyone who reaches {} can send a VM here, and anyone on the path can read \
             the VMs' memory and disks",
            options.listen
        );
    }
    let host = Arc::new(VmHost::new(
        &options.specs,
        &options.state,
        &options.hook_library,
    )?);
    for name in host.adopt_recorded()? {
        tracing::info!(vm = %name, "VM adopted from the state directory");
        if host.get(&name)?.handed_to().is_some() {
            let (host, links) = (Arc::clone(&host), Arc::clone(&links));
            std::thread::Builder::new()
                .name(format!("resume {name}"))
                .spawn(move || finish_post_copy_after_restart(&host, &links, &name))?;
        }
    }
    for name in &options.start {
        if host.owns(name) {
            tracing::info!(vm = %name, "VM already runs here (adopted): not started again");
            continue;
        }
        let vm = host.launch(name, false)?;
        host.register(name, vm)?;
        tracing::info!(vm = %name, "VM started");
    }
    let migrations = TcpListener::bind(&options.listen)
        .with_context(|| format!("listening for migrations on {}", options.listen))?;
    eprintln!(
        "mllm agent: migrations on {}, control on {}, links {}",
        migrations.local_addr()?,
        options.control_socket.display(),
        links.describe()
    );
    let incoming_host = Arc::clone(&host);
    let limits = options.limits.clone();
    let incoming_links = Arc::clone(&links);
    std::thread::Builder::new()
        .name("migrations".into())
        .spawn(move || accept_migrations(&incoming_host, &incoming_links, &migrations, &limits))?;
    let control_host = Arc::clone(&host);
    let links = Arc::clone(&links);
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve_control_socket(&control_host, &links, &control))?;
    if let Some(signal) = signals.forever().next() {
        eprintln!("mllm agent: signal {signal} received, shutting down");
    }
    shut_down(&host, options.shutdown_grace);
    Ok(())
}

/// Stops migrations by the shutdown rule, then leaves the VMs running.
fn shut_down(host: &VmHost, grace: Duration) {
    let unfinished = host.inflight.stop_all(grace);
    if !unfinished.is_empty() {
        tracing::error!(
            vms = ?unfinished,
            "migrations past their hand-over did not finish within {grace:?}: the next agent \
             settles them from the state directory"
        );
    }
    let left = host.leave_running();
    eprintln!("mllm agent: stopped; {left} VMs left running for the next agent");
}

fn serve_control_socket(host: &Arc<VmHost>, links: &Arc<PeerLinks>, control: &UnixListener) {
    for client in control.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let host = Arc::clone(host);
        let links = Arc::clone(links);
        std::thread::spawn(move || {
            if let Err(error) = serve_control(&host, &links, client) {
                tracing::warn!("control request failed: {error:#}");
            }
        });
    }
}

/// Takes peers' connections, each on its own thread, within the limits: a
/// connection over the handshake limit is closed at once (before the
/// handshake there is no way to tell the peer why), a migration over the
/// limit of those received at once is refused with its reason.
fn accept_migrations(
    host: &Arc<VmHost>,
    links: &Arc<PeerLinks>,
    listener: &TcpListener,
    limits: &Limits,
) {
    let handshakes = Slots::new(limits.max_handshakes);
    let receiving = Slots::new(limits.max_incoming);
    // One for every connection: a post-copy resumed on a new connection
    // is found in it.
    let settings = DestinationSettings::default();
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a migration failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let Some(handshake) = handshakes.try_take() else {
            tracing::warn!(
                peer = ?stream.peer_addr().ok(),
                "{} connections in their handshake already, the limit: connection closed",
                handshakes.max()
            );
            continue;
        };
        let host = Arc::clone(host);
        let links = Arc::clone(links);
        let receiving = Arc::clone(&receiving);
        let timeout = limits.handshake_timeout;
        let settings = settings.clone();
        std::thread::spawn(move || {
            match receive(
                &host, &links, stream, handshake, &receiving, &settings, timeout,
            ) {
                Ok(Some(report)) => tracing::info!(
                    vm = %report.vm_name,
                    pages = report.pages_received,
                    "migration received; the VM runs here"
                ),
                Ok(None) => tracing::info!("a source resumed its post-copy"),
                Err(error) => tracing::warn!("incoming migration failed: {error:#}"),
            }
        });
    }
}

/// Receives a VM into a fresh QEMU launched from its spec; on failure the
/// QEMU is killed and its RAM file removed (dropping it does both), unless
/// it ran here and lost its source in post-copy: then it stays, stalled on
/// the pages it lacks, for an operator. The TLS handshake, the agents'
/// handshake and the request must come within `handshake_timeout`. A connection that resumes a post-copy
/// goes to the migration in progress: `None`.
fn receive(
    host: &VmHost,
    links: &PeerLinks,
    stream: TcpStream,
    handshake: Slot,
    receiving: &Arc<Slots>,
    settings: &DestinationSettings,
    handshake_timeout: Duration,
) -> Result<Option<DestinationReport>> {
    let deadline = Deadline::arm(
        stream.try_clone()?,
        handshake_timeout,
        "the handshake and migration request",
    );
    let incoming = links
        .accept(stream)
        .and_then(|stream| accept_incoming(stream, settings).map_err(anyhow::Error::from));
    deadline.disarm();
    drop(handshake);
    let incoming = match incoming? {
        Incoming::Migration(incoming) => *incoming,
        Incoming::Resumed { .. } => return Ok(None),
    };
    let name = incoming.request().vm_name.clone();
    let refuse = |incoming: IncomingMigration, error: anyhow::Error| {
        let _ = incoming.reject(&format!("{error:#}"));
        Err(error)
    };
    // Said first: the plainest reason when the VM runs here.
    if host.owns(&name) {
        return refuse(
            incoming,
            anyhow::anyhow!("VM {name} already runs on this host"),
        );
    }
    // Declared before the VM, so dropped after it: the VM's name is free
    // again only once its QEMU and files are gone.
    let claim = match host.inflight.begin(&name, Direction::Incoming) {
        Ok(claim) => claim,
        Err(error) => return refuse(incoming, error),
    };
    let Some(_receiving) = receiving.try_take() else {
        let error = anyhow::anyhow!(
            "this agent receives {} migrations already, its limit: VM {name} refused, try again \
             later",
            receiving.max()
        );
        return refuse(incoming, error);
    };
    claim.stoppable_by(Stopper::Incoming(incoming.abort_handle()));
    let vm = match host.launch(&name, true) {
        Ok(vm) => vm,
        Err(error) => return refuse(incoming, error),
    };
    let report = match incoming.receive(&vm.qemu, &vm.ram_file, &vm.disks()) {
        Ok(report) => report,
        Err(error) if matches!(error.root(), MigrationError::SourceUnreachable { .. }) => {
            // The guest's memory since the switch exists only here.
            vm.set_phase(VmPhase::Owned)?;
            host.register(&name, vm)?;
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    vm.set_phase(VmPhase::Owned)?;
    host.register(&name, vm)?;
    Ok(Some(report))
}

fn serve_control(host: &VmHost, links: &PeerLinks, client: UnixStream) -> Result<()> {
    // A client that connects and sends nothing must not hold a thread forever.
    const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    client.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    let request = ControlRequest::read_from(&client)?;
    // A client that went away must not stop a migration: write errors only
    // end the replies.
    let reply = |reply: ControlReply| {
        let mut text = serde_json::to_string(&reply).expect("replies serialize");
        text.push('\n');
        let _ = (&client).write_all(text.as_bytes());
    };
    match request {
        ControlRequest::List => reply(ControlReply::Vms { vms: host.list() }),
        ControlRequest::Migrate(request) => {
            match migrate(host, links, &request, &|progress| {
                reply(ControlReply::Progress(progress.clone()))
            }) {
                Ok(report) => reply(ControlReply::Migrated(Box::new(report))),
                Err(error) => reply(ControlReply::Error {
                    message: format!("{error:#}"),
                }),
            }
        }
        ControlRequest::RecordTrace(request) => match record_trace(host, &request) {
            Ok(summary) => reply(ControlReply::TraceRecorded(summary)),
            Err(error) => reply(ControlReply::Error {
                message: format!("{error:#}"),
            }),
        },
    }
    Ok(())
}

fn migrate(
    host: &VmHost,
    links: &PeerLinks,
    request: &MigrateRequest,
    on_progress: &dyn Fn(&Progress),
) -> Result<SourceReport> {
    let strategy = match request.policy.as_str() {
        "precopy" => SourceStrategy::Precopy,
        "postcopy" => SourceStrategy::Postcopy,
        "mllm" => SourceStrategy::Mllm {
            estimator: EstimatorKind::Improved,
        },
        other => bail!("unknown policy {other:?}: this agent knows precopy, postcopy and mllm"),
    };
    if let Some(path) = &request.trace_file {
        ensure_absolute(path)?;
    }
    let requested_disk_move = match &request.disk_move {
        Some(_) if request.policy != "mllm" => bail!(
            "a disk move applies to the mllm policy; with {} the disk moves by pre-copy",
            request.policy
        ),
        Some(text) => Some(text.parse::<DiskMove>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    let compression = parse_compression(&request.compression)?;
    let name = &request.vm;
    let in_flight = host.inflight.begin(name, Direction::Outgoing)?;
    let vm = host.get(name)?;
    let defaults = SourceSettings::default();
    // Chosen here to be recorded with the hand-over: a restarted agent
    // names the migration by it to finish a post-copy.
    let migration_id: u128 = rand::random();
    let settings = SourceSettings {
        migration_id: Some(migration_id),
        strategy,
        downtime_target: Duration::from_millis(request.downtime_ms),
        compression,
        max_rounds: request.max_rounds,
        verify: request.verify,
        trace_file: request.trace_file.clone(),
        mllm_disk: requested_disk_move
            .or(vm.disk_move)
            .unwrap_or(defaults.mllm_disk),
        ..defaults
    };
    if vm.phase() == VmPhase::HandingOver {
        bail!(
            "VM {name} was handed over to another host by a migration the previous agent left \
             unfinished: it stays paused here"
        );
    }
    let claim = vm.tracker.claim(name, TrackerUser::Migration)?;
    let abort = Arc::new(OutgoingAbort::default());
    in_flight.stoppable_by(Stopper::Outgoing(Arc::clone(&abort)));
    vm.set_phase(VmPhase::Sending)?;
    let result = connect_to_peer(split_target(&request.to).1).and_then(|tcp| {
        // The TCP socket, under TLS too: shutting it down ends the link.
        abort.connected(tcp.try_clone()?);
        let stream = links.secure(tcp, &request.to)?;
        migrate_source_with_reconnect(
            &vm.qemu,
            &vm.ram_file,
            &vm.disks(),
            stream,
            &|| reconnect(links, &request.to),
            &settings,
            &|progress| {
                if progress.phase == Phase::DeviceState && vm.phase() == VmPhase::Sending {
                    // Before the device state, hence before the hand-over
                    // it ends with: an agent that dies from here on must
                    // not resume the VM (see `crate::state`).
                    let migration = HandOverRecord::new(&request.to, migration_id);
                    if let Err(error) = vm.hand_over(migration) {
                        tracing::error!("{error:#}");
                    }
                }
                abort.progressed(progress.phase);
                *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
                on_progress(progress);
            },
        )
        .map_err(|error| {
            // The VM is this host's again unless it may run elsewhere.
            if !matches!(
                error.recovery,
                Recovery::DestinationRuns | Recovery::Undecided
            ) {
                if let Err(error) = vm.set_phase(VmPhase::Owned) {
                    tracing::error!("{error:#}");
                }
            }
            anyhow::Error::from(error)
        })
    });
    if result.is_err() && vm.phase() == VmPhase::Sending {
        // Failed before the engine started: nothing was handed over.
        vm.set_phase(VmPhase::Owned)?;
    }
    *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = None;
    drop(claim);
    if result.is_ok() {
        host.release(name);
    }
    result
}

/// VM `name` was handed over by a migration the previous agent left
/// unfinished. If it was a post-copy, the destination runs the VM, stalled
/// on what only this host holds: resume the post-copy, and release the VM
/// here once the destination has everything. Otherwise (the destination
/// refuses: it finished before the agent died, or never ran the VM; or it
/// stays unreachable) the VM stays paused here, as the log says.
fn finish_post_copy_after_restart(host: &VmHost, links: &PeerLinks, name: &str) {
    let finished = (|| -> Result<PostcopyReport> {
        let vm = host.get(name)?;
        let handed_to = vm
            .handed_to()
            .context("the VM's record says no more where it went")?;
        let migration_id = handed_to.migration_id()?;
        let _in_flight = host.inflight.begin(name, Direction::Outgoing)?;
        let destination = &handed_to.destination;
        tracing::info!(vm = %name, destination, "asking the destination to finish the post-copy");
        let report = resume_postcopy_after_restart(
            &vm.ram_file,
            &vm.disks(),
            &|| reconnect(links, destination),
            migration_id,
            &SourceSettings::default(),
            &|progress| {
                *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
            },
        );
        *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(report?)
    })();
    match finished {
        Ok(report) => {
            tracing::info!(
                vm = %name,
                pages = report.pages_pushed + report.pages_on_demand,
                blocks = report.blocks_pushed + report.blocks_on_demand,
                "the post-copy the previous agent left is finished: the VM runs at the \
                 destination with every page, and is released here"
            );
            host.release(name);
        }
        Err(error) => tracing::error!(
            vm = %name,
            "the VM stays paused here: {error:#}. If the destination runs it (`mllm migrate \
             --list` there), quit it here; if not, resume it here"
        ),
    }
}

fn record_trace(host: &VmHost, request: &RecordTraceRequest) -> Result<TraceSummary> {
    ensure_absolute(&request.out)?;
    let length = Duration::try_from_secs_f64(request.seconds)
        .ok()
        .filter(|length| !length.is_zero())
        .with_context(|| format!("cannot record for {} seconds", request.seconds))?;
    let vm = host.get(&request.vm)?;
    let _claim = vm.tracker.claim(&request.vm, TrackerUser::TraceRecording)?;
    Ok(record_memory_trace(
        &vm.qemu,
        &vm.ram_file,
        &request.out,
        Duration::from_millis(request.interval_ms),
        length,
    )?)
}

/// The agent writes files its clients name: a relative path would be
/// resolved against the agent's working directory, not the client's.
fn ensure_absolute(path: &Path) -> Result<()> {
    ensure!(
        path.is_absolute(),
        "the agent writes {}: give an absolute path",
        path.display()
    );
    Ok(())
}

/// A new secured connection to the agent `to` names, for a post-copy
/// resumed on it.
fn reconnect(links: &PeerLinks, to: &str) -> std::io::Result<mllm_tls::PeerStream> {
    connect_to_peer(split_target(to).1)
        .and_then(|tcp| links.secure(tcp, to))
        .map_err(std::io::Error::other)
}

/// Connects with a bound on each address's attempt: a peer behind a firewall
/// that drops packets would otherwise hang `mllm migrate` for minutes.
fn connect_to_peer(address: &str) -> Result<TcpStream> {
    const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    let context = || format!("connecting to the agent at {address}");
    let mut last_error = None;
    for candidate in address.to_socket_addrs().with_context(context)? {
        match TcpStream::connect_timeout(&candidate, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) => last_error = Some(err),
        }
    }
    Err(match last_error {
        Some(err) => anyhow::Error::new(err).context(context()),
        None => anyhow::anyhow!("{}: the address resolves to nothing", context()),
    })
}

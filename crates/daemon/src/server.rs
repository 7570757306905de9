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
    migrate_source, parse_compression, record_memory_trace, DestinationSettings, EstimatorKind,
    IncomingMigration, SourceSettings, SourceStrategy,
};
use mllm_control::{
    ControlReply, ControlRequest, DestinationReport, MigrateRequest, Progress, RecordTraceRequest,
    SourceReport, TraceSummary,
};

use mllm_tls::PeerStream;

use crate::peers::{split_target, PeerLinks, PeerSecurity};
use crate::vms::{TrackerUser, VmHost};

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Where peer agents connect to migrate VMs here (HOST:PORT).
    pub listen: String,
    pub control_socket: PathBuf,
    /// Directory of `NAME.toml` VM specs.
    pub specs: PathBuf,
    /// Sockets and serial logs of the VMs, one directory each.
    pub state: PathBuf,
    /// VMs to boot at start.
    pub start: Vec<String>,
    pub hook_library: PathBuf,
    /// Mutual TLS with peer agents, or explicitly none.
    pub peer_security: PeerSecurity,
}

/// Runs the daemon until the process is killed.
pub fn run(options: &DaemonOptions) -> Result<()> {
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
    for name in &options.start {
        let vm = host.launch(name, false)?;
        host.register(name, vm)?;
        tracing::info!(vm = %name, "VM started");
    }
    let migrations = TcpListener::bind(&options.listen)
        .with_context(|| format!("listening for migrations on {}", options.listen))?;
    let control = bind_control(&options.control_socket)?;
    eprintln!(
        "mllm agent: migrations on {}, control on {}, links {}",
        migrations.local_addr()?,
        options.control_socket.display(),
        links.describe()
    );
    let incoming_host = Arc::clone(&host);
    let incoming_links = Arc::clone(&links);
    std::thread::Builder::new()
        .name("migrations".into())
        .spawn(move || accept_migrations(&incoming_host, &incoming_links, &migrations))?;
    for client in control.incoming() {
        let client = match client {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let host = Arc::clone(&host);
        let links = Arc::clone(&links);
        std::thread::spawn(move || {
            if let Err(error) = serve_control(&host, &links, client) {
                tracing::warn!("control request failed: {error:#}");
            }
        });
    }
    Ok(())
}

fn bind_control(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A socket file left by an earlier agent would make bind fail.
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    UnixListener::bind(path).with_context(|| format!("binding control socket {}", path.display()))
}

fn accept_migrations(host: &Arc<VmHost>, links: &Arc<PeerLinks>, listener: &TcpListener) {
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "accepting a migration failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let host = Arc::clone(host);
        let links = Arc::clone(links);
        std::thread::spawn(move || match receive(&host, &links, stream) {
            Ok(report) => tracing::info!(
                vm = %report.vm_name,
                pages = report.pages_received,
                "migration received; the VM runs here"
            ),
            Err(error) => tracing::warn!("incoming migration failed: {error:#}"),
        });
    }
}

/// Receives a VM into a fresh QEMU launched from its spec; on failure the
/// QEMU is killed and its RAM file removed (dropping it does both).
fn receive(host: &VmHost, links: &PeerLinks, stream: TcpStream) -> Result<DestinationReport> {
    let stream = links.accept(stream)?;
    let incoming = IncomingMigration::accept(stream, &DestinationSettings::default())?;
    let name = incoming.request().vm_name.clone();
    let vm = match host.launch(&name, true) {
        Ok(vm) => vm,
        Err(error) => {
            let _ = incoming.reject(&format!("{error:#}"));
            return Err(error);
        }
    };
    let report = incoming.receive(&vm.qemu, &vm.ram_file, &vm.disks())?;
    host.register(&name, vm)?;
    Ok(report)
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
    let settings = SourceSettings {
        strategy,
        downtime_target: Duration::from_millis(request.downtime_ms),
        compression: parse_compression(&request.compression)?,
        max_rounds: request.max_rounds,
        verify: request.verify,
        trace_file: request.trace_file.clone(),
        ..SourceSettings::default()
    };
    let vm = host.get(&request.vm)?;
    let claim = vm.tracker.claim(&request.vm, TrackerUser::Migration)?;
    let result = open_link(links, &request.to).and_then(|stream| {
        migrate_source(
            &vm.qemu,
            &vm.ram_file,
            &vm.disks(),
            stream,
            &settings,
            &|progress| {
                *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = Some(progress.clone());
                on_progress(progress);
            },
        )
        .map_err(anyhow::Error::from)
    });
    *vm.migration.lock().unwrap_or_else(|e| e.into_inner()) = None;
    drop(claim);
    if result.is_ok() {
        host.release(&request.vm);
    }
    result
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

/// The link to the agent at `to` (`[NAME@]HOST:PORT`), secured as the
/// operator chose.
fn open_link(links: &PeerLinks, to: &str) -> Result<PeerStream> {
    let tcp = connect_to_peer(split_target(to).1)?;
    links.secure(tcp, to)
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

//! The link itself: listeners that accept connections for their targets, the
//! state every connection shares (bottlenecks, byte counters, the registry
//! used to cut them), and the byte-count timeline.

use std::collections::HashMap;
use std::fmt;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::bottleneck::Bottleneck;
use crate::connection::{self, Connection, Direction};
use crate::priority;
use crate::sync::{lock, Gate, Signal};
use crate::{LinkConfig, LinkError};

const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// Totals since the link was created. Bytes are counted when they reach the
/// far end, i.e. once they have crossed the link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStats {
    /// Client to target.
    pub bytes_forward: u64,
    /// Target to client.
    pub bytes_backward: u64,
    /// Connections accepted, over all forwards.
    pub connections: u64,
}

impl LinkStats {
    pub fn total_bytes(&self) -> u64 {
        self.bytes_forward + self.bytes_backward
    }
}

/// Cumulative byte counts at `elapsed_ms` after the link was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkSample {
    pub elapsed_ms: u64,
    pub bytes_forward: u64,
    pub bytes_backward: u64,
}

/// An emulated link. Every connection through it, to any of its forwards,
/// shares the bandwidth and the queue of each direction, as QEMU's multifd
/// channels and an NBD mirror share one real inter-datacenter link.
///
/// Dropping the link (or [`Link::shutdown`]) closes its listeners and
/// connections and stops its threads.
pub struct Link {
    shared: Arc<Shared>,
    /// Accept loops by listening address; under this lock a forward is
    /// either refused because of a cut or seen by that cut.
    listeners: Mutex<Vec<(SocketAddr, JoinHandle<()>)>>,
    sampler: Option<JoinHandle<()>>,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What the link's threads share.
pub(crate) struct Shared {
    pub(crate) config: LinkConfig,
    /// Raised by a cut (or shutdown): connections close, listeners stop.
    pub(crate) cut: Signal,
    /// Closed during a partition: nothing crosses, nothing closes.
    pub(crate) partition: Gate,
    bottlenecks: [Mutex<Bottleneck>; 2],
    delivered_bytes: [AtomicU64; 2],
    connections_accepted: AtomicU64,
    live: Mutex<HashMap<u64, Arc<Connection>>>,
    next_connection_id: AtomicU64,
    /// Threads serving connections, joined at shutdown.
    workers: Mutex<Vec<JoinHandle<()>>>,
    created_at: Instant,
    timeline: Mutex<Vec<LinkSample>>,
    stopped: Signal,
}

impl Link {
    pub fn new(config: LinkConfig) -> Result<Link, LinkError> {
        config.validate()?;
        let created_at = Instant::now();
        let shared = Arc::new(Shared {
            bottlenecks: [
                Mutex::new(Bottleneck::new(&config, created_at)),
                Mutex::new(Bottleneck::new(&config, created_at)),
            ],
            config,
            cut: Signal::default(),
            partition: Gate::default(),
            delivered_bytes: Default::default(),
            connections_accepted: AtomicU64::new(0),
            live: Mutex::default(),
            next_connection_id: AtomicU64::new(0),
            workers: Mutex::default(),
            created_at,
            timeline: Mutex::default(),
            stopped: Signal::default(),
        });
        let sampler_state = Arc::clone(&shared);
        let sampler = thread::Builder::new()
            .name("link-sampler".into())
            .spawn(move || sample_until_stopped(&sampler_state))
            .map_err(LinkError::Thread)?;
        Ok(Link {
            shared,
            listeners: Mutex::default(),
            sampler: Some(sampler),
        })
    }

    pub fn config(&self) -> &LinkConfig {
        &self.shared.config
    }

    /// Listens on an ephemeral port of 127.0.0.1 and relays every connection
    /// made to it to `target` through the link; returns the listening address.
    pub fn forward(&self, target: SocketAddr) -> Result<SocketAddr, LinkError> {
        self.forward_from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), target)
    }

    /// Like [`Link::forward`], listening on `listen`.
    pub fn forward_from(
        &self,
        listen: SocketAddr,
        target: SocketAddr,
    ) -> Result<SocketAddr, LinkError> {
        let mut listeners = lock(&self.listeners);
        if self.shared.cut.is_raised() {
            return Err(LinkError::Cut);
        }
        let listener = TcpListener::bind(listen).map_err(|source| match source.kind() {
            ErrorKind::AddrInUse => LinkError::PortInUse { addr: listen },
            _ => LinkError::Listen {
                addr: listen,
                source,
            },
        })?;
        let address = listener.local_addr().map_err(|source| LinkError::Listen {
            addr: listen,
            source,
        })?;
        let shared = Arc::clone(&self.shared);
        let accept_loop = thread::Builder::new()
            .name(format!("link-accept-{}", address.port()))
            .spawn(move || accept_until_cut(&shared, &listener, target))
            .map_err(LinkError::Thread)?;
        listeners.push((address, accept_loop));
        debug!("link: {address} -> {target}");
        Ok(address)
    }

    pub fn stats(&self) -> LinkStats {
        self.shared.stats()
    }

    /// Byte counts every 100 ms since the link was created.
    pub fn timeline(&self) -> Vec<LinkSample> {
        lock(&self.shared.timeline).clone()
    }

    /// Simulates a link failure: every current connection is closed at once
    /// (both ends see end-of-stream or a reset) and the listeners close, so
    /// new connections are refused. Counters and the timeline keep running.
    pub fn cut(&self) {
        let listeners: Vec<_> = {
            let mut listeners = lock(&self.listeners);
            self.shared.cut.raise();
            listeners.drain(..).collect()
        };
        for connection in lock(&self.shared.live)
            .drain()
            .map(|(_, connection)| connection)
        {
            connection.abort();
        }
        for (address, accept_loop) in listeners {
            wake_accept(address);
            let _ = accept_loop.join();
        }
    }

    /// Simulates a partition: from now on no byte crosses in either
    /// direction and no new connection reaches its target, but nothing is
    /// closed either; both ends see silence, as across a failed WAN path.
    /// Bytes already in flight wait, like segments TCP retransmits later.
    pub fn partition(&self) {
        self.shared.partition.set_closed(true);
    }

    /// Ends a partition: what waited is delivered, in order, and the link
    /// carries traffic again.
    pub fn heal(&self) {
        self.shared.partition.set_closed(false);
    }

    /// Stops everything; the same happens when the link is dropped.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        let workers: Vec<_> = lock(&self.shared.workers).drain(..).collect();
        for worker in workers {
            let _ = worker.join();
        }
        self.shared.stopped.raise();
        if let Some(sampler) = self.sampler.take() {
            let _ = sampler.join();
        }
    }
}

impl Shared {
    pub(crate) fn bottleneck(&self, direction: Direction) -> MutexGuard<'_, Bottleneck> {
        lock(&self.bottlenecks[direction as usize])
    }

    pub(crate) fn count_delivered(&self, direction: Direction, bytes: usize) {
        self.delivered_bytes[direction as usize].fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Makes the connection reachable by a cut; None if the link was cut
    /// already (checked under the same lock the cut drains, so no connection
    /// slips through).
    pub(crate) fn register(&self, connection: &Arc<Connection>) -> Option<u64> {
        let mut live = lock(&self.live);
        if self.cut.is_raised() {
            connection.abort();
            return None;
        }
        let id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        live.insert(id, Arc::clone(connection));
        Some(id)
    }

    pub(crate) fn deregister(&self, id: u64) {
        lock(&self.live).remove(&id);
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            bytes_forward: self.delivered_bytes[Direction::Forward as usize]
                .load(Ordering::Relaxed),
            bytes_backward: self.delivered_bytes[Direction::Backward as usize]
                .load(Ordering::Relaxed),
            connections: self.connections_accepted.load(Ordering::Relaxed),
        }
    }
}

fn accept_until_cut(shared: &Arc<Shared>, listener: &TcpListener, target: SocketAddr) {
    // Connections start their handshake timing when accepted.
    priority::run_relay_thread_ahead();
    loop {
        let accepted = listener.accept();
        // Timing starts here, not when the connection's thread gets to run.
        let accepted_at = Instant::now();
        if shared.cut.is_raised() {
            return;
        }
        let client = match accepted {
            Ok((client, peer)) => {
                debug!("link: connection from {peer} to {target}");
                client
            }
            Err(err) => {
                // Typically out of file descriptors: wait instead of spinning.
                warn!("link: accept failed: {err}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        shared.connections_accepted.fetch_add(1, Ordering::Relaxed);
        let connection_state = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("link-connection".into())
            .spawn(move || connection::serve(&connection_state, client, accepted_at, target));
        match spawned {
            Ok(worker) => {
                let mut workers = lock(&shared.workers);
                workers.retain(|worker| !worker.is_finished());
                workers.push(worker);
            }
            Err(err) => warn!("link: cannot start a thread for a new connection: {err}"),
        }
    }
}

/// Unblocks an accept loop waiting in accept() so that it sees the cut.
fn wake_accept(listening: SocketAddr) {
    let reachable = match listening.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, listening.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, listening.port()))
        }
        _ => listening,
    };
    if let Err(err) = TcpStream::connect_timeout(&reachable, Duration::from_secs(1)) {
        warn!("link: cannot wake the listener on {listening}: {err}");
    }
}

/// Records the counters on a fixed 100 ms grid from creation (sleeping to
/// absolute deadlines, so samples do not drift).
fn sample_until_stopped(shared: &Shared) {
    let mut deadline = shared.created_at;
    loop {
        let stats = shared.stats();
        let elapsed_ms = u64::try_from(deadline.duration_since(shared.created_at).as_millis())
            .unwrap_or(u64::MAX);
        lock(&shared.timeline).push(LinkSample {
            elapsed_ms,
            bytes_forward: stats.bytes_forward,
            bytes_backward: stats.bytes_backward,
        });
        deadline += SAMPLE_INTERVAL;
        if !shared.stopped.sleep_until(deadline) {
            return;
        }
    }
}

//! One relayed TCP connection: its handshake across the link, then a reader
//! and a writer thread for each direction.
//!
//! A reader takes bytes from the sender only when the connection's window
//! and the direction's shared bottleneck have room for them (backpressure),
//! stamps them with their arrival time and hands them to the pipe; the writer
//! passes them to the receiver when that time comes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, warn};

use crate::link::Shared;
use crate::pipe::{Delivery, Payload, Pipe};
use crate::priority;
use crate::propagation::Propagation;

/// A target that does not answer within this is reported and the client
/// connection closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub(crate) enum Direction {
    /// Client to target.
    Forward = 0,
    /// Target to client.
    Backward = 1,
}

pub(crate) struct Connection {
    client: TcpStream,
    target: TcpStream,
    pipes: [Pipe; 2],
}

impl Connection {
    /// Ends the connection at once, in both directions: used by a cut, and
    /// when either side fails.
    pub(crate) fn abort(&self) {
        for pipe in &self.pipes {
            pipe.abort();
        }
        // Waking threads blocked in read or write; errors mean already closed.
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.target.shutdown(Shutdown::Both);
    }

    fn source(&self, direction: Direction) -> &TcpStream {
        match direction {
            Direction::Forward => &self.client,
            Direction::Backward => &self.target,
        }
    }

    fn destination(&self, direction: Direction) -> &TcpStream {
        match direction {
            Direction::Forward => &self.target,
            Direction::Backward => &self.client,
        }
    }

    fn pipe(&self, direction: Direction) -> &Pipe {
        &self.pipes[direction as usize]
    }
}

/// Relays a client connection accepted at `accepted_at` to `target` until
/// both directions have finished or the connection is aborted.
pub(crate) fn serve(link: &Shared, client: TcpStream, accepted_at: Instant, target: SocketAddr) {
    priority::run_relay_thread_ahead();
    // The client's SYN crosses the link before the target sees a connection.
    if !link
        .cut
        .sleep_until(accepted_at + link.config.one_way_delay())
    {
        return;
    }
    // A partition loses the SYN: the target sees nothing until it heals.
    if !link.partition.pass(&link.cut) {
        return;
    }
    let target_stream = match TcpStream::connect_timeout(&target, CONNECT_TIMEOUT) {
        Ok(stream) => stream,
        Err(err) => {
            warn!("link: cannot connect to {target}: {err}; closing the client connection");
            return;
        }
    };
    // The relay already sends each chunk as one write at its arrival time:
    // Nagle's algorithm would only add delay to small chunks.
    for stream in [&client, &target_stream] {
        if let Err(err) = stream.set_nodelay(true) {
            debug!("link: cannot set TCP_NODELAY: {err}");
        }
    }
    let window_bytes = link.config.window_bytes();
    let connection = Arc::new(Connection {
        client,
        target: target_stream,
        pipes: [Pipe::new(window_bytes), Pipe::new(window_bytes)],
    });
    let Some(id) = link.register(&connection) else {
        return;
    };
    // The client's connect() returned at once on this machine, but across
    // the link its first bytes could leave only after the SYN-ACK came back.
    let client_may_send_at = accepted_at + link.config.rtt;
    thread::scope(|threads| {
        let connection = &connection;
        threads.spawn(move || carry(link, connection, Direction::Forward, client_may_send_at));
        threads.spawn(move || carry(link, connection, Direction::Backward, Instant::now()));
        threads.spawn(move || deliver(link, connection, Direction::Forward));
        deliver(link, connection, Direction::Backward);
    });
    link.deregister(id);
}

/// Reader: moves the sender's bytes into the link, from `start_at` on.
fn carry(link: &Shared, connection: &Connection, direction: Direction, start_at: Instant) {
    priority::run_relay_thread_ahead();
    let pipe = connection.pipe(direction);
    if !pipe.sleep_until(start_at) {
        return;
    }
    let mut propagation = Propagation::new(&link.config, StdRng::from_entropy());
    let mut buffer = vec![0; link.config.chunk_bytes()];
    loop {
        if !pipe.wait_for_room(buffer.len()) || !link.partition.pass(&link.cut) {
            return;
        }
        let payload = match (&mut connection.source(direction)).read(&mut buffer) {
            Ok(0) => Payload::Fin,
            Ok(bytes) => Payload::Data(buffer[..bytes].to_vec()),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => {
                debug!("link: {direction:?} read failed: {err}");
                Payload::Abort
            }
        };
        let admission = link
            .bottleneck(direction)
            .admit(payload.len(), Instant::now());
        let at = propagation.arrival(admission.serialized_at, payload.len());
        let last = !matches!(payload, Payload::Data(_));
        pipe.push(Delivery { at, payload });
        // Backpressure: nothing more from this sender until its chunk has
        // found room in the queue.
        if last || !pipe.sleep_until(admission.enters_at) {
            return;
        }
    }
}

/// Writer: hands each chunk to the receiver at its arrival time.
fn deliver(link: &Shared, connection: &Connection, direction: Direction) {
    priority::run_relay_thread_ahead();
    let pipe = connection.pipe(direction);
    let mut destination = connection.destination(direction);
    while let Some(delivery) = pipe.next_due() {
        if !link.partition.pass(&link.cut) {
            return;
        }
        match delivery.payload {
            Payload::Data(bytes) => {
                if let Err(err) = destination.write_all(&bytes) {
                    debug!("link: {direction:?} write failed: {err}");
                    connection.abort();
                    return;
                }
                pipe.delivered(bytes.len());
                link.count_delivered(direction, bytes.len());
            }
            Payload::Fin => {
                // Half-close: the receiver sees end-of-stream, the other
                // direction keeps flowing.
                let _ = destination.shutdown(Shutdown::Write);
                return;
            }
            Payload::Abort => {
                connection.abort();
                return;
            }
        }
    }
}

//! Bounds on what peers can make the agent do at once: connections still in
//! their handshake (each holds a thread, and a silent peer would hold it
//! forever), and migrations being received (each holds a QEMU and its RAM).

use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The agent's bounds on incoming work, from its command line.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Migrations received at the same time; more are refused.
    pub max_incoming: usize,
    /// Connections in their handshake at the same time; more are closed.
    pub max_handshakes: usize,
    /// A connection whose handshake and migration request take longer is
    /// closed: a slow or silent peer cannot hold a slot.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_incoming: 4,
            max_handshakes: 8,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Up to `max` things in progress at once, each holding a [`Slot`].
#[derive(Debug)]
pub struct Slots {
    max: usize,
    in_use: Mutex<usize>,
}

/// One of the [`Slots`], given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max,
            in_use: Mutex::new(0),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// A slot, or `None` when all are taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if *in_use >= self.max {
            return None;
        }
        *in_use += 1;
        Some(Slot(Arc::clone(self)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.0.in_use.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
    }
}

/// Closes a connection when its time is up, unless [`Deadline::disarm`]ed
/// first. A timeout on each read would not do: a peer that sends a byte now
/// and then would never meet it.
#[derive(Debug)]
pub struct Deadline {
    disarm: mpsc::Sender<()>,
}

impl Deadline {
    pub fn arm(socket: TcpStream, timeout: Duration, what: &'static str) -> Deadline {
        let (disarm, disarmed) = mpsc::channel::<()>();
        let peer = socket
            .peer_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        let watch = move || {
            if let Err(RecvTimeoutError::Timeout) = disarmed.recv_timeout(timeout) {
                tracing::warn!(%peer, "{what} took longer than {timeout:?}: connection closed");
                let _ = socket.shutdown(Shutdown::Both);
            }
        };
        if let Err(error) = std::thread::Builder::new()
            .name("deadline".into())
            .spawn(watch)
        {
            tracing::warn!(%error, "cannot watch a connection's deadline");
        }
        Deadline { disarm }
    }

    /// The work finished in time: the connection stays open.
    pub fn disarm(self) {
        let _ = self.disarm.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::Instant;

    #[test]
    fn slots_are_bounded_and_given_back() {
        let slots = Slots::new(2);
        let a = slots.try_take().unwrap();
        let _b = slots.try_take().unwrap();
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_deadline_closes_the_connection_unless_disarmed() {
        let (server, mut client) = pair();
        let started = Instant::now();
        let _deadline = Deadline::arm(
            server.try_clone().unwrap(),
            Duration::from_millis(100),
            "test",
        );
        let mut byte = [0u8];
        assert_eq!(client.read(&mut byte).unwrap(), 0, "not closed");
        assert!(started.elapsed() >= Duration::from_millis(100));

        let (server, mut client) = pair();
        Deadline::arm(
            server.try_clone().unwrap(),
            Duration::from_millis(100),
            "test",
        )
        .disarm();
        client
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let error = client.read(&mut byte).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock, "{error}");
        drop(server);
    }
}

//! The relay thread: it alone owns a TLS session and its TCP socket, and
//! moves bytes between them and the agent's unix socket, both ways, in one
//! `poll` loop (see the crate documentation for why).
//!
//! Backpressure is by not polling: plaintext from the agent is read only
//! once the records made from the last read have left for the peer, and
//! records from the peer are read only once the agent has taken the last
//! plaintext. So at most about one chunk per direction sits in the relay,
//! and a stalled peer or agent stalls the other side as a plain socket
//! would, where the agent's own timeouts see it.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rustls::Connection;

/// Plaintext read from either side at a time.
const CHUNK: usize = 64 << 10;
/// How long a relay whose agent has closed its end keeps trying to get the
/// last records and `close_notify` out before it closes the connection.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Starts the relay of `connection` (handshake done) over `tcp`; returns
/// the agent's end of the plaintext socket pair.
pub(crate) fn start(
    connection: Connection,
    tcp: TcpStream,
    label: String,
) -> io::Result<UnixStream> {
    let (agent_end, relay_end) = UnixStream::pair()?;
    // The sender measures the link by tiny acknowledgements: Nagle's
    // algorithm must not hold them back.
    tcp.set_nodelay(true)?;
    tcp.set_nonblocking(true)?;
    relay_end.set_nonblocking(true)?;
    let mut connection = connection;
    // Buffering is bounded by the loop (one chunk per direction), not by
    // rustls, whose limit would accept a chunk only in part.
    connection.set_buffer_limit(None);
    let relay = Relay {
        connection,
        tcp,
        agent: relay_end,
        to_agent: Vec::with_capacity(CHUNK),
        to_agent_start: 0,
        peer_closed: false,
        agent_eof: false,
        agent_told_eof: false,
        agent_hung_up: None,
    };
    std::thread::Builder::new()
        .name("tls-relay".into())
        .spawn(move || relay.run(&label))?;
    Ok(agent_end)
}

struct Relay {
    connection: Connection,
    tcp: TcpStream,
    /// The relay's end of the agent's socket pair.
    agent: UnixStream,
    /// Plaintext from the peer the agent has not taken yet, from
    /// `to_agent_start` on.
    to_agent: Vec<u8>,
    to_agent_start: usize,
    /// The peer ended its side of the session (`close_notify`).
    peer_closed: bool,
    /// The agent ended its writing: `close_notify` is queued.
    agent_eof: bool,
    /// The agent was shown the end of the peer's data.
    agent_told_eof: bool,
    /// When the agent closed its end for reading too: nothing goes to it
    /// any more, and the relay has `CLOSE_LINGER` to finish.
    agent_hung_up: Option<Instant>,
}

impl Relay {
    fn run(mut self, label: &str) {
        match self.relay() {
            Ok(()) => tracing::debug!(peer = %label, "TLS session closed"),
            Err(error) => tracing::warn!(peer = %label, "TLS link failed: {error}"),
        }
        // The agent reads the end of the stream, its writes fail: a broken
        // TLS link looks to it like a broken TCP connection.
        let _ = self.agent.shutdown(Shutdown::Both);
        let _ = self.tcp.shutdown(Shutdown::Both);
    }

    fn relay(&mut self) -> io::Result<()> {
        let mut chunk = vec![0; CHUNK];
        loop {
            self.pass_to_agent()?;
            if self.peer_closed && !self.to_agent_pending() && !self.agent_told_eof {
                let _ = self.agent.shutdown(Shutdown::Write);
                self.agent_told_eof = true;
            }
            self.flush_to_peer()?;
            let wants_write = self.connection.wants_write();
            let agent_done = self.agent_hung_up.is_some() || self.agent_told_eof;
            if self.agent_eof && agent_done && !wants_write {
                return Ok(());
            }
            let mut timeout = None;
            if let Some(since) = self.agent_hung_up {
                let left = CLOSE_LINGER.saturating_sub(since.elapsed());
                if left.is_zero() {
                    return Err(io::Error::new(
                        ErrorKind::TimedOut,
                        "the peer did not take the session's last records",
                    ));
                }
                timeout = Some(left);
            }

            let read_peer =
                !self.peer_closed && (!self.to_agent_pending() || self.agent_hung_up.is_some());
            let tcp_events = flag(read_peer, libc::POLLIN) | flag(wants_write, libc::POLLOUT);
            let agent_events = flag(!self.agent_eof && !wants_write, libc::POLLIN)
                | flag(self.to_agent_pending(), libc::POLLOUT);
            // While the agent may still hang up, its socket is watched even
            // with nothing to do, for that.
            let watch_agent = agent_events != 0 || self.agent_hung_up.is_none();
            let [tcp_ready, agent_ready] = poll(
                [
                    (tcp_events != 0).then(|| (self.tcp.as_raw_fd(), tcp_events)),
                    watch_agent.then(|| (self.agent.as_raw_fd(), agent_events)),
                ],
                timeout,
            )?;

            if tcp_ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && read_peer {
                self.read_from_peer()?;
            }
            if agent_ready & libc::POLLIN != 0 {
                self.read_from_agent(&mut chunk);
            }
            if agent_ready & (libc::POLLHUP | libc::POLLERR) != 0 && self.agent_hung_up.is_none() {
                self.agent_hung_up = Some(Instant::now());
                self.discard_to_agent();
            }
        }
    }

    fn to_agent_pending(&self) -> bool {
        self.to_agent_start < self.to_agent.len()
    }

    fn discard_to_agent(&mut self) {
        self.to_agent.clear();
        self.to_agent_start = 0;
    }

    /// Hands the agent what plaintext it will take now; returns with
    /// plaintext left over only when the agent's socket is full, so that
    /// otherwise the session holds none (it refuses records when it does).
    fn pass_to_agent(&mut self) -> io::Result<()> {
        loop {
            while self.to_agent_pending() {
                match (&self.agent).write(&self.to_agent[self.to_agent_start..]) {
                    Ok(written) => self.to_agent_start += written,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // Its reading end is closed: nobody will read this.
                    Err(_) => {
                        self.agent_hung_up.get_or_insert_with(Instant::now);
                        self.discard_to_agent();
                    }
                }
            }
            if self.peer_closed {
                return Ok(());
            }
            self.to_agent.resize(CHUNK, 0);
            self.to_agent_start = 0;
            let read = self.connection.reader().read(&mut self.to_agent);
            match read {
                Ok(0) => {
                    self.discard_to_agent();
                    self.peer_closed = true;
                    return Ok(());
                }
                Ok(taken) => {
                    self.to_agent.truncate(taken);
                    if self.agent_hung_up.is_some() {
                        self.discard_to_agent();
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.discard_to_agent();
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the peer closed the connection without ending the TLS session",
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn read_from_peer(&mut self) -> io::Result<()> {
        match self.connection.read_tls(&mut self.tcp) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
        if let Err(error) = self.connection.process_new_packets() {
            // The alert that says why, if the socket takes it.
            let _ = self.connection.write_tls(&mut self.tcp);
            return Err(io::Error::new(ErrorKind::InvalidData, error));
        }
        Ok(())
    }

    fn read_from_agent(&mut self, chunk: &mut [u8]) {
        match (&self.agent).read(chunk) {
            Ok(0) => {
                self.agent_eof = true;
                self.connection.send_close_notify();
            }
            Ok(read) => {
                // Cannot fail: the buffer is unlimited and the handshake done.
                let _ = self.connection.writer().write_all(&chunk[..read]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                self.agent_eof = true;
                self.connection.send_close_notify();
            }
        }
    }

    fn flush_to_peer(&mut self) -> io::Result<()> {
        while self.connection.wants_write() {
            match self.connection.write_tls(&mut self.tcp) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn flag(on: bool, event: libc::c_short) -> libc::c_short {
    if on {
        event
    } else {
        0
    }
}

/// Waits until one of `watched` (descriptor, events; `None` to skip) is
/// ready or `timeout` passes; returns each one's ready events.
fn poll(
    watched: [Option<(libc::c_int, libc::c_short)>; 2],
    timeout: Option<Duration>,
) -> io::Result<[libc::c_short; 2]> {
    let mut fds = watched.map(|entry| {
        let (fd, events) = entry.unwrap_or((-1, 0));
        libc::pollfd {
            fd,
            events,
            revents: 0,
        }
    });
    let timeout_ms = timeout.map_or(-1, |timeout| {
        libc::c_int::try_from(timeout.as_millis().max(1)).unwrap_or(libc::c_int::MAX)
    });
    loop {
        // SAFETY: `fds` is an array of two initialised `pollfd` that lives
        // across the call, and its length is what is passed; poll only
        // writes their `revents`.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
        if ready >= 0 {
            return Ok(fds.map(|fd| fd.revents));
        }
        let error = io::Error::last_os_error();
        if error.kind() != ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

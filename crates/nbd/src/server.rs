//! Accepting connections, running each one, and stopping them all.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use crate::handshake::{negotiate, ExportInfo, Negotiated};
use crate::transmission::{transmit, Session};
use crate::{BlockStore, NbdError};

/// A byte stream a client speaks NBD over: a unix socket (QEMU's usual way)
/// or TCP. The server needs separate handles for reading, replying and
/// stopping it, hence `try_clone` and `shutdown`.
pub trait NbdStream: Read + Write + Send + Sync + Sized + 'static {
    fn try_clone(&self) -> io::Result<Self>;
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;

    /// The socket under the stream, for sending read data straight from a
    /// file (`sendfile`); `None` for a stream that must see every byte
    /// itself (one that encrypts, say).
    fn socket(&self) -> Option<BorrowedFd<'_>> {
        None
    }
}

impl NbdStream for UnixStream {
    fn try_clone(&self) -> io::Result<Self> {
        UnixStream::try_clone(self)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        UnixStream::shutdown(self, how)
    }

    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

impl NbdStream for TcpStream {
    fn try_clone(&self) -> io::Result<Self> {
        TcpStream::try_clone(self)
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }

    fn socket(&self) -> Option<BorrowedFd<'_>> {
        Some(self.as_fd())
    }
}

/// How a connection ended without a protocol or I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// `NBD_CMD_DISC`, after every request before it was answered.
    Disconnected,
    /// The client closed the connection between two requests.
    ClientClosed,
    /// `NBD_OPT_ABORT` during the handshake.
    Aborted,
    /// The server was shut down; requests already read were answered.
    ServerShutdown,
}

/// Workers per connection when not told otherwise: enough to overlap a few
/// slow store calls (a read that waits for a remote block) without many
/// idle threads.
const DEFAULT_WORKERS: usize = 4;

/// An NBD server for one export backed by a [`BlockStore`].
pub struct Server {
    export: ExportInfo,
    store: Arc<dyn BlockStore>,
    workers: usize,
    stop: Arc<Stop>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("export", &self.export)
            .field("workers", &self.workers)
            .field("stopping", &self.stop.stopping())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Serves `store` as the export `export_name` (clients may also ask for
    /// the default export, the empty name).
    pub fn new(
        export_name: impl Into<String>,
        store: Arc<dyn BlockStore>,
    ) -> Result<Self, NbdError> {
        Ok(Self {
            export: ExportInfo {
                name: export_name.into(),
                size: store.size(),
                multi_conn: store.shared_by_connections(),
            },
            store,
            workers: DEFAULT_WORKERS,
            stop: Arc::new(Stop::new().map_err(NbdError::Listener)?),
        })
    }

    /// Threads serving the requests of one connection concurrently (at
    /// least one).
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// A handle that stops this server from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: Arc::clone(&self.stop),
        }
    }

    /// Accepts connections on `listener` and serves each on a thread of its
    /// own until [`ShutdownHandle::shutdown`]; returns once every connection
    /// has ended. A connection's failure is logged and ends only that
    /// connection; a failure to accept stops the whole server.
    pub fn serve_unix(&self, listener: UnixListener) -> Result<(), NbdError> {
        // Accept only when poll says a client waits, and never block in
        // accept if that client left meanwhile.
        listener.set_nonblocking(true).map_err(NbdError::Listener)?;
        // The scope outlives every connection thread: returning waits for
        // them all.
        thread::scope(|scope| loop {
            if self.stop.stopping() {
                return Ok(());
            }
            if let Err(error) = self.stop.wait_readable(&listener) {
                self.stop.shut_down();
                return Err(NbdError::Accept(error));
            }
            let stream = match listener.accept() {
                Ok((stream, _)) => stream,
                Err(error)
                    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) =>
                {
                    continue;
                }
                Err(error) => {
                    self.stop.shut_down();
                    return Err(NbdError::Accept(error));
                }
            };
            scope.spawn(move || self.serve_logged(stream));
        })
    }

    fn serve_logged(&self, stream: UnixStream) {
        // The listener is non-blocking; the connection must not be.
        if let Err(error) = stream.set_nonblocking(false) {
            tracing::warn!(%error, "NBD connection dropped: cannot make it blocking");
            return;
        }
        if let Err(error) = widen_send_buffer(&stream) {
            tracing::debug!(%error, "NBD connection keeps its default send buffer");
        }
        match self.serve_connection(stream) {
            Ok(end) => tracing::debug!(?end, export = %self.export.name, "NBD connection ended"),
            Err(error) => tracing::warn!(
                error = %error_chain(&error),
                export = %self.export.name,
                "NBD connection failed"
            ),
        }
    }

    /// Runs one connection on the calling thread, handshake to disconnect.
    /// Requests are read here and served by this server's worker threads.
    pub fn serve_connection<S: NbdStream>(&self, stream: S) -> Result<ConnectionEnd, NbdError> {
        let _registered = self.stop.register(&stream)?;
        let served = self.run(stream);
        match served {
            // Shutting the socket down is how the server stops a
            // connection; what the connection made of that is no failure.
            Err(_) if self.stop.stopping() => Ok(ConnectionEnd::ServerShutdown),
            other => other,
        }
    }

    fn run<S: NbdStream>(&self, mut stream: S) -> Result<ConnectionEnd, NbdError> {
        let reader = stream.try_clone().map_err(|source| NbdError::Receive {
            what: "(cloning the connection for requests)",
            source,
        })?;
        // One buffered reader from the first byte on: what it reads ahead
        // past the handshake belongs to the first requests.
        let mut input = BufReader::with_capacity(64 << 10, reader);
        match negotiate(&mut input, &mut stream, &self.export)? {
            Negotiated::Aborted => Ok(ConnectionEnd::Aborted),
            Negotiated::Transmission { structured_replies } => {
                let session = Session {
                    store: self.store.as_ref(),
                    structured_replies,
                    workers: self.workers,
                    stopping: &self.stop.stopping,
                };
                transmit(input, stream, &session)
            }
        }
    }
}

/// Asks for a send buffer that holds a few large read replies, so a worker
/// hands a reply to the kernel in one call instead of waking up each time
/// the client has taken the default buffer's 200 KiB. The kernel caps it at
/// `net.core.wmem_max`.
fn widen_send_buffer(stream: &UnixStream) -> io::Result<()> {
    const SEND_BUFFER: libc::c_int = 4 << 20;
    // An int's size, which any socklen_t holds.
    #[allow(clippy::cast_possible_truncation)]
    const OPTION_LEN: libc::socklen_t = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option value is a live local of the size passed, and the
    // descriptor is open for the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            std::ptr::from_ref(&SEND_BUFFER).cast(),
            OPTION_LEN,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Stops a [`Server`]: no new connections, and every connection stops
/// reading requests, answers those it has, and ends.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    stop: Arc<Stop>,
}

impl ShutdownHandle {
    /// Returns at once; `serve_unix` returns when the connections have
    /// ended. A server once shut down serves no more.
    pub fn shutdown(&self) {
        self.stop.shut_down();
    }
}

type StopConnection = Box<dyn Fn() + Send + Sync>;

/// The shared state of stopping: a flag, a way to wake the accept loop, and
/// the live connections' read sides to shut.
struct Stop {
    stopping: AtomicBool,
    wake_sender: UnixStream,
    wake_receiver: UnixStream,
    next_connection: AtomicU64,
    connections: Mutex<HashMap<u64, StopConnection>>,
}

impl fmt::Debug for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stop")
            .field("stopping", &self.stopping())
            .finish_non_exhaustive()
    }
}

/// Removes a connection from the ones a shutdown must stop.
struct Registration<'a> {
    stop: &'a Stop,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.stop
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Stop {
    fn new() -> io::Result<Self> {
        let (wake_sender, wake_receiver) = UnixStream::pair()?;
        wake_sender.set_nonblocking(true)?;
        Ok(Self {
            stopping: AtomicBool::new(false),
            wake_sender,
            wake_receiver,
            next_connection: AtomicU64::new(0),
            connections: Mutex::new(HashMap::new()),
        })
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn shut_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        // One byte left unread keeps the wake descriptor readable for every
        // accept loop; a full buffer means one is there already.
        let _ = (&self.wake_sender).write(&[1]);
        let connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for stop_connection in connections.values() {
            stop_connection();
        }
    }

    fn register<S: NbdStream>(&self, stream: &S) -> Result<Registration<'_>, NbdError> {
        let control = stream.try_clone().map_err(|source| NbdError::Receive {
            what: "(cloning the connection for shutdown)",
            source,
        })?;
        // Shutting the read side ends the handshake or the request reader
        // with end-of-file, while replies to requests read can still go out.
        // A failure means the connection is closed already.
        let stop_connection: StopConnection = Box::new(move || {
            let _ = control.shutdown(Shutdown::Read);
        });
        let id = self.next_connection.fetch_add(1, Ordering::SeqCst);
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A shutdown that ran before this registration did not see it.
        if self.stopping() {
            stop_connection();
        }
        connections.insert(id, stop_connection);
        Ok(Registration { stop: self, id })
    }

    /// Waits until `listener` has a client or the server is shutting down.
    fn wait_readable(&self, listener: &UnixListener) -> io::Result<()> {
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake_receiver.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the whole call,
        // and both descriptors stay open (owned by `listener` and `self`).
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != ErrorKind::Interrupted {
                return Err(error);
            }
        }
        Ok(())
    }
}

/// An error with its sources, for one log line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

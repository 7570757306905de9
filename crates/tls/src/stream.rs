//! [`PeerStream`]: the stream an agent reads and writes its peer through,
//! the same API with TLS or without.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::Connection;

use crate::relay;

/// The agent's end of its link to a peer: the TCP connection itself in
/// plaintext, or with TLS one end of a unix socket pair whose other end a
/// relay thread joins to the TLS session. Either way it can be cloned for
/// another thread, shut down from any thread to unblock the others, and
/// given read and write timeouts.
#[derive(Debug)]
pub enum PeerStream {
    /// No encryption, no authentication: only with the operator's
    /// explicit consent.
    Plain(TcpStream),
    Tls(TlsStream),
}

/// The plaintext side of a TLS session with an authenticated peer.
#[derive(Debug)]
pub struct TlsStream {
    plaintext: UnixStream,
    address: String,
    /// The names in the peer's certificate.
    peer_names: Arc<[String]>,
}

impl TlsStream {
    pub(crate) fn start(
        connection: Connection,
        tcp: TcpStream,
        address: String,
        peer_names: Vec<String>,
    ) -> io::Result<TlsStream> {
        let peer_names: Arc<[String]> = peer_names.into();
        let label = format!("{address} ({})", peer_names.join(", "));
        Ok(TlsStream {
            plaintext: relay::start(connection, tcp, label)?,
            address,
            peer_names,
        })
    }

    /// The names in the peer's certificate.
    pub fn peer_names(&self) -> &[String] {
        &self.peer_names
    }
}

impl From<TcpStream> for PeerStream {
    fn from(stream: TcpStream) -> PeerStream {
        PeerStream::Plain(stream)
    }
}

impl PeerStream {
    pub fn try_clone(&self) -> io::Result<PeerStream> {
        Ok(match self {
            PeerStream::Plain(tcp) => PeerStream::Plain(tcp.try_clone()?),
            PeerStream::Tls(tls) => PeerStream::Tls(TlsStream {
                plaintext: tls.plaintext.try_clone()?,
                address: tls.address.clone(),
                peer_names: Arc::clone(&tls.peer_names),
            }),
        })
    }

    /// With TLS, shutting down both directions ends the session (the relay
    /// sends `close_notify` and closes the TCP connection); shutting down
    /// writing sends `close_notify` while what the peer still sends arrives.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            PeerStream::Plain(tcp) => tcp.shutdown(how),
            PeerStream::Tls(tls) => tls.plaintext.shutdown(how),
        }
    }

    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            PeerStream::Plain(tcp) => tcp.set_read_timeout(timeout),
            PeerStream::Tls(tls) => tls.plaintext.set_read_timeout(timeout),
        }
    }

    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            PeerStream::Plain(tcp) => tcp.set_write_timeout(timeout),
            PeerStream::Tls(tls) => tls.plaintext.set_write_timeout(timeout),
        }
    }

    /// Small messages leave at once. The TLS relay's socket always has
    /// Nagle's algorithm off.
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            PeerStream::Plain(tcp) => tcp.set_nodelay(nodelay),
            PeerStream::Tls(_) => Ok(()),
        }
    }

    /// The peer for messages: its address, and with TLS its name.
    pub fn describe_peer(&self) -> String {
        match self {
            PeerStream::Plain(tcp) => tcp
                .peer_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "?".into()),
            PeerStream::Tls(tls) => format!("{} ({})", tls.address, tls.peer_names.join(", ")),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, PeerStream::Tls(_))
    }
}

impl Read for &PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(tcp) => (&*tcp).read(buf),
            PeerStream::Tls(tls) => (&tls.plaintext).read(buf),
        }
    }
}

impl Write for &PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            PeerStream::Plain(tcp) => (&*tcp).write(buf),
            PeerStream::Tls(tls) => (&tls.plaintext).write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for PeerStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for PeerStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

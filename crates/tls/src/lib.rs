//! Mutual TLS for the link between two mllm agents.
//!
//! Every agent holds a certificate signed by the deployment's CA, named
//! after its host (the DNS name in the certificate's subject alternative
//! names), and a list of the peer names it accepts. A peer is accepted only
//! if its certificate chains to that CA, is valid now, and is valid for a
//! name in the list; both sides check (client certificates are mandatory).
//! Refusals say why in plain words ([`HandshakeFailure`]). [`certs`] makes a
//! CA and host certificates for a small deployment (`mllm certs`).
//!
//! # Why a relay thread
//!
//! The agent reads and writes its link from separate threads (on the
//! source, a sender and a receiver), clones the stream for each, sets
//! timeouts on it and shuts it down from any thread to unblock the others.
//! A rustls session is one object that both directions change, so it
//! cannot be read on one thread while written on another. Rather than lock
//! it (a reader blocked in the socket would hold the lock the writer
//! needs) or make the agent's I/O non-blocking, a relay thread owns the
//! session and the TCP socket, and joins them to one end of a unix socket
//! pair; the agent gets the other end, a plain stream with all of the
//! above ([`PeerStream`]). The cost is one more copy of each byte through
//! the kernel and a thread per link, small next to a link of a few hundred
//! Mbit/s; the gain is that the agent's code is the same with TLS or
//! without.
//!
//! Shutting the agent's end down ends the session (`close_notify`, then the
//! TCP connection is closed); a broken TCP connection or TLS session shuts
//! the agent's end down, so the agent reads the end of the stream and its
//! writes fail, as with a broken plain connection (the relay logs the
//! cause).
//!
//! # After the handshake
//!
//! TLS 1.3 only. Once the server has accepted the client it sends one byte;
//! the client waits for it before handing over the stream. Without it a
//! refused client would learn of the refusal only when its first message
//! failed, since a TLS 1.3 client finishes its handshake before the server
//! has checked its certificate.

pub mod certs;
mod context;
mod error;
mod relay;
mod stream;
mod verify;

pub use certs::{CertificateAuthority, HostCertificate, Validity};
pub use context::{TlsContext, HANDSHAKE_TIMEOUT};
pub use error::{HandshakeFailure, TlsError};
pub use stream::{PeerStream, TlsStream};
pub use verify::{NameNotAllowed, WrongPeer};

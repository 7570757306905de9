//! The one error type of the crate: every message names its cause and, where
//! there is one, what to do about it.

use std::io;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A setting outside what the emulator can honour; `field` is the name
    /// used in the TOML form (see the crate docs).
    #[error("invalid link config: {field}: {problem}")]
    InvalidConfig {
        field: &'static str,
        problem: String,
    },
    #[error("cannot read {input:?} as a {what}: {hint}")]
    Parse {
        what: &'static str,
        input: String,
        hint: String,
    },
    #[error("cannot listen on {addr}: the port is in use; choose another port or stop the program holding it")]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start a relay thread: {0}")]
    Thread(io::Error),
    #[error("the link has been cut: it accepts no new forwards")]
    Cut,
}

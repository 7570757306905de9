//! Why a connection ended badly, or the server could not serve.

use std::io;

/// Everything that ends a connection or the server other than a client's
/// orderly goodbye. Each message names what the client did wrong or what was
/// being done when the system refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NbdError {
    #[error("sending the NBD greeting")]
    Greeting(#[source] io::Error),
    #[error("client flags 0x{flags:x}: {problem}")]
    ClientFlags { flags: u32, problem: &'static str },
    #[error("option magic 0x{found:016x} where IHAVEOPT (0x{expected:016x}) belongs")]
    BadOptionMagic { found: u64, expected: u64 },
    #[error("client asked for export {name:?}; this server has only {served:?}")]
    UnknownExport { name: String, served: String },
    #[error("NBD_OPT_EXPORT_NAME with a {len}-byte name, above the {limit}-byte limit")]
    ExportNameTooLong { len: u32, limit: u32 },
    #[error("reading the client's {what}")]
    Receive {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("sending {what} to the client")]
    Send {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("request magic 0x{found:08x} where 0x{expected:08x} belongs")]
    BadRequestMagic { found: u32, expected: u32 },
    #[error("unknown command type {command} (cookie 0x{cookie:x}): its payload length is unknown, so the stream cannot be followed")]
    UnknownCommand { command: u16, cookie: u64 },
    #[error("accepting NBD connections")]
    Accept(#[source] io::Error),
    #[error("setting up the NBD listener")]
    Listener(#[source] io::Error),
}

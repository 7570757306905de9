//! Programs that run inside the test guest, and the line protocol the host
//! reads from them (see [`protocol`]).
//!
//! - [`heartbeat`]: `HB <seq>` at a fixed interval.
//! - [`workload`] over a [`store::MemStore`] (memload) or a
//!   [`disk_store::DiskStore`] (diskload): rate-limited reads and writes of
//!   self-checking [`record`]s, picked by [`access`], with a verification
//!   sweep spread over each period.
//! - [`wrapped`]: any command, its throughput read by [`tool_output`].
//!
//! The host side needs only [`protocol::parse_line`]; it can depend on this
//! crate with `default-features = false` to leave out the command-line parser.

pub mod access;
mod aligned;
mod convert;
pub mod disk_store;
pub mod heartbeat;
pub mod pacing;
pub mod protocol;
pub mod record;
pub mod rng;
pub mod store;
pub mod tool_output;
pub mod units;
pub mod workload;
pub mod wrapped;
pub mod zipf;

pub use protocol::{parse_line, EventWriter, GuestEvent};

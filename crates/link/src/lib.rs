//! An inter-datacenter link emulated in user space (this kernel has no
//! `sch_netem`): a TCP relay that imposes bandwidth, delay, a bounded queue,
//! jitter and loss-as-stall, and counts the bytes that cross it.
//!
//! ```no_run
//! # fn main() -> Result<(), mllm_link::LinkError> {
//! use mllm_link::{parse_rate, Link, LinkConfig};
//! use std::time::Duration;
//!
//! let config = LinkConfig {
//!     bandwidth_bits_per_s: parse_rate("100Mbit")?,
//!     rtt: Duration::from_millis(50),
//!     ..LinkConfig::default()
//! };
//! let link = Link::new(config)?;
//! let qemu_incoming = "127.0.0.1:4444".parse().unwrap();
//! let through_link = link.forward(qemu_incoming)?; // migrate to this address
//! // ... later
//! println!("{} bytes crossed the link", link.stats().total_bytes());
//! # Ok(()) }
//! ```
//!
//! # The model
//! Each direction has one bottleneck shared by every connection through the
//! [`Link`], whatever forward it came in by. A byte's way across:
//!
//! 1. The relay reads it from the sender: it *enters the link*.
//! 2. It waits in the FIFO queue (`queue_bytes`) behind everything that
//!    entered before it, from any connection, then is serialized at
//!    `bandwidth_bits_per_s`: a token bucket without burst allowance, so the
//!    line never runs faster than its rate, even after idling. A chunk read
//!    while the queue is full waits for room in read order (which shares the
//!    line fairly between busy connections), and its connection is not read
//!    again until it is in: the sender's data stays in its socket and TCP
//!    pushes back on the sender. Nothing is ever dropped. (Each connection's
//!    window, which never binds for a receiver that keeps up, also stops
//!    reading when its receiver does not take what arrives.)
//! 3. It then propagates for `rtt / 2`, plus a uniform draw within
//!    ±`jitter`, plus `stall_time` if a segment of its chunk was "lost"
//!    (probability `stall_probability` per 1448-byte segment). Bytes of one
//!    connection arrive in order, so a stall also holds up what follows it on
//!    that connection, as a TCP retransmission does.
//! 4. It is written to the receiver at its arrival time and counted in
//!    [`LinkStats`].
//!
//! Bytes move in chunks of about 1 ms of serialization time (at least one
//! 1448-byte segment, at most 64 KiB): store-and-forward per chunk, as a
//! router forwards packets. A connection's handshake costs what it costs on
//! a real link: the target sees the connection after `rtt / 2`, and the
//! client's first bytes leave after one RTT. A sender's shutdown of its
//! writing side reaches the receiver, after the data before it, as a
//! half-close; a reset or a failed write ends the whole connection.
//!
//! The relay's threads ask for a low real-time priority (granted to root)
//! so that busy CPUs, such as QEMU under TCG filling every core during a
//! migration, do not add their scheduling delays to the link's; without it
//! they run as ordinary threads and a warning says so once.
//!
//! # TOML (and JSON) form
//! [`LinkConfig`] deserializes from quantities written with units, and
//! validates while doing so. Every field is optional; unknown fields are
//! rejected.
//!
//! ```toml
//! bandwidth = "100Mbit"        # or "1Gbit", "100Mbit/s", "12.5MB/s", or bits/s as a number
//! rtt = "50ms"                 # ns, us, ms, s, min, h
//! queue = "640KiB"             # or bytes as a number; default: one bandwidth-delay product
//! jitter = "2ms"               # default 0
//! stall_probability = 0.0001   # per 1448-byte segment; default 0
//! stall_time = "200ms"         # default 200ms
//! ```
//!
//! Missing fields take the values of [`LinkConfig::default`] (100 Mbit/s,
//! 50 ms), except `queue`, which is one bandwidth-delay product of the link
//! as written ([`LinkConfig::default_queue_bytes`]). Serializing writes the
//! same form. [`parse_rate`], [`parse_duration`] and [`parse_size`] read the
//! same quantities for command-line options.

mod bottleneck;
mod config;
mod connection;
mod error;
mod human;
mod link;
mod pipe;
mod priority;
mod propagation;
mod sync;
mod units;

pub use config::LinkConfig;
pub use error::LinkError;
pub use link::{Link, LinkSample, LinkStats};
pub use units::{
    format_duration, format_rate, format_size, parse_duration, parse_rate, parse_size,
};

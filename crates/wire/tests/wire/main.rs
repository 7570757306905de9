//! Black-box tests of the agent protocol through its public API.

mod digest;
mod frames;
mod handshake;
mod messages;
mod page_batch;
mod support;

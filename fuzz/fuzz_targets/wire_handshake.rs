//! The peer's hello. An even first byte: the rest as the peer sends it; an
//! odd one: the rest as a hello body, sealed with magic, version, length and
//! checksum so that it reaches the body decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm_wire::{handshake, Capabilities, Hello, Role};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealed;
    let input = if mode & 1 == 1 {
        sealed = mllm_fuzz::sealed_hello(rest);
        &sealed[..]
    } else {
        rest
    };
    let local = Hello {
        role: Role::Source,
        capabilities: Capabilities::all(),
    };
    let mut peer = mllm_fuzz::Peer {
        input,
        told: Vec::new(),
    };
    let _ = handshake(&mut peer, &local);
});

//! Message bodies behind a valid header and checksum: the first byte picks
//! the message type, the rest is the body. Reaches every body decoder and the
//! page batch decompression.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm_wire::{MessageType, WireError};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let message_type = MessageType::ALL[usize::from(pick) % MessageType::ALL.len()];
    let frame = mllm_fuzz::sealed_frame(message_type.code(), body);
    let error = mllm_fuzz::read_stream(&frame);
    assert!(
        matches!(error, WireError::Closed | WireError::Malformed { .. }),
        "{error}"
    );
});

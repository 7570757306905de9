//! Raw bytes from the peer, as the agent's frame reader sees them: headers,
//! lengths and checksums.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mllm_fuzz::read_stream(data);
});

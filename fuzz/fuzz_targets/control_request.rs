//! A control-socket connection's bytes, read as the daemon reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm_control::{ControlRequest, RequestError};

fuzz_target!(|data: &[u8]| {
    if let Err(RequestError::Io(error)) = ControlRequest::read_from(data) {
        panic!("reading a byte slice failed: {error}");
    }
});

//! A line read by the hook (a request) and by the tracker (a reply).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm_hook_protocol::{Reply, Request};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = Request::parse(data) {
        assert_eq!(Request::parse(request.encode().as_bytes()), Ok(request));
    }
    let _ = Reply::parse(data);
});

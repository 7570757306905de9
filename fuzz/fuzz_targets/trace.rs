//! A trace file given to `mllm sim`: binary or text, memory or disk.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mllm_core::trace::{read_trace_with_limit, Trace, TraceError};

/// Far below the reader's default, so that a file claiming more is refused
/// within the run's allocation limit instead of filling it.
const MAX_PAGE_WRITES: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    match read_trace_with_limit(data, MAX_PAGE_WRITES) {
        Ok((Trace::Memory(trace), _)) => {
            let writes: usize = trace.intervals.iter().map(|i| i.pages().len()).sum();
            assert!(writes as u64 <= MAX_PAGE_WRITES);
        }
        Err(TraceError::Io(error)) => panic!("reading a byte slice failed: {error}"),
        _ => {}
    }
});

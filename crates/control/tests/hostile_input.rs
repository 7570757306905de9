//! Control-socket requests fed hostile bytes through
//! [`ControlRequest::read_from`], as the daemon reads a connection: each
//! read ends in a request or a typed error, never a panic, reads no further
//! than the request limit, holds memory in proportion to what it read, and
//! valid requests read back as sent.
//!
//! `PROPTEST_CASES` raises the number of cases; the long run is
//! `scripts/fuzz.sh` (docs/reliability.md).

#[path = "../../../testing/mutations.rs"]
mod mutations;
#[path = "../../../testing/peak_alloc.rs"]
mod peak_alloc;

use std::io::Read;

use mllm_control::{
    ControlRequest, MigrateRequest, RecordTraceRequest, RequestError, MAX_REQUEST_LEN,
};
use proptest::prelude::*;

use mutations::{apply, mutations};
use peak_alloc::{peak_during, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decoded requests and their parse errors may take this many bytes per
/// byte read, plus the reader's buffer.
const BYTES_PER_INPUT_BYTE: usize = 8;

/// Reads `input` as the daemon does; checks how far it read and what it held.
fn read(input: &[u8]) -> Result<ControlRequest, RequestError> {
    let mut rest = input;
    let (result, peak) = peak_during(|| ControlRequest::read_from(&mut rest));
    let consumed = input.len() - rest.len();
    assert!(consumed <= MAX_REQUEST_LEN + 1, "read {consumed} bytes");
    assert!(
        peak <= BYTES_PER_INPUT_BYTE * consumed + (16 << 10),
        "reading {consumed} bytes held {peak} bytes"
    );
    if let Err(RequestError::Io(error)) = &result {
        panic!("reading a byte slice failed: {error}");
    }
    result
}

fn request() -> impl Strategy<Value = ControlRequest> {
    let migrate = (
        ".{0,40}",
        ".{0,40}",
        ".{0,12}",
        any::<u64>(),
        ".{0,12}",
        any::<u32>(),
        any::<bool>(),
        proptest::option::of("/[a-z/]{0,30}"),
        proptest::option::of("[a-z-]{0,30}"),
    )
        .prop_map(
            |(
                vm,
                to,
                policy,
                downtime_ms,
                compression,
                max_rounds,
                verify,
                trace_file,
                disk_move,
            )| {
                ControlRequest::Migrate(MigrateRequest {
                    vm,
                    to,
                    policy,
                    downtime_ms,
                    compression,
                    max_rounds,
                    verify,
                    trace_file: trace_file.map(Into::into),
                    disk_move,
                })
            },
        );
    // Quarter seconds: serde_json may round the last bit of other floats.
    let record = (".{0,40}", any::<i32>(), any::<u64>(), "/[a-z/]{0,30}").prop_map(
        |(vm, quarters, interval_ms, out)| {
            ControlRequest::RecordTrace(RecordTraceRequest {
                vm,
                seconds: f64::from(quarters) / 4.0,
                interval_ms,
                out: out.into(),
            })
        },
    );
    prop_oneof![Just(ControlRequest::List), migrate, record]
}

fn line(request: &ControlRequest) -> Vec<u8> {
    let mut line = serde_json::to_vec(request).unwrap();
    line.push(b'\n');
    line
}

proptest! {
    #[test]
    fn arbitrary_bytes(input in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = read(&input);
    }

    #[test]
    fn json_shaped_noise(input in r#"[{}\[\]":,0-9a-z\-. \\]{0,300}\n?"#) {
        let _ = read(input.as_bytes());
    }

    #[test]
    fn mutated_requests(request in request(), mutations in mutations()) {
        let mut input = line(&request);
        apply(&mut input, &mutations);
        let _ = read(&input);
    }

    #[test]
    fn requests_round_trip(request in request(), after in proptest::collection::vec(any::<u8>(), 0..64)) {
        // Whatever follows the line is not read as part of the request.
        let input = [line(&request), after].concat();
        prop_assert_eq!(read(&input).unwrap(), request);
    }
}

#[test]
fn nested_json_is_refused_without_exhausting_the_stack() {
    let deep = "[".repeat(MAX_REQUEST_LEN - 1);
    assert!(matches!(
        read(deep.as_bytes()),
        Err(RequestError::Unreadable { .. })
    ));
}

#[test]
fn an_endless_line_is_cut_at_the_limit() {
    let endless = std::io::repeat(b'a').take(1 << 30);
    let (result, peak) = peak_during(|| ControlRequest::read_from(endless));
    assert!(matches!(result, Err(RequestError::TooLong { .. })));
    // The line's buffer grows by doubling, its old and new blocks both
    // held while it moves.
    assert!(peak <= 4 * MAX_REQUEST_LEN, "held {peak} bytes");
}

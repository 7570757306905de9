//! Trace files fed hostile bytes through [`read_trace_with_limit`], as
//! `mllm sim` reads a file it is given: binary and text, memory and disk.
//! Each read ends in a trace or a typed error, never a panic; memory is
//! bounded by the page-write limit plus a fixed factor of the input, however
//! many pages or records the file claims; valid traces read back as written.
//!
//! `PROPTEST_CASES` raises the number of cases; the long run is
//! `scripts/fuzz.sh` (docs/reliability.md).

#[path = "../../../testing/mutations.rs"]
mod mutations;
#[path = "../../../testing/peak_alloc.rs"]
mod peak_alloc;

use mllm_core::trace::{
    binary, read_trace_with_limit, text, DiskAccess, DiskOp, DiskTrace, DiskTraceHeader, Encoding,
    MemoryTrace, MemoryTraceHeader, Trace, TraceError, WriteInterval,
};
use proptest::prelude::*;

use mutations::{apply, mutations};
use peak_alloc::{peak_during, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Small, so that a file claiming more is refused quickly; large enough for
/// every valid trace generated here.
const MAX_PAGE_WRITES: u64 = 1 << 16;

/// Page numbers take 4 bytes each, their lists at most 4 times that while
/// they grow; intervals and records at most 64 bytes per input byte (32 for
/// an interval of two bytes, doubled while its list grows); and the reader's
/// buffers.
fn memory_bound(input: usize) -> usize {
    16 * usize::try_from(MAX_PAGE_WRITES).unwrap() + 64 * input + (64 << 10)
}

fn read(input: &[u8]) -> Result<(Trace, Encoding), TraceError> {
    let (result, peak) = peak_during(|| read_trace_with_limit(input, MAX_PAGE_WRITES));
    assert!(
        peak <= memory_bound(input.len()),
        "reading {} bytes held {peak} bytes",
        input.len()
    );
    match &result {
        Ok((Trace::Memory(trace), _)) => {
            let writes: usize = trace.intervals.iter().map(|i| i.pages().len()).sum();
            assert!(writes as u64 <= MAX_PAGE_WRITES);
        }
        Err(TraceError::Io(error)) => panic!("reading a byte slice failed: {error}"),
        _ => {}
    }
    result
}

fn memory_trace() -> impl Strategy<Value = MemoryTrace> {
    (1u32..5000)
        .prop_flat_map(|page_count| {
            let interval = (
                any::<u64>(),
                proptest::collection::vec(0..page_count, 0..100),
            );
            (Just(page_count), proptest::collection::vec(interval, 0..10))
        })
        .prop_map(|(page_count, intervals)| MemoryTrace {
            header: MemoryTraceHeader {
                page_size: 4096,
                page_count,
            },
            intervals: intervals
                .into_iter()
                .map(|(duration, pages)| WriteInterval::new(duration, pages))
                .collect(),
        })
}

fn disk_trace() -> impl Strategy<Value = DiskTrace> {
    let record = (0u64..1 << 20, any::<bool>(), 0u64..1 << 40, any::<u32>());
    proptest::collection::vec(record, 0..20).prop_map(|records| {
        let mut time_us = 0;
        DiskTrace {
            header: DiskTraceHeader {
                disk_bytes: 1 << 42,
            },
            records: records
                .into_iter()
                .map(|(delta, write, offset, length)| {
                    time_us += delta;
                    DiskAccess {
                        time_us,
                        op: if write { DiskOp::Write } else { DiskOp::Read },
                        offset,
                        length,
                    }
                })
                .collect(),
        }
    })
}

/// A valid trace of either kind in either encoding, and what it holds.
fn encoded_trace() -> impl Strategy<Value = (Vec<u8>, Trace)> {
    let trace = prop_oneof![
        memory_trace().prop_map(Trace::Memory),
        disk_trace().prop_map(Trace::Disk),
    ];
    (trace, any::<bool>()).prop_map(|(trace, as_text)| {
        let mut bytes = Vec::new();
        match (&trace, as_text) {
            (Trace::Memory(memory), false) => binary::write_memory(memory, &mut bytes),
            (Trace::Memory(memory), true) => text::write_memory(memory, &mut bytes),
            (Trace::Disk(disk), false) => binary::write_disk(disk, &mut bytes),
            (Trace::Disk(disk), true) => text::write_disk(disk, &mut bytes),
        }
        .unwrap();
        (bytes, trace)
    })
}

/// The start of each kind of trace, so arbitrary bytes get past the magic.
fn header() -> impl Strategy<Value = Vec<u8>> {
    let binary = |magic: [u8; 8]| [&magic[..], &1u16.to_le_bytes()].concat();
    prop_oneof![
        Just(Vec::new()),
        Just(binary(binary::MEMORY_MAGIC)),
        Just(binary(binary::DISK_MAGIC)),
        Just(b"mllm memory trace v1\n".to_vec()),
        Just(b"mllm disk trace v1\n".to_vec()),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes(header in header(), body in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = read(&[header, body].concat());
    }

    #[test]
    fn text_shaped_noise(
        header in header(),
        body in "((page_size|page_count|disk_bytes) [0-9]{1,20}\n){0,2}([0-9RW -]{0,40}\n){0,20}",
    ) {
        let _ = read(&[header, body.into_bytes()].concat());
    }

    #[test]
    fn mutated_traces((bytes, _) in encoded_trace(), mutations in mutations()) {
        let mut bytes = bytes;
        apply(&mut bytes, &mutations);
        let _ = read(&bytes);
    }

    #[test]
    fn traces_round_trip((bytes, trace) in encoded_trace()) {
        prop_assert_eq!(read(&bytes).unwrap().0, trace);
    }
}

#[test]
fn claims_of_more_pages_than_the_limit_are_refused_in_bounded_memory() {
    let everything =
        "mllm memory trace v1\npage_size 4096\npage_count 4294967295\n1 0-4294967294\n";
    assert!(matches!(
        read(everything.as_bytes()),
        Err(TraceError::TooLarge {
            limit: MAX_PAGE_WRITES
        })
    ));
    let trace = MemoryTrace {
        header: MemoryTraceHeader {
            page_size: 4096,
            page_count: u32::MAX,
        },
        intervals: vec![WriteInterval::new(1, vec![0, 1 << 20])],
    };
    let mut bytes = Vec::new();
    binary::write_memory(&trace, &mut bytes).unwrap();
    // The second run's length, a varint of one byte, now claims 2^31 pages.
    let last = bytes.len() - 1;
    bytes.splice(last.., [0x80, 0x80, 0x80, 0x80, 0x08]);
    assert!(matches!(
        read(&bytes),
        Err(TraceError::TooLarge {
            limit: MAX_PAGE_WRITES
        })
    ));
}

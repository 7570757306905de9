//! Arbitrary and mutated client bytes against a whole connection: the
//! handshake, option parsing and request decoding must never panic, never
//! allocate beyond the payload limit, and always end once the client stops.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use mllm_nbd::{Server, MAX_PAYLOAD};
use proptest::prelude::*;

/// Records the largest single allocation the process makes.
struct LargestAllocation;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is an atomic maximum, which neither allocates nor panics.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `layout` hold for System too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        // SAFETY: `ptr` came from this allocator, which is System's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is System's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// The export: small, so most generated ranges fall outside it.
const EXPORT_SIZE: usize = 1 << 20;

/// The largest single allocation allowed. No request that fits the export
/// needs more than the export's size; every longer length (up to 4 GiB on
/// the wire) must be refused without allocating it.
const ALLOCATION_LIMIT: usize = EXPORT_SIZE + (1 << 20);

/// Plays `bytes` as a client (then closes its sending side), throws the
/// replies away, and checks the server ends in time without panicking.
fn play(server: &Arc<Server>, bytes: Vec<u8>) {
    let (client, theirs) = UnixStream::pair().unwrap();
    let (ended, ended_receiver) = mpsc::channel();
    let serving = {
        let server = Arc::clone(server);
        thread::spawn(move || {
            let result = server.serve_connection(theirs);
            let _ = ended.send(());
            result
        })
    };
    let mut replies = client.try_clone().unwrap();
    let draining = thread::spawn(move || {
        let mut sink = [0u8; 64 << 10];
        while matches!(replies.read(&mut sink), Ok(read) if read > 0) {}
    });
    let mut sender = client.try_clone().unwrap();
    // The server may close first; what it did not read does not matter.
    let _ = sender.write_all(&bytes);
    let _ = sender.shutdown(Shutdown::Write);

    let in_time = ended_receiver.recv_timeout(Duration::from_secs(20)).is_ok();
    if !in_time {
        let _ = client.shutdown(Shutdown::Both);
    }
    // A panic in the server (or one of its workers) surfaces here.
    let _ = serving.join().expect("the server must not panic");
    drop(client);
    draining.join().unwrap();
    assert!(
        in_time,
        "the server did not end after the client stopped sending"
    );
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= ALLOCATION_LIMIT,
        "an allocation of {largest} bytes"
    );
}

fn server() -> Arc<Server> {
    Arc::new(Server::new(EXPORT, Arc::new(MemStore::new(EXPORT_SIZE))).unwrap())
}

/// A request as a client might send it: mostly sensible, sometimes not.
fn request() -> impl Strategy<Value = Vec<u8>> {
    let command = prop_oneof![
        4 => prop::sample::select(vec![CMD_READ, CMD_WRITE, CMD_FLUSH, CMD_TRIM, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS]),
        1 => any::<u16>(),
    ];
    let flags = prop_oneof![3 => Just(0u16), 1 => 0u16..32, 1 => any::<u16>()];
    let offset = prop_oneof![
        0u64..EXPORT_SIZE as u64,
        Just(EXPORT_SIZE as u64 - 1),
        any::<u64>(),
    ];
    let len = prop_oneof![
        prop::sample::select(vec![
            0u32,
            1,
            512,
            4096,
            65536,
            MAX_PAYLOAD,
            MAX_PAYLOAD + 1,
            u32::MAX
        ]),
        0u32..8192,
        any::<u32>(),
    ];
    (command, flags, any::<u64>(), offset, len).prop_map(|(command, flags, cookie, offset, len)| {
        let mut bytes = request_bytes(command, flags, cookie, offset, len);
        // A write carries its payload when it is small enough to generate.
        if command == CMD_WRITE && len <= 8192 {
            bytes.resize(bytes.len() + len as usize, 0xa5);
        }
        bytes
    })
}

/// A valid session: flags, some options, GO, requests, maybe DISC.
fn session() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::collection::vec(request(), 0..12),
        any::<bool>(),
    )
        .prop_map(|(structured, requests, disconnect)| {
            let mut bytes = 3u32.to_be_bytes().to_vec();
            bytes.extend(option_bytes(OPT_LIST, &[]));
            if structured {
                bytes.extend(option_bytes(OPT_STRUCTURED_REPLY, &[]));
            }
            bytes.extend(option_bytes(
                OPT_GO,
                &info_request(EXPORT, &[INFO_BLOCK_SIZE, INFO_NAME]),
            ));
            for request in requests {
                bytes.extend(request);
            }
            if disconnect {
                bytes.extend(request_bytes(CMD_DISC, 0, 0, 0, 0));
            }
            bytes
        })
}

/// A valid session with some bytes changed and maybe cut short.
fn mutated_session() -> impl Strategy<Value = Vec<u8>> {
    (
        session(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(mut bytes, changes, cut)| {
            for (at, byte) in changes {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes
        })
}

/// Option haggling with arbitrary options and lengths.
fn options() -> impl Strategy<Value = Vec<u8>> {
    let option = (
        prop_oneof![1u32..12, any::<u32>()],
        prop::collection::vec(any::<u8>(), 0..64),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(option, data, claimed_len)| {
            let mut bytes = option_bytes(option, &data);
            // Sometimes the length field lies about the data.
            if let Some(len) = claimed_len {
                bytes[12..16].copy_from_slice(&len.to_be_bytes());
            }
            bytes
        });
    prop::collection::vec(option, 0..8).prop_map(|options| {
        let mut bytes = 1u32.to_be_bytes().to_vec();
        bytes.extend(options.into_iter().flatten());
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_end_the_connection_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        play(&server(), bytes);
    }

    #[test]
    fn arbitrary_options_end_the_connection_cleanly(bytes in options()) {
        play(&server(), bytes);
    }

    #[test]
    fn valid_sessions_end_the_connection_cleanly(bytes in session()) {
        play(&server(), bytes);
    }

    #[test]
    fn mutated_sessions_end_the_connection_cleanly(bytes in mutated_session()) {
        play(&server(), bytes);
    }
}

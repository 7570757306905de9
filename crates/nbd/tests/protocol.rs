//! The server against a client written from the protocol document: the
//! handshake, every command, errors, concurrency, and the raw file store.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use mllm_nbd::{ConnectionEnd, NbdError, RawFile, Server, Zeroing, MAX_PAYLOAD};
use tempfile::TempDir;

const SIZE: usize = 1 << 20;

fn mem_server(store: MemStore) -> (Arc<Server>, Arc<MemStore>) {
    let store = Arc::new(store);
    let server = Server::new(EXPORT, Arc::clone(&store) as Arc<dyn mllm_nbd::BlockStore>).unwrap();
    (Arc::new(server), store)
}

fn raw_server(size: u64) -> (Arc<Server>, TempDir, std::path::PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("disk.raw");
    File::create(&path).unwrap().set_len(size).unwrap();
    let server = Server::new(EXPORT, Arc::new(RawFile::open(&path).unwrap())).unwrap();
    (Arc::new(server), dir, path)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| i.to_le_bytes()[0].wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn go_tells_size_flags_block_sizes_and_name() {
    let (server, _) = mem_server(MemStore::new(SIZE));
    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 0b11);
    send_option(
        &mut stream,
        OPT_INFO,
        &info_request(EXPORT, &[INFO_NAME, INFO_BLOCK_SIZE]),
    );
    let info = info_replies(&mut stream, OPT_INFO).unwrap();
    assert_eq!(info.size, SIZE as u64);
    let wanted =
        FLAG_HAS_FLAGS | FLAG_SEND_FLUSH | FLAG_SEND_FUA | FLAG_SEND_TRIM | FLAG_SEND_WRITE_ZEROES;
    assert_eq!(
        info.flags, wanted,
        "no DF before structured replies, no multi-conn for this store"
    );
    assert_eq!(info.block_sizes, Some((1, 4096, MAX_PAYLOAD)));
    assert_eq!(info.name.as_deref(), Some(EXPORT));

    send_option(&mut stream, OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(option_reply(&mut stream).1, REP_ACK);
    // The default export (empty name) is the one export.
    send_option(&mut stream, OPT_GO, &info_request("", &[]));
    let go = info_replies(&mut stream, OPT_GO).unwrap();
    assert_eq!(go.flags, wanted | FLAG_SEND_DF);
    assert_eq!(go.name, None, "not asked for");
    Client::transmitting(stream, true, go).disconnect();
    assert_eq!(thread.join().unwrap().unwrap(), ConnectionEnd::Disconnected);
}

#[test]
fn raw_files_allow_several_connections() {
    let (server, _dir, _) = raw_server(1 << 20);
    let (stream, thread) = connect(&server);
    let client = Client::go(stream, false);
    assert_ne!(client.details.flags & FLAG_CAN_MULTI_CONN, 0);
    client.disconnect();
    thread.join().unwrap().unwrap();
}

#[test]
fn options_the_server_does_not_do_get_errors_and_haggling_goes_on() {
    let (server, _) = mem_server(MemStore::new(SIZE));
    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 0b01);

    send_option(&mut stream, OPT_LIST, &[]);
    let (_, reply_type, data) = option_reply(&mut stream);
    assert_eq!(reply_type, REP_SERVER);
    assert_eq!(&data[..4], &5u32.to_be_bytes());
    assert_eq!(&data[4..], EXPORT.as_bytes());
    assert_eq!(option_reply(&mut stream).1, REP_ACK);

    send_option(&mut stream, OPT_LIST, b"x");
    assert_eq!(option_reply(&mut stream).1, REP_ERR_INVALID);
    send_option(&mut stream, OPT_SET_META_CONTEXT, &[0, 0, 0, 0]);
    assert_eq!(option_reply(&mut stream).1, REP_ERR_UNSUP);
    send_option(&mut stream, 0xdead, b"whatever");
    let (option, reply_type, message) = option_reply(&mut stream);
    assert_eq!((option, reply_type), (0xdead, REP_ERR_UNSUP));
    assert!(String::from_utf8(message)
        .unwrap()
        .contains("not supported"));
    send_option(&mut stream, OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(option_reply(&mut stream).1, REP_ERR_INVALID);

    send_option(&mut stream, OPT_INFO, &info_request("disk1", &[]));
    assert_eq!(
        info_replies(&mut stream, OPT_INFO).unwrap_err(),
        REP_ERR_UNKNOWN
    );
    // Name length beyond the data; request count not matching the rest.
    send_option(&mut stream, OPT_GO, &[0, 0, 0, 9, b'a', 0, 0]);
    assert_eq!(
        info_replies(&mut stream, OPT_GO).unwrap_err(),
        REP_ERR_INVALID
    );
    let mut odd = info_request(EXPORT, &[INFO_NAME]);
    odd.push(0);
    send_option(&mut stream, OPT_GO, &odd);
    assert_eq!(
        info_replies(&mut stream, OPT_GO).unwrap_err(),
        REP_ERR_INVALID
    );

    // Oversized data is skipped without being buffered.
    send_option(&mut stream, OPT_INFO, &vec![0u8; 1 << 20]);
    assert_eq!(
        info_replies(&mut stream, OPT_INFO).unwrap_err(),
        REP_ERR_TOO_BIG
    );

    send_option(&mut stream, OPT_ABORT, &[]);
    assert_eq!(option_reply(&mut stream), (OPT_ABORT, REP_ACK, Vec::new()));
    assert_eq!(thread.join().unwrap().unwrap(), ConnectionEnd::Aborted);
}

#[test]
fn export_name_enters_transmission_with_or_without_zeroes() {
    for no_zeroes in [true, false] {
        let (server, _) = mem_server(MemStore::new(SIZE));
        let (mut stream, thread) = connect(&server);
        greet(&mut stream, if no_zeroes { 0b11 } else { 0b01 });
        send_option(&mut stream, OPT_EXPORT_NAME, EXPORT.as_bytes());
        let size = read_u64(&mut stream);
        let flags = read_u16(&mut stream);
        assert_eq!(size, SIZE as u64);
        assert_ne!(flags & FLAG_SEND_FLUSH, 0);
        if !no_zeroes {
            assert_eq!(read_vec(&mut stream, 124), vec![0u8; 124]);
        }
        let mut client = Client::transmitting(stream, false, ExportDetails::default());
        client.write(4096, b"hello");
        assert_eq!(client.read(4096, 5), b"hello");
        client.disconnect();
        assert_eq!(thread.join().unwrap().unwrap(), ConnectionEnd::Disconnected);
    }
}

#[test]
fn handshake_failures_name_their_cause() {
    let (server, _) = mem_server(MemStore::new(SIZE));

    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 0b101);
    let error = thread.join().unwrap().unwrap_err();
    assert!(
        matches!(error, NbdError::ClientFlags { flags: 0b101, .. }),
        "{error}"
    );

    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 0);
    let error = thread.join().unwrap().unwrap_err();
    assert!(error.to_string().contains("FIXED_NEWSTYLE"), "{error}");

    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 1);
    stream.write_all(&[0x11; 16]).unwrap();
    let error = thread.join().unwrap().unwrap_err();
    assert!(error.to_string().contains("0x1111111111111111"), "{error}");

    let (mut stream, thread) = connect(&server);
    greet(&mut stream, 1);
    send_option(&mut stream, OPT_EXPORT_NAME, b"disk1");
    let error = thread.join().unwrap().unwrap_err();
    assert!(error.to_string().contains("\"disk1\""), "{error}");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert!(
        rest.is_empty(),
        "an unknown EXPORT_NAME gets no answer but the close"
    );
}

#[test]
fn every_command_works_with_simple_and_structured_replies() {
    for structured in [false, true] {
        let (server, store) = mem_server(MemStore::new(SIZE));
        let (stream, thread) = connect(&server);
        let mut client = Client::go(stream, structured);

        let data = pattern(64 << 10, 7);
        client.write(8192, &data);
        assert_eq!(client.read(8192, 64 << 10), data);
        assert_eq!(
            client.read(0, 0),
            Vec::<u8>::new(),
            "an empty read is answered"
        );
        assert_eq!(client.call(CMD_FLUSH, 0, 0, 0, &[]).error, 0);
        assert_eq!(client.call(CMD_TRIM, 0, 8192, 4096, &[]).error, 0);
        assert_eq!(
            client
                .call(CMD_WRITE_ZEROES, 0, 8192 + 100, 1000, &[])
                .error,
            0
        );
        assert_eq!(
            client.call(CMD_WRITE_ZEROES, NO_HOLE, 16384, 10, &[]).error,
            0
        );
        let mut expected = data.clone();
        expected[100..1100].fill(0);
        expected[8192..8202].fill(0);
        assert_eq!(client.read(8192, 64 << 10), expected);
        client.disconnect();
        assert_eq!(thread.join().unwrap().unwrap(), ConnectionEnd::Disconnected);

        let calls = store.calls();
        assert!(calls.contains(&Call::Flush));
        assert!(calls.contains(&Call::Trim {
            offset: 8192,
            len: 4096,
            fua: false
        }));
        assert!(calls.contains(&Call::WriteZeroes {
            offset: 8292,
            len: 1000,
            zeroing: Zeroing::MayTrim,
            fua: false
        }));
        assert!(calls.contains(&Call::WriteZeroes {
            offset: 16384,
            len: 10,
            zeroing: Zeroing::Allocate,
            fua: false
        }));
    }
}

#[test]
fn fua_reaches_the_store_on_every_writing_command() {
    let (server, store) = mem_server(MemStore::new(SIZE));
    let (stream, thread) = connect(&server);
    let mut client = Client::go(stream, true);
    assert_eq!(client.call(CMD_WRITE, FUA, 0, 3, b"abc").error, 0);
    assert_eq!(client.call(CMD_TRIM, FUA, 0, 512, &[]).error, 0);
    assert_eq!(
        client
            .call(CMD_WRITE_ZEROES, FUA | NO_HOLE, 0, 512, &[])
            .error,
        0
    );
    // Clients are known to set FUA on reads; it must be accepted.
    assert_eq!(client.call(CMD_READ, FUA, 0, 512, &[]).error, 0);
    client.disconnect();
    thread.join().unwrap().unwrap();
    assert_eq!(
        store.calls(),
        vec![
            Call::Write {
                offset: 0,
                len: 3,
                fua: true
            },
            Call::Trim {
                offset: 0,
                len: 512,
                fua: true
            },
            Call::WriteZeroes {
                offset: 0,
                len: 512,
                zeroing: Zeroing::Allocate,
                fua: true
            },
            Call::Read {
                offset: 0,
                len: 512
            },
        ]
    );
}

#[test]
fn malformed_and_out_of_range_requests_get_errors_and_the_connection_goes_on() {
    for structured in [false, true] {
        let (server, store) = mem_server(MemStore::new(SIZE));
        let (stream, thread) = connect(&server);
        let mut client = Client::go(stream, structured);
        let end = SIZE as u64;

        let cases: Vec<(u16, u16, u64, u32, Vec<u8>, u32)> = vec![
            (CMD_READ, 0, end - 1, 2, vec![], EINVAL),
            (CMD_READ, 0, u64::MAX - 1, 4, vec![], EINVAL),
            (CMD_READ, 0, 0, MAX_PAYLOAD + 1, vec![], EOVERFLOW),
            (CMD_READ, 1 << 9, 0, 1, vec![], EINVAL),
            (CMD_WRITE, 0, end - 2, 4, vec![9; 4], ENOSPC),
            (CMD_WRITE, 0, u64::MAX, 1, vec![9], ENOSPC),
            (CMD_WRITE, NO_HOLE, 0, 4, vec![9; 4], EINVAL),
            (CMD_TRIM, 0, end, 1, vec![], EINVAL),
            (CMD_WRITE_ZEROES, 0, end - 1, 2, vec![], ENOSPC),
            (CMD_WRITE_ZEROES, DF, 0, 2, vec![], EINVAL),
            (CMD_FLUSH, 0, 0, 4096, vec![], EINVAL),
            (CMD_BLOCK_STATUS, 0, 0, 4096, vec![], EINVAL),
        ];
        for (command, flags, offset, len, payload, error) in cases {
            let answer = client.call(command, flags, offset, len, &payload);
            assert_eq!(
                answer.error, error,
                "command {command} flags {flags} at {offset}+{len} (structured: {structured})"
            );
            if structured {
                assert!(!answer.message.is_empty(), "structured errors say why");
            }
        }
        // DF without structured replies is an unknown flag.
        let df = client.call(CMD_READ, DF, 0, 8, &[]);
        assert_eq!(df.error, if structured { 0 } else { EINVAL });

        // A write above the limit: its payload is skipped, never buffered,
        // and the stream stays in step.
        let oversized = vec![0x5a; MAX_PAYLOAD as usize + 1];
        let answer = client.call(CMD_WRITE, 0, 0, MAX_PAYLOAD + 1, &oversized);
        assert_eq!(answer.error, EINVAL);
        assert!(structured || answer.message.is_empty());

        assert_eq!(
            client.read(0, 8),
            vec![0u8; 8],
            "no refused write reached the store"
        );
        client.disconnect();
        thread.join().unwrap().unwrap();
        assert!(
            store
                .calls()
                .iter()
                .all(|call| matches!(call, Call::Read { .. })),
            "only reads reached the store: {:?}",
            store.calls()
        );
    }
}

#[test]
fn store_failures_become_error_replies() {
    for structured in [false, true] {
        let mut store = MemStore::new(SIZE);
        store.failing_offset = Some(4096);
        let (server, _) = mem_server(store);
        let (stream, thread) = connect(&server);
        let mut client = Client::go(stream, structured);
        let answer = client.call(CMD_READ, 0, 4096, 512, &[]);
        assert_eq!(answer.error, EIO);
        assert!(answer.data.is_empty());
        assert_eq!(client.read(0, 512), vec![0u8; 512]);
        client.disconnect();
        thread.join().unwrap().unwrap();
    }
}

#[test]
fn a_worker_reusing_its_read_buffer_sends_only_what_each_read_read() {
    for structured in [false, true] {
        // Room for a read above the size a worker keeps its buffer for.
        let size = 8 << 20;
        let mut store = MemStore::new(size);
        store.failing_offset = Some(4096);
        let (server, store) = mem_server(store);
        let server = Arc::new(Arc::try_unwrap(server).unwrap().with_workers(1));
        store.bytes.lock().unwrap()[..64 << 10].copy_from_slice(&pattern(64 << 10, 3));
        let (stream, thread) = connect(&server);
        let mut client = Client::go(stream, structured);

        assert_eq!(client.read(0, 64 << 10), pattern(64 << 10, 3));
        let failed = client.call(CMD_READ, 0, 4096, 8192, &[]);
        assert_eq!(failed.error, EIO);
        assert!(failed.data.is_empty(), "a failed read sends no data");
        assert_eq!(
            client.read(1 << 20, 32 << 10),
            vec![0u8; 32 << 10],
            "a shorter read after a longer one"
        );
        let large = 5 << 20;
        let mut expected = vec![0u8; large];
        expected[..64 << 10].copy_from_slice(&pattern(64 << 10, 3));
        assert_eq!(client.read(0, u32::try_from(large).unwrap()), expected);
        assert_eq!(client.read(8192, 100), pattern(64 << 10, 3)[8192..8292]);
        client.disconnect();
        thread.join().unwrap().unwrap();
    }
}

#[test]
fn a_bad_magic_or_unknown_command_ends_the_connection_with_its_name() {
    let (server, _) = mem_server(MemStore::new(SIZE));

    let (stream, thread) = connect(&server);
    let mut client = Client::go(stream, false);
    let mut request = request_bytes(CMD_READ, 0, 1, 0, 512);
    request[..4].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
    client.stream.write_all(&request).unwrap();
    let error = thread.join().unwrap().unwrap_err();
    assert!(matches!(
        error,
        NbdError::BadRequestMagic {
            found: 0xdead_beef,
            ..
        }
    ));
    assert!(error.to_string().contains("0xdeadbeef"), "{error}");

    let (stream, thread) = connect(&server);
    let mut client = Client::go(stream, false);
    client
        .stream
        .write_all(&request_bytes(99, 0, 0x77, 0, 512))
        .unwrap();
    let error = thread.join().unwrap().unwrap_err();
    assert!(
        error.to_string().contains("unknown command type 99"),
        "{error}"
    );
    let mut rest = Vec::new();
    client.stream.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());

    // A header cut short is an error too; a close between requests is not.
    let (stream, thread) = connect(&server);
    let mut client = Client::go(stream, false);
    client
        .stream
        .write_all(&request_bytes(CMD_READ, 0, 1, 0, 512)[..10])
        .unwrap();
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(matches!(
        thread.join().unwrap(),
        Err(NbdError::Receive { .. })
    ));

    let (stream, thread) = connect(&server);
    let client = Client::go(stream, false);
    client.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(thread.join().unwrap().unwrap(), ConnectionEnd::ClientClosed);
}

#[test]
fn requests_are_read_while_earlier_ones_wait_and_replies_come_out_of_order() {
    for structured in [false, true] {
        let mut store = MemStore::new(SIZE);
        store.held_offset = Some(0);
        let (server, store) = mem_server(store);
        let (stream, thread) = connect(&server);
        let mut client = Client::go(stream, structured);

        let held = client.send(CMD_READ, 0, 0, 4096, &[]);
        let mut later = Vec::new();
        for i in 1..=20u64 {
            let data = vec![u8::try_from(i).unwrap(); 4096];
            later.push(client.send(CMD_WRITE, 0, i * 4096, 4096, &data));
            later.push(client.send(CMD_READ, 0, i * 4096, 4096, &[]));
        }
        let mut partial = HashMap::new();
        let mut answered = Vec::new();
        for _ in 0..later.len() {
            let (cookie, answer) = client.next_answer(&mut partial);
            assert_eq!(answer.error, 0);
            answered.push(cookie);
        }
        assert!(
            !answered.contains(&held),
            "the held read cannot be answered yet"
        );
        answered.sort_unstable();
        later.sort_unstable();
        assert_eq!(
            answered, later,
            "everything behind the held read was served"
        );

        store.open_gate();
        let (cookie, answer) = client.next_answer(&mut partial);
        assert_eq!((cookie, answer.error), (held, 0));
        client.disconnect();
        thread.join().unwrap().unwrap();
    }
}

#[test]
fn raw_file_trim_and_zeroes_make_holes_that_reads_report() {
    let size = 4u64 << 20;
    let (server, _dir, path) = raw_server(size);
    let (stream, thread) = connect(&server);
    let mut client = Client::go(stream, true);
    let allocated = || std::fs::metadata(&path).unwrap().blocks() * 512;

    let data = pattern(2 << 20, 3);
    client.write(0, &data);
    assert_eq!(client.call(CMD_FLUSH, 0, 0, 0, &[]).error, 0);
    let full = allocated();
    assert!(full >= 2 << 20);

    assert_eq!(client.call(CMD_TRIM, 0, 256 << 10, 256 << 10, &[]).error, 0);
    let trimmed = allocated();
    assert_eq!(full - trimmed, 256 << 10, "trim punches a hole");

    assert_eq!(
        client
            .call(CMD_WRITE_ZEROES, 0, 1 << 20, 128 << 10, &[])
            .error,
        0
    );
    // Empty ranges are allowed and change nothing.
    assert_eq!(client.call(CMD_TRIM, 0, 4096, 0, &[]).error, 0);
    assert_eq!(client.call(CMD_WRITE_ZEROES, 0, 4096, 0, &[]).error, 0);
    let punched = allocated();
    assert_eq!(
        trimmed - punched,
        128 << 10,
        "zeroes that may trim punch too"
    );
    assert_eq!(
        client
            .call(CMD_WRITE_ZEROES, NO_HOLE | FUA, 1536 << 10, 128 << 10, &[])
            .error,
        0
    );
    // The file system may add an extent block; it must not free any.
    assert!(allocated() >= punched, "NO_HOLE zeroes stay allocated");

    let mut expected = data.clone();
    expected[256 << 10..512 << 10].fill(0);
    expected[1 << 20..(1 << 20) + (128 << 10)].fill(0);
    expected[1536 << 10..(1536 << 10) + (128 << 10)].fill(0);

    // Holes come back as hole chunks, the rest as data.
    let answer = client.call(CMD_READ, 0, 0, 2 << 20, &[]);
    assert_eq!(answer.error, 0);
    assert_eq!(answer.data, expected);
    assert!(
        answer
            .holes
            .starts_with(&[256 << 10..512 << 10, 1 << 20..(1 << 20) + (128 << 10)]),
        "{:?}",
        answer.holes
    );
    // ext4 also reports the allocated-but-unwritten NO_HOLE range as a hole,
    // which is right: it reads as zeroes. No hole may cover data.
    for hole in &answer.holes {
        assert!(expected[index(hole.start)..index(hole.end)]
            .iter()
            .all(|&byte| byte == 0));
    }
    let tail = client.call(CMD_READ, 0, 3 << 20, 1 << 20, &[]);
    assert_eq!(tail.chunks, 1);
    assert_eq!(tail.holes.first(), Some(&(3 << 20..4 << 20)));
    assert_eq!(tail.holes.len(), 1);

    // Don't fragment: one data chunk, zeroes spelled out.
    let whole = client.call(CMD_READ, DF, 0, 2 << 20, &[]);
    assert_eq!(
        (whole.data == expected, whole.holes.len(), whole.chunks),
        (true, 0, 1)
    );

    let file = File::open(&path).unwrap();
    let mut on_disk = vec![0u8; 2 << 20];
    file.read_exact_at(&mut on_disk, 0).unwrap();
    assert_eq!(on_disk, expected);
    client.disconnect();
    thread.join().unwrap().unwrap();
}

#[test]
fn shutdown_ends_the_accept_loop_and_every_connection() {
    let dir = TempDir::new().unwrap();
    let socket = dir.path().join("nbd.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let mut store = MemStore::new(SIZE);
    store.held_offset = Some(0);
    let (server, store) = mem_server(store);
    let shutdown = server.shutdown_handle();
    let serving = {
        let server = Arc::clone(&server);
        thread::spawn(move || server.serve_unix(listener))
    };

    let mut first = Client::go(UnixStream::connect(&socket).unwrap(), true);
    let mut second = Client::go(UnixStream::connect(&socket).unwrap(), false);
    second.write(4096, b"two connections");
    assert_eq!(first.read(4096, 15), b"two connections");
    let held = first.send(CMD_READ, 0, 0, 512, &[]);
    thread::sleep(Duration::from_millis(50));

    shutdown.shutdown();
    // The read in flight is still answered once the store lets it go.
    store.open_gate();
    let (cookie, answer) = first.next_answer(&mut HashMap::new());
    assert_eq!((cookie, answer.error), (held, 0));
    serving.join().unwrap().unwrap();
    for client in [first, second] {
        let mut rest = Vec::new();
        let mut stream = client.stream;
        stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
    assert!(
        UnixStream::connect(&socket).is_err(),
        "nobody accepts any more"
    );
}

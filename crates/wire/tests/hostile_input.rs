//! The agent link fed hostile bytes, through the entry points an agent reads
//! its peer with: a [`FrameReader`] over the stream (page batches decoded as
//! the destination does) and the handshake. Arbitrary bytes, and valid
//! streams mutated: each read ends in a message or a typed error, never a
//! panic, holds no more memory than the reader's fixed limits plus a fixed
//! factor of the input, and valid streams read back as sent.
//!
//! `PROPTEST_CASES` raises the number of cases; the long run is
//! `scripts/fuzz.sh` (docs/reliability.md).

#[path = "../../../testing/mutations.rs"]
mod mutations;
#[path = "../../../testing/peak_alloc.rs"]
mod peak_alloc;
#[path = "wire/support.rs"]
#[allow(dead_code)]
mod support;

use std::io::{self, Read, Write};

use mllm_wire::{
    handshake, Capabilities, CompressionSetting, FrameReader, Hello, Message, MessageType,
    PageBatch, PageBatchBuilder, PageBatchDecoder, PageContent, PageRange, PageRequest,
    PendingPages, ResendContent, Role, WireError, CHECKSUM_LEN, DEFAULT_MAX_PAYLOAD, HEADER_LEN,
    MAX_BATCH_PAGES, PAGE_SIZE,
};
use mllm_wire::{ContentHash, ContentRef, Location};
use proptest::prelude::*;

use mutations::{apply, mutations};
use peak_alloc::{peak_during, Counting};
use support::{encode, raw_frame, sample_messages};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Decoded values may take this many bytes per input byte: the largest
/// ratio of a body's in-memory size to its smallest encoding is a
/// `PageRangeDigest` (32 bytes from 3).
const BYTES_PER_INPUT_BYTE: usize = 16;

/// What reading `input` may hold at once: one frame buffer at the reader's
/// limit, whatever the frame claims; one decompressed batch, whatever its
/// payload claims; decoded values in proportion to the input; and room for
/// the reader's own bookkeeping.
fn memory_bound(input: usize) -> usize {
    let frame = HEADER_LEN + DEFAULT_MAX_PAYLOAD as usize + CHECKSUM_LEN;
    frame + MAX_BATCH_PAGES * PAGE_SIZE + BYTES_PER_INPUT_BYTE * input + (64 << 10)
}

/// Reads every frame of `input` as an agent does, decoding page batches,
/// until the first error (`Closed` at a clean end).
fn read_stream(input: &[u8]) -> (Vec<Message>, WireError) {
    let mut reader = FrameReader::new(input);
    let mut decoder = PageBatchDecoder::new();
    let mut messages = Vec::new();
    loop {
        match reader.recv() {
            Ok(message) => {
                if let Message::PageBatch(batch) = &message {
                    if let Err(error) = decode_pages(&mut decoder, batch) {
                        return (messages, error);
                    }
                }
                messages.push(message);
            }
            Err(error) => return (messages, error),
        }
    }
}

/// The pages of `batch`, each checked to be whole.
fn decode_pages(decoder: &mut PageBatchDecoder, batch: &PageBatch) -> Result<usize, WireError> {
    let mut data = 0;
    for (_, content) in decoder.decode(batch)? {
        if let PageContent::Data(page) = content {
            assert_eq!(page.len(), PAGE_SIZE);
            data += 1;
        }
    }
    assert_eq!(data, batch.data_pages());
    Ok(data)
}

/// The most bytes reading `input` held, checked against [`memory_bound`].
fn assert_bounded(input: &[u8]) -> usize {
    let (_, peak) = peak_during(|| read_stream(input));
    assert!(
        peak <= memory_bound(input.len()),
        "reading {} bytes held {peak} bytes",
        input.len()
    );
    peak
}

/// Every frame of a valid stream, as (type code, flags, payload).
fn frames(stream: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let type_code = u16::from_le_bytes([rest[0], rest[1]]);
        let flags = u16::from_le_bytes([rest[2], rest[3]]);
        let len = u32::from_le_bytes(rest[4..8].try_into().unwrap()) as usize;
        frames.push((
            type_code,
            flags,
            rest[HEADER_LEN..HEADER_LEN + len].to_vec(),
        ));
        rest = &rest[HEADER_LEN + len + CHECKSUM_LEN..];
    }
    frames
}

/// Page batches of every kind of content and compression, including a full
/// one.
fn sample_batches() -> Vec<Message> {
    let settings = [
        CompressionSetting::None,
        CompressionSetting::Lz4,
        CompressionSetting::Zstd { level: 3 },
    ];
    settings
        .into_iter()
        .map(|setting| {
            let mut builder = PageBatchBuilder::new(setting, 6).unwrap();
            for (index, seed) in [(0u32, 0u8), (1, 7), (u32::MAX, 0), (5, 200), (6, 1), (3, 9)] {
                let page: [u8; PAGE_SIZE] =
                    std::array::from_fn(|i| seed.wrapping_mul(u8::try_from(i % 13).unwrap()));
                let _ = builder.push(index, &page);
            }
            builder.finish().unwrap().into()
        })
        .collect()
}

fn valid_stream() -> Vec<u8> {
    let mut messages = sample_messages();
    messages.extend(sample_batches());
    encode(&messages)
}

/// A peer end of the link that says `input` and swallows what it is told.
struct Peer<'a> {
    input: &'a [u8],
    told: Vec<u8>,
}

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.told.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn hello(role: Role) -> Hello {
    Hello {
        role,
        capabilities: Capabilities::all(),
    }
}

/// A destination's hello as it crosses the link.
fn destination_hello() -> Vec<u8> {
    let mut peer = Peer {
        input: &[],
        told: Vec::new(),
    };
    assert!(matches!(
        handshake(&mut peer, &hello(Role::Destination)),
        Err(WireError::Closed)
    ));
    peer.told
}

/// The source's side of a handshake with a peer that says `input`.
fn shake(input: &[u8]) -> Result<mllm_wire::Negotiated, WireError> {
    let (result, peak) = peak_during(|| {
        handshake(
            &mut Peer {
                input,
                told: Vec::new(),
            },
            &hello(Role::Source),
        )
    });
    // A hello's body length is a u16: nothing the peer says can cost more.
    assert!(peak <= (64 << 10) + BYTES_PER_INPUT_BYTE * input.len() + (16 << 10));
    result
}

/// The hello with its checksum recomputed, so the mutation reaches the body.
fn reseal_hello(bytes: &mut Vec<u8>) {
    const BODY_START: usize = 12;
    if bytes.len() < BODY_START + CHECKSUM_LEN {
        return;
    }
    let body_len = bytes.len() - BODY_START - CHECKSUM_LEN;
    let Ok(len_field) = u16::try_from(body_len) else {
        return;
    };
    bytes[10..12].copy_from_slice(&len_field.to_le_bytes());
    bytes.truncate(BODY_START + body_len);
    let checksum = xxhash_rust::xxh3::xxh3_64(bytes);
    bytes.extend_from_slice(&checksum.to_le_bytes());
}

fn page_batch() -> impl Strategy<Value = (CompressionSetting, Vec<(u32, Option<u8>)>)> {
    let setting = prop_oneof![
        Just(CompressionSetting::None),
        Just(CompressionSetting::Lz4),
        (1..=5i32).prop_map(|level| CompressionSetting::Zstd { level }),
    ];
    let pages = proptest::collection::vec((any::<u32>(), proptest::option::of(any::<u8>())), 1..12);
    (setting, pages)
}

proptest! {
    #[test]
    fn arbitrary_bytes_read_as_frames(input in proptest::collection::vec(any::<u8>(), 0..2048)) {
        assert_bounded(&input);
    }

    /// Arbitrary bodies behind a valid header and checksum reach the body
    /// decoders of every message type.
    #[test]
    fn arbitrary_bodies_in_sealed_frames(
        type_index in 0..MessageType::ALL.len(),
        payload in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let frame = raw_frame(MessageType::ALL[type_index].code(), 0, &payload);
        let (messages, error) = read_stream(&frame);
        prop_assert!(messages.len() + usize::from(!matches!(error, WireError::Closed)) == 1);
        prop_assert!(
            matches!(error, WireError::Closed | WireError::Malformed { .. }),
            "{error}"
        );
        assert_bounded(&frame);
    }

    /// The link corrupts a valid stream: the checksum, lengths and framing
    /// catch it, or a message reads.
    #[test]
    fn mutated_streams(mutations in mutations()) {
        let mut stream = valid_stream();
        apply(&mut stream, &mutations);
        assert_bounded(&stream);
    }

    /// A buggy or hostile peer: bodies mutated behind a valid checksum.
    #[test]
    fn mutated_bodies_in_sealed_frames(frame in 0..19usize, mutations in mutations()) {
        let stream = valid_stream();
        let frames = frames(&stream);
        let (type_code, flags, mut payload) = frames[frame % frames.len()].clone();
        apply(&mut payload, &mutations);
        let sealed = raw_frame(type_code, flags, &payload);
        let (_, error) = read_stream(&sealed);
        prop_assert!(
            matches!(error, WireError::Closed | WireError::Malformed { .. }),
            "{error}"
        );
        assert_bounded(&sealed);
    }

    #[test]
    fn page_batches_round_trip((setting, pages) in page_batch()) {
        let mut builder = PageBatchBuilder::new(setting, MAX_BATCH_PAGES).unwrap();
        let page_of = |seed: u8| -> [u8; PAGE_SIZE] {
            std::array::from_fn(|i| seed.wrapping_add(u8::try_from(i / 64).unwrap()))
        };
        for &(index, seed) in &pages {
            let _ = builder.push(index, &seed.map_or([0; PAGE_SIZE], page_of));
        }
        let sent: Message = builder.finish().unwrap().into();
        let (messages, end) = read_stream(&encode(std::slice::from_ref(&sent)));
        prop_assert!(matches!(end, WireError::Closed), "{end}");
        prop_assert_eq!(&messages, &vec![sent]);
        let Message::PageBatch(batch) = &messages[0] else { unreachable!() };
        let mut decoder = PageBatchDecoder::new();
        let decoded: Vec<(u32, Option<[u8; PAGE_SIZE]>)> = decoder
            .decode(batch)
            .unwrap()
            .map(|(index, content)| (index, match content {
                PageContent::Zero => None,
                PageContent::Data(page) => Some(*page),
                PageContent::Reference(reference) => panic!("no reference was pushed: {reference:?}"),
            }))
            .collect();
        let expected: Vec<(u32, Option<[u8; PAGE_SIZE]>)> = pages
            .iter()
            .map(|&(index, seed)| (index, seed.map(page_of).filter(|page| page != &[0; PAGE_SIZE])))
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn batches_with_references_round_trip(
        entries in proptest::collection::vec(
            (any::<u32>(), any::<bool>(), any::<u32>(), any::<u16>(), any::<[u8; 16]>()),
            0..64,
        ),
    ) {
        let mut builder = PageBatchBuilder::new(CompressionSetting::Lz4, MAX_BATCH_PAGES).unwrap();
        let mut expected = Vec::new();
        for &(index, on_disk, from, disk, hash) in &entries {
            let from = if on_disk {
                Location::Block { disk, block: from }
            } else {
                Location::Page(from)
            };
            let reference = ContentRef { from, hash: ContentHash(hash) };
            let _ = builder.push_reference(index, reference);
            expected.push((index, reference));
        }
        let sent: Message = builder.finish().unwrap().into();
        let (messages, end) = read_stream(&encode(std::slice::from_ref(&sent)));
        prop_assert!(matches!(end, WireError::Closed), "{end}");
        prop_assert_eq!(&messages, &vec![sent]);
        let Message::PageBatch(batch) = &messages[0] else { unreachable!() };
        let mut decoder = PageBatchDecoder::new();
        let decoded: Vec<_> = decoder
            .decode(batch)
            .unwrap()
            .map(|(index, content)| match content {
                PageContent::Reference(reference) => (index, reference),
                other => panic!("only references were pushed, got {other:?}"),
            })
            .collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn resend_requests_round_trip(
        locations in proptest::collection::vec((any::<bool>(), any::<u16>(), any::<u32>()), 0..64),
    ) {
        let locations = locations
            .into_iter()
            .map(|(on_disk, disk, index)| match on_disk {
                true => Location::Block { disk, block: index },
                false => Location::Page(index),
            })
            .collect();
        let sent = vec![ResendContent { locations }.into()];
        let (messages, end) = read_stream(&encode(&sent));
        prop_assert!(matches!(end, WireError::Closed), "{end}");
        prop_assert_eq!(messages, sent);
    }

    #[test]
    fn page_lists_round_trip(
        ranges in proptest::collection::vec((any::<u32>(), any::<u32>()), 0..64),
        pages in proptest::collection::vec(any::<u32>(), 0..64),
    ) {
        let ranges = ranges
            .into_iter()
            .map(|(a, b)| PageRange::new(a.min(b), a.max(b)))
            .collect();
        let sent = vec![PendingPages { ranges }.into(), PageRequest { pages }.into()];
        let (messages, end) = read_stream(&encode(&sent));
        prop_assert!(matches!(end, WireError::Closed), "{end}");
        prop_assert_eq!(messages, sent);
    }

    #[test]
    fn arbitrary_bytes_as_a_peer_hello(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = shake(&input);
    }

    #[test]
    fn mutated_peer_hellos(mutations in mutations(), reseal: bool) {
        let mut input = destination_hello();
        apply(&mut input, &mutations);
        if reseal {
            reseal_hello(&mut input);
        }
        let _ = shake(&input);
    }
}

#[test]
fn a_valid_stream_reads_back_in_bounded_memory() {
    let mut sent = sample_messages();
    sent.extend(sample_batches());
    let stream = encode(&sent);
    let (received, end) = read_stream(&stream);
    assert!(matches!(end, WireError::Closed), "{end}");
    assert_eq!(received, sent);
    // The count sees the reader's buffers and the messages read.
    assert!(assert_bounded(&stream) >= stream.len());
    assert_eq!(
        shake(&destination_hello()).unwrap().peer_role,
        Role::Destination
    );
}

/// A block that decompresses to far more than its page list says must be
/// refused without the decoder holding what it expands to.
#[test]
fn decompression_bombs_are_refused_within_one_batch_of_memory() {
    let zeros = vec![0u8; 64 << 20];
    let bombs = [
        (
            mllm_wire::Compression::Zstd,
            zstd::bulk::compress(&zeros, 3).unwrap(),
        ),
        (
            mllm_wire::Compression::Lz4,
            lz4_flex::block::compress(&zeros),
        ),
    ];
    drop(zeros);
    for (compression, payload) in bombs {
        for data_pages in [0, 1, MAX_BATCH_PAGES] {
            let batch = PageBatch {
                compression,
                pages: (0..data_pages)
                    .map(|index| mllm_wire::PageEntry {
                        index: u32::try_from(index).unwrap(),
                        kind: mllm_wire::PageKind::Data,
                    })
                    .collect(),
                payload: payload.clone(),
            };
            let stream = encode(&[batch.into()]);
            let ((_, error), peak) = peak_during(|| read_stream(&stream));
            assert!(
                matches!(
                    error,
                    WireError::Malformed {
                        message_type: MessageType::PageBatch,
                        ..
                    }
                ),
                "{compression} bomb of {} bytes for {data_pages} pages: {error}",
                payload.len()
            );
            assert!(peak <= memory_bound(stream.len()), "held {peak} bytes");
        }
    }
}

#[test]
fn a_length_field_claiming_more_than_the_limit_allocates_nothing() {
    let mut frame = encode(&[Message::Ack(mllm_wire::Ack)]);
    frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    let ((_, error), peak) = peak_during(|| read_stream(&frame));
    assert!(matches!(error, WireError::FrameTooLarge { .. }), "{error}");
    assert!(peak < 64 << 10, "held {peak} bytes");
}

//! Helpers shared by the protocol tests.

use mllm_wire::{
    Abort, Ack, BlockBatch, BlockDigests, BlockRequest, CompressionSetting, DestinationRunning,
    DeviceState, DiskDigest, FrameReader, FrameWriter, HandOver, HeldContent, Message,
    MigrationAccept, MigrationPolicy, MigrationReject, MigrationRequest, PageBatchBuilder,
    PageDigests, PageRange, PageRequest, PendingBlocks, PendingPages, PostcopyComplete, RamDigest,
    ResendContent, ResumeAccept, ResumeRequest, RoundEnd, SourceStopped, WireError, PAGE_SIZE,
    PAGE_SIZE_U32,
};
use mllm_wire::{ContentHash, ContentRef, Location};

/// One message of every type, with non-trivial bodies.
pub fn sample_messages() -> Vec<Message> {
    let mut builder = PageBatchBuilder::new(CompressionSetting::Zstd { level: 3 }, 8).unwrap();
    let _ = builder.push(7, &[0; PAGE_SIZE]);
    let _ = builder.push(9, &[0xab; PAGE_SIZE]);
    let _ = builder.push_reference(
        11,
        ContentRef {
            from: Location::Block {
                disk: 0,
                block: u32::MAX,
            },
            hash: ContentHash::of(&[0xab; PAGE_SIZE]),
        },
    );
    let batch = builder.finish().unwrap();
    let ram: Vec<u8> = (0..8 * PAGE_SIZE)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();

    vec![
        MigrationRequest {
            vm_name: "vm-ä1".into(),
            ram_bytes: 512 << 20,
            page_size: PAGE_SIZE_U32,
            disk_bytes: vec![8 << 30, 1 << 20],
            policy: MigrationPolicy::Precopy,
            migration_id: u128::MAX - 5,
            verify: true,
        }
        .into(),
        HeldContent {
            disk: 1,
            blocks: vec![
                (0, ContentHash::of(&[7; PAGE_SIZE])),
                (u32::MAX, ContentHash::of(&[9; PAGE_SIZE])),
            ],
        }
        .into(),
        MigrationAccept.into(),
        MigrationReject {
            reason: "RAM size differs".into(),
        }
        .into(),
        batch.clone().into(),
        RoundEnd {
            round: 3,
            pages: 131_072,
        }
        .into(),
        DeviceState {
            chunk: (0..3000)
                .map(|i| u8::try_from(i * 7 % 256).unwrap())
                .collect(),
        }
        .into(),
        HandOver {
            device_state_bytes: 330_000,
        }
        .into(),
        SourceStopped.into(),
        PendingPages {
            ranges: vec![PageRange::new(3, 9), PageRange::new(4000, 4001)],
        }
        .into(),
        PageRequest {
            pages: vec![0, 77, u32::MAX],
        }
        .into(),
        PostcopyComplete.into(),
        PageDigests {
            pages: vec![(1024, 1), (7, u64::MAX)],
        }
        .into(),
        DestinationRunning.into(),
        Abort {
            reason: "destination QEMU exited".into(),
        }
        .into(),
        RamDigest::compute(&ram, 3).into(),
        Ack.into(),
        BlockBatch {
            disk: 1,
            batch: batch.clone(),
        }
        .into(),
        DiskDigest {
            disk: 0,
            digest: RamDigest::compute(&ram, 2),
        }
        .into(),
        PendingBlocks {
            disk: 2,
            ranges: vec![PageRange::new(0, 16)],
        }
        .into(),
        BlockRequest {
            disk: 0,
            blocks: vec![5, u32::MAX],
        }
        .into(),
        BlockDigests {
            disk: 1,
            blocks: vec![(3, 99)],
        }
        .into(),
        ResendContent {
            locations: vec![Location::Page(3), Location::Block { disk: 1, block: 8 }],
        }
        .into(),
        ResumeRequest {
            migration_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        }
        .into(),
        ResumeAccept {
            pages: vec![PageRange::new(0, 2), PageRange::new(70, 71)],
            blocks: vec![(0, PageRange::new(5, 9)), (2, PageRange::new(0, 1))],
        }
        .into(),
    ]
}

pub fn encode(messages: &[Message]) -> Vec<u8> {
    let mut writer = FrameWriter::new(Vec::new());
    for message in messages {
        writer.send(message).unwrap();
    }
    writer.into_inner()
}

pub fn decode_one(bytes: &[u8]) -> Result<Message, WireError> {
    FrameReader::new(bytes).recv()
}

/// A frame with arbitrary header fields and a valid checksum, as a newer or buggy peer
/// could send it.
pub fn raw_frame(type_code: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&type_code.to_le_bytes());
    frame.extend_from_slice(&flags.to_le_bytes());
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
    frame.extend_from_slice(payload);
    let checksum = xxhash_rust::xxh3::xxh3_64(&frame);
    frame.extend_from_slice(&checksum.to_le_bytes());
    frame
}

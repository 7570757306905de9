//! Writes valid inputs of every fuzz target into `corpus/<target>/`, so that
//! the mutations start from what the decoders accept.

use std::fs;
use std::path::Path;

use mllm_control::{ControlRequest, MigrateRequest, RecordTraceRequest};
use mllm_core::trace::{
    binary, text, DiskAccess, DiskOp, DiskTrace, DiskTraceHeader, MemoryTrace, MemoryTraceHeader,
    WriteInterval,
};
use mllm_hook_protocol::{Reply, Request, UffdFeatures};
use mllm_wire::{
    handshake, Capabilities, CompressionSetting, FrameWriter, Hello, Message, MessageType,
    PageBatchBuilder, Role, PAGE_SIZE,
};

// The wire tests' helpers: their samples cover every message type.
#[allow(dead_code)]
#[path = "../../../crates/wire/tests/wire/support.rs"]
mod wire_samples;

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, seeds: Vec<Vec<u8>>| {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).unwrap();
        for (n, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{n}")), seed).unwrap();
        }
    };

    let frames: Vec<Vec<u8>> = messages()
        .iter()
        .map(|message| {
            let mut writer = FrameWriter::new(Vec::new());
            writer.send(message).unwrap();
            writer.into_inner()
        })
        .collect();
    write("wire_frames", vec![frames.concat()]);
    write(
        "wire_bodies",
        frames
            .iter()
            .map(|frame| {
                let code = u16::from_le_bytes([frame[0], frame[1]]);
                let pick = MessageType::ALL
                    .iter()
                    .position(|t| t.code() == code)
                    .unwrap();
                [
                    &[u8::try_from(pick).unwrap()][..],
                    &frame[8..frame.len() - 8],
                ]
                .concat()
            })
            .collect(),
    );

    let mut peer = mllm_fuzz::Peer {
        input: &[],
        told: Vec::new(),
    };
    let hello = Hello {
        role: Role::Destination,
        capabilities: Capabilities::all(),
    };
    let _ = handshake(&mut peer, &hello);
    let body = peer.told[12..peer.told.len() - 8].to_vec();
    write(
        "wire_handshake",
        vec![[&[0][..], &peer.told].concat(), [&[1][..], &body].concat()],
    );

    let requests = [
        ControlRequest::List,
        ControlRequest::Migrate(MigrateRequest {
            vm: "web".into(),
            to: "10.0.0.2:7800".into(),
            policy: "precopy".into(),
            downtime_ms: 300,
            compression: "zstd:3".into(),
            max_rounds: 30,
            verify: true,
            trace_file: Some("/tmp/web.trace".into()),
            disk_move: Some("after-switch".into()),
        }),
        ControlRequest::RecordTrace(RecordTraceRequest {
            vm: "web".into(),
            seconds: 2.5,
            interval_ms: 100,
            out: "/tmp/web.trace".into(),
        }),
    ];
    write(
        "control_request",
        requests
            .iter()
            .map(|request| format!("{}\n", serde_json::to_string(request).unwrap()).into_bytes())
            .collect(),
    );

    write(
        "hook_lines",
        vec![
            Request::WriteProtect {
                start: 0x7f3a_4000_0000,
                len: 1 << 28,
            }
            .encode()
            .into_bytes(),
            Request::Missing {
                start: 0x7f3a_4000_0000,
                len: 8192,
            }
            .encode()
            .into_bytes(),
            Reply::Armed {
                features: UffdFeatures(0xb000),
            }
            .encode()
            .into_bytes(),
            Reply::Refused {
                reason: "UFFDIO_REGISTER: Device or resource busy (os error 16)".into(),
            }
            .encode()
            .into_bytes(),
        ],
    );

    let memory = MemoryTrace {
        header: MemoryTraceHeader {
            page_size: 4096,
            page_count: 1 << 16,
        },
        intervals: vec![
            WriteInterval::new(100_000, (0..64).chain(1000..1010).chain([65_535]).collect()),
            WriteInterval::new(100_000, vec![]),
            WriteInterval::new(250_000, vec![7, 9, 11]),
        ],
    };
    let disk = DiskTrace {
        header: DiskTraceHeader {
            disk_bytes: 1 << 30,
        },
        records: vec![
            DiskAccess {
                time_us: 10,
                op: DiskOp::Read,
                offset: 0,
                length: 4096,
            },
            DiskAccess {
                time_us: 20,
                op: DiskOp::Write,
                offset: 65536,
                length: 8192,
            },
        ],
    };
    let mut traces = vec![Vec::new(); 4];
    binary::write_memory(&memory, &mut traces[0]).unwrap();
    text::write_memory(&memory, &mut traces[1]).unwrap();
    binary::write_disk(&disk, &mut traces[2]).unwrap();
    text::write_disk(&disk, &mut traces[3]).unwrap();
    write("trace", traces);
}

/// One message of every type (the wire tests' samples, which must cover
/// every type), and page batches in every compression.
fn messages() -> Vec<Message> {
    let mut messages: Vec<Message> = [
        CompressionSetting::None,
        CompressionSetting::Lz4,
        CompressionSetting::Zstd { level: 3 },
    ]
    .into_iter()
    .map(|setting| {
        let mut builder = PageBatchBuilder::new(setting, 4).unwrap();
        for (index, seed) in [(0u32, 0u8), (1, 7), (9, 200), (3, 0)] {
            let page: [u8; PAGE_SIZE] =
                std::array::from_fn(|i| seed.wrapping_mul(u8::try_from(i % 13).unwrap()));
            let _ = builder.push(index, &page);
        }
        builder.finish().unwrap().into()
    })
    .collect();
    messages.extend(wire_samples::sample_messages());
    messages
}

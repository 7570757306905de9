//! A destination agent facing a peer it must not trust: another protocol
//! version, a corrupted frame, messages out of the conversation's order.
//! Refused before the destination VM runs, the source told why.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use mllm_agent::{receive_migration, DestinationSettings, IncomingMigration, MigrationError};
use mllm_wire::{
    handshake, Capabilities, CompressionSetting, DeviceState, FrameReader, FrameWriter, Hello,
    Message, MigrationPolicy, MigrationRequest, PageBatchBuilder, Role, SourceStopped, WireError,
    PAGE_SIZE, PAGE_SIZE_U32, PROTOCOL_VERSION,
};

use crate::support::{one_vm_pair_at_a_time, Vm, GUEST_MIB};

/// A hello as another protocol version writes it. The version is judged
/// before the body, so the body may be anything.
pub fn hello_of_version(version: u16) -> Vec<u8> {
    let mut bytes = b"MLLMLINK".to_vec();
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&[0; 8]);
    bytes
}

/// A `MigrationAccept` frame (type 2, no payload) whose checksum is wrong.
pub fn accept_frame_with_bad_checksum() -> Vec<u8> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&0u16.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&0xdead_beef_u64.to_le_bytes());
    bytes
}

/// Connects a fake source that sends `bytes` (after a proper handshake when
/// `handshake_first`), and returns what the destination agent made of it.
fn destination_facing(bytes: Vec<u8>, handshake_first: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let fake_source = thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        if handshake_first {
            let hello = Hello {
                role: Role::Source,
                capabilities: Capabilities::all(),
            };
            handshake(&mut stream, &hello).unwrap();
        }
        stream.write_all(&bytes).unwrap();
        // Whatever the agent answers, until it hangs up.
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let (stream, _) = listener.accept().unwrap();
    let error = IncomingMigration::accept(stream, &DestinationSettings::default())
        .expect_err("the destination agent must refuse");
    drop(listener);
    fake_source.join().unwrap();
    error.chain()
}

#[test]
fn a_peer_of_another_protocol_version_is_refused_naming_both_versions() {
    let error = destination_facing(hello_of_version(PROTOCOL_VERSION + 1), false);
    assert!(error.contains("protocol version mismatch"), "{error}");
    assert!(
        error.contains(&format!("version {PROTOCOL_VERSION}"))
            && error.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{error}"
    );
}

#[test]
fn a_frame_with_a_bad_checksum_is_refused_as_corruption() {
    let error = destination_facing(accept_frame_with_bad_checksum(), true);
    assert!(error.contains("checksum mismatch"), "{error}");
    assert!(error.contains("corrupted"), "{error}");
}

#[test]
fn a_message_before_the_request_is_a_protocol_error_naming_the_phase() {
    let mut frame = FrameWriter::new(Vec::new());
    frame
        .send(&DeviceState { chunk: vec![1; 64] }.into())
        .unwrap();
    let error = destination_facing(frame.into_inner(), true);
    assert!(
        error.contains("the source sent DeviceState")
            && error.contains("awaiting the migration request"),
        "{error}"
    );
}

/// A fake source that is accepted, then sends `after_accept`; returns the
/// destination agent's error and the reason of the `Abort` it sent back.
fn accepted_source_then(after_accept: Vec<Message>) -> (String, String) {
    let _one_at_a_time = one_vm_pair_at_a_time();
    let destination = Vm::incoming("destination", GUEST_MIB);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let fake_source = thread::spawn(move || {
        let mut stream = TcpStream::connect(address).unwrap();
        let hello = Hello {
            role: Role::Source,
            capabilities: Capabilities::all(),
        };
        handshake(&mut stream, &hello).unwrap();
        let mut writer = FrameWriter::new(stream.try_clone().unwrap());
        let mut reader = FrameReader::new(BufReader::new(stream));
        writer
            .send(
                &MigrationRequest {
                    vm_name: "destination".into(),
                    ram_bytes: GUEST_MIB << 20,
                    page_size: PAGE_SIZE_U32,
                    disk_bytes: vec![],
                    policy: MigrationPolicy::Precopy,
                    migration_id: 1,
                    verify: false,
                }
                .into(),
            )
            .unwrap();
        let answer = reader.recv().unwrap();
        assert!(matches!(answer, Message::MigrationAccept(_)), "{answer:?}");
        for message in &after_accept {
            writer.send(message).unwrap();
        }
        loop {
            match reader.recv() {
                Ok(Message::Abort(abort)) => return abort.reason,
                Ok(_) => {}
                Err(error) => panic!("no Abort from the destination: {error}"),
            }
        }
    });
    let (stream, _) = listener.accept().unwrap();
    let error = receive_migration(
        &destination.qemu,
        &destination.ram_file,
        &[],
        stream,
        &DestinationSettings::default(),
    )
    .expect_err("the destination agent must refuse");
    assert!(
        matches!(
            error.root(),
            MigrationError::Protocol(WireError::OutOfOrder { .. })
        ),
        "{}",
        error.chain()
    );
    let abort_reason = fake_source.join().unwrap();
    assert!(
        !destination.is_running(),
        "the destination VM ran after a protocol error"
    );
    (error.chain(), abort_reason)
}

#[test]
fn a_second_request_and_pages_after_the_switch_are_protocol_errors_naming_the_phase() {
    let second_request = MigrationRequest {
        vm_name: "again".into(),
        ram_bytes: GUEST_MIB << 20,
        page_size: PAGE_SIZE_U32,
        disk_bytes: vec![],
        policy: MigrationPolicy::Precopy,
        migration_id: 1,
        verify: false,
    };
    let (error, told_source) = accepted_source_then(vec![second_request.into()]);
    for text in [&error, &told_source] {
        assert!(
            text.contains("the source sent MigrationRequest") && text.contains("in pre-copy"),
            "{text}"
        );
    }

    let mut batch = PageBatchBuilder::new(CompressionSetting::None, 1).unwrap();
    let _ = batch.push(0, &[7; PAGE_SIZE]);
    let (error, told_source) = accepted_source_then(vec![
        SourceStopped.into(),
        DeviceState { chunk: vec![] }.into(),
        batch.finish().unwrap().into(),
    ]);
    for text in [&error, &told_source] {
        assert!(
            text.contains("the source sent PageBatch") && text.contains("relaying device state"),
            "{text}"
        );
    }
}

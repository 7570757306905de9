//! A destination agent facing a peer it must not trust: another protocol
//! version, a corrupted frame. Refused before anything is written.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use mllm_agent::{DestinationSettings, IncomingMigration};
use mllm_wire::{handshake, Capabilities, Hello, Role, PROTOCOL_VERSION};

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
        .err()
        .expect("the destination agent must refuse");
    drop(listener);
    fake_source.join().unwrap();
    format!("{error:#}")
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

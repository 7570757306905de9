use std::io::{self, Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;

use mllm_wire::{
    handshake, Capabilities, Compression, Hello, Role, WireError, PAGE_SIZE_U32, PROTOCOL_VERSION,
};

/// A stream whose peer has already said everything it will say.
struct ScriptedPeer {
    from_peer: Cursor<Vec<u8>>,
    to_peer: Vec<u8>,
}

impl ScriptedPeer {
    fn saying(bytes: Vec<u8>) -> Self {
        ScriptedPeer {
            from_peer: Cursor::new(bytes),
            to_peer: Vec::new(),
        }
    }
}

impl Read for ScriptedPeer {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.from_peer.read(buf)
    }
}

impl Write for ScriptedPeer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.to_peer.write(buf)
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

/// The exact bytes an agent with `hello` opens the link with.
fn hello_bytes(hello: &Hello) -> Vec<u8> {
    let mut silent = ScriptedPeer::saying(Vec::new());
    assert!(matches!(
        handshake(&mut silent, hello),
        Err(WireError::Closed)
    ));
    silent.to_peer
}

#[test]
fn agents_agree_over_a_real_socket() {
    let (mut source_end, mut destination_end) = UnixStream::pair().unwrap();
    let destination = thread::spawn(move || {
        let hello = Hello {
            role: Role::Destination,
            capabilities: Capabilities {
                compressions: vec![Compression::Lz4, Compression::None],
                page_size: PAGE_SIZE_U32,
            },
        };
        handshake(&mut destination_end, &hello).unwrap()
    });
    let at_source = handshake(&mut source_end, &hello(Role::Source)).unwrap();
    let at_destination = destination.join().unwrap();

    assert_eq!(at_source.peer_role, Role::Destination);
    assert_eq!(at_destination.peer_role, Role::Source);
    assert_eq!(
        at_source.compressions,
        [Compression::None, Compression::Lz4]
    );
    assert_eq!(
        at_destination.compressions,
        [Compression::Lz4, Compression::None]
    );
    assert!(!at_source.supports(Compression::Zstd));
    assert_eq!(at_source.page_size, PAGE_SIZE_U32);
}

#[test]
fn a_version_mismatch_names_both_versions_and_nothing_follows_our_hello() {
    let mut newer = b"MLLMLINK".to_vec();
    newer.extend_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
    newer.extend_from_slice(b"a body laid out in some future way");
    let mut stream = ScriptedPeer::saying(newer);

    let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
    assert!(
        matches!(error, WireError::VersionMismatch { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1)
    );
    let text = error.to_string();
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
    assert_eq!(stream.to_peer, hello_bytes(&hello(Role::Source)));
    assert_eq!(
        stream.to_peer[8..10],
        PROTOCOL_VERSION.to_le_bytes(),
        "version at a fixed offset after the magic"
    );
}

#[test]
fn a_peer_that_is_not_an_agent_is_refused() {
    let mut stream = ScriptedPeer::saying(b"GET / HTTP/1.1\r\n\r\n".to_vec());
    let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
    assert!(
        matches!(error, WireError::NotMllmPeer { magic } if &magic == b"GET / HT"),
        "{error}"
    );
}

#[test]
fn a_peer_that_speaks_tls_is_told_apart() {
    // The start of a TLS ClientHello record.
    let mut stream =
        ScriptedPeer::saying(vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]);
    let error = handshake(&mut stream, &hello(Role::Destination)).unwrap_err();
    assert!(matches!(error, WireError::PeerSpeaksTls), "{error}");
    assert!(
        error.to_string().contains("--insecure-plaintext"),
        "{error}"
    );
}

#[test]
fn both_sides_in_the_same_role_is_refused() {
    let mut stream = ScriptedPeer::saying(hello_bytes(&hello(Role::Source)));
    let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
    assert!(matches!(
        error,
        WireError::RoleConflict { role: Role::Source }
    ));
    assert_eq!(error.to_string(), "both agents claim the source role");
}

#[test]
fn a_page_size_mismatch_is_refused() {
    let huge_pages = Hello {
        role: Role::Destination,
        capabilities: Capabilities {
            page_size: 2 << 20,
            ..Capabilities::all()
        },
    };
    let mut stream = ScriptedPeer::saying(hello_bytes(&huge_pages));
    let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
    assert!(matches!(
        error,
        WireError::PageSizeMismatch {
            ours: 4096,
            theirs: 0x20_0000
        }
    ));
}

#[test]
fn a_corrupted_or_cut_hello_is_detected() {
    let peer = hello_bytes(&hello(Role::Destination));
    for position in 10..peer.len() {
        let mut corrupted = peer.clone();
        corrupted[position] ^= 0x01;
        let mut stream = ScriptedPeer::saying(corrupted);
        let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::HandshakeCorrupted { .. } | WireError::Truncated { .. }
            ),
            "byte {position}: {error}"
        );
    }
    for cut in 1..peer.len() {
        let mut stream = ScriptedPeer::saying(peer[..cut].to_vec());
        let error = handshake(&mut stream, &hello(Role::Source)).unwrap_err();
        assert!(
            matches!(error, WireError::Truncated { .. }),
            "cut at {cut}: {error}"
        );
    }
}

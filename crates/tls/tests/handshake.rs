//! Two TLS contexts over loopback TCP: who is accepted, what a refused
//! peer is told, and that the relayed stream carries data and ends like a
//! socket.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use mllm_tls::{CertificateAuthority, PeerStream, TlsContext, TlsError, Validity};

const DAY: Duration = Duration::from_secs(86_400);

struct Deployment {
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    /// Another deployment's CA, named like ours.
    namesake_ca: CertificateAuthority,
}

/// Key generation is slow in debug builds: one CA pair for all tests.
fn deployment() -> &'static Deployment {
    static DEPLOYMENT: OnceLock<Deployment> = OnceLock::new();
    DEPLOYMENT.get_or_init(|| Deployment {
        ca: CertificateAuthority::generate("test CA", Validity::days_from_now(1)).unwrap(),
        other_ca: CertificateAuthority::generate("other CA", Validity::days_from_now(1)).unwrap(),
        namesake_ca: CertificateAuthority::generate("test CA", Validity::days_from_now(1)).unwrap(),
    })
}

fn context(ca: &CertificateAuthority, name: &str, allowed: &[&str]) -> TlsContext {
    context_valid(ca, name, allowed, Validity::days_from_now(1))
}

fn context_valid(
    ca: &CertificateAuthority,
    name: &str,
    allowed: &[&str],
    validity: Validity,
) -> TlsContext {
    let host = ca.issue(name, validity).unwrap();
    let allowed: Vec<String> = allowed.iter().map(|name| (*name).to_owned()).collect();
    TlsContext::from_host(&host, &allowed).unwrap()
}

/// `server` accepts the connection `client` opens, expecting `expected`.
fn handshake(
    server: &TlsContext,
    client: &TlsContext,
    expected: Option<&str>,
) -> (Result<PeerStream, TlsError>, Result<PeerStream, TlsError>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = server.clone();
    let accepting = thread::spawn(move || server.accept(listener.accept().unwrap().0));
    let client = client.connect(TcpStream::connect(address).unwrap(), expected);
    (accepting.join().unwrap(), client)
}

fn error_text(result: Result<PeerStream, TlsError>) -> String {
    match result {
        Ok(stream) => panic!("handshake with {} succeeded", stream.describe_peer()),
        Err(error) => error.to_string(),
    }
}

fn assert_contains(text: &str, part: &str) {
    assert!(text.contains(part), "{text:?} does not say {part:?}");
}

#[test]
fn authenticated_peers_exchange_large_and_small_writes_and_end_cleanly() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b"]);
    let b = context(ca, "agent-b", &["agent-a"]);
    let (server, client) = handshake(&b, &a, Some("agent-b"));
    let (server, client) = (server.unwrap(), client.unwrap());
    assert!(server.is_tls() && client.is_tls());
    assert!(
        server.describe_peer().contains("agent-a"),
        "{}",
        server.describe_peer()
    );
    assert!(
        client.describe_peer().contains("agent-b"),
        "{}",
        client.describe_peer()
    );

    // 8 MiB one way in one write (the relay takes it in chunks), while the
    // other way carries many small writes: both directions at once.
    let large: Vec<u8> = (0..8u32 << 20)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let expected = large.clone();
    let mut client_writer = client.try_clone().unwrap();
    let sending = thread::spawn(move || client_writer.write_all(&large).unwrap());
    let mut server_writer = server.try_clone().unwrap();
    let small_sending = thread::spawn(move || {
        for i in 0..2000u32 {
            server_writer.write_all(&i.to_le_bytes()).unwrap();
        }
    });
    let mut received = vec![0; expected.len()];
    (&server).read_exact(&mut received).unwrap();
    assert!(received == expected, "the large write arrived altered");
    let mut small = vec![0; 2000 * 4];
    (&client).read_exact(&mut small).unwrap();
    for (i, word) in small.chunks(4).enumerate() {
        assert_eq!(
            u32::from_le_bytes(word.try_into().unwrap()),
            u32::try_from(i).unwrap()
        );
    }
    sending.join().unwrap();
    small_sending.join().unwrap();

    // The client stops writing: the server reads the end, and can still
    // answer (a half-closed session, as the agents' graceful close uses).
    client.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    (&server).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    (&server).write_all(b"last words").unwrap();
    server.shutdown(Shutdown::Write).unwrap();
    let mut last = Vec::new();
    (&client).read_to_end(&mut last).unwrap();
    assert_eq!(last, b"last words");
}

#[test]
fn a_peer_dialled_by_address_is_accepted_for_any_allowed_name() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b", "agent-c"]);
    let c = context(ca, "agent-c", &["agent-a"]);
    let (server, client) = handshake(&c, &a, None);
    server.unwrap();
    assert!(client.unwrap().describe_peer().contains("agent-c"));
}

#[test]
fn shutting_down_one_clone_unblocks_a_reader_of_another_and_ends_the_peer() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b"]);
    let b = context(ca, "agent-b", &["agent-a"]);
    let (server, client) = handshake(&b, &a, None);
    let (server, client) = (server.unwrap(), client.unwrap());
    let reader = client.try_clone().unwrap();
    let reading = thread::spawn(move || {
        let mut byte = [0];
        (&reader).read(&mut byte)
    });
    thread::sleep(Duration::from_millis(100));
    client.shutdown(Shutdown::Both).unwrap();
    assert_eq!(
        reading.join().unwrap().unwrap(),
        0,
        "the blocked read returns the end"
    );
    // The peer sees the session end, promptly.
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    (&server).read_to_end(&mut rest).unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_dropped_peer_ends_the_stream_and_fails_writes() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b"]);
    let b = context(ca, "agent-b", &["agent-a"]);
    let (server, client) = handshake(&b, &a, None);
    drop(client.unwrap());
    let server = server.unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0];
    assert_eq!((&server).read(&mut byte).unwrap(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    let chunk = vec![0; 64 << 10];
    loop {
        if (&server).write(&chunk).is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes to a closed session go on"
        );
    }
}

#[test]
fn a_cut_connection_ends_the_stream_promptly() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b"]);
    let b = context(ca, "agent-b", &["agent-a"]);
    // A TCP relay between the two that can cut both connections at once,
    // as a failing network or a dead host's kernel would.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_address = listener.local_addr().unwrap();
    let accepting = thread::spawn(move || b.accept(listener.accept().unwrap().0));
    let middle = TcpListener::bind("127.0.0.1:0").unwrap();
    let middle_address = middle.local_addr().unwrap();
    let relaying = thread::spawn(move || {
        let (client_side, _) = middle.accept().unwrap();
        let server_side = TcpStream::connect(server_address).unwrap();
        for (mut from, mut to) in [
            (
                client_side.try_clone().unwrap(),
                server_side.try_clone().unwrap(),
            ),
            (
                server_side.try_clone().unwrap(),
                client_side.try_clone().unwrap(),
            ),
        ] {
            thread::spawn(move || std::io::copy(&mut from, &mut to));
        }
        (client_side, server_side)
    });
    let client = a
        .connect(TcpStream::connect(middle_address).unwrap(), None)
        .unwrap();
    let server = accepting.join().unwrap().unwrap();
    let (client_side, server_side) = relaying.join().unwrap();
    (&client).write_all(b"before the cut").unwrap();
    let mut before = [0; 14];
    (&server).read_exact(&mut before).unwrap();

    let reader = client.try_clone().unwrap();
    // Fails rather than hangs if the cut went unnoticed.
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let reading = thread::spawn(move || {
        let started = Instant::now();
        let mut byte = [0];
        let read = (&reader).read(&mut byte);
        (read.map_err(|e| e.kind()), started.elapsed())
    });
    thread::sleep(Duration::from_millis(200));
    client_side.shutdown(Shutdown::Both).unwrap();
    server_side.shutdown(Shutdown::Both).unwrap();
    let (read, waited) = reading.join().unwrap();
    assert_eq!(read, Ok(0), "the cut reads as the end of the stream");
    assert!(waited < Duration::from_secs(2), "noticed after {waited:?}");
    let mut rest = Vec::new();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (&server).read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn a_plaintext_client_is_refused_as_such() {
    let ca = &deployment().ca;
    let b = context(ca, "agent-b", &["agent-a"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let accepting = thread::spawn(move || b.accept(listener.accept().unwrap().0));
    // What a plaintext agent sends first: its hello.
    let mut plain = TcpStream::connect(address).unwrap();
    plain.write_all(b"MLLMLINK\x01\x00\x10\x00").unwrap();
    let text = error_text(accepting.join().unwrap());
    assert_contains(&text, "peer does not speak TLS (plaintext connection?)");
    assert_contains(&text, "127.0.0.1");
}

#[test]
fn a_plaintext_server_is_refused_as_such() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b"]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let serving = thread::spawn(move || {
        let (mut plain, _) = listener.accept().unwrap();
        plain.write_all(b"MLLMLINK\x01\x00\x10\x00").unwrap();
        thread::sleep(Duration::from_millis(500));
    });
    let text = error_text(a.connect(TcpStream::connect(address).unwrap(), None));
    assert_contains(&text, "peer does not speak TLS (plaintext connection?)");
    serving.join().unwrap();
}

#[test]
fn a_client_certificate_of_another_ca_is_refused() {
    let Deployment { ca, other_ca, .. } = deployment();
    let b = context(ca, "agent-b", &["agent-a"]);
    let intruder = context_trusting(other_ca, ca, "agent-a", &["agent-b"]);
    let (server, client) = handshake(&b, &intruder, None);
    assert_contains(
        &error_text(server),
        "peer certificate is signed by an unknown CA",
    );
    assert_contains(
        &error_text(client),
        "peer refused our certificate: it is signed by a CA the peer does not trust",
    );
}

#[test]
fn a_certificate_of_another_ca_with_the_same_name_is_refused() {
    let Deployment {
        ca, namesake_ca, ..
    } = deployment();
    let b = context(ca, "agent-b", &["agent-a"]);
    let a = context(ca, "agent-a", &["agent-b"]);
    let intruder_client = context_trusting(namesake_ca, ca, "agent-a", &["agent-b"]);
    let (server, client) = handshake(&b, &intruder_client, None);
    assert_contains(
        &error_text(server),
        "peer certificate is signed by an unknown CA (named like ours, with another key)",
    );
    assert_contains(
        &error_text(client),
        "peer refused our certificate: its signature does not verify against the peer's CA",
    );
    let intruder_server = context_trusting(namesake_ca, ca, "agent-b", &["agent-a"]);
    let (_, client) = handshake(&intruder_server, &a, None);
    assert_contains(
        &error_text(client),
        "peer certificate is signed by an unknown CA",
    );
}

#[test]
fn a_server_certificate_of_another_ca_is_refused() {
    let Deployment { ca, other_ca, .. } = deployment();
    let a = context(ca, "agent-a", &["agent-b"]);
    let intruder = context_trusting(other_ca, ca, "agent-b", &["agent-a"]);
    let (server, client) = handshake(&intruder, &a, Some("agent-b"));
    assert_contains(
        &error_text(client),
        "peer certificate is signed by an unknown CA",
    );
    assert!(
        server.is_err(),
        "the server must not think it has a session"
    );
}

#[test]
fn an_expired_certificate_is_refused_with_its_date() {
    let ca = &deployment().ca;
    let b = context(ca, "agent-b", &["agent-a"]);
    let now = SystemTime::now();
    let expired = Validity {
        not_before: now - 30 * DAY,
        not_after: now - 2 * DAY,
    };
    let stale = context_valid(ca, "agent-a", &["agent-b"], expired);
    let (server, client) = handshake(&b, &stale, None);
    let text = error_text(server);
    assert_contains(&text, "peer certificate expired at ");
    // Certificates hold whole seconds, as the message shows them.
    let date = humantime::format_rfc3339_seconds(expired.not_after).to_string();
    assert_contains(&text, &date);
    assert_contains(
        &error_text(client),
        "peer refused our certificate: it has expired",
    );

    // And an expired server certificate, seen by the client.
    let stale_server = context_valid(ca, "agent-b", &["agent-a"], expired);
    let a = context(ca, "agent-a", &["agent-b"]);
    let (_, client) = handshake(&stale_server, &a, None);
    assert_contains(&error_text(client), "peer certificate expired at ");
}

#[test]
fn a_name_not_in_the_allowed_list_is_refused_on_both_sides() {
    let ca = &deployment().ca;
    let b = context(ca, "agent-b", &["agent-a"]);
    let c = context(ca, "agent-c", &["agent-b"]);
    let (server, client) = handshake(&b, &c, None);
    assert_contains(
        &error_text(server),
        "peer name agent-c is not in the allowed list (agent-a)",
    );
    assert_contains(
        &error_text(client),
        "our name is not in the peer's allowed list",
    );

    // A client that dials a server whose name it does not allow.
    let a = context(ca, "agent-a", &["agent-c"]);
    let (_, client) = handshake(&b, &a, None);
    assert_contains(
        &error_text(client),
        "peer name agent-b is not in the allowed list (agent-c)",
    );
    // Or that expects a name it does not allow: refused before any byte.
    let tcp = TcpStream::connect(
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap(),
    )
    .unwrap();
    let text = error_text(a.connect(tcp, Some("agent-b")));
    assert_contains(
        &text,
        "peer name agent-b is not in the allowed list (agent-c)",
    );
}

#[test]
fn a_server_with_another_allowed_name_than_expected_is_refused() {
    let ca = &deployment().ca;
    let a = context(ca, "agent-a", &["agent-b", "agent-c"]);
    let c = context(ca, "agent-c", &["agent-a"]);
    let (_, client) = handshake(&c, &a, Some("agent-b"));
    assert_contains(
        &error_text(client),
        "peer certificate is for agent-c, not for agent-b",
    );
}

/// A host certificate from `issuer` in a context that trusts `trusted`:
/// an agent of another deployment that knows ours.
fn context_trusting(
    issuer: &CertificateAuthority,
    trusted: &CertificateAuthority,
    name: &str,
    allowed: &[&str],
) -> TlsContext {
    let mut host = issuer.issue(name, Validity::days_from_now(1)).unwrap();
    host.ca_pem = trusted.certificate_pem().to_owned();
    let allowed: Vec<String> = allowed.iter().map(|name| (*name).to_owned()).collect();
    TlsContext::from_host(&host, &allowed).unwrap()
}

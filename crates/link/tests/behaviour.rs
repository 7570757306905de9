//! How the relay behaves for its users: shared bandwidth, intact streams,
//! half-close, failures, counters, jitter and stalls.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, echo_server, link, median, millis, ping, send_bulk, serve_each, sink};
use mllm_link::{Link, LinkConfig, LinkError};

#[test]
fn connections_to_several_targets_share_one_bandwidth() {
    let bits_per_s = 40_000_000;
    // Whoever comes first fills an empty queue: keep that head start small.
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s: bits_per_s,
        rtt: Duration::from_millis(10),
        queue_bytes: 64 << 10,
        ..LinkConfig::default()
    })
    .unwrap();
    let bytes = 3_000_000; // 1.2 s for both together
    let transfers: Vec<_> = (0..2)
        .map(|_| {
            let (sink, received) = sink();
            (send_bulk(link.forward(sink).unwrap(), bytes), received)
        })
        .collect();
    let received: Vec<_> = transfers
        .into_iter()
        .map(|(sender, received)| {
            sender.join().unwrap().unwrap();
            received.join().unwrap()
        })
        .collect();
    let started = received.iter().map(|r| r.first_at()).min().unwrap();
    let finished = received.iter().map(|r| r.last_at()).max().unwrap();
    // Bytes of the very first reads may have waited for a late reader.
    let first_reads: usize = received.iter().map(|r| r.arrivals[0].1).sum();
    let total = (2 * bytes - first_reads) as f64 * 8.0 / (finished - started).as_secs_f64();
    println!("two connections together: {:.3} Mbit/s of 40", total / 1e6);
    assert!(
        (total / bits_per_s as f64 - 1.0).abs() < 0.05,
        "{total} bit/s"
    );
    // Fair sharing: when one transfer is done, the other is nearly done too.
    let first_done = received.iter().map(|r| r.last_at()).min().unwrap();
    for one in &received {
        let progress = one.bytes_at(first_done) as f64 / bytes as f64;
        println!(
            "one connection: {:.1}% received when the first finished",
            progress * 100.0
        );
        assert!(progress >= 0.9, "fair share: {progress}");
    }
    assert_eq!(link.stats().connections, 2);
    assert_eq!(link.stats().bytes_forward, 2 * bytes as u64);
}

/// A pattern that reveals lost, duplicated or reordered bytes.
fn pattern(seed: u64, bytes: usize) -> Vec<u8> {
    let mut state = seed;
    (0..bytes)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// Each side sends its own stream and half-closes; each receives the other's
/// stream whole, in order, followed by end-of-stream. Jitter and stalls must
/// not reorder anything.
#[test]
fn streams_arrive_whole_in_order_and_half_close_propagates() {
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s: 1_000_000_000,
        rtt: Duration::from_millis(10),
        jitter: Duration::from_millis(4),
        stall_probability: 0.001,
        stall_time: Duration::from_millis(20),
        ..LinkConfig::default()
    })
    .unwrap();
    let from_client = pattern(1, 3_000_000);
    let from_target = pattern(2, 2_000_000);
    let (expected, reply) = (from_client.clone(), from_target.clone());
    let target = serve_each(move |mut stream| {
        // Read everything first: the client's half-close must arrive.
        let mut received = Vec::new();
        stream.read_to_end(&mut received).unwrap();
        assert!(
            received == expected,
            "target received the client's stream intact"
        );
        stream.write_all(&reply).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
    });
    let mut client = connect(link.forward(target).unwrap());
    client.write_all(&from_client).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let mut received = Vec::new();
    client.read_to_end(&mut received).unwrap();
    assert!(
        received == from_target,
        "client received the target's stream intact"
    );
    let stats = link.stats();
    assert_eq!(stats.bytes_forward, from_client.len() as u64);
    assert_eq!(stats.bytes_backward, from_target.len() as u64);
    assert_eq!(stats.connections, 1);
}

#[test]
fn cut_closes_every_connection_and_refuses_new_ones() {
    let link = link(100_000_000, 10);
    let echo = echo_server();
    let through = link.forward(echo).unwrap();
    let mut clients: Vec<TcpStream> = (0..3).map(|_| connect(through)).collect();
    for client in &mut clients {
        client.write_all(b"hello").unwrap();
        let mut reply = [0; 5];
        client.read_exact(&mut reply).unwrap();
    }
    let cut_at = Instant::now();
    link.cut();
    for client in &mut clients {
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        match client.read(&mut [0; 16]) {
            Ok(0) => {}
            Err(err) if err.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("expected the connection closed, got {other:?}"),
        }
    }
    assert!(
        cut_at.elapsed() < Duration::from_millis(500),
        "closed at once"
    );
    let refused = TcpStream::connect(through).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(matches!(link.forward(echo), Err(LinkError::Cut)));
}

#[test]
fn timeline_samples_cumulative_bytes_every_100_ms() {
    let link = link(8_000_000, 10);
    let (sink, received) = sink();
    let bytes = 300_000; // 0.3 s
    send_bulk(link.forward(sink).unwrap(), bytes)
        .join()
        .unwrap()
        .unwrap();
    received.join().unwrap();
    thread::sleep(Duration::from_millis(150));
    let timeline = link.timeline();
    assert!(timeline.len() >= 4, "{} samples", timeline.len());
    for (i, sample) in timeline.iter().enumerate() {
        assert_eq!(sample.elapsed_ms, i as u64 * 100);
        assert_eq!(sample.bytes_backward, 0);
    }
    assert!(timeline
        .windows(2)
        .all(|pair| pair[0].bytes_forward <= pair[1].bytes_forward));
    assert_eq!(timeline[0].bytes_forward, 0);
    assert_eq!(timeline.last().unwrap().bytes_forward, bytes as u64);
    // At 1 MB/s a full 100 ms interval carries about 100 kB.
    let steps: Vec<u64> = timeline
        .windows(2)
        .map(|pair| pair[1].bytes_forward - pair[0].bytes_forward)
        .collect();
    assert!(steps.iter().all(|&step| step <= 110_000), "{steps:?}");
    assert!(steps.iter().any(|&step| step >= 90_000), "{steps:?}");
}

#[test]
fn jitter_spreads_round_trips_around_the_rtt() {
    let jitter = Duration::from_millis(5);
    let link = Link::new(LinkConfig {
        rtt: Duration::from_millis(20),
        jitter,
        ..LinkConfig::default()
    })
    .unwrap();
    let times = ping(link.forward(echo_server()).unwrap(), 30);
    let (fastest, slowest) = (millis(times[0]), millis(times[times.len() - 1]));
    println!("rtt 20 ms ±5 ms each way: {fastest:.2} to {slowest:.2} ms");
    assert!(
        fastest >= 10.0 && slowest <= 32.0,
        "within rtt ± 2 × jitter"
    );
    assert!(slowest - fastest >= 4.0, "round trips vary");
}

#[test]
fn a_stall_holds_the_connection_for_the_stall_time() {
    let link = Link::new(LinkConfig {
        rtt: Duration::from_millis(20),
        stall_probability: 1.0,
        stall_time: Duration::from_millis(30),
        ..LinkConfig::default()
    })
    .unwrap();
    let rtt = millis(median(&ping(link.forward(echo_server()).unwrap(), 5)));
    println!("every segment stalled 30 ms on a 20 ms link: rtt {rtt:.2} ms");
    assert!(
        (80.0..=83.0).contains(&rtt),
        "20 ms + 2 × 30 ms stall: {rtt:.2} ms"
    );
}

#[test]
fn refused_target_closes_the_client() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let link = link(100_000_000, 10);
    let mut client = connect(link.forward(closed_port).unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buffer = [0; 8];
    assert!(matches!(client.read(&mut buffer), Ok(0) | Err(_)));
    assert_eq!(link.stats().connections, 1);
}

#[test]
fn listen_port_in_use_is_reported() {
    let link = link(100_000_000, 10);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let error = link
        .forward_from(busy.local_addr().unwrap(), echo_server())
        .unwrap_err();
    assert!(error.to_string().contains("the port is in use"), "{error}");
}

#[test]
fn link_is_shareable_and_shuts_down_promptly() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Link>();
    let link = link(10_000_000, 200);
    let (sink, _received) = sink();
    let _sender = send_bulk(link.forward(sink).unwrap(), 10_000_000);
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    link.shutdown();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_partition_is_silence_both_ways_until_it_heals_and_loses_nothing() {
    let link = link(100_000_000, 10);
    let mut client = connect(link.forward(echo_server()).unwrap());
    client.write_all(b"before").unwrap();
    let mut reply = [0; 6];
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"before");

    link.partition();
    client.write_all(b"during").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match client.read(&mut reply) {
        Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("a partition must be silent, not {other:?}"),
    }
    // New connections are not refused either: they just get no answer.
    let mut late = connect(link.forward(echo_server()).unwrap());
    late.write_all(b"late").unwrap();

    let healed_at = Instant::now();
    link.heal();
    client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    client.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"during", "what waited arrives once healed");
    late.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answer = [0; 4];
    late.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"late");
    assert!(healed_at.elapsed() < Duration::from_millis(500));
}

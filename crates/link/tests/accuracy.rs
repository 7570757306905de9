//! The accuracy the lab relies on: throughput within 5% of the configured
//! rate, added RTT within 2 ms of the configured one.

mod common;

use std::io::Write;
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use common::{connect, echo_server, link, median, millis, ping, send_bulk, sink};
use mllm_link::{Link, LinkConfig};

/// A bulk transfer of about 1.5 s at `megabits` per second.
fn assert_throughput(megabits: u64) {
    let bits_per_s = megabits * 1_000_000;
    let link = link(bits_per_s, 20);
    let (sink, received) = sink();
    let bytes = (bits_per_s / 8) as usize * 3 / 2;
    let sender = send_bulk(link.forward(sink).unwrap(), bytes);
    let received = received.join().unwrap();
    sender.join().unwrap().unwrap();
    assert_eq!(received.bytes(), bytes);
    let error = received.bits_per_s() / bits_per_s as f64 - 1.0;
    println!(
        "{megabits} Mbit/s configured: {:.3} Mbit/s achieved ({:+.2}%)",
        received.bits_per_s() / 1e6,
        error * 100.0
    );
    assert!(
        error.abs() < 0.05,
        "throughput off by {:.2}%",
        error * 100.0
    );
    assert_eq!(link.stats().bytes_forward, bytes as u64);
}

#[test]
fn throughput_at_20_mbit() {
    assert_throughput(20);
}

#[test]
fn throughput_at_100_mbit() {
    assert_throughput(100);
}

/// Ping-pong of small messages: the relay adds the configured RTT.
fn assert_rtt(rtt_ms: u64, pings: usize) {
    let echo = echo_server();
    let direct = median(&ping(echo, 20));
    let link = link(100_000_000, rtt_ms);
    let times = ping(link.forward(echo).unwrap(), pings);
    let added = median(&times).saturating_sub(direct);
    println!(
        "rtt {rtt_ms} ms configured: {:.3} ms added (median; min {:.3}, max {:.3} ms round trip)",
        millis(added),
        millis(times[0]),
        millis(times[times.len() - 1])
    );
    let error = millis(added) - rtt_ms as f64;
    assert!(error.abs() <= 2.0, "added rtt off by {error:.3} ms");
    assert!(
        times[0] >= Duration::from_millis(rtt_ms),
        "no message is faster than the link"
    );
}

#[test]
fn rtt_10_ms() {
    assert_rtt(10, 40);
}

#[test]
fn rtt_50_ms() {
    assert_rtt(50, 16);
}

#[test]
fn rtt_200_ms() {
    assert_rtt(200, 6);
}

/// A burst is serialized at the bottleneck, then propagates: its first byte
/// arrives after the one-way delay, its last one after the burst's
/// transmission time more.
#[test]
fn serialization_then_propagation() {
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s: 8_000_000, // 1 byte per µs
        rtt: Duration::from_millis(100),
        queue_bytes: 256 << 10,
        ..LinkConfig::default()
    })
    .unwrap();
    let (sink, received) = sink();
    let mut client = connect(link.forward(sink).unwrap());
    let connected = Instant::now();
    // Fits the socket buffers: all of it is there when the relay reads.
    client.write_all(&[7; 100_000]).unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    let received = received.join().unwrap();
    let first = millis(received.first_at() - connected);
    let spread = millis(received.last_at() - received.first_at());
    println!("first byte at {first:.2} ms, last {spread:.2} ms later");
    // The handshake's 100 ms round trip, one 1448-byte chunk at the line
    // rate, then 50 ms of propagation; the upper bound leaves room for the
    // test's own (normal-priority) threads waking late on a busy machine.
    assert!(
        (151.4..=157.0).contains(&first),
        "first byte at {first:.2} ms"
    );
    // The other 98 552 bytes at 1 byte per µs.
    assert!(
        (97.5..=100.5).contains(&spread),
        "last byte {spread:.2} ms later"
    );
}

/// Bulk data fills the shared queue; a small message of another connection
/// waits behind it for exactly the queue's drain time.
#[test]
fn full_queue_delays_other_connections_by_its_size() {
    let queue_bytes = 50_000; // 20 ms at 20 Mbit/s
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s: 20_000_000,
        rtt: Duration::from_millis(20),
        queue_bytes,
        ..LinkConfig::default()
    })
    .unwrap();
    let (sink, received) = sink();
    // 1 s of data: it keeps the queue full while the pings run.
    let bulk_bytes = 2_500_000;
    let sender = send_bulk(link.forward(sink).unwrap(), bulk_bytes);
    let through = link.forward(echo_server()).unwrap();
    thread::sleep(Duration::from_millis(200));
    let times = ping(through, 10);
    let rtt = millis(median(&times));
    println!("rtt behind a full 20 ms queue on a 20 ms link: {rtt:.2} ms");
    // The queue holds at most 20 ms; the ping enters it when it is nearly full.
    assert!((38.0..=43.0).contains(&rtt), "rtt {rtt:.2} ms");
    sender.join().unwrap().unwrap();
    assert_eq!(received.join().unwrap().bytes(), bulk_bytes);
}

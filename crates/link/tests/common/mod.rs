//! Test peers for the relay: an echo server, a byte sink, and measurements
//! made the way a user of the link would see them.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mllm_link::{Link, LinkConfig};

pub const PING_BYTES: usize = 32;

pub fn link(bandwidth_bits_per_s: u64, rtt_ms: u64) -> Link {
    Link::new(LinkConfig {
        bandwidth_bits_per_s,
        rtt: Duration::from_millis(rtt_ms),
        ..LinkConfig::default()
    })
    .unwrap()
}

/// Echoes everything back on each connection, and half-closes when the
/// client does.
pub fn echo_server() -> SocketAddr {
    serve_each(|mut stream| {
        let mut buffer = [0; 64 << 10];
        loop {
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(bytes) => {
                    if stream.write_all(&buffer[..bytes]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
    })
}

/// Runs `handle` on a thread for every connection to a fresh listener.
pub fn serve_each(handle: impl Fn(TcpStream) + Send + Sync + Clone + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let stream = stream.unwrap();
            stream.set_nodelay(true).unwrap();
            let handle = handle.clone();
            thread::spawn(move || handle(stream));
        }
    });
    address
}

pub fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Round-trip times of `count` small messages through an echo connection,
/// after one warm-up exchange (which also pays for the handshake), sorted.
pub fn ping(address: SocketAddr, count: usize) -> Vec<Duration> {
    let mut stream = connect(address);
    let mut reply = [0; PING_BYTES];
    let mut times: Vec<Duration> = (0..=count)
        .map(|i| {
            let message = [u8::try_from(i % 256).unwrap(); PING_BYTES];
            let sent = Instant::now();
            stream.write_all(&message).unwrap();
            stream.read_exact(&mut reply).unwrap();
            assert_eq!(reply, message);
            sent.elapsed()
        })
        .skip(1)
        .collect();
    times.sort();
    times
}

pub fn median(sorted: &[Duration]) -> Duration {
    sorted[sorted.len() / 2]
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// What a receiver saw of one stream: when each read returned, and the
/// bytes received up to then.
pub struct Received {
    pub arrivals: Vec<(Instant, usize)>,
}

impl Received {
    pub fn bytes(&self) -> usize {
        self.arrivals.last().map_or(0, |&(_, bytes)| bytes)
    }

    pub fn first_at(&self) -> Instant {
        self.arrivals[0].0
    }

    pub fn last_at(&self) -> Instant {
        self.arrivals[self.arrivals.len() - 1].0
    }

    /// Bytes received by `instant`.
    pub fn bytes_at(&self, instant: Instant) -> usize {
        let arrived = self.arrivals.partition_point(|&(at, _)| at <= instant);
        arrived
            .checked_sub(1)
            .map_or(0, |last| self.arrivals[last].1)
    }

    /// Rate from the first tenth of the stream to its end, as the receiver
    /// sees it. Starting there keeps a late first wake-up of a thread on a
    /// busy machine (which makes the first reads burst) out of the figure.
    pub fn bits_per_s(&self) -> f64 {
        let tenth = self.bytes() / 10;
        let (from_at, from_bytes) = *self
            .arrivals
            .iter()
            .find(|(_, bytes)| *bytes >= tenth)
            .unwrap();
        let bytes = (self.bytes() - from_bytes) as f64;
        bytes * 8.0 / (self.last_at() - from_at).as_secs_f64()
    }
}

/// A sink that reads one connection to its end; the handle yields what it saw.
pub fn sink() -> (SocketAddr, JoinHandle<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buffer = vec![0; 256 << 10];
        let mut received = Received {
            arrivals: Vec::new(),
        };
        let mut bytes = 0;
        // A reset ends the stream too: tests compare byte counts.
        while let Ok(read @ 1..) = stream.read(&mut buffer) {
            bytes += read;
            received.arrivals.push((Instant::now(), bytes));
        }
        received
    });
    (address, receiver)
}

/// Writes `bytes` as fast as the link takes them, then half-closes.
pub fn send_bulk(address: SocketAddr, bytes: usize) -> JoinHandle<io::Result<()>> {
    thread::spawn(move || {
        let mut stream = connect(address);
        let block = vec![0xa5; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let now = left.min(block.len());
            stream.write_all(&block[..now])?;
            left -= now;
        }
        stream.shutdown(Shutdown::Write)?;
        // Hold the socket until the far end closes, so nothing is reset.
        stream.read(&mut [0; 1]).map(drop)
    })
}

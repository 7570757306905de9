//! `mllm link`: the inter-datacenter link emulator as a standalone relay.

use std::net::{SocketAddr, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use mllm_link::{parse_duration, parse_rate, parse_size, Link, LinkConfig};

/// Relays TCP connections to a target through an emulated link, printing the
/// listening address and then byte counts until interrupted (Ctrl-C).
#[derive(Args)]
pub struct LinkArgs {
    /// Where connections are relayed to.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// Where to accept connections (port 0: any free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Rate of each direction, e.g. 100Mbit, 1Gbit, 12.5MB/s.
    #[arg(long, value_parser = parse_rate, default_value = "100Mbit")]
    bandwidth: u64,
    /// Round-trip propagation delay, e.g. 50ms.
    #[arg(long, value_parser = parse_duration, default_value = "50ms")]
    rtt: Duration,
    /// Queue of each direction, e.g. 1MiB [default: one bandwidth-delay product].
    #[arg(long, value_parser = parse_size)]
    queue: Option<usize>,
    /// Each one-way delay varies uniformly within ± this, e.g. 2ms.
    #[arg(long, value_parser = parse_duration, default_value = "0ms")]
    jitter: Duration,
    /// Probability that a 1448-byte segment is lost, stalling its connection.
    #[arg(long, default_value_t = 0.0)]
    stall_probability: f64,
    /// How long a lost segment stalls its connection.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    stall_time: Duration,
    /// How often to print byte counts.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    interval: Duration,
}

pub fn run(args: LinkArgs) -> Result<()> {
    ensure!(!args.interval.is_zero(), "--interval must be above zero");
    let target = resolve(&args.to)?;
    let link = Link::new(LinkConfig {
        bandwidth_bits_per_s: args.bandwidth,
        rtt: args.rtt,
        queue_bytes: args
            .queue
            .unwrap_or_else(|| LinkConfig::default_queue_bytes(args.bandwidth, args.rtt)),
        jitter: args.jitter,
        stall_probability: args.stall_probability,
        stall_time: args.stall_time,
    })?;
    let listening = link.forward_from(args.listen, target)?;
    println!("mllm link: {listening} -> {target} ({})", link.config());
    report_forever(&link, args.interval)
}

fn resolve(host_port: &str) -> Result<SocketAddr> {
    host_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --to {host_port:?} (expected HOST:PORT)"))?
        .next()
        .with_context(|| format!("--to {host_port:?} resolves to no address"))
}

/// Prints cumulative bytes and the rate of the last interval, on a fixed
/// schedule so that the lines line up in time.
fn report_forever(link: &Link, interval: Duration) -> Result<()> {
    let started = Instant::now();
    let mut deadline = started;
    let mut previous = link.stats();
    loop {
        deadline += interval;
        thread::sleep(deadline.saturating_duration_since(Instant::now()));
        let now = link.stats();
        println!(
            "{:>9.1}s  forward {} ({})  backward {} ({})  connections {}",
            started.elapsed().as_secs_f64(),
            bytes(now.bytes_forward),
            rate(now.bytes_forward - previous.bytes_forward, interval),
            bytes(now.bytes_backward),
            rate(now.bytes_backward - previous.bytes_backward, interval),
            now.connections,
        );
        previous = now;
    }
}

fn bytes(count: u64) -> String {
    let units = [(1e9, "GB"), (1e6, "MB"), (1e3, "kB")];
    let count = count as f64;
    match units.iter().find(|(size, _)| count >= *size) {
        Some((size, unit)) => format!("{:.2} {unit}", count / size),
        None => format!("{count} B"),
    }
}

fn rate(bytes: u64, interval: Duration) -> String {
    format!(
        "{:.2} Mbit/s",
        bytes as f64 * 8.0 / interval.as_secs_f64() / 1e6
    )
}

//! The `mllm-guest` binary end to end, writing to plain files in place of serial ports.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, Output};
use std::thread::sleep;
use std::time::{Duration, Instant};

use mllm_guest::{parse_line, GuestEvent};

const BINARY: &str = env!("CARGO_BIN_EXE_mllm-guest");

fn start(out: &Path, args: &[&str]) -> Child {
    Command::new(BINARY)
        .args(&args[..1])
        .arg("--out")
        .arg(out)
        .args(&args[1..])
        .spawn()
        .expect("mllm-guest starts")
}

fn events(out: &Path) -> Vec<GuestEvent> {
    fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("not a protocol line: {line:?}")))
        .collect()
}

/// Lets a long-running subcommand work for `time`, then stops it.
fn run_for(out: &Path, args: &[&str], time: Duration) -> Vec<GuestEvent> {
    let mut child = start(out, args);
    sleep(time);
    child.kill().unwrap();
    child.wait().unwrap();
    events(out)
}

fn wait_for(
    out: &Path,
    timeout: Duration,
    found: impl Fn(&[GuestEvent]) -> bool,
) -> Vec<GuestEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = events(out);
        if found(&seen) || Instant::now() > deadline {
            return seen;
        }
        sleep(Duration::from_millis(20));
    }
}

fn verify_passes(events: &[GuestEvent], items: u64) -> usize {
    events
        .iter()
        .filter(|e| {
            **e == GuestEvent::VerifyOk {
                items_checked: items,
            }
        })
        .count()
}

fn has_corruption(events: &[GuestEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, GuestEvent::Corrupt { .. }))
}

fn failing_run(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(BINARY)
        .args(&args[..1])
        .arg("--out")
        .arg(dir.path().join("out"))
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(!output.status.success(), "{args:?} should fail");
    output
}

#[test]
fn heartbeat_numbers_are_consecutive_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hb");
    let seen = run_for(
        &out,
        &["heartbeat", "--interval-ms", "5"],
        Duration::from_millis(400),
    );
    assert!(seen.len() >= 20, "only {} heartbeats in 400 ms", seen.len());
    for (expected, event) in seen.iter().enumerate() {
        assert_eq!(
            *event,
            GuestEvent::Heartbeat {
                seq: expected as u64
            }
        );
    }
}

#[test]
fn memload_keeps_its_rate_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mem");
    let args = [
        "memload",
        "--size",
        "4M",
        "--write-rate",
        "2000",
        "--read-pct",
        "50",
        "--skew",
        "zipf:0.99",
        "--verify-every-s",
        "0.3",
    ];
    let seen = run_for(&out, &args, Duration::from_millis(1500));
    assert!(
        matches!(&seen[0], GuestEvent::Info { text } if text.starts_with("memload: 1024 pages"))
    );
    assert_eq!(
        seen[1],
        GuestEvent::Ready {
            name: "memload".into()
        }
    );
    assert!(!has_corruption(&seen), "{seen:?}");
    assert!(verify_passes(&seen, 1024) >= 3, "{seen:?}");

    let (ops, micros) = seen.iter().fold((0, 0), |(ops, us), e| match e {
        GuestEvent::Ops { ops: o, elapsed_us } => (ops + o, us + elapsed_us),
        _ => (ops, us),
    });
    assert!(micros > 1_000_000, "OPS windows cover {micros} µs");
    let rate = ops as f64 / (micros as f64 / 1e6);
    // 2000 writes/s plus as many reads. The limiter never runs ahead; it may
    // fall behind when other builds starve this test of CPU, hence the wider lower bound.
    assert!((3400.0..4100.0).contains(&rate), "{rate} ops/s");
}

#[test]
fn diskload_detects_a_block_damaged_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("disk");
    let device = dir.path().join("vdb");
    let file = fs::File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&device)
        .unwrap();
    file.set_len(4 << 20).unwrap();
    let args = [
        "diskload",
        "--device",
        device.to_str().unwrap(),
        "--offset",
        "1M",
        "--length",
        "2M",
        "--write-rate",
        "500",
        "--hot-fraction",
        "0.1",
        "--hot-access-pct",
        "100",
        "--verify-every-s",
        "0.3",
    ];
    let mut child = start(&out, &args);
    let clean = wait_for(&out, Duration::from_secs(10), |e| {
        verify_passes(e, 512) >= 1
    });
    assert!(verify_passes(&clean, 512) >= 1, "{clean:?}");
    assert!(!clean
        .iter()
        .any(|e| matches!(e, GuestEvent::Info { text } if text.contains("O_DIRECT"))));

    // Block 400 is cold (the hot set is blocks 0..51), so only the sweep reads it.
    file.write_all_at(b"garbage", (1 << 20) + 400 * 4096 + 100)
        .unwrap();
    file.sync_all().unwrap();
    let seen = wait_for(&out, Duration::from_secs(10), has_corruption);
    child.kill().unwrap();
    child.wait().unwrap();
    let corrupt: Vec<_> = seen
        .iter()
        .filter(|e| matches!(e, GuestEvent::Corrupt { .. }))
        .collect();
    assert_eq!(
        corrupt,
        [&GuestEvent::Corrupt {
            detail: "block 400 (sweep): payload checksum mismatch".into()
        }]
    );
}

#[test]
fn run_reports_output_rates_and_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let status = start(
        &out,
        &[
            "run",
            "--",
            "sh",
            "-c",
            "echo starting; echo '250 ops/s'; exit 4",
        ],
    )
    .wait()
    .unwrap();
    assert_eq!(status.code(), Some(4));
    let seen = events(&out);
    assert_eq!(seen[0], GuestEvent::Ready { name: "sh".into() });
    assert!(seen.contains(&GuestEvent::Info {
        text: "starting".into()
    }));
    assert!(seen.iter().any(|e| matches!(e, GuestEvent::Ops { .. })));
    assert_eq!(seen.last(), Some(&GuestEvent::Exit { code: 4 }));
}

#[test]
fn bad_input_gets_a_clear_message() {
    let stderr = |args: &[&str]| String::from_utf8_lossy(&failing_run(args).stderr).into_owned();
    assert!(stderr(&["memload", "--size", "1000"]).contains("multiple of 4096"));
    assert!(stderr(&["memload", "--skew", "zipf:0"]).contains("exponent must be positive"));
    assert!(stderr(&["memload", "--hot-fraction", "0"]).contains("above 0"));
    assert!(stderr(&["memload", "--read-pct", "101"]).contains("101"));
    let missing = stderr(&["diskload", "--device", "/nonexistent/vdb"]);
    assert!(missing.contains("/nonexistent/vdb"), "{missing}");
    let short = tempfile::NamedTempFile::new().unwrap();
    let too_long = stderr(&["diskload", "--device", short.path().to_str().unwrap()]);
    assert!(too_long.contains("beyond the end"), "{too_long}");
}

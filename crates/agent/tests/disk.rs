//! The agent's disk server driven by QEMU's own NBD client (`qemu-io`), the
//! client the guest's disk uses: what QEMU writes, reads and discards must
//! show up as dirty blocks, activity, trace records and used blocks.
//! Skipped, saying so, where `qemu-io` is missing.

use std::fs;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use mllm_agent::{DiskServer, TrackedDisk, BLOCK_SIZE};
use mllm_core::trace::DiskOp;
use tempfile::TempDir;

const EXPORT: &str = "disk0";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

fn have_qemu_io() -> bool {
    let found = Command::new("qemu-io")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        println!("SKIPPED: qemu-io is not installed (apt-get install qemu-utils)");
    }
    found
}

fn sparse_image(dir: &Path, name: &str, bytes: u64) -> Arc<TrackedDisk> {
    let path = dir.join(name);
    fs::File::create(&path).unwrap().set_len(bytes).unwrap();
    TrackedDisk::open(&path).unwrap()
}

fn serve(dir: &Path, disk: &Arc<TrackedDisk>) -> DiskServer {
    DiskServer::start(Arc::clone(disk), &dir.join("disk0.sock"), EXPORT).unwrap()
}

/// Runs `commands` in one `qemu-io` connection to `server`; `-P` reads check
/// the data, so a wrong byte fails the run.
fn qemu_io(server: &DiskServer, commands: &[&str]) {
    let url = format!("nbd+unix:///{EXPORT}?socket={}", server.socket().display());
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw", &url]);
    for line in commands {
        command.args(["-c", line]);
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && !stdout.contains("Pattern verification failed"),
        "{command:?} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn block_of(byte: u64) -> u32 {
    u32::try_from(byte / BLOCK_SIZE as u64).unwrap()
}

#[test]
fn qemu_requests_become_dirty_blocks_activity_and_trace() {
    if !have_qemu_io() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let disk = sparse_image(dir.path(), "disk.raw", 4 * MIB);
    // Data the guest will discard, put there behind NBD's back.
    for block in block_of(MIB)..block_of(MIB + 64 * KIB) {
        disk.write_block(block, &[0x77; BLOCK_SIZE]).unwrap();
    }
    let server = serve(dir.path(), &disk);
    assert!(
        disk.take_dirty().is_empty(),
        "the agent's own writes are not dirty"
    );

    qemu_io(
        &server,
        &["write -P 0xab 64k 8k", "read 0 4k", "discard 1M 64k"],
    );
    let written = block_of(64 * KIB)..block_of(72 * KIB);
    let discarded = block_of(MIB)..block_of(MIB + 64 * KIB);
    let expected: Vec<u32> = written.clone().chain(discarded).collect();
    assert_eq!(disk.take_dirty(), expected);
    let activity = disk.take_activity();
    assert_eq!(activity.reads, [0]);
    assert_eq!(activity.writes, expected);
    let requests: Vec<_> = disk
        .recent_accesses()
        .iter()
        .map(|access| (access.op, access.offset, access.length))
        .collect();
    assert_eq!(
        requests,
        [
            (DiskOp::Write, 64 * KIB, 8 * 1024),
            (DiskOp::Read, 0, 4 * 1024),
            (DiskOp::Write, MIB, 64 * 1024),
        ]
    );
    assert_eq!(disk.dropped_accesses(), 0);
    let used: Vec<u32> = disk.used_blocks().unwrap().iter().collect();
    assert_eq!(
        used,
        written.collect::<Vec<_>>(),
        "discarded blocks are unused"
    );

    // Zeros written as data stay unused; one byte dirties one block.
    let one_byte = 3 * MIB + 100;
    qemu_io(
        &server,
        &[
            "write -P 0 2M 4k",
            &format!("write -P 0xcd {one_byte} 1"),
            &format!("read -P 0xcd {one_byte} 1"),
            "read -P 0xab 64k 8k",
        ],
    );
    assert_eq!(disk.take_dirty(), [block_of(2 * MIB), block_of(one_byte)]);
    let used: Vec<u32> = disk.used_blocks().unwrap().iter().collect();
    assert_eq!(used, [16, 17, block_of(one_byte)]);
}

#[test]
fn a_disk_copied_block_by_block_has_the_sources_digest() {
    if !have_qemu_io() {
        return;
    }
    let dir = TempDir::new().unwrap();
    let source = sparse_image(dir.path(), "source.raw", 4 * MIB);
    let destination = sparse_image(dir.path(), "destination.raw", 4 * MIB);
    {
        let server = serve(dir.path(), &source);
        qemu_io(
            &server,
            &[
                "write -P 0x11 0 12k",
                "write -P 0x22 1500k 1",
                "write -P 0x33 4088k 8k",
            ],
        );
    }
    for block in [5, 600, 1000] {
        destination.write_block(block, &[0xee; BLOCK_SIZE]).unwrap();
    }
    assert!(!source
        .digest()
        .unwrap()
        .mismatches(&destination.digest().unwrap())
        .is_empty());

    // As a destination does with what it held that the source does not send.
    let (held, _) = destination.held_content(0).unwrap();
    assert_eq!(held.iter().collect::<Vec<_>>(), [5, 600, 1000]);
    destination.zero_blocks(&held).unwrap();
    let mut data = [0; BLOCK_SIZE];
    let used = source.used_blocks().unwrap();
    assert_eq!(used.count(), 3 + 1 + 2);
    for block in used.iter() {
        source.read_block(block, &mut data).unwrap();
        destination.write_block(block, &data).unwrap();
    }
    destination.sync().unwrap();
    assert!(source
        .digest()
        .unwrap()
        .mismatches(&destination.digest().unwrap())
        .is_empty());

    destination.zero_block(block_of(1500 * KIB)).unwrap();
    let mismatches = source
        .digest()
        .unwrap()
        .mismatches(&destination.digest().unwrap());
    assert_eq!(mismatches.len(), 1);
    let range = mismatches[0];
    assert!(
        (range.first_page..range.first_page + range.page_count).contains(&block_of(1500 * KIB)),
        "{range:?}"
    );
}

#[test]
fn the_server_replaces_a_stale_socket_never_a_live_one_and_removes_its_own() {
    let dir = TempDir::new().unwrap();
    let disk = sparse_image(dir.path(), "disk.raw", MIB);
    let socket = dir.path().join("disk0.sock");
    drop(UnixListener::bind(&socket).unwrap());
    assert!(socket.exists(), "a closed listener leaves its socket file");
    let server = serve(dir.path(), &disk);
    assert_eq!(server.socket(), socket);
    if have_qemu_io() {
        qemu_io(&server, &["write -P 0x01 0 4k", "read -P 0x01 0 4k"]);
    }
    let error = DiskServer::start(Arc::clone(&disk), &socket, EXPORT).unwrap_err();
    assert!(error.chain().contains("listens"), "{}", error.chain());
    assert!(socket.exists(), "a live server's socket stays");
    if have_qemu_io() {
        qemu_io(&server, &["read -P 0x01 0 4k"]);
    }
    drop(server);
    assert!(!socket.exists());

    fs::write(&socket, b"not a socket").unwrap();
    let error = DiskServer::start(disk, &socket, EXPORT).unwrap_err();
    assert!(error.to_string().contains("disk0.sock"), "{error}");
    assert_eq!(fs::read(&socket).unwrap(), b"not a socket");
}

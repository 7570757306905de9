//! Interoperability with QEMU's own NBD client (`qemu-io`, `qemu-img`):
//! the client the guest disk will use. Skipped, saying so, where the QEMU
//! tools are missing; CI installs them.

use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use mllm_nbd::{RawFile, Server, ShutdownHandle};
use tempfile::TempDir;

const EXPORT: &str = "disk0";

fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !found {
        println!("SKIPPED: {tool} is not installed (apt-get install qemu-utils)");
    }
    found
}

/// A server for the image at `image` on a unix socket in `dir`.
struct Running {
    socket: PathBuf,
    shutdown: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(dir: &Path, image: &Path) -> Self {
        let socket = dir.join("nbd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let server = Server::new(EXPORT, Arc::new(RawFile::open(image).unwrap())).unwrap();
        let shutdown = server.shutdown_handle();
        let thread = thread::spawn(move || server.serve_unix(listener).unwrap());
        Self {
            socket,
            shutdown,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("nbd+unix:///{EXPORT}?socket={}", self.socket.display())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            let joined = thread.join();
            if !thread::panicking() {
                joined.unwrap();
            }
        }
    }
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn qemu_io(url: &str, commands: &[&str]) -> String {
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw", url]);
    for each in commands {
        command.args(["-c", each]);
    }
    let output = run(&mut command);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    // qemu-io reports a failed command on stdout and still exits 0.
    for line in text.lines() {
        assert!(
            !line.contains("failed") && !line.contains("Pattern verification"),
            "qemu-io {commands:?}: {text}"
        );
    }
    text
}

fn sparse_image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let path = dir.join(name);
    File::create(&path).unwrap().set_len(size).unwrap();
    path
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn qemu_io_writes_reads_discards_and_flushes() {
    if !have_tool("qemu-io") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let image = sparse_image(dir.path(), "disk.raw", 8 << 20);
    let server = Running::start(dir.path(), &image);
    let url = server.url();

    qemu_io(
        &url,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd -f 1M 64k",
            "read -P 0xab 0 1M",
            "read -P 0xcd 1M 64k",
            "flush",
        ],
    );
    let file = File::open(&image).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, 4096).unwrap();
    assert_eq!(byte[0], 0xab, "the write did not reach the image");
    file.read_exact_at(&mut byte, (1 << 20) + 5).unwrap();
    assert_eq!(byte[0], 0xcd, "the FUA write did not reach the image");

    let before = allocated_bytes(&image);
    qemu_io(
        &url,
        &[
            "discard 0 512k",
            "read -P 0 0 512k",
            "read -P 0xab 512k 512k",
        ],
    );
    let after = allocated_bytes(&image);
    assert!(
        before - after >= 512 << 10,
        "discard should punch 512 KiB out of the image: {before} -> {after} bytes allocated"
    );

    // `-u` lets the zeroes be a hole; without it QEMU sends
    // NBD_CMD_FLAG_NO_HOLE and the range must stay allocated.
    let before = allocated_bytes(&image);
    qemu_io(&url, &["write -z -u 512k 256k", "read -P 0 512k 256k"]);
    let after = allocated_bytes(&image);
    assert!(
        before - after >= 256 << 10,
        "zeroes that may trim should punch: {before} -> {after} bytes allocated"
    );
    qemu_io(&url, &["write -z 768k 256k", "read -P 0 768k 256k"]);
    assert_eq!(
        allocated_bytes(&image),
        after,
        "zeroes with NO_HOLE must stay allocated"
    );
    qemu_io(
        &url,
        &[
            "read -P 0 2M 1M",
            "write -P 0x11 8188k 4k",
            "read -P 0x11 8188k 4k",
        ],
    );
}

#[test]
fn qemu_img_copies_an_image_through_the_server_both_ways() {
    if !have_tool("qemu-img") {
        return;
    }
    let dir = TempDir::new().unwrap();
    let size: u64 = 24 << 20;
    // A source with data, zeroes that are allocated, and holes.
    let source = sparse_image(dir.path(), "source.raw", size);
    let file = File::options().write(true).open(&source).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for start in [0u64, 3 << 20, (7 << 20) + 4096, 20 << 20] {
        let chunk: Vec<u8> = (0..(1 << 20) + 513)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[0]
            })
            .collect();
        file.write_all_at(&chunk, start).unwrap();
    }
    file.write_all_at(&vec![0u8; 1 << 20], 12 << 20).unwrap();
    drop(file);

    let target = sparse_image(dir.path(), "target.raw", size);
    let server = Running::start(dir.path(), &target);
    let url = server.url();
    run(Command::new("qemu-img")
        .args(["convert", "-n", "-f", "raw", "-O", "raw"])
        .arg(&source)
        .arg(&url));
    run(Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&source)
        .arg(&url));
    assert_eq!(fs::read(&source).unwrap(), fs::read(&target).unwrap());

    // And back out again: reads, with holes in structured replies.
    let copy = dir.path().join("copy.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(&url)
        .arg(&copy));
    assert_eq!(fs::read(&source).unwrap(), fs::read(&copy).unwrap());
    assert!(
        allocated_bytes(&target) < size / 2,
        "holes should stay holes: {} of {size} bytes allocated",
        allocated_bytes(&target)
    );
}

//! Shared by the tests and the benchmark, and by mllm-faults' tests: builds
//! the hook and the `page_writer` stand-in, and drives a writer process with
//! the hook preloaded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use mllm_hook_protocol::SOCKET_ENV;
use mllm_tracker::{find_ram_mapping, RamMapping};

pub struct Artifacts {
    pub hook_library: PathBuf,
    pub page_writer: PathBuf,
}

/// Builds `libmllm_hook.so` and the `page_writer` example with the profile
/// and target directory of the running executable (a cdylib cannot be a
/// dependency, so cargo would not build it for us), once per process.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        // The executable is target/<profile>/{deps,examples}/<name>.
        let executable = std::env::current_exe().expect("path of the running executable");
        let profile_dir = executable
            .parent()
            .and_then(Path::parent)
            .expect("executable inside target/<profile>/");
        let target_dir = profile_dir.parent().expect("target directory");
        let profile = match profile_dir.file_name().and_then(|name| name.to_str()) {
            Some("debug") => "dev",
            Some(name) => name,
            None => panic!("unexpected profile directory {}", profile_dir.display()),
        };
        let status = Command::new(env!("CARGO"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--profile", profile, "--target-dir"])
            .arg(target_dir)
            .args(["-p", "mllm-hook", "-p", "mllm-tracker", "--lib"])
            .args(["--example", "page_writer"])
            .status()
            .expect("running cargo build");
        assert!(status.success(), "building the hook and page_writer failed");
        Artifacts {
            hook_library: profile_dir.join("libmllm_hook.so"),
            page_writer: profile_dir.join("examples").join("page_writer"),
        }
    })
}

/// A name unique to this process and call, for files in /dev/shm and /tmp.
pub fn unique_name(what: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("mllm-tracker-{}-{n}-{what}", std::process::id())
}

/// A `page_writer` process: guest RAM stand-in with the hook preloaded.
pub struct PageWriter {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    file: PathBuf,
    socket: PathBuf,
}

impl PageWriter {
    /// Starts a writer mapping a new `bytes`-long file in /dev/shm. The hook
    /// is always preloaded; `hook` says whether it gets its socket variable.
    pub fn spawn(bytes: u64, hook: bool) -> PageWriter {
        let artifacts = artifacts();
        let file = PathBuf::from("/dev/shm").join(unique_name("ram"));
        let socket = std::env::temp_dir().join(unique_name("hook.sock"));
        let mut command = Command::new(&artifacts.page_writer);
        command
            .arg(&file)
            .arg(bytes.to_string())
            .env("LD_PRELOAD", &artifacts.hook_library)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if hook {
            command.env(SOCKET_ENV, &socket);
        }
        let mut child = command.spawn().expect("starting page_writer");
        let input = child.stdin.take().expect("piped stdin");
        let output = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut writer = PageWriter {
            child,
            input,
            output,
            file,
            socket,
        };
        assert_eq!(writer.reply(), "ready");
        writer
    }

    pub fn pid(&self) -> i32 {
        self.child.id().cast_signed()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The file in /dev/shm the writer maps.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Where the writer maps its file, found the way the agent finds QEMU's RAM.
    pub fn ram(&self) -> RamMapping {
        find_ram_mapping(self.pid(), self.file()).expect("the writer's mapping")
    }

    /// Runs one command (see the `page_writer` example) and returns its count.
    pub fn command(&mut self, line: &str) -> u64 {
        self.send(line);
        self.count()
    }

    /// Sends one command without waiting for it to finish.
    pub fn send(&mut self, line: &str) {
        writeln!(self.input, "{line}").expect("sending a command to page_writer");
    }

    /// Waits for the command sent last to finish and returns its count.
    pub fn count(&mut self) -> u64 {
        let reply = self.reply();
        let count = reply.strip_prefix("done ").expect("a `done` reply");
        count.parse().expect("a count")
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.output
            .read_line(&mut line)
            .expect("reading from page_writer");
        assert!(!line.is_empty(), "page_writer exited");
        line.trim_end().to_owned()
    }
}

impl Drop for PageWriter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(&self.socket);
    }
}

//! QEMU with the hook preloaded, for the tests here and mllm-faults' tests.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use mllm_hook_protocol::SOCKET_ENV;

use crate::support::{artifacts, unique_name};

pub const QEMU_RAM_MIB: u64 = 256;

/// QEMU with its RAM in /dev/shm and the hook preloaded; killed and cleaned
/// up on drop, whatever the test's outcome.
pub struct Qemu {
    pub child: Child,
    pub ram_file: PathBuf,
    pub qmp_socket: PathBuf,
    pub hook_socket: PathBuf,
}

impl Qemu {
    /// Starts QEMU 10 under TCG with `QEMU_RAM_MIB` of RAM, no disk, paused
    /// before the first instruction (`-S`).
    pub fn start_paused() -> Qemu {
        Qemu::start_paused_with(&[])
    }

    /// Like [`Qemu::start_paused`], with `extra_args` on QEMU's command line.
    pub fn start_paused_with(extra_args: &[&str]) -> Qemu {
        let ram_file = PathBuf::from("/dev/shm").join(unique_name("qemu.ram"));
        let qmp_socket = std::env::temp_dir().join(unique_name("qmp.sock"));
        let hook_socket = std::env::temp_dir().join(unique_name("hook.sock"));
        let backend = format!(
            "memory-backend-file,id=ram0,size={QEMU_RAM_MIB}M,mem-path={},share=on",
            ram_file.display()
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-m", &format!("{QEMU_RAM_MIB}M")])
            .args(["-object", &backend, "-machine", "pc,memory-backend=ram0"])
            .args(["-display", "none", "-nodefaults", "-S"])
            .args(extra_args)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_socket.display()))
            .env("LD_PRELOAD", &artifacts().hook_library)
            .env(SOCKET_ENV, &hook_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting qemu-system-x86_64 (QEMU 10 must be installed)");
        Qemu {
            child,
            ram_file,
            qmp_socket,
            hook_socket,
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for path in [&self.ram_file, &self.qmp_socket, &self.hook_socket] {
            let _ = std::fs::remove_file(path);
        }
    }
}

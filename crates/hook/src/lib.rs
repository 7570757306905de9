//! Preloaded into QEMU (`LD_PRELOAD=libmllm_hook.so`) so the agent can track
//! guest-RAM writes from outside QEMU, and serve the pages a post-copy
//! destination does not hold yet.
//!
//! A userfaultfd only covers the address space of the process that created
//! it, so the one that write-protects QEMU's guest RAM, or makes its threads
//! wait for missing pages, must be created inside QEMU. This library does
//! exactly that on request and nothing else: when
//! `MLLM_HOOK_SOCKET` names a unix socket path, one thread listens there and
//! serves the requests described in `mllm-hook-protocol`. When the variable
//! is unset the library does nothing at all.

mod server;
mod uffd;

use std::ffi::OsString;
use std::path::PathBuf;

use mllm_hook_protocol::SOCKET_ENV;

/// Runs when the dynamic loader maps the library, before QEMU's `main`.
#[used]
#[link_section = ".init_array"]
static START_ON_LOAD: extern "C" fn() = start_on_load;

extern "C" fn start_on_load() {
    let Some(socket) = std::env::var_os(SOCKET_ENV) else {
        return;
    };
    // Children QEMU spawns (helper scripts) inherit LD_PRELOAD; without the
    // variable they stay idle instead of stealing the socket path. Changing
    // the environment is sound here: the loader runs a preloaded library's
    // constructors before the program can start any thread.
    std::env::remove_var(SOCKET_ENV);
    if let Err(error) = spawn_server(socket) {
        eprintln!("mllm-hook: cannot start the hook thread: {error}");
    }
}

fn spawn_server(socket: OsString) -> std::io::Result<()> {
    let listener = server::bind(&PathBuf::from(socket))?;
    // QEMU blocks signals such as SIGALRM and SIGIO in its threads and reads
    // them through a signalfd; a thread leaving them unblocked would receive
    // them instead and die of their default action. A new thread inherits the
    // creator's mask, so block everything around the spawn.
    let previous_mask = block_all_signals();
    let spawned = std::thread::Builder::new()
        .name("mllm-hook".into())
        .spawn(move || server::serve(listener));
    restore_signal_mask(&previous_mask);
    spawned.map(drop)
}

fn block_all_signals() -> libc::sigset_t {
    // SAFETY: both sets are plain C structures initialised by sigfillset and
    // pthread_sigmask before being read.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        previous
    }
}

fn restore_signal_mask(mask: &libc::sigset_t) {
    // SAFETY: `mask` was filled by pthread_sigmask in block_all_signals.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, mask, std::ptr::null_mut());
    }
}

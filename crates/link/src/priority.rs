//! Relay threads run ahead of ordinary processes when the system allows it.
//!
//! The link's delays are only as exact as the moment its threads wake up. In
//! the lab the CPUs are busy with the very VMs being migrated (QEMU under TCG
//! fills every core), and an ordinary thread then waits for a time slice:
//! measured here, two busy processes on two cores added 10-15 ms to a 50 ms
//! round trip. A low real-time priority (SCHED_FIFO) lets the relay run as
//! soon as it wakes. Its threads only ever block or copy what the link
//! carries, and the kernel caps real-time threads at 95% of the CPU, so they
//! cannot starve the machine. Without the permission (not root, no
//! CAP_SYS_NICE) the relay runs as an ordinary thread and says so once.

use std::sync::Once;

use tracing::warn;

/// Above every ordinary thread, below the kernel's own real-time threads.
const RELAY_PRIORITY: libc::c_int = 10;

pub(crate) fn run_relay_thread_ahead() {
    let param = libc::sched_param {
        sched_priority: RELAY_PRIORITY,
    };
    // SAFETY: pthread_self() is the calling thread, which is alive, and
    // `param` is a valid sched_param for the duration of the call.
    let result =
        unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) };
    if result != 0 {
        static WARNED: Once = Once::new();
        WARNED.call_once(|| {
            let reason = std::io::Error::from_raw_os_error(result);
            warn!("link: relay threads run at ordinary priority ({reason}): delays may grow when the CPUs are busy");
        });
    }
}

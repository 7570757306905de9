//! Where the lab's threads run: the guest's vCPUs on cores of their own,
//! everything else (QEMU's other threads, both agents, the link emulator,
//! QEMU's migration threads) on the rest, as an operator pins a VM's vCPUs
//! away from the host's own work. Without it every wakeup of the link
//! emulator or an agent may preempt a vCPU, which then resumes with cold
//! caches and TLB: on two cores the guest lost a third of its request rate
//! to that during a move. Every method of a scenario runs with the same
//! placement.

use std::io;

use anyhow::{Context, Result};
use mllm_qemu::QemuProcess;

/// The cores of each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Every core this process could use before.
    all: Vec<usize>,
    /// The vCPUs of both VMs (the source's and the destination's never run
    /// at the same time, bar the switch).
    guest: Vec<usize>,
    /// Everything else.
    host: Vec<usize>,
}

impl Placement {
    /// The last `vcpus` of the cores this process may use for the guest,
    /// the others for the host; `None` when that leaves the host no core.
    pub fn for_vcpus(vcpus: u32) -> Result<Option<Placement>> {
        Ok(Placement::split(&allowed_cores()?, vcpus as usize))
    }

    fn split(cores: &[usize], vcpus: usize) -> Option<Placement> {
        let host_cores = cores.len().checked_sub(vcpus).filter(|&n| n > 0)?;
        Some(Placement {
            all: cores.to_vec(),
            guest: cores[host_cores..].to_vec(),
            host: cores[..host_cores].to_vec(),
        })
    }

    /// Puts the calling thread on the host's cores until the guard drops:
    /// the threads and processes it starts meanwhile (QEMU, the agents, the
    /// link) inherit them.
    pub fn enter_host(&self) -> Result<OnHostCores> {
        set_affinity(0, &self.host).context("cannot pin the lab to the host's cores")?;
        Ok(OnHostCores {
            all: self.all.clone(),
        })
    }

    /// Moves `vm`'s vCPU threads to the guest's cores.
    pub fn pin_vcpus(&self, vm: &QemuProcess) -> Result<()> {
        let threads = vm
            .vcpu_threads()
            .with_context(|| format!("cannot find the vCPU threads of {}", vm.config.name))?;
        for thread in threads {
            let tid = libc::pid_t::try_from(thread).context("a thread id past pid_t")?;
            set_affinity(tid, &self.guest).with_context(|| {
                format!("cannot pin vCPU thread {thread} of {}", vm.config.name)
            })?;
        }
        Ok(())
    }

    /// The placement as the results record it.
    pub fn describe(&self) -> String {
        format!(
            "vCPUs on cores {:?}, the rest on {:?}",
            self.guest, self.host
        )
    }
}

/// The calling thread back on every core when dropped.
#[derive(Debug)]
pub struct OnHostCores {
    all: Vec<usize>,
}

impl Drop for OnHostCores {
    fn drop(&mut self) {
        if let Err(error) = set_affinity(0, &self.all) {
            tracing::warn!(%error, "the lab stays pinned to the host's cores");
        }
    }
}

/// The cores this thread may run on.
fn allowed_cores() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let result = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if result != 0 {
        return Err(io::Error::last_os_error()).context("cannot read this process's cores");
    }
    // SAFETY: CPU_ISSET reads `set` within CPU_SETSIZE.
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&core| unsafe { libc::CPU_ISSET(core, &set) })
        .collect())
}

/// Restricts thread `tid` (0: the calling one) to `cores`.
fn set_affinity(tid: libc::pid_t, cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        // SAFETY: CPU_SET writes `set` within CPU_SETSIZE; cores came from
        // `allowed_cores`, which stays below it.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let result = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_cores_go_to_the_vcpus_and_the_host_keeps_at_least_one() {
        let split = Placement::split(&[0, 1, 2, 3], 1).unwrap();
        assert_eq!((split.guest, split.host), (vec![3], vec![0, 1, 2]));
        let split = Placement::split(&[0, 2, 5], 2).unwrap();
        assert_eq!((split.guest, split.host), (vec![2, 5], vec![0]));
        assert_eq!(Placement::split(&[0, 1], 2), None);
        assert_eq!(Placement::split(&[0], 1), None);
    }

    #[test]
    fn a_thread_pinned_to_the_host_runs_only_there() {
        let cores = allowed_cores().unwrap();
        let Some(placement) = Placement::split(&cores, 1) else {
            return; // one core: nothing to pin
        };
        let host = placement.host.clone();
        let (inside, after) = std::thread::spawn(move || {
            let pinned = placement.enter_host().unwrap();
            let inside = allowed_cores().unwrap();
            drop(pinned);
            (inside, allowed_cores().unwrap())
        })
        .join()
        .unwrap();
        assert_eq!(inside, host);
        assert_eq!(after, cores);
    }
}

//! The migrations in progress on this agent, at most one per VM name
//! whichever its direction, and how the agent's shutdown stops them: a
//! migration before its hand-over is aborted (the source keeps the VM), one
//! after it is left to finish (see the crate README, "Shutdown").

use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use mllm_agent::IncomingAbort;
use mllm_control::Phase;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// This agent sends the VM away.
    Outgoing,
    /// This agent receives the VM.
    Incoming,
}

/// How to stop one migration, as long as the VM has not been handed over.
#[derive(Debug, Clone)]
pub enum Stopper {
    Outgoing(Arc<OutgoingAbort>),
    Incoming(IncomingAbort),
}

impl Stopper {
    /// Cuts the migration's link if the VM is still the source's; false
    /// once it was handed over.
    fn abort_before_hand_over(&self) -> bool {
        match self {
            Stopper::Outgoing(abort) => abort.abort_before_hand_over(),
            Stopper::Incoming(abort) => abort.abort_before_hand_over(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    direction: Direction,
    stopper: Option<Stopper>,
}

#[derive(Debug, Default)]
struct Table {
    migrations: HashMap<String, Entry>,
    /// The agent shuts down: no migration starts any more.
    stopping: bool,
}

#[derive(Debug, Default)]
pub struct InFlight {
    table: Mutex<Table>,
    /// Signalled whenever a migration ends.
    ended: Condvar,
}

/// VM `vm`'s migration is in flight while this lives.
#[derive(Debug)]
pub struct MigrationClaim<'a> {
    inflight: &'a InFlight,
    vm: String,
}

impl InFlight {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims VM `vm` for a migration in `direction`; refused while another
    /// migration of that name runs, or once the agent shuts down.
    pub fn begin(&self, vm: &str, direction: Direction) -> Result<MigrationClaim<'_>> {
        let mut table = self.table();
        if table.stopping {
            bail!("the agent is shutting down: it starts no migration of VM {vm}");
        }
        if let Some(other) = table.migrations.get(vm) {
            let what = match other.direction {
                Direction::Outgoing => "being migrated away from this host",
                Direction::Incoming => "being received by this host",
            };
            bail!("VM {vm} is already {what}: one migration per VM at a time");
        }
        table.migrations.insert(
            vm.to_owned(),
            Entry {
                direction,
                stopper: None,
            },
        );
        Ok(MigrationClaim {
            inflight: self,
            vm: vm.to_owned(),
        })
    }

    /// Refuses every new migration, aborts those before their hand-over,
    /// then waits up to `grace` for all of them to end. Returns the VMs of
    /// the migrations still running then.
    pub fn stop_all(&self, grace: Duration) -> Vec<String> {
        let stoppers: Vec<(String, Option<Stopper>)> = {
            let mut table = self.table();
            table.stopping = true;
            table
                .migrations
                .iter()
                .map(|(vm, entry)| (vm.clone(), entry.stopper.clone()))
                .collect()
        };
        for (vm, stopper) in stoppers {
            match stopper {
                Some(stopper) if stopper.abort_before_hand_over() => {
                    tracing::warn!(vm, "shutting down: migration aborted before the hand-over");
                }
                Some(_) => tracing::warn!(
                    vm,
                    "shutting down: migration past its hand-over, left to finish"
                ),
                // Between its claim and its link: it fails to start.
                None => {}
            }
        }
        let deadline = Instant::now() + grace;
        let mut table = self.table();
        while !table.migrations.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            table = self
                .ended
                .wait_timeout(table, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        table.migrations.keys().cloned().collect()
    }
}

impl MigrationClaim<'_> {
    /// Says how to stop the migration; if the agent began shutting down
    /// meanwhile, stops it at once.
    pub fn stoppable_by(&self, stopper: Stopper) {
        let mut table = self.inflight.table();
        if table.stopping {
            stopper.abort_before_hand_over();
        }
        if let Some(entry) = table.migrations.get_mut(&self.vm) {
            entry.stopper = Some(stopper);
        }
    }
}

impl Drop for MigrationClaim<'_> {
    fn drop(&mut self) {
        self.inflight.table().migrations.remove(&self.vm);
        self.inflight.ended.notify_all();
    }
}

/// An outgoing migration's way to be aborted from another thread: its link,
/// and its phase as the engine reports it. The engine reports the device
/// state phase before it relays device state, so a migration seen before it
/// has not handed the VM over, and cutting its link makes it resume the VM.
#[derive(Debug)]
pub struct OutgoingAbort {
    state: Mutex<OutgoingState>,
}

#[derive(Debug)]
struct OutgoingState {
    phase: Phase,
    socket: Option<TcpStream>,
    aborted: bool,
}

impl Default for OutgoingAbort {
    fn default() -> Self {
        OutgoingAbort {
            state: Mutex::new(OutgoingState {
                phase: Phase::Connecting,
                socket: None,
                aborted: false,
            }),
        }
    }
}

impl OutgoingAbort {
    fn state(&self) -> MutexGuard<'_, OutgoingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The migration's link (a clone of its socket).
    pub fn connected(&self, socket: TcpStream) {
        let mut state = self.state();
        if state.aborted {
            let _ = socket.shutdown(Shutdown::Both);
        }
        state.socket = Some(socket);
    }

    /// The engine reported `phase`. Called from the migrating thread, which
    /// waits here while an abort decides.
    pub fn progressed(&self, phase: Phase) {
        self.state().phase = phase;
    }

    pub fn abort_before_hand_over(&self) -> bool {
        let mut state = self.state();
        if !matches!(
            state.phase,
            Phase::Connecting | Phase::Precopy | Phase::FinalRound
        ) {
            return false;
        }
        state.aborted = true;
        if let Some(socket) = &state.socket {
            let _ = socket.shutdown(Shutdown::Both);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_migration_per_vm_name_whichever_the_direction() {
        let inflight = InFlight::default();
        let sending = inflight.begin("web", Direction::Outgoing).unwrap();
        let refused = inflight.begin("web", Direction::Incoming).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "VM web is already being migrated away from this host: one migration per VM at a time"
        );
        let _other = inflight.begin("db", Direction::Incoming).unwrap();
        drop(sending);
        let _receiving = inflight.begin("web", Direction::Incoming).unwrap();
        let refused = inflight.begin("web", Direction::Incoming).unwrap_err();
        assert!(
            refused.to_string().contains("already being received"),
            "{refused}"
        );
    }

    #[test]
    fn shutdown_aborts_before_the_hand_over_and_waits_for_the_rest() {
        let inflight = InFlight::default();
        let early = Arc::new(OutgoingAbort::default());
        early.progressed(Phase::Precopy);
        let late = Arc::new(OutgoingAbort::default());
        late.progressed(Phase::WaitingForDestination);
        let a = inflight.begin("a", Direction::Outgoing).unwrap();
        a.stoppable_by(Stopper::Outgoing(Arc::clone(&early)));
        let b = inflight.begin("b", Direction::Outgoing).unwrap();
        b.stoppable_by(Stopper::Outgoing(Arc::clone(&late)));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(50));
                drop(a);
            });
            let left = inflight.stop_all(Duration::from_millis(300));
            assert_eq!(left, ["b"]);
        });
        assert!(early.state().aborted);
        assert!(!late.state().aborted);
        assert!(inflight
            .begin("c", Direction::Incoming)
            .unwrap_err()
            .to_string()
            .contains("shutting down"));
        drop(b);
    }
}

//! Small blocking primitives shared by the relay threads.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Locks without propagating poison: the relay's shared state is only ever
/// updated in single steps, so it stays consistent even if a thread panicked.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A one-way flag that threads can sleep on, so that a cut or a shutdown
/// interrupts their waits at once instead of after the wait runs out.
#[derive(Default)]
pub(crate) struct Signal {
    raised: Mutex<bool>,
    changed: Condvar,
}

impl Signal {
    pub(crate) fn raise(&self) {
        *lock(&self.raised) = true;
        self.changed.notify_all();
    }

    pub(crate) fn is_raised(&self) -> bool {
        *lock(&self.raised)
    }

    /// Sleeps until `deadline`; false if the signal was raised first.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut raised = lock(&self.raised);
        loop {
            if *raised {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            raised = self
                .changed
                .wait_timeout(raised, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Open or closed: relays wait at a closed gate (a partition) until it
/// opens again or `cut` is raised.
#[derive(Default)]
pub(crate) struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
}

impl Gate {
    pub(crate) fn set_closed(&self, closed: bool) {
        *lock(&self.closed) = closed;
        self.changed.notify_all();
    }

    /// Waits while the gate is closed; false if `cut` was raised meanwhile.
    pub(crate) fn pass(&self, cut: &Signal) -> bool {
        // A cut does not notify this gate: look at it now and then.
        const CUT_POLL: std::time::Duration = std::time::Duration::from_millis(50);
        let mut closed = lock(&self.closed);
        while *closed {
            if cut.is_raised() {
                return false;
            }
            closed = self
                .changed
                .wait_timeout(closed, CUT_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        !cut.is_raised()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn sleep_runs_out_or_is_cut_short() {
        let signal = Arc::new(Signal::default());
        let start = Instant::now();
        assert!(signal.sleep_until(start + Duration::from_millis(20)));
        assert!(start.elapsed() >= Duration::from_millis(20));

        let raiser = Arc::clone(&signal);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            raiser.raise();
        });
        let start = Instant::now();
        assert!(!signal.sleep_until(start + Duration::from_secs(10)));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(signal.is_raised());
        thread.join().unwrap();
    }
}

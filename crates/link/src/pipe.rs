//! One direction of one connection: chunks that entered the link and wait
//! for their arrival time, bounded by the connection's window.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::sync::lock;

pub(crate) struct Pipe {
    state: Mutex<PipeState>,
    /// Woken on every change; at most one reader and one writer wait on it.
    changed: Condvar,
    window_bytes: usize,
}

struct PipeState {
    in_flight: VecDeque<Delivery>,
    /// Bytes read from the sender and not yet written to the receiver.
    undelivered_bytes: usize,
    aborted: bool,
}

pub(crate) struct Delivery {
    pub(crate) at: Instant,
    pub(crate) payload: Payload,
}

pub(crate) enum Payload {
    Data(Vec<u8>),
    /// The sender shut down its writing side.
    Fin,
    /// The sender's side failed: the whole connection ends when this arrives.
    Abort,
}

impl Payload {
    pub(crate) fn len(&self) -> usize {
        match self {
            Payload::Data(bytes) => bytes.len(),
            Payload::Fin | Payload::Abort => 0,
        }
    }
}

impl Pipe {
    pub(crate) fn new(window_bytes: usize) -> Pipe {
        Pipe {
            state: Mutex::new(PipeState {
                in_flight: VecDeque::new(),
                undelivered_bytes: 0,
                aborted: false,
            }),
            changed: Condvar::new(),
            window_bytes,
        }
    }

    /// Waits until `bytes` more fit the window; false if the pipe was aborted.
    pub(crate) fn wait_for_room(&self, bytes: usize) -> bool {
        let mut state = lock(&self.state);
        while !state.aborted && state.undelivered_bytes + bytes > self.window_bytes {
            state = self.wait(state);
        }
        !state.aborted
    }

    /// Sleeps until `deadline`; false if the pipe was aborted first.
    pub(crate) fn sleep_until(&self, deadline: Instant) -> bool {
        let mut state = lock(&self.state);
        loop {
            if state.aborted {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            state = self.wait_timeout(state, deadline);
        }
    }

    pub(crate) fn push(&self, delivery: Delivery) {
        let mut state = lock(&self.state);
        if state.aborted {
            return;
        }
        state.undelivered_bytes += delivery.payload.len();
        state.in_flight.push_back(delivery);
        drop(state);
        self.changed.notify_all();
    }

    /// The next delivery, once its arrival time has come; None if aborted.
    /// Its bytes still count against the window until [`Pipe::delivered`].
    pub(crate) fn next_due(&self) -> Option<Delivery> {
        let mut state = lock(&self.state);
        loop {
            if state.aborted {
                return None;
            }
            match state.in_flight.front().map(|delivery| delivery.at) {
                Some(at) if at <= Instant::now() => return state.in_flight.pop_front(),
                Some(at) => state = self.wait_timeout(state, at),
                None => state = self.wait(state),
            }
        }
    }

    /// The receiver took `bytes`: they leave the window.
    pub(crate) fn delivered(&self, bytes: usize) {
        lock(&self.state).undelivered_bytes -= bytes;
        self.changed.notify_all();
    }

    /// Drops everything in flight and wakes every waiter.
    pub(crate) fn abort(&self) {
        let mut state = lock(&self.state);
        state.aborted = true;
        state.in_flight.clear();
        drop(state);
        self.changed.notify_all();
    }

    fn wait<'a>(&self, state: MutexGuard<'a, PipeState>) -> MutexGuard<'a, PipeState> {
        self.changed
            .wait(state)
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wait_timeout<'a>(
        &self,
        state: MutexGuard<'a, PipeState>,
        until: Instant,
    ) -> MutexGuard<'a, PipeState> {
        let timeout = until.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(state, timeout)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;
    use std::time::Duration;

    fn data(at: Instant, bytes: usize) -> Delivery {
        Delivery {
            at,
            payload: Payload::Data(vec![0; bytes]),
        }
    }

    #[test]
    fn deliveries_wait_for_their_time() {
        let pipe = Pipe::new(10_000);
        let start = Instant::now();
        pipe.push(data(start + Duration::from_millis(30), 10));
        let delivery = pipe.next_due().unwrap();
        assert!(Instant::now() >= delivery.at);
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn full_window_blocks_the_sender_until_the_receiver_takes_bytes() {
        let pipe = Arc::new(Pipe::new(1_000));
        pipe.push(data(Instant::now(), 800));
        let receiver = Arc::clone(&pipe);
        let took_at = thread::spawn(move || {
            thread::sleep(Duration::from_millis(50));
            let delivery = receiver.next_due().unwrap();
            let took_at = Instant::now();
            receiver.delivered(delivery.payload.len());
            took_at
        });
        assert!(pipe.wait_for_room(200), "200 bytes fit next to 800");
        assert!(pipe.wait_for_room(500));
        let room_at = Instant::now();
        assert!(
            room_at >= took_at.join().unwrap(),
            "room only after the receiver took its bytes"
        );
    }

    #[test]
    fn abort_wakes_every_waiter() {
        let pipe = Arc::new(Pipe::new(100));
        pipe.push(data(Instant::now() + Duration::from_secs(60), 100));
        let waiters: Vec<_> = (0..3)
            .map(|kind| {
                let pipe = Arc::clone(&pipe);
                thread::spawn(move || match kind {
                    0 => pipe.wait_for_room(50),
                    1 => pipe.sleep_until(Instant::now() + Duration::from_secs(60)),
                    _ => pipe.next_due().is_some(),
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20));
        pipe.abort();
        for waiter in waiters {
            assert!(!waiter.join().unwrap());
        }
    }
}

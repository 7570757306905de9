//! The heartbeat: `HB <seq>` every interval, numbered without gaps.
//!
//! The host computes the guest's downtime from arrival times, so the sequence
//! only has to be contiguous: after an oversleep (a paused VM) the next number
//! goes out at once and the schedule continues from there, with no burst of
//! catch-up lines that would blur the gap.

use std::convert::Infallible;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::pacing::{sleep_until, Pacer};
use crate::protocol::{EventWriter, GuestEvent};

pub fn run<W: Write>(out: &mut EventWriter<W>, interval: Duration) -> io::Result<Infallible> {
    let mut pacer = Pacer::new(interval, Instant::now(), 1);
    let mut seq: u64 = 0;
    loop {
        while pacer.take_due(Instant::now()) == 0 {
            sleep_until(pacer.next_due());
        }
        out.emit(&GuestEvent::Heartbeat { seq })?;
        seq += 1;
    }
}

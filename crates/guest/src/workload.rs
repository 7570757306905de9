//! The read/write/verify loop shared by the memory and disk workloads.
//!
//! One thread does everything — operations, the verification sweep and the
//! reports — so a check never races with a write, and the sweep is spread over
//! its period instead of stalling the workload every few seconds.

use std::convert::Infallible;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::access::{AccessPicker, Op, OpMix, Skew};
use crate::pacing::{sleep_until, sweep_target, Pacer};
use crate::protocol::{EventWriter, GuestEvent};
use crate::record::Corruption;
use crate::store::RecordStore;

/// How often `OPS` lines are written.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Lag the rate limiter makes up by bursting; a longer one (a paused VM) is forgiven.
const CATCH_UP: Duration = Duration::from_millis(50);
/// Operations between clock checks when running unthrottled.
const UNPACED_BATCH: u64 = 64;

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Shown in `READY` and `INFO` lines: "memload" or "diskload".
    pub name: &'static str,
    /// Share of the records that forms the hot set, in (0, 1].
    pub hot_fraction: f64,
    /// Share of accesses (percent) that go to the hot set.
    pub hot_access_pct: u8,
    pub skew: Skew,
    /// Writes per second; 0 runs as fast as possible.
    pub write_rate: u64,
    /// Share of operations (percent) that are reads.
    pub read_pct: u8,
    /// Share of each record's payload that is random, in [0, 1]; the rest is zeros.
    pub random_fraction: f64,
    /// Period of the full verification sweep; `None` disables it.
    pub verify_every: Option<Duration>,
    pub seed: u64,
}

#[derive(Debug)]
pub struct Workload<S: RecordStore> {
    store: S,
    config: WorkloadConfig,
    /// The version every record must hold. Kept apart from the records, so a
    /// record that silently reverted to an older version is caught.
    versions: Vec<u64>,
    picker: AccessPicker,
    mix: OpMix,
    ops_in_window: u64,
    corruptions_seen: u64,
    failures: Vec<(u64, Corruption)>,
}

/// Progress of the current verification pass.
#[derive(Debug)]
struct Sweep {
    period: Duration,
    started: Instant,
    cursor: u64,
    corruptions_before: u64,
}

impl<S: RecordStore> Workload<S> {
    pub fn new(store: S, config: WorkloadConfig) -> Self {
        let records = store.record_count();
        Workload {
            picker: AccessPicker::new(
                records,
                config.hot_fraction,
                config.hot_access_pct,
                config.skew,
                config.seed,
            ),
            mix: OpMix::new(config.read_pct),
            store,
            config,
            versions: vec![
                0;
                usize::try_from(records)
                    .expect("one version per record must fit in memory")
            ],
            ops_in_window: 0,
            corruptions_seen: 0,
            failures: Vec::new(),
        }
    }

    /// One line describing the workload for the host's log.
    pub fn describe(&self) -> String {
        let config = &self.config;
        let rate = match config.write_rate {
            0 => "unthrottled".to_owned(),
            rate => format!("{rate} writes/s"),
        };
        let verify = match config.verify_every {
            Some(period) => format!("every {:.3} s", period.as_secs_f64()),
            None => "off".to_owned(),
        };
        format!(
            "{}: {} {}s of {} bytes, hot {} ({}, {}% of accesses), {rate}, {}% reads, \
             random share {}, verify {verify}, seed {}",
            config.name,
            self.store.record_count(),
            self.store.record_kind(),
            self.store.record_size(),
            self.picker.hot(),
            config.skew,
            config.hot_access_pct,
            config.read_pct,
            config.random_fraction,
            config.seed,
        )
    }

    /// Writes version 0 of every record, touching all of memory or the whole range.
    pub fn fill(&mut self) -> io::Result<()> {
        self.store.write(0, &self.versions)
    }

    /// Performs `count` reads and writes as the mix and the access pattern dictate.
    pub fn do_ops<W: Write>(&mut self, count: u64, out: &mut EventWriter<W>) -> io::Result<()> {
        for _ in 0..count {
            let index = self.picker.next_index();
            // A write checks first, too: hot records are rewritten long before
            // a sweep reaches them, and overwriting would hide a stale copy.
            let op = self.mix.next_op();
            let context = match op {
                Op::Read => "read",
                Op::Write => "write",
            };
            self.check_and_repair(index, 1, context, out)?;
            if op == Op::Write {
                let slot = &mut self.versions[slot(index)];
                *slot += 1;
                self.store.write(index, std::slice::from_ref(slot))?;
            }
            self.ops_in_window += 1;
        }
        Ok(())
    }

    /// Checks `count` records from `first`; reports each failure and rewrites
    /// the record, so one corruption is reported once, not on every later check.
    fn check_and_repair<W: Write>(
        &mut self,
        first: u64,
        count: u64,
        context: &str,
        out: &mut EventWriter<W>,
    ) -> io::Result<()> {
        let versions = &self.versions[slot(first)..slot(first + count)];
        self.failures.clear();
        self.store.check(first, versions, &mut self.failures)?;
        for (index, corruption) in std::mem::take(&mut self.failures) {
            self.corruptions_seen += 1;
            out.emit(&GuestEvent::Corrupt {
                detail: format!(
                    "{} {index} ({context}): {corruption}",
                    self.store.record_kind()
                ),
            })?;
            let expected = self.versions[slot(index)];
            self.store.write(index, &[expected])?;
        }
        Ok(())
    }

    /// Verifies as many records as the sweep's pace asks for by `now`, and
    /// closes the pass when all are done.
    fn advance_sweep<W: Write>(
        &mut self,
        sweep: &mut Sweep,
        now: Instant,
        out: &mut EventWriter<W>,
    ) -> io::Result<()> {
        let total = self.store.record_count();
        let target = sweep_target(now - sweep.started, sweep.period, self.versions.len()) as u64;
        if target > sweep.cursor {
            self.check_and_repair(sweep.cursor, target - sweep.cursor, "sweep", out)?;
            sweep.cursor = target;
        }
        if sweep.cursor == total {
            let corrupt = self.corruptions_seen - sweep.corruptions_before;
            if corrupt == 0 {
                out.emit(&GuestEvent::VerifyOk {
                    items_checked: total,
                })?;
            } else {
                out.info(format!(
                    "{}: verify pass over {total} {}s saw {corrupt} corrupt",
                    self.config.name,
                    self.store.record_kind()
                ))?;
            }
            *sweep = Sweep::start(sweep.period, now, self.corruptions_seen);
        }
        Ok(())
    }

    /// Emits `OPS` for the window since `window_start` and starts a new one.
    fn report<W: Write>(
        &mut self,
        window_start: Instant,
        now: Instant,
        out: &mut EventWriter<W>,
    ) -> io::Result<()> {
        let elapsed_us = u64::try_from((now - window_start).as_micros()).unwrap_or(u64::MAX);
        out.emit(&GuestEvent::Ops {
            ops: self.ops_in_window,
            elapsed_us,
        })?;
        self.ops_in_window = 0;
        Ok(())
    }

    /// Initial fill, `READY`, then operations, sweeps and reports until an I/O error.
    pub fn run<W: Write>(mut self, out: &mut EventWriter<W>) -> io::Result<Infallible> {
        out.info(self.describe())?;
        self.fill()?;
        out.emit(&GuestEvent::Ready {
            name: self.config.name.to_owned(),
        })?;

        let start = Instant::now();
        let write_rate = self.config.write_rate;
        let mut pacer = (write_rate > 0).then(|| {
            let op_rate = self.mix.op_rate_for(write_rate as f64);
            Pacer::per_second(op_rate, start, CATCH_UP)
        });
        let mut report = Pacer::new(REPORT_INTERVAL, start + REPORT_INTERVAL, 1);
        let mut window_start = start;
        let mut sweep = self
            .config
            .verify_every
            .map(|period| Sweep::start(period, start, self.corruptions_seen));
        loop {
            let due = match &mut pacer {
                Some(pacer) => pacer.take_due(Instant::now()),
                None => UNPACED_BATCH,
            };
            self.do_ops(due, out)?;
            let now = Instant::now();
            if let Some(sweep) = &mut sweep {
                self.advance_sweep(sweep, now, out)?;
            }
            if report.take_due(now) > 0 {
                self.report(window_start, now, out)?;
                window_start = now;
            }
            if let Some(pacer) = &pacer {
                sleep_until(pacer.next_due().min(report.next_due()));
            }
        }
    }
}

impl Sweep {
    fn start(period: Duration, now: Instant, corruptions_before: u64) -> Self {
        Sweep {
            period,
            started: now,
            cursor: 0,
            corruptions_before,
        }
    }
}

/// Where record `index` sits in `versions`, which holds one entry per record.
fn slot(index: u64) -> usize {
    usize::try_from(index).expect("record indices are below versions.len(), a usize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aligned::PAGE_SIZE;
    use crate::protocol::parse_line;
    use crate::store::MemStore;

    fn config(read_pct: u8) -> WorkloadConfig {
        WorkloadConfig {
            name: "memload",
            hot_fraction: 0.25,
            hot_access_pct: 90,
            skew: Skew::Zipf(0.99),
            write_rate: 0,
            read_pct,
            random_fraction: 0.5,
            verify_every: Some(Duration::from_secs(1)),
            seed: 1,
        }
    }

    fn events(out: &EventWriter<Vec<u8>>) -> Vec<GuestEvent> {
        String::from_utf8_lossy(out.sink())
            .lines()
            .map(|line| parse_line(line).expect("a protocol line"))
            .collect()
    }

    fn filled_workload(pages: u64, read_pct: u8) -> Workload<MemStore> {
        let config = config(read_pct);
        let mut workload = Workload::new(MemStore::new(pages, 1, 0.5), config);
        workload.fill().unwrap();
        workload
    }

    #[test]
    fn writes_bump_versions_and_stay_verifiable() {
        let mut workload = filled_workload(64, 0);
        let mut out = EventWriter::new(Vec::new());
        workload.do_ops(1000, &mut out).unwrap();
        assert_eq!(workload.versions.iter().sum::<u64>(), 1000);
        let hot_writes: u64 = workload.versions[..16].iter().sum();
        assert!(hot_writes > 850, "hot set got {hot_writes} of 1000 writes");

        let t0 = Instant::now();
        let mut sweep = Sweep::start(Duration::from_secs(1), t0, 0);
        workload
            .advance_sweep(&mut sweep, t0 + Duration::from_secs(1), &mut out)
            .unwrap();
        assert_eq!(events(&out), [GuestEvent::VerifyOk { items_checked: 64 }]);
    }

    #[test]
    fn reads_do_not_change_versions() {
        let mut workload = filled_workload(16, 100);
        let mut out = EventWriter::new(Vec::new());
        workload.do_ops(500, &mut out).unwrap();
        assert!(workload.versions.iter().all(|&v| v == 0));
        assert!(out.sink().is_empty());
    }

    #[test]
    fn a_stale_page_is_reported_once_by_the_sweep_and_repaired() {
        let mut workload = filled_workload(8, 0);
        let mut out = EventWriter::new(Vec::new());
        // Play a migration that lost the last write to page 6.
        let stale = workload.store.bytes_mut()[6 * PAGE_SIZE..7 * PAGE_SIZE].to_vec();
        workload.versions[6] += 1;
        workload.store.write(6, &[1]).unwrap();
        workload.store.bytes_mut()[6 * PAGE_SIZE..7 * PAGE_SIZE].copy_from_slice(&stale);

        let t0 = Instant::now();
        let mut sweep = Sweep::start(Duration::from_secs(1), t0, 0);
        workload
            .advance_sweep(&mut sweep, t0 + Duration::from_millis(500), &mut out)
            .unwrap();
        assert_eq!(sweep.cursor, 4, "half the pass is done half-way through");
        assert!(out.sink().is_empty());
        workload
            .advance_sweep(&mut sweep, t0 + Duration::from_secs(1), &mut out)
            .unwrap();
        let second_pass_end = t0 + Duration::from_secs(2);
        workload
            .advance_sweep(&mut sweep, second_pass_end, &mut out)
            .unwrap();
        assert_eq!(
            events(&out),
            [
                GuestEvent::Corrupt {
                    detail: "page 6 (sweep): version 0, expected 1 (stale or lost write)".into()
                },
                GuestEvent::Info {
                    text: "memload: verify pass over 8 pages saw 1 corrupt".into()
                },
                GuestEvent::VerifyOk { items_checked: 8 },
            ]
        );
    }

    #[test]
    fn a_flipped_byte_is_caught_by_the_next_access() {
        let mut workload = filled_workload(1, 50);
        let mut out = EventWriter::new(Vec::new());
        workload.store.bytes_mut()[2048] ^= 0x10;
        workload.do_ops(1, &mut out).unwrap();
        assert_eq!(
            events(&out),
            [GuestEvent::Corrupt {
                detail: "page 0 (write): payload checksum mismatch".into()
            }]
        );
    }

    #[test]
    fn reports_count_operations_per_window() {
        let mut workload = filled_workload(4, 50);
        let mut out = EventWriter::new(Vec::new());
        workload.do_ops(37, &mut out).unwrap();
        let t0 = Instant::now();
        workload
            .report(t0, t0 + Duration::from_micros(100_250), &mut out)
            .unwrap();
        workload
            .report(t0, t0 + Duration::from_millis(100), &mut out)
            .unwrap();
        assert_eq!(
            events(&out),
            [
                GuestEvent::Ops {
                    ops: 37,
                    elapsed_us: 100_250
                },
                GuestEvent::Ops {
                    ops: 0,
                    elapsed_us: 100_000
                },
            ]
        );
    }

    #[test]
    fn description_names_the_shape() {
        let workload = filled_workload(40, 50);
        let text = workload.describe();
        assert!(
            text.starts_with(
                "memload: 40 pages of 4096 bytes, hot 10 (zipf:0.99, 90% of accesses)"
            ),
            "{text}"
        );
    }
}

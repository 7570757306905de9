//! When pre-copy stops: after each scan, predict how long the final transfer
//! would keep the VM paused, and switch once that fits the downtime target,
//! or once a bound is hit.

use std::time::Duration;

use mllm_control::SwitchReason;

use crate::settings::{BoundAction, PrecopySettings};

/// What is known right after a scan.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AfterScan {
    /// Pre-copy rounds sent so far (round 1 is the full pass).
    pub rounds_done: u32,
    pub elapsed: Duration,
    pub dirty_pages: u64,
    /// Queued batches the destination has not acknowledged: they must cross
    /// before the final pages do.
    pub unacked_bytes: u64,
    /// Expected link bytes per dirty page, compression and framing included.
    pub bytes_per_page: f64,
    /// Measured link rate, bytes per second.
    pub rate: Option<f64>,
}

impl AfterScan {
    /// Predicted transfer time of everything left if the VM stopped now
    /// (what QEMU's downtime limit also bounds: bytes over bandwidth).
    pub fn predicted_final(&self) -> Option<Duration> {
        let rate = self.rate.filter(|rate| *rate > 0.0)?;
        let bytes = self.unacked_bytes as f64 + self.dirty_pages as f64 * self.bytes_per_page;
        Some(Duration::from_secs_f64(bytes / rate))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Continue,
    Switch(SwitchReason),
    Abort(String),
}

pub(crate) fn decide(settings: &PrecopySettings, state: &AfterScan) -> Decision {
    let predicted = state.predicted_final();
    let predicted_ms = predicted.map(|p| p.as_secs_f64() * 1000.0);
    if let Some(predicted) = predicted {
        if predicted <= settings.downtime_target {
            return Decision::Switch(SwitchReason::Converged {
                predicted_ms: predicted.as_secs_f64() * 1000.0,
            });
        }
    }
    let bound = if state.rounds_done >= settings.max_rounds {
        Some(SwitchReason::RoundLimit { predicted_ms })
    } else if settings
        .max_duration
        .is_some_and(|limit| state.elapsed >= limit)
    {
        Some(SwitchReason::TimeLimit { predicted_ms })
    } else {
        None
    };
    match (bound, settings.on_bound) {
        (None, _) => Decision::Continue,
        (Some(reason), BoundAction::Switch) => Decision::Switch(reason),
        (Some(reason), BoundAction::Abort) => Decision::Abort(format!(
            "pre-copy did not converge: {} with the final transfer predicted at {} \
             against a downtime target of {:?} (the guest writes memory faster than the link carries it)",
            match reason {
                SwitchReason::TimeLimit { .. } => format!("time bound hit after {:?}", state.elapsed),
                _ => format!("round bound hit after {} rounds", state.rounds_done),
            },
            predicted_ms.map_or("unknown".into(), |ms| format!("{ms:.0} ms")),
            settings.downtime_target
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rounds_done: u32, dirty_pages: u64) -> AfterScan {
        AfterScan {
            rounds_done,
            elapsed: Duration::from_secs(10),
            dirty_pages,
            unacked_bytes: 1_000_000,
            bytes_per_page: 4096.0,
            // 10 MB/s: 3 MB fit in 300 ms.
            rate: Some(10e6),
        }
    }

    #[test]
    fn switches_once_the_final_transfer_fits_the_target() {
        let settings = PrecopySettings::default();
        // 1 MB in flight + 400 pages (1.6 MB) = 260 ms.
        match decide(&settings, &state(3, 400)) {
            Decision::Switch(SwitchReason::Converged { predicted_ms }) => {
                assert!((predicted_ms - 263.84).abs() < 0.01, "{predicted_ms}")
            }
            other => panic!("{other:?}"),
        }
        // 1 MB + 1000 pages (4.1 MB) = 510 ms: keep copying.
        assert_eq!(decide(&settings, &state(3, 1000)), Decision::Continue);
    }

    #[test]
    fn unknown_rate_never_converges() {
        let settings = PrecopySettings::default();
        let unknown = AfterScan {
            rate: None,
            ..state(1, 0)
        };
        assert_eq!(decide(&settings, &unknown), Decision::Continue);
    }

    #[test]
    fn bounds_switch_or_abort_by_setting() {
        let mut settings = PrecopySettings {
            max_rounds: 5,
            ..PrecopySettings::default()
        };
        assert!(matches!(
            decide(&settings, &state(5, 100_000)),
            Decision::Switch(SwitchReason::RoundLimit { .. })
        ));
        settings.on_bound = BoundAction::Abort;
        match decide(&settings, &state(5, 100_000)) {
            Decision::Abort(reason) => {
                assert!(reason.contains("did not converge"), "{reason}");
                assert!(reason.contains("5 rounds"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        settings.max_rounds = 100;
        settings.max_duration = Some(Duration::from_secs(5));
        match decide(&settings, &state(5, 100_000)) {
            Decision::Abort(reason) => assert!(reason.contains("time bound"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}

//! QEMU at its best: what an expert sets for each of QEMU's methods on the
//! lab's link. Names are QEMU 10's QAPI names (`qapi/migration.json`,
//! `qapi/block-core.json`), checked against `query-qmp-schema` of QEMU 10.0.2.
//! `result.json` records these settings as QEMU reported them back.

use std::time::Duration;

use anyhow::{Context, Result};
use mllm_link::LinkConfig;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::method::Method;

/// One run's QEMU migration settings, both sides, and the disk copy's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QemuSettings {
    pub source: SideSettings,
    pub destination: SideSettings,
    /// The disk copy, for VMs with a disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
}

/// What one QEMU is set to before the migration starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SideSettings {
    /// Migration capabilities turned on (`migrate-set-capabilities`).
    pub capabilities: Vec<String>,
    /// Migration parameters (`migrate-set-parameters`), by QAPI name.
    pub parameters: Map<String, Value>,
}

/// `blockdev-mirror` to the destination's NBD export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorSettings {
    /// Bytes one dirty bit covers (`granularity`).
    pub granularity: u64,
    /// `copy-mode` while the bulk copy runs.
    pub copy_mode: String,
    /// `copy-mode` from `BLOCK_JOB_READY` on (`block-job-change`).
    pub copy_mode_when_ready: String,
}

/// QEMU's default for a raw image, set explicitly so results record it.
/// Matching the guest's 4 KiB writes looks better on paper (a 64 KiB chunk
/// is copied again for every 4 KiB write) but stalled here: with 4 KiB the
/// mirror crossed a 100 Mbit/s, 50 ms link at about 0.3 MB/s and was not
/// ready after 180 s (lab test, one run): its copies are bound by the
/// link's round trip per chunk, not by its rate.
pub const MIRROR_GRANULARITY: u64 = 64 * 1024;

/// Two channels for two cores: each multifd channel is a thread that
/// compresses and sends its pages, and on this machine two cores also run
/// both guests, the link emulator and the agents, so more channels would
/// only take turns; every channel crosses the same emulated bottleneck, so
/// more connections add no bandwidth either.
const MULTIFD_CHANNELS: u64 = 2;

/// zstd level 1, as mllm's own page batches: at the lab's link rates one
/// core compresses level 1 many times faster than the link drains it, and a
/// higher level would take CPU from the guests under TCG.
const MULTIFD_ZSTD_LEVEL: u64 = 1;

impl QemuSettings {
    /// The expert settings for one of QEMU's methods; `None` for mllm's,
    /// whose agents set QEMU up for device state only.
    pub fn for_method(
        method: Method,
        link: &LinkConfig,
        downtime_target: Duration,
        with_disk: bool,
    ) -> Result<Option<QemuSettings>> {
        let method_capabilities: &[&str] = match method {
            Method::MllmPrecopy
            | Method::MllmPostcopy
            | Method::Mllm
            | Method::MllmDiskPostcopy
            | Method::MllmDiskPrecopyThenPostcopy
            | Method::MllmPrecopyNodedup
            | Method::MllmNodedup
            | Method::MllmPlaintext => return Ok(None),
            Method::QemuPrecopy | Method::QemuPrecopyWriteBlocking => &[],
            Method::QemuPostcopy => &["postcopy-ram"],
            // The preempt channel is a second connection from the source to
            // the destination's migration address; the destination must
            // have the capability too, or it never accepts that channel.
            Method::QemuPostcopyPreempt => &["postcopy-ram", "postcopy-preempt"],
            Method::QemuXbzrle => &["xbzrle"],
            Method::QemuMultifdZstd => &["multifd"],
        };
        // The lab waits for QEMU's MIGRATION events.
        let mut capabilities = vec!["events".to_owned()];
        capabilities.extend(method_capabilities.iter().map(|c| (*c).to_owned()));
        // Both ends of a multifd stream must agree on channels and compression.
        let mut both = Map::new();
        if method == Method::QemuMultifdZstd {
            both.insert("multifd-channels".into(), json!(MULTIFD_CHANNELS));
            both.insert("multifd-compression".into(), json!("zstd"));
            both.insert("multifd-zstd-level".into(), json!(MULTIFD_ZSTD_LEVEL));
        }
        let mut source = SideSettings {
            capabilities: capabilities.clone(),
            parameters: both.clone(),
        };
        // The same target as mllm's switch rule.
        source.parameters.insert(
            "downtime-limit".into(),
            json!(u64::try_from(downtime_target.as_millis())
                .context("downtime target beyond u64 milliseconds")?),
        );
        // QEMU estimates the switch's duration from the rate its socket
        // accepted, which the socket buffers and the link's queue inflate;
        // the link's real rate (bytes/s) makes the estimate honest.
        source.parameters.insert(
            "avail-switchover-bandwidth".into(),
            json!(link.bandwidth_bits_per_s / 8),
        );
        if with_disk {
            // The mirror is completed while the source is paused, before
            // QEMU sends the device state.
            source.capabilities.push("pause-before-switchover".into());
        }
        Ok(Some(QemuSettings {
            source,
            destination: SideSettings {
                capabilities,
                parameters: both,
            },
            // The bulk copy runs in the background, so guest writes do not
            // wait a round trip while most of the disk is still to go; once
            // the mirror is ready, write-blocking copies each guest write
            // to the destination before completing it, so the copy cannot
            // fall behind again however fast the guest writes, and nothing
            // is left to flush while the source is paused at the switch.
            mirror: with_disk.then(|| match method {
                // The alternative an operator has when background copies do
                // not converge: every guest write crosses before it
                // completes, and 4 KiB chunks copy only what was written.
                Method::QemuPrecopyWriteBlocking => MirrorSettings {
                    granularity: 4096,
                    copy_mode: "write-blocking".into(),
                    copy_mode_when_ready: "write-blocking".into(),
                },
                _ => MirrorSettings {
                    granularity: MIRROR_GRANULARITY,
                    copy_mode: "background".into(),
                    copy_mode_when_ready: "write-blocking".into(),
                },
            }),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> LinkConfig {
        LinkConfig {
            bandwidth_bits_per_s: 100_000_000,
            ..LinkConfig::default()
        }
    }

    fn settings(method: Method, with_disk: bool) -> QemuSettings {
        QemuSettings::for_method(method, &link(), Duration::from_millis(300), with_disk)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn every_qemu_method_switches_over_on_the_link_rate_and_the_target() {
        for method in [
            Method::QemuPrecopy,
            Method::QemuPostcopy,
            Method::QemuPostcopyPreempt,
            Method::QemuXbzrle,
            Method::QemuMultifdZstd,
        ] {
            let s = settings(method, false);
            assert_eq!(s.source.parameters["downtime-limit"], json!(300));
            assert_eq!(
                s.source.parameters["avail-switchover-bandwidth"],
                json!(12_500_000)
            );
            assert!(!s.destination.parameters.contains_key("downtime-limit"));
            assert_eq!(s.source.capabilities, s.destination.capabilities);
            assert!(s.mirror.is_none());
        }
    }

    #[test]
    fn multifd_uses_zstd_on_two_channels_on_both_sides() {
        let s = settings(Method::QemuMultifdZstd, false);
        for side in [&s.source, &s.destination] {
            assert!(side.capabilities.contains(&"multifd".to_owned()));
            assert_eq!(side.parameters["multifd-channels"], json!(2));
            assert_eq!(side.parameters["multifd-compression"], json!("zstd"));
            assert_eq!(side.parameters["multifd-zstd-level"], json!(1));
        }
    }

    #[test]
    fn postcopy_preempt_is_on_at_both_ends() {
        let s = settings(Method::QemuPostcopyPreempt, false);
        for side in [&s.source, &s.destination] {
            assert!(side.capabilities.contains(&"postcopy-ram".to_owned()));
            assert!(side.capabilities.contains(&"postcopy-preempt".to_owned()));
        }
    }

    #[test]
    fn a_disk_is_mirrored_at_4_kib_and_write_blocking_once_ready() {
        let s = settings(Method::QemuPrecopy, true);
        let mirror = s.mirror.unwrap();
        assert_eq!(mirror.granularity, 64 * 1024);
        assert_eq!(mirror.copy_mode, "background");
        assert_eq!(mirror.copy_mode_when_ready, "write-blocking");
        assert!(s
            .source
            .capabilities
            .contains(&"pause-before-switchover".to_owned()));
        assert!(!s
            .destination
            .capabilities
            .contains(&"pause-before-switchover".to_owned()));
    }

    #[test]
    fn mllm_methods_leave_qemu_to_the_agents() {
        let none =
            QemuSettings::for_method(Method::Mllm, &link(), Duration::from_millis(300), false)
                .unwrap();
        assert!(none.is_none());
    }
}

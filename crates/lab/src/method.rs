//! The migration methods the lab can run and compare.

use mllm_agent::{DedupSettings, DiskMove, EstimatorKind, SourceStrategy};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// QEMU's pre-copy. Every QEMU method runs with the settings an expert
    /// would choose for the link (`crate::qemu_settings`).
    QemuPrecopy,
    /// QEMU's pre-copy, switched to post-copy after the first full pass.
    QemuPostcopy,
    /// As `QemuPostcopy`, with a separate channel so faulted pages overtake the background stream.
    QemuPostcopyPreempt,
    /// QEMU's pre-copy with XBZRLE delta compression of re-sent pages.
    QemuXbzrle,
    /// QEMU's multifd pre-copy with zstd compression.
    QemuMultifdZstd,
    /// QEMU's pre-copy, its disk mirror in write-blocking mode from the
    /// start at a 4 KiB granularity: it converges however fast the guest
    /// writes, each guest write waiting for the link's round trip.
    QemuPrecopyWriteBlocking,
    /// mllm's agents move guest RAM by pre-copy (the classic policy, the
    /// base later policies are measured against); QEMU moves device state.
    MllmPrecopy,
    /// mllm's agents: one pre-copy round, then the guest runs on the
    /// destination while the pages written since are pushed, those it
    /// touches first fetched on demand.
    MllmPostcopy,
    /// mllm's agents with the MLLM planner: pre-copy rounds that leave out
    /// the predicted write workingset, which moves at the switch and by
    /// post-copy after it, hottest first. The disk's read workingset goes
    /// first, its other blocks by pre-copy (measured better, docs/disk.md).
    Mllm,
    /// `Mllm` with the disk's other blocks moved after the switch, pushed
    /// and fetched on demand: the published design, kept to compare.
    MllmDiskPostcopy,
    /// `Mllm` with every used block in the first pass and the blocks the
    /// guest writes after it moved after the switch, not re-sent in rounds.
    MllmDiskPrecopyThenPostcopy,
    /// `MllmPrecopy` without de-duplication: every page and block travels
    /// as content, to measure what the hot-data cache saves.
    MllmPrecopyNodedup,
    /// `Mllm` without de-duplication.
    MllmNodedup,
    /// `Mllm` with the agents' link in plaintext, to measure what TLS
    /// (which every other mllm method uses, as in production) costs.
    MllmPlaintext,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::QemuPrecopy => "qemu-precopy",
            Method::QemuPostcopy => "qemu-postcopy",
            Method::QemuPostcopyPreempt => "qemu-postcopy-preempt",
            Method::QemuXbzrle => "qemu-xbzrle",
            Method::QemuMultifdZstd => "qemu-multifd-zstd",
            Method::QemuPrecopyWriteBlocking => "qemu-precopy-write-blocking",
            Method::MllmPrecopy => "mllm-precopy",
            Method::MllmPostcopy => "mllm-postcopy",
            Method::Mllm => "mllm",
            Method::MllmDiskPostcopy => "mllm-disk-postcopy",
            Method::MllmDiskPrecopyThenPostcopy => "mllm-disk-precopy-then-postcopy",
            Method::MllmPrecopyNodedup => "mllm-precopy-nodedup",
            Method::MllmNodedup => "mllm-nodedup",
            Method::MllmPlaintext => "mllm-plaintext",
        }
    }

    /// mllm's agents own the memory data plane (RAM in a shared file, the hook preloaded).
    pub fn is_mllm(self) -> bool {
        self.mllm_strategy().is_some()
    }

    /// How mllm's agents migrate, for mllm's methods.
    pub fn mllm_strategy(self) -> Option<SourceStrategy> {
        match self {
            Method::MllmPrecopy | Method::MllmPrecopyNodedup => Some(SourceStrategy::Precopy),
            Method::MllmPostcopy => Some(SourceStrategy::Postcopy),
            Method::Mllm
            | Method::MllmDiskPostcopy
            | Method::MllmDiskPrecopyThenPostcopy
            | Method::MllmNodedup
            | Method::MllmPlaintext => Some(SourceStrategy::Mllm {
                estimator: EstimatorKind::Improved,
            }),
            _ => None,
        }
    }

    /// mllm's hot-data cache: on, at its default size, unless the method
    /// is one without it.
    pub fn dedup(self) -> DedupSettings {
        match self {
            Method::MllmPrecopyNodedup | Method::MllmNodedup => DedupSettings::OFF,
            _ => DedupSettings::default(),
        }
    }

    /// mllm's agents talk over mutual TLS: all of mllm's methods but
    /// `MllmPlaintext`.
    pub fn agents_use_tls(self) -> bool {
        self.is_mllm() && self != Method::MllmPlaintext
    }

    /// How the MLLM strategy moves the disk besides its read workingset.
    pub fn mllm_disk(self) -> DiskMove {
        match self {
            Method::MllmDiskPostcopy => DiskMove::AfterSwitch,
            Method::MllmDiskPrecopyThenPostcopy => DiskMove::PrecopyThenAfterSwitch,
            _ => DiskMove::Precopy,
        }
    }

    pub fn uses_postcopy(self) -> bool {
        matches!(self, Method::QemuPostcopy | Method::QemuPostcopyPreempt)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::Method;

    #[test]
    fn mllm_plaintext_is_the_mllm_policy_without_tls() {
        let parsed: Method = serde_json::from_str("\"mllm-plaintext\"").unwrap();
        assert_eq!(parsed, Method::MllmPlaintext);
        assert_eq!(parsed.mllm_strategy(), Method::Mllm.mllm_strategy());
        assert!(!parsed.agents_use_tls());
        assert!(Method::Mllm.agents_use_tls() && Method::MllmPrecopy.agents_use_tls());
        assert!(!Method::QemuPrecopy.agents_use_tls());
    }
}

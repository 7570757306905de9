//! A VM described by its sizes and synthetic workloads, as in fleet files.

use std::sync::Arc;

use mllm_core::convert::saturating_u64;
use mllm_core::synth::{mix, DiskWorkloadSpec, WorkloadSpec};
use mllm_core::trace::MemoryTraceHeader;
use mllm_core::vm::{DiskLayout, VmLayout};
use serde::{Deserialize, Serialize};

use crate::source::{IntervalSource, SyntheticSource};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub memory_mib: u64,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// The guest's memory write pattern.
    pub workload: WorkloadSpec,
    #[serde(default)]
    pub disk: Option<DiskSpec>,
    /// Device state and ROMs sent during the pause (the lab measured 200–330 KB).
    #[serde(default = "default_device_state_kib")]
    pub device_state_kib: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size_gib: f64,
    #[serde(default = "default_block_kib")]
    pub block_kib: u32,
    /// Share of the disk stored in the image.
    pub allocated: f64,
    /// Share of the disk holding live file-system data (at most `allocated`).
    pub used: f64,
    pub reads: WorkloadSpec,
    pub writes: WorkloadSpec,
}

fn default_page_size() -> u32 {
    4096
}

fn default_device_state_kib() -> u64 {
    330
}

fn default_block_kib() -> u32 {
    64
}

impl VmSpec {
    pub fn parse(text: &str) -> anyhow::Result<VmSpec> {
        Ok(toml::from_str(text)?)
    }

    pub fn memory_pages(&self) -> u32 {
        u32::try_from(self.memory_mib * 1024 * 1024 / u64::from(self.page_size))
            .expect("guest RAM beyond 2^32 pages")
    }

    /// Bytes a full copy would move: RAM plus allocated disk. Orders a fleet's
    /// queue (smallest first).
    pub fn data_bytes(&self) -> u64 {
        let disk = self
            .disk
            .as_ref()
            .map_or(0.0, |d| d.size_gib * d.allocated * (1u64 << 30) as f64);
        self.memory_mib * 1024 * 1024 + saturating_u64(disk)
    }

    /// The VM's layout and guest activity; `seed` picks the disk layout and
    /// the workloads' random streams.
    pub fn build(&self, interval_s: f64, seed: u64) -> (Arc<VmLayout>, Arc<dyn IntervalSource>) {
        let header = MemoryTraceHeader {
            page_size: self.page_size,
            page_count: self.memory_pages(),
        };
        let disk = self.disk.as_ref().map(|spec| {
            let block_size = spec.block_kib * 1024;
            let blocks = saturating_u64(
                (spec.size_gib * (1u64 << 30) as f64 / f64::from(block_size)).round(),
            );
            let blocks = u32::try_from(blocks).expect("disk beyond 2^32 blocks");
            let layout =
                DiskLayout::synthetic(blocks, block_size, spec.allocated, spec.used, mix(seed, 7));
            let workload = DiskWorkloadSpec {
                reads: spec.reads.clone(),
                writes: spec.writes.clone(),
            };
            (layout, workload)
        });
        let source = SyntheticSource::new(
            self.workload.clone(),
            header,
            disk.as_ref().map(|(layout, workload)| (workload, layout)),
            interval_s,
            seed,
        );
        let layout = VmLayout::uncompressed(
            self.page_size,
            header.page_count,
            disk.map(|(layout, _)| layout),
            self.device_state_kib * 1024,
        );
        (Arc::new(layout), Arc::new(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_spec_parses_from_toml_and_builds() {
        let spec: VmSpec = toml::from_str(
            r#"
            memory_mib = 64
            workload = { class = "zipf", exponent = 1.0, rate = 0.01 }
            [disk]
            size_gib = 0.5
            allocated = 0.6
            used = 0.4
            reads = { class = "uniform", rate = 0.01 }
            writes = { class = "uniform", rate = 0.001 }
            "#,
        )
        .unwrap();
        assert_eq!(spec.memory_pages(), 16384);
        let (layout, source) = spec.build(1.0, 3);
        let disk = layout.disk.as_ref().unwrap();
        assert_eq!(disk.blocks(), 8192);
        assert_eq!(layout.device_state_bytes, 330 * 1024);
        let interval = source.interval(0);
        assert!(!interval.memory_writes.is_empty() && !interval.disk_reads.is_empty());
        assert!(interval.disk_writes.iter().all(|&b| disk.used.contains(b)));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = toml::from_str::<VmSpec>(
            "memory_mib = 64\nworkload = { class = \"uniform\", rate = 0.1 }\nmemory_gib = 1\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory_gib"), "{err}");
    }
}

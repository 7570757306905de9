//! Scenario files: which VM, which workload, which link, which methods.
//!
//! Every table rejects unknown fields, so a misspelled setting is an error
//! that names it instead of a silently ignored default.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::prelude::{Engine, BASE64_STANDARD};
use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::method::Method;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub vm: VmSpec,
    #[serde(default)]
    pub workload: Workload,
    /// The emulated inter-datacenter link: `bandwidth`, `rtt`, and optionally
    /// `queue`, `jitter`, `stall_probability`, `stall_time` (see mllm-link).
    #[serde(default)]
    pub link: mllm_link::LinkConfig,
    pub methods: Vec<Method>,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub agents: AgentSettings,
}

/// How mllm's agents run in this scenario's mllm methods, where it differs
/// from their defaults.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// A fixed page compression (`none`, `lz4`, `zstd` or `zstd:LEVEL`)
    /// instead of the one the source chooses as it measures the link and
    /// its CPU: for runs whose costs must compare (the simulator's check).
    pub compression: Option<String>,
}

impl AgentSettings {
    /// The fixed compression, if any.
    pub fn compression(&self) -> Result<Option<mllm_agent::CompressionSetting>> {
        self.compression
            .as_deref()
            .map(|text| {
                mllm_agent::parse_compression(text)
                    .map_err(|error| anyhow::anyhow!("agents.compression: {error}"))
            })
            .transpose()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    pub memory: ByteSize,
    #[serde(default = "one")]
    pub vcpus: u32,
    #[serde(default)]
    pub accelerator: mllm_qemu::Accelerator,
    pub disk: Option<DiskSpec>,
    /// The vCPUs on cores of their own and the rest of the lab on the
    /// others (`mllm_lab::placement`), for every method alike; ignored
    /// when the machine has no core to spare.
    #[serde(default = "yes")]
    pub pin_vcpus: bool,
}

fn one() -> u32 {
    1
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskSpec {
    pub size: ByteSize,
    #[serde(default)]
    pub content: DiskContent,
    /// Synthetic content: how much of the disk, from its start, holds data;
    /// the rest stays sparse (never written).
    pub used: Option<ByteSize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskContent {
    /// `used` bytes of generated data.
    #[default]
    Synthetic,
    /// The Debian root file system with redis, fio, sqlite3 and stress-ng,
    /// which `command` workloads run in.
    Debian,
}

/// What runs inside the guest, reporting throughput on its workload port.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Workload {
    #[default]
    Idle,
    Memload(AccessPattern),
    Diskload(DiskLoad),
    /// Any shell command inside the Debian root disk; its throughput is
    /// parsed where the tool reports it (redis-benchmark, fio, ...).
    Command(CommandLoad),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CommandLoad {
    /// Run by `/bin/sh -c` in the root disk, for example
    /// `redis-server --daemonize yes && redis-benchmark -q -l -t set,get`.
    pub command: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskLoad {
    /// Bytes of the disk, from offset 0, the workload reads and writes.
    pub length: ByteSize,
    #[serde(flatten)]
    pub pattern: AccessPattern,
}

/// How a workload touches its data.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccessPattern {
    /// Memory the memory workload allocates (ignored by the disk workload).
    #[serde(default = "default_size")]
    pub size: ByteSize,
    /// Fraction of pages or blocks forming the hot set.
    #[serde(default = "default_hot_fraction")]
    pub hot_fraction: f64,
    /// Percentage of accesses that go to the hot set.
    #[serde(default = "default_hot_access_pct")]
    pub hot_access_pct: u32,
    /// `uniform` or `zipf:S`.
    #[serde(default = "default_skew")]
    pub skew: String,
    /// Page- or block-sized writes per second (0: as fast as the guest can).
    pub write_rate: u64,
    #[serde(default = "default_read_pct")]
    pub read_pct: u32,
    /// Fraction of each page that is incompressible random bytes.
    #[serde(default = "default_random_fraction")]
    pub random_fraction: f64,
}

fn default_size() -> ByteSize {
    ByteSize::mib(128)
}
fn default_hot_fraction() -> f64 {
    0.1
}
fn default_hot_access_pct() -> u32 {
    90
}
fn default_skew() -> String {
    "uniform".into()
}
fn default_read_pct() -> u32 {
    50
}
fn default_random_fraction() -> f64 {
    0.5
}

/// Phases of a run, all on the source's and destination's wall clock.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    /// Workload runs this long on the source before migrating; its last
    /// `baseline_window` gives the baseline throughput.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub baseline_window: Duration,
    /// The destination is watched this long after the switch.
    #[serde(with = "humantime_serde")]
    pub after: Duration,
    /// A migration still running after this is cancelled and reported failed.
    #[serde(with = "humantime_serde")]
    pub migration_timeout: Duration,
    /// Downtime the methods aim for (QEMU's `downtime-limit`).
    #[serde(with = "humantime_serde")]
    pub downtime_target: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            warmup: Duration::from_secs(10),
            baseline_window: Duration::from_secs(5),
            after: Duration::from_secs(8),
            migration_timeout: Duration::from_secs(240),
            downtime_target: Duration::from_millis(300),
        }
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("invalid scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> Result<()> {
        self.agents.compression()?;
        let memory = self.vm.memory.as_u64();
        ensure!(
            (64 << 20..=64 << 30).contains(&memory) && memory.is_multiple_of(1 << 20),
            "vm.memory = {} is impossible: use whole MiB between 64 MiB and 64 GiB",
            self.vm.memory
        );
        ensure!(
            (1..=64).contains(&self.vm.vcpus),
            "vm.vcpus = {} must be 1..=64",
            self.vm.vcpus
        );
        if let Some(disk) = &self.vm.disk {
            ensure!(
                disk.size.as_u64() >= 1 << 20 && disk.size.as_u64().is_multiple_of(4096),
                "vm.disk.size = {} must be at least 1 MiB and a multiple of 4 KiB",
                disk.size
            );
            match (disk.content, disk.used) {
                (DiskContent::Synthetic, None) => {
                    bail!("vm.disk.used is missing: say how much of the synthetic disk holds data")
                }
                (DiskContent::Synthetic, Some(used)) => ensure!(
                    used <= disk.size,
                    "vm.disk.used = {used} is larger than vm.disk.size = {}",
                    disk.size
                ),
                (DiskContent::Debian, Some(_)) => bail!(
                    "vm.disk.used applies to synthetic disks only; a debian disk holds the root file system"
                ),
                (DiskContent::Debian, None) => {}
            }
        }
        match &self.workload {
            Workload::Idle => {}
            Workload::Memload(pattern) => {
                pattern.validate("workload")?;
                ensure!(
                    pattern.size.as_u64() + (96 << 20) <= memory,
                    "workload.size = {} does not fit in vm.memory = {} (leave at least 96 MiB for the guest kernel)",
                    pattern.size,
                    self.vm.memory
                );
            }
            Workload::Diskload(load) => {
                load.pattern.validate("workload")?;
                let Some(disk) = &self.vm.disk else {
                    bail!("workload.kind = \"diskload\" needs a [vm.disk] table");
                };
                ensure!(
                    disk.content == DiskContent::Synthetic,
                    "workload.kind = \"diskload\" overwrites the disk: use vm.disk.content = \"synthetic\""
                );
                ensure!(
                    load.length <= disk.size,
                    "workload.length = {} is larger than vm.disk.size = {}",
                    load.length,
                    disk.size
                );
            }
            Workload::Command(load) => {
                ensure!(!load.command.trim().is_empty(), "workload.command is empty");
                ensure!(
                    self.vm
                        .disk
                        .as_ref()
                        .is_some_and(|d| d.content == DiskContent::Debian),
                    "workload.kind = \"command\" runs inside the Debian root disk: \
                     set vm.disk = {{ size = \"2GiB\", content = \"debian\" }}"
                );
            }
        }
        ensure!(
            !self.methods.is_empty(),
            "methods is empty: name at least one migration method"
        );
        let t = &self.timing;
        ensure!(
            t.baseline_window <= t.warmup,
            "timing.baseline_window ({:?}) is longer than timing.warmup ({:?})",
            t.baseline_window,
            t.warmup
        );
        ensure!(
            !t.migration_timeout.is_zero(),
            "timing.migration_timeout must be positive"
        );
        Ok(())
    }
}

impl AccessPattern {
    fn validate(&self, table: &str) -> Result<()> {
        ensure!(
            self.hot_fraction > 0.0 && self.hot_fraction <= 1.0,
            "{table}.hot_fraction = {} must be in (0, 1]",
            self.hot_fraction
        );
        ensure!(
            self.hot_access_pct <= 100,
            "{table}.hot_access_pct = {} must be 0..=100",
            self.hot_access_pct
        );
        ensure!(
            self.read_pct <= 100,
            "{table}.read_pct = {} must be 0..=100",
            self.read_pct
        );
        ensure!(
            (0.0..=1.0).contains(&self.random_fraction),
            "{table}.random_fraction = {} must be in [0, 1] (fraction of random bytes per page)",
            self.random_fraction
        );
        let skew_ok = self.skew == "uniform"
            || self
                .skew
                .strip_prefix("zipf:")
                .and_then(|s| s.parse::<f64>().ok())
                .is_some_and(|s| s > 0.0);
        ensure!(
            skew_ok,
            "{table}.skew = {:?}: use \"uniform\" or \"zipf:S\" with S > 0",
            self.skew
        );
        Ok(())
    }

    /// Arguments for `mllm-guest memload`/`diskload`.
    pub fn guest_args(&self) -> Vec<String> {
        vec![
            format!("--hot-fraction={}", self.hot_fraction),
            format!("--hot-access-pct={}", self.hot_access_pct),
            format!("--skew={}", self.skew),
            format!("--write-rate={}", self.write_rate),
            format!("--read-pct={}", self.read_pct),
            format!("--random-fraction={}", self.random_fraction),
        ]
    }
}

impl Scenario {
    /// The kernel command line parameters that make the guest's init mount
    /// the root disk and start the workload.
    pub fn kernel_params(&self) -> String {
        self.vm.kernel_params(&self.workload)
    }
}

impl VmSpec {
    /// The kernel command line parameters that make the guest's init mount
    /// this VM's root disk, if it has one, and start `workload`.
    pub fn kernel_params(&self, workload: &Workload) -> String {
        let debian_root = self
            .disk
            .as_ref()
            .is_some_and(|d| d.content == DiskContent::Debian);
        let root = if debian_root { "mllm.root=vda " } else { "" };
        format!("{root}{}", workload.kernel_params())
    }
}

impl Workload {
    /// The kernel command line parameters that make the guest's init start this workload.
    pub fn kernel_params(&self) -> String {
        let (name, mut args) = match self {
            Workload::Idle => return String::new(),
            // Base64, because the kernel splits its command line at spaces.
            Workload::Command(load) => {
                let command = BASE64_STANDARD.encode(&load.command);
                return format!("mllm.workload=command mllm.command={command}");
            }
            Workload::Memload(p) => ("memload", p.guest_args()),
            Workload::Diskload(d) => {
                let mut args = d.pattern.guest_args();
                args.push("--device=/dev/vda".into());
                args.push(format!("--length={}", d.length.as_u64()));
                ("diskload", args)
            }
        };
        if let Workload::Memload(p) = self {
            args.push(format!("--size={}", p.size.as_u64()));
        }
        format!("mllm.workload={name} mllm.args={}", args.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEMO: &str = r#"
name = "demo"
methods = ["qemu-precopy"]
[vm]
memory = "512MiB"
[workload]
kind = "memload"
size = "128MiB"
write_rate = 2000
"#;

    #[test]
    fn demo_parses_with_defaults() {
        let s = Scenario::parse(DEMO).unwrap();
        assert_eq!(s.vm.memory.as_u64(), 512 << 20);
        assert_eq!(s.link.rtt, Duration::from_millis(50));
        let params = s.workload.kernel_params();
        assert!(
            params.starts_with("mllm.workload=memload mllm.args="),
            "{params}"
        );
        assert!(params.contains("--size=134217728"), "{params}");
        assert!(!params.contains(' ') || params.matches(' ').count() == 1);
    }

    #[test]
    fn misspelled_field_is_named() {
        let err = Scenario::parse(&DEMO.replace("write_rate", "write_rat")).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("write_rat"), "{text}");
    }

    #[test]
    fn the_agents_codec_is_checked_when_the_scenario_is_read() {
        let fixed =
            Scenario::parse(&format!("{DEMO}[agents]\ncompression = \"zstd:3\"\n")).unwrap();
        assert!(fixed.agents.compression().unwrap().is_some());
        assert!(Scenario::parse(DEMO)
            .unwrap()
            .agents
            .compression()
            .unwrap()
            .is_none());
        let err =
            Scenario::parse(&format!("{DEMO}[agents]\ncompression = \"brotli\"\n")).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("agents.compression") && text.contains("brotli"),
            "{text}"
        );
    }

    #[test]
    fn impossible_sizes_are_refused() {
        let err = Scenario::parse(&DEMO.replace("512MiB", "100MiB")).unwrap_err();
        assert!(format!("{err:#}").contains("does not fit"), "{err:#}");
        let err = Scenario::parse(&DEMO.replace("512MiB", "3KiB")).unwrap_err();
        assert!(format!("{err:#}").contains("vm.memory"), "{err:#}");
    }

    #[test]
    fn zero_bandwidth_is_refused() {
        let text = format!("{DEMO}\n[link]\nbandwidth = \"0Mbit\"\nrtt = \"50ms\"\n");
        let err = Scenario::parse(&text).unwrap_err();
        assert!(
            format!("{err:#}").to_lowercase().contains("bandwidth"),
            "{err:#}"
        );
    }

    #[test]
    fn command_workload_needs_a_debian_disk_and_encodes_its_command() {
        let command = r#"
name = "redis"
methods = ["qemu-precopy"]
[vm]
memory = "512MiB"
disk = { size = "2GiB", content = "debian" }
[workload]
kind = "command"
command = "redis-benchmark -q -l -t set,get"
"#;
        let s = Scenario::parse(command).unwrap();
        let params = s.kernel_params();
        assert!(
            params.starts_with("mllm.root=vda mllm.workload=command mllm.command="),
            "{params}"
        );
        assert_eq!(params.split(' ').count(), 3, "{params}");
        let synthetic = command.replace(r#"content = "debian""#, r#"used = "1GiB""#);
        let err = Scenario::parse(&synthetic).unwrap_err();
        assert!(format!("{err:#}").contains("Debian root disk"), "{err:#}");
    }

    #[test]
    fn shipped_scenarios_are_valid() {
        let dir = crate::paths::workspace_root().join("scenarios");
        for name in ["demo", "idle", "hotset", "disk", "redis"] {
            let path = dir.join(format!("{name}.toml"));
            let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(scenario.name, name);
        }
    }

    #[test]
    fn unknown_method_is_named() {
        let err = Scenario::parse(&DEMO.replace("qemu-precopy", "qemu-precopyy")).unwrap_err();
        assert!(format!("{err:#}").contains("qemu-precopyy"), "{err:#}");
    }
}

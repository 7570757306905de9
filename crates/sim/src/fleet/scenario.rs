//! Fleet files: VMs in groups, each group behind one of a few shared links.
//!
//! ```toml
//! name = "example"
//! seed = 1
//! interval_s = 1.0
//! warmup_intervals = 30
//! downtime_target_ms = 300
//! policies = ["precopy", "mllm-improved"]
//!
//! [[link]]
//! name = "fra-ams"
//! bandwidth_mbit = 10000
//! rtt_ms = 10
//! concurrent = 16          # migrations at once on this link
//!
//! [[group]]
//! name = "web"
//! count = 300
//! link = "fra-ams"
//! [group.vm]               # a VmSpec
//! memory_mib = 2048
//! workload = { class = "zipf", exponent = 1.0, rate = 0.002 }
//! ```

use anyhow::{bail, ensure, Context};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::scenario::VmSpec;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetScenario {
    pub name: String,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_interval_s")]
    pub interval_s: f64,
    #[serde(default = "default_warmup")]
    pub warmup_intervals: u64,
    #[serde(default = "default_downtime_target_ms")]
    pub downtime_target_ms: f64,
    /// Policies compared when the command line names none.
    #[serde(default = "default_policies")]
    pub policies: Vec<Policy>,
    #[serde(rename = "link")]
    pub links: Vec<LinkSpec>,
    #[serde(rename = "group")]
    pub groups: Vec<GroupSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    pub name: String,
    pub bandwidth_mbit: f64,
    pub rtt_ms: f64,
    /// Migrations running at once over this link; the others wait their turn.
    pub concurrent: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSpec {
    pub name: String,
    pub count: u32,
    pub link: String,
    pub vm: VmSpec,
}

fn default_seed() -> u64 {
    1
}

fn default_interval_s() -> f64 {
    1.0
}

fn default_warmup() -> u64 {
    30
}

fn default_downtime_target_ms() -> f64 {
    300.0
}

fn default_policies() -> Vec<Policy> {
    vec![
        Policy::Precopy,
        Policy::Mllm(mllm_core::workingset::EstimatorKind::Improved),
    ]
}

impl FleetScenario {
    pub fn parse(text: &str) -> anyhow::Result<FleetScenario> {
        let scenario: FleetScenario = toml::from_str(text).context("not a valid fleet file")?;
        scenario.validate()?;
        Ok(scenario)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            !self.links.is_empty(),
            "a fleet needs at least one [[link]]"
        );
        ensure!(self.interval_s > 0.0, "interval_s must be positive");
        for link in &self.links {
            ensure!(
                link.bandwidth_mbit > 0.0,
                "link {}: bandwidth must be positive",
                link.name
            );
            ensure!(
                link.concurrent > 0,
                "link {}: concurrent must be at least 1",
                link.name
            );
        }
        for group in &self.groups {
            if self.link_index(&group.link).is_none() {
                bail!(
                    "group {} uses link {:?}, which no [[link]] defines",
                    group.name,
                    group.link
                );
            }
            ensure!(group.count > 0, "group {} has no VM", group.name);
            if let Some(disk) = &group.vm.disk {
                ensure!(
                    disk.used <= disk.allocated,
                    "group {}: used exceeds allocated",
                    group.name
                );
            }
        }
        Ok(())
    }

    pub fn link_index(&self, name: &str) -> Option<usize> {
        self.links.iter().position(|link| link.name == name)
    }

    pub fn vm_count(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"
        name = "tiny"
        [[link]]
        name = "a"
        bandwidth_mbit = 1000
        rtt_ms = 10
        concurrent = 2
        [[group]]
        name = "web"
        count = 3
        link = "a"
        [group.vm]
        memory_mib = 16
        workload = { class = "uniform", rate = 0.01 }
    "#;

    #[test]
    fn parses_with_defaults() {
        let scenario = FleetScenario::parse(FLEET).unwrap();
        assert_eq!(scenario.vm_count(), 3);
        assert_eq!(scenario.policies.len(), 2);
        assert_eq!(scenario.warmup_intervals, 30);
    }

    #[test]
    fn unknown_link_is_an_error() {
        let err = FleetScenario::parse(&FLEET.replace("link = \"a\"", "link = \"b\"")).unwrap_err();
        assert!(err.to_string().contains("\"b\""), "{err}");
    }

    #[test]
    fn unknown_policy_is_an_error() {
        let text = FLEET.replace(
            "name = \"tiny\"",
            "name = \"tiny\"\npolicies = [\"teleport\"]",
        );
        let err = FleetScenario::parse(&text).unwrap_err();
        assert!(format!("{err:#}").contains("teleport"), "{err:#}");
    }
}

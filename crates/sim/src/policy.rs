//! The migration methods the simulator compares.

use std::fmt;

use mllm_core::workingset::EstimatorKind;
use serde::{Deserialize, Serialize};

use crate::run::SimConfig;
use mllm_core::strategy::{Hybrid, Mllm, Postcopy, Precopy, Strategy};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Policy {
    Precopy,
    Postcopy,
    Hybrid,
    Mllm(EstimatorKind),
}

impl Policy {
    /// Every policy: QEMU's three, then MLLM with each estimator.
    pub fn all() -> Vec<Policy> {
        let mut all = vec![Policy::Precopy, Policy::Postcopy, Policy::Hybrid];
        all.extend(EstimatorKind::ALL.map(Policy::Mllm));
        all
    }

    pub fn from_name(name: &str) -> Option<Policy> {
        match name {
            "precopy" => Some(Policy::Precopy),
            "postcopy" => Some(Policy::Postcopy),
            "hybrid" => Some(Policy::Hybrid),
            _ => name
                .strip_prefix("mllm-")
                .and_then(EstimatorKind::from_name)
                .map(Policy::Mllm),
        }
    }

    /// A fresh strategy for one migration of a VM with `blocks` disk blocks
    /// (if any).
    pub fn strategy(
        self,
        memory_pages: u32,
        blocks: Option<u32>,
        config: &SimConfig,
    ) -> Box<dyn Strategy> {
        match self {
            Policy::Precopy => Box::new(Precopy::new(config.planner, config.precopy_limits)),
            Policy::Postcopy => Box::new(Postcopy::new(config.planner)),
            Policy::Hybrid => Box::new(Hybrid::new(config.planner)),
            Policy::Mllm(kind) => Box::new(Mllm::new(
                config.planner,
                kind.build(memory_pages, config.estimator_horizon),
                blocks.map(|blocks| kind.build(blocks, config.estimator_horizon)),
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Precopy => f.write_str("precopy"),
            Policy::Postcopy => f.write_str("postcopy"),
            Policy::Hybrid => f.write_str("hybrid"),
            Policy::Mllm(kind) => write!(f, "mllm-{}", kind.name()),
        }
    }
}

impl TryFrom<String> for Policy {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Policy::from_name(&name).ok_or_else(|| {
            let known: Vec<String> = Policy::all().iter().map(Policy::to_string).collect();
            format!("unknown policy {name:?}; known: {}", known.join(", "))
        })
    }
}

impl From<Policy> for String {
    fn from(policy: Policy) -> String {
        policy.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for policy in Policy::all() {
            assert_eq!(Policy::from_name(&policy.to_string()), Some(policy));
        }
        assert_eq!(
            Policy::from_name("mllm-improved"),
            Some(Policy::Mllm(EstimatorKind::Improved))
        );
        assert!(Policy::try_from("mllm-magic".to_string())
            .unwrap_err()
            .contains("mllm-improved"));
    }
}

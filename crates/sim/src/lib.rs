//! Trace-driven simulation of VM migrations: QEMU's pre-copy, post-copy and
//! hybrid, and MLLM with each workingset estimator, over a modelled link; for
//! one VM, or for a fleet sharing inter-datacenter links.

pub mod accuracy;
pub mod engine;
pub mod fleet;
pub mod policy;
pub mod result;
pub mod run;
pub mod scenario;
pub mod source;

pub use policy::Policy;
pub use result::SimResult;
pub use run::{compare, simulate, SimConfig};

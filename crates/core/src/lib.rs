//! MLLM's decision logic, free of I/O: access traces and their encodings,
//! synthetic workloads, workingset estimators, prediction metrics and the
//! migration planner.

pub mod codec_choice;
pub mod convert;
pub mod dedup;
pub mod link;
pub mod memory;
pub mod metrics;
pub mod pageset;
pub mod planner;
pub mod strategy;
pub mod synth;
pub mod trace;
pub mod vm;
pub mod workingset;

pub use pageset::PageSet;

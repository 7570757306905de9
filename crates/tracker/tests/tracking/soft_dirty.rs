//! The soft-dirty backend: the contract, on kernels built with
//! `CONFIG_MEM_SOFT_DIRTY`.

use mllm_tracker::SoftDirtyTracker;

use crate::contract::{contract_tests, Backend};
use crate::support::PageWriter;

pub const BACKEND: Backend<SoftDirtyTracker> = Backend {
    name: "soft-dirty",
    supported: SoftDirtyTracker::check_kernel_support,
    start: tracker,
};

mod contract {
    super::contract_tests!(super::BACKEND);
}

fn tracker(writer: &PageWriter) -> SoftDirtyTracker {
    SoftDirtyTracker::new(writer.pid(), writer.ram()).expect("tracker")
}

//! The migration lab: a real guest, an emulated inter-datacenter link, and
//! every migration method measured on both.

pub mod image;
pub mod paths;

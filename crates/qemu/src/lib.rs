//! Control of unmodified QEMU processes: how they are launched, how they are
//! driven over QMP, and how their serial ports are captured with host
//! timestamps.

pub mod error;
pub mod launch;
pub mod qmp;
pub mod serial;

pub use error::QemuError;
pub use launch::{Accelerator, Boot, DiskAttachment, QemuConfig, QemuProcess, RamBackend};
pub use qmp::{QmpClient, QmpEvent};
pub use serial::{continue_across_switch, SerialCapture, SerialLine};

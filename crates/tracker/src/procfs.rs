//! Files of a process under /proc.

use std::fs::File;
use std::path::PathBuf;

use crate::error::{ProcAccess, TrackerError};

/// `/proc/<pid>/<name>`.
pub(crate) fn path(pid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

pub(crate) fn open_pagemap(pid: i32) -> Result<File, TrackerError> {
    let path = path(pid, "pagemap");
    File::open(&path).map_err(TrackerError::proc(ProcAccess::Open, &path))
}

//! The disk access trace as a file, in core's disk-trace format.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use mllm_core::trace::{
    binary, text, DiskAccess, DiskTrace, DiskTraceHeader, Encoding, TraceError,
};

use crate::error::MigrationError;

/// Writes `accesses` (in time order, as [`super::TrackedDisk::recent_accesses`]
/// returns them) of a disk of `disk_bytes` to `path`, created or truncated.
pub fn write_disk_trace(
    path: &Path,
    disk_bytes: u64,
    accesses: &[DiskAccess],
    encoding: Encoding,
) -> Result<(), MigrationError> {
    let failed = |source| MigrationError::Trace {
        what: format!("writing disk trace {}", path.display()),
        source,
    };
    let trace = DiskTrace {
        header: DiskTraceHeader { disk_bytes },
        records: accesses.to_vec(),
    };
    let out = BufWriter::new(File::create(path).map_err(|error| failed(TraceError::from(error)))?);
    match encoding {
        Encoding::Binary => binary::write_disk(&trace, out),
        Encoding::Text => text::write_disk(&trace, out),
    }
    .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mllm_core::trace::{read_trace, DiskOp, Trace};

    #[test]
    fn both_encodings_read_back_as_the_same_trace() {
        let accesses = [
            DiskAccess {
                time_us: 5,
                op: DiskOp::Write,
                offset: 4096,
                length: 1,
            },
            DiskAccess {
                time_us: 9,
                op: DiskOp::Read,
                offset: 0,
                length: 8192,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        for encoding in [Encoding::Binary, Encoding::Text] {
            let path = dir.path().join("disk.trace");
            write_disk_trace(&path, 1 << 20, &accesses, encoding).unwrap();
            let (trace, found) = read_trace(File::open(&path).unwrap()).unwrap();
            assert_eq!(found, encoding);
            let Trace::Disk(trace) = trace else {
                panic!("a memory trace: {trace:?}")
            };
            assert_eq!(trace.header.disk_bytes, 1 << 20);
            assert_eq!(trace.records, accesses);
        }
    }

    #[test]
    fn a_request_past_the_disk_is_refused_by_core() {
        let past = [DiskAccess {
            time_us: 0,
            op: DiskOp::Read,
            offset: 4096,
            length: 1,
        }];
        let dir = tempfile::tempdir().unwrap();
        let error =
            write_disk_trace(&dir.path().join("t"), 4096, &past, Encoding::Binary).unwrap_err();
        assert!(matches!(error, MigrationError::Trace { .. }), "{error}");
    }
}

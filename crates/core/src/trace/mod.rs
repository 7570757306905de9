//! Access traces: what the guest wrote in memory, interval by interval, and what
//! it read and wrote on disk, request by request.
//!
//! Both kinds have a compact binary encoding ([`binary`]) with a magic and a
//! version header, and a readable text form ([`text`]); [`read_trace`] accepts
//! either and tells which one it found.

pub mod binary;
pub mod text;
mod varint;

use std::io::{BufRead, BufReader, Read};

use serde::{Deserialize, Serialize};

/// Most page writes a memory trace may decode to, summed over its intervals.
/// Runs let a few bytes name billions of pages (every page of a 16 TiB guest
/// in one interval takes 16 GiB as page numbers), so decoders stop here
/// rather than allocate what a corrupt or hostile file asks for. 2^28 writes
/// take 1 GiB; a minute of a busy guest recorded every 100 ms is a few
/// million.
pub const MAX_PAGE_WRITES: u64 = 1 << 28;

/// What a memory write trace is about: the guest's page size and RAM size in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTraceHeader {
    pub page_size: u32,
    pub page_count: u32,
}

/// One tracker interval: how long it lasted and which pages were written in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteInterval {
    pub duration_us: u64,
    pages: Vec<u32>,
}

impl WriteInterval {
    /// Sorts and de-duplicates `pages`: a page is either written in an interval or not.
    pub fn new(duration_us: u64, mut pages: Vec<u32>) -> Self {
        pages.sort_unstable();
        pages.dedup();
        WriteInterval { duration_us, pages }
    }

    /// The pages written, increasing, without duplicates.
    pub fn pages(&self) -> &[u32] {
        &self.pages
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryTrace {
    pub header: MemoryTraceHeader,
    pub intervals: Vec<WriteInterval>,
}

impl MemoryTrace {
    /// Rejects a zero page size and pages beyond the guest's RAM.
    pub fn validate(&self) -> Result<(), TraceError> {
        if self.header.page_size == 0 {
            return Err(TraceError::Invalid("page size is zero".into()));
        }
        for (index, interval) in self.intervals.iter().enumerate() {
            if let Some(&last) = interval.pages.last() {
                if last >= self.header.page_count {
                    return Err(TraceError::Invalid(format!(
                        "interval {index} writes page {last}, beyond the {} pages of the guest",
                        self.header.page_count
                    )));
                }
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskOp {
    Read,
    Write,
}

/// One request seen by the disk server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskAccess {
    /// Microseconds since the start of the trace.
    pub time_us: u64,
    pub op: DiskOp,
    pub offset: u64,
    pub length: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskTraceHeader {
    pub disk_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskTrace {
    pub header: DiskTraceHeader,
    /// In time order.
    pub records: Vec<DiskAccess>,
}

/// The blocks one interval of a disk trace touched.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockInterval {
    /// Increasing, without duplicates.
    pub reads: Vec<u32>,
    /// Increasing, without duplicates.
    pub writes: Vec<u32>,
}

impl DiskTrace {
    /// Rejects records out of time order and requests past the end of the disk.
    pub fn validate(&self) -> Result<(), TraceError> {
        let mut previous_time = 0;
        for (index, record) in self.records.iter().enumerate() {
            if record.time_us < previous_time {
                return Err(TraceError::Invalid(format!(
                    "record {index} at {} us comes before its predecessor at {previous_time} us",
                    record.time_us
                )));
            }
            previous_time = record.time_us;
            let end = u128::from(record.offset) + u128::from(record.length);
            if end > u128::from(self.header.disk_bytes) {
                return Err(TraceError::Invalid(format!(
                    "record {index} ends at byte {end}, past the {}-byte disk",
                    self.header.disk_bytes
                )));
            }
        }
        Ok(())
    }

    /// Number of `block_size` blocks covering the disk.
    pub fn block_count(&self, block_size: u32) -> u32 {
        let blocks = self.header.disk_bytes.div_ceil(u64::from(block_size));
        u32::try_from(blocks).expect("disk has more than 2^32 blocks at this block size")
    }

    /// Folds the requests into per-interval sets of blocks read and written, so
    /// disk and memory can be replayed on the same interval clock. The result
    /// covers the whole trace, empty intervals included.
    pub fn block_intervals(&self, block_size: u32, interval_us: u64) -> Vec<BlockInterval> {
        let block_size = u64::from(block_size);
        let end = self.records.last().map_or(0, |r| r.time_us);
        let interval_of = |time_us: u64| {
            usize::try_from(time_us / interval_us)
                .expect("one BlockInterval per interval up to the last record must fit in memory")
        };
        let mut intervals = vec![BlockInterval::default(); interval_of(end) + 1];
        for record in &self.records {
            let interval = &mut intervals[interval_of(record.time_us)];
            let first = record.offset / block_size;
            let last = (record.offset + u64::from(record.length.max(1)) - 1) / block_size;
            let target = match record.op {
                DiskOp::Read => &mut interval.reads,
                DiskOp::Write => &mut interval.writes,
            };
            target.extend((first..=last).map(|block| {
                u32::try_from(block).expect(
                    "requests end inside the disk (validate), whose blocks a u32 numbers (block_count)",
                )
            }));
        }
        for interval in &mut intervals {
            for blocks in [&mut interval.reads, &mut interval.writes] {
                blocks.sort_unstable();
                blocks.dedup();
            }
        }
        intervals
    }
}

/// A trace of either kind, as found in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trace {
    Memory(MemoryTrace),
    Disk(DiskTrace),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("not an mllm trace: it starts with {found:?}; expected \"MLLM-MEM\" or \"MLLM-DSK\" (binary) or a \"mllm memory trace\" or \"mllm disk trace\" line (text)")]
    BadMagic { found: String },
    #[error(
        "{kind} trace version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        kind: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("the trace lists more than {limit} page writes, the most this reader decodes")]
    TooLarge { limit: u64 },
    #[error("the trace ends in the middle of a record")]
    Truncated,
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("invalid trace: {0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads a trace of either kind in either encoding, telling them apart by the
/// first bytes.
pub fn read_trace(reader: impl Read) -> Result<(Trace, Encoding), TraceError> {
    read_trace_with_limit(reader, MAX_PAGE_WRITES)
}

/// Like [`read_trace`], refusing a memory trace of more than
/// `max_page_writes` page writes.
pub fn read_trace_with_limit(
    reader: impl Read,
    max_page_writes: u64,
) -> Result<(Trace, Encoding), TraceError> {
    let mut reader = BufReader::new(reader);
    let head = reader.fill_buf()?;
    if head.starts_with(&binary::MEMORY_MAGIC) {
        Ok((
            Trace::Memory(binary::read_memory_with_limit(reader, max_page_writes)?),
            Encoding::Binary,
        ))
    } else if head.starts_with(&binary::DISK_MAGIC) {
        Ok((Trace::Disk(binary::read_disk(reader)?), Encoding::Binary))
    } else if head.starts_with(text::MEMORY_HEADER.as_bytes()) {
        Ok((
            Trace::Memory(text::read_memory_with_limit(reader, max_page_writes)?),
            Encoding::Text,
        ))
    } else if head.starts_with(text::DISK_HEADER.as_bytes()) {
        Ok((Trace::Disk(text::read_disk(reader)?), Encoding::Text))
    } else {
        Err(TraceError::BadMagic {
            found: String::from_utf8_lossy(&head[..head.len().min(8)]).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_interval_sorts_and_dedups() {
        let interval = WriteInterval::new(10, vec![5, 1, 5, 3]);
        assert_eq!(interval.pages(), &[1, 3, 5]);
    }

    #[test]
    fn validate_rejects_page_beyond_ram() {
        let trace = MemoryTrace {
            header: MemoryTraceHeader {
                page_size: 4096,
                page_count: 4,
            },
            intervals: vec![WriteInterval::new(1, vec![4])],
        };
        assert!(matches!(trace.validate(), Err(TraceError::Invalid(_))));
    }

    #[test]
    fn block_intervals_split_requests_across_blocks_and_intervals() {
        let trace = DiskTrace {
            header: DiskTraceHeader {
                disk_bytes: 1 << 20,
            },
            records: vec![
                DiskAccess {
                    time_us: 10,
                    op: DiskOp::Read,
                    offset: 4000,
                    length: 200,
                },
                DiskAccess {
                    time_us: 20,
                    op: DiskOp::Write,
                    offset: 0,
                    length: 4096,
                },
                DiskAccess {
                    time_us: 2_500,
                    op: DiskOp::Read,
                    offset: 8192,
                    length: 1,
                },
            ],
        };
        let intervals = trace.block_intervals(4096, 1_000);
        assert_eq!(intervals.len(), 3);
        assert_eq!(intervals[0].reads, vec![0, 1]);
        assert_eq!(intervals[0].writes, vec![0]);
        assert!(intervals[1].reads.is_empty());
        assert_eq!(intervals[2].reads, vec![2]);
    }
}

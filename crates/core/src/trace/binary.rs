//! Compact binary encoding.
//!
//! Both kinds start with an 8-byte magic and a little-endian `u16` version.
//!
//! Memory (`MLLM-MEM`, version 1): `page_size: u32`, `page_count: u32`, then
//! intervals until the end of the input, each `duration_us` as a varint, the
//! number of runs of consecutive written pages, and per run the gap from the end
//! of the previous run and the run length minus one (varints). Written pages
//! cluster, so a run costs two or three bytes for any number of pages.
//!
//! Disk (`MLLM-DSK`, version 1): `disk_bytes: u64`, then records until the end of
//! the input: the operation byte (0 read, 1 write), the time since the previous
//! record, the offset relative to the end of the previous request (zig-zag, so
//! a sequential stream costs one byte) and the length, all varints.

use std::io::{BufRead, BufReader, Read, Write};

use super::varint;
use super::{
    DiskAccess, DiskOp, DiskTrace, DiskTraceHeader, MemoryTrace, MemoryTraceHeader, TraceError,
    WriteInterval, MAX_PAGE_WRITES,
};

pub const MEMORY_MAGIC: [u8; 8] = *b"MLLM-MEM";
pub const DISK_MAGIC: [u8; 8] = *b"MLLM-DSK";
pub const MEMORY_VERSION: u16 = 1;
pub const DISK_VERSION: u16 = 1;

/// Appends intervals to a binary memory trace as the tracker produces them.
#[derive(Debug)]
pub struct MemoryTraceWriter<W: Write> {
    out: W,
    page_count: u32,
}

impl<W: Write> MemoryTraceWriter<W> {
    pub fn new(mut out: W, header: MemoryTraceHeader) -> std::io::Result<Self> {
        out.write_all(&MEMORY_MAGIC)?;
        out.write_all(&MEMORY_VERSION.to_le_bytes())?;
        out.write_all(&header.page_size.to_le_bytes())?;
        out.write_all(&header.page_count.to_le_bytes())?;
        Ok(MemoryTraceWriter {
            out,
            page_count: header.page_count,
        })
    }

    pub fn push(&mut self, interval: &WriteInterval) -> Result<(), TraceError> {
        if let Some(&last) = interval.pages().last() {
            if last >= self.page_count {
                return Err(TraceError::Invalid(format!(
                    "page {last} is beyond the {} pages of the guest",
                    self.page_count
                )));
            }
        }
        let runs = runs(interval.pages());
        varint::write_u64(&mut self.out, interval.duration_us)?;
        varint::write_u64(&mut self.out, runs.len() as u64)?;
        let mut next_free = 0u32;
        for (start, len) in runs {
            varint::write_u64(&mut self.out, u64::from(start - next_free))?;
            varint::write_u64(&mut self.out, u64::from(len - 1))?;
            next_free = start + len;
        }
        Ok(())
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Runs of consecutive pages as `(first, length)`.
fn runs(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &page in pages {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == page => *len += 1,
            _ => runs.push((page, 1)),
        }
    }
    runs
}

pub fn write_memory(trace: &MemoryTrace, out: impl Write) -> Result<(), TraceError> {
    let mut writer = MemoryTraceWriter::new(out, trace.header)?;
    for interval in &trace.intervals {
        writer.push(interval)?;
    }
    writer.finish()?;
    Ok(())
}

pub fn read_memory(input: impl Read) -> Result<MemoryTrace, TraceError> {
    read_memory_with_limit(input, MAX_PAGE_WRITES)
}

/// Like [`read_memory`], refusing a trace of more than `max_page_writes`
/// page writes before allocating them.
pub fn read_memory_with_limit(
    input: impl Read,
    max_page_writes: u64,
) -> Result<MemoryTrace, TraceError> {
    let mut input = BufReader::new(input);
    read_header(&mut input, MEMORY_MAGIC, "memory", MEMORY_VERSION)?;
    let header = MemoryTraceHeader {
        page_size: read_u32(&mut input)?,
        page_count: read_u32(&mut input)?,
    };
    let mut intervals = Vec::new();
    let mut page_writes = 0u64;
    while let Some(duration_us) = varint::read_u64_or_end(&mut input)? {
        let run_count = varint::read_u64(&mut input)?;
        let mut pages = Vec::new();
        let mut next_free = 0u64;
        for _ in 0..run_count {
            let gap = varint::read_u64(&mut input)?;
            let len_minus_one = varint::read_u64(&mut input)?;
            // `end` is exclusive: checked for the page count in u128, where a
            // gap or length near 2^64 cannot wrap around to a small page.
            let start = u128::from(next_free) + u128::from(gap);
            let end = start + u128::from(len_minus_one) + 1;
            if end > u128::from(header.page_count) {
                return Err(TraceError::Invalid(format!(
                    "interval {} writes page {}, beyond the {} pages of the guest",
                    intervals.len(),
                    end - 1,
                    header.page_count
                )));
            }
            let page =
                |p: u128| u32::try_from(p).expect("at most page_count, a u32 (checked above)");
            let (start, end) = (page(start), page(end));
            page_writes = page_writes.saturating_add(u64::from(end - start));
            if page_writes > max_page_writes {
                return Err(TraceError::TooLarge {
                    limit: max_page_writes,
                });
            }
            pages.extend(start..end);
            next_free = end.into();
        }
        intervals.push(WriteInterval::new(duration_us, pages));
    }
    Ok(MemoryTrace { header, intervals })
}

pub fn write_disk(trace: &DiskTrace, mut out: impl Write) -> Result<(), TraceError> {
    trace.validate()?;
    out.write_all(&DISK_MAGIC)?;
    out.write_all(&DISK_VERSION.to_le_bytes())?;
    out.write_all(&trace.header.disk_bytes.to_le_bytes())?;
    let (mut previous_time, mut previous_end) = (0u64, 0u64);
    for record in &trace.records {
        out.write_all(&[match record.op {
            DiskOp::Read => 0,
            DiskOp::Write => 1,
        }])?;
        varint::write_u64(&mut out, record.time_us - previous_time)?;
        let gap = i128::from(record.offset) - i128::from(previous_end);
        let gap = i64::try_from(gap).map_err(|_| {
            TraceError::Invalid(format!(
                "disk offset {} is too far from the previous request's end {previous_end} to encode",
                record.offset
            ))
        })?;
        varint::write_i64(&mut out, gap)?;
        varint::write_u64(&mut out, u64::from(record.length))?;
        previous_time = record.time_us;
        previous_end = record.offset + u64::from(record.length);
    }
    out.flush()?;
    Ok(())
}

pub fn read_disk(input: impl Read) -> Result<DiskTrace, TraceError> {
    let mut input = BufReader::new(input);
    read_header(&mut input, DISK_MAGIC, "disk", DISK_VERSION)?;
    let mut disk_bytes = [0u8; 8];
    read_exact(&mut input, &mut disk_bytes)?;
    let header = DiskTraceHeader {
        disk_bytes: u64::from_le_bytes(disk_bytes),
    };
    let mut records = Vec::new();
    let (mut time_us, mut previous_end) = (0u64, 0u64);
    while !input.fill_buf()?.is_empty() {
        let op = match varint::read_byte(&mut input)? {
            0 => DiskOp::Read,
            1 => DiskOp::Write,
            other => {
                return Err(TraceError::Invalid(format!(
                    "unknown disk operation {other}"
                )))
            }
        };
        time_us = time_us
            .checked_add(varint::read_u64(&mut input)?)
            .ok_or_else(|| {
                TraceError::Invalid(format!(
                    "record {} comes after the last microsecond a u64 counts",
                    records.len()
                ))
            })?;
        let offset = i128::from(previous_end) + i128::from(varint::read_i64(&mut input)?);
        let offset = u64::try_from(offset)
            .map_err(|_| TraceError::Invalid(format!("disk offset {offset} out of range")))?;
        let length = u32::try_from(varint::read_u64(&mut input)?)
            .map_err(|_| TraceError::Invalid("request longer than 4 GiB".into()))?;
        previous_end = offset.checked_add(u64::from(length)).ok_or_else(|| {
            TraceError::Invalid(format!(
                "record {} ends past byte 2^64 of any disk",
                records.len()
            ))
        })?;
        records.push(DiskAccess {
            time_us,
            op,
            offset,
            length,
        });
    }
    let trace = DiskTrace { header, records };
    trace.validate()?;
    Ok(trace)
}

fn read_header(
    input: &mut impl BufRead,
    magic: [u8; 8],
    kind: &'static str,
    supported: u16,
) -> Result<(), TraceError> {
    let mut found = [0u8; 8];
    read_exact(input, &mut found)?;
    if found != magic {
        return Err(TraceError::BadMagic {
            found: String::from_utf8_lossy(&found).into_owned(),
        });
    }
    let mut version = [0u8; 2];
    read_exact(input, &mut version)?;
    let version = u16::from_le_bytes(version);
    if version != supported {
        return Err(TraceError::UnsupportedVersion {
            kind,
            found: version.into(),
            supported: supported.into(),
        });
    }
    Ok(())
}

fn read_u32(input: &mut impl Read) -> Result<u32, TraceError> {
    let mut bytes = [0u8; 4];
    read_exact(input, &mut bytes)?;
    Ok(u32::from_le_bytes(bytes))
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), TraceError> {
    input.read_exact(buf).map_err(|err| match err.kind() {
        std::io::ErrorKind::UnexpectedEof => TraceError::Truncated,
        _ => TraceError::Io(err),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn memory_trace() -> MemoryTrace {
        MemoryTrace {
            header: MemoryTraceHeader {
                page_size: 4096,
                page_count: 1000,
            },
            intervals: vec![
                WriteInterval::new(100_000, vec![0, 1, 2, 3, 500, 999]),
                WriteInterval::new(100_000, vec![]),
                WriteInterval::new(250_000, vec![7]),
            ],
        }
    }

    #[test]
    fn clustered_writes_are_compact() {
        let trace = MemoryTrace {
            header: MemoryTraceHeader {
                page_size: 4096,
                page_count: 1 << 20,
            },
            intervals: vec![WriteInterval::new(1_000_000, (4096..8192).collect())],
        };
        let mut bytes = Vec::new();
        write_memory(&trace, &mut bytes).unwrap();
        // 18 header bytes, then duration (3), one run (1), gap (2), length (2).
        assert!(bytes.len() < 30, "{} bytes", bytes.len());
        assert_eq!(read_memory(&bytes[..]).unwrap(), trace);
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let mut bytes = Vec::new();
        write_memory(&memory_trace(), &mut bytes).unwrap();
        bytes[0] = b'X';
        let err = read_memory(&bytes[..]).unwrap_err();
        assert!(matches!(err, TraceError::BadMagic { .. }), "{err}");
        assert!(err.to_string().contains("\"XLLM-MEM\""), "{err}");
    }

    #[test]
    fn newer_version_is_rejected_with_both_numbers() {
        let mut bytes = Vec::new();
        write_memory(&memory_trace(), &mut bytes).unwrap();
        bytes[8] = 2;
        let err = read_memory(&bytes[..]).unwrap_err();
        assert!(matches!(
            err,
            TraceError::UnsupportedVersion {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert_eq!(
            err.to_string(),
            "memory trace version 2 is not supported (this build reads version 1)"
        );
    }

    #[test]
    fn a_disk_trace_is_not_read_as_memory() {
        let trace = DiskTrace {
            header: DiskTraceHeader { disk_bytes: 4096 },
            records: vec![],
        };
        let mut bytes = Vec::new();
        write_disk(&trace, &mut bytes).unwrap();
        assert!(matches!(
            read_memory(&bytes[..]),
            Err(TraceError::BadMagic { .. })
        ));
    }

    #[test]
    fn cut_off_trace_is_truncated() {
        let mut bytes = Vec::new();
        write_memory(&memory_trace(), &mut bytes).unwrap();
        bytes.pop();
        assert!(matches!(
            read_memory(&bytes[..]),
            Err(TraceError::Truncated)
        ));
    }

    /// A binary memory trace of a guest of `page_count` pages whose one
    /// interval holds `runs` as (gap, length - 1) varints.
    fn memory_bytes(page_count: u32, runs: &[(u64, u64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        MemoryTraceWriter::new(
            &mut bytes,
            MemoryTraceHeader {
                page_size: 4096,
                page_count,
            },
        )
        .unwrap();
        varint::write_u64(&mut bytes, 100_000).unwrap();
        varint::write_u64(&mut bytes, runs.len() as u64).unwrap();
        for &(gap, len_minus_one) in runs {
            varint::write_u64(&mut bytes, gap).unwrap();
            varint::write_u64(&mut bytes, len_minus_one).unwrap();
        }
        bytes
    }

    #[test]
    fn runs_past_the_end_of_u64_are_invalid() {
        for runs in [
            vec![(0, 0), (u64::MAX, 0)],
            vec![(u64::MAX - 1, 0)],
            vec![(0, u64::MAX)],
        ] {
            let err = read_memory(&memory_bytes(u32::MAX, &runs)[..]).unwrap_err();
            assert!(matches!(err, TraceError::Invalid(_)), "{runs:?}: {err}");
        }
    }

    #[test]
    fn a_few_bytes_cannot_ask_for_gigabytes_of_pages() {
        // One run of every page of a 16 TiB guest: 16 GiB of page numbers.
        let bytes = memory_bytes(u32::MAX, &[(0, u64::from(u32::MAX) - 1)]);
        assert!(bytes.len() < 30);
        let err = read_memory(&bytes[..]).unwrap_err();
        assert!(
            matches!(
                err,
                TraceError::TooLarge {
                    limit: MAX_PAGE_WRITES
                }
            ),
            "{err}"
        );
        // The limit counts every interval's writes.
        let bytes = memory_bytes(1000, &[(0, 999)]);
        let twice = [&bytes[..], &bytes[18..]].concat();
        assert_eq!(
            read_memory_with_limit(&bytes[..], 1000)
                .unwrap()
                .intervals
                .len(),
            1
        );
        assert!(matches!(
            read_memory_with_limit(&twice[..], 1999),
            Err(TraceError::TooLarge { limit: 1999 })
        ));
    }

    /// A binary disk trace of a `u64::MAX`-byte disk with `records` as
    /// (time delta, offset gap, length).
    fn disk_bytes(records: &[(u64, i64, u64)]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&DISK_MAGIC);
        bytes.extend_from_slice(&DISK_VERSION.to_le_bytes());
        bytes.extend_from_slice(&u64::MAX.to_le_bytes());
        for &(time_delta, gap, length) in records {
            bytes.push(1);
            varint::write_u64(&mut bytes, time_delta).unwrap();
            varint::write_i64(&mut bytes, gap).unwrap();
            varint::write_u64(&mut bytes, length).unwrap();
        }
        bytes
    }

    #[test]
    fn disk_times_and_ends_past_u64_are_invalid() {
        let near_end = i64::MAX;
        for records in [
            vec![(u64::MAX, 0, 1), (1, 0, 1)],
            // Ends at 2^64 + 1: the request runs past any disk.
            vec![(0, near_end, 0), (0, near_end, 3)],
            vec![(0, near_end, 0), (0, near_end, 0), (0, 0, 4096)],
        ] {
            let err = read_disk(&disk_bytes(&records)[..]).unwrap_err();
            assert!(matches!(err, TraceError::Invalid(_)), "{records:?}: {err}");
        }
    }

    proptest! {
        #[test]
        fn memory_round_trip(intervals in proptest::collection::vec(
            (0u64..10_000_000, proptest::collection::vec(0u32..5000, 0..200)), 0..20)) {
            let trace = MemoryTrace {
                header: MemoryTraceHeader { page_size: 4096, page_count: 5000 },
                intervals: intervals.into_iter().map(|(d, p)| WriteInterval::new(d, p)).collect(),
            };
            let mut bytes = Vec::new();
            write_memory(&trace, &mut bytes).unwrap();
            prop_assert_eq!(read_memory(&bytes[..]).unwrap(), trace);
        }

        #[test]
        fn disk_round_trip(records in proptest::collection::vec(
            (0u64..1000, any::<bool>(), 0u64..(1 << 30), 1u32..(1 << 20)), 0..50)) {
            let mut time_us = 0;
            let records = records.into_iter().map(|(dt, write, offset, length)| {
                time_us += dt;
                DiskAccess { time_us, op: if write { DiskOp::Write } else { DiskOp::Read }, offset, length }
            }).collect();
            let trace = DiskTrace { header: DiskTraceHeader { disk_bytes: 1 << 31 }, records };
            let mut bytes = Vec::new();
            write_disk(&trace, &mut bytes).unwrap();
            prop_assert_eq!(read_disk(&bytes[..]).unwrap(), trace);
        }
    }
}

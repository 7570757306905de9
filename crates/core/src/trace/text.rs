//! Readable text form, for eyes, diffs and hand-written test inputs.
//!
//! Memory:
//! ```text
//! mllm memory trace v1
//! page_size 4096
//! page_count 262144
//! # duration_us, then written pages; a-b is the inclusive range
//! 1000000 0-15 27 100-200
//! 1000000
//! ```
//! Disk:
//! ```text
//! mllm disk trace v1
//! disk_bytes 10737418240
//! # time_us op offset length
//! 1200 R 0 4096
//! 1350 W 65536 8192
//! ```
//! Blank lines and lines starting with `#` are ignored.

use std::io::{BufRead, BufReader, Read, Write};

use super::{
    DiskAccess, DiskOp, DiskTrace, DiskTraceHeader, MemoryTrace, MemoryTraceHeader, TraceError,
    WriteInterval, MAX_PAGE_WRITES,
};
use crate::memory::{total_pages, union, PageRange};

pub const MEMORY_HEADER: &str = "mllm memory trace";
pub const DISK_HEADER: &str = "mllm disk trace";
const VERSION: u32 = 1;

pub fn write_memory(trace: &MemoryTrace, mut out: impl Write) -> Result<(), TraceError> {
    writeln!(out, "{MEMORY_HEADER} v{VERSION}")?;
    writeln!(out, "page_size {}", trace.header.page_size)?;
    writeln!(out, "page_count {}", trace.header.page_count)?;
    writeln!(
        out,
        "# duration_us, then written pages; a-b is the inclusive range"
    )?;
    for interval in &trace.intervals {
        let mut line = interval.duration_us.to_string();
        let mut pages = interval.pages().iter().copied().peekable();
        while let Some(start) = pages.next() {
            let mut end = start;
            while pages.peek() == Some(&(end + 1)) {
                end = pages.next().unwrap_or(end);
            }
            line.push(' ');
            line.push_str(&if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            });
        }
        writeln!(out, "{line}")?;
    }
    out.flush()?;
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
    let mut lines = Lines::new(input);
    lines.expect_header(MEMORY_HEADER, "memory")?;
    let page_size = lines.keyed_value("page_size")?;
    let page_count = lines.keyed_value("page_count")?;
    let header = MemoryTraceHeader {
        page_size,
        page_count,
    };
    let mut intervals = Vec::new();
    let mut page_writes = 0u64;
    while let Some((line_number, line)) = lines.next_content()? {
        let syntax = |message: String| TraceError::Syntax {
            line: line_number,
            message,
        };
        let mut fields = line.split_whitespace();
        let duration_us = parse(fields.next().unwrap_or(""), "duration").map_err(syntax)?;
        // Ranges first, pages once they are merged: a line repeating a long
        // range must not expand it again and again.
        let mut ranges = Vec::new();
        for field in fields {
            let (start, end): (u32, u32) = match field.split_once('-') {
                Some((a, b)) => (
                    parse(a, "page").map_err(syntax)?,
                    parse(b, "page").map_err(syntax)?,
                ),
                None => {
                    let page = parse(field, "page").map_err(syntax)?;
                    (page, page)
                }
            };
            if start > end || end >= page_count {
                return Err(syntax(format!(
                    "page range {field} is empty or beyond the {page_count} pages of the guest"
                )));
            }
            ranges.push(PageRange::new(start, end + 1));
        }
        let ranges = union(&ranges, &[]);
        page_writes = page_writes.saturating_add(total_pages(&ranges));
        if page_writes > max_page_writes {
            return Err(TraceError::TooLarge {
                limit: max_page_writes,
            });
        }
        let pages = ranges.iter().flat_map(PageRange::pages).collect();
        intervals.push(WriteInterval::new(duration_us, pages));
    }
    Ok(MemoryTrace { header, intervals })
}

pub fn write_disk(trace: &DiskTrace, mut out: impl Write) -> Result<(), TraceError> {
    writeln!(out, "{DISK_HEADER} v{VERSION}")?;
    writeln!(out, "disk_bytes {}", trace.header.disk_bytes)?;
    writeln!(out, "# time_us op offset length")?;
    for record in &trace.records {
        let op = match record.op {
            DiskOp::Read => 'R',
            DiskOp::Write => 'W',
        };
        writeln!(
            out,
            "{} {op} {} {}",
            record.time_us, record.offset, record.length
        )?;
    }
    out.flush()?;
    Ok(())
}

pub fn read_disk(input: impl Read) -> Result<DiskTrace, TraceError> {
    let mut lines = Lines::new(input);
    lines.expect_header(DISK_HEADER, "disk")?;
    let disk_bytes = lines.keyed_value("disk_bytes")?;
    let mut records = Vec::new();
    while let Some((line_number, line)) = lines.next_content()? {
        let syntax = |message: String| TraceError::Syntax {
            line: line_number,
            message,
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [time, op, offset, length] = fields[..] else {
            return Err(syntax(format!(
                "expected `time_us op offset length`, found {line:?}"
            )));
        };
        let op = match op {
            "R" => DiskOp::Read,
            "W" => DiskOp::Write,
            other => return Err(syntax(format!("operation {other:?} is neither R nor W"))),
        };
        records.push(DiskAccess {
            time_us: parse(time, "time").map_err(syntax)?,
            op,
            offset: parse(offset, "offset").map_err(syntax)?,
            length: parse(length, "length").map_err(syntax)?,
        });
    }
    let trace = DiskTrace {
        header: DiskTraceHeader { disk_bytes },
        records,
    };
    trace.validate()?;
    Ok(trace)
}

fn parse<T: std::str::FromStr>(field: &str, what: &str) -> Result<T, String> {
    field
        .parse()
        .map_err(|_| format!("{what} {field:?} is not a valid number"))
}

/// Numbered lines with comments and blank lines skipped.
struct Lines<R> {
    input: BufReader<R>,
    number: usize,
}

impl<R: Read> Lines<R> {
    fn new(input: R) -> Self {
        Lines {
            input: BufReader::new(input),
            number: 0,
        }
    }

    fn next_content(&mut self) -> Result<Option<(usize, String)>, TraceError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.input.read_until(b'\n', &mut line)? == 0 {
                return Ok(None);
            }
            self.number += 1;
            let content = std::str::from_utf8(&line).map_err(|_| TraceError::Syntax {
                line: self.number,
                message: "the line is not UTF-8 text".into(),
            })?;
            let content = content.trim();
            if !content.is_empty() && !content.starts_with('#') {
                return Ok(Some((self.number, content.to_string())));
            }
        }
    }

    fn expect_header(&mut self, header: &str, kind: &'static str) -> Result<(), TraceError> {
        let (line, content) = self.next_content()?.ok_or(TraceError::Truncated)?;
        let version = content
            .strip_prefix(header)
            .and_then(|rest| rest.trim().strip_prefix('v'))
            .ok_or_else(|| TraceError::Syntax {
                line,
                message: format!("expected `{header} v{VERSION}`, found {content:?}"),
            })?;
        let version: u32 = version.parse().map_err(|_| TraceError::Syntax {
            line,
            message: format!("version {version:?} is not a number"),
        })?;
        if version != VERSION {
            return Err(TraceError::UnsupportedVersion {
                kind,
                found: version,
                supported: VERSION,
            });
        }
        Ok(())
    }

    fn keyed_value<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, TraceError> {
        let (line, content) = self.next_content()?.ok_or(TraceError::Truncated)?;
        let value = content
            .strip_prefix(key)
            .map(str::trim)
            .ok_or_else(|| TraceError::Syntax {
                line,
                message: format!("expected `{key} <number>`, found {content:?}"),
            })?;
        parse(value, key).map_err(|message| TraceError::Syntax { line, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{binary, read_trace, Encoding, Trace};

    const MEMORY_TEXT: &str = "mllm memory trace v1\npage_size 4096\npage_count 300\n\
        # comment\n1000000 0-15 27 100-200\n\n500000\n";

    #[test]
    fn memory_text_parses_ranges() {
        let trace = read_memory(MEMORY_TEXT.as_bytes()).unwrap();
        assert_eq!(trace.intervals.len(), 2);
        assert_eq!(trace.intervals[0].pages().len(), 16 + 1 + 101);
        assert!(trace.intervals[1].pages().is_empty());
        let mut text = Vec::new();
        write_memory(&trace, &mut text).unwrap();
        assert!(String::from_utf8(text.clone())
            .unwrap()
            .contains("\n1000000 0-15 27 100-200\n"));
        assert_eq!(read_memory(&text[..]).unwrap(), trace);
    }

    #[test]
    fn text_and_binary_convert_both_ways() {
        let trace = read_memory(MEMORY_TEXT.as_bytes()).unwrap();
        let mut bytes = Vec::new();
        binary::write_memory(&trace, &mut bytes).unwrap();
        let (Trace::Memory(back), Encoding::Binary) = read_trace(&bytes[..]).unwrap() else {
            panic!("binary memory trace not recognised");
        };
        let mut text = Vec::new();
        write_memory(&back, &mut text).unwrap();
        let (Trace::Memory(again), Encoding::Text) = read_trace(&text[..]).unwrap() else {
            panic!("text memory trace not recognised");
        };
        assert_eq!(again, trace);
    }

    #[test]
    fn disk_text_round_trips_and_reports_line_numbers() {
        let text = "mllm disk trace v1\ndisk_bytes 1048576\n# t op off len\n10 R 0 4096\n20 W 65536 8192\n";
        let trace = read_disk(text.as_bytes()).unwrap();
        assert_eq!(
            trace.records[1],
            DiskAccess {
                time_us: 20,
                op: DiskOp::Write,
                offset: 65536,
                length: 8192
            }
        );
        let mut out = Vec::new();
        write_disk(&trace, &mut out).unwrap();
        assert_eq!(read_disk(&out[..]).unwrap(), trace);

        let bad = "mllm disk trace v1\ndisk_bytes 1048576\n10 X 0 4096\n";
        let err = read_disk(bad.as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "line 3: operation \"X\" is neither R nor W"
        );
    }

    #[test]
    fn wrong_text_version_is_rejected() {
        let err = read_memory("mllm memory trace v7\npage_size 4096\n".as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            TraceError::UnsupportedVersion {
                found: 7,
                supported: 1,
                ..
            }
        ));
    }

    #[test]
    fn page_beyond_guest_is_a_syntax_error() {
        let text = "mllm memory trace v1\npage_size 4096\npage_count 10\n100 5-10\n";
        assert!(matches!(
            read_memory(text.as_bytes()),
            Err(TraceError::Syntax { line: 4, .. })
        ));
    }

    #[test]
    fn repeated_ranges_count_once_and_the_total_is_limited() {
        let line = format!("100{}\n", " 0-999".repeat(10_000));
        let text = format!("mllm memory trace v1\npage_size 4096\npage_count 1000\n{line}{line}");
        let trace = read_memory_with_limit(text.as_bytes(), 2000).unwrap();
        assert_eq!(trace.intervals[1].pages().len(), 1000);
        assert!(matches!(
            read_memory_with_limit(text.as_bytes(), 1999),
            Err(TraceError::TooLarge { limit: 1999 })
        ));
        let everything = "mllm memory trace v1\npage_size 4096\npage_count 4294967295\n\
            1 0-4294967294\n";
        assert!(matches!(
            read_memory(everything.as_bytes()),
            Err(TraceError::TooLarge {
                limit: MAX_PAGE_WRITES
            })
        ));
    }

    #[test]
    fn a_disk_request_ending_past_2_to_the_64_is_invalid() {
        let text = "mllm disk trace v1\ndisk_bytes 18446744073709551615\n\
            0 R 18446744073709551615 1\n";
        let err = read_disk(text.as_bytes()).unwrap_err();
        assert!(matches!(err, TraceError::Invalid(_)), "{err}");
    }

    #[test]
    fn a_line_that_is_not_text_is_named() {
        let bytes = b"mllm memory trace v1\npage_size 4096\npage_count 10\n100 \xff\n";
        let err = read_memory(&bytes[..]).unwrap_err();
        assert_eq!(err.to_string(), "line 4: the line is not UTF-8 text");
    }

    #[test]
    fn unknown_input_is_bad_magic() {
        let err = read_trace(&b"hello world"[..]).unwrap_err();
        assert!(err.to_string().contains("\"hello wo\""), "{err}");
    }
}

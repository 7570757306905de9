//! The line protocol between guest programs and the host.
//!
//! Every event is one line of ASCII text ending in `\n`, written with a single
//! `write` and flushed at once, because the host timestamps each line when it
//! arrives on the serial port. A tty may turn `\n` into `\r\n`; the parser
//! ignores surrounding whitespace, so either ending is accepted.
//!
//! | line                        | meaning                                                              |
//! |-----------------------------|----------------------------------------------------------------------|
//! | `HB <seq>`                  | heartbeat; `seq` starts at 0 and grows by exactly one per line       |
//! | `READY <name>`              | the workload `name` finished initialising (e.g. the initial fill)   |
//! | `OPS <ops> <elapsed_us>`    | `ops` operations completed in the last `elapsed_us` microseconds    |
//! | `VERIFY OK <items_checked>` | a full verification pass found all `items_checked` items intact     |
//! | `CORRUPT <detail>`          | a check failed just now; `detail` names the page or block and why   |
//! | `INFO <text>`               | anything else worth logging                                          |
//! | `EXIT <code>`               | a wrapped command ended; `code` is its exit status, 128+N on signal N |
//!
//! Numbers are unsigned decimal, except `EXIT`'s code, which is signed.
//! Free text (`name`, `detail`, `text`) is the rest of the line; control
//! characters in it are replaced by spaces when written, so it never spans lines.

use std::fmt;
use std::io::{self, Write};

/// One line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestEvent {
    Heartbeat { seq: u64 },
    Ready { name: String },
    Ops { ops: u64, elapsed_us: u64 },
    VerifyOk { items_checked: u64 },
    Corrupt { detail: String },
    Info { text: String },
    Exit { code: i32 },
}

/// Parses one received line; `None` for anything that is not a protocol line
/// (for example kernel messages on a shared console, or a line cut short).
pub fn parse_line(line: &str) -> Option<GuestEvent> {
    let line = line.trim();
    let (keyword, rest) = line.split_once(' ').unwrap_or((line, ""));
    let rest = rest.trim_start();
    match keyword {
        "HB" => Some(GuestEvent::Heartbeat {
            seq: single_number(rest)?,
        }),
        "READY" if !rest.is_empty() => Some(GuestEvent::Ready {
            name: rest.to_owned(),
        }),
        "OPS" => {
            let mut fields = rest.split_whitespace();
            let ops = fields.next()?.parse().ok()?;
            let elapsed_us = fields.next()?.parse().ok()?;
            fields
                .next()
                .is_none()
                .then_some(GuestEvent::Ops { ops, elapsed_us })
        }
        "VERIFY" => Some(GuestEvent::VerifyOk {
            items_checked: single_number(rest.strip_prefix("OK ")?)?,
        }),
        "CORRUPT" if !rest.is_empty() => Some(GuestEvent::Corrupt {
            detail: rest.to_owned(),
        }),
        "INFO" => Some(GuestEvent::Info {
            text: rest.to_owned(),
        }),
        "EXIT" => Some(GuestEvent::Exit {
            code: single_number(rest)?,
        }),
        _ => None,
    }
}

fn single_number<T: std::str::FromStr>(field: &str) -> Option<T> {
    let field = field.trim();
    if field.is_empty() || field.contains(char::is_whitespace) {
        return None;
    }
    field.parse().ok()
}

impl fmt::Display for GuestEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestEvent::Heartbeat { seq } => write!(f, "HB {seq}"),
            GuestEvent::Ready { name } => write!(f, "READY {}", OneLine(name)),
            GuestEvent::Ops { ops, elapsed_us } => write!(f, "OPS {ops} {elapsed_us}"),
            GuestEvent::VerifyOk { items_checked } => write!(f, "VERIFY OK {items_checked}"),
            GuestEvent::Corrupt { detail } => write!(f, "CORRUPT {}", OneLine(detail)),
            GuestEvent::Info { text } => write!(f, "INFO {}", OneLine(text)),
            GuestEvent::Exit { code } => write!(f, "EXIT {code}"),
        }
    }
}

/// Free text with control characters blanked, so one event stays one line.
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        for c in self.0.trim().chars() {
            f.write_char(if c.is_control() { ' ' } else { c })?;
        }
        Ok(())
    }
}

/// Writes events to a serial port (or any sink), one flushed line each.
#[derive(Debug)]
pub struct EventWriter<W: Write> {
    sink: W,
    line: String,
}

impl<W: Write> EventWriter<W> {
    pub fn new(sink: W) -> Self {
        EventWriter {
            sink,
            line: String::new(),
        }
    }

    /// Writes the event as one line with a single `write_all`, then flushes,
    /// so the host's arrival timestamp is the time of the event.
    pub fn emit(&mut self, event: &GuestEvent) -> io::Result<()> {
        use fmt::Write as _;
        self.line.clear();
        writeln!(self.line, "{event}").expect("formatting into a String cannot fail");
        self.sink.write_all(self.line.as_bytes())?;
        self.sink.flush()
    }

    pub fn info(&mut self, text: impl Into<String>) -> io::Result<()> {
        self.emit(&GuestEvent::Info { text: text.into() })
    }

    /// The sink, for tests that inspect what was written.
    pub fn sink(&self) -> &W {
        &self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<GuestEvent> {
        vec![
            GuestEvent::Heartbeat { seq: 0 },
            GuestEvent::Heartbeat { seq: u64::MAX },
            GuestEvent::Ready {
                name: "memload".into(),
            },
            GuestEvent::Ops {
                ops: 1234,
                elapsed_us: 100_012,
            },
            GuestEvent::VerifyOk {
                items_checked: 32768,
            },
            GuestEvent::Corrupt {
                detail: "page 17 (sweep): version 3, expected 4".into(),
            },
            GuestEvent::Info {
                text: "two  spaces kept".into(),
            },
            GuestEvent::Exit { code: -1 },
            GuestEvent::Exit { code: 137 },
        ]
    }

    #[test]
    fn every_event_round_trips_through_its_line() {
        for event in all_kinds() {
            let line = event.to_string();
            assert_eq!(parse_line(&line), Some(event), "line {line:?}");
        }
    }

    #[test]
    fn exact_wire_format() {
        assert_eq!(GuestEvent::Heartbeat { seq: 7 }.to_string(), "HB 7");
        assert_eq!(
            GuestEvent::Ops {
                ops: 5,
                elapsed_us: 100000
            }
            .to_string(),
            "OPS 5 100000"
        );
        assert_eq!(
            GuestEvent::VerifyOk { items_checked: 9 }.to_string(),
            "VERIFY OK 9"
        );
        assert_eq!(GuestEvent::Exit { code: 0 }.to_string(), "EXIT 0");
    }

    #[test]
    fn tty_line_endings_and_padding_are_accepted() {
        assert_eq!(
            parse_line("HB 42\r\n"),
            Some(GuestEvent::Heartbeat { seq: 42 })
        );
        assert_eq!(
            parse_line("  OPS 1 2 \r"),
            Some(GuestEvent::Ops {
                ops: 1,
                elapsed_us: 2
            })
        );
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for line in [
            "",
            "HB",
            "HB x",
            "HB -1",
            "HB 1 2",
            "OPS 1",
            "OPS 1 2 3",
            "VERIFY 12",
            "VERIFY FAIL 12",
            "READY",
            "CORRUPT",
            "EXIT",
            "EXIT 1.5",
            "[    1.234] Linux version 6.1",
            "hb 1",
        ] {
            assert_eq!(parse_line(line), None, "line {line:?}");
        }
    }

    #[test]
    fn free_text_cannot_break_a_line() {
        let event = GuestEvent::Info {
            text: "first\nsecond\rthird".into(),
        };
        let line = event.to_string();
        assert_eq!(line, "INFO first second third");
        assert_eq!(
            parse_line(&line),
            Some(GuestEvent::Info {
                text: "first second third".into()
            })
        );
    }

    #[test]
    fn writer_emits_one_newline_terminated_line_per_event() {
        let mut writer = EventWriter::new(Vec::new());
        writer.emit(&GuestEvent::Heartbeat { seq: 0 }).unwrap();
        writer.emit(&GuestEvent::Heartbeat { seq: 1 }).unwrap();
        writer.info("hello").unwrap();
        assert_eq!(writer.sink().as_slice(), b"HB 0\nHB 1\nINFO hello\n");
    }
}

//! Capture of a guest serial port with a host timestamp on every line.
//!
//! The heartbeat's gaps are measured on the host because the guest clock
//! stands still while the VM is paused: only the host sees the downtime.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::qmp::wall_clock_us;
use crate::QemuError;

#[derive(Debug, Clone)]
pub struct SerialLine {
    /// Host wall clock when the line's end arrived, microseconds since the epoch.
    pub at_us: u64,
    pub text: String,
    /// False for the bytes after the last newline: a migration can pause the
    /// guest in the middle of a line, whose rest is then printed by the
    /// destination (see [`continue_across_switch`]).
    pub complete: bool,
}

impl SerialLine {
    pub fn complete(at_us: u64, text: impl Into<String>) -> SerialLine {
        SerialLine {
            at_us,
            text: text.into(),
            complete: true,
        }
    }
}

/// The destination's lines as the guest printed them: a line the switch cut
/// in two (begun on the source, ended on the destination) is joined again,
/// so no message is lost between the two captures.
pub fn continue_across_switch(
    source: &[SerialLine],
    destination: &[SerialLine],
) -> Vec<SerialLine> {
    let mut lines = destination.to_vec();
    if let (Some(tail), Some(first)) = (source.last(), lines.first_mut()) {
        if !tail.complete {
            first.text.insert_str(0, &tail.text);
        }
    }
    lines
}

#[derive(Debug, Default)]
struct Received {
    lines: Vec<SerialLine>,
    tail: Vec<u8>,
    tail_at_us: u64,
}

impl Received {
    fn push(&mut self, bytes: &[u8], at_us: u64) {
        for &byte in bytes {
            if byte == b'\n' {
                let text = String::from_utf8_lossy(&self.tail)
                    .trim_end_matches('\r')
                    .to_owned();
                self.lines.push(SerialLine::complete(at_us, text));
                self.tail.clear();
            } else {
                self.tail.push(byte);
                self.tail_at_us = at_us;
            }
        }
    }

    fn snapshot(&self) -> Vec<SerialLine> {
        let mut lines = self.lines.clone();
        if !self.tail.is_empty() {
            lines.push(SerialLine {
                at_us: self.tail_at_us,
                text: String::from_utf8_lossy(&self.tail).into_owned(),
                complete: false,
            });
        }
        lines
    }
}

/// Lines read so far from one serial port (chardev socket), shared with the reader thread.
#[derive(Debug, Clone)]
pub struct SerialCapture {
    path: PathBuf,
    received: Arc<Mutex<Received>>,
}

impl SerialCapture {
    /// Connects to QEMU's chardev socket and starts reading; every line is also
    /// appended to `log` so a run leaves the raw console behind for debugging.
    pub fn start(socket: &Path, log: &Path, timeout: Duration) -> Result<SerialCapture, QemuError> {
        let err = |source| QemuError::Serial {
            path: socket.to_owned(),
            source,
        };
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(source) => return Err(err(source)),
            }
        };
        let mut log_file = std::fs::File::create(log).map_err(|source| QemuError::Serial {
            path: log.to_owned(),
            source,
        })?;
        let received: Arc<Mutex<Received>> = Arc::default();
        let sink = Arc::clone(&received);
        std::thread::Builder::new()
            .name("serial-reader".into())
            .spawn(move || {
                let mut stream = stream;
                let mut buffer = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buffer) {
                    let at_us = wall_clock_us();
                    let _ = log_file.write_all(&buffer[..n]);
                    sink.lock()
                        .expect("serial lines poisoned")
                        .push(&buffer[..n], at_us);
                }
            })
            .map_err(err)?;
        Ok(SerialCapture {
            path: socket.to_owned(),
            received,
        })
    }

    /// Every line so far; the last one is incomplete if the guest has not
    /// ended it yet.
    pub fn lines(&self) -> Vec<SerialLine> {
        self.received
            .lock()
            .expect("serial lines poisoned")
            .snapshot()
    }

    /// Waits until a line satisfying `matches` has arrived.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Result<SerialLine, QemuError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .received
                .lock()
                .expect("serial lines poisoned")
                .lines
                .iter()
                .find(|l| matches(&l.text))
            {
                return Ok(line.clone());
            }
            if Instant::now() >= deadline {
                return Err(QemuError::Timeout {
                    what: format!("{what} on serial {}", self.path.display()),
                    seconds: timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_cut_by_the_switch_is_joined_on_the_destination() {
        let mut source = Received::default();
        source.push(b"HB 1304\r\nHB 13", 10);
        let mut destination = Received::default();
        destination.push(b"05\nHB 1306\n", 20);
        let source = source.snapshot();
        assert_eq!(source.len(), 2);
        assert_eq!(source[0].text, "HB 1304");
        assert!(!source[1].complete);
        let joined = continue_across_switch(&source, &destination.snapshot());
        let texts: Vec<&str> = joined.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["HB 1305", "HB 1306"]);
    }

    #[test]
    fn complete_lines_are_left_alone() {
        let source = [SerialLine::complete(1, "HB 1")];
        let destination = [SerialLine::complete(2, "HB 2")];
        assert_eq!(
            continue_across_switch(&source, &destination)[0].text,
            "HB 2"
        );
    }
}

//! Capture of a guest serial port with a host timestamp on every line.
//!
//! The heartbeat's gaps are measured on the host because the guest clock
//! stands still while the VM is paused: only the host sees the downtime.

use std::io::{BufRead, BufReader, Write};
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
}

/// Lines read so far from one serial port (chardev socket), shared with the reader thread.
#[derive(Debug, Clone)]
pub struct SerialCapture {
    path: PathBuf,
    lines: Arc<Mutex<Vec<SerialLine>>>,
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
        let lines: Arc<Mutex<Vec<SerialLine>>> = Arc::default();
        let sink = Arc::clone(&lines);
        std::thread::Builder::new()
            .name("serial-reader".into())
            .spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut raw = Vec::new();
                while let Ok(n) = reader.read_until(b'\n', &mut raw) {
                    if n == 0 {
                        break;
                    }
                    let at_us = wall_clock_us();
                    let _ = log_file.write_all(&raw);
                    let text = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    sink.lock()
                        .expect("serial lines poisoned")
                        .push(SerialLine { at_us, text });
                    raw.clear();
                }
            })
            .map_err(err)?;
        Ok(SerialCapture {
            path: socket.to_owned(),
            lines,
        })
    }

    pub fn lines(&self) -> Vec<SerialLine> {
        self.lines.lock().expect("serial lines poisoned").clone()
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
                .lines
                .lock()
                .expect("serial lines poisoned")
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

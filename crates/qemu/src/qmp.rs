//! A small synchronous QMP client.
//!
//! QMP interleaves command replies with asynchronous events on one socket, so
//! a reader thread splits them: replies go to the caller waiting in
//! [`QmpClient::execute`], events are kept (with QEMU's own timestamp) so the
//! lab can measure downtime as the time from the source's `STOP` to the
//! destination's `RESUME`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::QemuError;

/// An asynchronous QMP event.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
    /// QEMU's wall-clock timestamp of the event, in microseconds since the epoch.
    pub timestamp_us: u64,
}

#[derive(Debug, Default)]
struct EventLog {
    events: Vec<QmpEvent>,
    closed: bool,
}

/// The command channel: a request and its reply happen under one lock, so
/// two threads sharing a client can never take each other's replies.
#[derive(Debug)]
struct Commands {
    writer: UnixStream,
    replies: Receiver<Value>,
}

#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    commands: Mutex<Commands>,
    events: Arc<(Mutex<EventLog>, Condvar)>,
    command_timeout: Duration,
}

impl QmpClient {
    /// Connects to a QMP unix socket, retrying until `timeout` while QEMU starts.
    pub fn connect(path: &Path, timeout: Duration) -> Result<QmpClient, QemuError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(source) => {
                    return Err(QemuError::QmpIo {
                        path: path.to_owned(),
                        source,
                    })
                }
            }
        };
        let io_err = |source| QemuError::QmpIo {
            path: path.to_owned(),
            source,
        };
        let reader = stream.try_clone().map_err(io_err)?;
        let (reply_tx, reply_rx) = mpsc::channel();
        let events: Arc<(Mutex<EventLog>, Condvar)> = Arc::default();
        let reader_events = Arc::clone(&events);
        std::thread::Builder::new()
            .name("qmp-reader".into())
            .spawn(move || read_messages(reader, reply_tx, reader_events))
            .map_err(io_err)?;
        let client = QmpClient {
            path: path.to_owned(),
            commands: Mutex::new(Commands {
                writer: stream,
                replies: reply_rx,
            }),
            events,
            command_timeout: Duration::from_secs(30),
        };
        // The greeting arrives as the first "reply"; it carries QEMU's version.
        client.receive_reply(
            &client.commands.lock().expect("qmp commands poisoned"),
            "greeting",
        )?;
        client.execute("qmp_capabilities", json!({}))?;
        Ok(client)
    }

    /// Runs a QMP command and returns its `return` value.
    pub fn execute(&self, command: &str, arguments: Value) -> Result<Value, QemuError> {
        let request = if arguments.as_object().is_some_and(|a| a.is_empty()) {
            json!({ "execute": command })
        } else {
            json!({ "execute": command, "arguments": arguments })
        };
        tracing::debug!(target: "qmp", path = %self.path.display(), %request);
        let mut commands = self.commands.lock().expect("qmp commands poisoned");
        let mut line = request.to_string();
        line.push('\n');
        commands
            .writer
            .write_all(line.as_bytes())
            .map_err(|source| QemuError::QmpIo {
                path: self.path.clone(),
                source,
            })?;
        let reply = self.receive_reply(&commands, command)?;
        drop(commands);
        if let Some(error) = reply.get("error") {
            return Err(QemuError::QmpCommand {
                command: command.to_owned(),
                class: error["class"].as_str().unwrap_or("?").to_owned(),
                desc: error["desc"].as_str().unwrap_or("?").to_owned(),
            });
        }
        Ok(reply.get("return").cloned().unwrap_or(Value::Null))
    }

    fn receive_reply(&self, commands: &Commands, what: &str) -> Result<Value, QemuError> {
        match commands.replies.recv_timeout(self.command_timeout) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Timeout) => Err(QemuError::Timeout {
                what: format!("QMP reply to `{what}`"),
                seconds: self.command_timeout.as_secs(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(QemuError::QmpProtocol(format!(
                "QEMU closed its QMP socket {} while `{what}` was pending (did it exit?)",
                self.path.display()
            ))),
        }
    }

    /// All events received so far, oldest first.
    pub fn events(&self) -> Vec<QmpEvent> {
        self.events
            .0
            .lock()
            .expect("qmp events poisoned")
            .events
            .clone()
    }

    /// Waits for the first event (already received or future) that `matches`.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&QmpEvent) -> bool,
    ) -> Result<QmpEvent, QemuError> {
        let (lock, arrived) = &*self.events;
        let deadline = Instant::now() + timeout;
        let mut log = lock.lock().expect("qmp events poisoned");
        loop {
            if let Some(event) = log.events.iter().find(|e| matches(e)) {
                return Ok(event.clone());
            }
            if log.closed {
                return Err(QemuError::QmpProtocol(format!(
                    "QEMU closed its QMP socket {} while waiting for {what}",
                    self.path.display()
                )));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(QemuError::Timeout {
                    what: what.to_owned(),
                    seconds: timeout.as_secs(),
                });
            }
            log = arrived
                .wait_timeout(log, deadline - now)
                .expect("qmp events poisoned")
                .0;
        }
    }
}

fn read_messages(
    stream: UnixStream,
    replies: mpsc::Sender<Value>,
    events: Arc<(Mutex<EventLog>, Condvar)>,
) {
    let (lock, arrived) = &*events;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<Value>(&line) else {
            tracing::warn!(target: "qmp", %line, "unparsable QMP message");
            continue;
        };
        if let Some(name) = message.get("event").and_then(Value::as_str) {
            let ts = &message["timestamp"];
            let timestamp_us = ts["seconds"].as_u64().unwrap_or(0) * 1_000_000
                + ts["microseconds"].as_u64().unwrap_or(0);
            let event = QmpEvent {
                name: name.to_owned(),
                data: message.get("data").cloned().unwrap_or(Value::Null),
                timestamp_us,
            };
            tracing::debug!(target: "qmp", event = %event.name, data = %event.data);
            lock.lock().expect("qmp events poisoned").events.push(event);
            arrived.notify_all();
        } else if replies.send(message).is_err() {
            break;
        }
    }
    lock.lock().expect("qmp events poisoned").closed = true;
    arrived.notify_all();
}

/// Microseconds since the epoch on the host clock, comparable with [`QmpEvent::timestamp_us`].
pub fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        // u64 microseconds last until the year 586 000.
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

//! QEMU's own migration, reduced to device state: with `x-ignore-shared` on
//! both QEMUs, guest RAM in the shared file is skipped (the agents move it),
//! and what remains (device state and ROMs, a few hundred KB) streams from
//! the source QEMU to a local listener of the source agent, across the agent
//! link, and into the destination QEMU's `migrate-incoming` port.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use mllm_qemu::QemuProcess;
use serde_json::{json, Value};

use crate::error::MigrationError;

type Result<T, E = MigrationError> = std::result::Result<T, E>;

/// Chunks of QEMU's stream relayed as one `DeviceState` frame each.
const CHUNK_BYTES: usize = 64 << 10;
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// Tells QEMU that the shared guest RAM is moved by someone else.
pub(crate) fn ignore_shared_ram(vm: &QemuProcess) -> Result<()> {
    vm.qmp
        .execute(
            "migrate-set-capabilities",
            json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
        )
        .map_err(|e| {
            MigrationError::qemu(
                format!("enabling x-ignore-shared on QEMU {}", vm.config.name),
                e,
            )
        })?;
    Ok(())
}

/// QEMU's migration status (`query-migrate`), with its error if it failed.
fn migration_status(vm: &QemuProcess) -> Result<(String, Value)> {
    let info = vm
        .qmp
        .execute("query-migrate", json!({}))
        .map_err(|e| MigrationError::qemu("asking QEMU how its migration goes", e))?;
    let status = info["status"].as_str().unwrap_or("none").to_owned();
    Ok((status, info))
}

/// Polls until QEMU's migration completes; fails naming QEMU's reason.
fn wait_for_completion(vm: &QemuProcess, side: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, info) = migration_status(vm)?;
        match status.as_str() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                return Err(MigrationError::qemu_status(format!(
                    "the {side} QEMU's device-state migration {status}: {}",
                    info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
                )))
            }
            _ if Instant::now() > deadline => {
                return Err(MigrationError::qemu_status(format!(
                    "the {side} QEMU's device-state migration did not complete within \
                     {timeout:?} (status {status})"
                )))
            }
            _ => std::thread::sleep(POLL_INTERVAL),
        }
    }
}

/// The source end: the source QEMU migrating into a local listener.
pub(crate) struct OutgoingDeviceState {
    listener: TcpListener,
}

impl OutgoingDeviceState {
    /// Starts QEMU's migration towards a fresh local listener.
    pub fn start(vm: &QemuProcess) -> Result<OutgoingDeviceState> {
        let listening =
            |e| MigrationError::io("listening for the source QEMU's device-state stream", e);
        let listener = TcpListener::bind("127.0.0.1:0").map_err(listening)?;
        let address = listener.local_addr().map_err(listening)?;
        vm.qmp
            .execute("migrate", json!({"uri": format!("tcp:{address}")}))
            .map_err(|e| {
                MigrationError::qemu("starting the source QEMU's device-state migration", e)
            })?;
        Ok(OutgoingDeviceState { listener })
    }

    /// Hands QEMU's stream to `forward` chunk by chunk until QEMU ends it
    /// and reports completion; returns the stream's length.
    pub fn relay(
        self,
        vm: &QemuProcess,
        timeout: Duration,
        mut forward: impl FnMut(Vec<u8>) -> Result<()>,
    ) -> Result<u64> {
        let reading = |e| MigrationError::io("reading the source QEMU's device-state stream", e);
        let mut stream = self.accept(vm, timeout)?;
        stream.set_read_timeout(Some(timeout)).map_err(reading)?;
        let mut total = 0u64;
        let mut chunk = vec![0; CHUNK_BYTES];
        loop {
            let read = match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(reading(e)),
            };
            total += read as u64;
            forward(chunk[..read].to_vec())?;
        }
        wait_for_completion(vm, "source", timeout)?;
        Ok(total)
    }

    /// Waits for QEMU to connect, watching for a migration that fails first.
    fn accept(&self, vm: &QemuProcess, timeout: Duration) -> Result<TcpStream> {
        let accepting =
            |e| MigrationError::io("accepting the source QEMU's migration connection", e);
        self.listener.set_nonblocking(true).map_err(accepting)?;
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(accepting)?;
                    return Ok(stream);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(accepting(e)),
            }
            let (status, info) = migration_status(vm)?;
            if matches!(status.as_str(), "failed" | "cancelled") {
                return Err(MigrationError::qemu_status(format!(
                    "the source QEMU's device-state migration {status} before connecting: {}",
                    info["error-desc"].as_str().unwrap_or("QEMU gave no reason")
                )));
            }
            if Instant::now() > deadline {
                return Err(MigrationError::qemu_status(format!(
                    "the source QEMU did not connect its migration stream within {timeout:?}"
                )));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}

/// The destination end: the destination QEMU (started with `-incoming
/// defer`) listening on a local port the agent writes the stream into.
pub(crate) struct IncomingDeviceState {
    address: SocketAddr,
    stream: Option<TcpStream>,
    written: u64,
}

impl IncomingDeviceState {
    /// Makes the destination QEMU listen on a port of its choosing.
    pub fn listen(vm: &QemuProcess) -> Result<IncomingDeviceState> {
        ignore_shared_ram(vm)?;
        vm.qmp
            .execute("migrate-incoming", json!({"uri": "tcp:127.0.0.1:0"}))
            .map_err(|e| {
                MigrationError::qemu("making the destination QEMU listen for device state", e)
            })?;
        let (_, info) = migration_status(vm)?;
        let port = info["socket-address"]
            .as_array()
            .and_then(|addresses| addresses.first())
            .and_then(|address| address["port"].as_str())
            .and_then(|port| port.parse::<u16>().ok())
            .ok_or_else(|| {
                MigrationError::qemu_status(format!(
                    "the destination QEMU did not say which port it listens on: {info}"
                ))
            })?;
        Ok(IncomingDeviceState {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            stream: None,
            written: 0,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => self
                .stream
                .insert(TcpStream::connect(self.address).map_err(|e| {
                    MigrationError::io("connecting to the destination QEMU's migration port", e)
                })?),
        };
        stream
            .write_all(chunk)
            .map_err(|e| MigrationError::io("writing device state into the destination QEMU", e))?;
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Ends the stream and waits until QEMU has loaded it.
    pub fn finish(mut self, vm: &QemuProcess, total_bytes: u64, timeout: Duration) -> Result<()> {
        if self.written != total_bytes {
            return Err(MigrationError::Invalid(format!(
                "device state incomplete: the source sent {total_bytes} bytes, {} arrived",
                self.written
            )));
        }
        if let Some(stream) = self.stream.take() {
            stream.shutdown(Shutdown::Write).map_err(|e| {
                MigrationError::io("ending the destination QEMU's device-state stream", e)
            })?;
        }
        wait_for_completion(vm, "destination", timeout)
    }
}

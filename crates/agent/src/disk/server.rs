//! One disk served to the local QEMU over NBD on a unix socket.

use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use mllm_nbd::{BlockStore, Server, ShutdownHandle};

use super::TrackedDisk;
use crate::error::MigrationError;

/// An NBD server for one [`TrackedDisk`], on a thread of its own until
/// dropped. QEMU may connect, disconnect and reconnect at any time.
#[derive(Debug)]
pub struct DiskServer {
    disk: Arc<TrackedDisk>,
    socket: PathBuf,
    shutdown: ShutdownHandle,
    thread: Option<JoinHandle<()>>,
}

impl DiskServer {
    /// Serves `disk` as the NBD export `export` on a new unix socket at
    /// `socket`, replacing a socket file left there by an agent that has
    /// gone (a live server's socket, or any other kind of file there, is an
    /// error).
    pub fn start(
        disk: Arc<TrackedDisk>,
        socket: &Path,
        export: &str,
    ) -> Result<DiskServer, MigrationError> {
        let failed = |error| {
            MigrationError::io(
                format!(
                    "serving disk {} over NBD at {}",
                    disk.path().display(),
                    socket.display()
                ),
                error,
            )
        };
        let store: Arc<dyn BlockStore> = Arc::<TrackedDisk>::clone(&disk);
        let server = Server::new(export, store).map_err(|error| failed(io::Error::other(error)))?;
        remove_stale_socket(socket).map_err(failed)?;
        let listener = UnixListener::bind(socket).map_err(failed)?;
        let shutdown = server.shutdown_handle();
        let export_name = export.to_owned();
        let thread = thread::Builder::new()
            .name(format!("nbd-{export}"))
            .spawn(move || {
                if let Err(error) = server.serve_unix(listener) {
                    // Debug: the display drops the system's error under it.
                    tracing::error!(export = %export_name, "NBD server stopped: {error:?}");
                }
            });
        let thread = match thread {
            Ok(thread) => thread,
            Err(error) => {
                let _ = fs::remove_file(socket);
                return Err(failed(error));
            }
        };
        Ok(DiskServer {
            disk,
            socket: socket.to_owned(),
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn disk(&self) -> &Arc<TrackedDisk> {
        &self.disk
    }
}

/// Stops accepting, lets QEMU's requests already read be answered, ends
/// every connection and removes the socket.
impl Drop for DiskServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!(socket = %self.socket.display(), "the NBD server thread panicked");
            }
        }
        if let Err(error) = fs::remove_file(&self.socket) {
            tracing::warn!(socket = %self.socket.display(), "NBD socket not removed: {error}");
        }
    }
}

/// Removes the socket file at `socket` unless something still listens on it:
/// taking over a live agent's socket would cut its QEMU off its disk.
fn remove_stale_socket(socket: &Path) -> io::Result<()> {
    match fs::symlink_metadata(socket) {
        Ok(metadata) if metadata.file_type().is_socket() => {
            if UnixStream::connect(socket).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another server listens on this socket",
                ));
            }
            fs::remove_file(socket)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    }
}

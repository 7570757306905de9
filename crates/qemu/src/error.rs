use std::path::PathBuf;

/// Everything that can go wrong while driving QEMU, each naming its cause.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error(
        "QEMU binary `{binary}` not found; install QEMU 10.0 with `sudo scripts/install-deps.sh` \
         (Debian: apt-get install -t bookworm-backports qemu-system-x86 qemu-utils)"
    )]
    NotInstalled { binary: String },
    #[error("QEMU at `{binary}` is version {found}; mllm needs 10.0 or newer (run scripts/install-deps.sh)")]
    TooOld { binary: String, found: String },
    #[error("failed to start QEMU")]
    Spawn(#[source] std::io::Error),
    #[error("QEMU exited during start-up ({status}); its stderr said: {stderr}")]
    EarlyExit { status: String, stderr: String },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
    #[error("QMP I/O on {path}")]
    QmpIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP protocol error: {0}")]
    QmpProtocol(String),
    #[error("QMP command `{command}` failed: {class}: {desc}")]
    QmpCommand {
        command: String,
        class: String,
        desc: String,
    },
    #[error("serial capture on {path}")]
    Serial {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

//! The control socket, reachable by its owner only: whoever can connect can
//! migrate the agent's VMs away. The socket is created mode 0600, in a
//! directory that nobody else can replace it in: one owned by this user or
//! root and writable by its owner only, or sticky like `/tmp` (others then
//! cannot remove or rename what is ours). The agent refuses to start
//! otherwise.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Binds the control socket at `path`, creating its directory (mode 0700)
/// if missing. Call it before the agent starts threads: it sets the
/// process's umask for the moment of the bind.
pub fn bind(path: &Path) -> Result<UnixListener> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| {
                format!("creating the control socket's directory {}", dir.display())
            })?;
    }
    check_directory(dir)?;
    remove_stale(path)?;
    // No moment where others may connect: the socket is born 0600.
    // SAFETY: umask(2) only swaps the process's file mode mask.
    let previous = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the mask.
    unsafe { libc::umask(previous) };
    let listener = bound.with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making control socket {} private", path.display()))?;
    Ok(listener)
}

/// Refuses a directory where another user could swap the socket.
fn check_directory(dir: &Path) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("checking the control socket's directory {}", dir.display()))?;
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me && meta.uid() != 0 {
        bail!(
            "the control socket's directory {} belongs to user {}, not to this user ({me}) or \
             root: another user could replace the socket; choose another --control",
            dir.display(),
            meta.uid()
        );
    }
    let mode = meta.mode();
    let sticky = mode & 0o1000 != 0;
    if mode & 0o022 != 0 && !sticky {
        bail!(
            "the control socket's directory {} is writable by others (mode {:o}): another user \
             could replace the socket; make it writable by its owner only or choose another \
             --control",
            dir.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Removes the socket a stopped agent left; refuses to touch anything else,
/// or the socket of an agent that still listens.
fn remove_stale(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket: not replacing it with the control socket",
            path.display()
        );
    }
    if UnixStream::connect(path).is_ok() {
        bail!(
            "another agent listens on the control socket {}: stop it first",
            path.display()
        );
    }
    std::fs::remove_file(path)
        .with_context(|| format!("removing the stale control socket {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn the_socket_is_private_in_a_private_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/mllm/agent.sock");
        let listener = bind(&path).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(mode_of(path.parent().unwrap()), 0o700);
        // A live agent's socket is not taken over; a dead one's is.
        let error = format!("{:#}", bind(&path).unwrap_err());
        assert!(error.contains("another agent listens"), "{error}");
        drop(listener);
        bind(&path).unwrap();
    }

    #[test]
    fn a_directory_others_may_write_is_refused_unless_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = format!("{:#}", bind(&open.join("agent.sock")).unwrap_err());
        assert!(
            error.contains("is writable by others (mode 777)"),
            "{error}"
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        bind(&open.join("agent.sock")).unwrap();
        assert_eq!(mode_of(&open.join("agent.sock")), 0o600);
    }

    #[test]
    fn a_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, "precious").unwrap();
        let error = format!("{:#}", bind(&path).unwrap_err());
        assert!(error.contains("is not a socket"), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}

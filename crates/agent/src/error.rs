//! Why a migration failed, sorted by what a caller can do about it: retry
//! elsewhere (refused, link), fix the setup (invalid, QEMU, tracker), give
//! the guest more time or a post-copy policy (not converging), or suspect
//! the peer (protocol, aborted). The messages keep the operator's wording;
//! the variants are for code that must react. Context added on the way up
//! ([`Context::during`]) wraps an error without hiding its kind
//! ([`MigrationError::root`]).

use std::fmt;
use std::io;
use std::time::Duration;

use mllm_core::trace::TraceError;
use mllm_faults::FaultError;
use mllm_qemu::QemuError;
use mllm_tracker::TrackerError;
use mllm_wire::{Role, WireError};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrationError {
    /// The settings, the VMs or their files do not allow this migration;
    /// nothing was sent.
    #[error("{0}")]
    Invalid(String),

    /// The destination refused the request.
    #[error("the destination refused the migration: {reason}")]
    Refused { reason: String },

    /// The peer agent gave up and said why.
    #[error("the {peer} aborted the migration: {reason}")]
    PeerAborted { peer: Role, reason: String },

    /// The link to the peer was cut, closed, or went silent.
    #[error(transparent)]
    Link(#[from] LinkError),

    /// The peer is incompatible, its data corrupted, or it broke the
    /// conversation's order.
    #[error(transparent)]
    Protocol(#[from] WireError),

    /// Pre-copy hit a bound with the downtime target out of reach.
    #[error("{0}")]
    NotConverging(String),

    /// A QEMU did not do what the migration needed of it.
    #[error("{what}")]
    Qemu {
        what: String,
        #[source]
        source: Option<QemuError>,
    },

    /// The guest's writes could not be tracked.
    #[error("tracking the guest's memory writes")]
    Tracker(#[from] TrackerError),

    /// Post-copy: the destination could not be woken for, or fill, the
    /// pages it still lacks.
    #[error("post-copy page faults")]
    Faults(#[from] FaultError),

    /// The destination found no post-copy to resume under the source's id.
    #[error("the destination refused to resume the post-copy: {reason}")]
    ResumeRefused { reason: String },

    /// Destination, post-copy: the source stayed unreachable for the
    /// recovery timeout. The VM keeps running here, but any vCPU that
    /// touches one of the missing pages (and any disk request on a missing
    /// block) waits for good.
    #[error("the guest cannot continue: {missing_pages} memory pages and {missing_blocks} disk blocks it has not received are only on the source host {source_host}, unreachable for {unreachable_for:.1?}; vCPUs touching them stay paused and disk requests on them fail; the VM is left as it is")]
    SourceUnreachable {
        missing_pages: u64,
        missing_blocks: u64,
        source_host: String,
        unreachable_for: Duration,
        #[source]
        last_failure: Box<MigrationError>,
    },

    /// Source, post-copy: the destination stayed unreachable for the
    /// recovery timeout.
    #[error("the destination agent has been unreachable for {unreachable_for:.1?} during post-copy: the guest there cannot continue once it touches a page it has not received, and this host still holds every such page in the VM's RAM file (and disk)")]
    DestinationUnreachable {
        unreachable_for: Duration,
        #[source]
        last_failure: Box<MigrationError>,
    },

    /// Test mode: the destination's memory is not the source's.
    #[error("{0}")]
    MemoryMismatch(String),

    /// The memory trace asked for could not be written.
    #[error("{what}")]
    Trace {
        what: String,
        #[source]
        source: TraceError,
    },

    /// A local file or socket failed.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    /// `what` was under way when `source` happened.
    #[error("{what}")]
    During {
        what: String,
        #[source]
        source: Box<MigrationError>,
    },
}

impl MigrationError {
    /// The error under every layer of context: what kind of failure it was.
    pub fn root(&self) -> &MigrationError {
        match self {
            MigrationError::During { source, .. } => source.root(),
            other => other,
        }
    }

    /// The message with every cause after it, as a peer or a log gets it.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }

    /// This error, as the cause of what was under way.
    pub(crate) fn during(self, what: impl Into<String>) -> MigrationError {
        MigrationError::During {
            what: what.into(),
            source: Box::new(self),
        }
    }

    pub(crate) fn qemu(what: impl Into<String>, source: QemuError) -> MigrationError {
        MigrationError::Qemu {
            what: what.into(),
            source: Some(source),
        }
    }

    /// A QEMU failure QEMU itself reported in a status, not as an error.
    pub(crate) fn qemu_status(what: impl Into<String>) -> MigrationError {
        MigrationError::Qemu {
            what: what.into(),
            source: None,
        }
    }

    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> MigrationError {
        MigrationError::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether this failure is the link's (cut, closed, silent), which a
    /// post-copy survives by reconnecting, rather than either agent's.
    pub(crate) fn is_link_failure(&self) -> bool {
        matches!(self.root(), MigrationError::Link(_))
    }

    /// Wraps a failure of the agent link as what it means to the migration.
    pub(crate) fn link(error: WireError, peer: Role, timeout: Duration) -> MigrationError {
        let kind = match error {
            WireError::Closed => LinkFailure::Closed,
            WireError::Truncated { within } => LinkFailure::Cut { within },
            WireError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                LinkFailure::Silent { timeout }
            }
            WireError::Io(io) => LinkFailure::Io(io),
            // Corruption and incompatibilities: the wire's own wording names them.
            other => return MigrationError::Protocol(other),
        };
        MigrationError::Link(LinkError { peer, kind })
    }
}

/// A failure of the link between the agents.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LinkError {
    /// The agent at the other end.
    pub peer: Role,
    pub kind: LinkFailure,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum LinkFailure {
    /// The peer closed the link between two frames.
    Closed,
    /// The link ended inside a frame or the handshake.
    Cut {
        within: String,
    },
    /// Nothing arrived or left for the link timeout.
    Silent {
        timeout: Duration,
    },
    Io(io::Error),
}

impl LinkError {
    fn describe(&self) -> String {
        let peer = PeerAgent(self.peer);
        match &self.kind {
            LinkFailure::Closed => {
                format!("the {peer} closed the link (it exited, was killed, or the link was cut)")
            }
            LinkFailure::Cut { within } => {
                format!("the link to the {peer} was cut within {within}")
            }
            LinkFailure::Silent { timeout } => {
                format!("the link to the {peer} was silent for {timeout:?}: considered dead")
            }
            LinkFailure::Io(io) => format!("the link to the {peer} failed: {io}"),
        }
    }
}

/// "source agent" or "destination agent".
struct PeerAgent(Role);

impl fmt::Display for PeerAgent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} agent", self.0)
    }
}

/// Adds what was under way to an error, keeping its kind.
pub(crate) trait Context<T> {
    fn during(self, what: impl Into<String>) -> Result<T, MigrationError>;
    fn during_with(self, what: impl FnOnce() -> String) -> Result<T, MigrationError>;
}

impl<T, E: Into<MigrationError>> Context<T> for Result<T, E> {
    fn during(self, what: impl Into<String>) -> Result<T, MigrationError> {
        self.map_err(|error| error.into().during(what))
    }

    fn during_with(self, what: impl FnOnce() -> String) -> Result<T, MigrationError> {
        self.map_err(|error| error.into().during(what()))
    }
}

/// What a failed migration did with the source VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The migration never paused it.
    NeverStopped,
    /// It was paused before the migration and stays so.
    StaysPaused,
    /// The migration paused it and resumed it.
    Resumed,
    /// The migration paused it and could not resume it: an operator must.
    ResumeFailed(String),
    /// The destination runs the VM (post-copy, or the failure came after the
    /// destination reported it running): the source VM stays stopped and
    /// must never run again.
    DestinationRuns,
    /// The source handed the VM over, then lost the destination before it
    /// said whether the VM runs there: the source VM stays paused, since
    /// resuming it could run the guest twice.
    Undecided,
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recovery::NeverStopped => f.write_str("the source VM never stopped"),
            Recovery::StaysPaused => f.write_str("the source VM stays paused, as it was before"),
            Recovery::Resumed => f.write_str("the source VM was resumed"),
            Recovery::ResumeFailed(error) => {
                write!(f, "the source VM could NOT be resumed: {error}")
            }
            Recovery::DestinationRuns => f.write_str(
                "the VM runs on the destination, so the source VM stays stopped; pages the \
                 destination had not received are still in the source's RAM file",
            ),
            Recovery::Undecided => f.write_str(
                "the VM was handed over, but the destination never confirmed it runs there: the \
                 source VM stays paused and holds the whole guest; resume it only once the \
                 destination VM is known not to run",
            ),
        }
    }
}

/// A migration that failed on the source, and what became of the source VM.
#[derive(Debug, thiserror::Error)]
#[error("migration of VM {vm} failed; {recovery}")]
pub struct SourceError {
    pub vm: String,
    pub recovery: Recovery,
    /// Boxed: the report of a failure, not a hot path, and it keeps
    /// `Result<_, SourceError>` small.
    #[source]
    pub cause: Box<MigrationError>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_the_wording() {
        let cut: Result<(), MigrationError> = Err(MigrationError::link(
            WireError::Closed,
            Role::Destination,
            Duration::from_secs(30),
        ));
        let error = cut.during("sending the migration request").unwrap_err();
        assert!(matches!(error.root(), MigrationError::Link(_)));
        let failed = SourceError {
            vm: "web".into(),
            recovery: Recovery::Resumed,
            cause: Box::new(error),
        };
        assert_eq!(
            failed.cause.chain(),
            format!(
                "{:#}",
                anyhow::Error::new(
                    MigrationError::link(
                        WireError::Closed,
                        Role::Destination,
                        Duration::from_secs(30)
                    )
                    .during("sending the migration request")
                )
            )
        );
        assert_eq!(
            format!("{:#}", anyhow::Error::new(failed)),
            "migration of VM web failed; the source VM was resumed: sending the migration \
             request: the destination agent closed the link (it exited, was killed, or the \
             link was cut)"
        );
    }

    #[test]
    fn corruption_is_a_protocol_error_not_a_link_failure() {
        let error = MigrationError::link(
            WireError::VersionMismatch { ours: 2, theirs: 3 },
            Role::Source,
            Duration::from_secs(1),
        );
        assert!(matches!(error, MigrationError::Protocol(_)));
    }
}

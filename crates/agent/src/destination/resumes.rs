//! The post-copies this agent serves that a new connection may resume,
//! found by the migration's id. A receiver registers its post-copy once it
//! has the hand-over (only then does the VM run here, so only then is
//! there something to resume); the connection accepting side hands a
//! `ResumeRequest`'s link to it. A post-copy that finished stays known, so
//! a source that lost the receipt with the link hears that nothing is
//! missing instead of a refusal.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::Shutdown;

use mllm_tls::PeerStream;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use mllm_wire::{Conversation, Message, MigrationReject, PostcopyComplete, ResumeAccept};

use crate::error::MigrationError;
use crate::peer::PeerLink;

/// Post-copies in progress (and finished) on this agent, by migration id.
/// Clones share the registry: give every incoming connection's
/// [`DestinationSettings`](super::DestinationSettings) the same one.
#[derive(Clone, Default)]
pub struct PostcopyResumes {
    state: Arc<Mutex<Registry>>,
}

#[derive(Default)]
struct Registry {
    serving: HashMap<u128, Serving>,
    finished: HashSet<u128>,
}

/// A post-copy in progress.
struct Serving {
    vm_name: String,
    /// Where resumed links go.
    arrivals: Sender<ResumedLink>,
    /// The connection it serves now, shut down when a newer one arrives: a
    /// silent link may look alive here while the source already knows it
    /// dead.
    current: PeerStream,
}

/// A new connection whose source asked to resume, its `ResumeRequest`
/// read and answered by nobody yet.
pub(super) struct ResumedLink {
    pub link: PeerLink,
    pub conversation: Conversation,
}

impl fmt::Debug for PostcopyResumes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registry = self.lock();
        f.debug_struct("PostcopyResumes")
            .field("serving", &registry.serving.len())
            .field("finished", &registry.finished.len())
            .finish()
    }
}

impl PostcopyResumes {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // Maps and sets, whole after any panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on a resume of migration `id` comes to the returned
    /// registration; `current` is the connection serving it now.
    pub(super) fn register(&self, id: u128, vm_name: &str, current: PeerStream) -> Registration {
        let (arrivals, arrived) = channel();
        self.lock().serving.insert(
            id,
            Serving {
                vm_name: vm_name.to_owned(),
                arrivals,
                current,
            },
        );
        Registration {
            resumes: self.clone(),
            id,
            arrived,
            finished: false,
        }
    }

    /// Hands a resumed link to the post-copy it names; returns the VM's
    /// name. A finished post-copy is answered here (nothing is missing):
    /// `None`. Fails (the source told why) when no such post-copy is known.
    pub(super) fn route(
        &self,
        id: u128,
        mut resumed: ResumedLink,
    ) -> Result<Option<String>, MigrationError> {
        let registry = self.lock();
        if let Some(serving) = registry.serving.get(&id) {
            // Unblocks the receiver if it still reads the old link.
            let _ = serving.current.shutdown(Shutdown::Both);
            let vm_name = serving.vm_name.clone();
            if serving.arrivals.send(resumed).is_ok() {
                return Ok(Some(vm_name));
            }
            return Err(MigrationError::Invalid(format!(
                "the post-copy of VM {vm_name} ended as its source reconnected"
            )));
        }
        let finished = registry.finished.contains(&id);
        drop(registry);
        let answer = if finished {
            vec![
                Message::ResumeAccept(ResumeAccept {
                    pages: vec![],
                    blocks: vec![],
                }),
                Message::PostcopyComplete(PostcopyComplete),
            ]
        } else {
            vec![Message::MigrationReject(MigrationReject {
                reason: format!(
                    "no post-copy with id {id:032x} runs on this agent: it never had the \
                     hand-over, or gave up waiting for the source"
                ),
            })]
        };
        for message in &answer {
            resumed.conversation.sending(message)?;
            resumed
                .link
                .writer
                .send(message)
                .map_err(|e| resumed.link.failure(e))?;
        }
        if finished {
            // The source's release is all that is left; nothing waits for it.
            Ok(None)
        } else {
            Err(MigrationError::Invalid(format!(
                "a source asked to resume post-copy {id:032x}, which this agent does not serve"
            )))
        }
    }
}

/// A registered post-copy; unregisters when dropped.
pub(super) struct Registration {
    resumes: PostcopyResumes,
    id: u128,
    arrived: Receiver<ResumedLink>,
    finished: bool,
}

impl Registration {
    /// The newest resumed link to arrive within `timeout`, if any.
    pub fn wait(&self, timeout: Duration) -> Option<ResumedLink> {
        let mut newest = match self.arrived.recv_timeout(timeout) {
            Ok(resumed) => resumed,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        };
        // An older attempt of the source's is dropped: it retries only
        // after giving up on it.
        while let Ok(newer) = self.arrived.try_recv() {
            newest = newer;
        }
        Some(newest)
    }

    /// The post-copy goes on over `current`.
    pub fn serving_on(&self, current: PeerStream) {
        if let Some(serving) = self.resumes.lock().serving.get_mut(&self.id) {
            serving.current = current;
        }
    }

    /// Every page and block arrived: a later resume hears so.
    pub fn finished(&mut self) {
        self.finished = true;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut registry = self.resumes.lock();
        registry.serving.remove(&self.id);
        if self.finished {
            registry.finished.insert(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use mllm_wire::{
        handshake, Capabilities, FrameReader, FrameWriter, Hello, ResumeRequest, Role,
    };

    use super::*;
    use crate::destination::{accept_incoming, DestinationSettings, Incoming};

    /// A source that asks to resume `id`; returns the destination's answers
    /// until it closes the link, and what the destination made of it.
    fn resume(
        settings: &DestinationSettings,
        id: u128,
    ) -> (Vec<Message>, Result<Incoming, MigrationError>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let source = std::thread::spawn(move || {
            let mut stream = TcpStream::connect(address).unwrap();
            let hello = Hello {
                role: Role::Source,
                capabilities: Capabilities::all(),
            };
            handshake(&mut stream, &hello).unwrap();
            FrameWriter::new(&stream)
                .send(&ResumeRequest { migration_id: id }.into())
                .unwrap();
            let mut reader = FrameReader::new(&stream);
            std::iter::from_fn(|| reader.recv().ok()).collect::<Vec<_>>()
        });
        let (stream, _) = listener.accept().unwrap();
        // The link closes once whoever took it is done: the source then
        // has every answer.
        let incoming = accept_incoming(stream, settings);
        (source.join().unwrap(), incoming)
    }

    #[test]
    fn a_resume_goes_to_its_post_copy_and_an_unknown_or_finished_one_is_answered() {
        let settings = DestinationSettings::default();
        let (answers, incoming) = resume(&settings, 7);
        assert!(
            matches!(answers.as_slice(), [Message::MigrationReject(reject)] if reject.reason.contains("no post-copy with id")),
            "{answers:?}"
        );
        assert!(incoming.is_err());

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let current = TcpStream::connect(listener.local_addr().unwrap())
            .unwrap()
            .into();
        let (mut old_peer, _) = listener.accept().unwrap();
        let mut registration = settings.resumes.register(7, "web", current);
        let waiting = std::thread::spawn(move || {
            let resumed = registration.wait(Duration::from_secs(10));
            registration.finished();
            resumed.map(|resumed| resumed.conversation.phase())
        });
        let (answers, incoming) = resume(&settings, 7);
        assert!(answers.is_empty(), "{answers:?}");
        assert!(
            matches!(incoming, Ok(Incoming::Resumed { vm_name: Some(ref name) }) if name == "web")
        );
        assert_eq!(
            waiting.join().unwrap(),
            Some(mllm_wire::conversation::Phase::AwaitingResume)
        );
        let mut rest = Vec::new();
        assert_eq!(
            std::io::Read::read_to_end(&mut old_peer, &mut rest).unwrap(),
            0,
            "the connection it served before is shut down"
        );

        let (answers, incoming) = resume(&settings, 7);
        assert!(
            matches!(
                answers.as_slice(),
                [Message::ResumeAccept(missing), Message::PostcopyComplete(_)]
                    if missing.pages.is_empty() && missing.blocks.is_empty()
            ),
            "{answers:?}"
        );
        assert!(matches!(incoming, Ok(Incoming::Resumed { vm_name: None })));
    }
}

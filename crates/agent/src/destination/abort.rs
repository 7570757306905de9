//! Cutting an incoming migration short from another thread (an agent that
//! shuts down), but only while the source still owns the VM: once the
//! hand-over has arrived the VM is this side's, and cutting the link then
//! could leave no guest running (see `mllm_wire::conversation`, "Ownership").

use std::net::Shutdown;

use mllm_tls::PeerStream;
use std::sync::{Arc, Mutex};

/// Shared by the receiving thread and whoever may abort it.
#[derive(Debug, Clone)]
pub struct IncomingAbort {
    state: Arc<Mutex<AbortState>>,
    socket: Arc<PeerStream>,
}

#[derive(Debug, Default)]
struct AbortState {
    handed_over: bool,
    aborted: bool,
}

impl IncomingAbort {
    pub(super) fn new(socket: PeerStream) -> IncomingAbort {
        IncomingAbort {
            state: Arc::default(),
            socket: Arc::new(socket),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, AbortState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Cuts the link if the hand-over has not arrived: the receiver then
    /// fails, its VM never having run, and the source keeps (resumes) the
    /// VM. Returns false, and does nothing, once the VM was handed over.
    pub fn abort_before_hand_over(&self) -> bool {
        let mut state = self.state();
        if state.handed_over {
            return false;
        }
        state.aborted = true;
        let _ = self.socket.shutdown(Shutdown::Both);
        true
    }

    /// Whether the VM was handed over to this side.
    pub fn is_handed_over(&self) -> bool {
        self.state().handed_over
    }

    /// The receiver has the hand-over and will run the VM; false if the
    /// migration was aborted first (the hand-over was read from what had
    /// arrived before the cut): the VM must then not run here.
    pub(super) fn take_hand_over(&self) -> bool {
        let mut state = self.state();
        if state.aborted {
            return false;
        }
        state.handed_over = true;
        true
    }
}

//! What a running migration tells its caller, as often as it changes
//! (throttled): for progress bars, logs and `mllm migrate --json`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Handshake and migration request.
    Connecting,
    /// The VM runs while its memory is copied, round after round.
    Precopy,
    /// The VM is stopped; the last dirty pages are on their way.
    FinalRound,
    /// QEMU's device state is relayed to the destination.
    DeviceState,
    /// Everything is sent; waiting for the destination to run the VM.
    WaitingForDestination,
    /// Post-copy: the destination runs the VM; the pages it still lacks are
    /// pushed, those it touches first sent on demand.
    Postcopy,
    /// Post-copy: the link failed; the source reconnects to the destination
    /// to go on sending the pages it still lacks (the VM runs there).
    Reconnecting,
    /// The destination runs the VM; the source's copy is released.
    Completed,
}

/// A snapshot of a migration, from the source's point of view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub phase: Phase,
    /// Current round: 1 is the full pass, later ones resend written pages.
    pub round: u32,
    /// Bytes handed to the link so far (every frame).
    pub bytes_sent: u64,
    /// Page-batch bytes the destination has confirmed writing.
    pub bytes_acknowledged: u64,
    /// Estimate of the bytes still to cross: unacknowledged batches plus
    /// pages not yet sent in this round (or known dirty).
    pub bytes_remaining: u64,
    /// Link rate measured from acknowledgements, bytes per second.
    pub rate_bytes_per_s: Option<f64>,
    /// `bytes_remaining / rate`: time left for what is known to be left.
    pub eta_s: Option<f64>,
    pub elapsed_s: f64,
}

//! The switch: stop the VM, send the last written pages (and in test mode a
//! digest of all of them), relay QEMU's device state, and wait until the
//! destination says its VM runs.

use std::time::Duration;

use mllm_qemu::qmp::wall_clock_us;
use mllm_wire::{Ack, DeviceState, DeviceStateEnd, Message, SourceStopped};
use serde_json::json;

use super::precopy::send_round;
use super::{SourceContext, SourceVmPhase};
use crate::device_state::OutgoingDeviceState;
use crate::error::{Context, MigrationError};
use mllm_control::Phase;

const REPORT_INTERVAL: Duration = Duration::from_millis(100);

pub(super) struct Switched {
    pub stopped_us: u64,
    pub device_state_bytes: u64,
    pub device_state_sent_us: u64,
    pub destination_running_us: u64,
}

/// Called once the strategy decided to switch.
pub(super) fn run(ctx: &mut SourceContext<'_>) -> Result<Switched, MigrationError> {
    ctx.report(Phase::FinalRound, 0.0);
    // Marked first: if `stop` fails half-way (a QMP timeout), resuming a
    // running VM is harmless, leaving a stopped one stopped is not.
    ctx.vm_state.phase = SourceVmPhase::Stopped;
    ctx.vm
        .qmp
        .execute("stop", json!({}))
        .map_err(|e| MigrationError::qemu("stopping the source VM", e))?;
    let stopped_us = wall_clock_us();
    ctx.pipeline.send(Message::SourceStopped(SourceStopped))?;
    let written = ctx.writes.take().during("final scan")?;
    ctx.transfer.written(&written);
    let switch = ctx.strategy.switch(ctx.transfer.state());
    if !switch.postcopy.is_empty() {
        return Err(MigrationError::Invalid(
            "the strategy wants pages moved after the switch, which this agent cannot do yet"
                .into(),
        ));
    }
    send_round(ctx, Phase::FinalRound, switch.downtime, true)?;
    if ctx.settings.verify {
        // The sender is still busy with the final pages while this hashes.
        let digest = ctx.ram.digest();
        ctx.pipeline.send(Message::RamDigest(digest))?;
    }

    ctx.report(Phase::DeviceState, 0.0);
    ctx.vm_state.phase = SourceVmPhase::QemuMigrating;
    let outgoing = OutgoingDeviceState::start(ctx.vm)?;
    let pipeline = &mut ctx.pipeline;
    let device_state_bytes = outgoing
        .relay(ctx.vm, ctx.settings.link_timeout, |chunk| {
            pipeline.send(Message::DeviceState(DeviceState { chunk }))
        })
        .map_err(|error| ctx.flow.cause_or(error))?;
    ctx.pipeline.send(Message::DeviceStateEnd(DeviceStateEnd {
        total_bytes: device_state_bytes,
    }))?;
    let device_state_sent_us = wall_clock_us();

    // Silence on the link is caught by the receiver's timeout, so waiting
    // for the last batches needs no bound of its own however many there are.
    while ctx
        .flow
        .wait_until(REPORT_INTERVAL, |flow| flow.unacked_bytes == 0)?
        .is_none()
    {
        ctx.report(Phase::WaitingForDestination, 0.0);
    }
    ctx.report(Phase::WaitingForDestination, 0.0);
    ctx.flow.wait_for_outcome(ctx.settings.link_timeout)?;
    let destination_running_us = wall_clock_us();
    // Releases the destination, which pauses its VM again if this never
    // arrives. From here the VM is the destination's whatever happens, so a
    // failure to send must not make the source resume: it is ignored.
    let _ = ctx.pipeline.send(Message::Ack(Ack));
    ctx.report(Phase::Completed, 0.0);
    Ok(Switched {
        stopped_us,
        device_state_bytes,
        device_state_sent_us,
        destination_running_us,
    })
}

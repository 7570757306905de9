//! The source's two I/O threads. The sender keeps the link busy with queued
//! frames while the migration reads and compresses the next pages; the
//! receiver turns the destination's replies into flow events. Either one,
//! on a failure, records the cause and shuts the socket down, which unblocks
//! the other and the migration.

use std::io::BufReader;
use std::net::{Shutdown, TcpStream};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use mllm_wire::{FrameReader, FrameWriter, Message, Role, Traffic};

use super::flow::{Flow, PeerOutcome};
use crate::error::MigrationError;

/// Writes queued messages until the queue closes; returns what it sent.
pub(crate) fn send_frames(
    mut writer: FrameWriter<TcpStream>,
    queue: Receiver<Message>,
    flow: &Flow,
    socket: &TcpStream,
    timeout: Duration,
) -> Traffic {
    for message in queue {
        if let Err(error) = flow.sending(&message) {
            flow.end(PeerOutcome::Failed(error.into()));
            let _ = socket.shutdown(Shutdown::Both);
            break;
        }
        let before = writer.traffic().total_bytes();
        if let Err(error) = writer.send(&message) {
            let cause = MigrationError::link(error, Role::Destination, timeout)
                .during(format!("sending a {} frame", message.message_type()));
            flow.end(PeerOutcome::Failed(cause));
            let _ = socket.shutdown(Shutdown::Both);
            break;
        }
        flow.wrote(writer.traffic().total_bytes() - before);
    }
    writer.traffic().clone()
}

/// Reads the destination's replies until its verdict or a failure; returns
/// what it received.
pub(crate) fn receive_frames(
    mut reader: FrameReader<BufReader<TcpStream>>,
    flow: &Flow,
    socket: &TcpStream,
    timeout: Duration,
) -> Traffic {
    let failure = loop {
        let message = reader.recv().and_then(|message| {
            flow.received(&message)?;
            Ok(message)
        });
        match message {
            Ok(Message::Ack(_)) => {
                if let Err(error) = flow.acknowledged(Instant::now()) {
                    break error;
                }
            }
            Ok(Message::DestinationRunning(_)) => {
                flow.end(PeerOutcome::Running);
                return reader.traffic().clone();
            }
            Ok(Message::Abort(abort)) => {
                break MigrationError::PeerAborted {
                    peer: Role::Destination,
                    reason: abort.reason,
                }
            }
            Ok(other) => unreachable!(
                "the conversation admitted {} from the destination",
                other.message_type()
            ),
            Err(error) => break MigrationError::link(error, Role::Destination, timeout),
        }
    };
    flow.end(PeerOutcome::Failed(failure));
    let _ = socket.shutdown(Shutdown::Both);
    reader.traffic().clone()
}

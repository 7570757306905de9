use std::collections::BTreeSet;

use mllm_wire::{
    FrameReader, Message, MessageType, PageRange, PendingBlocks, PendingPages, ResumeAccept,
    RoundEnd, WireError,
};

use crate::support::{decode_one, encode, raw_frame, sample_messages};

#[test]
fn every_message_type_round_trips_through_a_stream() {
    let messages = sample_messages();
    let covered: BTreeSet<MessageType> = messages.iter().map(Message::message_type).collect();
    assert_eq!(covered, MessageType::ALL.iter().copied().collect());

    let bytes = encode(&messages);
    let mut reader = FrameReader::new(&bytes[..]);
    for sent in &messages {
        assert_eq!(&reader.recv().unwrap(), sent);
    }
    assert!(matches!(reader.recv(), Err(WireError::Closed)));
}

#[test]
fn each_message_knows_its_exact_size_on_the_link() {
    for message in sample_messages() {
        let bytes = encode(std::slice::from_ref(&message));
        assert_eq!(
            message.frame_len(),
            bytes.len() as u64,
            "{}",
            message.message_type()
        );
    }
}

#[test]
fn type_codes_are_unique_and_stable() {
    for &message_type in MessageType::ALL {
        assert_eq!(
            MessageType::from_code(message_type.code()),
            Some(message_type)
        );
    }
    // Codes are the protocol: a renumbering must be a deliberate version change.
    assert_eq!(MessageType::MigrationRequest.code(), 1);
    assert_eq!(MessageType::PageBatch.code(), 4);
    assert_eq!(MessageType::Ack.code(), 13);
}

#[test]
fn unknown_message_type_is_refused_by_code() {
    let error = decode_one(&raw_frame(0x7777, 0, b"")).unwrap_err();
    assert!(matches!(
        error,
        WireError::UnknownMessageType { code: 0x7777 }
    ));
    assert!(error.to_string().contains("0x7777"), "{error}");
}

#[test]
fn body_with_trailing_bytes_is_malformed() {
    let mut frame = encode(&[RoundEnd { round: 1, pages: 2 }.into()]);
    let payload_len = u32::from_le_bytes(frame[4..8].try_into().unwrap()) as usize;
    let mut payload = frame[8..8 + payload_len].to_vec();
    payload.push(0);
    frame = raw_frame(MessageType::RoundEnd.code(), 0, &payload);

    let error = decode_one(&frame).unwrap_err();
    assert!(
        matches!(error, WireError::Malformed { message_type: MessageType::RoundEnd, ref reason } if reason.contains("trailing")),
        "{error}"
    );
}

#[test]
fn truncated_body_is_malformed() {
    let frame = raw_frame(MessageType::RoundEnd.code(), 0, &[1]);
    assert!(matches!(
        decode_one(&frame),
        Err(WireError::Malformed {
            message_type: MessageType::RoundEnd,
            ..
        })
    ));
}

#[test]
fn a_reversed_page_range_is_malformed() {
    // Built field by field: `PageRange::new` would refuse it.
    let reversed = PageRange { start: 9, end: 3 };
    let frame = encode(&[PendingPages {
        ranges: vec![PageRange::new(0, 2), reversed],
    }
    .into()]);
    let error = decode_one(&frame).unwrap_err();
    assert!(
        matches!(error, WireError::Malformed { message_type: MessageType::PendingPages, ref reason } if reason.contains("9..3")),
        "{error}"
    );
    let frame = encode(&[PendingBlocks {
        disk: 0,
        ranges: vec![reversed],
    }
    .into()]);
    let error = decode_one(&frame).unwrap_err();
    assert!(
        matches!(error, WireError::Malformed { message_type: MessageType::PendingBlocks, ref reason } if reason.contains("9..3")),
        "{error}"
    );
    // A resumed post-copy's missing blocks are ranges too.
    let frame = encode(&[ResumeAccept {
        pages: vec![],
        blocks: vec![(0, PageRange::new(0, 1)), (1, reversed)],
    }
    .into()]);
    let error = decode_one(&frame).unwrap_err();
    assert!(
        matches!(error, WireError::Malformed { message_type: MessageType::ResumeAccept, ref reason } if reason.contains("9..3")),
        "{error}"
    );
}

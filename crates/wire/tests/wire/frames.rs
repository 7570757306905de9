use mllm_wire::{
    DeviceState, FrameReader, FrameType, FrameWriter, Message, MessageType, TrafficClass,
    WireError, CHECKSUM_LEN, HEADER_LEN,
};

use crate::support::{decode_one, encode, raw_frame, sample_messages};

const LENGTH_FIELD: std::ops::Range<usize> = 4..8;
const TYPE_FIELD: std::ops::Range<usize> = 0..2;

#[test]
fn a_corrupted_byte_anywhere_in_a_frame_is_detected() {
    for message in sample_messages() {
        let frame = encode(std::slice::from_ref(&message));
        let name = message.message_type().name();
        for position in 0..frame.len() {
            let mut stream = frame.clone();
            stream[position] ^= 0x5a;
            // A valid frame follows, so a corrupted length can read past the frame's end.
            stream.extend_from_slice(&frame);

            let error = decode_one(&stream).unwrap_err();
            if LENGTH_FIELD.contains(&position) {
                assert!(
                    matches!(
                        error,
                        WireError::Checksum { .. }
                            | WireError::Truncated { .. }
                            | WireError::FrameTooLarge { .. }
                    ),
                    "{name} byte {position}: {error}"
                );
            } else {
                assert!(
                    matches!(error, WireError::Checksum { .. }),
                    "{name} byte {position}: {error}"
                );
                if !TYPE_FIELD.contains(&position) {
                    assert_eq!(
                        error.to_string(),
                        format!("checksum mismatch in a {name} frame: data corrupted on the link")
                    );
                }
            }
        }
    }
}

#[test]
fn a_cut_stream_is_closed_between_frames_and_truncated_within_one() {
    let frame = encode(&[DeviceState {
        chunk: vec![1; 300],
    }
    .into()]);
    assert!(matches!(decode_one(&[]), Err(WireError::Closed)));
    for cut in 1..frame.len() {
        let error = decode_one(&frame[..cut]).unwrap_err();
        assert!(
            matches!(error, WireError::Truncated { .. }),
            "cut at {cut}: {error}"
        );
        if cut >= HEADER_LEN {
            assert!(error.to_string().contains("DeviceState"), "{error}");
        }
    }
}

#[test]
fn an_oversize_length_is_refused_before_reading_the_payload() {
    let mut header = Vec::new();
    header.extend_from_slice(&MessageType::DeviceState.code().to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    let error = decode_one(&header).unwrap_err();
    assert!(
        matches!(error, WireError::FrameTooLarge { frame_type: FrameType(7), len, .. } if len == u64::from(u32::MAX)),
        "{error}"
    );
}

#[test]
fn the_reader_enforces_its_configured_maximum() {
    let frame = encode(&[DeviceState {
        chunk: vec![9; 200],
    }
    .into()]);
    let error = FrameReader::with_max_payload(&frame[..], 100)
        .recv()
        .unwrap_err();
    assert!(
        matches!(error, WireError::FrameTooLarge { max: 100, .. }),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("DeviceState frame"),
        "{error}"
    );
}

#[test]
fn the_writer_refuses_an_oversize_frame_and_sends_nothing() {
    let mut writer = FrameWriter::with_max_payload(Vec::new(), 100);
    let error = writer
        .send(
            &DeviceState {
                chunk: vec![9; 200],
            }
            .into(),
        )
        .unwrap_err();
    assert!(matches!(error, WireError::FrameTooLarge { max: 100, .. }));
    assert!(writer.get_ref().is_empty());
    assert_eq!(writer.traffic().total_bytes(), 0);
}

#[test]
fn unknown_flags_are_refused() {
    let frame = raw_frame(MessageType::Ack.code(), 0x0004, b"");
    assert!(matches!(
        decode_one(&frame),
        Err(WireError::UnsupportedFlags { flags: 4, .. })
    ));
}

#[test]
fn traffic_counts_every_byte_by_message_type_on_both_ends() {
    let messages = sample_messages();
    let mut writer = FrameWriter::new(Vec::new());
    for message in &messages {
        writer.send(message).unwrap();
    }
    let batch = messages
        .iter()
        .find(|message| message.message_type() == MessageType::PageBatch)
        .unwrap();
    writer.send(batch).unwrap();
    let sent = writer.traffic().clone();
    let bytes = writer.into_inner();

    assert_eq!(sent.total_bytes(), bytes.len() as u64);
    let batches = sent.of_type(MessageType::PageBatch);
    assert_eq!(batches.frames, 2);
    assert_eq!(
        sent.class_bytes(TrafficClass::Memory),
        batches.bytes
            + sent.of_type(MessageType::RoundEnd).bytes
            + sent.of_type(MessageType::PendingPages).bytes
            + sent.of_type(MessageType::PageRequest).bytes
    );
    let device_state = sent.class_bytes(TrafficClass::DeviceState);
    assert!(device_state > 3000, "{device_state}");
    assert_eq!(device_state, sent.of_type(MessageType::DeviceState).bytes);
    let classes = [
        TrafficClass::Control,
        TrafficClass::Memory,
        TrafficClass::DeviceState,
        TrafficClass::Verification,
        TrafficClass::Disk,
    ];
    let by_class: u64 = classes.iter().map(|&c| sent.class_bytes(c)).sum();
    assert_eq!(by_class, sent.total_bytes());
    // An empty-bodied message costs exactly the frame overhead.
    assert_eq!(
        sent.of_type(MessageType::Ack).bytes,
        (HEADER_LEN + CHECKSUM_LEN) as u64
    );

    let mut reader = FrameReader::new(&bytes[..]);
    while reader.recv().is_ok() {}
    assert_eq!(reader.traffic(), &sent);
}

#[test]
fn a_frame_is_written_in_one_piece() {
    struct CountingWrites(Vec<usize>);
    impl std::io::Write for CountingWrites {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let message: Message = DeviceState {
        chunk: vec![5; 1000],
    }
    .into();
    let mut writer = FrameWriter::new(CountingWrites(Vec::new()));
    writer.send(&message).unwrap();
    let frame_len = usize::try_from(writer.traffic().total_bytes()).unwrap();
    assert_eq!(writer.into_inner().0, vec![frame_len]);
}

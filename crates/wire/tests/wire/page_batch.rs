use mllm_wire::{
    compressed_len, Compression, CompressionSetting, FrameReader, FrameWriter, Message,
    MessageType, PageBatch, PageBatchBuilder, PageBatchDecoder, PageContent, PageEntry, PageKind,
    WireError, MAX_BATCH_PAGES, PAGE_SIZE,
};
use mllm_wire::{ContentHash, ContentRef, Location};
use proptest::prelude::*;

type Page = [u8; PAGE_SIZE];

const SETTINGS: [CompressionSetting; 3] = [
    CompressionSetting::None,
    CompressionSetting::Lz4,
    CompressionSetting::Zstd { level: 3 },
];

/// A page like guest memory often holds: text-like, compressible, non-zero.
fn compressible_page(seed: u8) -> Box<Page> {
    let mut page = Box::new([0; PAGE_SIZE]);
    for (i, byte) in page.iter_mut().enumerate() {
        *byte = b"guest memory "[i % 13].wrapping_add(seed);
    }
    page
}

/// A page of xorshift output: what compression cannot shrink.
fn random_page(mut state: u64) -> Box<Page> {
    let mut page = Box::new([0; PAGE_SIZE]);
    for chunk in page.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    page
}

fn build(setting: CompressionSetting, pages: &[(u32, Box<Page>)]) -> PageBatch {
    let mut builder = PageBatchBuilder::new(setting, MAX_BATCH_PAGES).unwrap();
    for (index, page) in pages {
        let _ = builder.push(*index, page);
    }
    builder.finish().unwrap()
}

fn decoded(batch: &PageBatch) -> Result<Vec<(u32, Option<Page>)>, WireError> {
    let mut decoder = PageBatchDecoder::new();
    Ok(decoder
        .decode(batch)?
        .map(|(index, content)| match content {
            PageContent::Zero => (index, None),
            PageContent::Data(page) => (index, Some(*page)),
            PageContent::Reference(reference) => panic!("no reference was pushed: {reference:?}"),
        })
        .collect())
}

#[test]
fn zero_pages_travel_as_markers_only() {
    let zero = Box::new([0; PAGE_SIZE]);
    let data = compressible_page(1);
    let batch = build(
        CompressionSetting::None,
        &[(10, zero.clone()), (11, data.clone()), (12, zero)],
    );
    assert_eq!(
        batch.pages,
        [
            PageEntry {
                index: 10,
                kind: PageKind::Zero
            },
            PageEntry {
                index: 11,
                kind: PageKind::Data
            },
            PageEntry {
                index: 12,
                kind: PageKind::Zero
            },
        ]
    );
    assert_eq!(batch.payload.len(), PAGE_SIZE);
    assert_eq!(
        decoded(&batch).unwrap(),
        [(10, None), (11, Some(*data)), (12, None)]
    );

    let all_zero = build(
        CompressionSetting::Zstd { level: 3 },
        &[(0, Box::new([0; PAGE_SIZE])), (1, Box::new([0; PAGE_SIZE]))],
    );
    assert!(all_zero.payload.is_empty());
    assert_eq!(decoded(&all_zero).unwrap(), [(0, None), (1, None)]);
}

#[test]
fn a_single_non_zero_byte_makes_a_data_page() {
    for position in [0, 63, 64, 2048, PAGE_SIZE - 1] {
        let mut page = Box::new([0; PAGE_SIZE]);
        page[position] = 1;
        let batch = build(CompressionSetting::None, &[(0, page)]);
        assert_eq!(batch.data_pages(), 1, "non-zero byte at {position}");
    }
}

#[test]
fn each_algorithm_round_trips_and_shrinks_compressible_pages() {
    let pages: Vec<(u32, Box<Page>)> = (0..16)
        .map(|i| (i * 3, compressible_page(u8::try_from(i).unwrap())))
        .collect();
    for setting in SETTINGS {
        let batch = build(setting, &pages);
        assert_eq!(batch.compression, setting.algorithm());
        if setting != CompressionSetting::None {
            assert!(
                batch.payload.len() < pages.len() * PAGE_SIZE / 10,
                "{setting:?}: {} bytes",
                batch.payload.len()
            );
        }
        let expected: Vec<_> = pages.iter().map(|(i, p)| (*i, Some(**p))).collect();
        assert_eq!(decoded(&batch).unwrap(), expected, "{setting:?}");
    }
}

#[test]
fn incompressible_pages_are_sent_uncompressed() {
    let pages: Vec<(u32, Box<Page>)> = (0..4).map(|i| (i, random_page(u64::from(i) + 1))).collect();
    for setting in SETTINGS {
        let batch = build(setting, &pages);
        assert_eq!(batch.compression, Compression::None, "{setting:?}");
        assert_eq!(batch.payload.len(), 4 * PAGE_SIZE);
        assert_eq!(decoded(&batch).unwrap()[3], (3, Some(*pages[3].1)));
    }
}

#[test]
fn pages_that_compress_by_less_than_five_percent_are_sent_uncompressed() {
    // Random pages whose last 2 % are zeros: every codec saves a little.
    let pages: Vec<(u32, Box<Page>)> = (0..4)
        .map(|i| {
            let mut page = random_page(u64::from(i) + 1);
            page[PAGE_SIZE - 80..].fill(0);
            (i, page)
        })
        .collect();
    for setting in [
        CompressionSetting::Lz4,
        CompressionSetting::Zstd { level: 3 },
    ] {
        let data: Vec<u8> = pages.iter().flat_map(|(_, page)| page.to_vec()).collect();
        let saved = data.len() - compressed_len(setting, &data).unwrap();
        assert!(
            saved > 0,
            "{setting:?} saves nothing: the test proves nothing"
        );
        let batch = build(setting, &pages);
        assert_eq!(batch.compression, Compression::None, "{setting:?}");
        assert_eq!(batch.payload.len(), 4 * PAGE_SIZE);
    }
}

#[test]
fn the_builder_reports_full_and_starts_over_after_finish() {
    let mut builder = PageBatchBuilder::new(CompressionSetting::Lz4, 2).unwrap();
    assert!(!builder.push(0, &compressible_page(1)));
    assert!(builder.push(1, &[0; PAGE_SIZE]));
    assert!(builder.is_full());
    assert_eq!(builder.finish().unwrap().pages.len(), 2);
    assert!(builder.is_empty());

    assert!(!builder.push(5, &compressible_page(2)));
    let second = builder.finish().unwrap();
    assert_eq!(
        decoded(&second).unwrap(),
        [(5, Some(*compressible_page(2)))]
    );
}

#[test]
fn batch_capacity_is_bounded() {
    for capacity in [0, MAX_BATCH_PAGES + 1] {
        assert!(matches!(
            PageBatchBuilder::new(CompressionSetting::None, capacity),
            Err(WireError::BatchCapacity { .. })
        ));
    }
}

fn assert_malformed(batch: &PageBatch) {
    let error = decoded(batch).unwrap_err();
    assert!(
        matches!(
            error,
            WireError::Malformed {
                message_type: MessageType::PageBatch,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_payload_that_disagrees_with_the_page_list_is_refused() {
    let pages: Vec<(u32, Box<Page>)> = (0..3)
        .map(|i| (i, compressible_page(u8::try_from(i).unwrap())))
        .collect();
    for setting in SETTINGS {
        let batch = build(setting, &pages);

        let mut short_payload = batch.clone();
        short_payload.payload.pop();
        assert_malformed(&short_payload);

        let mut extra_page = batch.clone();
        extra_page.pages.push(PageEntry {
            index: 9,
            kind: PageKind::Data,
        });
        assert_malformed(&extra_page);

        let mut missing_page = batch.clone();
        missing_page.pages.pop();
        assert_malformed(&missing_page);
    }
}

#[test]
fn a_batch_over_the_page_limit_is_refused() {
    let batch = PageBatch {
        compression: Compression::None,
        pages: vec![
            PageEntry {
                index: 0,
                kind: PageKind::Zero
            };
            MAX_BATCH_PAGES + 1
        ],
        payload: Vec::new(),
    };
    assert_malformed(&batch);
}

#[test]
fn a_full_batch_of_random_pages_fits_in_a_frame() {
    let pages: Vec<(u32, Box<Page>)> = (0..u32::try_from(MAX_BATCH_PAGES).unwrap())
        .map(|i| (i, random_page(u64::from(i) + 1)))
        .collect();
    let batch = build(CompressionSetting::Zstd { level: 1 }, &pages);
    FrameWriter::new(Vec::new()).send(&batch.into()).unwrap();
}

#[derive(Debug, Clone)]
enum PageShape {
    Zero,
    Filled(u8),
    Random(u64),
    OneByte { position: usize, value: u8 },
}

impl PageShape {
    fn page(&self) -> Box<Page> {
        match *self {
            PageShape::Zero => Box::new([0; PAGE_SIZE]),
            PageShape::Filled(byte) => Box::new([byte; PAGE_SIZE]),
            PageShape::Random(seed) => random_page(seed | 1),
            PageShape::OneByte { position, value } => {
                let mut page = Box::new([0; PAGE_SIZE]);
                page[position] = value;
                page
            }
        }
    }
}

fn page_shape() -> impl Strategy<Value = PageShape> {
    prop_oneof![
        Just(PageShape::Zero),
        any::<u8>().prop_map(PageShape::Filled),
        any::<u64>().prop_map(PageShape::Random),
        (0..PAGE_SIZE, any::<u8>())
            .prop_map(|(position, value)| PageShape::OneByte { position, value }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random pages through builder, frames and decoder come out as they went in.
    #[test]
    fn random_batches_round_trip_through_the_link(
        shapes in prop::collection::vec((any::<u32>(), page_shape()), 0..40),
        setting in prop::sample::select(SETTINGS.to_vec()),
        capacity in 1..16usize,
    ) {
        let mut builder = PageBatchBuilder::new(setting, capacity).unwrap();
        let mut writer = FrameWriter::new(Vec::new());
        for (index, shape) in &shapes {
            if builder.push(*index, &shape.page()) {
                writer.send(&builder.finish().unwrap().into()).unwrap();
            }
        }
        if !builder.is_empty() {
            writer.send(&builder.finish().unwrap().into()).unwrap();
        }

        let bytes = writer.into_inner();
        let mut reader = FrameReader::new(&bytes[..]);
        let mut decoder = PageBatchDecoder::new();
        let mut received = Vec::new();
        while let Ok(Message::PageBatch(batch)) = reader.recv() {
            prop_assert!(batch.pages.len() <= capacity);
            for (index, content) in decoder.decode(&batch).unwrap() {
                received.push((index, match content {
                    PageContent::Zero => None,
                    PageContent::Data(page) => Some(page.to_vec()),
                    PageContent::Reference(reference) => panic!("no reference was pushed: {reference:?}"),
                }));
            }
        }
        let expected: Vec<_> = shapes
            .iter()
            .map(|(index, shape)| {
                let page = shape.page();
                (*index, page.iter().any(|&b| b != 0).then(|| page.to_vec()))
            })
            .collect();
        prop_assert_eq!(received, expected);
    }
}

#[test]
fn references_travel_without_payload_and_keep_their_place() {
    let data = compressible_page(3);
    let reference = ContentRef {
        from: Location::Block { disk: 0, block: 42 },
        hash: ContentHash::of(&data[..]),
    };
    let mut builder = PageBatchBuilder::new(CompressionSetting::None, 4).unwrap();
    let _ = builder.push(1, &data);
    let _ = builder.push_reference(2, reference);
    let _ = builder.push(3, &[0; PAGE_SIZE]);
    let batch = builder.finish().unwrap();
    assert_eq!(
        batch.payload.len(),
        PAGE_SIZE,
        "only the data page has bytes"
    );
    assert_eq!(batch.data_pages(), 1);

    let bytes = {
        let mut writer = FrameWriter::new(Vec::new());
        writer.send(&batch.clone().into()).unwrap();
        writer.into_inner()
    };
    let Message::PageBatch(received) = FrameReader::new(&bytes[..]).recv().unwrap() else {
        panic!("a page batch was sent");
    };
    assert_eq!(received, batch);
    let mut decoder = PageBatchDecoder::new();
    let contents: Vec<_> = decoder.decode(&received).unwrap().collect();
    assert_eq!(contents[0], (1, PageContent::Data(&data)));
    assert_eq!(contents[1], (2, PageContent::Reference(reference)));
    assert_eq!(contents[2], (3, PageContent::Zero));
}

//! The hook's lines fed hostile bytes: requests as the hook reads them from
//! a client, replies as the tracker reads them from the hook. Each parse
//! ends in a message or a typed error, never a panic, and valid lines read
//! back as sent. Both sides read at most the line limit before parsing
//! (`MAX_REQUEST_LEN`, `MAX_REPLY_LEN`), so memory is bounded by them.
//!
//! `PROPTEST_CASES` raises the number of cases; the long run is
//! `scripts/fuzz.sh` (docs/reliability.md).

#[path = "../../../testing/mutations.rs"]
mod mutations;

use mllm_hook_protocol::{
    ParseError, Reply, Request, UffdFeatures, MAX_REPLY_LEN, MAX_REQUEST_LEN,
};
use proptest::prelude::*;

use mutations::{apply, mutations};

fn request() -> impl Strategy<Value = Request> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(start, len, wp)| {
        if wp {
            Request::WriteProtect { start, len }
        } else {
            Request::Missing { start, len }
        }
    })
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        any::<u64>().prop_map(|features| Reply::Armed {
            features: UffdFeatures(features)
        }),
        "[^\n]{0,600}".prop_map(|reason| Reply::Refused { reason }),
    ]
}

/// Parses `line` both ways; a line longer than the limit is refused as such.
fn parse(line: &[u8]) {
    let request = Request::parse(line);
    if line.len() > MAX_REQUEST_LEN {
        assert!(matches!(request, Err(ParseError::TooLong { .. })));
    }
    let reply = Reply::parse(line);
    if line.len() > MAX_REPLY_LEN {
        assert!(matches!(reply, Err(ParseError::TooLong { .. })));
    }
    // A request that parses says what a client would send, modulo spelling.
    if let Ok(request) = request {
        assert_eq!(Request::parse(request.encode().as_bytes()), Ok(request));
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes(line in proptest::collection::vec(any::<u8>(), 0..700)) {
        parse(&line);
    }

    #[test]
    fn mutated_requests(request in request(), mutations in mutations()) {
        let mut line = request.encode().into_bytes();
        apply(&mut line, &mutations);
        parse(&line);
    }

    #[test]
    fn mutated_replies(reply in reply(), mutations in mutations()) {
        let mut line = reply.encode().into_bytes();
        apply(&mut line, &mutations);
        parse(&line);
    }

    #[test]
    fn replies_round_trip(reply in reply()) {
        let line = reply.encode();
        prop_assert!(line.len() <= MAX_REPLY_LEN);
        let parsed = Reply::parse(line.as_bytes()).unwrap();
        match (&reply, &parsed) {
            // A long reason is cut to fit the line.
            (Reply::Refused { reason: sent }, Reply::Refused { reason: received }) => {
                prop_assert!(sent.starts_with(received.as_str()));
            }
            _ => prop_assert_eq!(parsed, reply),
        }
    }
}

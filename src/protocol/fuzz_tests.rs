//! Property tests: the decoder never panics, and encoding round-trips.

use super::*;
use proptest::prelude::*;

fn arb_message() -> impl Strategy<Value = OpMessage> {
    (
        any::<u32>(),
        0u8..8,
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..300),
        0u8..4,
        proptest::collection::vec(any::<u8>(), 0..600),
        (
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            any::<Option<[u8; 16]>>(),
        ),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..100)),
    )
        .prop_map(
            |(opaque, op, resp, ns, key, kind, data, (ttl, ver, rid), corr)| {
                let mut m = OpMessage::request(op);
                if resp {
                    m.direction = Direction::Response;
                    m.status = op;
                } else {
                    m.shard_id = opaque as u16;
                }
                m.opaque = opaque;
                m.namespace = ns;
                m.key = key;
                m.payload = Payload {
                    kind: if data.is_empty() { 0 } else { kind },
                    data,
                };
                m.meta.ttl = ttl;
                m.meta.version = ver;
                m.meta.request_id = rid;
                m.meta.correlation_id = corr;
                m
            },
        )
}

proptest! {
    #[test]
    fn round_trip(m in arb_message()) {
        let bytes = m.to_bytes();
        prop_assert_eq!(bytes.len() % 8, 0);
        prop_assert_eq!(OpMessage::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = OpMessage::decode(&bytes);
        // Also with a plausible header so that the body parsers are reached.
        if bytes.len() >= 16 {
            let len = bytes.len() as u32;
            bytes[..4].copy_from_slice(&[0x50, 0x50, 1, 0x40]);
            bytes[4..8].copy_from_slice(&len.to_be_bytes());
            let _ = OpMessage::decode(&bytes);
        }
    }

    #[test]
    fn mutated_frames_never_panic(
        m in arb_message(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        let mut bytes = m.to_bytes();
        for (at, b) in edits {
            let i = at % bytes.len();
            bytes[i] = b;
        }
        let _ = OpMessage::decode(&bytes);
        let _ = OpMessage::decode(&bytes[..cut % (bytes.len() + 1)]);
    }
}

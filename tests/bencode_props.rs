//! Property tests for the bencode codec: round trips and "never panics on any input".

use proptest::prelude::*;
use swarmscan::proto::bencode::{self, Limits, OwnedValue};

fn owned_value() -> impl Strategy<Value = OwnedValue> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(OwnedValue::Int),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(OwnedValue::Bytes),
    ];
    leaf.prop_recursive(6, 200, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(OwnedValue::List),
            proptest::collection::btree_map(
                proptest::collection::vec(any::<u8>(), 0..12),
                inner,
                0..8
            )
            .prop_map(OwnedValue::Dict),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_decode_round_trip(v in owned_value()) {
        let bytes = v.encode();
        let strict = Limits { require_sorted_keys: true, ..Limits::DEFAULT };
        let decoded = bencode::decode_with(&bytes, strict).expect("canonical encoding decodes strictly");
        prop_assert_eq!(decoded.raw(), &bytes[..]);
        prop_assert_eq!(decoded.to_owned_value(), v);
    }

    #[test]
    fn every_prefix_of_a_value_is_an_error_not_a_panic(v in owned_value()) {
        let bytes = v.encode();
        for cut in 0..bytes.len() {
            prop_assert!(bencode::decode(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(v) = bencode::decode_with(&bytes, Limits::NETWORK) {
            // Whatever decodes re-encodes to something that decodes to the same tree.
            let owned = v.to_owned_value();
            prop_assert_eq!(bencode::decode(&owned.encode()).unwrap().to_owned_value(), owned);
        }
        let _ = bencode::decode_prefix(&bytes);
    }

    #[test]
    fn never_panics_on_mutated_values(v in owned_value(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        let mut bytes = v.encode();
        for (at, b) in flips {
            if !bytes.is_empty() {
                let i = at % bytes.len();
                bytes[i] = b;
            }
        }
        let _ = bencode::decode(&bytes);
    }
}

#[test]
fn bencode_grammar_characters_only_never_panic() {
    // Dense in structure characters, which random bytes rarely produce.
    let alphabet = b"ilde0123456789:-";
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..200_000 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 24) as usize;
        let mut buf = Vec::with_capacity(len);
        let mut s = state;
        for _ in 0..len {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            buf.push(alphabet[(s >> 59) as usize % alphabet.len()]);
        }
        let _ = bencode::decode(&buf);
    }
}

//! The probe state machine never panics, always ends, and counts pieces correctly whatever
//! a peer sends and however the bytes are split.

use proptest::prelude::*;
use swarmscan::proto::peer_wire::{encode_handshake, Message, Reserved};
use swarmscan::proto::probe::{Direction, Probe, ProbeSettings, Step};

const HASH: [u8; 20] = [3; 20];

fn lookup(_: &[u8; 20]) -> Option<u32> {
    Some(50)
}

fn drive(stream: &[u8], cuts: &[usize], pieces: u32) -> Probe {
    let s = ProbeSettings::default();
    let mut p = Probe::new(
        Direction::Outgoing {
            info_hash: HASH,
            piece_count: pieces,
        },
        0,
    );
    let mut out = Vec::new();
    p.on_connected(&s, 0, &mut out);
    let mut at = 0;
    for (now, &c) in (1..).zip(cuts.iter().chain(std::iter::once(&stream.len()))) {
        let end = c.clamp(at, stream.len());
        match p.on_bytes(&s, &lookup, now, &stream[at..end], &mut out) {
            Step::Finished => return p,
            // The answer is known: an owner that does not watch ends the probe.
            Step::Ask => {
                p.stop(&s, now, &mut out);
                return p;
            }
            Step::Continue => {}
        }
        at = end;
    }
    let mut guard = 0;
    loop {
        let now = p.deadline(&s);
        match p.on_deadline(&s, now, &mut out) {
            Step::Continue => {}
            Step::Ask => {
                p.stop(&s, now, &mut out);
                break;
            }
            Step::Finished => break,
        }
        guard += 1;
        assert!(guard < 4, "deadline must end the probe");
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400),
                                   cuts in proptest::collection::vec(0usize..400, 0..8)) {
        let mut cuts = cuts;
        cuts.sort();
        let p = drive(&bytes, &cuts, 50);
        prop_assert!(p.is_done());
    }

    #[test]
    fn arbitrary_messages_after_handshake_never_panic(
        msgs in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..30),
        cuts in proptest::collection::vec(0usize..2000, 0..8)) {
        let mut stream = encode_handshake(&HASH, &[1; 20], Reserved::PROBE).to_vec();
        for (id, payload) in msgs {
            stream.extend_from_slice(&((payload.len() + 1) as u32).to_be_bytes());
            stream.push(id % 24);
            stream.extend_from_slice(&payload);
        }
        let mut cuts = cuts;
        cuts.sort();
        let p = drive(&stream, &cuts, 50);
        prop_assert!(p.is_done());
        prop_assert!(p.report().pieces_have <= 50);
    }

    #[test]
    fn haves_count_each_piece_once(haves in proptest::collection::vec(0u32..64, 0..200),
                                   cuts in proptest::collection::vec(0usize..3000, 0..8)) {
        let mut stream = encode_handshake(&HASH, &[1; 20], Reserved::NONE).to_vec();
        for &h in &haves {
            Message::Have(h).encode_into(&mut stream);
        }
        let mut cuts = cuts;
        cuts.sort();
        let p = drive(&stream, &cuts, 64);
        let distinct = haves.iter().take(256).collect::<std::collections::BTreeSet<_>>().len() as u32;
        prop_assert_eq!(p.report().pieces_have, distinct);
    }
}

#![no_main]
//! The probe state machine fed arbitrary peer bytes in arbitrary chunks, for an outgoing and
//! an incoming connection: it must never panic, must end at its deadline, and must never report
//! more pieces than the torrent has.
use libfuzzer_sys::fuzz_target;
use swarmscan::proto::peer_wire::{encode_handshake, Reserved};
use swarmscan::proto::probe::{Direction, Probe, ProbeSettings, Step};

const HASH: [u8; 20] = [5; 20];

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let pieces = u16::from_le_bytes([data[0], data[1]]) as u32 % 5000;
    let incoming = data[2] & 1 == 1;
    let chunk = (data[2] >> 1) as usize + 1;
    let s = ProbeSettings::default();
    let lookup = |h: &[u8; 20]| (h == &HASH).then_some(pieces);
    let direction = if incoming {
        Direction::Incoming
    } else {
        Direction::Outgoing { info_hash: HASH, piece_count: pieces }
    };
    let mut p = Probe::new(direction, 0);
    let mut out = Vec::new();
    p.on_connected(&s, 0, &mut out);
    // Half the inputs start with a valid handshake so the fuzzer reaches the messages.
    let mut stream = Vec::new();
    if data[2] & 0x80 != 0 {
        stream.extend_from_slice(&encode_handshake(&HASH, &[1; 20], Reserved::PROBE));
    }
    stream.extend_from_slice(&data[3..]);
    let mut now = 1;
    for c in stream.chunks(chunk) {
        if p.on_bytes(&s, &lookup, now, c, &mut out) == Step::Finished {
            break;
        }
        now += 7;
    }
    let mut guard = 0;
    while !p.is_done() {
        let d = p.deadline(&s);
        p.on_deadline(&s, d, &mut out);
        guard += 1;
        assert!(guard < 4, "deadline must end the probe");
    }
    let r = p.report();
    if r.piece_count > 0 {
        assert!(r.pieces_have <= r.piece_count);
    }
});

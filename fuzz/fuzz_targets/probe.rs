#![no_main]
//! The probe state machine fed arbitrary peer bytes in arbitrary chunks, for an outgoing and
//! an incoming connection: it must never panic, must end at its deadline, and must never report
//! more pieces than the torrent has. When the piece count is unknown the probe may fetch
//! metadata (BEP 9) under a budget: at most one fetch per probe, no claim above the budget's
//! limit, and the place is given back by the time the probe has ended.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use swarmscan::proto::peer_wire::{encode_handshake, Reserved};
use swarmscan::proto::probe::{
    Direction, MetadataPermit, MetadataRefusal, Probe, ProbeSettings, Step, TorrentLookup,
};

const HASH: [u8; 20] = [5; 20];

/// One torrent; metadata fetches of at most `limit` bytes.
struct Budget {
    pieces: u32,
    limit: u64,
    taken: Arc<AtomicU32>,
    released: Arc<AtomicU32>,
}

impl TorrentLookup for Budget {
    fn piece_count(&self, h: &[u8; 20]) -> Option<u32> {
        (h == &HASH).then_some(self.pieces)
    }
    fn metadata_permit(&self, h: &[u8; 20], size: u64) -> Result<MetadataPermit, MetadataRefusal> {
        assert_eq!(h, &HASH);
        assert!(size > 0 && size <= u64::from(u32::MAX));
        if size > self.limit {
            return Err(MetadataRefusal::TooLarge);
        }
        self.taken.fetch_add(1, Ordering::Relaxed);
        let released = self.released.clone();
        Ok(MetadataPermit::releasing(move || {
            released.fetch_add(1, Ordering::Relaxed);
        }))
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let pieces = u16::from_le_bytes([data[0], data[1]]) as u32 % 5000;
    let incoming = data[2] & 1 == 1;
    let chunk = (data[2] >> 1) as usize + 1;
    let s = ProbeSettings::default();
    let lookup = Budget {
        // Piece count 0 (unknown) for a quarter of the inputs: the metadata paths.
        pieces: if data[0] & 3 == 0 { 0 } else { pieces },
        limit: 1 << 16,
        taken: Arc::default(),
        released: Arc::default(),
    };
    let direction = if incoming {
        Direction::Incoming
    } else {
        Direction::Outgoing { info_hash: HASH, piece_count: lookup.pieces }
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
    // At most one fetch per probe, and its place is back once the probe has ended.
    let taken = lookup.taken.load(Ordering::Relaxed);
    assert!(taken <= 1, "{taken} fetches");
    assert_eq!(lookup.released.load(Ordering::Relaxed), taken, "a place was kept");
});

#![no_main]
//! The probe state machine fed arbitrary peer bytes in arbitrary chunks, for an outgoing and
//! an incoming connection, with or without the grace, and — when the owner is asked — either
//! ended or kept open to watch the peer (as the scan driver does): it must never panic, must
//! end at its deadlines, must never report more pieces than the torrent has, and a crossing it
//! reports must be one (below the watched count before, at or above it after). When the piece count is unknown the probe may fetch
//! metadata (BEP 9) under a budget: at most one fetch per probe, no claim above the budget's
//! limit, and the place is given back by the time the probe has ended.
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use swarmscan_proto::peer_wire::{encode_handshake, Reserved};
use swarmscan_proto::probe::{
    AskReason, Direction, MetadataPermit, MetadataRefusal, Probe, ProbeSettings, Step,
    TorrentLookup, WatchPlan,
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
    if data.len() < 4 {
        return;
    }
    let pieces = u16::from_le_bytes([data[0], data[1]]) as u32 % 5000;
    let incoming = data[2] & 1 == 1;
    let chunk = (data[2] >> 1 & 0x3f) as usize + 1;
    let watch = data[3] & 1 == 1;
    let no_grace = data[3] & 2 == 2;
    let notify_have = (u32::from(data[3] >> 2) * pieces / 63).max(1);
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
    if no_grace {
        p = p.without_grace();
    }
    let mut out = Vec::new();
    p.on_connected(&s, 0, &mut out);
    // Half the inputs start with a valid handshake so the fuzzer reaches the messages.
    let mut stream = Vec::new();
    if data[2] & 0x80 != 0 {
        stream.extend_from_slice(&encode_handshake(&HASH, &[1; 20], Reserved::PROBE));
    }
    stream.extend_from_slice(&data[4..]);
    let plan = WatchPlan { notify_have, sample_ms: 50, keepalive_ms: 200, silence_ms: 1_000 };
    let answer = |p: &mut Probe, now, out: &mut Vec<u8>| match p.take_ask() {
        Some(AskReason::Answered) if watch => p.watch(now, plan),
        Some(AskReason::Crossed(c)) => {
            assert!(c.below_have < plan.notify_have, "{c:?}");
            assert!(c.have >= plan.notify_have, "{c:?}");
            p.stop(&s, now, out);
        }
        Some(AskReason::Answered) => p.stop(&s, now, out),
        Some(_) | None => {}
    };
    let mut now = 1;
    for c in stream.chunks(chunk) {
        match p.on_bytes(&s, &lookup, now, c, &mut out) {
            Step::Finished => break,
            Step::Ask => answer(&mut p, now, &mut out),
            Step::Continue => {}
        }
        now += 7;
    }
    // Time never runs backwards: a deadline already passed is met now (as the engine does).
    let mut guard = 0;
    while !p.is_done() {
        now = now.max(p.deadline(&s));
        if p.on_deadline(&s, now, &mut out) == Step::Ask {
            answer(&mut p, now, &mut out);
        }
        guard += 1;
        assert!(guard < 200, "deadlines must end the probe");
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

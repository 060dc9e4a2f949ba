#![no_main]
//! The peer session (encryption layer + probe) on arbitrary peer bytes in arbitrary chunks:
//! plaintext and MSE, outgoing and incoming, with or without a real peer (our own MSE
//! responder or initiator, or a right plaintext handshake) in front of the fuzzer's bytes,
//! which then go through the real peer's cipher so they reach the probe. An incoming MSE
//! handshake may be refused by the budget. The owner ends the session when asked, or watches
//! the peer. Checks: never panics; the deadlines end it; never more pieces than the torrent
//! has; plaintext costs no DH and an outgoing session no incoming budget; an incoming
//! session takes at most one DH, and none when refused (and then sends nothing); a real
//! peer's MSE handshake always completes; what the session says about falling back agrees
//! with its report.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use swarmscan_proto::mse::{
    self, Crypto, CryptoSet, DhKey, Initiator, MseStream, Progress, Responder,
};
use swarmscan_proto::peer_wire::{encode_handshake, Reserved};
use swarmscan_proto::probe::{
    AskReason, Millis, ProbeEnd, ProbeSettings, Step, TorrentLookup, WatchPlan,
};
use swarmscan_proto::session::{MseSource, PeerSession, SessionEnv};

const HASH: [u8; 20] = [5; 20];

struct Torrents {
    pieces: u32,
}

impl TorrentLookup for Torrents {
    fn piece_count(&self, h: &[u8; 20]) -> Option<u32> {
        (h == &HASH).then_some(self.pieces)
    }
    fn info_hash_by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        (req2 == &mse::req2_hash(&HASH)).then_some(HASH)
    }
}

fn key(which: usize) -> DhKey {
    static KEYS: OnceLock<[DhKey; 2]> = OnceLock::new();
    KEYS.get_or_init(|| [DhKey::new([3; 20]), DhKey::new([9; 20])])[which].clone()
}

struct Source {
    pad_len: usize,
    admit: bool,
    keys: u32,
    admissions: u32,
}

impl MseSource for Source {
    fn dh_key(&mut self) -> DhKey {
        self.keys += 1;
        key(0)
    }
    fn pad(&mut self) -> Vec<u8> {
        vec![0x77; self.pad_len]
    }
    fn admit_incoming(&mut self, _now: Millis) -> bool {
        self.admissions += 1;
        self.admit
    }
}

struct Run {
    settings: ProbeSettings,
    lookup: Torrents,
    mse: Source,
    s: PeerSession,
    watch: Option<WatchPlan>,
    sent: Vec<u8>,
}

impl Run {
    fn feed(&mut self, now: Millis, bytes: &[u8]) -> Step {
        let mut env = SessionEnv {
            settings: &self.settings,
            lookup: &self.lookup,
            mse: &mut self.mse,
        };
        let step = self.s.on_bytes(&mut env, now, bytes, &mut self.sent);
        if step == Step::Ask {
            self.answer(now);
        }
        step
    }

    fn answer(&mut self, now: Millis) {
        match (self.s.take_ask(), self.watch) {
            (Some(AskReason::Answered), Some(plan)) => {
                self.s.watch(now, plan);
                assert!(self.s.is_watching() && self.s.was_watched());
            }
            (Some(AskReason::Crossed(c)), plan) => {
                let plan = plan.expect("only watched sessions cross");
                assert!(
                    c.below_have < plan.notify_have && c.have >= plan.notify_have,
                    "{c:?}"
                );
                self.s.stop(&self.settings, now, &mut self.sent);
            }
            (Some(AskReason::Answered), None) => self.s.stop(&self.settings, now, &mut self.sent),
            (Some(_) | None, _) => {}
        }
    }
}

/// The real peer in front of the fuzzer's bytes: its cipher once its handshake is done.
enum Peer {
    None,
    Responder(Box<Responder>),
    Initiator(Box<Initiator>),
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let mode = data[0] & 3;
    let no_grace = data[0] & 4 != 0;
    let watch = data[0] & 8 != 0;
    let real_peer = data[0] & 16 != 0;
    let admit = data[0] & 32 != 0;
    let close_at_end = data[0] & 64 != 0;
    let cipher_garbage = data[0] & 128 != 0;
    let chunks = [
        usize::from(data[1] & 15) * 7 + 1,
        usize::from(data[1] >> 4) * 13 + 1,
    ];
    let pads = (usize::from(data[2] & 31), usize::from(data[2] >> 5) * 40);
    let pieces = u32::from(data[3]) * 20;
    let prefer = if data[4] & 1 == 0 {
        Crypto::Rc4
    } else {
        Crypto::Plaintext
    };
    let provide =
        [CryptoSet::BOTH, CryptoSet::RC4, CryptoSet::PLAINTEXT][usize::from(data[4] >> 1) % 3];
    let notify_have = (u32::from(data[4] >> 3) * pieces / 31).max(1);
    let input = &data[5..];

    let outgoing = mode < 2;
    let use_mse = mode == 1;
    let mut s = if outgoing {
        PeerSession::outgoing(HASH, pieces, 0)
    } else {
        PeerSession::incoming(0)
    };
    if use_mse {
        s = s.with_mse();
    }
    if no_grace {
        s = s.without_grace();
    }
    let mut run = Run {
        settings: ProbeSettings {
            dht_port: 6881,
            ..ProbeSettings::default()
        },
        lookup: Torrents { pieces },
        mse: Source {
            pad_len: pads.0,
            admit,
            keys: 0,
            admissions: 0,
        },
        s,
        watch: watch.then_some(WatchPlan {
            notify_have,
            sample_ms: 50,
            keepalive_ms: 200,
            silence_ms: 1_000,
        }),
        sent: Vec::new(),
    };
    {
        let mut env = SessionEnv {
            settings: &run.settings,
            lookup: &run.lookup,
            mse: &mut run.mse,
        };
        run.s.on_connected(&mut env, 0, &mut run.sent);
    }

    // The real peer's handshake, exchanged in the fuzzer's chunk sizes.
    let mut peer = match (real_peer, mode) {
        (false, _) | (true, 0) => Peer::None,
        (true, 1) => Peer::Responder(Box::new(
            Responder::new(
                key(1),
                vec![1; pads.1],
                vec![2; pads.0],
                CryptoSet::BOTH,
                prefer,
            )
            .unwrap(),
        )),
        (true, _) => {
            let hs = encode_handshake(&HASH, &[1; 20], Reserved::PROBE).to_vec();
            let mut i = Initiator::new(HASH, key(1), vec![3; pads.1], vec![4; pads.0], provide, hs)
                .unwrap();
            let mut first = Vec::new();
            i.start(&mut first);
            run.feed(1, &first);
            Peer::Initiator(Box::new(i))
        }
    };
    let mut now: Millis = 2;
    let mut stream: Option<MseStream> = None;
    let mut to_peer = std::mem::take(&mut run.sent);
    for _ in 0..8 {
        if run.s.is_done() {
            break;
        }
        let mut to_us = Vec::new();
        let result = match &mut peer {
            Peer::None => break,
            Peer::Responder(r) => match r.on_bytes(&to_peer, &mut to_us, mse::lookup_in(&[HASH])) {
                Ok(Progress::Done(d)) => Some((d.stream, d.payload)),
                Ok(Progress::NeedMore) => None,
                Err(e) => panic!("our responder refused our initiator: {e}"),
            },
            Peer::Initiator(i) => match i.on_bytes(&to_peer, &mut to_us) {
                Ok(Progress::Done(d)) => Some((d.stream, d.payload)),
                Ok(Progress::NeedMore) => None,
                Err(e) => panic!("our initiator refused our responder: {e}"),
            },
        };
        to_peer.clear();
        for c in to_us.chunks(chunks[0]) {
            if run.feed(now, c) == Step::Finished {
                break;
            }
        }
        now += 3;
        to_peer.append(&mut run.sent);
        if let Some((st, _payload)) = result {
            stream = Some(st);
            break;
        }
    }
    let refused = !outgoing && real_peer && !admit;
    if real_peer && use_mse {
        assert!(stream.is_some(), "a real responder's handshake completes");
        assert!(run.s.report().mse.is_some());
    }
    if !outgoing && real_peer && admit {
        assert!(
            run.s.report().mse.is_some(),
            "a real initiator's handshake completes"
        );
        assert!(run.s.report().handshake);
    }
    if refused {
        assert!(run.s.is_done());
        assert!(to_peer.is_empty(), "nothing is sent to a refused peer");
        assert!(matches!(&run.s.report().end, ProbeEnd::MseFailed(m) if m.contains("budget")));
    }

    // The fuzzer's bytes: a valid handshake first for plaintext with a real peer, through the
    // real peer's cipher unless `cipher_garbage`.
    let mut bytes = Vec::new();
    if real_peer && mode == 0 {
        bytes.extend_from_slice(&encode_handshake(&HASH, &[1; 20], Reserved::PROBE));
    }
    if real_peer && use_mse {
        bytes.extend_from_slice(&encode_handshake(&HASH, &[1; 20], Reserved::PROBE));
    }
    bytes.extend_from_slice(input);
    if let Some(st) = stream.as_mut() {
        if !cipher_garbage {
            st.encrypt(&mut bytes);
        }
    }
    let mut at = 0;
    let mut k = 0;
    while at < bytes.len() && !run.s.is_done() {
        let n = chunks[k % 2].min(bytes.len() - at);
        if run.feed(now, &bytes[at..at + n]) == Step::Finished {
            break;
        }
        at += n;
        k += 1;
        now += 7;
    }
    if close_at_end {
        run.s.on_closed(now, None);
    }
    let mut guard = 0;
    while !run.s.is_done() {
        let d = run.s.deadline(&run.settings);
        if run.s.on_deadline(&run.settings, d, &mut run.sent) == Step::Ask {
            run.answer(d);
        }
        guard += 1;
        assert!(guard < 200, "deadlines must end the session");
    }

    let r = run.s.report();
    if r.piece_count > 0 {
        assert!(r.pieces_have <= r.piece_count);
    }
    let m = &run.mse;
    if !use_mse && outgoing {
        assert_eq!(
            (m.keys, m.admissions, r.mse),
            (0, 0, None),
            "plaintext costs no DH"
        );
    }
    if outgoing {
        assert_eq!(m.admissions, 0);
        assert!(m.keys <= 1);
    } else {
        assert!(m.admissions <= 1 && m.keys <= m.admissions);
        if r.mse.is_some() {
            assert!(m.keys == 1 && admit);
        }
    }
    let fb = run.s.fallback();
    assert!(!fb.hung_up || !r.handshake);
    assert!(!fb.mse_failed || (run.s.mse_attempted() && r.mse.is_none()));
    assert_eq!(fb.silent, !r.handshake);
    if matches!(r.end, ProbeEnd::MseFailed(_)) {
        assert!(r.mse.is_none());
    }
});

//! The session against scripted peers and our own MSE initiator/responder, at memory speed:
//! plaintext and MSE both ways end to end, what a session tells its owner about falling back,
//! and garbage and truncation at every byte boundary (never a panic, always the right end).

use std::sync::OnceLock;

use super::*;
use crate::mse::{Crypto, CryptoSet, DhKey, Initiator, MseStream, Progress, Responder};
use crate::peer_wire::{encode_handshake, Handshake, Message, Reserved, HANDSHAKE_LEN};

const HASH: [u8; 20] = [7; 20];
const PIECES: u32 = 10;
const PEER_ID: &[u8; 20] = b"-lt20B0-abcdefghijkl";
const ETIMEDOUT: i32 = 110;

/// The torrent we scan: `PIECES` pieces, known by its hash and its MSE `req2` hash.
struct Torrents;

impl TorrentLookup for Torrents {
    fn piece_count(&self, info_hash: &[u8; 20]) -> Option<u32> {
        (info_hash == &HASH).then_some(PIECES)
    }

    fn info_hash_by_req2(&self, req2: &[u8; 20]) -> Option<[u8; 20]> {
        (req2 == &mse::req2_hash(&HASH)).then_some(HASH)
    }
}

/// Our DH key pair (made once: its public key costs an exponentiation).
fn our_key() -> DhKey {
    static KEY: OnceLock<DhKey> = OnceLock::new();
    KEY.get_or_init(|| DhKey::new([3; mse::PRIVATE_KEY_LEN]))
        .clone()
}

/// The peer's DH key pair.
fn peer_key() -> DhKey {
    static KEY: OnceLock<DhKey> = OnceLock::new();
    KEY.get_or_init(|| DhKey::new([9; mse::PRIVATE_KEY_LEN]))
        .clone()
}

/// Fixed key and pads, a budget that admits or not, and a count of what was asked.
struct Fixed {
    pad_len: usize,
    admit: bool,
    keys: u32,
    admissions: u32,
}

impl Fixed {
    fn new() -> Fixed {
        Fixed {
            pad_len: 5,
            admit: true,
            keys: 0,
            admissions: 0,
        }
    }
}

impl MseSource for Fixed {
    fn dh_key(&mut self) -> DhKey {
        self.keys += 1;
        our_key()
    }

    fn pad(&mut self) -> Vec<u8> {
        vec![0xA5; self.pad_len]
    }

    fn admit_incoming(&mut self, _now: Millis) -> bool {
        self.admissions += 1;
        self.admit
    }
}

fn settings() -> ProbeSettings {
    ProbeSettings {
        dht_port: 6881,
        ..ProbeSettings::default()
    }
}

/// A session with its owner's side: settings, lookup, MSE source.
struct Owner {
    settings: ProbeSettings,
    mse: Fixed,
    session: PeerSession,
}

impl Owner {
    fn new(session: PeerSession) -> Owner {
        Owner {
            settings: settings(),
            mse: Fixed::new(),
            session,
        }
    }

    fn connect(&mut self, now: Millis) -> Vec<u8> {
        let mut out = Vec::new();
        let mut env = SessionEnv {
            settings: &self.settings,
            lookup: &Torrents,
            mse: &mut self.mse,
        };
        self.session.on_connected(&mut env, now, &mut out);
        out
    }

    fn feed(&mut self, now: Millis, bytes: &[u8], out: &mut Vec<u8>) -> Step {
        let mut env = SessionEnv {
            settings: &self.settings,
            lookup: &Torrents,
            mse: &mut self.mse,
        };
        self.session.on_bytes(&mut env, now, bytes, out)
    }

    /// Feeds `bytes` in chunks of `chunk`, stopping at `Finished`.
    fn feed_chunks(&mut self, now: Millis, bytes: &[u8], chunk: usize, out: &mut Vec<u8>) -> Step {
        let mut step = Step::Continue;
        for c in bytes.chunks(chunk.max(1)) {
            step = self.feed(now, c, out);
            if step == Step::Finished {
                break;
            }
        }
        step
    }

    /// Runs the session's deadlines until it ends, ending it when it asks (a probe, not a
    /// watch). Returns what it sent.
    fn run_out(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..100 {
            if self.session.is_done() {
                return out;
            }
            let d = self.session.deadline(&self.settings);
            if self.session.on_deadline(&self.settings, d, &mut out) == Step::Ask {
                self.answer(d, &mut out);
            }
        }
        panic!("deadlines must end the session");
    }

    fn answer(&mut self, now: Millis, out: &mut Vec<u8>) {
        assert_eq!(self.session.take_ask(), Some(AskReason::Answered));
        self.session.stop(&self.settings, now, out);
    }
}

fn peer_handshake(info_hash: &[u8; 20]) -> Vec<u8> {
    encode_handshake(info_hash, PEER_ID, Reserved::PROBE).to_vec()
}

/// A peer's stream after its handshake: 5 of 10 pieces, then a have.
fn peer_progress() -> Vec<u8> {
    let mut v = Message::Bitfield(&[0b1111_0000, 0b1000_0000]).to_vec();
    v.extend(Message::Have(9).to_vec());
    v
}

/// True when `bytes` starts with an extension handshake message (BEP 10, id 0).
fn starts_with_ext_handshake(bytes: &[u8]) -> bool {
    bytes.len() > 6 && bytes[4] == 20 && bytes[5] == 0
}

#[test]
fn plaintext_outgoing_end_to_end() {
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0).with_peer_id_nonce(42));
    let hs = o.connect(5);
    let (ours, _) = Handshake::decode(&hs).unwrap();
    assert_eq!(hs.len(), HANDSHAKE_LEN);
    assert_eq!(ours.info_hash, HASH);
    assert_eq!(&ours.peer_id[..8], b"-SW0100-");
    assert_eq!(
        &ours.peer_id[8..],
        b"240000000000",
        "the nonce, digit by digit"
    );

    let mut out = Vec::new();
    let mut stream = peer_handshake(&HASH);
    stream.extend(peer_progress());
    assert_eq!(o.feed(10, &stream, &mut out), Step::Continue);
    assert!(starts_with_ext_handshake(&out), "{out:?}");
    assert_eq!(o.session.deadline(&o.settings), 10 + o.settings.grace_ms);
    out.clear();
    let at = 10 + o.settings.grace_ms;
    assert_eq!(o.session.on_deadline(&o.settings, at, &mut out), Step::Ask);
    assert_eq!(o.session.snapshot(at).progress(), Some(0.6));
    o.answer(at, &mut out);
    assert_eq!(
        out,
        Message::Port(6881).to_vec(),
        "our DHT port, in the clear"
    );
    assert_eq!(o.session.fallback(), Fallback::default());
    assert_eq!(o.session.connect_ms(), Some(5));
    assert_eq!((o.mse.keys, o.mse.admissions), (0, 0));
    let r = o.session.into_report();
    assert_eq!(r.end, ProbeEnd::Answered);
    assert_eq!((r.pieces_have, r.mse), (6, None));
}

#[test]
fn plaintext_incoming_end_to_end_in_one_byte_reads() {
    let mut o = Owner::new(PeerSession::incoming(100));
    assert!(
        o.connect(100).is_empty(),
        "a peer that dials us speaks first"
    );
    let mut stream = peer_handshake(&HASH);
    stream.extend(Message::HaveAll.to_vec());
    let mut out = Vec::new();
    assert_eq!(o.feed_chunks(110, &stream, 1, &mut out), Step::Continue);
    let (ours, n) = Handshake::decode(&out).unwrap();
    assert_eq!(ours.info_hash, HASH);
    assert!(starts_with_ext_handshake(&out[n..]));
    o.run_out();
    let r = o.session.report();
    assert_eq!(
        (r.end.clone(), r.progress(), r.mse),
        (ProbeEnd::Answered, Some(1.0), None)
    );
    assert_eq!(
        (o.mse.keys, o.mse.admissions),
        (0, 0),
        "plaintext costs no DH"
    );
}

#[test]
fn incoming_for_a_torrent_we_do_not_scan_ends_at_once() {
    let mut o = Owner::new(PeerSession::incoming(0));
    o.connect(0);
    let mut out = Vec::new();
    let step = o.feed(1, &peer_handshake(&[8; 20]), &mut out);
    assert_eq!(step, Step::Finished);
    assert!(out.is_empty());
    assert_eq!(o.session.report().end, ProbeEnd::UnknownInfoHash);
}

/// Moves bytes between the session and our responder until both are done; the peer's
/// BitTorrent stream (`peer_plain`) goes out encrypted once the responder is done. Returns
/// the peer's stream and what the session sent after the MSE handshake, decrypted.
fn mse_outgoing_run(
    prefer: Crypto,
    chunk: usize,
    pad_len: usize,
    peer_plain: &[u8],
) -> (Owner, MseStream, Vec<u8>) {
    let session = PeerSession::outgoing(HASH, PIECES, 0).with_mse();
    mse_outgoing_run_of(session, prefer, chunk, pad_len, peer_plain)
}

/// [`mse_outgoing_run`] of a given outgoing MSE session.
fn mse_outgoing_run_of(
    session: PeerSession,
    prefer: Crypto,
    chunk: usize,
    pad_len: usize,
    peer_plain: &[u8],
) -> (Owner, MseStream, Vec<u8>) {
    let mut o = Owner::new(session);
    o.mse.pad_len = pad_len;
    let step1 = o.connect(0);
    assert_eq!(
        step1.len(),
        mse::KEY_LEN + pad_len,
        "Ya and PadA, nothing in the clear"
    );
    assert_eq!(&step1[..mse::KEY_LEN], our_key().public_key());
    let mut responder = Responder::new(
        peer_key(),
        vec![0x11; 7],
        vec![0x22; 3],
        CryptoSet::BOTH,
        prefer,
    )
    .unwrap();
    let (mut to_peer, mut to_us) = (step1, Vec::new());
    let mut done = None;
    for _ in 0..100 {
        if done.is_none() && !to_peer.is_empty() {
            let bytes = std::mem::take(&mut to_peer);
            for c in bytes.chunks(chunk) {
                match responder.on_bytes(c, &mut to_us, mse::lookup_in(&[HASH])) {
                    Ok(Progress::NeedMore) => {}
                    Ok(Progress::Done(d)) => {
                        done = Some(d);
                        break;
                    }
                    Err(e) => panic!("responder: {e}"),
                }
            }
        }
        if let Some(d) = done.as_mut() {
            // The peer answers our handshake (IA).
            let mut plain = peer_plain.to_vec();
            d.stream.encrypt(&mut plain);
            to_us.extend(plain);
        }
        let bytes = std::mem::take(&mut to_us);
        o.feed_chunks(10, &bytes, chunk, &mut to_peer);
        if done.is_some() {
            break;
        }
    }
    let done = done.expect("responder done");
    assert_eq!(done.info_hash, HASH);
    assert_eq!(done.crypto, prefer);
    let (hs, _) = Handshake::decode(&done.initial_payload).expect("our handshake is IA");
    assert_eq!((hs.info_hash, &hs.peer_id[..8]), (HASH, &b"-SW0100-"[..]));
    assert!(done.payload.is_empty(), "nothing follows our IA");
    let mut stream = done.stream;
    stream.decrypt(&mut to_peer);
    (o, stream, to_peer)
}

#[test]
fn mse_initiator_against_our_responder_end_to_end() {
    for (prefer, chunk, pad_len) in [
        (Crypto::Rc4, 1000, 0),
        (Crypto::Rc4, 1, 31),
        (Crypto::Plaintext, 7, 12),
    ] {
        let mut peer = peer_handshake(&HASH);
        peer.extend(peer_progress());
        let (mut o, mut stream, after) = mse_outgoing_run(prefer, chunk, pad_len, &peer);
        assert!(starts_with_ext_handshake(&after), "{prefer:?}: {after:?}");
        assert_eq!(o.session.report().pieces_have, 6);
        let mut out = o.run_out();
        stream.decrypt(&mut out);
        assert_eq!(out, Message::Port(6881).to_vec(), "through the cipher");
        let want = if prefer == Crypto::Rc4 {
            "rc4"
        } else {
            "plaintext"
        };
        let r = o.session.report();
        assert_eq!((r.end.clone(), r.mse), (ProbeEnd::Answered, Some(want)));
        assert_eq!(r.progress(), Some(0.6));
        assert_eq!(o.session.fallback(), Fallback::default());
        assert!(o.session.mse_attempted());
        assert_eq!((o.mse.keys, o.mse.admissions), (1, 0));
    }
}

/// Our own initiator dials the session: its handshake rides in IA, our answer comes back
/// through the cipher.
fn mse_incoming_run(provide: CryptoSet, chunk: usize) -> (Owner, MseStream, Vec<u8>) {
    let mut o = Owner::new(PeerSession::incoming(0));
    assert!(o.connect(0).is_empty());
    let mut initiator = Initiator::new(
        HASH,
        peer_key(),
        vec![0x33; 9],
        vec![0x44; 4],
        provide,
        peer_handshake(&HASH),
    )
    .unwrap();
    let mut to_us = Vec::new();
    initiator.start(&mut to_us);
    let mut to_peer = Vec::new();
    let mut done = None;
    for _ in 0..100 {
        let bytes = std::mem::take(&mut to_us);
        assert_eq!(
            o.feed_chunks(10, &bytes, chunk, &mut to_peer),
            Step::Continue
        );
        let bytes = std::mem::take(&mut to_peer);
        for (i, c) in bytes.chunks(chunk).enumerate() {
            match initiator.on_bytes(c, &mut to_us) {
                Ok(Progress::NeedMore) => {}
                Ok(Progress::Done(mut d)) => {
                    // What followed in later chunks is the session's stream too.
                    let mut rest = bytes[((i + 1) * chunk).min(bytes.len())..].to_vec();
                    d.stream.decrypt(&mut rest);
                    d.payload.extend(rest);
                    done = Some(d);
                    break;
                }
                Err(e) => panic!("initiator: {e}"),
            }
        }
        if done.is_some() {
            break;
        }
    }
    let done = done.expect("initiator done");
    (o, done.stream, done.payload)
}

/// The tap keeps the plaintext both ways: what the probe sent and read, not the MSE handshake
/// or the ciphertext on the wire.
#[test]
fn tap_keeps_the_plaintext_of_an_encrypted_session() {
    let mut peer = peer_handshake(&HASH);
    peer.extend(peer_progress());
    let session = PeerSession::outgoing(HASH, PIECES, 0).with_mse().with_tap();
    let (mut o, mut stream, after) = mse_outgoing_run_of(session, Crypto::Rc4, 5, 0, &peer);
    let mut wire_tail = o.run_out();
    stream.decrypt(&mut wire_tail);
    let tap = o.session.tap().expect("tap asked for").clone();
    let joined = |outgoing: bool| -> Vec<u8> {
        tap.chunks
            .iter()
            .filter(|c| c.outgoing == outgoing)
            .flat_map(|c| c.bytes.iter().copied())
            .collect()
    };
    assert_eq!(joined(false), peer, "the peer's stream, decrypted");
    let sent = joined(true);
    let (ours, n) = Handshake::decode(&sent).expect("our handshake first (it rode as IA)");
    assert_eq!(ours.info_hash, HASH);
    let mut after_handshake = after;
    after_handshake.extend(wire_tail);
    assert_eq!(
        &sent[n..],
        &after_handshake[..],
        "then what went through the cipher"
    );
    assert!(tap.chunks.iter().all(|c| !c.bytes.is_empty()));
    assert!(tap.chunks.windows(2).all(|w| w[0].at <= w[1].at));

    // Off by default: nothing kept.
    let (o, ..) = mse_outgoing_run(Crypto::Rc4, 1000, 0, &peer);
    assert!(o.session.tap().is_none());

    // An MSE handshake the peer hangs up on: our handshake never reached it, so none is shown.
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0).with_mse().with_tap());
    assert!(!o.connect(1).is_empty());
    o.session.on_closed(2, None);
    assert_eq!(o.session.tap().unwrap().chunks, vec![]);
}

#[test]
fn plaintext_tap_is_the_wire() {
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0).with_tap());
    let mut wire = o.connect(1);
    let mut stream = peer_handshake(&HASH);
    stream.extend(peer_progress());
    o.feed_chunks(2, &stream, 3, &mut wire);
    wire.extend(o.run_out());
    let tap = o.session.tap().unwrap();
    let sent: Vec<u8> = tap
        .chunks
        .iter()
        .filter(|c| c.outgoing)
        .flat_map(|c| c.bytes.clone())
        .collect();
    let read: Vec<u8> = tap
        .chunks
        .iter()
        .filter(|c| !c.outgoing)
        .flat_map(|c| c.bytes.clone())
        .collect();
    assert_eq!((sent, read), (wire, stream));
}

#[test]
fn mse_incoming_against_our_initiator_end_to_end() {
    for (provide, chunk, want) in [
        (CryptoSet::BOTH, 1000, "rc4"),
        (CryptoSet::BOTH, 3, "rc4"),
        (CryptoSet::PLAINTEXT, 50, "plaintext"),
    ] {
        let (mut o, mut stream, answer) = mse_incoming_run(provide, chunk);
        // The session's answer to the handshake in IA: ours and our extension handshake.
        let (hs, n) = Handshake::decode(&answer).expect("our handshake");
        assert_eq!(hs.info_hash, HASH);
        assert!(starts_with_ext_handshake(&answer[n..]));
        let mut progress = Message::HaveNone.to_vec();
        stream.encrypt(&mut progress);
        let mut out = Vec::new();
        assert_eq!(o.feed(20, &progress, &mut out), Step::Continue);
        o.run_out();
        let r = o.session.report();
        assert_eq!(r.info_hash, Some(HASH));
        assert_eq!(
            (r.end.clone(), r.progress(), r.mse),
            (ProbeEnd::Answered, Some(0.0), Some(want))
        );
        assert_eq!((o.mse.keys, o.mse.admissions), (1, 1));
        assert!(
            !o.session.mse_attempted(),
            "an incoming session initiates nothing"
        );
    }
}

#[test]
fn incoming_mse_waits_for_the_whole_key_and_asks_the_budget_first() {
    let mut step1 = Vec::new();
    Initiator::new(HASH, peer_key(), vec![], vec![], CryptoSet::BOTH, vec![])
        .unwrap()
        .start(&mut step1);
    // 95 bytes: no DH, nothing asked, nothing sent.
    let mut o = Owner::new(PeerSession::incoming(0));
    o.connect(0);
    let mut out = Vec::new();
    assert_eq!(o.feed(1, &step1[..95], &mut out), Step::Continue);
    assert!(out.is_empty());
    assert_eq!((o.mse.keys, o.mse.admissions), (0, 0));
    // The 96th byte: the budget is asked; refused, the session ends before any DH.
    o.mse.admit = false;
    assert_eq!(o.feed(2, &step1[95..], &mut out), Step::Finished);
    assert!(out.is_empty(), "nothing is sent to a refused peer");
    assert_eq!((o.mse.keys, o.mse.admissions), (0, 1));
    assert!(matches!(&o.session.report().end, ProbeEnd::MseFailed(m) if m.contains("budget")));
    // Admitted: Yb and PadB go back.
    let mut o = Owner::new(PeerSession::incoming(0));
    o.connect(0);
    assert_eq!(o.feed(1, &step1, &mut out), Step::Continue);
    assert_eq!(out.len(), mse::KEY_LEN + 5);
    assert_eq!(&out[..mse::KEY_LEN], our_key().public_key());
}

#[test]
fn incoming_mse_for_a_torrent_we_do_not_scan_fails() {
    let mut o = Owner::new(PeerSession::incoming(0));
    o.connect(0);
    let mut initiator =
        Initiator::new([8; 20], peer_key(), vec![], vec![], CryptoSet::BOTH, vec![]).unwrap();
    let (mut to_us, mut to_peer) = (Vec::new(), Vec::new());
    initiator.start(&mut to_us);
    assert_eq!(o.feed(1, &to_us, &mut to_peer), Step::Continue);
    to_us.clear();
    assert!(matches!(
        initiator.on_bytes(&to_peer, &mut to_us),
        Ok(Progress::NeedMore)
    ));
    let mut out = Vec::new();
    assert_eq!(o.feed(2, &to_us, &mut out), Step::Finished);
    let want = ProbeEnd::MseFailed(mse::MseError::UnknownInfoHash.to_string());
    assert_eq!(o.session.report().end, want);
}

/// What the session tells its owner for the plaintext → MSE fallback (and back).
#[test]
fn fallback_says_what_the_connection_showed() {
    let closed = |mse: bool, errno: Option<i32>, connect: bool| {
        let mut s = PeerSession::outgoing(HASH, PIECES, 0);
        if mse {
            s = s.with_mse();
        }
        let mut o = Owner::new(s);
        if connect {
            o.connect(3);
        }
        o.session.on_closed(9, errno);
        o.session.fallback()
    };
    let f = |hung_up, mse_failed, silent| Fallback {
        hung_up,
        mse_failed,
        silent,
    };
    // Plaintext, hung up on at our handshake (EOF or reset): maybe it requires encryption.
    assert_eq!(closed(false, None, true), f(true, false, true));
    assert_eq!(closed(false, Some(ECONNRESET), true), f(true, false, true));
    // Any other error after connecting: silent, not a hang-up.
    assert_eq!(closed(false, Some(ETIMEDOUT), true), f(false, false, true));
    // Never connected: nothing learned about encryption.
    assert_eq!(
        closed(false, Some(ETIMEDOUT), false),
        f(false, false, false)
    );
    assert_eq!(closed(true, Some(ETIMEDOUT), false), f(false, false, false));
    // MSE hung up on during its handshake: MSE failed.
    assert_eq!(closed(true, None, true), f(true, true, true));
    assert_eq!(closed(true, Some(ETIMEDOUT), true), f(false, false, true));

    // MSE to a plaintext-only peer that answers with its handshake and more: no VC, failed.
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0).with_mse());
    o.connect(0);
    let mut junk = peer_handshake(&HASH);
    junk.resize(mse::KEY_LEN + mse::VC_SEARCH_LEN + 1, 0x55);
    let mut out = Vec::new();
    assert_eq!(o.feed(1, &junk, &mut out), Step::Finished);
    assert_eq!(o.session.fallback(), f(false, true, true));
    assert_eq!(
        o.session.report().end,
        ProbeEnd::MseFailed(mse::MseError::NoVc.to_string())
    );

    // MSE worked, then the peer hung up before its handshake: not an MSE failure.
    let (mut o, ..) = mse_outgoing_run(Crypto::Rc4, 1000, 0, &[]);
    assert_eq!(o.session.report().mse, Some("rc4"));
    o.session.on_closed(20, None);
    assert_eq!(o.session.fallback(), f(true, false, true));

    // A plaintext peer that answered, then went quiet: nothing to fall back from.
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0));
    o.connect(0);
    o.feed(1, &peer_handshake(&HASH), &mut out);
    o.run_out();
    assert_eq!(o.session.report().end, ProbeEnd::QuietTimeout);
    assert_eq!(o.session.fallback(), Fallback::default());
}

/// A fixed transcript of a peer, the offsets at which its parts end, and how a session made
/// the same way reacts to it.
struct Transcript {
    bytes: Vec<u8>,
    /// Where the MSE handshake (the peer's side) ends; 0 for plaintext.
    mse_end: usize,
    /// Where the peer's BitTorrent handshake ends.
    handshake_end: usize,
    /// Where the peer's first progress message ends.
    progress_end: usize,
}

fn plaintext_transcript() -> Transcript {
    let mut bytes = peer_handshake(&HASH);
    let bitfield = Message::Bitfield(&[0b1111_0000, 0b1000_0000]).to_vec();
    bytes.extend(&bitfield);
    bytes.extend(Message::Have(9).to_vec());
    Transcript {
        bytes,
        mse_end: 0,
        handshake_end: HANDSHAKE_LEN,
        progress_end: HANDSHAKE_LEN + bitfield.len(),
    }
}

/// The bytes our responder sent a session made by `Owner::new(outgoing().with_mse())`:
/// the session's key and pads are fixed, so every such session sends the same and takes this
/// transcript.
fn mse_outgoing_transcript() -> Transcript {
    let mut o = Owner::new(PeerSession::outgoing(HASH, PIECES, 0).with_mse());
    let mut to_peer = o.connect(0);
    let mut responder = Responder::new(
        peer_key(),
        vec![0x11; 7],
        vec![0x22; 3],
        CryptoSet::BOTH,
        Crypto::Rc4,
    )
    .unwrap();
    let mut peer = Vec::new();
    let mut step2 = Vec::new();
    assert!(matches!(
        responder.on_bytes(&to_peer, &mut step2, mse::lookup_in(&[HASH])),
        Ok(Progress::NeedMore)
    ));
    to_peer.clear();
    o.feed(1, &step2, &mut to_peer);
    peer.extend(step2);
    let mut step4 = Vec::new();
    let Ok(Progress::Done(mut done)) =
        responder.on_bytes(&to_peer, &mut step4, mse::lookup_in(&[HASH]))
    else {
        panic!("responder not done");
    };
    peer.extend(step4);
    let mse_end = peer.len();
    let mut plain = plaintext_transcript();
    done.stream.encrypt(&mut plain.bytes);
    peer.extend(plain.bytes);
    Transcript {
        bytes: peer,
        mse_end,
        handshake_end: mse_end + plain.handshake_end,
        progress_end: mse_end + plain.progress_end,
    }
}

/// Every prefix of a peer's transcript, then the peer closes (or goes quiet): never a panic,
/// and the end, the handshake, MSE and progress are what that prefix allows.
fn truncate_everywhere(t: &Transcript, make: impl Fn() -> PeerSession, mse: bool) {
    for cut in 0..=t.bytes.len() {
        for close in [true, false] {
            let mut o = Owner::new(make());
            o.connect(0);
            let mut out = Vec::new();
            let (a, b) = t.bytes[..cut].split_at(cut / 2);
            assert_ne!(o.feed(1, a, &mut out), Step::Finished, "cut {cut}");
            assert_ne!(o.feed(2, b, &mut out), Step::Finished, "cut {cut}");
            if close {
                o.session.on_closed(3, None);
            } else {
                o.run_out();
            }
            let r = o.session.report();
            let mse_done = mse && cut >= t.mse_end;
            let handshake = cut >= t.handshake_end;
            let answered = cut >= t.progress_end;
            let want_end = match (close, answered) {
                (true, _) => ProbeEnd::PeerClosed,
                (false, true) => ProbeEnd::Answered,
                (false, false) => ProbeEnd::QuietTimeout,
            };
            assert_eq!(r.end, want_end, "cut {cut} close {close}");
            assert_eq!(r.handshake, handshake, "cut {cut}");
            assert_eq!(r.mse.is_some(), mse_done, "cut {cut}");
            assert_eq!(r.progress().is_some(), answered, "cut {cut}");
            let fb = o.session.fallback();
            assert_eq!(fb.hung_up, close && !handshake, "cut {cut}");
            assert_eq!(fb.mse_failed, mse && close && !mse_done, "cut {cut}");
            assert_eq!(fb.silent, !handshake, "cut {cut}");
        }
    }
}

#[test]
fn plaintext_truncated_at_every_byte() {
    let t = plaintext_transcript();
    truncate_everywhere(&t, || PeerSession::outgoing(HASH, PIECES, 0), false);
}

#[test]
fn mse_truncated_at_every_byte() {
    let t = mse_outgoing_transcript();
    assert!(t.mse_end > mse::KEY_LEN);
    truncate_everywhere(
        &t,
        || PeerSession::outgoing(HASH, PIECES, 0).with_mse(),
        true,
    );
}

/// An incoming connection cut anywhere in the peer's plaintext handshake or MSE handshake.
#[test]
fn incoming_truncated_at_every_byte() {
    // Plaintext: the peer's handshake, then its progress.
    let t = plaintext_transcript();
    for cut in 0..=t.bytes.len() {
        let mut o = Owner::new(PeerSession::incoming(0));
        o.connect(0);
        let mut out = Vec::new();
        assert_ne!(o.feed(1, &t.bytes[..cut], &mut out), Step::Finished);
        o.run_out();
        let r = o.session.report();
        let want = if cut >= t.progress_end {
            ProbeEnd::Answered
        } else {
            ProbeEnd::QuietTimeout
        };
        assert_eq!(
            (r.end.clone(), r.handshake),
            (want, cut >= t.handshake_end),
            "cut {cut}"
        );
        if cut < t.handshake_end {
            assert_eq!(r.total_ms, o.settings.incoming_handshake_ms, "cut {cut}");
        }
    }
    // MSE: our initiator's whole first flight (Ya, PadA, step 3 with its handshake as IA),
    // which a session answers the same way every time (fixed key and pads).
    let mut to_us = Vec::new();
    let mut initiator = Initiator::new(
        HASH,
        peer_key(),
        vec![0x33; 9],
        vec![0x44; 4],
        CryptoSet::BOTH,
        peer_handshake(&HASH),
    )
    .unwrap();
    initiator.start(&mut to_us);
    let mut o = Owner::new(PeerSession::incoming(0));
    let mut step2 = Vec::new();
    o.feed(1, &to_us, &mut step2);
    assert!(matches!(
        initiator.on_bytes(&step2, &mut to_us),
        Ok(Progress::NeedMore)
    ));
    let flight = to_us;
    for cut in 0..=flight.len() {
        let mut o = Owner::new(PeerSession::incoming(0));
        o.connect(0);
        let mut out = Vec::new();
        assert_ne!(
            o.feed(1, &flight[..cut], &mut out),
            Step::Finished,
            "cut {cut}"
        );
        let whole = cut == flight.len();
        assert_eq!(
            o.mse.admissions,
            u32::from(cut >= mse::KEY_LEN),
            "cut {cut}"
        );
        o.session.on_closed(2, None);
        let r = o.session.report();
        assert_eq!(r.end, ProbeEnd::PeerClosed, "cut {cut}");
        assert_eq!((r.handshake, r.mse.is_some()), (whole, whole), "cut {cut}");
    }
}

/// A small deterministic generator (xorshift) for the garbage tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Garbage in every mode and chunking: never a panic, never progress, and the end the
/// garbage earns.
#[test]
fn garbage_never_panics_and_fails_the_right_way() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..60 {
        let len = (rng.next() % 700) as usize;
        let mut junk = rng.bytes(len);
        if let Some(b) = junk.first_mut() {
            if *b == 0x13 {
                *b = 0x14; // not the start of a plaintext handshake
            }
        }
        let chunk = (rng.next() % 97) as usize + 1;
        for mode in 0..3 {
            let session = match mode {
                0 => PeerSession::outgoing(HASH, PIECES, 0),
                1 => PeerSession::outgoing(HASH, PIECES, 0).with_mse(),
                _ => PeerSession::incoming(0),
            };
            let mut o = Owner::new(session);
            o.connect(0);
            let mut out = Vec::new();
            let step = o.feed_chunks(1, &junk, chunk, &mut out);
            if step != Step::Finished {
                o.run_out();
            }
            let r = o.session.report();
            let why = format!("round {round} mode {mode} len {len}");
            assert!(!r.handshake && r.progress().is_none(), "{why}");
            let want = match mode {
                _ if len == 0 => ProbeEnd::QuietTimeout,
                0 => ProbeEnd::UnknownProtocol,
                1 if len >= mse::KEY_LEN + mse::VC_SEARCH_LEN => {
                    ProbeEnd::MseFailed(mse::MseError::NoVc.to_string())
                }
                2 if len >= mse::KEY_LEN + mse::REQ1_SEARCH_LEN => {
                    ProbeEnd::MseFailed(mse::MseError::NoReq1.to_string())
                }
                _ => ProbeEnd::QuietTimeout,
            };
            assert_eq!(r.end, want, "{why}");
            if mode == 1 {
                assert_eq!(
                    o.session.fallback().mse_failed,
                    len >= mse::KEY_LEN + mse::VC_SEARCH_LEN,
                    "{why}"
                );
            }
        }
    }
}

/// Every single byte of a good transcript flipped: never a panic, and the session ends.
#[test]
fn a_flipped_byte_anywhere_never_panics() {
    for (t, mse) in [
        (plaintext_transcript(), false),
        (mse_outgoing_transcript(), true),
    ] {
        for at in 0..t.bytes.len() {
            let mut bytes = t.bytes.clone();
            bytes[at] ^= 0x5A;
            let mut s = PeerSession::outgoing(HASH, PIECES, 0);
            if mse {
                s = s.with_mse();
            }
            let mut o = Owner::new(s);
            o.connect(0);
            let mut out = Vec::new();
            if o.feed(1, &bytes, &mut out) != Step::Finished {
                o.run_out();
            }
            assert!(o.session.is_done(), "flip at {at}");
        }
    }
}

use super::*;
use num_bigint::BigUint;
use proptest::prelude::*;

const IH: [u8; 20] = [0xAB; 20];

fn key(seed: u8) -> [u8; 20] {
    let mut k = [0u8; 20];
    for (i, b) in k.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7 + 1);
    }
    k
}

fn initiator(provide: CryptoSet, pad_a: usize, pad_c: usize, ia: &[u8]) -> Initiator {
    Initiator::new(
        IH,
        key(1),
        vec![0x5A; pad_a],
        vec![0xC3; pad_c],
        provide,
        ia.to_vec(),
    )
    .unwrap()
}

fn responder(allowed: CryptoSet, prefer: Crypto, pad_b: usize, pad_d: usize) -> Responder {
    Responder::new(
        key(2),
        vec![0x11; pad_b],
        vec![0x22; pad_d],
        allowed,
        prefer,
    )
    .unwrap()
}

/// Runs both sides in memory, delivering each direction in chunks of the given sizes
/// (cycled), with `a_extra`/`b_extra` appended (as the stream would carry them) once each
/// side is allowed to send payload. Returns both results.
fn run_pair(
    mut a: Initiator,
    mut b: Responder,
    chunks_ab: &[usize],
    chunks_ba: &[usize],
    a_extra: &[u8],
    b_extra: &[u8],
) -> (InitiatorDone, ResponderDone) {
    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    a.start(&mut to_b);
    let (mut a_done, mut b_done) = (None, None);
    let known = [IH];
    let (mut ia, mut ib) = (0usize, 0usize);
    for _ in 0..100_000 {
        if a_done.is_some() && b_done.is_some() {
            break;
        }
        if b_done.is_none() && !to_b.is_empty() {
            let n = chunks_ab[ia % chunks_ab.len()].clamp(1, to_b.len());
            ia += 1;
            let chunk: Vec<u8> = to_b.drain(..n).collect();
            if let Progress::Done(d) = b.on_bytes(&chunk, &mut to_a, lookup_in(&known)).unwrap() {
                let mut extra = b_extra.to_vec();
                let mut d: ResponderDone = d;
                d.stream.encrypt(&mut extra);
                to_a.extend_from_slice(&extra);
                b_done = Some(d);
            }
        } else if a_done.is_none() && !to_a.is_empty() {
            let n = chunks_ba[ib % chunks_ba.len()].clamp(1, to_a.len());
            ib += 1;
            let chunk: Vec<u8> = to_a.drain(..n).collect();
            if let Progress::Done(d) = a.on_bytes(&chunk, &mut to_b).unwrap() {
                a_done = Some(d);
            }
        } else if b_done.is_some() && a_done.is_none() && to_a.is_empty() {
            panic!("initiator starved");
        } else if b_done.is_none() && to_b.is_empty() {
            panic!("responder starved");
        }
    }
    let (mut a_done, mut b_done): (InitiatorDone, ResponderDone) =
        (a_done.expect("A done"), b_done.expect("B done"));
    // Bytes B sent after Done that A had not consumed before its Done: the rest of to_a.
    let mut rest_a = std::mem::take(&mut to_a);
    a_done.stream.decrypt(&mut rest_a);
    a_done.payload.extend_from_slice(&rest_a);
    // A sends a_extra after Done; B receives what A still had queued, then a_extra.
    let mut extra = a_extra.to_vec();
    a_done.stream.encrypt(&mut extra);
    let mut rest_b = std::mem::take(&mut to_b);
    rest_b.extend_from_slice(&extra);
    b_done.stream.decrypt(&mut rest_b);
    b_done.payload.extend_from_slice(&rest_b);
    (a_done, b_done)
}

#[test]
fn rc4_known_answers() {
    // Test vectors from the RC4 literature (Wikipedia "RC4" test vectors).
    for (k, p, c) in [
        (&b"Key"[..], &b"Plaintext"[..], "bbf316e8d940af0ad3"),
        (b"Wiki", b"pedia", "1021bf0420"),
        (b"Secret", b"Attack at dawn", "45a01f645fc35b383552544b9bf5"),
    ] {
        let mut buf = p.to_vec();
        Rc4::new(k).apply(&mut buf);
        assert_eq!(crate::hex::encode(&buf), c);
    }
}

#[test]
fn dh_known_answers() {
    let mut one = [0u8; 20];
    one[19] = 1;
    let mut two = [0u8; KEY_LEN];
    two[KEY_LEN - 1] = 2;
    assert_eq!(dh_public_key(&one), two);
    let mut ten = [0u8; 20];
    ten[19] = 10;
    let mut k1024 = [0u8; KEY_LEN];
    k1024[KEY_LEN - 2] = 0x04; // 2^10 = 0x0400
    assert_eq!(dh_public_key(&ten), k1024);
    // 2^(a*b) both ways.
    let (a, b) = (key(7), key(9));
    let s1 = dh_shared_secret(&a, &dh_public_key(&b)).unwrap();
    let s2 = dh_shared_secret(&b, &dh_public_key(&a)).unwrap();
    assert_eq!(s1, s2);
    assert_ne!(s1, [0; KEY_LEN]);
    // A 160-bit exponent reduces mod P: the key is a full-size 768-bit number.
    assert!(dh_public_key(&[0xFF; 20])[..8] != [0; 8]);
}

fn prime() -> BigUint {
    BigUint::parse_bytes(modexp::PRIME_HEX.as_bytes(), 16).unwrap()
}

fn to_key_bytes(n: &BigUint) -> [u8; KEY_LEN] {
    let bytes = n.to_bytes_be();
    let mut out = [0u8; KEY_LEN];
    out[KEY_LEN - bytes.len()..].copy_from_slice(&bytes);
    out
}

#[test]
fn degenerate_public_keys_are_rejected() {
    let p = prime();
    for y in [
        BigUint::from(0u32),
        BigUint::from(1u32),
        &p - 1u32,
        p.clone(),
        &p + 1u32,
    ] {
        assert_eq!(
            dh_shared_secret(&key(1), &to_key_bytes(&y)),
            Err(MseError::BadPublicKey)
        );
    }
    assert_eq!(
        dh_shared_secret(&key(1), &[0xFF; KEY_LEN]),
        Err(MseError::BadPublicKey)
    );
    // The edges that are allowed.
    for y in [BigUint::from(2u32), &p - 2u32] {
        let got = dh_shared_secret(&key(1), &to_key_bytes(&y)).unwrap();
        let want = y.modpow(&BigUint::from_bytes_be(&key(1)), &p);
        assert_eq!(got, to_key_bytes(&want));
    }
}

#[test]
fn dh_key_reuse_matches_one_shot_functions() {
    let a = DhKey::new(key(7));
    let b: DhKey = key(9).into();
    assert_eq!(a.public_key(), &dh_public_key(&key(7)));
    let s = a.shared_secret(b.public_key()).unwrap();
    assert_eq!(s, b.shared_secret(a.public_key()).unwrap());
    assert_eq!(
        s,
        dh_shared_secret(&key(7), &dh_public_key(&key(9))).unwrap()
    );
    assert_eq!(format!("{a:?}"), "DhKey");
}

#[test]
fn known_secret_is_used_only_for_its_public_key() {
    // A responder told a wrong secret for a different key computes the real one.
    let a = DhKey::new(key(1));
    let b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0)
        .with_known_secret([0x42; KEY_LEN], [0x17; KEY_LEN]);
    let (da, db) = run_pair(
        initiator(CryptoSet::BOTH, 3, 3, b"ia"),
        b,
        &[7],
        &[9],
        b"x",
        b"y",
    );
    assert_eq!(db.initial_payload, b"ia");
    assert_eq!((da.crypto, db.crypto), (Crypto::Rc4, Crypto::Rc4));
    // Told the right secret for the initiator's key, it completes without computing it.
    let s = DhKey::new(key(2)).shared_secret(a.public_key()).unwrap();
    let b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0).with_known_secret(*a.public_key(), s);
    let (_, db) = run_pair(
        initiator(CryptoSet::BOTH, 0, 0, b"ia"),
        b,
        &[200],
        &[200],
        b"",
        b"",
    );
    assert_eq!(db.initial_payload, b"ia");
}

#[test]
fn rc4_pair_round_trip_with_payloads() {
    let hs = b"\x13BitTorrent protocol handshake-ish bytes".to_vec();
    let a = initiator(CryptoSet::BOTH, 17, 5, &hs);
    let b = responder(CryptoSet::BOTH, Crypto::Rc4, 300, 9);
    let (a_done, b_done) = run_pair(a, b, &[1000], &[1000], b"from A", b"from B");
    assert_eq!((a_done.crypto, b_done.crypto), (Crypto::Rc4, Crypto::Rc4));
    assert_eq!(b_done.info_hash, IH);
    assert_eq!(b_done.initial_payload, hs);
    assert_eq!(b_done.payload, b"from A");
    assert_eq!(a_done.payload, b"from B");
}

#[test]
fn plaintext_selection_leaves_stream_clear() {
    let a = initiator(CryptoSet::BOTH, 0, 0, b"IA");
    let b = responder(CryptoSet::BOTH, Crypto::Plaintext, 0, 0);
    let (mut a_done, b_done) = run_pair(a, b, &[7], &[3], b"plain A", b"plain B");
    assert_eq!(
        (a_done.crypto, b_done.crypto),
        (Crypto::Plaintext, Crypto::Plaintext)
    );
    assert_eq!(b_done.initial_payload, b"IA");
    assert_eq!(b_done.payload, b"plain A");
    assert_eq!(a_done.payload, b"plain B");
    let mut x = b"unchanged".to_vec();
    a_done.stream.encrypt(&mut x);
    assert_eq!(x, b"unchanged");
}

#[test]
fn responder_falls_back_to_what_initiator_provides() {
    let a = initiator(CryptoSet::RC4, 3, 0, b"");
    let b = responder(CryptoSet::BOTH, Crypto::Plaintext, 1, 0);
    let (a_done, b_done) = run_pair(a, b, &[64], &[64], b"x", b"y");
    assert_eq!((a_done.crypto, b_done.crypto), (Crypto::Rc4, Crypto::Rc4));
    assert!(b_done.initial_payload.is_empty());
}

#[test]
fn no_common_crypto_is_an_error() {
    let mut a = initiator(CryptoSet::PLAINTEXT, 0, 0, b"");
    let mut b = responder(CryptoSet::RC4, Crypto::Rc4, 0, 0);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    assert!(matches!(
        b.on_bytes(&to_b, &mut to_a, lookup_in(&[IH])),
        Ok(Progress::NeedMore)
    ));
    to_b.clear();
    a.on_bytes(&to_a, &mut to_b).unwrap();
    let err = b
        .on_bytes(&to_b, &mut Vec::new(), lookup_in(&[IH]))
        .unwrap_err();
    assert_eq!(
        err,
        MseError::NoCommonCrypto {
            provided: 1,
            allowed: 2
        }
    );
    assert_eq!(
        b.on_bytes(b"", &mut Vec::new(), lookup_in(&[IH]))
            .unwrap_err(),
        MseError::Finished
    );
}

#[test]
fn unknown_info_hash_is_rejected() {
    let mut a = initiator(CryptoSet::BOTH, 10, 0, b"");
    let mut b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    let other = [[0xCD; 20], [0x01; 20]];
    b.on_bytes(&to_b, &mut to_a, lookup_in(&other)).unwrap();
    to_b.clear();
    a.on_bytes(&to_a, &mut to_b).unwrap();
    let err = b
        .on_bytes(&to_b, &mut Vec::new(), lookup_in(&other))
        .unwrap_err();
    assert_eq!(err, MseError::UnknownInfoHash);
    assert!(err.to_string().contains("req2"));
}

#[test]
fn garbage_after_public_key_gives_sync_errors() {
    // Responder: a valid Ya followed by 532 bytes without HASH('req1', S).
    let mut b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0);
    let mut input = dh_public_key(&key(3)).to_vec();
    input.extend_from_slice(&[0x77; REQ1_SEARCH_LEN - 1]);
    let mut out = Vec::new();
    assert!(matches!(
        b.on_bytes(&input, &mut out, lookup_in(&[IH])),
        Ok(Progress::NeedMore)
    ));
    assert_eq!(out.len(), KEY_LEN, "Yb sent once Ya arrived");
    let err = b.on_bytes(&[0x77], &mut out, lookup_in(&[IH])).unwrap_err();
    assert_eq!(err, MseError::NoReq1);
    assert!(err.to_string().contains("532 bytes"), "{err}");

    // Initiator: Yb followed by 520 bytes without the encrypted VC.
    let mut a = initiator(CryptoSet::BOTH, 0, 0, b"");
    let mut input = dh_public_key(&key(4)).to_vec();
    input.extend_from_slice(&[0x55; VC_SEARCH_LEN]);
    let err = a.on_bytes(&input, &mut Vec::new()).unwrap_err();
    assert_eq!(err, MseError::NoVc);
    assert_eq!(
        err.to_string(),
        "MSE: no VC found within 520 bytes after the public key"
    );
}

#[test]
fn maximal_pads_still_synchronise() {
    let a = initiator(CryptoSet::BOTH, MAX_PAD_LEN, MAX_PAD_LEN, &[9; 100]);
    let b = responder(CryptoSet::BOTH, Crypto::Rc4, MAX_PAD_LEN, MAX_PAD_LEN);
    let (a_done, b_done) = run_pair(a, b, &[1], &[1], b"A", b"B");
    assert_eq!(b_done.initial_payload, [9; 100]);
    assert_eq!(
        (a_done.payload.as_slice(), b_done.payload.as_slice()),
        (&b"B"[..], &b"A"[..])
    );
}

#[test]
fn local_limits_are_checked() {
    let err = Initiator::new(IH, key(1), vec![0; 513], vec![], CryptoSet::BOTH, vec![]);
    assert_eq!(
        err.unwrap_err(),
        MseError::LocalPadTooLong {
            what: "PadA",
            len: 513
        }
    );
    let err = Initiator::new(IH, key(1), vec![], vec![], CryptoSet::from_bits(4), vec![]);
    assert_eq!(err.unwrap_err(), MseError::EmptyCryptoSet(4));
    let err = Initiator::new(IH, key(1), vec![], vec![], CryptoSet::BOTH, vec![0; 65536]);
    assert_eq!(
        err.unwrap_err(),
        MseError::LocalInitialPayloadTooLong(65536)
    );
    let err = Responder::new(key(1), vec![], vec![0; 600], CryptoSet::BOTH, Crypto::Rc4);
    assert_eq!(
        err.unwrap_err(),
        MseError::LocalPadTooLong {
            what: "PadD",
            len: 600
        }
    );
}

#[test]
fn initial_payload_limit_is_enforced() {
    let mut a = initiator(CryptoSet::BOTH, 0, 0, &[1; 200]);
    let mut b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0).with_max_initial_payload(100);
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    b.on_bytes(&to_b, &mut to_a, lookup_in(&[IH])).unwrap();
    to_b.clear();
    a.on_bytes(&to_a, &mut to_b).unwrap();
    let err = b
        .on_bytes(&to_b, &mut Vec::new(), lookup_in(&[IH]))
        .unwrap_err();
    assert_eq!(err, MseError::InitialPayloadTooLong { len: 200, max: 100 });
}

#[test]
fn incoming_classification() {
    assert_eq!(classify_incoming(b""), IncomingKind::NeedMore);
    assert_eq!(classify_incoming(b"\x13Bit"), IncomingKind::NeedMore);
    assert_eq!(classify_incoming(b"\x13Bix"), IncomingKind::Encrypted);
    assert_eq!(classify_incoming(&[0x12; 30]), IncomingKind::Encrypted);
    let mut hs = BITTORRENT_PREFIX.to_vec();
    hs.extend_from_slice(&[0; 48]);
    assert_eq!(classify_incoming(&hs), IncomingKind::Plaintext);
    assert!(looks_like_bittorrent(&hs));
    assert!(!looks_like_bittorrent(&hs[..19]));
    assert!(!looks_like_bittorrent(&dh_public_key(&key(5))));
}

fn crypto_set() -> impl Strategy<Value = CryptoSet> {
    prop_oneof![
        Just(CryptoSet::PLAINTEXT),
        Just(CryptoSet::RC4),
        Just(CryptoSet::BOTH)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_chunking_and_pads_complete(
        chunks_ab in proptest::collection::vec(1usize..200, 1..6),
        chunks_ba in proptest::collection::vec(1usize..200, 1..6),
        pads in (0usize..=512, 0usize..=512, 0usize..=512, 0usize..=512),
        ia in proptest::collection::vec(any::<u8>(), 0..100),
        provide in crypto_set(),
        prefer_rc4 in any::<bool>(),
        a_extra in proptest::collection::vec(any::<u8>(), 0..50),
        b_extra in proptest::collection::vec(any::<u8>(), 0..50),
    ) {
        let prefer = if prefer_rc4 { Crypto::Rc4 } else { Crypto::Plaintext };
        let a = initiator(provide, pads.0, pads.2, &ia);
        let b = responder(CryptoSet::BOTH, prefer, pads.1, pads.3);
        let (a_done, b_done) = run_pair(a, b, &chunks_ab, &chunks_ba, &a_extra, &b_extra);
        let expected = if provide.contains(prefer) {
            prefer
        } else if provide.contains(Crypto::Rc4) { Crypto::Rc4 } else { Crypto::Plaintext };
        prop_assert_eq!(a_done.crypto, expected);
        prop_assert_eq!(b_done.crypto, expected);
        prop_assert_eq!(b_done.initial_payload, ia);
        prop_assert_eq!(b_done.payload, a_extra);
        prop_assert_eq!(a_done.payload, b_extra);
    }

    #[test]
    fn responder_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)) {
        let mut b = responder(CryptoSet::BOTH, Crypto::Rc4, 3, 3);
        let mut out = Vec::new();
        for c in &chunks {
            if b.on_bytes(c, &mut out, |_: &[u8; 20]| Some(IH)).is_err() {
                break;
            }
        }
    }

    #[test]
    fn initiator_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..6)) {
        let mut a = initiator(CryptoSet::BOTH, 3, 3, b"hi");
        let mut out = Vec::new();
        for c in &chunks {
            if a.on_bytes(c, &mut out).is_err() {
                break;
            }
        }
    }

    /// A real handshake with bytes flipped after the public keys: errors or completes
    /// (a flipped pad byte is harmless), never panics.
    #[test]
    fn corrupted_handshakes_never_panic(flip_at in 0usize..700, flip in 1u8..=255, to_responder in any::<bool>()) {
        let mut a = initiator(CryptoSet::BOTH, 40, 4, b"ia");
        let mut b = responder(CryptoSet::BOTH, Crypto::Rc4, 40, 4);
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        a.start(&mut to_b);
        b.on_bytes(&to_b, &mut to_a, lookup_in(&[IH])).unwrap();
        to_b.clear();
        if !to_responder && flip_at < to_a.len() {
            to_a[flip_at] ^= flip;
        }
        let Ok(_) = a.on_bytes(&to_a, &mut to_b) else { return Ok(()) };
        if to_responder && flip_at < to_b.len() {
            to_b[flip_at] ^= flip;
        }
        let _ = b.on_bytes(&to_b, &mut Vec::new(), lookup_in(&[IH]));
    }
}

#[test]
fn debug_output_hides_keys() {
    let a = initiator(CryptoSet::BOTH, 0, 0, b"");
    let b = responder(CryptoSet::BOTH, Crypto::Rc4, 0, 0);
    let text = format!("{a:?} {b:?}");
    assert!(
        text.contains("New") && text.contains("AwaitPublicKey"),
        "{text}"
    );
    // key(1) starts with 1, 8, 15 ...; no byte arrays at all in the output.
    assert!(!text.contains('['), "{text}");
}

#[test]
fn dh_matches_independent_computation() {
    // Computed with Python's pow(2, x, P) / pow(Y, x, P) (arbitrary-precision integers).
    let x = [0xFF; 20];
    let y: [u8; 20] = crate::hex::decode_array("0123456789abcdef0123456789abcdef01234567").unwrap();
    let public_x = "fe9aac142f64ad4d5bca7e30bea17d62c709de9e4c5694e2b27e8c6ed82510bb57952fcce38f6a5084b9699ec34b033ed1a0dbd51d70274bff40ae493f0ce2cdbd3cbd6055c9677a7eb70d29f4d8ecfbc2625316a7ae1a0d3d6605f0406bad79";
    let secret = "a0db14591ac4df8360284a344329f92d393270af6279aa15638d4571a334b903a4e6f6850451771755ff4aafcd143d286c7fef20608798d87990703d04f089fdb36c85d826cc7b9e3024a269e11d52348c4c14f3ee4c7d9b6e5b154b23af2af8";
    assert_eq!(crate::hex::encode(&dh_public_key(&x)), public_x);
    let s = dh_shared_secret(&x, &dh_public_key(&y)).unwrap();
    assert_eq!(crate::hex::encode(&s), secret);
    assert_eq!(
        crate::hex::encode(&req2_hash(&IH)),
        "debcbb002ca1ef763a10a40caaeab1f00a565dbe"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// The fixed-size Montgomery exponentiation equals num-bigint's `modpow` for any 768-bit
    /// base (reduced), any exponent length up to 96 bytes and every window width.
    #[test]
    fn modexp_equals_num_bigint(
        base in proptest::collection::vec(any::<u8>(), KEY_LEN),
        exp in proptest::collection::vec(any::<u8>(), 0..=96),
        window in 1u32..=6,
    ) {
        let base: [u8; KEY_LEN] = base.try_into().unwrap();
        let got = modexp_with_window(&base, &exp, window);
        let want = BigUint::from_bytes_be(&base).modpow(&BigUint::from_bytes_be(&exp), &prime());
        prop_assert_eq!(got, to_key_bytes(&want));
    }

    /// Shared secrets of random key pairs agree with num-bigint and with each other.
    #[test]
    fn shared_secret_equals_num_bigint(a in any::<[u8; 20]>(), b in any::<[u8; 20]>()) {
        let p = prime();
        let yb = BigUint::from(2u32).modpow(&BigUint::from_bytes_be(&b), &p);
        prop_assert_eq!(dh_public_key(&b), to_key_bytes(&yb));
        let s = yb.modpow(&BigUint::from_bytes_be(&a), &p);
        let got = dh_shared_secret(&a, &to_key_bytes(&yb));
        if yb <= BigUint::from(1u32) || yb >= &p - 1u32 {
            prop_assert_eq!(got, Err(MseError::BadPublicKey));
        } else {
            prop_assert_eq!(got, Ok(to_key_bytes(&s)));
        }
    }
}

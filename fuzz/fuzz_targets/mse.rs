#![no_main]
//! MSE handshake: (0) a responder and (1) an initiator fed arbitrary bytes in input-chosen
//! chunks must never panic; (2) a real initiator/responder pair with input-chosen pads,
//! chunk sizes and optionally one corrupted byte must complete with the right payloads when
//! nothing was corrupted, and never panic when something was.
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::mse::{self, Crypto, CryptoSet, Initiator, Progress, Responder};

const IH: [u8; 20] = [0x42; 20];

fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    // First byte of each chunk is its length.
    let mut rest = data;
    std::iter::from_fn(move || {
        let (&n, tail) = rest.split_first()?;
        let n = (n as usize * 4).min(tail.len());
        let (c, t) = tail.split_at(n);
        rest = t;
        Some(c)
    })
}

fn pair(data: &[u8]) {
    let b = |i: usize| data.get(i).copied().unwrap_or(0) as usize;
    let pads = [b(0) * 2 + b(1) % 2, b(2) * 2, b(3) * 2 + 1, b(4)];
    let provide = [CryptoSet::PLAINTEXT, CryptoSet::RC4, CryptoSet::BOTH][b(5) % 3];
    let prefer = if b(6) % 2 == 0 { Crypto::Rc4 } else { Crypto::Plaintext };
    let (chunk_ab, chunk_ba) = (b(7) % 64 + 1, b(8) * 3 + 1);
    let flip = (b(9) % 4 == 0).then(|| (b(10) * 4 + b(11), b(12) as u8 | 1, b(13) % 2 == 0));
    let ia = data.get(14..).unwrap_or(&[]).to_vec();
    let mut a = Initiator::new(IH, [7; 20], vec![1; pads[0]], vec![2; pads[1]], provide, ia.clone())
        .unwrap();
    let mut r = Responder::new([9; 20], vec![3; pads[2]], vec![4; pads[3]], CryptoSet::BOTH, prefer)
        .unwrap();
    let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
    a.start(&mut to_b);
    let (mut sent_ab, mut sent_ba) = (0usize, 0usize);
    let (mut a_done, mut b_done) = (None, None);
    for _ in 0..10_000 {
        if let Some((at, x, toward_b)) = flip {
            if toward_b && at >= sent_ab && at < sent_ab + to_b.len() {
                to_b[at - sent_ab] ^= x;
            }
            if !toward_b && at >= sent_ba && at < sent_ba + to_a.len() {
                to_a[at - sent_ba] ^= x;
            }
        }
        if b_done.is_none() && !to_b.is_empty() {
            let n = chunk_ab.min(to_b.len());
            let c: Vec<u8> = to_b.drain(..n).collect();
            sent_ab += n;
            match r.on_bytes(&c, &mut to_a, mse::lookup_in(&[IH])) {
                Ok(Progress::Done(d)) => b_done = Some(d),
                Ok(Progress::NeedMore) => {}
                Err(e) => {
                    assert!(flip.is_some(), "clean handshake failed at responder: {e}");
                    return;
                }
            }
        } else if a_done.is_none() && !to_a.is_empty() {
            let n = chunk_ba.min(to_a.len());
            let c: Vec<u8> = to_a.drain(..n).collect();
            sent_ba += n;
            match a.on_bytes(&c, &mut to_b) {
                Ok(Progress::Done(d)) => a_done = Some(d),
                Ok(Progress::NeedMore) => {}
                Err(e) => {
                    assert!(flip.is_some(), "clean handshake failed at initiator: {e}");
                    return;
                }
            }
        } else {
            break;
        }
    }
    if flip.is_some() {
        return;
    }
    let (mut a_done, mut b_done) = (a_done.expect("A done"), b_done.expect("B done"));
    assert_eq!(a_done.crypto, b_done.crypto);
    assert_eq!(b_done.info_hash, IH);
    assert_eq!(b_done.initial_payload, ia);
    assert!(a_done.payload.is_empty() && b_done.payload.is_empty());
    let mut msg = b"after the handshake".to_vec();
    a_done.stream.encrypt(&mut msg);
    b_done.stream.decrypt(&mut msg);
    assert_eq!(msg, b"after the handshake");
    b_done.stream.encrypt(&mut msg);
    a_done.stream.decrypt(&mut msg);
    assert_eq!(msg, b"after the handshake");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut out = Vec::new();
    match mode % 3 {
        0 => {
            let mut r = Responder::new([5; 20], vec![], vec![], CryptoSet::BOTH, Crypto::Rc4)
                .unwrap()
                .with_max_initial_payload(1024);
            for c in chunks(rest) {
                if r.on_bytes(c, &mut out, |_: &[u8; 20]| Some(IH)).is_err() {
                    break;
                }
            }
        }
        1 => {
            let mut a = Initiator::new(IH, [5; 20], vec![], vec![], CryptoSet::BOTH, vec![])
                .unwrap();
            for c in chunks(rest) {
                if a.on_bytes(c, &mut out).is_err() {
                    break;
                }
            }
        }
        _ => pair(rest),
    }
});

//! Criterion benchmarks for the protocol core: bencode decoding throughput (MB/s), and one
//! MSE Diffie-Hellman exponentiation (before: num-bigint; after: the fixed-size Montgomery
//! code, by window width and exponent length). Peer-message decoding has its own bench
//! (bench/peer_wire.rs).

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use swarmscan::proto::bencode::{self, OwnedValue};

/// A tracker-response-like document: many small dicts (dict peers) plus a big byte string.
fn tracker_like() -> Vec<u8> {
    let peers: Vec<OwnedValue> = (0..2000)
        .map(|i: i64| {
            OwnedValue::dict()
                .with(
                    "ip",
                    format!("10.{}.{}.{}", i % 200, i % 100, i % 50).as_str(),
                )
                .with("port", 6881 + i % 1000)
                .with("peer id", vec![b'x'; 20])
        })
        .collect();
    OwnedValue::dict()
        .with("interval", 1800)
        .with("min interval", 900)
        .with("peers", peers)
        .with("complete", 1234)
        .encode()
}

/// A torrent-like document: an info dict with a large `pieces` string and a file list.
fn torrent_like() -> Vec<u8> {
    let files: Vec<OwnedValue> = (0..500)
        .map(|i: i64| {
            OwnedValue::dict().with("length", i * 12345).with(
                "path",
                vec![
                    OwnedValue::from("dir"),
                    OwnedValue::from(format!("file{i}.bin").as_str()),
                ],
            )
        })
        .collect();
    let info = OwnedValue::dict()
        .with("name", "bench")
        .with("piece length", 262_144)
        .with("pieces", vec![0xabu8; 20 * 20_000])
        .with("files", files);
    OwnedValue::dict()
        .with("announce", "http://127.0.0.1:6969/announce")
        .with("info", info)
        .encode()
}

fn bencode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("bencode_decode");
    for (name, doc) in [
        ("tracker_like", tracker_like()),
        ("torrent_like", torrent_like()),
    ] {
        group.throughput(Throughput::Bytes(doc.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let v = bencode::decode(black_box(&doc)).unwrap();
                black_box(v.raw().len())
            })
        });
    }
    group.finish();
}

/// One shared-secret computation `Y^x mod P`: what an MSE handshake costs each side.
fn mse_dh(c: &mut Criterion) {
    use num_bigint::BigUint;
    use swarmscan::proto::mse;
    let peer = *mse::DhKey::new([0x35; 20]).public_key();
    let x160 = [0xA7u8; 20];
    let mut x128 = x160;
    x128[..4].fill(0);
    let mut group = c.benchmark_group("mse_dh");
    group.sample_size(30);
    let p = BigUint::parse_bytes(
        b"FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A63A36210000000000090563",
        16,
    )
    .unwrap();
    let y = BigUint::from_bytes_be(&peer);
    let x = BigUint::from_bytes_be(&x160);
    group.bench_function("num_bigint_160bit", |b| {
        b.iter(|| black_box(black_box(&y).modpow(&x, &p)))
    });
    for window in 1..=6 {
        group.bench_function(format!("montgomery_160bit_window{window}"), |b| {
            b.iter(|| black_box(mse::modexp_with_window(black_box(&peer), &x160, window)))
        });
    }
    group.bench_function(format!("montgomery_128bit_window{}", mse::WINDOW), |b| {
        b.iter(|| {
            black_box(mse::modexp_with_window(
                black_box(&peer),
                &x128,
                mse::WINDOW,
            ))
        })
    });
    group.finish();
}

criterion_group!(benches, bencode_decode, mse_dh);
criterion_main!(benches);

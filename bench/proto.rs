//! Criterion benchmarks for the protocol core: bencode decoding throughput (MB/s).
//! Peer-message decoding has its own bench (bench/peer_wire.rs).

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

criterion_group!(benches, bencode_decode);
criterion_main!(benches);

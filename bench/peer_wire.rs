//! Peer message decoding speed (messages/s) on the stream a probe typically reads:
//! handshake, extension handshake, bitfield, many haves, a few ut_pex messages.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use swarmscan::proto::peer_wire::ext::{ExtHandshake, PexFlags, PexMessage, PexPeer};
use swarmscan::proto::peer_wire::{self, Handshake, Message, MessageReader, Reserved};

const PIECES: u32 = 4000;
const HAVES: u32 = 1000;
const PEX_MESSAGES: u32 = 5;
const OUR_PEX_ID: u8 = 2;

/// The stream and the number of messages in it (handshake counted as one).
fn stream() -> (Vec<u8>, u64) {
    let mut out =
        peer_wire::encode_handshake(&[1; 20], b"-LT2110-abcdefghijkl", Reserved::PROBE).to_vec();
    let ext = ExtHandshake {
        m: vec![(b"ut_metadata", 2), (b"ut_pex", 1), (b"lt_donthave", 7)],
        v: Some(b"libtorrent/2.1.1.0"),
        p: Some(51413),
        yourip: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1))),
        reqq: Some(2000),
        metadata_size: Some(123_456),
        ..Default::default()
    };
    out.extend_from_slice(&ext.to_message_bytes());
    let bits: Vec<u8> = (0..PIECES.div_ceil(8)).map(|i| (i * 37) as u8).collect();
    Message::Bitfield(&bits).encode_into(&mut out);
    for i in 0..HAVES {
        Message::Have(i * 3 % PIECES).encode_into(&mut out);
    }
    for n in 0..PEX_MESSAGES {
        let pex = PexMessage {
            added: (0..50u32)
                .map(|i| PexPeer {
                    addr: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n * 64 + i)),
                        6881,
                    ),
                    flags: PexFlags(0x10),
                })
                .collect(),
            ..Default::default()
        };
        let payload = pex.encode();
        Message::Extended {
            ext_id: OUR_PEX_ID,
            payload: &payload,
        }
        .encode_into(&mut out);
    }
    (out, 1 + 1 + 1 + u64::from(HAVES) + u64::from(PEX_MESSAGES))
}

fn decode_stream(c: &mut Criterion) {
    let (bytes, messages) = stream();
    let mut g = c.benchmark_group("peer_wire");
    g.throughput(Throughput::Elements(messages));

    g.bench_function("frame_only", |b| {
        b.iter(|| {
            let (_, mut pos) = Handshake::decode(black_box(&bytes)).unwrap();
            let mut n = 1u64;
            while pos < bytes.len() {
                let (m, used) = peer_wire::decode(&bytes[pos..]).unwrap();
                black_box(m);
                pos += used;
                n += 1;
            }
            assert_eq!(n, messages);
        })
    });

    // What a probe does: frame, then parse ext handshake and pex, count pieces.
    g.bench_function("probe_view", |b| {
        b.iter(|| {
            let (_, mut pos) = Handshake::decode(black_box(&bytes)).unwrap();
            let (mut pieces, mut peers) = (0u32, 0usize);
            while pos < bytes.len() {
                let (m, used) = peer_wire::decode(&bytes[pos..]).unwrap();
                match m {
                    Message::Extended { ext_id: 0, payload } => {
                        black_box(ExtHandshake::decode(payload).unwrap().id_of("ut_pex"));
                    }
                    Message::Extended {
                        ext_id: OUR_PEX_ID,
                        payload,
                    } => {
                        peers += PexMessage::decode(payload).unwrap().added.len();
                    }
                    Message::Bitfield(bits) => {
                        pieces = peer_wire::bitfield::summarize(bits, PIECES)
                            .unwrap()
                            .pieces_have
                    }
                    Message::Have(_) => pieces += 1,
                    _ => {}
                }
                pos += used;
            }
            black_box((pieces, peers))
        })
    });

    // The framer fed in 1460-byte segments (one TCP MSS each).
    g.bench_function("reader_1460", |b| {
        b.iter(|| {
            let mut r = MessageReader::default();
            let mut n = 0u64;
            for chunk in bytes.chunks(1460) {
                r.feed(chunk);
                if n == 0 && r.read_handshake().unwrap().is_some() {
                    n = 1;
                }
                while let Some(m) = r.read_message().unwrap() {
                    black_box(m);
                    n += 1;
                }
            }
            assert_eq!(n, messages);
        })
    });
    g.finish();
}

criterion_group!(benches, decode_stream);
criterion_main!(benches);

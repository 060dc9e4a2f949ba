//! Tests for the peer wire codec: hand-built bytes from the BEP layouts, golden bytes recorded
//! from libtorrent 2.1.1 (tests/data/record_peer_wire.py), and property tests.

use super::bitfield;
use super::ext::{self, ExtError, ExtHandshake, MetadataMessage, PexFlags, PexMessage, PexPeer};
use super::*;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn hs_bytes() -> [u8; 68] {
    let mut ih = [0u8; 20];
    ih.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
    encode_handshake(&ih, b"-SS0001-abcdefghijkl", Reserved::PROBE)
}

#[test]
fn handshake_layout_and_round_trip() {
    let bytes = hs_bytes();
    assert_eq!(bytes[0], 19);
    assert_eq!(&bytes[1..20], b"BitTorrent protocol");
    assert_eq!(&bytes[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
    assert_eq!(bytes[28], 0);
    assert_eq!(bytes[47], 19);
    assert_eq!(&bytes[48..], b"-SS0001-abcdefghijkl");
    let (h, used) = Handshake::decode(&bytes).unwrap();
    assert_eq!(used, 68);
    assert!(h.reserved.extended() && h.reserved.dht() && h.reserved.fast());
    assert_eq!(h.reserved.unknown_bits(), [0; 8]);
    assert_eq!(h.encode(), bytes);
    // Trailing bytes belong to the next message and are not consumed.
    let mut longer = bytes.to_vec();
    longer.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(Handshake::decode(&longer).unwrap().1, 68);
}

#[test]
fn handshake_needs_more_and_keeps_unknown_bits() {
    let bytes = hs_bytes();
    for cut in 0..68 {
        assert_eq!(
            Handshake::decode(&bytes[..cut]),
            Err(WireError::NeedMore(68 - cut)),
            "cut at {cut}"
        );
    }
    let mut odd = bytes;
    odd[20] = 0x80; // Azureus messaging bit
    odd[27] = 0x10 | 0x04; // BEP 55 holepunch-era bit + fast
    let (h, _) = Handshake::decode(&odd).unwrap();
    assert!(h.reserved.fast() && !h.reserved.dht());
    assert_eq!(h.reserved.unknown_bits(), [0x80, 0, 0, 0, 0, 0, 0, 0x10]);
    assert_eq!(h.encode(), odd, "unknown bits survive a round trip");
    let r = Reserved::NONE.with_extended(true).with_fast(true);
    assert!(r.extended() && r.fast() && !r.dht());
    assert_eq!(r.with_fast(false).with_extended(false), Reserved::NONE);
}

#[test]
fn wrong_protocol_is_classified_early() {
    // An HTTP client, a TLS client hello and an MSE (encrypted) stream are all "not BitTorrent";
    // the first byte is enough to say so.
    for junk in [
        &b"GET / HTTP/1.1\r\n"[..],
        &[0x16, 0x03, 0x01],
        &[0xa5, 0xe3],
    ] {
        let err = Handshake::decode(junk).unwrap_err();
        assert_eq!(
            err,
            WireError::NotBitTorrent {
                offset: 0,
                got: junk[..1].to_vec()
            }
        );
    }
    let mut almost = hs_bytes();
    almost[19] = b'X'; // "BitTorrent protocoX"
    let err = Handshake::decode(&almost[..25]).unwrap_err();
    assert!(matches!(err, WireError::NotBitTorrent { offset: 19, ref got } if got.len() == 20));
    assert!(
        err.to_string()
            .starts_with("not a BitTorrent handshake: byte 19 wrong in 0x13426974"),
        "{err}"
    );
}

#[test]
fn wrong_protocol_error_does_not_depend_on_split() {
    // Regression (fuzz/peer_wire): the error used to carry "whatever had arrived", so a
    // byte-by-byte reader reported different bytes than a whole-buffer decode.
    let mut stream = hs_bytes().to_vec();
    stream[12] = b'?';
    let whole = read_stream(&stream, &[stream.len()]);
    assert_eq!(whole, read_stream(&stream, &[1]));
    assert_eq!(whole, read_stream(&stream, &[10, 3]));
    assert!(matches!(
        whole.2,
        Some(WireError::NotBitTorrent { offset: 12, .. })
    ));
}

/// Messages written out by hand from the BEP 3 / 5 / 6 / 10 layouts: length prefix, id, payload.
fn bep_examples() -> Vec<(Message<'static>, Vec<u8>)> {
    vec![
        (Message::KeepAlive, vec![0, 0, 0, 0]),
        (Message::Choke, vec![0, 0, 0, 1, 0]),
        (Message::Unchoke, vec![0, 0, 0, 1, 1]),
        (Message::Interested, vec![0, 0, 0, 1, 2]),
        (Message::NotInterested, vec![0, 0, 0, 1, 3]),
        (Message::Have(0x0102_0304), vec![0, 0, 0, 5, 4, 1, 2, 3, 4]),
        (
            Message::Bitfield(&[0xff, 0xe0]),
            vec![0, 0, 0, 3, 5, 0xff, 0xe0],
        ),
        (
            Message::Request(BlockRef {
                index: 1,
                begin: 0x4000,
                length: 0x4000,
            }),
            vec![0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0],
        ),
        (
            Message::Piece {
                index: 2,
                begin: 0,
                block: b"abc",
            },
            vec![0, 0, 0, 12, 7, 0, 0, 0, 2, 0, 0, 0, 0, b'a', b'b', b'c'],
        ),
        (
            Message::Cancel(BlockRef {
                index: 1,
                begin: 2,
                length: 3,
            }),
            vec![0, 0, 0, 13, 8, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3],
        ),
        // BEP 5: port 6881 = 0x1ae1.
        (Message::Port(6881), vec![0, 0, 0, 3, 9, 0x1a, 0xe1]),
        (Message::Suggest(7), vec![0, 0, 0, 5, 0x0d, 0, 0, 0, 7]),
        (Message::HaveAll, vec![0, 0, 0, 1, 0x0e]),
        (Message::HaveNone, vec![0, 0, 0, 1, 0x0f]),
        (
            Message::Reject(BlockRef {
                index: 0,
                begin: 0,
                length: 0x4000,
            }),
            vec![0, 0, 0, 13, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40, 0],
        ),
        (Message::AllowedFast(9), vec![0, 0, 0, 5, 0x11, 0, 0, 0, 9]),
        (
            Message::Extended {
                ext_id: 0,
                payload: b"de",
            },
            vec![0, 0, 0, 4, 20, 0, b'd', b'e'],
        ),
        (
            Message::Unknown {
                id: 21,
                payload: &[1, 2],
            },
            vec![0, 0, 0, 3, 21, 1, 2],
        ),
    ]
}

#[test]
fn every_message_matches_its_bep_layout() {
    for (msg, bytes) in bep_examples() {
        assert_eq!(msg.to_vec(), bytes, "encode {msg:?}");
        assert_eq!(msg.encoded_len(), bytes.len());
        assert_eq!(decode(&bytes), Ok((msg, bytes.len())), "decode {msg:?}");
        for cut in 0..bytes.len() {
            let need = if cut < 4 { 4 - cut } else { bytes.len() - cut };
            assert_eq!(decode(&bytes[..cut]), Err(WireError::NeedMore(need)));
        }
    }
}

#[test]
fn fixed_length_messages_reject_wrong_sizes() {
    // have with a 3-byte payload
    let err = decode(&[0, 0, 0, 4, 4, 0, 0, 1]).unwrap_err();
    assert_eq!(
        err,
        WireError::BadLength {
            id: 4,
            name: "have",
            len: 3,
            expected: "4"
        }
    );
    assert_eq!(
        err.to_string(),
        "have message (id 4) with 3-byte payload, expected 4"
    );
    assert!(matches!(
        decode(&[0, 0, 0, 2, 0, 0]),
        Err(WireError::BadLength { name: "choke", .. })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 2, 0x0e, 9]),
        Err(WireError::BadLength {
            name: "have_all",
            ..
        })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 12, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Err(WireError::BadLength {
            name: "request",
            ..
        })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 5, 7, 0, 0, 0, 0]),
        Err(WireError::BadLength { name: "piece", .. })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 1, 20]),
        Err(WireError::BadLength {
            name: "extended",
            ..
        })
    ));
    assert!(matches!(
        decode(&[0, 0, 0, 4, 9, 0, 0, 0]),
        Err(WireError::BadLength { name: "port", .. })
    ));
}

#[test]
fn huge_length_is_an_error_not_an_allocation() {
    let err = decode(&[0xff, 0xff, 0xff, 0xff, 5]).unwrap_err();
    assert_eq!(
        err,
        WireError::TooLong {
            len: u32::MAX,
            max: DEFAULT_MAX_MESSAGE_LEN
        }
    );
    // The cap is configurable, and checked before waiting for the body.
    assert_eq!(
        decode_with(&[0, 0, 0x40, 9], 0x4009),
        Err(WireError::NeedMore(0x4009)),
        "a length at the cap is fine"
    );
    assert_eq!(
        decode_with(&[0, 0, 0x40, 10], 0x4009),
        Err(WireError::TooLong {
            len: 0x400a,
            max: 0x4009
        })
    );
    let mut r = MessageReader::new(100);
    r.feed(&hs_bytes());
    r.feed(&[0, 0, 1, 0]);
    assert!(r.read_handshake().unwrap().is_some());
    assert_eq!(
        r.read_message(),
        Err(WireError::TooLong { len: 256, max: 100 })
    );
}

#[test]
fn reader_yields_messages_from_arbitrary_chunks() {
    let mut stream = hs_bytes().to_vec();
    for (m, _) in bep_examples() {
        m.encode_into(&mut stream);
    }
    let want: Vec<Vec<u8>> = bep_examples().into_iter().map(|(_, b)| b).collect();
    for chunk in [1, 2, 3, 7, 64, 1000] {
        let (h, got, err) = read_stream(&stream, &[chunk]);
        assert_eq!(h, Some(Handshake::decode(&hs_bytes()).unwrap().0));
        assert_eq!(got, want, "chunk size {chunk}");
        assert_eq!(err, None);
    }
}

/// Feed `stream` to a [`MessageReader`] in chunks of the given sizes (cycled); returns the
/// handshake, every message re-encoded, and the error that stopped reading, if any.
fn read_stream(
    stream: &[u8],
    chunk_sizes: &[usize],
) -> (Option<Handshake>, Vec<Vec<u8>>, Option<WireError>) {
    let mut r = MessageReader::default();
    let mut handshake = None;
    let mut msgs = Vec::new();
    let mut pos = 0;
    let mut sizes = chunk_sizes.iter().cycle();
    loop {
        let before = pos;
        let n = (*sizes.next().unwrap()).max(1);
        let end = (pos + n).min(stream.len());
        r.feed(&stream[pos..end]);
        pos = end;
        if handshake.is_none() {
            match r.read_handshake() {
                Ok(Some(h)) => handshake = Some(h),
                Ok(None) => {}
                Err(e) => return (None, msgs, Some(e)),
            }
        }
        if handshake.is_some() {
            loop {
                match r.read_message() {
                    Ok(Some(m)) => msgs.push(m.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (handshake, msgs, Some(e)),
                }
            }
        }
        if pos == stream.len() && before == pos {
            return (handshake, msgs, None);
        }
    }
}

// ---------------------------------------------------------------- extension protocol

#[test]
fn ext_handshake_like_bep10_example() {
    // Modelled on the example in BEP 10 (m with two extensions, p, v).
    let payload = "d1:md11:LT_metadatai1e7:µT_PEXi2ee1:pi6881e1:v13:µTorrent 1.2e".as_bytes();
    let h = ExtHandshake::decode(payload).unwrap();
    assert_eq!(
        h.m,
        vec![(&b"LT_metadata"[..], 1), ("µT_PEX".as_bytes(), 2)]
    );
    assert_eq!(h.id_of("LT_metadata"), Some(1));
    assert_eq!(h.id_of("ut_metadata"), None);
    assert_eq!(h.p, Some(6881));
    assert_eq!(h.client(), Some("µTorrent 1.2"));
    assert!(h.issues.is_empty());
    assert_eq!(h.unknown_keys().count(), 0);
}

#[test]
fn ext_handshake_all_fields_and_unknown_keys() {
    let h = ExtHandshake {
        m: vec![(b"ut_metadata", 3), (b"ut_pex", 0)],
        v: Some(b"swarmscan/0.1"),
        p: Some(51413),
        yourip: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        reqq: Some(250),
        metadata_size: Some(31_337),
        ipv4: Some(Ipv4Addr::new(10, 1, 2, 3)),
        ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        upload_only: Some(1),
        complete_ago: Some(-1),
        ..Default::default()
    };
    let bytes = h.encode();
    let back = ExtHandshake::decode(&bytes).unwrap();
    assert_eq!(
        (back.m.clone(), back.v, back.p, back.yourip, back.reqq),
        (h.m.clone(), h.v, h.p, h.yourip, h.reqq)
    );
    assert_eq!(
        (
            back.metadata_size,
            back.ipv4,
            back.ipv6,
            back.upload_only,
            back.complete_ago
        ),
        (
            h.metadata_size,
            h.ipv4,
            h.ipv6,
            h.upload_only,
            h.complete_ago
        )
    );
    assert_eq!(back.id_of("ut_pex"), None, "id 0 means disabled");
    assert!(back.issues.is_empty());

    let odd = b"d1:md6:ut_pexi300e11:ut_metadatai2ee1:pi70000e6:yourip3:abc4:zzzzi1e1:vi5ee";
    let h = ExtHandshake::decode(odd).unwrap();
    assert_eq!(h.m, vec![(&b"ut_metadata"[..], 2)]);
    assert_eq!((h.p, h.yourip, h.v), (None, None, None));
    let problems: Vec<String> = h.issues.iter().map(|e| e.to_string()).collect();
    assert_eq!(problems.len(), 4, "{problems:?}");
    assert!(problems
        .iter()
        .any(|p| p.contains("`p`") && p.contains("70000 out of range")));
    assert!(problems
        .iter()
        .any(|p| p.contains("`yourip`") && p.contains("3 bytes")));
    assert!(problems
        .iter()
        .any(|p| p.contains("`v`") && p.contains("expected byte string")));
    assert!(problems.iter().any(|p| p.contains("m.\"ut_pex\"")));
    let unknown: Vec<&[u8]> = h.unknown_keys().map(|(k, _)| k).collect();
    assert_eq!(unknown, vec![&b"zzzz"[..]]);
    assert_eq!(h.get("zzzz").and_then(|v| v.as_int()), Some(1));

    assert_eq!(
        ExtHandshake::decode(b"li1ee"),
        Err(ExtError::NotDictionary("list"))
    );
    assert!(matches!(
        ExtHandshake::decode(b"d1:m"),
        Err(ExtError::Bencode(_))
    ));
}

#[test]
fn ut_metadata_bep9_examples() {
    // The three examples of BEP 9 (data shortened to 8 bytes).
    let req = MetadataMessage::decode(b"d8:msg_typei0e5:piecei0ee").unwrap();
    assert_eq!(req, MetadataMessage::Request { piece: 0 });
    assert_eq!(req.encode(), b"d8:msg_typei0e5:piecei0ee");
    let data = b"d8:msg_typei1e5:piecei0e10:total_sizei34256eexxxxxxxx";
    let msg = MetadataMessage::decode(data).unwrap();
    assert_eq!(
        msg,
        MetadataMessage::Data {
            piece: 0,
            total_size: 34256,
            data: b"xxxxxxxx"
        }
    );
    assert_eq!(msg.encode(), data);
    let rej = MetadataMessage::decode(b"d8:msg_typei2e5:piecei0ee").unwrap();
    assert_eq!(rej, MetadataMessage::Reject { piece: 0 });
    assert_eq!(ext::metadata_piece_count(34256), 3);
    // BEP 9's extension handshake example: {'m': {'ut_metadata', 3}, 'metadata_size': 31235}
    let h = ExtHandshake::decode(b"d1:md11:ut_metadatai3ee13:metadata_sizei31235ee").unwrap();
    assert_eq!(
        (h.id_of(ext::UT_METADATA), h.metadata_size),
        (Some(3), Some(31235))
    );
    assert_eq!(ext::metadata_piece_count(16384), 1);
}

#[test]
fn ut_metadata_errors_name_the_problem() {
    let e = |b: &[u8]| MetadataMessage::decode(b).unwrap_err().to_string();
    assert_eq!(
        e(b"d8:msg_typei7e5:piecei0ee"),
        "ut_metadata: unknown msg_type 7"
    );
    assert_eq!(e(b"d8:msg_typei0ee"), "missing field `piece`");
    assert!(e(b"d8:msg_typei0e5:piecei-1ee").contains("-1 out of range"));
    assert!(e(b"d8:msg_typei1e5:piecei0ee").contains("total_size"));
    assert!(e(b"d8:msg_typei0e5:piecei0eejunk").contains("4 bytes after the dictionary"));
    let mut big = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee".to_vec();
    big.resize(big.len() + 16385, b'x');
    assert!(e(&big).contains("16385 bytes after the dictionary, expected at most 16384"));
    assert_eq!(e(b"i1e"), "payload is a integer, expected a dictionary");
}

#[test]
fn ut_pex_round_trip_flags_and_limits() {
    let v4: SocketAddr = "10.0.0.1:6881".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:51413".parse().unwrap();
    let msg = PexMessage {
        added: vec![
            PexPeer {
                addr: v4,
                flags: PexFlags(0x01 | 0x02 | 0x10),
            },
            PexPeer {
                addr: v6,
                flags: PexFlags(0x04 | 0x08),
            },
        ],
        dropped: vec![
            "192.168.1.9:80".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
        ],
        skipped: 0,
    };
    let bytes = msg.encode();
    assert!(bytes.starts_with(b"d5:added6:\x0a\x00\x00\x01\x1a\xe17:added.f1:\x13"));
    let back = PexMessage::decode(&bytes).unwrap();
    assert_eq!(back, msg);
    let f = back.added[0].flags;
    assert!(f.prefers_encryption() && f.seed() && f.reachable() && !f.utp() && !f.holepunch());
    let f = back.added[1].flags;
    assert!(f.utp() && f.holepunch() && !f.seed());

    // Missing flags default to 0; a torn entry is an error naming the field.
    let b = PexMessage::decode(b"d5:added6:\x7f\x00\x00\x01\x00\x50e").unwrap();
    assert_eq!(b.added[0].flags, PexFlags(0));
    assert_eq!(
        PexMessage::decode(b"d7:dropped5:abcdee"),
        Err(ExtError::PexLength {
            field: "dropped",
            len: 5,
            entry: 6
        })
    );
    // 1000 peers in one message: only the cap is decoded, the rest counted.
    let mut many = PexMessage::default();
    for i in 0..1000u32 {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 1);
        many.added.push(PexPeer {
            addr,
            flags: PexFlags(0),
        });
    }
    let back = PexMessage::decode(&many.encode()).unwrap();
    assert_eq!(back.added.len(), ext::DEFAULT_MAX_PEX_PEERS);
    assert_eq!(back.skipped, 1000 - ext::DEFAULT_MAX_PEX_PEERS);
    assert_eq!(back.added[..], many.added[..ext::DEFAULT_MAX_PEX_PEERS]);
}

// ---------------------------------------------------------------- recorded from libtorrent

const SEEDER_PLAIN: &[u8] = include_bytes!("../../../../tests/data/peer_wire/seeder_plain.bin");
const SEEDER_FAST: &[u8] = include_bytes!("../../../../tests/data/peer_wire/seeder_fast.bin");
const LEECHER_OUT: &[u8] = include_bytes!("../../../../tests/data/peer_wire/leecher_out.bin");
const MAGNET_OUT: &[u8] = include_bytes!("../../../../tests/data/peer_wire/magnet_out.bin");
const META: &str = include_str!("../../../../tests/data/peer_wire/meta.json");

struct Recorded {
    info_hash: [u8; 20],
    num_pieces: u32,
    metadata_size: i64,
    our_ut_metadata: u8,
    our_ut_pex: u8,
    leecher_listen_port: u16,
    pex_expected_port: u16,
}

fn meta() -> Recorded {
    let v: serde_json::Value = serde_json::from_str(META).unwrap();
    let int = |k: &str| v[k].as_i64().unwrap_or_else(|| panic!("meta.json: {k}"));
    Recorded {
        info_hash: crate::hex::decode_array(v["info_hash"].as_str().unwrap()).unwrap(),
        num_pieces: int("num_pieces") as u32,
        metadata_size: int("metadata_size"),
        our_ut_metadata: int("our_ut_metadata") as u8,
        our_ut_pex: int("our_ut_pex") as u8,
        leecher_listen_port: int("leecher_listen_port") as u16,
        pex_expected_port: int("pex_expected_port") as u16,
    }
}

/// Decode a whole recording with the borrowing decoder: handshake, then every message.
fn decode_recording(stream: &[u8]) -> (Handshake, Vec<Message<'_>>) {
    let (h, mut pos) = Handshake::decode(stream).expect("recorded handshake");
    let mut msgs = Vec::new();
    while pos < stream.len() {
        let (m, used) = decode(&stream[pos..]).expect("recorded message");
        msgs.push(m);
        pos += used;
    }
    // Byte-by-byte and odd chunks give the same messages.
    let whole: Vec<Vec<u8>> = msgs.iter().map(|m| m.to_vec()).collect();
    for sizes in [&[1usize][..], &[3, 1, 7, 64], &[68, 5, 200]] {
        let (h2, got, err) = read_stream(stream, sizes);
        assert_eq!((h2, err), (Some(h), None));
        assert_eq!(got, whole);
    }
    (h, msgs)
}

fn libtorrent_handshake_checks(h: &Handshake, m: &Recorded) {
    assert_eq!(h.info_hash, m.info_hash);
    assert!(h.peer_id.starts_with(b"-LT2110-"), "{:?}", h.peer_id);
    assert!(h.reserved.extended() && h.reserved.fast() && h.reserved.dht());
}

fn ext_handshake<'a>(msgs: &[Message<'a>]) -> ExtHandshake<'a> {
    let payload = msgs
        .iter()
        .find_map(|m| match m {
            Message::Extended { ext_id: 0, payload } => Some(*payload),
            _ => None,
        })
        .expect("an extension handshake");
    let h = ExtHandshake::decode(payload).unwrap();
    assert!(h.issues.is_empty(), "{:?}", h.issues);
    assert!(
        h.client().unwrap().starts_with("libtorrent/2.1.1"),
        "{:?}",
        h.v
    );
    assert!(h.id_of(ext::UT_METADATA).is_some() && h.id_of(ext::UT_PEX).is_some());
    h
}

#[test]
fn libtorrent_seeder_sends_bitfield_without_fast_extension() {
    let m = meta();
    let (h, msgs) = decode_recording(SEEDER_PLAIN);
    libtorrent_handshake_checks(&h, &m);
    let ext = ext_handshake(&msgs);
    assert_eq!(ext.metadata_size, Some(m.metadata_size));
    assert_eq!(ext.yourip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(ext.upload_only, Some(1), "a seeder says upload_only");
    let unknown: Vec<&[u8]> = ext.unknown_keys().map(|(k, _)| k).collect();
    assert!(
        ext.m.iter().any(|(n, _)| *n == b"lt_donthave"),
        "{:?}",
        ext.m
    );
    assert!(unknown.is_empty() || unknown.iter().all(|k| !k.is_empty()));
    let bits = msgs
        .iter()
        .find_map(|m| match m {
            Message::Bitfield(b) => Some(*b),
            _ => None,
        })
        .expect("a seeder without the fast extension sends a bitfield");
    let s = bitfield::summarize(bits, m.num_pieces).unwrap();
    assert_eq!(s.pieces_have, m.num_pieces);
    assert!(s.is_complete() && !s.spare_bits_set);
    assert!(!msgs.contains(&Message::HaveAll));
}

#[test]
fn libtorrent_seeder_with_fast_extension_metadata_and_pex() {
    let m = meta();
    let (h, msgs) = decode_recording(SEEDER_FAST);
    libtorrent_handshake_checks(&h, &m);
    ext_handshake(&msgs);
    assert!(msgs.contains(&Message::HaveAll), "{msgs:?}");
    assert!(!msgs.iter().any(|m| matches!(m, Message::Bitfield(_))));

    // ut_metadata data for piece 0 comes under the id we advertised; the info dictionary it
    // carries hashes to the info-hash.
    let data = msgs
        .iter()
        .find_map(|msg| match msg {
            Message::Extended { ext_id, payload } if *ext_id == m.our_ut_metadata => {
                Some(MetadataMessage::decode(payload).unwrap())
            }
            _ => None,
        })
        .expect("a ut_metadata message");
    let MetadataMessage::Data {
        piece: 0,
        total_size,
        data,
    } = data
    else {
        panic!("{data:?}")
    };
    assert_eq!(i64::from(total_size), m.metadata_size);
    assert_eq!(data.len() as i64, m.metadata_size);
    use sha1::Digest;
    assert_eq!(<[u8; 20]>::from(sha1::Sha1::digest(data)), m.info_hash);

    // ut_pex names the other connection by the listen port it gave in its ext handshake.
    let pex = msgs
        .iter()
        .find_map(|msg| match msg {
            Message::Extended { ext_id, payload } if *ext_id == m.our_ut_pex => {
                Some(PexMessage::decode(payload).unwrap())
            }
            _ => None,
        })
        .expect("a ut_pex message");
    let expected = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), m.pex_expected_port);
    assert!(pex.added.iter().any(|p| p.addr == expected), "{pex:?}");
    assert_eq!(pex.skipped, 0);
}

#[test]
fn libtorrent_leecher_outgoing_handshake() {
    let m = meta();
    let (h, msgs) = decode_recording(LEECHER_OUT);
    libtorrent_handshake_checks(&h, &m);
    let ext = ext_handshake(&msgs);
    assert_eq!(
        ext.p,
        Some(m.leecher_listen_port),
        "an outgoing peer tells its listen port"
    );
    assert_eq!(ext.upload_only, None);
    // A leecher with nothing: have_none under the fast extension (or an empty bitfield).
    let nothing = msgs.iter().any(|msg| match msg {
        Message::HaveNone => true,
        Message::Bitfield(b) => bitfield::summarize(b, m.num_pieces).unwrap().pieces_have == 0,
        _ => false,
    });
    assert!(nothing, "{msgs:?}");
}

#[test]
fn libtorrent_magnet_leecher_requests_metadata() {
    let m = meta();
    let (h, msgs) = decode_recording(MAGNET_OUT);
    libtorrent_handshake_checks(&h, &m);
    let ext = ext_handshake(&msgs);
    assert_eq!(
        ext.metadata_size, None,
        "a magnet leecher has no metadata yet"
    );
    let req = msgs
        .iter()
        .find_map(|msg| match msg {
            Message::Extended { ext_id, payload } if *ext_id == m.our_ut_metadata => {
                Some(MetadataMessage::decode(payload).unwrap())
            }
            _ => None,
        })
        .expect("a ut_metadata request");
    assert_eq!(req, MetadataMessage::Request { piece: 0 });
}

// ---------------------------------------------------------------- properties

/// Raw material for any message; `build` turns it into a borrowing [`Message`].
fn any_parts() -> impl Strategy<Value = (u8, u32, u32, u32, Vec<u8>)> {
    (
        0u8..19,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
}

fn build(sel: u8, a: u32, b: u32, c: u32, bytes: &[u8]) -> Message<'_> {
    let blk = BlockRef {
        index: a,
        begin: b,
        length: c,
    };
    match sel {
        0 => Message::KeepAlive,
        1 => Message::Choke,
        2 => Message::Unchoke,
        3 => Message::Interested,
        4 => Message::NotInterested,
        5 => Message::Have(a),
        6 => Message::Bitfield(bytes),
        7 => Message::Request(blk),
        8 => Message::Piece {
            index: a,
            begin: b,
            block: bytes,
        },
        9 => Message::Cancel(blk),
        10 => Message::Port(a as u16),
        11 => Message::Suggest(a),
        12 => Message::HaveAll,
        13 => Message::HaveNone,
        14 => Message::Reject(blk),
        15 => Message::AllowedFast(a),
        16 => Message::Extended {
            ext_id: b as u8,
            payload: bytes,
        },
        // Ids nobody assigned here: 10..=12 and 21..=255 except 20.
        _ => Message::Unknown {
            id: [10, 11, 12, 21, 22, 23, 0x80, 0xff][(c % 8) as usize],
            payload: bytes,
        },
    }
}

proptest! {
    #[test]
    fn every_message_round_trips((sel, a, b, c, bytes) in any_parts()) {
        let msg = build(sel, a, b, c, &bytes);
        let enc = msg.to_vec();
        prop_assert_eq!(enc.len(), msg.encoded_len());
        prop_assert_eq!(decode(&enc), Ok((msg, enc.len())));
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Handshake::decode(&bytes);
        if let Ok((m, used)) = decode_with(&bytes, 200) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(m.to_vec(), &bytes[..used]);
        }
        let _ = ExtHandshake::decode(&bytes);
        let _ = MetadataMessage::decode(&bytes);
        let _ = PexMessage::decode_with(&bytes, 3);
    }

    #[test]
    fn split_feeding_matches_whole_buffer(
        msgs in proptest::collection::vec(any_parts(), 0..12),
        junk in proptest::collection::vec(any::<u8>(), 0..20),
        sizes in proptest::collection::vec(1usize..40, 1..8),
    ) {
        let mut stream = hs_bytes().to_vec();
        for (sel, a, b, c, bytes) in &msgs {
            build(*sel, *a, *b, *c, bytes).encode_into(&mut stream);
        }
        stream.extend_from_slice(&junk); // arbitrary tail: an error, a partial, or more messages
        let whole = read_stream(&stream, &[stream.len()]);
        let split = read_stream(&stream, &sizes);
        prop_assert_eq!(&split, &whole);
        prop_assert!(whole.1.len() >= msgs.len());
    }

    #[test]
    fn ext_handshake_round_trips(
        names in proptest::collection::btree_map("[a-z_]{1,12}", any::<u8>(), 0..6),
        v in proptest::option::of("[ -~]{0,20}"),
        p in proptest::option::of(any::<u16>()),
        six in any::<bool>(), ip in any::<[u8; 16]>(),
        reqq in proptest::option::of(any::<i64>()),
        size in proptest::option::of(0i64..1 << 40),
    ) {
        let yourip = if six { IpAddr::from(ip) } else { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) };
        let h = ExtHandshake {
            m: names.iter().map(|(k, v)| (k.as_bytes(), *v)).collect(),
            v: v.as_deref().map(str::as_bytes),
            p,
            yourip: Some(yourip),
            reqq,
            metadata_size: size,
            ..Default::default()
        };
        let bytes = h.encode();
        let back = ExtHandshake::decode(&bytes).unwrap();
        prop_assert_eq!(back.dict.as_ref().unwrap().raw(), &bytes[..]);
        let back = ExtHandshake { dict: None, ..back };
        prop_assert_eq!(back, h);
    }

    #[test]
    fn metadata_and_pex_round_trip(
        kind in 0u8..3, piece in any::<u32>(), total in any::<u32>(),
        data in proptest::collection::vec(any::<u8>(), 0..100),
        peers in proptest::collection::vec((any::<[u8; 16]>(), any::<u16>(), any::<bool>(), any::<u8>()), 0..20),
    ) {
        let msg = match kind {
            0 => MetadataMessage::Request { piece },
            1 => MetadataMessage::Data { piece, total_size: total, data: &data },
            _ => MetadataMessage::Reject { piece },
        };
        let enc = msg.encode();
        prop_assert_eq!(MetadataMessage::decode(&enc), Ok(msg));

        let mut pex = PexMessage::default();
        for (ip, port, six, flags) in peers {
            let addr = if six {
                SocketAddr::new(IpAddr::from(ip), port)
            } else {
                SocketAddr::new(IpAddr::from([ip[0], ip[1], ip[2], ip[3]]), port)
            };
            if flags & 1 == 0 {
                pex.added.push(PexPeer { addr, flags: PexFlags(flags) });
            } else {
                pex.dropped.push(addr);
            }
        }
        // The wire groups v4 before v6; compare in that order.
        let back = PexMessage::decode(&pex.encode()).unwrap();
        pex.added.sort_by_key(|p| p.addr.is_ipv6());
        pex.dropped.sort_by_key(|a| a.is_ipv6());
        prop_assert_eq!(back, pex);
    }
}

//! Live check against a real client: record a fresh session with libtorrent 2.1.1 on loopback
//! (tests/data/record_peer_wire.py) and decode it with the public peer wire API. The committed
//! golden files are checked in the unit tests; this one catches drift between them and what
//! the installed libtorrent actually sends (new peer-ids, ports and message order each run).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;

use sha1::Digest;
use swarmscan::proto::peer_wire::ext::{self, ExtHandshake, MetadataMessage};
use swarmscan::proto::peer_wire::{self, bitfield, Handshake, Message, MessageReader};

mod common;
use common::python_with_libtorrent as python;

fn record() -> PathBuf {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("swarmscan-peer-wire-{}", std::process::id()));
    let status = Command::new(python())
        .args([
            "-W",
            "ignore",
            &format!("{root}/tests/data/record_peer_wire.py"),
        ])
        .arg("--out")
        .arg(&out)
        .args(["--pex-wait", "5"])
        .status()
        .expect("run the recorder");
    assert!(status.success(), "record_peer_wire.py failed: {status}");
    out
}

/// Handshake and messages (re-encoded), checked to be identical when fed byte by byte.
fn decode_all(stream: &[u8]) -> (Handshake, Vec<Vec<u8>>) {
    let (h, mut pos) = Handshake::decode(stream).expect("handshake");
    let mut msgs = Vec::new();
    while pos < stream.len() {
        let (m, used) = peer_wire::decode(&stream[pos..]).expect("message");
        assert_eq!(m.to_vec(), &stream[pos..pos + used]);
        msgs.push(m.to_vec());
        pos += used;
    }
    let mut r = MessageReader::default();
    let mut byte_by_byte = Vec::new();
    let mut h2 = None;
    for b in stream {
        r.feed(std::slice::from_ref(b));
        if h2.is_none() {
            h2 = r.read_handshake().unwrap();
            continue;
        }
        while let Some(m) = r.read_message().unwrap() {
            byte_by_byte.push(m.to_vec());
        }
    }
    assert_eq!((h2, &byte_by_byte), (Some(h), &msgs));
    (h, msgs)
}

fn parsed(raw: &[Vec<u8>]) -> Vec<Message<'_>> {
    raw.iter()
        .map(|b| peer_wire::decode(b).unwrap().0)
        .collect()
}

#[test]
fn fresh_libtorrent_recording_decodes() {
    let dir = record();
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let meta: serde_json::Value = serde_json::from_slice(&read("meta.json")).unwrap();
    let info_hash: [u8; 20] =
        swarmscan::proto::hex::decode_array(meta["info_hash"].as_str().unwrap()).unwrap();
    let num_pieces = meta["num_pieces"].as_u64().unwrap() as u32;
    let our_ut_metadata = meta["our_ut_metadata"].as_u64().unwrap() as u8;

    for name in [
        "seeder_plain.bin",
        "seeder_fast.bin",
        "leecher_out.bin",
        "magnet_out.bin",
    ] {
        let stream = read(name);
        let (h, raw) = decode_all(&stream);
        let msgs = parsed(&raw);
        assert_eq!(h.info_hash, info_hash, "{name}");
        assert!(h.peer_id.starts_with(b"-LT2110-"), "{name}");
        assert!(h.reserved.extended() && h.reserved.fast(), "{name}");
        let ext = msgs
            .iter()
            .find_map(|m| match m {
                Message::Extended { ext_id: 0, payload } => ExtHandshake::decode(payload).ok(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{name}: no extension handshake"));
        assert!(
            ext.client().unwrap().starts_with("libtorrent/2.1.1"),
            "{name}"
        );
        assert!(ext.id_of(ext::UT_METADATA).is_some(), "{name}");
        assert_eq!(ext.yourip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), "{name}");

        match name {
            "seeder_plain.bin" => {
                let bits = msgs.iter().find_map(|m| match m {
                    Message::Bitfield(b) => Some(*b),
                    _ => None,
                });
                let s = bitfield::summarize(bits.expect("bitfield"), num_pieces).unwrap();
                assert!(s.is_complete() && !s.spare_bits_set);
            }
            "seeder_fast.bin" => {
                assert!(msgs.contains(&Message::HaveAll));
                let data = msgs.iter().find_map(|m| match m {
                    Message::Extended { ext_id, payload } if *ext_id == our_ut_metadata => {
                        MetadataMessage::decode(payload).ok()
                    }
                    _ => None,
                });
                let Some(MetadataMessage::Data { data, .. }) = data else {
                    panic!("no ut_metadata data: {data:?}")
                };
                assert_eq!(<[u8; 20]>::from(sha1::Sha1::digest(data)), info_hash);
            }
            "leecher_out.bin" => assert!(msgs.contains(&Message::HaveNone), "{msgs:?}"),
            _ => {
                let req = msgs.iter().find_map(|m| match m {
                    Message::Extended { ext_id, payload } if *ext_id == our_ut_metadata => {
                        MetadataMessage::decode(payload).ok()
                    }
                    _ => None,
                });
                assert_eq!(req, Some(MetadataMessage::Request { piece: 0 }));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

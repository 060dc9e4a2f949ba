#![no_main]
//! Extension payload decoders: extension handshake, ut_metadata, ut_pex. None may panic; what
//! decodes must survive an encode → decode round trip.
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use swarmscan_proto::peer_wire::ext::{ExtHandshake, MetadataMessage, PexMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ExtHandshake::decode(data) {
        let enc = h.encode();
        let back = ExtHandshake::decode(&enc).expect("re-encoded handshake decodes");
        assert!(back.issues.is_empty());
        // `m` is re-encoded as a sorted map: later duplicates win, order is by name.
        let sorted = |m: &[(&[u8], u8)]| {
            m.iter()
                .map(|(k, v)| (k.to_vec(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(sorted(&back.m), sorted(&h.m));
        assert_eq!((back.v, back.p, back.yourip), (h.v, h.p, h.yourip));
        assert_eq!(
            (back.reqq, back.metadata_size, back.ipv4, back.ipv6),
            (h.reqq, h.metadata_size, h.ipv4, h.ipv6)
        );
        assert_eq!(
            (back.upload_only, back.complete_ago),
            (h.upload_only, h.complete_ago)
        );
        let _ = h.unknown_keys().count();
    }
    if let Ok(m) = MetadataMessage::decode(data) {
        let enc = m.encode();
        assert_eq!(MetadataMessage::decode(&enc), Ok(m));
    }
    if let Ok(p) = PexMessage::decode_with(data, 20) {
        assert!(p.added.len() <= 40 && p.dropped.len() <= 40);
        let back = PexMessage::decode_with(&p.encode(), 40).expect("re-encoded pex decodes");
        assert_eq!(
            (back.added.len(), back.dropped.len(), back.skipped),
            (p.added.len(), p.dropped.len(), 0)
        );
    }
});

#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::magnet::Magnet;
use swarmscan_proto::metainfo::{InfoHashV1, InfoHashes, Metainfo};

fuzz_target!(|data: &[u8]| {
    // Never panics; a torrent that parses is self-consistent and its info dict, fed alone
    // (as ut_metadata would deliver it), parses to the same content.
    if let Ok(m) = Metainfo::from_bytes(data) {
        assert!(!m.info_hashes.is_empty());
        assert!(m.piece_length > 0);
        assert_eq!(m.total_size, m.files.iter().map(|f| f.length).sum::<u64>());
        for f in &m.files {
            assert!(f.path.iter().all(|c| !c.is_empty() && c != ".." && !c.contains('/')));
        }
        let root = swarmscan_proto::bencode::decode(data).expect("decoded once already");
        let info = root.get("info").expect("has info").raw();
        let again = Metainfo::from_info_dict(info, &m.info_hashes).expect("info dict alone");
        assert_eq!(again.files, m.files);
        assert_eq!(again.piece_count, m.piece_count);
        // Its magnet link round-trips.
        let magnet = Magnet::from_metainfo(&m);
        assert_eq!(magnet.to_string().parse::<Magnet>().expect("own magnet parses"), magnet);
    }
    let _ = Metainfo::from_info_dict(
        data,
        &InfoHashes {
            v1: Some(InfoHashV1([0; 20])),
            v2: None,
        },
    );
});

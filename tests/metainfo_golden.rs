//! The metainfo and magnet parsers against torrents made by libtorrent (committed under
//! tests/data/torrents/ by tests/data/make_torrents.py, each with a JSON sidecar of what
//! libtorrent read back), plus "never panics" properties on real torrents mutated at random.

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value as Json;
use swarmscan::proto::bencode;
use swarmscan::proto::magnet::Magnet;
use swarmscan::proto::metainfo::{InfoHashV1, InfoHashes, MetaVersion, Metainfo, MetainfoError};

const GOLDEN_NAMES: [&str; 8] = [
    "v1-single",
    "v1-multi",
    "v2-single",
    "v2-multi",
    "hybrid-single",
    "hybrid-multi",
    "v1pad-single",
    "v1pad-multi",
];

const SEEDS: [&[u8]; 4] = [
    include_bytes!("data/torrents/v1-multi.torrent"),
    include_bytes!("data/torrents/v2-multi.torrent"),
    include_bytes!("data/torrents/hybrid-multi.torrent"),
    include_bytes!("data/torrents/v1pad-single.torrent"),
];

fn golden(name: &str) -> (Vec<u8>, Json) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/torrents");
    let bytes = std::fs::read(dir.join(format!("{name}.torrent"))).unwrap();
    let json = std::fs::read(dir.join(format!("{name}.json"))).unwrap();
    (bytes, serde_json::from_slice(&json).unwrap())
}

fn hex_or_null<T: ToString>(h: Option<T>) -> Json {
    h.map_or(Json::Null, |h| Json::from(h.to_string()))
}

#[test]
fn golden_torrents_match_libtorrent() {
    for name in GOLDEN_NAMES {
        let (bytes, lt) = golden(name);
        let m = Metainfo::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex_or_null(m.info_hashes.v1), lt["info_hash_v1"], "{name}");
        assert_eq!(hex_or_null(m.info_hashes.v2), lt["info_hash_v2"], "{name}");
        assert_eq!(m.name, lt["name"], "{name}");
        assert_eq!(m.piece_length, lt["piece_length"], "{name}");
        assert_eq!(m.piece_count, lt["num_pieces"], "{name}");
        assert_eq!(m.total_size, lt["content_size"], "{name}");
        assert_eq!(m.info_size, lt["metadata_size"], "{name}");
        assert_eq!(m.private, lt["private"], "{name}");
        assert_eq!(m.creation_date, lt["creation_date"].as_i64(), "{name}");
        assert_eq!(m.created_by.as_deref(), lt["creator"].as_str(), "{name}");
        assert_eq!(m.comment.as_deref(), lt["comment"].as_str(), "{name}");
        assert_eq!(
            serde_json::to_value(&m.trackers).unwrap(),
            lt["trackers"],
            "{name}"
        );
        assert_eq!(
            serde_json::to_value(&m.url_list).unwrap(),
            lt["web_seeds"],
            "{name}"
        );
        let lt_files: Vec<(String, u64)> = lt["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["pad"] == false)
            .map(|f| {
                (
                    f["path"].as_str().unwrap().into(),
                    f["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let files: Vec<(String, u64)> = m
            .files
            .iter()
            .map(|f| (f.display_path(), f.length))
            .collect();
        assert_eq!(files, lt_files, "{name}");
        assert_eq!(m.single_file, name.ends_with("single"), "{name}");
        let version = match &name[..name.find('-').unwrap()] {
            "v1" | "v1pad" => MetaVersion::V1,
            "v2" => MetaVersion::V2,
            _ => MetaVersion::Hybrid,
        };
        assert_eq!(m.version, version, "{name}");
        if m.version != MetaVersion::V2 {
            // v1 pieces cover pad files too; libtorrent's total_size counts them.
            assert_eq!(m.total_size + m.padding_size, lt["total_size"], "{name}");
            let pads = lt["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["pad"] == true)
                .count();
            assert_eq!(m.pad_file_count, pads, "{name}");
        }

        // libtorrent's magnet for the same torrent.
        let magnet: Magnet = lt["magnet"].as_str().unwrap().parse().unwrap();
        assert_eq!(magnet.info_hashes, m.info_hashes, "{name}");
        assert_eq!(
            magnet.display_name.as_deref(),
            Some(m.name.as_str()),
            "{name}"
        );
        assert_eq!(magnet.trackers, m.trackers.concat(), "{name}");
        assert_eq!(magnet.web_seeds, m.url_list, "{name}");
        assert_eq!(Magnet::from_metainfo(&m), magnet, "{name}");
    }
}

/// The info dict alone, as ut_metadata delivers it, checked against the expected hashes.
#[test]
fn info_dict_from_metadata_exchange() {
    for name in GOLDEN_NAMES {
        let (bytes, _) = golden(name);
        let full = Metainfo::from_bytes(&bytes).unwrap();
        let root = bencode::decode(&bytes).unwrap();
        let info = root.get("info").unwrap().raw();
        assert_eq!(info.len(), full.info_size);

        let m = Metainfo::from_info_dict(info, &full.info_hashes).unwrap();
        assert_eq!(m.files, full.files);
        assert_eq!(m.info_hashes, full.info_hashes);
        assert!(m.trackers.is_empty(), "trackers live outside the info dict");

        // Knowing only one of a hybrid's hashes is enough.
        if let (Some(v1), Some(_)) = (full.info_hashes.v1, full.info_hashes.v2) {
            let only_v1 = InfoHashes {
                v1: Some(v1),
                v2: None,
            };
            assert!(Metainfo::from_info_dict(info, &only_v1).is_ok());
        }
        let wrong = InfoHashes {
            v1: Some(InfoHashV1([7; 20])),
            v2: None,
        };
        let err = Metainfo::from_info_dict(info, &wrong).unwrap_err();
        assert!(
            matches!(err, MetainfoError::HashMismatch { .. }),
            "{name}: {err}"
        );
        assert!(
            err.to_string()
                .starts_with("info-hash mismatch: expected 0707"),
            "{err}"
        );
    }
}

#[test]
fn hybrid_whose_parts_disagree_is_rejected() {
    let (bytes, _) = golden("hybrid-single");
    // Same length digits, different value: the v1 `length` no longer matches the v2 tree.
    let v1_length = b"6:lengthi40000e";
    let at = bytes
        .windows(v1_length.len())
        .rposition(|w| w == v1_length)
        .unwrap();
    let mut bad = bytes.clone();
    bad[at + 10] = b'1'; // 40000 -> 41000: still 3 pieces, so only the file lengths differ
    let err = Metainfo::from_bytes(&bad).unwrap_err();
    assert!(matches!(err, MetainfoError::HybridMismatch(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "invalid torrent: v1 and v2 parts disagree: v1 file single.bin (41000 bytes) vs v2 file single.bin (40000 bytes)"
    );
}

fn check_no_panic(bytes: &[u8]) {
    // Any outcome but a panic is fine; a success must be self-consistent.
    if let Ok(m) = Metainfo::from_bytes(bytes) {
        assert!(!m.info_hashes.is_empty());
        assert_eq!(m.total_size, m.files.iter().map(|f| f.length).sum::<u64>());
        assert!(m.piece_length > 0);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check_no_panic(&bytes);
        let _ = Metainfo::from_info_dict(&bytes, &InfoHashes { v1: Some(InfoHashV1([0; 20])), v2: None });
    }

    #[test]
    fn never_panics_on_mutated_real_torrents(
        seed in 0..SEEDS.len(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = SEEDS[seed].to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        check_no_panic(&bytes);
    }

    /// Digit-only mutations keep the structure bencode-valid far more often, so they reach the
    /// field checks (lengths, piece counts, hybrid agreement) rather than the decoder.
    #[test]
    fn never_panics_on_digit_mutations(
        seed in 0..SEEDS.len(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..10), 1..4),
    ) {
        let mut bytes = SEEDS[seed].to_vec();
        let digits: Vec<usize> = (0..bytes.len()).filter(|&i| bytes[i].is_ascii_digit()).collect();
        for (at, d) in flips {
            bytes[digits[at.index(digits.len())]] = b'0' + d;
        }
        check_no_panic(&bytes);
    }
}

//! `swarmscan inspect --json` against libtorrent (a real client) as ground truth: fresh
//! torrents with random sizes and names are made at test time by tests/data/make_torrents.py,
//! and every field libtorrent reports must match ours. Magnet links are checked both ways.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value as Json;
use swarmscan::proto::magnet::Magnet;

mod common;
use common::python_with_libtorrent as python;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/make_torrents.py")
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("swarmscan-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run_python(args: &[&str]) -> Json {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .expect("run make_torrents.py");
    assert!(
        out.status.success(),
        "make_torrents.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("make_torrents.py prints JSON")
}

fn inspect_json(input: &str) -> Json {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["inspect", "--json", input])
        .output()
        .expect("run swarmscan");
    assert!(
        out.status.success(),
        "swarmscan inspect --json {input} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "one JSON object on one line"
    );
    serde_json::from_str(&text).expect("valid JSON")
}

fn seed() -> u64 {
    match std::env::var("SWARMSCAN_SEED") {
        Ok(s) => s.parse().expect("SWARMSCAN_SEED is a number"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000_007
        }
    }
}

fn flat_trackers(tiers: &Json) -> Vec<String> {
    tiers
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t.as_array().unwrap().iter())
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn inspect_matches_libtorrent_for_fresh_torrents_and_magnets() {
    let dir = TempDir::new("inspect");
    let seed = seed();
    eprintln!("seed {seed} (set SWARMSCAN_SEED to repeat)");
    let cases = run_python(&["random", dir.0.to_str().unwrap(), &seed.to_string()]);
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 8, "v1, v2, hybrid, v1+pad × single, multi");

    let mut our_magnets = Vec::new();
    let mut expected_from_lt_parse = Vec::new();
    for lt in cases {
        let case = lt["case"].as_str().unwrap();
        let ours = inspect_json(lt["torrent_path"].as_str().unwrap());
        let ctx = format!("case {case} (seed {seed})");

        for key in [
            "info_hash_v1",
            "info_hash_v2",
            "name",
            "piece_length",
            "trackers",
            "private",
        ] {
            assert_eq!(ours[key], lt[key], "{key} in {ctx}");
        }
        assert_eq!(ours["pieces"], lt["num_pieces"], "pieces in {ctx}");
        assert_eq!(
            ours["total_size"], lt["content_size"],
            "total_size in {ctx}"
        );
        assert_eq!(ours["url_list"], lt["web_seeds"], "url_list in {ctx}");
        assert_eq!(ours["info_size"], lt["metadata_size"], "info_size in {ctx}");
        let lt_files: Vec<(String, u64)> = lt["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| !f["pad"].as_bool().unwrap())
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    f["size"].as_u64().unwrap(),
                )
            })
            .collect();
        let our_files: Vec<(String, u64)> = ours["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["path"].as_str().unwrap().to_string(),
                    f["length"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(our_files, lt_files, "files in {ctx}");
        let lt_pads = lt["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["pad"] == true);
        if ours["version"] != "v2" {
            assert_eq!(
                ours["pad_files"].as_u64().unwrap() as usize,
                lt_pads.count(),
                "pad files in {ctx}"
            );
        }
        let expected_version = match case.split('-').next().unwrap() {
            "v1pad" => "v1",
            v => v,
        };
        assert_eq!(ours["version"], expected_version, "{ctx}");

        // libtorrent's magnet, read by our parser.
        let from_lt = inspect_json(lt["magnet"].as_str().unwrap());
        assert_eq!(from_lt["source"], "magnet");
        for key in ["info_hash_v1", "info_hash_v2", "name"] {
            assert_eq!(
                from_lt[key], lt[key],
                "{key} from libtorrent's magnet in {ctx}"
            );
        }
        assert_eq!(
            flat_trackers(&from_lt["trackers"]),
            flat_trackers(&lt["trackers"]),
            "{ctx}"
        );
        assert_eq!(from_lt["url_list"], lt["web_seeds"], "{ctx}");

        // Our magnet, to be read by libtorrent below.
        our_magnets.push(ours["magnet"].as_str().unwrap().to_string());
        expected_from_lt_parse.push((
            lt["info_hash_v1"].clone(),
            lt["info_hash_v2"].clone(),
            lt["name"].clone(),
            flat_trackers(&lt["trackers"]),
            lt["web_seeds"].clone(),
            Vec::<String>::new(),
        ));
    }

    // A magnet with everything BEP 9 allows, built with the library API.
    let with_peers: Magnet = "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
        .parse()
        .unwrap();
    let with_peers = Magnet {
        display_name: Some("a name & more/ü?=%".into()),
        trackers: vec![
            "http://127.0.0.1:1/announce?x=1&y=2".into(),
            "udp://[::1]:2".into(),
        ],
        peers: vec![
            "127.0.0.2:6881".parse().unwrap(),
            "[::1]:51413".parse().unwrap(),
        ],
        web_seeds: vec!["http://127.0.0.1:3/w s/".into()],
        ..with_peers
    };
    our_magnets.push(with_peers.to_string());
    expected_from_lt_parse.push((
        Json::from("c12fe1c06bba254a9dc9f519b335aa7c1367a88a"),
        Json::Null,
        Json::from("a name & more/ü?=%"),
        with_peers.trackers.clone(),
        Json::from(with_peers.web_seeds.clone()),
        vec!["127.0.0.2:6881".into(), "[::1]:51413".into()],
    ));

    let list = dir.0.join("our-magnets.txt");
    std::fs::write(&list, our_magnets.join("\n")).unwrap();
    let parsed = run_python(&["parse-magnets", list.to_str().unwrap()]);
    let parsed = parsed.as_array().unwrap();
    assert_eq!(parsed.len(), our_magnets.len());
    for (lt, (v1, v2, name, trackers, seeds, peers)) in parsed.iter().zip(expected_from_lt_parse) {
        let ctx = format!("libtorrent parsing our {} (seed {seed})", lt["uri"]);
        assert_eq!(lt["info_hash_v1"], v1, "{ctx}");
        assert_eq!(lt["info_hash_v2"], v2, "{ctx}");
        assert_eq!(lt["name"], name, "{ctx}");
        assert_eq!(
            lt["trackers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            trackers,
            "{ctx}"
        );
        assert_eq!(lt["web_seeds"], seeds, "{ctx}");
        assert_eq!(
            lt["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect::<Vec<_>>(),
            peers,
            "{ctx}"
        );
    }
}

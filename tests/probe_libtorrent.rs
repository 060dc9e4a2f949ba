//! `swarmscan probe` against a real libtorrent seeder: by .torrent-less info-hash only, so
//! the probe must fetch the metadata (BEP 9) to learn the piece count and measure progress.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

mod common;
use common::python_with_libtorrent as python;

/// Starts a libtorrent seeder of `pieces` pieces; `encryption` is "plain" or "forced".
fn seeder(pieces: u32, encryption: &str) -> (Kill, serde_json::Value) {
    let py = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lt_probe_target.py");
    let mut child = Kill(
        Command::new(&py)
            .args([script, &pieces.to_string(), encryption])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("seeder's JSON line");
    assert_eq!(info["seeding"], true);
    (child, info)
}

#[test]
fn probe_by_hash_fetches_metadata_and_reads_a_seeders_progress() {
    let (_seeder, info) = seeder(300, "plain");
    let hash = info["info_hash"].as_str().unwrap();
    let pieces = info["num_pieces"].as_u64().unwrap();
    let port = info["port"].as_u64().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["probe", &format!("127.0.0.1:{port}"), hash, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["handshake"], true, "{r}");
    assert_eq!(
        r["piece_count"].as_u64(),
        Some(pieces),
        "metadata fetched: {r}"
    );
    assert_eq!(
        r["pieces_have"].as_u64(),
        Some(pieces),
        "a seeder has every piece: {r}"
    );
    assert!(
        r["client"]
            .as_str()
            .unwrap_or("")
            .starts_with("libtorrent/2.1.1"),
        "{r}"
    );
    assert_eq!(r["end"]["kind"], "answered", "{r}");

    // The text transcript names the messages as a capture would.
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["probe", &format!("127.0.0.1:{port}"), hash])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "-> handshake",
        "<- handshake",
        "<- extension handshake",
        "100.0%",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// A seeder that refuses plaintext: the scan's first probe is hung up on, the retry talks
/// MSE/PE, fetches the metadata (the torrent is given as a magnet with the peer in `x.pe`)
/// and reads the seeder's progress through the encrypted stream.
#[test]
fn scan_falls_back_to_encryption_for_a_peer_that_requires_it() {
    let (_seeder, info) = seeder(200, "forced");
    let hash = info["info_hash"].as_str().unwrap();
    let port = info["port"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mse.sqlite");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{port}");
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let database = format!("database={:?}", db.display().to_string());
    let out = Command::new(bin)
        .args(["run", "--for", "8s", "--json", "--set", &database])
        .args(["--set", &format!("net.listen=[\"{listen}\"]")])
        .args([
            "--set",
            "privacy.ip=\"full\"",
            "--set",
            "net.encryption=\"fallback\"",
        ])
        .args(["--set", "peer.revisit_secs=2"])
        .arg(&magnet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peers = Command::new(bin)
        .args(["peers", "--json", "--set", &database])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&peers.stdout);
    let peer: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|p| p["port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("seeder not in peers: {text}"));
    assert!(
        peer["transport"].as_str().unwrap_or("").contains("mse"),
        "{peer}"
    );
    assert_eq!(peer["last_progress"].as_f64(), Some(1.0), "{peer}");
    assert_eq!(
        peer["confirmed"], false,
        "a seeder is never confirmed: {peer}"
    );
    // The plaintext attempt that was hung up on, then the encrypted success.
    let report = Command::new(bin)
        .args(["report", "--json", "--set", &database])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let outcomes = report["outcomes"].to_string();
    assert!(outcomes.contains("success"), "{outcomes}");
}

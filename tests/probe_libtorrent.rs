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

fn python() -> String {
    std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn probe_by_hash_fetches_metadata_and_reads_a_seeders_progress() {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import libtorrent"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{py} cannot import libtorrent: run the tests with scripts/test, which installs it"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lt_probe_target.py");
    let mut seeder = Kill(
        Command::new(&py)
            .args([script, "300"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(seeder.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("seeder's JSON line");
    assert_eq!(info["seeding"], true);
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

//! `swarmscan bench dht` as a short smoke run: our node (one worker) against a small simulated
//! DHT, and the floor. Checks that lookups ran to their end, found the simulated peers and
//! that both sides measured something; no timing.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::process::ChildGuard;

#[test]
fn bench_dht_runs_lookups_against_the_simulated_dht_and_the_floor() {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut guard = ChildGuard::spawn(
        "swarmscan bench dht",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(["bench", "dht", "--seconds", "1", "--rounds", "1"])
            .args(["--nodes", "64", "--lookups", "8", "--json"])
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen")),
    );
    let status = guard
        .wait_timeout(Duration::from_secs(120))
        .expect("bench dht ends by itself");
    let text = std::fs::read_to_string(out.path()).expect("read output");
    assert!(status.success(), "bench dht failed: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    let num = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} missing or not a number: {v}"))
    };
    for key in [
        "queries_per_sec",
        "queries_per_cpu_sec",
        "lookups_per_sec",
        "floor_datagrams_per_sec",
        "floor_datagrams_per_cpu_sec",
        "ratio",
        "cpu_ratio",
    ] {
        assert!(num(key) > 0.0, "{key}: {v}");
    }
    // Every simulated node answers correctly: lookups end at the nodes closest to their
    // target, which hand out the target's peers (8 per info-hash).
    assert!(num("peers_found") >= 8.0, "{v}");
    assert!(num("queries_per_lookup") >= 1.0, "{v}");
    assert_eq!(num("simulated_nodes"), 64.0);
    assert_eq!(num("window"), 24.0);
}

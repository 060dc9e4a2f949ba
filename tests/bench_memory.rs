//! `swarmscan bench memory` at tiny sizes: every phase is a real `swarmscan run` on the 1 GB
//! profile; checks that each load reached the scan (as its own `/metrics` report it) and that
//! the report has its fields. No timing, no memory threshold (that is the benchmark's job).

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::process::ChildGuard;

#[test]
fn bench_memory_puts_every_load_on_a_real_scan() {
    let (known, in_flight, watched, backlog) = (3000u64, 40u64, 30u64, 3000u64);
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut guard = ChildGuard::spawn(
        "swarmscan bench memory",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(["bench", "memory", "--known"])
            .arg(known.to_string())
            .arg("--in-flight")
            .arg(in_flight.to_string())
            .arg("--watched")
            .arg(watched.to_string())
            .arg("--backlog-peers")
            .arg(backlog.to_string())
            .args(["--hold-secs", "2", "--json"])
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen")),
    );
    let status = guard
        .wait_timeout(Duration::from_secs(300))
        .expect("bench memory ends by itself");
    let text = std::fs::read_to_string(out.path()).expect("read output");
    assert!(status.success(), "bench memory failed: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["bench"], "memory");
    assert_eq!(v["memory_high_bytes"], 700u64 << 20, "{v}");
    assert_eq!(v["memory_max_bytes"], 850u64 << 20, "{v}");
    let phase = |name: &str, field: &str| v["phases"][name][field].as_u64().unwrap_or(0);
    assert_eq!(phase("known", "peers_known_max"), known, "{v}");
    assert_eq!(phase("in_flight", "in_flight_max"), in_flight, "{v}");
    assert_eq!(phase("watched", "watched_max"), watched, "{v}");
    let silent = v["full_silent_peers"].as_u64().expect("full_silent_peers");
    assert!(silent > 0 && silent < in_flight, "{v}");
    assert_eq!(
        phase("full", "peers_known_max"),
        known + silent + watched + backlog,
        "{v}"
    );
    assert!(phase("full", "in_flight_max") >= silent, "{v}");
    assert_eq!(phase("full", "watched_max"), watched, "{v}");
    // Tests build in debug mode, where the writer can be stalled: records pile up.
    assert_eq!(v["writer_stalled"], true, "{v}");
    assert!(phase("backlog", "writer_queue_max") > 0, "{v}");
    assert!(phase("full", "writer_queue_max") > 0, "{v}");
    assert!(
        phase("full", "peak_rss_bytes") > phase("baseline", "peak_rss_bytes"),
        "{v}"
    );
    for field in [
        "peak_rss_bytes",
        "ratio_peak_to_memory_high",
        "bytes_per_known_peer",
        "bytes_per_known_peer_held",
        "bytes_per_in_flight_probe",
        "bytes_per_watched_connection",
        "bytes_per_queued_record",
    ] {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
}

//! `swarmscan bench watch` in test mode: a few hundred watched connections, held briefly.
//! Checks that every connection became held and that the report has its fields; no timing.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::process::ChildGuard;

#[test]
fn bench_watch_holds_every_requested_connection() {
    let watched = 300u64;
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut guard = ChildGuard::spawn(
        "swarmscan bench watch",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(["bench", "watch", "--watched"])
            .arg(watched.to_string())
            .args([
                "--hold-secs",
                "1",
                "--connect-secs",
                "60",
                "--have-every-ms",
                "200",
                "--keepalive-ms",
                "300",
                "--workers",
                "2",
                "--json",
            ])
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen")),
    );
    let status = guard
        .wait_timeout(Duration::from_secs(180))
        .expect("bench watch ends by itself");
    let text = std::fs::read_to_string(out.path()).expect("read output");
    assert!(status.success(), "bench watch failed: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["bench"], "watch");
    assert_eq!(v["watched"], watched);
    assert_eq!(v["held"], watched, "{v}");
    assert_eq!(v["held_max"], watched, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["refused"], 0, "{v}");
    for field in [
        "rss_baseline_bytes",
        "rss_held_bytes",
        "rss_per_watched_bytes",
        "rss_per_watched_slope_bytes",
        "slot_bytes_reserved",
        "kernel_bytes_per_socket",
        "haves_received",
        "seconds",
        "workers",
    ] {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
    assert!(v["rss_held_bytes"].as_u64() > Some(0), "{v}");
    // Held connections see the fake peers' traffic.
    assert!(v["haves_received"].as_u64() > Some(0), "{v}");
}

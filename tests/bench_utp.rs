//! `swarmscan bench utp` in test mode: one short round against the fake uTP and TCP swarms.
//! Checks that uTP probes went through the scan driver and answered (every uTP probe a
//! success), that TCP ones did too, and that the report has its fields; no timing.

use std::process::{Command, Stdio};
use std::time::Duration;

mod common;
use common::process::ChildGuard;

#[test]
fn bench_utp_probes_the_fake_utp_swarm_through_the_scan_driver() {
    let out = tempfile::NamedTempFile::new().expect("temp file");
    let mut guard = ChildGuard::spawn(
        "swarmscan bench utp",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args([
                "bench",
                "utp",
                "--seconds",
                "2",
                "--rounds",
                "1",
                "--peers",
                "2000",
                "--in-flight",
                "100",
                "--workers",
                "2",
                "--json",
            ])
            .stdin(Stdio::null())
            .stdout(out.reopen().expect("reopen")),
    );
    let status = guard
        .wait_timeout(Duration::from_secs(180))
        .expect("bench utp ends by itself");
    let text = std::fs::read_to_string(out.path()).expect("read output");
    assert!(status.success(), "bench utp failed: {text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON object");
    assert_eq!(v["bench"], "utp");
    let utp_ok = v["utp_probes_ok"].as_u64().expect("utp_probes_ok");
    assert!(utp_ok > 0, "no uTP probe answered: {v}");
    assert!(v["tcp_probes_ok"].as_u64() > Some(0), "{v}");
    // Every uTP probe that ended was answered (the fake peers always answer), and each one
    // was a uTP connection.
    assert_eq!(v["utp_probes_done"], v["utp_probes_ok"], "{v}");
    assert!(v["utp_connections_started"].as_u64() >= Some(utp_ok), "{v}");
    for field in [
        "utp_probes_per_sec",
        "tcp_probes_per_sec",
        "utp_over_tcp",
        "goal",
        "utp_cpu_secs_per_1k_probes",
        "tcp_cpu_secs_per_1k_probes",
    ] {
        assert!(v[field].is_number(), "{field} missing in {v}");
    }
    assert!(v["meets_goal"].is_boolean(), "{v}");
}

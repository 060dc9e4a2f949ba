//! Values a user can type, and threads that die, run as the built binary (issue 7).
//!
//! Every duration and count from a flag or a config key is bounded: an absurd, negative or
//! zero-where-meaningless value is exit code 2 with one message naming the flag or key, before
//! anything starts, never a panic, a hang or a scan that runs with a dead thread. And a panic in
//! any thread of a scan stops it with a non-zero exit and a message naming the thread.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Any info-hash: the scans below need a torrent, not peers.
const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

/// Runs swarmscan with `args` (and `env`), killing it after `limit`; (exit code, stderr).
fn swarmscan(args: &[String], env: &[(&str, &str)], limit: Duration) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    cmd.args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("SWARMSCAN_DEBUG_PANIC")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run swarmscan");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "swarmscan {args:?} still running after {limit:?} (a hang or a spin); stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("exited, not killed by a signal"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `run` on one torrent for `secs`, its database in `dir`, listening on a free loopback port,
/// plus `extra` arguments.
fn run_args(dir: &Path, secs: u32, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "run".into(),
        HASH.into(),
        format!("--for={secs}s"),
        "--set".into(),
        format!(
            "database={:?}",
            dir.join("scan.sqlite").display().to_string()
        ),
        "--set".into(),
        "net.listen=[\"127.0.0.1:0\"]".into(),
        "--set".into(),
        "engine.workers=1".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The value is refused: exit 2, the flag or key named, no panic, nothing started.
fn assert_refused(args: &[String], name: &str) {
    let (code, stderr) = swarmscan(args, &[], Duration::from_secs(20));
    assert_eq!(code, 2, "{args:?}: exit {code}, stderr:\n{stderr}");
    assert!(
        stderr.contains(name),
        "{args:?}: {name} not named:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Duration"),
        "{args:?}: panic text on stderr:\n{stderr}"
    );
    assert!(stderr.lines().count() <= 4, "{args:?}: too much:\n{stderr}");
}

#[test]
fn absurd_flag_values_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!(
        "database={:?}",
        dir.path().join("r.sqlite").display().to_string()
    );
    let cases: &[(&[&str], &str)] = &[
        (&["run", HASH, "--for", "99999999999999999999s"], "--for"),
        (&["run", HASH, "--for=-5m"], "--for"),
        (&["run", HASH, "--for", "366d"], "--for"),
        (&["series", "--bucket", "99999999999999999999s"], "--bucket"),
        (&["series", "--bucket=-1h"], "--bucket"),
        (&["series", "--bucket", "1e300"], "--bucket"),
        // Used to panic in a scoped thread and then spin at 100 % CPU, never exiting.
        (&["bench", "probes", "--seconds=-5"], "--seconds"),
        (&["bench", "probes", "--seconds", "1e300"], "--seconds"),
        (&["bench", "probes", "--rounds", "0"], "--rounds"),
        (&["bench", "probes", "--peers", "99999999"], "--peers"),
        (
            &["bench", "probes", "--recv-buffers", "1000"],
            "--recv-buffers",
        ),
        (&["bench", "watch", "--hold-secs=-1"], "--hold-secs"),
        (
            &["bench", "watch", "--connect-secs", "1e300"],
            "--connect-secs",
        ),
        (&["bench", "watch", "--pieces", "4294967295"], "--pieces"),
        (&["bench", "watch", "--keepalive-ms", "0"], "--keepalive-ms"),
        (
            &["bench", "peers", "--ipv6-percent", "101"],
            "--ipv6-percent",
        ),
        (&["bench", "peers", "--workers", "0"], "--workers"),
        (&["demo", "--seconds", "0"], "--seconds"),
        (&["demo", "--seconds", "18446744073709551615"], "--seconds"),
        (&["demo", "--peers", "100000"], "--peers"),
        (
            &[
                "probe",
                "127.0.0.1:9",
                HASH,
                "--quiet-timeout-ms",
                "18446744073709551615",
            ],
            "--quiet-timeout-ms",
        ),
        (
            &["probe", "127.0.0.1:9", HASH, "--connect-timeout-ms", "0"],
            "--connect-timeout-ms",
        ),
        (
            &["probe", "127.0.0.1:9", HASH, "--pieces", "4294967295"],
            "--pieces",
        ),
    ];
    for (args, flag) in cases {
        let mut args = strings(args);
        if args[0] == "series" {
            args.extend(["--set".to_string(), db.clone()]);
        }
        assert_refused(&args, flag);
    }
}

#[test]
fn absurd_config_values_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        // Used to panic on the main thread.
        ("stats.interval_secs=1e300", "stats.interval_secs"),
        // Used to kill only a discovery thread: the scan went on with no peers and exited 0.
        ("tracker.announce_secs=1e300", "tracker.announce_secs"),
        ("tracker.scrape_secs=1e300", "tracker.scrape_secs"),
        ("tracker.scrape_secs=-1", "tracker.scrape_secs"),
        ("peer.revisit_secs=inf", "peer.revisit_secs"),
        ("peer.retry_backoff_secs=1e300", "peer.retry_backoff_secs"),
        (
            "peer.retry_backoff_factor=1e300",
            "peer.retry_backoff_factor",
        ),
        // Deadline sums that overflow.
        (
            "peer.quiet_timeout_ms=9223372036854775807",
            "peer.quiet_timeout_ms",
        ),
        (
            "peer.max_duration_ms=9223372036854775807",
            "peer.max_duration_ms",
        ),
        (
            "peer.bitfield_grace_ms=9223372036854775807",
            "peer.bitfield_grace_ms",
        ),
        (
            "tracker.timeout_ms=18446744073709551615",
            "tracker.timeout_ms",
        ),
        ("store.batch_ms=9223372036854775807", "store.batch_ms"),
        ("peer.connect_timeout_ms=0", "peer.connect_timeout_ms"),
        // Counts that size allocations, descriptors or threads.
        (
            "store.channel_capacity=100000000000",
            "store.channel_capacity",
        ),
        ("store.batch_rows=-1", "store.batch_rows"),
        ("engine.workers=100000", "engine.workers"),
        (
            "engine.recv_buffer_size=4294967295",
            "engine.recv_buffer_size",
        ),
        ("engine.max_peers=0", "engine.max_peers"),
        ("peer.max_in_flight=4294967295", "peer.max_in_flight"),
        ("peer.connects_per_sec=0", "peer.connects_per_sec"),
        ("peer.message_cap=1.5", "peer.message_cap"),
        ("tracker.numwant=0", "tracker.numwant"),
    ];
    for (set, key) in cases {
        let args = run_args(dir.path(), 30, &["--set", set]);
        assert_refused(&args, key);
        assert!(
            !dir.path().join("scan.sqlite").exists(),
            "--set {set}: the scan started (database created) before refusing"
        );
    }
    // The same from a config file, and from `config --check`.
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[tracker]\nscrape_secs = 1e300\n").unwrap();
    let mut args = run_args(dir.path(), 30, &[]);
    args.extend(["--config".to_string(), file.display().to_string()]);
    assert_refused(&args, "tracker.scrape_secs");
    assert_refused(
        &strings(&["config", "--check", file.to_str().unwrap()]),
        "tracker.scrape_secs",
    );
    // Other subcommands that read the configuration refuse it too.
    for sub in ["report", "peers", "series", "add"] {
        let mut args = strings(&[sub, "--set", "stats.interval_secs=1e300"]);
        if sub == "add" {
            args.push(HASH.into());
        }
        assert_refused(&args, "stats.interval_secs");
    }
}

/// With `SWARMSCAN_DEBUG_PANIC=<point>` (a hook that exists in debug builds only) a thread of
/// the scan panics; the scan must stop at once with a non-zero exit and say which thread.
#[test]
fn a_panicking_thread_stops_the_scan_with_a_named_error() {
    if !cfg!(debug_assertions) {
        eprintln!("release build: the panic hook SWARMSCAN_DEBUG_PANIC is compiled out; skipped");
        return;
    }
    for (point, thread) in [
        ("engine", "'engine-0'"),
        ("discovery", "'discovery'"),
        ("writer", "'swarmscan-writer'"),
        ("status", "'main'"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // 60 s asked for; a scan that goes on without the thread would still be running at 20 s.
        let args = run_args(dir.path(), 60, &["--set", "stats.interval_secs=0.5"]);
        let started = Instant::now();
        let (code, stderr) = swarmscan(
            &args,
            &[("SWARMSCAN_DEBUG_PANIC", point)],
            Duration::from_secs(20),
        );
        assert_ne!(code, 0, "{point}: exit 0 after a panic:\n{stderr}");
        assert!(
            stderr.contains(&format!("thread {thread}")) && stderr.contains("deliberate panic"),
            "{point}: thread {thread} not named:\n{stderr}"
        );
        if point != "status" {
            // Reported by the main thread, which stopped the others and joined them.
            assert_eq!(code, 1, "{point}:\n{stderr}");
            let last = stderr.lines().last().unwrap_or("");
            assert!(
                last.starts_with("swarmscan: run: thread ")
                    && last.contains(thread)
                    && last.ends_with("the scan was stopped"),
                "{point}: last line {last:?}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{point}: took {:?} to stop",
            started.elapsed()
        );
    }
}

/// Without the hook's variable the same scan ends normally (the hook is inert).
#[test]
fn a_scan_without_the_hook_ends_normally() {
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(dir.path(), 2, &["--set", "stats.interval_secs=0.5"]);
    let (code, stderr) = swarmscan(&args, &[], Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

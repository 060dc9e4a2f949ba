//! What the tests on a swarm of real clients share: the npm `bittorrent-tracker`, the driver
//! scripts of tests/py (started, read, stopped), swarmscan's read-only commands, and the
//! formatting of their tables. The tests on tests/py/swarm_kinds.py share more: see
//! [`super::kinds_swarm`].
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::process::{read_to_string_lossy, ChildGuard, StdoutLines};

/// The npm package bittorrent-tracker 11 (its directory in env `SWARMSCAN_BITTORRENT_TRACKER`).
pub fn bittorrent_tracker_package() -> PathBuf {
    let path = std::env::var_os("SWARMSCAN_BITTORRENT_TRACKER").map(PathBuf::from);
    match path {
        Some(p) if p.join("server.js").is_file() => p,
        other => panic!(
            "this test needs the npm package bittorrent-tracker 11: its directory in env \
             SWARMSCAN_BITTORRENT_TRACKER (got {other:?}). Run scripts/test (it runs `npm install \
             --prefix ~/.cache/swarmscan/npm --ignore-scripts bittorrent-tracker@11`) or set \
             SWARMSCAN_BITTORRENT_TRACKER=/path/to/node_modules/bittorrent-tracker."
        ),
    }
}

/// Starts bittorrent-tracker (tests/js/bittorrent_tracker.mjs) on port `port`: HTTP on
/// `http_host`, UDP on 127.0.0.1 and UDP6 on ::1; waits until every socket listens. Its
/// output goes to `dir`/tracker.log and tracker.err.
pub fn start_bittorrent_tracker(dir: &Path, port: u16, http_host: &str) -> ChildGuard {
    let log = dir.join("tracker.log");
    let err = dir.join("tracker.err");
    let mut tracker = ChildGuard::spawn(
        "bittorrent-tracker",
        Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/bittorrent_tracker.mjs"))
            .arg(bittorrent_tracker_package())
            .args([&port.to_string(), http_host, "127.0.0.1", "::1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    let start = Instant::now();
    while !read_to_string_lossy(&log).contains(" listening") {
        if let Some(status) = tracker.wait_timeout(Duration::from_millis(100)) {
            panic!(
                "bittorrent-tracker exited ({status}): {}{}",
                read_to_string_lossy(&log),
                read_to_string_lossy(&err)
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bittorrent-tracker did not listen on port {port} within 20 s: {}{}",
            read_to_string_lossy(&log),
            read_to_string_lossy(&err)
        );
    }
    tracker
}

/// Starts the driver script `script` of tests/py with the interpreter `py` and the arguments
/// `args` adds: its stdin piped (closing it stops the swarm), its stdout (JSON lines) read by a
/// thread, its stderr to `log` (its client processes inherit it).
pub fn spawn_driver(
    py: &str,
    script: &'static str,
    log: &Path,
    args: impl FnOnce(&mut Command) -> &mut Command,
) -> (ChildGuard, StdoutLines) {
    let mut command = Command::new(py);
    command.arg(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/py")
            .join(script),
    );
    args(&mut command);
    let mut driver = ChildGuard::spawn(
        script,
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap()),
    );
    let lines = StdoutLines::of(&mut driver);
    (driver, lines)
}

/// Hands the driver's lines to `take` until it returns true; fails the test, naming `waiting_for`
/// and showing the driver's log, when no line comes for `limit`.
pub fn read_until(
    lines: &StdoutLines,
    limit: Duration,
    waiting_for: &str,
    driver_log: &Path,
    mut take: impl FnMut(&str) -> bool,
) {
    loop {
        match lines.recv_timeout(limit) {
            Ok(line) => {
                if take(&line) {
                    return;
                }
            }
            Err(e) => panic!(
                "{waiting_for} within {} s ({e}): {}",
                limit.as_secs(),
                read_to_string_lossy(driver_log)
            ),
        }
    }
}

/// Stops a driver script: closing its stdin ends it and, through theirs, its clients. Waits
/// `limit` for it (killing it if it hangs, so that its stdout ends and the reader thread with
/// it), hands the lines not taken yet to `take`, and returns how it exited (`None`: hung).
pub fn stop_driver(
    driver: &mut ChildGuard,
    lines: StdoutLines,
    limit: Duration,
    mut take: impl FnMut(&str),
) -> Option<ExitStatus> {
    drop(driver.child.stdin.take());
    let status = driver.wait_timeout(limit);
    if status.is_none() {
        let _ = driver.child.kill();
    }
    for line in lines.finish() {
        take(&line);
    }
    status
}

/// Where a read-only swarmscan command finds the scan's database.
#[derive(Clone, Copy)]
pub enum DatabaseFrom<'a> {
    /// `--set database=PATH`
    Path(&'a Path),
    /// `--config PATH`
    Config(&'a Path),
}

/// Runs a read-only swarmscan command (`peers`, `report`, …) in `dir` and returns its stdout;
/// fails the test with its stderr when it fails or takes longer than 30 s. Its output is kept
/// in `dir` as `<args joined by _>.out` and `.err`.
pub fn swarmscan_query(dir: &Path, database: DatabaseFrom, args: &[&str]) -> String {
    let out_path = dir.join(format!("{}.out", args.join("_")));
    let err_path = dir.join(format!("{}.err", args.join("_")));
    let mut command = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    command.args(args);
    match database {
        DatabaseFrom::Path(db) => command
            .arg("--set")
            .arg(format!("database={}", db.display())),
        DatabaseFrom::Config(config) => command.arg("--config").arg(config),
    };
    let mut cmd = ChildGuard::spawn(
        "swarmscan (read-only command)",
        command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let status = cmd.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "swarmscan {args:?} failed or hung ({status:?}): {}",
        read_to_string_lossy(&err_path)
    );
    read_to_string_lossy(&out_path)
}

/// `swarmscan peers --json`: one JSON object per peer row.
pub fn swarmscan_peers(dir: &Path, database: DatabaseFrom) -> Vec<serde_json::Value> {
    swarmscan_query(dir, database, &["peers", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `swarmscan report --json`.
pub fn swarmscan_report(dir: &Path, database: DatabaseFrom) -> serde_json::Value {
    serde_json::from_str(&swarmscan_query(dir, database, &["report", "--json"])).unwrap()
}

/// Seconds from `origin` to `t` ("-" for none), for tables.
pub fn secs_from(t: Option<i64>, origin: i64) -> String {
    t.map_or("-".into(), |t| {
        format!("{:+.1}s", (t - origin) as f64 / 1000.0)
    })
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

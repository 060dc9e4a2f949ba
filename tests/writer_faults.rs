//! The writer under faults, with the real binary scanning the built-in simulated swarm
//! (loopback only): a full disk that is freed again, a disk that stays full, `kill -9` at
//! random moments, and a database file removed or replaced under the running scan.
//!
//! The full disk is a small tmpfs mounted over an empty directory inside a private mount
//! namespace (`unshare -m`, run as root): only the scanner sees it; the test fills and frees it
//! through `/proc/<pid>/root`. Tests that need it are skipped (with a message) where mount
//! namespaces are not available.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::process::ChildGuard;
use swarmscan::sim::{SimOptions, SimSwarm};

/// The scanner under test (`SWARMSCAN_TEST_BIN` runs these tests against another build, e.g.
/// one from before a fix).
fn binary() -> String {
    std::env::var("SWARMSCAN_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_swarmscan").into())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `--set` arguments of a fast scan of the simulation (no watched connections, so every
/// probe ends in exactly one outcome record).
fn scan_args(db: &Path, extra: &[String]) -> Vec<String> {
    let mut set = vec![
        format!("database={:?}", db.display().to_string()),
        format!("net.listen=[\"127.0.0.1:{}\"]", free_port()),
        "engine.workers=2".into(),
        "peer.revisit_secs=1".into(),
        "peer.quiet_timeout_ms=800".into(),
        "peer.connect_timeout_ms=800".into(),
        "peer.retry_backoff_secs=1".into(),
        "peer.retry_backoff_max_secs=2".into(),
        "peer.max_watched=0".into(),
        "tracker.announce_secs=3".into(),
        "tracker.scrape_secs=3".into(),
        "tracker.timeout_ms=2000".into(),
        "privacy.ip=\"full\"".into(),
        "stats.interval_secs=1".into(),
    ];
    set.extend(extra.iter().cloned());
    set.into_iter()
        .flat_map(|s| ["--set".to_string(), s])
        .collect()
}

fn sim(octet: u8) -> SimSwarm {
    SimSwarm::start(&SimOptions {
        torrents: 2,
        peers_per_torrent: 25,
        horizon_secs: 30.0,
        addr_octet: octet,
        tracker_interval_secs: 3,
        tracker_min_interval_secs: None,
        ..SimOptions::default()
    })
    .unwrap()
}

fn write_torrents(sim: &SimSwarm, dir: &Path) -> Vec<String> {
    sim.torrent_files
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let p = dir.join(format!("t{i}.torrent"));
            std::fs::write(&p, bytes).unwrap();
            p.display().to_string()
        })
        .collect()
}

fn query_i64(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0)
}

/// True when this process may make mount namespaces and mount a tmpfs in them.
fn mount_namespaces_work() -> bool {
    if !Path::new("/proc/self/ns/mnt").exists() {
        return false;
    }
    let dir = tempfile::tempdir().unwrap();
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs -o size=1m tmpfs \"$0\"")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `swarmscan run ARGS` in a new mount namespace with a tmpfs of `size_mb` MiB
/// mounted over `mount` (which must be empty). The scanner's stderr goes to `stderr_to` (a path
/// on the tmpfs or outside it); when it exits, everything on the tmpfs is copied to `keep`.
fn spawn_on_tmpfs(
    mount: &Path,
    size_mb: u32,
    keep: &Path,
    stderr_to: &Path,
    args: &[String],
) -> ChildGuard {
    let script = format!(
        "mount -t tmpfs -o size={size_mb}m tmpfs \"$M\" || exit 97\n\
         \"$@\" 2>\"$ERR\"\n\
         rc=$?\n\
         cp -a \"$M\"/. \"$KEEP\"/ 2>/dev/null\n\
         exit $rc"
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(binary())
        .args(args)
        .env("M", mount)
        .env("KEEP", keep)
        .env("ERR", stderr_to)
        .env("SWARMSCAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    ChildGuard::spawn("swarmscan in a mount namespace", &mut cmd)
}

/// The tmpfs as the scanner sees it, from outside its namespace.
fn inside(pid: u32, mount: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{}", mount.display()))
}

/// Writes `path` until the file system is full; returns the bytes written.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
    // Whatever a small write can still take, too.
    while f.write(&[0u8; 512]).is_ok_and(|n| n > 0) {
        written += 512;
    }
    let _ = f.sync_all();
    written
}

fn wait_exit(child: &mut ChildGuard, limit: Duration) -> std::process::ExitStatus {
    child
        .wait_timeout(limit)
        .unwrap_or_else(|| panic!("swarmscan did not exit within {limit:?}"))
}

fn read_stdout(child: &mut ChildGuard) -> String {
    let mut out = String::new();
    if let Some(mut s) = child.child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
    }
    out
}

#[test]
fn a_disk_that_fills_mid_scan_and_is_freed_loses_no_outcome_and_counts_what_it_stored() {
    if !mount_namespaces_work() {
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace (needs root)");
        return;
    }
    let sim = sim(117);
    let dir = common::test_dir("writer-full-");
    let torrents = write_torrents(&sim, dir.path());
    let mount = dir.path().join("mnt");
    let keep = dir.path().join("keep");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    // Database and log on the tmpfs: the log fills up with it.
    let mut args = vec![
        "run".to_string(),
        "--json".into(),
        "--for".into(),
        "14s".into(),
    ];
    // A small spool and channel (64 records each): the full disk soon pauses probing.
    args.extend(scan_args(
        &mount.join("scan.sqlite"),
        &[
            "store.batch_rows=64".into(),
            "store.channel_capacity=64".into(),
        ],
    ));
    args.extend(torrents);
    let mut child = spawn_on_tmpfs(&mount, 16, &keep, &mount.join("log"), &args);
    let pid = child.child.id();

    std::thread::sleep(Duration::from_secs(4));
    let filler = inside(pid, &mount).join("fill");
    let filled = fill(&filler);
    assert!(filled > 0, "could not fill the tmpfs");
    let full_at = Instant::now();
    std::thread::sleep(Duration::from_secs(5));
    // (Fails when the scanner, and with it the mount namespace, is gone.)
    let freed = std::fs::remove_file(&filler);
    eprintln!(
        "disk full for {:.1} s ({} MiB filler)",
        full_at.elapsed().as_secs_f64(),
        filled >> 20
    );

    let status = wait_exit(&mut child, Duration::from_secs(40));
    let stdout = read_stdout(&mut child);
    let log = std::fs::read_to_string(keep.join("log")).unwrap_or_default();
    assert!(
        freed.is_ok(),
        "the scanner died while the disk was full (exit {:?}): {freed:?}\n{log}",
        status.code()
    );
    assert_eq!(
        status.code(),
        Some(0),
        "the scan survives a full disk that is freed (a log write must not panic)\n{log}"
    );
    assert!(
        log.contains("writable again"),
        "the writer saw commits refused and then go through:\n{log}"
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary JSON: {e}: {stdout:?}\n{log}"));
    let conn = rusqlite::Connection::open(keep.join("scan.sqlite")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let probes = summary["probes"].as_i64().unwrap();
    let probes_ok = summary["probes_ok"].as_i64().unwrap();
    let committed = summary["records_committed"].as_i64().unwrap();
    let stored = query_i64(&conn, "SELECT sum(count) FROM outcome_counts");
    let stored_ok = query_i64(
        &conn,
        "SELECT sum(count) FROM outcome_counts WHERE class = 'success'",
    );
    let run_records = query_i64(&conn, "SELECT sum(records) FROM runs");
    let torrents = query_i64(&conn, "SELECT count(*) FROM torrents");
    let peers = query_i64(&conn, "SELECT count(*) FROM peers");
    let contacts = query_i64(&conn, "SELECT sum(attempts) FROM peers");
    eprintln!(
        "probes {probes} (ok {probes_ok}), outcomes stored {stored} (ok {stored_ok}), \
         records committed {committed}, runs.records {run_records}, torrents {torrents}, peers {peers}"
    );
    assert!(probes > 100, "the scan probed: {summary}");
    assert_eq!(stored, probes, "every probe's outcome is in the database");
    assert_eq!(stored_ok, probes_ok, "successes stored = probes_ok");
    assert_eq!(contacts, probes, "every outcome updated its peer row");
    assert_eq!(committed, run_records, "records_committed = runs.records");
    assert_eq!(torrents, 2);
    assert_eq!(peers, 50, "every peer the tracker listed is stored");
    // The statistics rows carry real values; while the disk was full, records waited with
    // the workers (back-pressure) and due peers queued up instead of being probed.
    let max_cpu: f64 = conn
        .query_row("SELECT max(cpu_percent) FROM stats", [], |r| r.get(0))
        .unwrap();
    let max_due = query_i64(&conn, "SELECT max(due_queue) FROM stats");
    let max_overflow = query_i64(&conn, "SELECT max(writer_overflow) FROM stats");
    let stats_rows = query_i64(&conn, "SELECT count(*) FROM stats");
    eprintln!(
        "stats: {stats_rows} rows, max cpu_percent {max_cpu:.1}, max due_queue {max_due}, \
         max writer_overflow {max_overflow}"
    );
    assert!(max_cpu > 0.0);
    assert!(max_due > 0, "peers waited while probing paused");
    assert!(max_overflow > 0, "records waited with their producers");
}

#[test]
fn a_disk_that_stays_full_stops_the_scan_with_a_clear_error_and_a_non_zero_exit() {
    if !mount_namespaces_work() {
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace (needs root)");
        return;
    }
    let sim = sim(118);
    let dir = common::test_dir("writer-stuck-");
    let torrents = write_torrents(&sim, dir.path());
    let mount = dir.path().join("mnt");
    let keep = dir.path().join("keep");
    std::fs::create_dir_all(&mount).unwrap();
    std::fs::create_dir_all(&keep).unwrap();
    // Database on the tmpfs, the log outside it (so the message can be read).
    let stderr = dir.path().join("stderr");
    let mut args = vec!["run".to_string(), "--for".into(), "60s".into()];
    args.extend(scan_args(
        &mount.join("scan.sqlite"),
        &["store.unwritable_secs=3".into()],
    ));
    args.extend(torrents);
    let mut child = spawn_on_tmpfs(&mount, 16, &keep, &stderr, &args);
    let pid = child.child.id();
    std::thread::sleep(Duration::from_secs(3));
    let filled = fill(&inside(pid, &mount).join("fill"));
    assert!(filled > 0);
    let full_at = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let took = full_at.elapsed();
    let log = std::fs::read_to_string(&stderr).unwrap_or_default();
    eprintln!(
        "exit {:?} {:.1} s after the disk filled",
        status.code(),
        took.as_secs_f64()
    );
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        took < Duration::from_secs(20),
        "stopped long before --for 60s: {took:?}"
    );
    let last = log.lines().last().unwrap_or_default();
    eprintln!("last line: {last}");
    assert!(
        last.starts_with("swarmscan: run: the database")
            && last.contains("stayed unwritable")
            && last.contains("store.unwritable_secs = 3")
            && last.contains("records not stored"),
        "a clear last word: {last:?}\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// Starts `swarmscan run --for 60s` on the simulation (octet `octet`) with its database at
/// `db`, lets it scan 4 s, does `mischief` to the database file and waits for the exit.
/// Returns the exit status, the seconds from the mischief to the exit, the log, the outcomes
/// stored just before the mischief, and the outcomes the run handed to its writer (one trace
/// line per finished probe).
fn scan_while_the_database_moves(
    octet: u8,
    dir: &Path,
    mischief: impl FnOnce(&Path),
) -> (std::process::ExitStatus, f64, String, i64, usize) {
    let sim = sim(octet);
    let torrents = write_torrents(&sim, dir);
    let db = dir.join("scan.sqlite");
    let log_path = dir.join("log");
    let mut args = vec!["run".to_string(), "--for".into(), "60s".into()];
    args.extend(scan_args(&db, &[]));
    args.extend(torrents);
    let mut cmd = Command::new(binary());
    cmd.args(&args)
        .env("SWARMSCAN_LOG", "warn,swarmscan::scan::driver=trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = ChildGuard::spawn("swarmscan", &mut cmd);
    std::thread::sleep(Duration::from_secs(4));
    let before = {
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        query_i64(&conn, "SELECT sum(count) FROM outcome_counts")
    };
    mischief(&db);
    let at = Instant::now();
    let status = wait_exit(&mut child, Duration::from_secs(40));
    let took = at.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let handed = log
        .lines()
        .filter(|l| l.contains("connection ended"))
        .count();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("connection ended"))
        .collect();
    eprintln!(
        "exit {:?} {took:.1} s after the mischief; {before} outcomes stored before it, \
         {handed} probes finished in all; log:\n{}",
        status.code(),
        warnings.join("\n")
    );
    (status, took, warnings.join("\n"), before, handed)
}

fn integrity_and_outcomes(path: &Path) -> i64 {
    let conn = rusqlite::Connection::open(path).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    assert_eq!(query_i64(&conn, "SELECT count(*) FROM torrents"), 2);
    query_i64(&conn, "SELECT sum(count) FROM outcome_counts")
}

#[test]
fn a_database_removed_mid_scan_stops_it_and_is_restored_with_every_outcome() {
    let dir = common::test_dir("writer-removed-");
    let (status, took, log, before, handed) =
        scan_while_the_database_moves(121, dir.path(), |db| {
            std::fs::remove_file(db).unwrap();
        });
    let db = dir.path().join("scan.sqlite");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(took < 20.0, "stopped long before --for 60s: {took:.1} s");
    let last = log.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!(
            "swarmscan: run: the database {0} was removed while it was open; everything this \
             database held is restored at {0}; 0 records not stored",
            db.display()
        ),
        "a clear last word\n{log}"
    );
    // Back at its path, alone: the removed file's log and shared memory are not left
    // beside it (the next opener would take them for the restored file's own).
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scan.sqlite"))
        .collect();
    names.sort();
    assert_eq!(names, ["scan.sqlite"], "{log}");
    // With what was written into the removed file too.
    let stored = integrity_and_outcomes(&db);
    eprintln!("outcomes stored: {stored}");
    assert!(before > 0, "the scan stored outcomes before the removal");
    assert!(
        stored > before,
        "outcomes stored after the removal are kept: {stored} vs {before}"
    );
    assert!(
        stored as usize <= handed,
        "{stored} stored, {handed} probed"
    );
    assert!(!log.contains("panicked"), "{log}");
    // A restart (systemd's Restart=on-failure) carries on from the restored file: its
    // torrents and peers come back without being given again.
    let mut args = vec![
        "run".to_string(),
        "--json".into(),
        "--for".into(),
        "3s".into(),
    ];
    args.extend(scan_args(&db, &[]));
    let out = Command::new(binary())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(summary["torrents"].as_i64(), Some(2), "{summary}");
    assert_eq!(summary["peers_known"].as_i64(), Some(50), "{summary}");
}

#[test]
fn a_database_replaced_mid_scan_is_not_written_and_the_scan_saves_its_own_next_to_it() {
    let dir = common::test_dir("writer-replaced-");
    let (status, took, log, before, handed) =
        scan_while_the_database_moves(122, dir.path(), |db| {
            // Someone else's SQLite file moved in over ours.
            let other = db.with_file_name("theirs.sqlite");
            let conn = rusqlite::Connection::open(&other).unwrap();
            conn.execute_batch(
                "CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('not a scan');",
            )
            .unwrap();
            drop(conn);
            std::fs::rename(&other, db).unwrap();
        });
    let db = dir.path().join("scan.sqlite");
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(took < 20.0, "stopped long before --for 60s: {took:.1} s");
    let last = log.lines().last().unwrap_or_default();
    let prefix = format!(
        "swarmscan: run: the database {0} was replaced by another file while it was open; \
         everything this database held is saved in {0}.saved-",
        db.display()
    );
    assert!(
        last.starts_with(&prefix)
            && last.ends_with(&format!(
                " (the file now at {} was not touched); 0 records not stored",
                db.display()
            )),
        "a clear last word: {last:?}\n{log}"
    );
    // The other file holds its own table and row, nothing of ours.
    let theirs =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let tables: Vec<String> = theirs
        .prepare("SELECT name FROM sqlite_master")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tables, ["notes"], "{log}");
    assert_eq!(query_i64(&theirs, "SELECT count(*) FROM notes"), 1);
    drop(theirs);
    // Ours is next to it, complete.
    let saved = last[prefix.len() - format!("{}.saved-", db.display()).len()..]
        .split(" (the file now at")
        .next()
        .unwrap()
        .to_string();
    let stored = integrity_and_outcomes(Path::new(&saved));
    eprintln!("{saved}: {stored} outcomes");
    assert!(
        stored > before,
        "outcomes stored after the replacement are kept: {stored} vs {before}"
    );
    assert!(
        stored as usize <= handed,
        "{stored} stored, {handed} probed"
    );
}

/// Seconds of the day of an RFC 3339 UTC timestamp (`2026-12-02T02:30:01.123456Z`).
fn second_of_day(ts: &str) -> Option<f64> {
    // (Builds that colour their log wrap the timestamp in ANSI escapes.)
    let time = ts.split('T').nth(1)?.split('Z').next()?;
    let mut parts = time.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn now_second_of_day() -> f64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

#[test]
fn kill_9_at_random_moments_keeps_the_database_intact_and_loses_at_most_one_batch() {
    const KILLS: usize = 10;
    // The writer's default batch: 5000 rows or 500 ms, whichever first.
    const BATCH_MS: f64 = 500.0;
    let mut sim = sim(119);
    let dir = common::test_dir("writer-kill-");
    let torrents = write_torrents(&sim, dir.path());
    let db = dir.path().join("scan.sqlite");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut outcomes_before = 0i64;
    let mut successes_before = 0i64;
    let mut losses = Vec::new();
    for kill in 0..=KILLS {
        let log_path = dir.path().join(format!("log{kill}"));
        let last = kill == KILLS;
        let mut args = vec![
            "run".to_string(),
            "--json".into(),
            "--for".into(),
            "4s".into(),
        ];
        args.extend(scan_args(&db, &[]));
        // The first run is given the torrents; every later one resumes them from the database.
        if kill == 0 {
            args.extend(torrents.iter().cloned());
        }
        let mut cmd = Command::new(binary());
        cmd.args(&args)
            // One trace line per finished probe, written as it happens: what was handed to
            // the writer.
            .env("SWARMSCAN_LOG", "warn,swarmscan::scan::driver=trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log_path).unwrap());
        if last {
            // No tracker for the last run: every peer it knows comes from the database.
            sim.tracker.stop();
        }
        let mut child = ChildGuard::spawn("swarmscan", &mut cmd);
        let mut summary = serde_json::Value::Null;
        let killed_at = if last {
            // The last run ends by itself: resume works, and the summary is right.
            let status = wait_exit(&mut child, Duration::from_secs(30));
            assert!(
                status.success(),
                "{}",
                std::fs::read_to_string(&log_path).unwrap()
            );
            summary = serde_json::from_str(read_stdout(&mut child).trim()).unwrap();
            None
        } else {
            std::thread::sleep(Duration::from_secs_f64(1.0 + 2.5 * next()));
            let at = now_second_of_day();
            // Safety: kill(2) on our own child, which has not been reaped yet.
            let killed = unsafe { libc::kill(child.child.id() as i32, libc::SIGKILL) };
            assert_eq!(killed, 0);
            let status = wait_exit(&mut child, Duration::from_secs(10));
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGKILL)
            );
            Some(at)
        };
        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok", "after kill {kill}");
        let outcomes = query_i64(&conn, "SELECT sum(count) FROM outcome_counts");
        let successes = query_i64(
            &conn,
            "SELECT sum(count) FROM outcome_counts WHERE class = 'success'",
        );
        let last_run_records =
            query_i64(&conn, "SELECT records FROM runs ORDER BY id DESC LIMIT 1");
        let runs = query_i64(&conn, "SELECT count(*) FROM runs");
        assert_eq!(runs, kill as i64 + 1, "each start adds its run row");
        assert_eq!(query_i64(&conn, "SELECT count(*) FROM torrents"), 2);
        drop(conn);
        let log = std::fs::read_to_string(&log_path).unwrap();
        let ended: Vec<f64> = log
            .lines()
            .filter(|l| l.contains("connection ended"))
            .filter_map(|l| second_of_day(l.split_whitespace().next()?))
            .collect();
        let stored = outcomes - outcomes_before;
        let stored_ok = successes - successes_before;
        outcomes_before = outcomes;
        successes_before = successes;
        match killed_at {
            Some(at) => {
                let handed = ended.len() as i64;
                let loss = handed - stored;
                // What may be lost: the records of the open batch, handed over at most
                // batch_ms before the kill, plus the time a commit takes (slack for a
                // loaded machine).
                let window = (BATCH_MS + 500.0) / 1000.0;
                let recent = ended.iter().filter(|&&t| t > at - window).count() as i64;
                eprintln!(
                    "kill {kill}: {handed} outcomes handed to the writer, {stored} stored, \
                     lost {loss} (handed over in the last {window:.1} s: {recent})"
                );
                assert!(
                    handed > 0,
                    "kill {kill}: the scan probed before the kill\n{log}"
                );
                assert!(loss >= 0, "kill {kill}: more stored than probed?");
                assert!(
                    loss <= recent,
                    "kill {kill}: lost {loss}, more than the last batch ({recent})"
                );
                losses.push(loss);
            }
            None => {
                assert!(
                    log.lines().all(|l| !l.contains("ERROR")),
                    "a clean resumed run:\n{log}"
                );
                assert!(stored > 0, "the resumed scan probes");
                eprintln!("resumed run: {summary}");
                assert_eq!(summary["probes"].as_i64(), Some(stored), "{summary}");
                assert_eq!(summary["probes_ok"].as_i64(), Some(stored_ok), "{summary}");
                assert_eq!(
                    summary["records_committed"].as_i64(),
                    Some(last_run_records),
                    "{summary}"
                );
                assert_eq!(
                    summary["peers_known"].as_i64(),
                    Some(50),
                    "peers resumed from the database count: {summary}"
                );
            }
        }
    }
    eprintln!(
        "loss per kill: {losses:?} (max {})",
        losses.iter().max().unwrap()
    );
}

#[test]
fn the_summary_counts_what_the_database_holds_for_a_torrent_known_only_by_magnet() {
    // The simulated peers state their progress but never send metadata: every answer is a
    // success whose piece count stays unknown.
    let sim = sim(120);
    let dir = common::test_dir("writer-magnet-");
    let db = dir.path().join("scan.sqlite");
    let hash = sim.metainfo[0].info_hashes.v1.unwrap().0;
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    let magnet = format!(
        "magnet:?xt=urn:btih:{hex}&tr={}",
        sim.tracker
            .http_url()
            .replace(':', "%3A")
            .replace('/', "%2F")
    );
    let mut args = vec![
        "run".to_string(),
        "--json".into(),
        "--for".into(),
        "4s".into(),
    ];
    args.extend(scan_args(&db, &[]));
    args.push(magnet);
    let out = Command::new(binary())
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let stored_ok = query_i64(
        &conn,
        "SELECT sum(count) FROM outcome_counts WHERE class = 'success'",
    );
    let stored = query_i64(&conn, "SELECT sum(count) FROM outcome_counts");
    eprintln!("{summary}; stored {stored} outcomes, {stored_ok} successes");
    assert!(stored_ok > 0, "the peers answered: {summary}");
    assert_eq!(summary["probes_ok"].as_i64(), Some(stored_ok), "{summary}");
    assert_eq!(summary["probes"].as_i64(), Some(stored), "{summary}");
    assert_eq!(summary["peers_known"].as_i64(), Some(25), "{summary}");
}

#[test]
fn a_log_that_cannot_be_written_is_dropped_and_counted_not_a_panic() {
    let dir = common::test_dir("writer-devfull-");
    let db = dir.path().join("scan.sqlite");
    let hex = "0123456789abcdef0123456789abcdef01234567";
    let mut args = vec![
        "run".to_string(),
        "--json".into(),
        "--for".into(),
        "1s".into(),
    ];
    args.extend(scan_args(&db, &[]));
    // No listener: a warning is logged at once.
    args.extend(["--set".into(), "net.listen=[]".into(), hex.into()]);
    let out = Command::new(binary())
        .args(&args)
        .stdin(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr on a full device");
    let summary: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert!(
        summary["log_writes_dropped"].as_u64().unwrap_or(0) >= 1,
        "{summary}"
    );
}

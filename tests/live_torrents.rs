//! A running scan changed from outside, the way a user does it: `swarmscan add` and
//! `swarmscan remove` on the database of a `swarmscan run` (the built binary, scanning the
//! built-in simulated swarm on loopback), SIGHUP with a changed configuration file, and a
//! second `run` on the same database.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::free_tcp_port;
use swarmscan::sim::{SimOptions, SimSwarm};

/// Kills the scan when dropped (a failing assertion must not leave it running).
struct Scan {
    child: Child,
    log: PathBuf,
}

impl Drop for Scan {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Scan {
    fn signal(&self, sig: i32) {
        // Safety: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, sig) }, 0);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (bounded) for a log line containing `text`.
    fn wait_log(&mut self, text: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains(text) {
                return true;
            }
            assert!(self.running(), "the scan ended:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// SIGINT and the exit status (bounded).
    fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGINT);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "the scan did not stop within 60 s of SIGINT:\n{}",
            self.log()
        );
    }
}

fn sim(octet: u8) -> SimSwarm {
    SimSwarm::start(&SimOptions {
        torrents: 2,
        peers_per_torrent: 20,
        horizon_secs: 40.0,
        addr_octet: octet,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap()
}

/// The `--set`s of every command of one test: the database and quick revisits.
fn sets(db: &Path) -> Vec<String> {
    vec![
        format!("database={:?}", db.display().to_string()),
        "engine.workers=2".into(),
        "peer.quiet_timeout_ms=800".into(),
        "store.batch_ms=200".into(),
        "stats.interval_secs=1".into(),
    ]
}

fn with_sets(cmd: &mut Command, sets: &[String]) {
    for s in sets {
        cmd.args(["--set", s]);
    }
}

/// `swarmscan run` in the background, its log in a file of `dir`.
fn spawn_run(dir: &Path, args: &[&str], sets: &[String]) -> Scan {
    let log = dir.join(format!("run-{}.log", free_tcp_port("127.0.0.1")));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    cmd.args(["run", "--for", "150s"]).args(args);
    with_sets(
        &mut cmd,
        &[format!(
            "net.listen=[\"127.0.0.1:{}\"]",
            free_tcp_port("127.0.0.1")
        )],
    );
    with_sets(&mut cmd, sets);
    cmd.env("SWARMSCAN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    Scan {
        child: cmd.spawn().unwrap(),
        log,
    }
}

/// Runs a swarmscan command to its end (bounded by the command's own work: no network).
fn swarmscan(args: &[&str], sets: &[String]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    cmd.args(args);
    with_sets(&mut cmd, sets);
    cmd.env("SWARMSCAN_LOG", "info").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn query(db: &Path, sql: &str, p: impl rusqlite::Params) -> i64 {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.query_row(sql, p, |r| r.get::<_, Option<i64>>(0))
        .unwrap()
        .unwrap_or(0)
}

fn torrent_id(db: &Path, name: &str) -> i64 {
    query(db, "SELECT id FROM torrents WHERE name = ?1", [name])
}

/// Probe attempts of a torrent's peers so far.
fn attempts(db: &Path, torrent: i64) -> i64 {
    query(
        db,
        "SELECT sum(attempts) FROM peers WHERE torrent_id = ?1",
        [torrent],
    )
}

/// Waits (bounded) until `f` holds.
fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

#[test]
fn added_torrents_are_scanned_and_removed_ones_left_alone_without_a_restart() {
    let sim = sim(131);
    let dir = common::test_dir("live-torrents");
    let db = dir.path().join("scan.sqlite");
    let (a, b) = (dir.path().join("a.torrent"), dir.path().join("b.torrent"));
    std::fs::write(&a, &sim.torrent_files[0]).unwrap();
    std::fs::write(&b, &sim.torrent_files[1]).unwrap();
    let (name_a, name_b) = ("demo-torrent-1", "demo-torrent-2");
    let mut sets = sets(&db);
    sets.push("peer.revisit_secs=1".into());

    let mut scan = spawn_run(dir.path(), &[a.to_str().unwrap()], &sets);
    assert!(
        wait_until(Duration::from_secs(30), || db.exists()
            && query(&db, "SELECT count(*) FROM torrents", []) == 1
            && attempts(&db, torrent_id(&db, name_a)) > 0),
        "torrent A is probed:\n{}",
        scan.log()
    );
    let id_a = torrent_id(&db, name_a);

    // Add B: the running scan announces it and probes its peers, no restart.
    let added = swarmscan(&["add", b.to_str().unwrap()], &sets);
    assert!(added.status.success(), "{}", text(&added));
    let out = String::from_utf8_lossy(&added.stdout);
    assert!(
        out.contains("added ") && out.contains(name_b),
        "{}",
        text(&added)
    );
    assert!(
        out.contains(&format!("(pid {})", scan.child.id())),
        "add woke the running scan: {}",
        text(&added)
    );
    let id_b = torrent_id(&db, name_b);
    assert!(id_b > 0 && id_b != id_a);
    assert!(
        scan.wait_log(
            "scanning 1 torrent(s) added while running: demo-torrent-2",
            Duration::from_secs(10)
        ),
        "{}",
        scan.log()
    );
    assert!(
        wait_until(Duration::from_secs(60), || query(
            &db,
            "SELECT count(*) FROM peers WHERE torrent_id = ?1 AND contacts > 0",
            [id_b]
        ) >= 10
            && query(
                &db,
                "SELECT sum(confirmed) FROM peers WHERE torrent_id = ?1",
                [id_b]
            ) > 0),
        "B's peers are probed and its downloads confirmed in the same run:\n{}",
        scan.log()
    );
    assert!(
        query(
            &db,
            "SELECT count(*) FROM discovery_requests WHERE torrent_id = ?1 AND error IS NULL",
            [id_b]
        ) > 0,
        "B was announced"
    );

    // A name the database does not have: an error naming it, nothing marked.
    let unknown = swarmscan(&["remove", name_a, "no-such-torrent"], &sets);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("\"no-such-torrent\": no torrent of that name"),
        "{}",
        text(&unknown)
    );
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM torrents WHERE removed_at IS NOT NULL",
            []
        ),
        0
    );

    // Remove A by name: no more probes of A; B goes on.
    let removed = swarmscan(&["remove", name_a], &sets);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains(&format!("removed {}", hex_of(&sim, 0))),
        "{}",
        text(&removed)
    );
    let removed_at = common::now_ms();
    assert!(
        scan.wait_log(
            "removed: no more probes or announces",
            Duration::from_secs(5)
        ),
        "{}",
        scan.log()
    );
    // Probes in flight at the removal end within their timeouts (0.8 s quiet, a watch at
    // its next 1 s sample).
    std::thread::sleep(Duration::from_secs(3));
    let (a_then, b_then) = (attempts(&db, id_a), attempts(&db, id_b));
    let last_a = query(
        &db,
        "SELECT max(last_attempt_at) FROM peers WHERE torrent_id = ?1",
        [id_a],
    );
    std::thread::sleep(Duration::from_secs(6));
    assert!(scan.running(), "{}", scan.log());
    assert_eq!(
        attempts(&db, id_a),
        a_then,
        "no probe of A after its removal:\n{}",
        scan.log()
    );
    assert!(
        attempts(&db, id_b) > b_then,
        "B is still probed (the scan runs): {b_then}"
    );
    // The last attempt's time may be its end: a probe started just before the scan saw the
    // removal ends within the quiet timeout (0.8 s) plus its connect.
    assert!(
        last_a <= removed_at + 3_000,
        "A's last probe was {} ms after the removal",
        last_a - removed_at
    );
    assert!(
        query(
            &db,
            "SELECT count(*) FROM torrents WHERE id = ?1 AND removed_at BETWEEN ?2 AND ?3",
            [id_a, removed_at - 10_000, removed_at]
        ) == 1,
        "A is marked removed with its time"
    );
    // One `stopped` announce to each of A's two trackers (HTTP and UDP), asking for no peers
    // (a regular one may have started in the moment before the scan saw the removal), and
    // nothing after them.
    let marked = query(&db, "SELECT removed_at FROM torrents WHERE id = ?1", [id_a]);
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM discovery_requests WHERE torrent_id = ?1 AND at >= ?2 AND received = 0 AND error IS NULL",
            [id_a, marked]
        ),
        2,
        "one stopped announce per tracker"
    );
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM discovery_requests WHERE torrent_id = ?1 AND at > ?2",
            [id_a, marked + 1_500]
        ),
        0,
        "no announce of A after the stopped ones"
    );
    assert!(scan.stop().success(), "{}", scan.log());

    // The report still shows A, marked removed; a later run does not resume it.
    let report = swarmscan(&["report"], &sets);
    assert!(report.status.success(), "{}", text(&report));
    let out = String::from_utf8_lossy(&report.stdout).to_string();
    assert!(
        out.lines()
            .any(|l| l.contains(name_a) && l.contains("(removed 20")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains(name_b) && !l.contains("(removed")),
        "{out}"
    );
    let mut later = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    later.args(["run", "--for", "2s", "--json"]);
    with_sets(
        &mut later,
        &[format!(
            "net.listen=[\"127.0.0.1:{}\"]",
            free_tcp_port("127.0.0.1")
        )],
    );
    with_sets(&mut later, &sets);
    let later = later.output().unwrap();
    assert!(later.status.success(), "{}", text(&later));
    let summary: serde_json::Value = serde_json::from_slice(&later.stdout).unwrap();
    assert_eq!(summary["torrents"], 1, "only B: {}", text(&later));
    assert_eq!(attempts(&db, id_a), a_then, "A stayed removed");
    assert!(sim.ended_thread().is_none());
}

fn hex_of(sim: &SimSwarm, i: usize) -> String {
    sim.metainfo[i]
        .info_hashes
        .v1
        .unwrap()
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn sighup_applies_live_keys_names_restart_ones_and_survives_a_bad_file() {
    let sim = sim(132);
    let dir = common::test_dir("live-reload");
    let db = dir.path().join("scan.sqlite");
    let t = dir.path().join("a.torrent");
    std::fs::write(&t, &sim.torrent_files[0]).unwrap();
    let conf = dir.path().join("swarmscan.toml");
    std::fs::write(&conf, "[peer]\nrevisit_secs = 1\n").unwrap();
    let sets = sets(&db);

    let mut scan = spawn_run(
        dir.path(),
        &["--config", conf.to_str().unwrap(), t.to_str().unwrap()],
        &sets,
    );
    let pid_file = dir.path().join("scan.sqlite.pid");
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(
            &pid_file
        )
        .is_ok_and(|p| p == format!("{}\nrun\n", scan.child.id()))
            && db.exists()
            && attempts(&db, torrent_id(&db, "demo-torrent-1")) > 0),
        "the scan runs and names itself in the pid file:\n{}",
        scan.log()
    );

    // A second scan of the same database: refused before it touches anything.
    let second = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
        cmd.args(["run", "--for", "5s", t.to_str().unwrap()]);
        with_sets(&mut cmd, &sets);
        cmd.output().unwrap()
    };
    assert_eq!(second.status.code(), Some(2), "{}", text(&second));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("in use by a running `swarmscan run`")
            && err.contains(&format!("pid {}", scan.child.id()))
            && err.contains("scan.sqlite.pid"),
        "{}",
        text(&second)
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\nrun\n", scan.child.id()),
        "the lock file still names the first scan"
    );
    assert!(scan.running());

    // A live key: applied.
    std::fs::write(&conf, "[peer]\nrevisit_secs = 4\n").unwrap();
    scan.signal(libc::SIGHUP);
    assert!(
        scan.wait_log(
            "SIGHUP: configuration reloaded, applied: peer.revisit_secs",
            Duration::from_secs(10)
        ),
        "{}",
        scan.log()
    );

    // A key read only at start: named, not applied.
    std::fs::write(
        &conf,
        "[peer]\nrevisit_secs = 4\nmax_in_flight = 64\n[tracker]\nscrape_secs = 30\n",
    )
    .unwrap();
    scan.signal(libc::SIGHUP);
    assert!(
        scan.wait_log(
            "restart needed): peer.max_in_flight",
            Duration::from_secs(10)
        ),
        "{}",
        scan.log()
    );
    assert!(
        scan.log()
            .contains("SIGHUP: configuration reloaded, applied: tracker.scrape_secs"),
        "{}",
        scan.log()
    );

    // A bad file: the key named, the scan goes on with what it had.
    std::fs::write(&conf, "[peer]\nrevisit_secs = \"soon\"\n").unwrap();
    scan.signal(libc::SIGHUP);
    assert!(
        scan.wait_log(
            "SIGHUP: configuration not reloaded",
            Duration::from_secs(10)
        ),
        "{}",
        scan.log()
    );
    let line = scan
        .log()
        .lines()
        .find(|l| l.contains("configuration not reloaded"))
        .unwrap()
        .to_string();
    assert!(line.contains("peer.revisit_secs"), "{line}");
    let id = torrent_id(&db, "demo-torrent-1");
    let before = attempts(&db, id);
    assert!(
        wait_until(Duration::from_secs(20), || attempts(&db, id) > before),
        "the scan keeps probing after a bad reload:\n{}",
        scan.log()
    );

    // Removed by its magnet link, then added back: probed again in the same run.
    let magnet = format!("magnet:?xt=urn:btih:{}", hex_of(&sim, 0));
    let removed = swarmscan(&["remove", &magnet], &sets);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(
        scan.wait_log(
            "removed: no more probes or announces",
            Duration::from_secs(5)
        ),
        "{}",
        scan.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    let parked = attempts(&db, id);
    let added = swarmscan(&["add", t.to_str().unwrap()], &sets);
    assert!(added.status.success(), "{}", text(&added));
    assert!(
        scan.wait_log("added back to the scan", Duration::from_secs(5)),
        "{}",
        scan.log()
    );
    assert!(
        wait_until(Duration::from_secs(20), || attempts(&db, id) > parked),
        "probed again once added back:\n{}",
        scan.log()
    );
    assert_eq!(
        query(
            &db,
            "SELECT count(*) FROM torrents WHERE removed_at IS NOT NULL",
            []
        ),
        0
    );
    assert!(scan.stop().success(), "{}", scan.log());
    assert!(!pid_file.exists(), "the lock file goes with the scan");
}

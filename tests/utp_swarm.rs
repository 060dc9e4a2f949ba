//! Peers that speak uTP only (issue 10): libtorrent leechers with TCP disabled both ways
//! (`enable_incoming_tcp` and `enable_outgoing_tcp` false), half of them with encryption
//! forced, every second one of each kind quitting the moment it finishes, and swarmscan on its
//! defaults (database, listen addresses, revisit and announce intervals only).
//!
//! * Tracker: npm `bittorrent-tracker` 11 as in tests/swarm_defaults.rs (UDP on 127.0.0.1,
//!   HTTP on [::1]).
//! * Clients: libtorrent 2.1.1 through tests/py/swarm_kinds.py
//!   `--kinds utp,utpenc,utpin,utpinenc`: a seeder (TCP and uTP) and eight leechers on their
//!   own 127.0.0.x addresses, 8 s apart, download-rate limited to about half a minute each.
//!   `utp*` leechers dial out over uTP (to swarmscan too, which then watches them on their
//!   connection); `utpin*` ones dial nobody (outgoing uTP off as well), so swarmscan reaches
//!   them only by its own uTP probes. The clients report when they crossed the threshold and
//!   finished: the ground truth.
//! * swarmscan: `swarmscan run --set database=… --set net.listen=[127.0.0.1:P, [::1]:P]
//!   --set peer.revisit_secs=5 --set tracker.announce_secs=10
//!   --set tracker.respect_interval=false --for 100s TORRENT`. Its default `net.utp =
//!   "fallback"` dials TCP first; a leecher accepts the TCP connection and closes it at once
//!   (that is what libtorrent does with incoming TCP off), on plaintext and MSE alike, so
//!   swarmscan turns to uTP; the leechers also dial swarmscan over uTP themselves.
//!
//! * Path outages: when `utp1` and `utpin1` (both quit on finishing) have 24 of their 128
//!   pieces, every UDP datagram between each and swarmscan's UDP ports is dropped for
//!   [`OUTAGE`] (iptables, deleted on every exit path). libtorrent times its side of the uTP
//!   connection out after three unanswered sends (about 3.5 s) and then ignores the
//!   connection's packets without a RESET; swarmscan has to notice on its own (its liveness
//!   keep-alive goes unanswered) and visit the leecher again before it finishes and quits.
//!   `utp1` dialled swarmscan (watched on its incoming connection), `utpin1` was reached by
//!   swarmscan's own probe (watched on that one).
//!
//! Asserted: every leecher that finished is confirmed and its row's transport includes `utp`
//! (for `utpin*` leechers never `incoming`: swarmscan's outgoing uTP probes saw them); no other
//! peer is confirmed (the seeder never); the report's transport table names uTP. The
//! test prints one line per client on success and failure alike.
//!
//! Every child process is killed when the test ends, on every path; every wait has a hard
//! bound. About two minutes. SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs and the database.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use swarmscan::config::IpMode;
use swarmscan::store::anon::Anonymizer;

mod common;
use common::process::{read_to_string_lossy, wait_collecting, ChildGuard, StdoutLines};
use common::{free_port_on_all, now_ms, python_with_libtorrent, test_dir, IptablesGuard};

/// Leechers (kinds utp, utpenc, utpin and utpinenc in turn: two of each).
const LEECHERS: usize = 8;
/// How long swarmscan scans. The last leecher starts 58 s after "go" and needs about 30 s.
const SCAN_SECS: u64 = 110;
/// How long the path between an outage's leecher and swarmscan is down.
const OUTAGE: Duration = Duration::from_secs(6);
/// Leechers whose path to swarmscan goes down, and at how many pieces.
const OUTAGE_LEECHERS: [&str; 2] = ["utp1", "utpin1"];
const OUTAGE_AT_PIECES: u64 = 24;
/// swarmscan's UDP ports an outage cuts: one per worker from the listen port (more than any
/// test machine's cores).
const OUTAGE_WORKER_PORTS: u16 = 64;

/// A path outage between one leecher and swarmscan (see the module docs).
struct Outage {
    name: &'static str,
    ip: IpAddr,
    /// swarmscan's UDP ports (first, last).
    ports: (u16, u16),
    started: Option<(Instant, i64)>,
    ended_ms: Option<i64>,
    rules: Option<IptablesGuard>,
}

impl Outage {
    /// Starts or ends the outage as the leecher's progress and the clock say.
    fn step(&mut self, truth: &Truth) {
        let pieces = truth.last_pieces.get(self.name).copied().unwrap_or(0);
        match (&self.started, &self.rules) {
            (None, _) if pieces >= OUTAGE_AT_PIECES => {
                let mut rules = IptablesGuard::new();
                rules.drop_udp_between(self.ip, "127.0.0.1".parse().unwrap(), self.ports);
                self.rules = Some(rules);
                self.started = Some((Instant::now(), now_ms()));
            }
            (Some((at, _)), Some(_)) if at.elapsed() >= OUTAGE => {
                self.rules = None;
                self.ended_ms = Some(now_ms());
            }
            _ => {}
        }
    }
}

/// A finished leecher must have finished this long before the scan ended (else the swarm was
/// too slow on this machine for the test to say anything).
const FINISH_MARGIN_MS: i64 = 8_000;

fn tracker_package() -> PathBuf {
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

/// Starts the tracker on 127.0.0.1 (UDP) and ::1 (HTTP, UDP6), port `port`, and waits until
/// every socket listens.
fn start_tracker(dir: &Path, port: u16) -> ChildGuard {
    let log = dir.join("tracker.log");
    let mut tracker = ChildGuard::spawn(
        "bittorrent-tracker",
        Command::new("node")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/bittorrent_tracker.mjs"))
            .arg(tracker_package())
            .args([&port.to_string(), "::1", "127.0.0.1", "::1"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("tracker.err")).unwrap()),
    );
    let start = Instant::now();
    while !read_to_string_lossy(&log).contains(" listening") {
        if let Some(status) = tracker.wait_timeout(Duration::from_millis(100)) {
            panic!(
                "bittorrent-tracker exited ({status}): {}{}",
                read_to_string_lossy(&log),
                read_to_string_lossy(&dir.join("tracker.err"))
            );
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "bittorrent-tracker did not listen within 20 s: {}",
            read_to_string_lossy(&log)
        );
    }
    tracker
}

/// One client of the plan.
#[derive(Debug, Clone)]
struct Planned {
    name: String,
    kind: String,
    quits: bool,
    /// Every address it has (the seeder two).
    addrs: Vec<(IpAddr, u16)>,
}

/// What the clients said (times in Unix ms).
#[derive(Default)]
struct Truth {
    torrent: Option<Json>,
    plan: Vec<Planned>,
    planned: bool,
    started: BTreeMap<String, i64>,
    crossed: BTreeMap<String, i64>,
    finished: BTreeMap<String, i64>,
    quit: BTreeMap<String, i64>,
    last_pieces: BTreeMap<String, u64>,
    /// Connections with swarmscan that ended, as the client saw them: (at, swarmscan's
    /// address, libtorrent's message).
    swarmscan_conns: BTreeMap<String, Vec<(i64, String, String)>>,
    ended: bool,
}

impl Truth {
    fn take(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            return;
        };
        let name = v["name"].as_str().unwrap_or_default().to_string();
        let at = v["at"].as_i64().unwrap_or_default();
        match v["event"].as_str().unwrap_or_default() {
            "torrent" => self.torrent = Some(v),
            "plan" => {
                let addr = (
                    v["ip"].as_str().unwrap().parse().unwrap(),
                    v["port"].as_u64().unwrap() as u16,
                );
                match self.plan.iter_mut().find(|p| p.name == name) {
                    Some(p) => p.addrs.push(addr),
                    None => self.plan.push(Planned {
                        name,
                        kind: v["kind"].as_str().unwrap().to_string(),
                        quits: v["quits"].as_bool().unwrap(),
                        addrs: vec![addr],
                    }),
                }
            }
            "planned" => self.planned = true,
            "client" => {
                self.started.insert(name, v["started_at"].as_i64().unwrap());
            }
            "crossed" => {
                self.crossed.insert(name, at);
            }
            "finished" => {
                self.finished.insert(name, at);
            }
            "quit" => {
                self.quit.insert(name, at);
            }
            "progress" => {
                self.last_pieces
                    .insert(name, v["pieces"].as_u64().unwrap_or(0));
            }
            "swarmscan_conn" => self.swarmscan_conns.entry(name).or_default().push((
                at,
                v["peer"].as_str().unwrap_or_default().to_string(),
                v["what"].as_str().unwrap_or_default().to_string(),
            )),
            "end" => self.ended = true,
            _ => {}
        }
    }
}

/// Runs a read-only swarmscan command against the database and returns its stdout.
fn swarmscan_query(dir: &Path, db: &Path, args: &[&str]) -> String {
    let out_path = dir.join(format!("{}.out", args[0]));
    let err_path = dir.join(format!("{}.err", args[0]));
    let mut cmd = ChildGuard::spawn(
        "swarmscan (read-only command)",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(args)
            .arg("--set")
            .arg(format!("database={}", db.display()))
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

/// A database value as text.
fn sql_text(v: rusqlite::types::ValueRef) -> String {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => "null".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
    }
}

/// For a failure report: the database's own row of a peer (every column), or why there is none.
fn db_row(db: &Path, shown_ip: &str, port: u16) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT * FROM peers WHERE ip = ?1 AND port = ?2")
        .unwrap();
    let names: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
    let mut rows = stmt.query(rusqlite::params![shown_ip, port]).unwrap();
    let mut out = Vec::new();
    while let Some(row) = rows.next().unwrap() {
        let cols: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n}={}", sql_text(row.get_ref(i).unwrap())))
            .collect();
        out.push(cols.join(" "));
    }
    if out.is_empty() {
        "no row in peers".into()
    } else {
        out.join("\n")
    }
}

/// For a failure report: swarmscan's discovery requests per tracker (from the database).
fn discovery_summary(db: &Path, t0: i64) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT coalesce(tracker, 'source ' || source), count(*), min(at), max(at), sum(received), \
             sum(new), group_concat(DISTINCT error) FROM discovery_requests GROUP BY 1",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "  {}: {} requests from {} to {}, {} addresses received ({} new), errors {:?}",
                sql_text(r.get_ref(0)?),
                r.get::<_, i64>(1)?,
                rel(r.get(2)?, t0),
                rel(r.get(3)?, t0),
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<String>>(6)?
            ))
        })
        .unwrap();
    rows.map(|r| r.unwrap()).collect::<Vec<_>>().join("\n")
}

/// Whether a `swarmscan peers --json` row has a successful contact over uTP.
fn over_utp(row: &Json) -> bool {
    row["transport"]
        .as_str()
        .is_some_and(|t| t.split('+').any(|x| x == "utp"))
}

/// Whether a row has a successful contact on a connection the peer opened.
fn incoming(row: &Json) -> bool {
    row["transport"]
        .as_str()
        .is_some_and(|t| t.split('+').any(|x| x == "incoming"))
}

/// Seconds since `t0`, for the table.
fn rel(t: Option<i64>, t0: i64) -> String {
    t.map_or("-".into(), |t| format!("{:+.1}s", (t - t0) as f64 / 1000.0))
}

#[test]
fn confirms_exactly_the_finished_leechers_that_speak_utp_only() {
    let started = Instant::now();
    let py = python_with_libtorrent();
    let tmp = test_dir("swarmscan-utp-swarm-");
    let dir = tmp.path();
    eprintln!("utp swarm: working in {}", dir.display());

    let tracker_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let _tracker = start_tracker(dir, tracker_port);

    // The swarm: plan first (torrent, addresses), clients only after "go".
    let driver_log = dir.join("driver.log");
    let workdir = dir.join("swarm");
    std::fs::create_dir_all(&workdir).unwrap();
    let mut driver = ChildGuard::spawn(
        "swarm_kinds.py",
        Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/swarm_kinds.py"))
            .args([
                "--tracker",
                &format!("udp://127.0.0.1:{tracker_port}/announce"),
                "--tracker",
                &format!("http://[::1]:{tracker_port}/announce"),
                "--leechers",
                &LEECHERS.to_string(),
                "--kinds",
                "utp,utpenc,utpin,utpinenc",
                "--max-secs",
                &(SCAN_SECS + 20).to_string(),
                "--workdir",
            ])
            .arg(&workdir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&driver_log).unwrap()),
    );
    // Its stdout (JSON lines, also kept in swarm.jsonl) is read by a thread.
    let lines = StdoutLines::of(&mut driver);
    let mut jsonl = std::fs::File::create(dir.join("swarm.jsonl")).unwrap();
    let mut truth = Truth::default();
    while !truth.planned {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => {
                let _ = writeln!(jsonl, "{line}");
                truth.take(&line)
            }
            Err(e) => panic!(
                "swarm_kinds.py made no plan within 30 s ({e}): {}",
                read_to_string_lossy(&driver_log)
            ),
        }
    }
    let torrent = truth
        .torrent
        .clone()
        .expect("torrent event before the plan");
    let torrent_path = torrent["path"].as_str().unwrap().to_string();
    let info_hash = torrent["info_hash"].as_str().unwrap().to_string();
    assert_eq!(
        truth.plan.iter().filter(|p| p.kind != "seeder").count(),
        LEECHERS
    );
    let mut outages: Vec<Outage> = OUTAGE_LEECHERS
        .iter()
        .map(|&name| Outage {
            name,
            ip: truth
                .plan
                .iter()
                .find(|p| p.name == name)
                .unwrap_or_else(|| panic!("{name} in the plan"))
                .addrs[0]
                .0,
            ports: (0, 0),
            started: None,
            ended_ms: None,
            rules: None,
        })
        .collect();

    // swarmscan as a user runs it.
    let listen_port = free_port_on_all(&["127.0.0.1", "::1"]);
    // Worker i's UDP socket is on listen_port + i: the outages cut those ports only (so that
    // another test's clients on the same 127.0.0.x addresses are not touched).
    for o in &mut outages {
        o.ports = (
            listen_port,
            listen_port.saturating_add(OUTAGE_WORKER_PORTS - 1),
        );
    }
    let db = dir.join("scan.sqlite");
    let scan_log = dir.join("swarmscan.log");
    let scan_args = vec![
        "run".to_string(),
        // The run summary as JSON on stdout (swarmscan.out), read at the end.
        "--json".into(),
        "--set".into(),
        format!("database={}", db.display()),
        "--set".into(),
        format!("net.listen=[\"127.0.0.1:{listen_port}\", \"[::1]:{listen_port}\"]"),
        "--set".into(),
        "peer.revisit_secs=5".into(),
        "--set".into(),
        "tracker.announce_secs=10".into(),
        "--set".into(),
        "tracker.respect_interval=false".into(),
        "--for".into(),
        format!("{SCAN_SECS}s"),
        torrent_path.clone(),
    ];
    eprintln!("utp swarm: swarmscan {}", scan_args.join(" "));
    let scan_started_ms = now_ms();
    let mut scan = ChildGuard::spawn(
        "swarmscan run",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(&scan_args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("swarmscan.out")).unwrap())
            .stderr(std::fs::File::create(&scan_log).unwrap()),
    );
    // Give it a moment to listen and announce, then start the swarm.
    std::thread::sleep(Duration::from_millis(500));
    {
        let stdin = driver.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    // Collect the ground truth while the scan runs.
    let status = wait_collecting(
        &mut scan,
        Duration::from_secs(SCAN_SECS + 30),
        &lines,
        |line| {
            let _ = writeln!(jsonl, "{line}");
            truth.take(line);
            for outage in &mut outages {
                outage.step(&truth);
            }
        },
        || {},
        &scan_log,
    );
    let scan_ended_ms = now_ms();
    // Every path is up again, whatever happened.
    for outage in &mut outages {
        outage.rules = None;
    }
    assert!(
        status.success(),
        "swarmscan run failed ({status}): {}",
        read_to_string_lossy(&scan_log)
    );

    // Stop the swarm (closing its stdin ends the driver and, through theirs, its clients).
    drop(driver.child.stdin.take());
    let driver_status = driver.wait_timeout(Duration::from_secs(20));
    if driver_status.is_none() {
        // Hung: kill it, so that its stdout ends and the reader thread with it.
        let _ = driver.child.kill();
    }
    for line in lines.finish() {
        let _ = writeln!(jsonl, "{line}");
        truth.take(&line);
    }
    assert!(
        driver_status.is_some_and(|s| s.success()) && truth.ended,
        "swarm_kinds.py did not end cleanly ({driver_status:?}): {}",
        read_to_string_lossy(&driver_log)
    );

    // The swarm did what the test needs: every leecher finished, early enough to be seen.
    let leechers: Vec<&Planned> = truth.plan.iter().filter(|p| p.kind != "seeder").collect();
    for p in &leechers {
        let finished = truth.finished.get(&p.name).copied();
        assert!(
            finished.is_some_and(|t| t < scan_ended_ms - FINISH_MARGIN_MS)
                && truth.crossed.contains_key(&p.name),
            "{} did not finish {} s before the scan ended (finished {finished:?}, scan ended \
             {scan_ended_ms}, last pieces {:?}): the swarm is too slow on this machine\n{}",
            p.name,
            FINISH_MARGIN_MS / 1000,
            truth.last_pieces.get(&p.name),
            read_to_string_lossy(&driver_log)
        );
    }

    // The outages happened, and ended before their leecher crossed (else they tested nothing).
    for o in &outages {
        let crossed = truth.crossed.get(o.name).copied();
        assert!(
            o.started.is_some()
                && o.ended_ms
                    .zip(crossed)
                    .is_some_and(|(ended, crossed)| ended < crossed),
            "the outage of {} did not happen within its download (started {:?}, ended {:?},              crossed {crossed:?}, last pieces {:?})",
            o.name,
            o.started.map(|(_, ms)| ms),
            o.ended_ms,
            truth.last_pieces.get(o.name)
        );
    }

    // What swarmscan stored. Addresses are stored as keyed hashes (privacy.ip = "hmac", the
    // default), under the key swarmscan made next to the database.
    let peers: Vec<Json> = swarmscan_query(dir, &db, &["peers", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report: Json =
        serde_json::from_str(&swarmscan_query(dir, &db, &["report", "--json"])).unwrap();
    let mut key_path = db.clone().into_os_string();
    key_path.push(".key");
    let anon = Anonymizer::from_key_file(IpMode::Hmac, Path::new(&key_path)).unwrap();
    let row_of = |ip: IpAddr, port: u16| -> Option<&Json> {
        let shown = anon.anonymize(ip).shown;
        peers
            .iter()
            .find(|r| r["ip"] == shown.as_str() && r["port"] == port && r["info_hash"] == info_hash)
    };

    let mut failures = Vec::new();
    // The database rows of the peers a failure is about.
    let mut details = Vec::new();
    let mut lines = vec![format!(
        "  {:<6} {:<8} {:<22} {:<5} {:>8} {:>8} {:<9} {:>9} {:<9} {:>4}  sources",
        "kind",
        "client",
        "address",
        "quits",
        "crossed",
        "finished",
        "confirmed",
        "Δcrossing",
        "seen",
        "cont"
    )];
    // kind -> (finished, confirmed, seen -> count)
    let mut per_kind: BTreeMap<String, (usize, usize, BTreeMap<String, usize>)> = BTreeMap::new();
    let mut matched_rows: Vec<&Json> = Vec::new();
    for p in &truth.plan {
        for &(ip, port) in &p.addrs {
            let row = row_of(ip, port);
            if let Some(r) = row {
                matched_rows.push(r);
            }
            let confirmed = row.is_some_and(|r| r["confirmed"] == true);
            let crossed_at = row.and_then(|r| r["crossed_at"].as_i64());
            let seen = match row.map(|r| r.get("crossing_seen")) {
                None => "not found".to_string(),
                Some(None) => "n/a".to_string(),
                Some(Some(Json::Null)) => "-".to_string(),
                Some(Some(v)) => v.as_str().map_or_else(|| v.to_string(), str::to_string),
            };
            let truth_crossed = truth.crossed.get(&p.name).copied();
            let delta = crossed_at.zip(truth_crossed).map(|(a, b)| a - b);
            let addr = match ip {
                IpAddr::V4(v4) => format!("{v4}:{port}"),
                IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            };
            lines.push(format!(
                "  {:<6} {:<8} {:<22} {:<5} {:>8} {:>8} {:<9} {:>9} {:<9} {:>4}  {}",
                p.kind,
                p.name,
                addr,
                if p.quits { "yes" } else { "no" },
                rel(truth_crossed, scan_started_ms),
                rel(truth.finished.get(&p.name).copied(), scan_started_ms),
                if confirmed { "yes" } else { "no" },
                delta.map_or("-".into(), |d| format!("{d:+}ms")),
                seen,
                row.map_or("-".into(), |r| r["contacts"].to_string()),
                row.map_or("(not found)".into(), |r| format!(
                    "{} (transport {}, first {}, progress {} → {}, last error {})",
                    r["sources"].as_str().unwrap_or("?"),
                    r["transport"].as_str().unwrap_or("?"),
                    r["first_source"].as_str().unwrap_or("?"),
                    r["first_progress"],
                    r["last_progress"],
                    r["last_error"]
                )),
            ));
            let failed_before = failures.len();
            if p.kind == "seeder" {
                if confirmed {
                    failures.push(format!(
                        "the seeder ({addr}) is confirmed: {}",
                        row.unwrap()
                    ));
                }
            } else {
                let k = per_kind.entry(p.kind.clone()).or_default();
                k.0 += 1;
                if confirmed {
                    k.1 += 1;
                    *k.2.entry(seen.clone()).or_default() += 1;
                }
                let finished = rel(truth.finished.get(&p.name).copied(), scan_started_ms);
                let how = if p.quits {
                    "quit on finishing"
                } else {
                    "kept seeding"
                };
                match (row, confirmed, delta) {
                    (None, _, _) => failures.push(format!(
                        "{} ({}, {addr}, {how}) finished at {finished} but swarmscan never \
                         learnt of it",
                        p.name, p.kind
                    )),
                    (Some(r), false, _) => failures.push(format!(
                        "{} ({}, {addr}, {how}) finished at {finished} but is not confirmed: {r}",
                        p.name, p.kind
                    )),
                    (Some(r), true, None) => failures.push(format!(
                        "{} ({}, {addr}) is confirmed without crossed_at: {r}",
                        p.name, p.kind
                    )),
                    (Some(r), true, _) if !over_utp(r) => failures.push(format!(
                        "{} ({}, {addr}) is confirmed, but no successful contact was over uTP \
                         (a client with TCP off): {r}",
                        p.name, p.kind
                    )),
                    // It dials nobody: swarmscan reached it by its own uTP probes.
                    (Some(r), _, _) if p.kind.starts_with("utpin") && incoming(r) => {
                        failures.push(format!(
                            "{} ({}, {addr}) opens no connection, yet a contact is marked \
                             incoming: {r}",
                            p.name, p.kind
                        ))
                    }
                    _ => {}
                }
            }
            if failures.len() > failed_before {
                let conns: Vec<String> = truth
                    .swarmscan_conns
                    .get(&p.name)
                    .into_iter()
                    .flatten()
                    .map(|(at, peer, what)| {
                        format!("{} {peer}: {what}", rel(Some(*at), scan_started_ms))
                    })
                    .collect();
                details.push(format!(
                    "  {} {addr} (client crossed at {:?}, finished at {:?}): {}\n    its connections with swarmscan that ended, as it saw \
                     them:\n      {}",
                    p.name,
                    truth_crossed,
                    truth.finished.get(&p.name),
                    db_row(&db, &anon.anonymize(ip).shown, port),
                    conns.join("\n      ")
                ));
            }
        }
    }
    // Nothing else is confirmed: no address that is not one of the leechers (e.g. swarmscan's
    // own announced address, or a client under a wrong port).
    for r in peers.iter().filter(|r| r["confirmed"] == true) {
        if !matched_rows.iter().any(|m| std::ptr::eq(*m, r)) {
            // Clients with this address (every IPv6 client is ::1).
            let same_ip: Vec<&str> = truth
                .plan
                .iter()
                .filter(|p| {
                    p.addrs
                        .iter()
                        .any(|(ip, _)| anon.anonymize(*ip).shown == r["ip"].as_str().unwrap_or(""))
                })
                .map(|p| p.name.as_str())
                .collect();
            if same_ip.is_empty() {
                failures.push(format!(
                    "an address that is none of the clients' is confirmed: {r}"
                ));
            } else {
                failures.push(format!(
                    "a peer at the address of {same_ip:?} but none of their listen ports is \
                     confirmed: {r}"
                ));
            }
        }
    }
    // The run summary's uTP counters saw what the clients did: swarmscan's uTP connects came
    // up (the clients speak nothing else), and nothing the tracker sent looked forged.
    let out = read_to_string_lossy(&dir.join("swarmscan.out"));
    match serde_json::from_str::<Json>(out.trim()) {
        Ok(summary) => {
            let utp = &summary["utp"];
            let n = |v: &Json| v.as_u64().unwrap_or(0);
            if n(&utp["connected"]) == 0 || n(&utp["connected"]) > n(&utp["connects_started"]) {
                failures.push(format!(
                    "run summary: uTP connects started/connected do not add up: {utp}"
                ));
            }
            if n(&summary["udp_datagrams"]["utp"]) == 0 {
                failures.push(format!(
                    "run summary: no uTP datagram received: {}",
                    summary["udp_datagrams"]
                ));
            }
            if n(&summary["udp_trackers"]["replies_forged"]) != 0 {
                failures.push(format!(
                    "run summary: the tracker's replies taken for forgeries: {}",
                    summary["udp_trackers"]
                ));
            }
        }
        Err(e) => failures.push(format!("run --json printed no summary ({e}): {out}")),
    }
    // The report's transport table counts the uTP peers.
    let utp_in_report: i64 = report["transports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["transport"]
                .as_str()
                .is_some_and(|n| n.split('+').any(|x| x == "utp"))
        })
        .map(|t| t["confirmed"].as_i64().unwrap_or(0))
        .sum();
    if utp_in_report != leechers.len() as i64 {
        failures.push(format!(
            "report: {utp_in_report} confirmed peers with a uTP contact in the transport table \
             (expected {}): {}",
            leechers.len(),
            report["transports"]
        ));
    }
    let expected = leechers.len() as i64;
    let confirmed_rows = peers.iter().filter(|r| r["confirmed"] == true).count() as i64;
    if report["total"]["confirmed"].as_i64() != Some(confirmed_rows) {
        failures.push(format!(
            "report: total confirmed {} but {confirmed_rows} confirmed rows",
            report["total"]["confirmed"]
        ));
    }
    if report["total"]["confirmed"].as_i64() != Some(expected) {
        failures.push(format!(
            "report: total confirmed {} (expected {expected})",
            report["total"]["confirmed"]
        ));
    }

    let crossings_seen = report["torrents"]
        .as_array()
        .and_then(|t| t.first())
        .and_then(|t| t.get("crossings_seen"))
        .map_or("n/a".to_string(), |v| v.to_string());
    let mut summary = vec![format!(
        "utp swarm: {} leechers finished, {} peers known to swarmscan, report crossings_seen {crossings_seen}; \
         times relative to the start of the scan; test took {:.1} s",
        truth.finished.len(),
        peers.len(),
        started.elapsed().as_secs_f64()
    )];
    summary.extend(lines);
    for o in &outages {
        summary.push(format!(
            "  outage of {} ({}): {} to {}, crossed at {}",
            o.name,
            o.ip,
            rel(o.started.map(|(_, ms)| ms), scan_started_ms),
            rel(o.ended_ms, scan_started_ms),
            rel(truth.crossed.get(o.name).copied(), scan_started_ms)
        ));
    }
    summary.push("  per kind: confirmed/finished, crossings seen".into());
    for (kind, (finished, confirmed, seen)) in &per_kind {
        let seen: Vec<String> = seen.iter().map(|(s, n)| format!("{s} {n}")).collect();
        summary.push(format!(
            "    {kind:<6} {confirmed}/{finished}  {}",
            seen.join(", ")
        ));
    }
    // Rows of portless incoming connections (IPv6 libtorrent): which listen-port row counts
    // their download.
    for r in peers.iter().filter(|r| r["portless"] == true) {
        summary.push(format!(
            "  portless incoming row: port {} first {} last {} confirmed {} counted on port {}",
            r["port"],
            r["first_progress"],
            r["last_progress"],
            r["confirmed"],
            r["duplicate_of_port"]
        ));
    }
    let summary = summary.join("\n");
    if failures.is_empty() {
        eprintln!("{summary}");
    } else {
        let log = read_to_string_lossy(&scan_log);
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "{} failure(s):\n  {}\n{summary}\ndatabase rows of those peers (times in Unix ms; \
             the scan started at {scan_started_ms}):\n{}\nswarmscan's discovery requests:\n{}\n\
             last lines of the swarmscan log ({}):\n{}",
            failures.len(),
            failures.join("\n  "),
            details.join("\n"),
            discovery_summary(&db, scan_started_ms),
            scan_log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

//! swarmscan against a real swarm on loopback: a real UDP tracker (aquatic_udp 0.9.0 from
//! crates.io, path in env `SWARMSCAN_AQUATIC_UDP`; scripts/test installs it) and real clients
//! (libtorrent 2.1.1 through tests/py/real_swarm.py, interpreter in env `SWARMSCAN_PYTHON`):
//! one seeder, five rate-limited leechers that finish one after another and a slow leecher that
//! never finishes, each client in its own process on its own 127.0.0.x address.
//!
//! `swarmscan run` learns the peers from the tracker only and probes them repeatedly; the
//! clients' own reports (finish times, progress once a second) are the ground truth the
//! database is checked against:
//! * every client is found, at its address and port, through the UDP tracker;
//! * every leecher that finished while observed (seen below the threshold before it finished
//!   and contacted again after) is confirmed, and the observation window really covers the
//!   client's own crossing of the threshold;
//! * nothing else is confirmed: not the seeder, not the slow leecher, no other address;
//! * `crossed_at` lies between the last contact below and the first contact above.
//!
//! Every child process is killed when the test ends, on every path ([`ChildGuard`]); every
//! wait has a hard timeout. The whole test takes about 80 s. To look at what happened, run it
//! with SWARMSCAN_KEEP_TEST_DIR=1 (keeps the tracker, swarm and swarmscan logs and the
//! database) and REAL_SWARM_DEBUG=1 (the clients log every peer connection and why it ended).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

/// Leechers that finish during the scan (the driver adds one slow leecher that does not).
const LEECHERS: usize = 5;
/// How long swarmscan scans. The last leecher finishes about 57 s after the driver starts.
const SCAN_SECS: u64 = 68;
/// Completion threshold (swarmscan's default).
const THRESHOLD: f64 = 0.98;
/// Tolerance for comparing our contact times with the clients' once-a-second snapshots.
const SNAPSHOT_SLACK_MS: i64 = 1_500;

mod common;
use common::process::{
    free_tcp_port, free_udp_port, read_to_string_lossy, wait_collecting, ChildGuard,
};
use common::swarm::{
    read_until, spawn_driver, stop_driver, swarmscan_peers, swarmscan_report, DatabaseFrom,
};
use common::{now_ms, python_with_libtorrent as python, test_dir};

fn aquatic_udp() -> PathBuf {
    let path = std::env::var_os("SWARMSCAN_AQUATIC_UDP").map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        other => panic!(
            "this test needs the aquatic_udp tracker binary in env SWARMSCAN_AQUATIC_UDP (got {other:?}). \
             Run scripts/test (it runs `cargo install aquatic_udp --version 0.9.0 --root ~/.cache/swarmscan/tools`) \
             or set SWARMSCAN_AQUATIC_UDP=/path/to/aquatic_udp."
        ),
    }
}

/// Starts aquatic_udp on 127.0.0.1:`port` only and waits until it answers a BEP 15 connect.
fn start_tracker(dir: &Path, port: u16) -> ChildGuard {
    let config = dir.join("aquatic_udp.toml");
    // Only the keys that matter; everything else keeps aquatic's defaults. aquatic_udp hands
    // out whatever source address announced (no filter for loopback or private addresses).
    // Its announce interval stays at the default (15 min): swarmscan, with
    // respect_interval = false, announces every 5 s anyway and learns of new leechers quickly.
    std::fs::write(
        &config,
        format!(
            "socket_workers = 1\nlog_level = \"warn\"\n\
             [network]\naddress = \"127.0.0.1:{port}\"\nonly_ipv6 = false\nsocket_recv_buffer_size = 0\n\
             [statistics]\ninterval = 0\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("aquatic_udp.log")).unwrap();
    let mut tracker = ChildGuard::spawn(
        "aquatic_udp",
        Command::new(aquatic_udp())
            .arg("-c")
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut connect = Vec::new();
    connect.extend_from_slice(&0x0417_2710_1980u64.to_be_bytes());
    connect.extend_from_slice(&0u32.to_be_bytes());
    connect.extend_from_slice(&0x5157_4152u32.to_be_bytes());
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = tracker.child.try_wait() {
            panic!(
                "aquatic_udp exited at start ({status}): {}",
                read_to_string_lossy(&dir.join("aquatic_udp.log"))
            );
        }
        let _ = sock.send_to(&connect, ("127.0.0.1", port));
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 16 && buf[..4] == [0, 0, 0, 0] && buf[4..8] == connect[12..16] {
                return tracker;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "aquatic_udp on 127.0.0.1:{port} did not answer a connect request within 10 s"
        );
    }
}

/// What the clients said about themselves.
#[derive(Debug, Default)]
struct Truth {
    torrent: Option<Json>,
    /// ip -> ("client" line).
    clients: BTreeMap<String, Json>,
    /// ip -> finish time (ms).
    finished: BTreeMap<String, i64>,
    /// ip -> (time, progress) snapshots in time order.
    progress: BTreeMap<String, Vec<(i64, f64)>>,
    ended: bool,
}

impl Truth {
    fn take(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            return;
        };
        let ip = v["ip"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("torrent") => self.torrent = Some(v),
            Some("client") => {
                self.clients.insert(ip, v);
            }
            Some("finished") => {
                self.finished.insert(ip, v["at"].as_i64().unwrap());
            }
            Some("progress") => self
                .progress
                .entry(ip)
                .or_default()
                .push((v["at"].as_i64().unwrap(), v["progress"].as_f64().unwrap())),
            Some("end") => self.ended = true,
            _ => {}
        }
    }

    /// The client's own bounds on when it crossed the threshold: last snapshot below, first at
    /// or above.
    fn crossing_bounds(&self, ip: &str) -> (Option<i64>, Option<i64>) {
        let snaps = self.progress.get(ip).map(Vec::as_slice).unwrap_or(&[]);
        let last_below = snaps
            .iter()
            .filter(|(_, p)| *p < THRESHOLD)
            .map(|(t, _)| *t)
            .max();
        let first_above = snaps
            .iter()
            .filter(|(_, p)| *p >= THRESHOLD)
            .map(|(t, _)| *t)
            .min();
        (last_below, first_above)
    }

    fn role(&self, ip: &str) -> &str {
        self.clients[ip]["role"].as_str().unwrap()
    }
}

/// One peer row of the database, with the observation columns `peers --json` does not show.
#[derive(Debug)]
struct PeerObs {
    port: u16,
    confirmed: bool,
    contacts: i64,
    first_contact_at: Option<i64>,
    first_progress: Option<f64>,
    last_contact_at: Option<i64>,
    last_progress: Option<f64>,
    below_at: Option<i64>,
    above_at: Option<i64>,
    crossed_at: Option<i64>,
}

fn observations(db: &Path) -> BTreeMap<(String, u16), PeerObs> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT ip, port, confirmed, contacts, first_contact_at, first_progress, \
             last_contact_at, last_progress, below_at, above_at, crossed_at FROM peers",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                PeerObs {
                    port: r.get(1)?,
                    confirmed: r.get::<_, i64>(2)? != 0,
                    contacts: r.get(3)?,
                    first_contact_at: r.get(4)?,
                    first_progress: r.get(5)?,
                    last_contact_at: r.get(6)?,
                    last_progress: r.get(7)?,
                    below_at: r.get(8)?,
                    above_at: r.get(9)?,
                    crossed_at: r.get(10)?,
                },
            ))
        })
        .unwrap();
    rows.map(|r| {
        let (ip, o) = r.unwrap();
        ((ip, o.port), o)
    })
    .collect()
}

#[test]
fn confirms_exactly_the_finished_leechers_of_a_real_swarm() {
    let started = Instant::now();
    let py = python();
    // SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs and the database (also of a failed run).
    let tmp = test_dir("swarmscan-real-swarm-");
    eprintln!("real swarm: working in {}", tmp.path().display());
    let dir = tmp.path();

    let tracker_port = free_udp_port();
    let _tracker = start_tracker(dir, tracker_port);
    let tracker_url = format!("udp://127.0.0.1:{tracker_port}/announce");

    // The swarm. Its stdout (JSON lines) is read by a thread; stderr goes to a file because the
    // client processes inherit it.
    let driver_log = dir.join("driver.log");
    let workdir = dir.join("swarm");
    std::fs::create_dir_all(&workdir).unwrap();
    let base_port = free_tcp_port("127.0.0.2");
    let (mut driver, lines) = spawn_driver(&py, "real_swarm.py", &driver_log, |cmd| {
        cmd.args(["--tracker", &tracker_url, "--workdir"])
            .arg(&workdir)
            .args(["--leechers", &LEECHERS.to_string()])
            .args(["--base-port", &base_port.to_string()])
            .args(["--max-secs", &(SCAN_SECS + 30).to_string()])
    });
    let mut truth = Truth::default();
    read_until(
        &lines,
        Duration::from_secs(30),
        "real_swarm.py made no torrent",
        &driver_log,
        |line| {
            truth.take(line);
            truth.torrent.is_some()
        },
    );
    let torrent = truth.torrent.clone().unwrap();
    let torrent_path = torrent["path"].as_str().unwrap().to_string();

    // swarmscan as a user runs it: database, listen address, revisit and announce intervals
    // (the tracker's own 15-minute interval would hide late joiners), full addresses so the
    // test can match peers; everything else at its default.
    let listen_port = free_tcp_port("127.0.0.1");
    let db = dir.join("scan.sqlite");
    let config = dir.join("swarmscan.toml");
    std::fs::write(
        &config,
        format!(
            "database = {db:?}\n\
             [net]\nlisten = [\"127.0.0.1:{listen_port}\"]\n\
             [peer]\nrevisit_secs = 2.0\n\
             [tracker]\nannounce_secs = 5.0\nrespect_interval = false\n\
             [privacy]\nip = \"full\"\n"
        ),
    )
    .unwrap();
    let scan_log = dir.join("swarmscan.log");
    let scan_started_ms = now_ms();
    let mut scan = ChildGuard::spawn(
        "swarmscan run",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--for", &format!("{SCAN_SECS}s"), "--json"])
            .arg(&torrent_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&scan_log).unwrap()),
    );

    // Collect the ground truth while the scan runs.
    let status = wait_collecting(
        &mut scan,
        Duration::from_secs(SCAN_SECS + 30),
        &lines,
        |line| truth.take(line),
        || {},
        &scan_log,
    );
    let scan_ended_ms = now_ms();
    let mut summary = String::new();
    scan.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut summary)
        .unwrap();
    assert!(
        status.success(),
        "swarmscan run failed ({status}): {}",
        read_to_string_lossy(&scan_log)
    );
    let summary: Json = serde_json::from_str(summary.trim()).unwrap_or_else(|e| {
        panic!("swarmscan run --json printed no JSON summary ({e}): {summary:?}")
    });

    // Stop the swarm (closing its stdin ends the driver and, through theirs, its clients).
    let driver_status = stop_driver(&mut driver, lines, Duration::from_secs(20), |line| {
        truth.take(line)
    });
    assert!(
        driver_status.is_some_and(|s| s.success()) && truth.ended,
        "real_swarm.py did not end cleanly ({driver_status:?}): {}",
        read_to_string_lossy(&driver_log)
    );

    // Ground truth sanity: the swarm did what the test needs.
    assert_eq!(
        truth.clients.len(),
        LEECHERS + 2,
        "clients started: {:?}\n{}",
        truth.clients.keys(),
        read_to_string_lossy(&driver_log)
    );
    let finishers: BTreeSet<&String> = truth
        .clients
        .iter()
        .filter(|(_, c)| c["name"].as_str().unwrap().starts_with("leecher"))
        .map(|(ip, _)| ip)
        .collect();
    for ip in &finishers {
        let at = truth.finished.get(*ip).copied();
        assert!(
            at.is_some_and(|at| at < scan_ended_ms - 4_000),
            "leecher {ip} did not finish well before the scan ended (finished {at:?}, scan ended {scan_ended_ms}); \
             the swarm is too slow on this machine:\n{}",
            read_to_string_lossy(&driver_log)
        );
    }
    let mut finish_times: Vec<i64> = truth.finished.values().copied().collect();
    finish_times.sort();
    assert!(
        finish_times.windows(2).all(|w| w[1] - w[0] >= 2_000),
        "leechers should finish one after another: {finish_times:?}"
    );

    // What swarmscan stored.
    let peers = swarmscan_peers(dir, DatabaseFrom::Config(&config));
    let report = swarmscan_report(dir, DatabaseFrom::Config(&config));
    let obs = observations(&db);
    let info_hash = torrent["info_hash"].as_str().unwrap();

    let mut lines = Vec::new();
    let mut crossing_errors = Vec::new();
    for (ip, client) in &truth.clients {
        let name = client["name"].as_str().unwrap();
        let port = client["port"].as_u64().unwrap() as u16;
        let row = peers
            .iter()
            .find(|p| p["ip"] == ip.as_str() && p["port"] == port)
            .unwrap_or_else(|| {
                panic!("{name} ({ip}:{port}) is not among swarmscan's peers: {peers:#?}")
            });
        assert_eq!(row["info_hash"], info_hash);
        assert!(
            row["sources"]
                .as_str()
                .unwrap()
                .split('+')
                .any(|s| s == "tracker_udp"),
            "{name} was not learnt from the UDP tracker: {row}"
        );
        let o = &obs[&(ip.clone(), port)];
        assert!(o.contacts > 0, "{name} was never reached: {row}");
        let finished_at = truth.finished.get(ip).copied();
        let (truth_below, truth_above) = truth.crossing_bounds(ip);
        lines.push(format!(
            "  {name:<8} {ip}:{port}  contacts {:>3}  first {:>5.1}%  last {:>5.1}%  finished {}  confirmed {}  crossed_at {}",
            o.contacts,
            o.first_progress.unwrap_or(f64::NAN) * 100.0,
            o.last_progress.unwrap_or(f64::NAN) * 100.0,
            finished_at.map_or("-".into(), |t| format!("+{:.1}s", (t - scan_started_ms) as f64 / 1000.0)),
            o.confirmed,
            o.crossed_at.map_or("-".into(), |t| format!("+{:.1}s", (t - scan_started_ms) as f64 / 1000.0)),
        ));

        match (truth.role(ip), finished_at) {
            ("seeder", _) => {
                assert!(!o.confirmed, "the seeder was confirmed: {row}");
                assert_eq!(o.first_progress, Some(1.0), "seeder: {o:?}");
                assert_eq!(o.below_at, None, "seeder seen below the threshold: {o:?}");
            }
            (_, Some(finished_at)) => {
                // Observed: first seen below the threshold before it finished, and the scan
                // went on long enough afterwards for a revisit (swarmscan stops revisiting a
                // peer once it is confirmed, so its last contact may precede the finish).
                let observed = o.first_contact_at.is_some_and(|t| t < finished_at)
                    && o.first_progress.is_some_and(|p| p < THRESHOLD)
                    && finished_at + 6_000 < scan_ended_ms;
                // The schedule (revisits every 2 s, downloads of ~25 s) makes every finishing
                // leecher observable; if one was not, the scan missed it.
                assert!(
                    observed,
                    "{name} finished at {finished_at} but was not seen below the threshold before: {o:?}"
                );
                assert!(
                    o.confirmed,
                    "{name} finished while observed but is not confirmed: {o:?}"
                );
                let (below, above, crossed) = (
                    o.below_at.unwrap(),
                    o.above_at.unwrap(),
                    o.crossed_at.unwrap(),
                );
                assert!(
                    below <= crossed && crossed <= above,
                    "{name}: crossed_at {crossed} not within [{below}, {above}]"
                );
                assert!(
                    o.below_progress_ok(),
                    "{name}: progress values out of order: {o:?}"
                );
                // Our interval [below, above] must overlap the client's own crossing interval.
                let (tb, ta) = (truth_below.unwrap(), truth_above.unwrap());
                assert!(
                    below <= ta + SNAPSHOT_SLACK_MS && above >= tb - SNAPSHOT_SLACK_MS,
                    "{name}: swarmscan saw the crossing in [{below}, {above}], the client says it was in [{tb}, {ta}]"
                );
                crossing_errors.push((crossed - (tb + ta) / 2).abs());
            }
            (_, None) => {
                assert!(
                    !o.confirmed,
                    "{name} never finished (last progress {:?}) but is confirmed: {o:?}",
                    truth.progress.get(ip).and_then(|v| v.last())
                );
                let truth_last = truth.progress[ip].last().unwrap().1;
                assert!(truth_last < THRESHOLD, "slow leecher crossed: {truth_last}");
                // Never confirmed, so revisited until the scan ended.
                assert!(
                    o.last_contact_at
                        .is_some_and(|t| t > scan_ended_ms - 10_000),
                    "{name} was not revisited until the end of the scan: {o:?}"
                );
                let seen = o.last_progress.unwrap();
                assert!(
                    seen > 0.0 && seen <= truth_last + 0.01,
                    "{name}: swarmscan saw {seen}, the client was at {truth_last} at the end"
                );
            }
        }
    }

    // Nothing else is confirmed (e.g. swarmscan's own announced address).
    let confirmed: BTreeSet<String> = peers
        .iter()
        .filter(|p| p["confirmed"] == true)
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = finishers.iter().map(|s| s.to_string()).collect();
    assert_eq!(confirmed, expected, "confirmed peers vs finished leechers");
    assert_eq!(
        report["total"]["confirmed"].as_i64(),
        Some(LEECHERS as i64),
        "report: {report:#}"
    );
    assert_eq!(
        summary["confirmed_this_run"].as_u64(),
        Some(LEECHERS as u64)
    );

    let probes = summary["probes"].as_u64().unwrap();
    eprintln!(
        "real swarm: {} clients ({} leechers finished), swarmscan found {} peers, {} probes ({} answered), \
         {} confirmed, seeder and slow leecher not confirmed; |crossed_at - client crossing| max {} ms; \
         scrape `downloaded` {} (aquatic_udp does not count); test took {:.1} s",
        truth.clients.len(),
        truth.finished.len(),
        peers.len(),
        probes,
        summary["probes_ok"],
        confirmed.len(),
        crossing_errors.iter().max().copied().unwrap_or(0),
        report["total"]["reported_total"].as_i64().map_or("-".into(), |n| n.to_string()),
        started.elapsed().as_secs_f64()
    );
    for line in lines {
        eprintln!("{line}");
    }
    for event in report["outcomes"].as_array().into_iter().flatten() {
        let classes: Vec<String> = event["classes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| format!("{} {}", c["class"].as_str().unwrap_or("?"), c["count"]))
            .collect();
        eprintln!(
            "  outcomes {}: {}",
            event["event"].as_str().unwrap_or("?"),
            classes.join(", ")
        );
    }
}

impl PeerObs {
    /// First progress below the threshold and last at or above it, for a confirmed peer.
    fn below_progress_ok(&self) -> bool {
        self.first_progress.is_some_and(|p| p < THRESHOLD)
            && self.last_progress.is_some_and(|p| p >= THRESHOLD)
            && self.first_contact_at <= self.below_at
    }
}

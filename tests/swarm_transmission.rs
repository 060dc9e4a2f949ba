//! swarmscan against Transmission leechers on loopback (issue 6).
//!
//! The swarm (tests/py/swarm_transmission.py): a real tracker (npm `bittorrent-tracker` 11 on
//! its defaults, HTTP, through tests/js/bittorrent_tracker.mjs; package directory in env
//! `SWARMSCAN_BITTORRENT_TRACKER`), one libtorrent 2.1.1 seeder (interpreter in env
//! `SWARMSCAN_PYTHON`) and five Transmission 3.00 leechers, each a `transmission-daemon -f` of
//! its own on its own 127.0.0.x address, rate limited so that a download takes about half a
//! minute. Four of them finish during the scan, two of those quit the moment they finish (their
//! done script stops the daemon), two require encryption; the fifth is too slow to finish.
//! scripts/test installs all of it (`apt-get install transmission-daemon` as root).
//!
//! swarmscan runs as a user would, with only the settings a user must give:
//! `swarmscan run --set database=DB --set net.listen=[...] --set peer.revisit_secs=5
//! --set tracker.announce_secs=10 --set tracker.respect_interval=false --for 70s TORRENT`.
//! Ground truth is each daemon's own view (its verified pieces, polled ten times a second over
//! its RPC). The test checks:
//! * every Transmission leecher that finished is confirmed; no other peer is (not the seeder,
//!   not the slow leecher, no other address); the scan report agrees;
//! * the crossing time swarmscan stored is within 2 s of the client's own crossing;
//! * and prints per client: confirmed/finished, how the crossing was seen (`crossing_seen`:
//!   live, revisit or incoming — "n/a" while swarmscan does not report it), transport, client.
//!
//! The two quitters download slowly (about 90 s): a client that quits the moment it finishes
//! can be seen at or above the threshold only between its crossing and its quitting, and a
//! Transmission client shows fresh progress only on a new connection, which it answers 0.5 to
//! 2 s after we connect (its bandwidth pulses are 500 ms) and only one at a time per address.
//! With 150 pieces that window is 2 % of the download plus the time it takes to quit: 2 to 4 s
//! here, printed per quitter (a real download of 100 MB at 1 MB/s gives 2 s + quitting; most
//! are longer).
//! The fast leechers (about 20 s) show the same on clients that stay.
//!
//! Transmission 3.00 quirks that shape this test (see also the driver):
//! * It ignores every 127.0.0.0/8 address a tracker or PEX hands out (`isMartianAddr` in
//!   libtransmission/net.c), so on loopback it never dials anybody: the libtorrent seeder dials
//!   the leechers (learnt from the tracker), and swarmscan reaches them only by dialling them;
//!   an incoming crossing from Transmission cannot happen here.
//! * It batches `have` messages to a peer it exchanges no data with for up to 10 s
//!   (`LOW_PRIORITY_INTERVAL_SECS` in peer-msgs.c; requests and chokes flush at once), and drops
//!   the unsent batch when it quits. A watched connection therefore learns a crossing up to
//!   10 s late, and never learns the crossing of a leecher that quits right after finishing
//!   (the last 2 % of a 30 s download take about 0.6 s); only a new connection, which gets a
//!   fresh bitfield, sees it.
//! * Encryption: the default (`encryption` 1) prefers it but accepts a plaintext handshake;
//!   with 2 it hangs up on a plaintext handshake, and swarmscan's `fallback` must retry over
//!   MSE.
//! * It becomes interested in a new peer only at its next rechoke (every 10 s), so a download
//!   starts several seconds after the connection.
//! * `speed-limit-down` applies to loopback peers too (libtorrent's rate limits do not unless
//!   told), over TCP and uTP.
//! * Right after the handshake it sends its extension handshake, `have_none` (or a bitfield,
//!   or `have_all`) and a second extended message, and it unchokes a peer that never said it
//!   was interested a few seconds later (at a rechoke).
//! * A daemon that quits the moment it finishes (SIGTERM from its done script) closes its
//!   session within ~0.1 s and mostly gets neither its `completed` nor its `stopped` announce
//!   out: the tracker goes on handing out its address, and swarmscan on dialling it (refused).
//! * uTP: the libtorrent seeder dials the leechers over uTP first and Transmission accepts it on
//!   its own address; swarmscan dials over TCP (it has no uTP yet), which Transmission accepts
//!   as well.
//!
//! Every child process is killed on every path ([`ChildGuard`]; the driver starts each daemon
//! through `setpriv --pdeathsig KILL`); every wait is bounded; network traffic stays on
//! 127.0.0.0/8 and ::1. SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs (tracker, driver, each
//! daemon, swarmscan) and the database; REAL_SWARM_DEBUG=1 makes the driver log every daemon's
//! peer list once a second.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use swarmscan::config::IpMode;
use swarmscan::store::anon::Anonymizer;

mod common;
use common::process::{read_to_string_lossy, wait_collecting, ChildGuard};
use common::swarm::{
    read_until, secs_from, spawn_driver, start_bittorrent_tracker, stop_driver, swarmscan_peers,
    swarmscan_report, tail, DatabaseFrom,
};
use common::{free_port_on_all, now_ms, python_with_libtorrent, test_dir};

/// How long swarmscan scans. The last leecher to finish (a quitter) does so about 110 s after
/// the swarm starts.
const SCAN_SECS: u64 = 150;
/// The torrent: 150 pieces of 16 KiB, so that the threshold (98 %) falls on a piece boundary
/// and the window between crossing and completion is a full 2 % of the download.
const TORRENT_SIZE: u64 = 150 * 16 * 1024;
/// swarmscan's default completion threshold (the driver uses the same for its ground truth).
const THRESHOLD: f64 = 0.98;
/// How far swarmscan's crossing time may be from the client's own.
const CROSSING_TOLERANCE_MS: i64 = 2_000;
/// A finishing leecher must finish this long before the scan ends (else the swarm was too slow
/// on this machine and the test says so).
const FINISH_MARGIN_MS: i64 = 6_000;

/// One Transmission leecher of the swarm.
struct Leecher {
    name: &'static str,
    /// Seconds after the swarm starts.
    start_secs: f64,
    /// `speed-limit-down`, kB/s.
    rate_kbps: u32,
    /// Quits the moment it finishes.
    quits: bool,
    /// Transmission's `encryption`: 1 = prefer (the default), 2 = require.
    encryption: u8,
    /// Expected to finish during the scan.
    finishes: bool,
}

/// 2.4 MB: about 20 s of download at 120 kB/s, about 90 s at 30 kB/s (its limiter gives a
/// little less than it is set to), after a start-up of
/// ~10 s; one after another.
const LEECHERS: &[Leecher] = &[
    Leecher {
        name: "stays",
        start_secs: 2.0,
        rate_kbps: 120,
        quits: false,
        encryption: 1,
        finishes: true,
    },
    Leecher {
        name: "quits",
        start_secs: 4.0,
        rate_kbps: 30,
        quits: true,
        encryption: 1,
        finishes: true,
    },
    Leecher {
        name: "quits-enc",
        start_secs: 8.0,
        rate_kbps: 30,
        quits: true,
        encryption: 2,
        finishes: true,
    },
    Leecher {
        name: "stays-enc",
        start_secs: 12.0,
        rate_kbps: 120,
        quits: false,
        encryption: 2,
        finishes: true,
    },
    Leecher {
        name: "slow",
        start_secs: 2.0,
        rate_kbps: 5,
        quits: false,
        encryption: 1,
        finishes: false,
    },
];

fn require_tool(program: &str, arg: &str, what: &str) {
    let ok = Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "`{program} {arg}` failed: this test needs {what}. Run scripts/test (it installs it when \
         missing and running as root)."
    );
}

/// A base port such that base..base+n are free for TCP and UDP on every address in `ips`.
fn free_port_run(ips: &[&str], n: u16) -> u16 {
    // Below the kernel's ephemeral range (32768–60999 by default): the daemons bind these
    // seconds after they are picked, and a port in the ephemeral range can meanwhile become
    // the local port of any outgoing connection on the machine.
    let offset = (std::process::id() % 500) as u16 * 20;
    for attempt in 0..200u16 {
        let base = 20_000 + (offset + attempt * 37) % 12_000;
        let all_free = (0..n).all(|k| {
            ips.iter().all(|ip| {
                let ip: IpAddr = ip.parse().unwrap();
                std::net::TcpListener::bind((ip, base + k)).is_ok()
                    && std::net::UdpSocket::bind((ip, base + k)).is_ok()
            })
        });
        if all_free {
            return base;
        }
    }
    panic!("no run of {n} free ports on {ips:?}");
}

/// What the clients said about themselves (the driver's JSON lines).
#[derive(Debug, Default)]
struct Truth {
    torrent: Option<Json>,
    /// name -> "client" line.
    clients: BTreeMap<String, Json>,
    /// name -> (last poll below the threshold, first poll at or above).
    crossed: BTreeMap<String, (Option<i64>, i64)>,
    /// name -> finish time.
    finished: BTreeMap<String, i64>,
    /// name -> time the daemon was gone after its done script.
    quit: BTreeMap<String, i64>,
    /// name -> latest (time, progress).
    last: BTreeMap<String, (i64, f64)>,
    errors: Vec<String>,
    ended: bool,
}

impl Truth {
    fn take(&mut self, line: &str) {
        let Ok(v) = serde_json::from_str::<Json>(line) else {
            return;
        };
        let name = v["name"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("torrent") => self.torrent = Some(v),
            Some("client") => {
                self.clients.insert(name, v);
            }
            Some("crossed") => {
                self.crossed.insert(
                    name,
                    (v["below_at"].as_i64(), v["above_at"].as_i64().unwrap()),
                );
            }
            Some("finished") => {
                self.finished.insert(name, v["at"].as_i64().unwrap());
            }
            Some("quit") => {
                self.quit.insert(name, v["at"].as_i64().unwrap());
            }
            Some("progress") => {
                self.last.insert(
                    name,
                    (v["at"].as_i64().unwrap(), v["progress"].as_f64().unwrap()),
                );
            }
            Some("error") => self.errors.push(line.to_string()),
            Some("end") => self.ended = true,
            _ => {}
        }
    }

    /// The client's own crossing time: the middle of its two polls around it (100 ms apart).
    fn crossing(&self, name: &str) -> Option<i64> {
        self.crossed
            .get(name)
            .map(|(below, above)| below.map_or(*above, |b| (b + above) / 2))
    }
}

/// Columns of a `peers` row that `peers --json` does not show.
#[derive(Debug, Default)]
struct Obs {
    below_at: Option<i64>,
    below_progress: Option<f64>,
    above_at: Option<i64>,
    above_progress: Option<f64>,
}

fn observations(db: &Path) -> BTreeMap<(String, u16), Obs> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT ip, port, below_at, below_progress, above_at, above_progress FROM peers")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, u16>(1)?),
                Obs {
                    below_at: r.get(2)?,
                    below_progress: r.get(3)?,
                    above_at: r.get(4)?,
                    above_progress: r.get(5)?,
                },
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn pct(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{:.1}%", p * 100.0))
}

#[test]
fn confirms_every_finished_transmission_leecher_and_nothing_else() {
    let started = Instant::now();
    let py = python_with_libtorrent();
    require_tool(
        "transmission-daemon",
        "--version",
        "transmission-daemon 3.00 (Debian package transmission-daemon)",
    );
    require_tool(
        "setpriv",
        "--version",
        "setpriv (Debian package util-linux)",
    );
    require_tool("node", "--version", "node (Debian package nodejs)");
    let tmp = test_dir("swarmscan-transmission-");
    let dir = tmp.path();
    eprintln!("transmission swarm: working in {}", dir.display());

    let tracker_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let _tracker = start_bittorrent_tracker(dir, tracker_port, "127.0.0.1");
    let tracker_url = format!("http://127.0.0.1:{tracker_port}/announce");

    // Peer ports: the seeder's, then one per leecher (each on its own address, TCP and uTP);
    // RPC ports on 127.0.0.1.
    let mut peer_ips = vec!["127.0.0.2".to_string()];
    peer_ips.extend((0..LEECHERS.len()).map(|i| format!("127.0.0.{}", 3 + i)));
    let peer_ip_refs: Vec<&str> = peer_ips.iter().map(String::as_str).collect();
    let base_port = free_port_run(&peer_ip_refs, LEECHERS.len() as u16 + 1);
    let rpc_base_port = free_port_run(&["127.0.0.1"], LEECHERS.len() as u16);
    let plan: Vec<String> = LEECHERS
        .iter()
        .map(|l| {
            format!(
                "{},{},{},{},{}",
                l.name, l.start_secs, l.rate_kbps, l.quits as u8, l.encryption
            )
        })
        .collect();

    let driver_log = dir.join("driver.log");
    let workdir = dir.join("swarm");
    std::fs::create_dir_all(&workdir).unwrap();
    let (mut driver, lines) = spawn_driver(&py, "swarm_transmission.py", &driver_log, |cmd| {
        cmd.args(["--tracker", &tracker_url, "--workdir"])
            .arg(&workdir)
            .args(["--base-port", &base_port.to_string()])
            .args(["--rpc-base-port", &rpc_base_port.to_string()])
            .args(["--threshold", &THRESHOLD.to_string()])
            .args(["--size", &TORRENT_SIZE.to_string()])
            .args(["--plan", &plan.join(";")])
            .args(["--max-secs", &(SCAN_SECS + 40).to_string()])
    });
    let mut truth = Truth::default();
    read_until(
        &lines,
        Duration::from_secs(30),
        "swarm_transmission.py made no torrent",
        &driver_log,
        |line| {
            truth.take(line);
            truth.torrent.is_some()
        },
    );
    let torrent = truth.torrent.clone().unwrap();
    let torrent_path = torrent["path"].as_str().unwrap().to_string();

    // swarmscan, as a user runs it: the database, where to listen, and faster revisits and
    // announces than the defaults (a test cannot wait 5 minutes). Nothing else.
    let listen_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let db = dir.join("scan.sqlite");
    let scan_log = dir.join("swarmscan.log");
    let scan_started_ms = now_ms();
    let mut scan = ChildGuard::spawn(
        "swarmscan run",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .arg("run")
            .arg("--set")
            .arg(format!("database={}", db.display()))
            .arg("--set")
            .arg(format!(
                "net.listen=[\"127.0.0.1:{listen_port}\",\"[::1]:{listen_port}\"]"
            ))
            .args(["--set", "peer.revisit_secs=5"])
            .args(["--set", "tracker.announce_secs=10"])
            .args(["--set", "tracker.respect_interval=false"])
            .args(["--for", &format!("{SCAN_SECS}s")])
            .arg(&torrent_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("swarmscan.out")).unwrap())
            .stderr(std::fs::File::create(&scan_log).unwrap()),
    );

    // Collect the ground truth while the scan runs.
    let status = wait_collecting(
        &mut scan,
        Duration::from_secs(SCAN_SECS + 30),
        &lines,
        |line| truth.take(line),
        || {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "swarm_transmission.py ended during the scan ({status}): {}",
                    read_to_string_lossy(&driver_log)
                );
            }
        },
        &scan_log,
    );
    let scan_ended_ms = now_ms();
    assert!(
        status.success(),
        "swarmscan run failed ({status}): {}",
        read_to_string_lossy(&scan_log)
    );

    // Stop the swarm: closing its stdin ends the driver, which stops every daemon.
    let driver_status = stop_driver(&mut driver, lines, Duration::from_secs(30), |line| {
        truth.take(line)
    });
    assert!(
        driver_status.is_some_and(|s| s.success()) && truth.ended,
        "swarm_transmission.py did not end cleanly ({driver_status:?}): {}",
        read_to_string_lossy(&driver_log)
    );

    // The swarm did what the test needs (else the machine was too slow: say so).
    assert!(
        truth.errors.is_empty(),
        "the swarm reported errors: {:#?}\n{}",
        truth.errors,
        read_to_string_lossy(&driver_log)
    );
    assert_eq!(
        truth.clients.len(),
        LEECHERS.len() + 1,
        "clients started: {:?}\n{}",
        truth.clients.keys(),
        read_to_string_lossy(&driver_log)
    );
    for l in LEECHERS {
        let finished = truth.finished.get(l.name).copied();
        if l.finishes {
            assert!(
                finished.is_some_and(|at| at < scan_ended_ms - FINISH_MARGIN_MS),
                "leecher {} did not finish {FINISH_MARGIN_MS} ms before the scan ended (finished \
                 {finished:?}, scan ended {scan_ended_ms}): the swarm is too slow on this machine\n{}",
                l.name,
                read_to_string_lossy(&driver_log)
            );
            assert!(
                truth.crossed.contains_key(l.name),
                "{}: no crossing",
                l.name
            );
            assert_eq!(
                truth.quit.contains_key(l.name),
                l.quits,
                "{}: quit {:?}",
                l.name,
                truth.quit.get(l.name)
            );
        } else {
            assert!(
                finished.is_none() && truth.last[l.name].1 < THRESHOLD,
                "{} should not have finished: {:?}",
                l.name,
                truth.last.get(l.name)
            );
        }
    }

    // What swarmscan stored. Addresses are stored as keyed hashes (privacy.ip = "hmac", the
    // default); the key is next to the database.
    let anon = Anonymizer::from_key_file(
        IpMode::Hmac,
        &PathBuf::from(format!("{}.key", db.display())),
    )
    .expect("HMAC key file next to the database");
    let peers = swarmscan_peers(dir, DatabaseFrom::Path(&db));
    let report = swarmscan_report(dir, DatabaseFrom::Path(&db));
    let obs = observations(&db);
    let info_hash = torrent["info_hash"].as_str().unwrap();
    let has_crossing_seen = peers.iter().any(|p| p.get("crossing_seen").is_some());

    let mut failures: Vec<String> = Vec::new();
    // `window`: a quitter's own crossing to its quitting, the only time it can be seen at or
    // above the threshold.
    let mut table = vec![format!(
        "  {:<10} {:<12} {:<5} {:<4} {:<8} {:<9} {:<9} {:<9} {:<8} {:<7} {:>4} {:>4} {:<8} {:<8} {:<12} {}",
        "client", "address", "quits", "enc", "finished", "confirmed", "seen", "crossing",
        "vs own", "window", "cont", "fail", "first", "last", "transport", "client id"
    )];
    let mut expected_confirmed: BTreeSet<(String, u16)> = BTreeSet::new();
    let mut crossing_errors: Vec<i64> = Vec::new();
    for (name, client) in &truth.clients {
        let ip: IpAddr = client["ip"].as_str().unwrap().parse().unwrap();
        let port = client["port"].as_u64().unwrap() as u16;
        let key = anon.anonymize(ip).key;
        let row = peers
            .iter()
            .find(|p| p["ip"] == key.as_str() && p["port"] == port);
        let finished_at = truth.finished.get(name).copied();
        let is_transmission = client["kind"] == "transmission";
        let own_crossing = truth.crossing(name);
        let Some(row) = row else {
            failures.push(format!(
                "{name} ({ip}:{port}) is not among swarmscan's peers"
            ));
            table.push(format!("  {name:<10} {ip}:{port} not found"));
            continue;
        };
        assert_eq!(row["info_hash"], info_hash);
        let o = obs
            .get(&(key.clone(), port))
            .unwrap_or_else(|| panic!("{name}: peers row without a database row"));
        let confirmed = row["confirmed"] == true;
        let crossed_at = row["crossed_at"].as_i64();
        let seen = match row.get("crossing_seen") {
            None => "n/a".to_string(),
            Some(Json::Null) => "-".to_string(),
            Some(v) => v.as_str().unwrap_or("?").to_string(),
        };
        let delta = crossed_at.zip(own_crossing).map(|(c, t)| c - t);
        let window = truth
            .quit
            .get(name.as_str())
            .zip(own_crossing)
            .map(|(q, c)| q - c);
        table.push(format!(
            "  {:<10} {:<12} {:<5} {:<4} {:<8} {:<9} {:<9} {:<9} {:<8} {:<7} {:>4} {:>4} {:<8} {:<8} {:<12} {}",
            name,
            format!("{ip}:{port}").trim_start_matches("127.0."),
            if client["quits"] == true { "yes" } else { "no" },
            client["encryption"].as_u64().map_or("-".into(), |e| match e {
                2 => "req".to_string(),
                1 => "pref".to_string(),
                _ => e.to_string(),
            }),
            secs_from(finished_at, scan_started_ms),
            confirmed,
            seen,
            secs_from(crossed_at, scan_started_ms),
            delta.map_or("-".into(), |d| format!("{d:+}ms")),
            window.map_or("-".into(), |w| format!("{w}ms")),
            row["contacts"],
            row["failures"],
            pct(row["first_progress"].as_f64()),
            pct(row["last_progress"].as_f64()),
            row["transport"].as_str().unwrap_or("-"),
            row["client"].as_str().unwrap_or("-"),
        ));

        if is_transmission
            && !row["sources"]
                .as_str()
                .unwrap_or_default()
                .split('+')
                .any(|s| s == "tracker_http")
        {
            failures.push(format!(
                "{name} was not learnt from the HTTP tracker: {row}"
            ));
        }
        if row["contacts"].as_i64().unwrap_or(0) == 0 {
            failures.push(format!("{name} was never reached: {row}"));
        }
        // A leecher that requires encryption hangs up on a plaintext handshake: every contact
        // with it went over MSE (swarmscan's `fallback` retries at once and remembers it).
        if client["encryption"] == 2
            && !row["transport"]
                .as_str()
                .unwrap_or_default()
                .split('+')
                .any(|t| t == "mse")
        {
            failures.push(format!(
                "{name} requires encryption, yet no contact used MSE: {row}"
            ));
        }
        match (is_transmission, finished_at) {
            (false, _) => {
                if confirmed {
                    failures.push(format!("the seeder is confirmed: {row}"));
                }
            }
            (true, Some(_)) => {
                expected_confirmed.insert((key.clone(), port));
                if !confirmed {
                    failures.push(format!(
                        "{name} finished (own crossing {}, finished {}, quit {}) but is not \
                         confirmed: first {} at {}, last {} at {}, below {} at {}, above {} at {}, \
                         last error {}",
                        secs_from(own_crossing, scan_started_ms),
                        secs_from(finished_at, scan_started_ms),
                        secs_from(truth.quit.get(name).copied(), scan_started_ms),
                        pct(row["first_progress"].as_f64()),
                        secs_from(row["first_contact_at"].as_i64(), scan_started_ms),
                        pct(row["last_progress"].as_f64()),
                        secs_from(row["last_seen_at"].as_i64(), scan_started_ms),
                        pct(o.below_progress),
                        secs_from(o.below_at, scan_started_ms),
                        pct(o.above_progress),
                        secs_from(o.above_at, scan_started_ms),
                        row["last_error"],
                    ) + if truth.quit.contains_key(name.as_str())
                        && row["last_seen_at"].as_i64().zip(truth.quit.get(name.as_str()).copied())
                            .is_some_and(|(seen, quit)| (seen - quit).abs() < 1_500)
                    {
                        "; its last contact ended when it quit: Transmission batches `have`s for \
                         up to 10 s to a peer it exchanges no data with and drops the unsent \
                         batch when it quits, so only a new connection (a fresh bitfield) between \
                         its crossing and its quitting sees the crossing"
                    } else {
                        ""
                    });
                    continue;
                }
                if !row["first_progress"]
                    .as_f64()
                    .is_some_and(|p| p < THRESHOLD)
                {
                    failures.push(format!(
                        "{name}: first seen at or above the threshold: {row}"
                    ));
                }
                let d = delta.unwrap();
                crossing_errors.push(d.abs());
                if d.abs() > CROSSING_TOLERANCE_MS {
                    failures.push(
                        format!(
                            "{name}: swarmscan's crossing {} is {d:+} ms from the client's own {} \
                         (swarmscan saw it between {} at {} and {} at {})",
                            secs_from(crossed_at, scan_started_ms),
                            secs_from(own_crossing, scan_started_ms),
                            pct(o.below_progress),
                            secs_from(o.below_at, scan_started_ms),
                            pct(o.above_progress),
                            secs_from(o.above_at, scan_started_ms),
                        ) + if o.below_at == o.above_at {
                            "; below and above at one instant: one burst of `have`s, which \
                         Transmission batches for up to 10 s to a peer it exchanges no data with"
                        } else {
                            ""
                        },
                    );
                }
                if has_crossing_seen && !matches!(seen.as_str(), "live" | "revisit" | "incoming") {
                    failures.push(format!(
                        "{name}: crossing_seen {seen:?} for a confirmed peer"
                    ));
                }
            }
            (true, None) => {
                if confirmed {
                    failures.push(format!(
                        "{name} never finished (last {:?}) but is confirmed: {row}",
                        truth.last.get(name)
                    ));
                }
                let seen_last = row["last_progress"].as_f64().unwrap_or(0.0);
                let own_last = truth.last[name].1;
                if seen_last > own_last + 0.01 {
                    failures.push(format!(
                        "{name}: swarmscan saw {seen_last}, more than the client's own {own_last}"
                    ));
                }
            }
        }
    }

    // Nothing else is confirmed: not swarmscan's own address, not the seeder, not a second row
    // of a client under another port.
    let confirmed: BTreeSet<(String, u16)> = peers
        .iter()
        .filter(|p| p["confirmed"] == true)
        .map(|p| {
            (
                p["ip"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    for extra in confirmed.difference(&expected_confirmed) {
        let row = peers
            .iter()
            .find(|p| p["ip"] == extra.0.as_str() && p["port"] == extra.1);
        failures.push(format!(
            "a peer that is no finished Transmission leecher is confirmed: {}",
            row.map_or("?".into(), |r| r.to_string())
        ));
    }
    let torrent_report = report["torrents"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["info_hash"] == info_hash))
        .cloned()
        .unwrap_or(Json::Null);
    if torrent_report["confirmed"].as_i64() != Some(confirmed.len() as i64) {
        failures.push(format!(
            "report says {} confirmed, peers lists {}",
            torrent_report["confirmed"],
            confirmed.len()
        ));
    }
    let seen_counts = match torrent_report.get("crossings_seen") {
        None => "n/a".to_string(),
        Some(c) => {
            let sum: i64 = ["live", "revisit", "incoming"]
                .iter()
                .map(|k| c[k].as_i64().unwrap_or(0))
                .sum();
            if sum != confirmed.len() as i64 {
                failures.push(format!(
                    "report crossings_seen {c} does not add up to {} confirmed",
                    confirmed.len()
                ));
            }
            c.to_string()
        }
    };

    eprintln!(
        "transmission swarm: {} Transmission leechers ({} finished, {} quit on finishing), \
         swarmscan found {} peers, confirmed {} of {}; crossings seen {seen_counts}; \
         |crossed_at - own crossing| max {} ms; test took {:.1} s (times from the scan start)",
        LEECHERS.len(),
        truth.finished.len(),
        truth.quit.len(),
        peers.len(),
        confirmed.intersection(&expected_confirmed).count(),
        expected_confirmed.len(),
        crossing_errors
            .iter()
            .max()
            .map_or("-".into(), |m| m.to_string()),
        started.elapsed().as_secs_f64()
    );
    for line in &table {
        eprintln!("{line}");
    }
    for p in &peers {
        let known = truth.clients.values().any(|c| {
            let ip: IpAddr = c["ip"].as_str().unwrap().parse().unwrap();
            p["ip"] == anon.anonymize(ip).key.as_str() && p["port"] == c["port"]
        });
        if !known {
            eprintln!(
                "  other peer row: port {} sources {} contacts {} first {} last {} confirmed {} error {}",
                p["port"],
                p["sources"],
                p["contacts"],
                pct(p["first_progress"].as_f64()),
                pct(p["last_progress"].as_f64()),
                p["confirmed"],
                p["last_error"]
            );
        }
    }
    // swarmscan's own announces as the tracker saw them (its address is 127.0.0.1; every
    // client has its own): how often it asked for peers, and which port it announced.
    let announces: Vec<String> = read_to_string_lossy(&dir.join("tracker.log"))
        .lines()
        .filter(|l| l.contains(": 127.0.0.1:"))
        .map(String::from)
        .collect();
    eprintln!(
        "  swarmscan announced {} times (listening on port {listen_port}); first {:?}, last {:?}",
        announces.len(),
        announces.first(),
        announces.last()
    );
    assert!(
        failures.is_empty(),
        "swarmscan vs Transmission leechers:\n  {}\n(logs: {} — set SWARMSCAN_KEEP_TEST_DIR=1 to keep them)\n\
         swarmscan's announces as the tracker logged them:\n{}\nswarmscan log tail:\n{}",
        failures.join("\n  "),
        dir.display(),
        announces.join("\n"),
        tail(&read_to_string_lossy(&scan_log), 40)
    );
}

//! swarmscan meets a swarm as a user would (issue 6): a real tracker with its default settings,
//! real clients of four kinds with their default reconnect timing, and swarmscan with its
//! default configuration except the database, the listen addresses, the revisit interval and
//! the announce interval.
//!
//! * Tracker: npm `bittorrent-tracker` 11 (package directory in env
//!   `SWARMSCAN_BITTORRENT_TRACKER`, run with `node` through tests/js/bittorrent_tracker.mjs;
//!   scripts/test installs it into its tool cache): HTTP, UDP and UDP6 with the default
//!   announce interval of 10 minutes, bound to 127.0.0.1 and ::1 only. The torrent lists its
//!   UDP URL on 127.0.0.1 and its HTTP URL on [::1] (only HTTP hands out IPv6 peers).
//! * Clients: libtorrent 2.1.1 through tests/py/swarm_kinds.py (interpreter in env
//!   `SWARMSCAN_PYTHON`), each in its own process on its own address: a seeder (127.0.0.x and
//!   ::1) and nine leechers starting 8 s apart (64 s from the first to the last), download-rate
//!   limited so that each takes about half a minute. Kinds in turn: plain, NAT'd (inbound SYNs
//!   to its port rejected with iptables, added here and removed on every exit path; incoming
//!   uTP off), encryption forced, IPv6 only (::1). In each kind every second leecher quits the
//!   moment it finishes. The clients report when they crossed the threshold (their own piece
//!   count) and when they finished: the ground truth.
//! * swarmscan: `swarmscan run --set database=… --set net.listen=[127.0.0.1:P, [::1]:P]
//!   --set peer.revisit_secs=5 --set tracker.announce_secs=10
//!   --set tracker.respect_interval=false --for 110s TORRENT`, nothing else.
//!
//! Asserted: every leecher that finished is confirmed, no other peer is (the seeder never),
//! and each confirmed leecher's `crossed_at` lies within 2 s of the client's own crossing. The
//! test prints one line per client (kind, finished, confirmed, how swarmscan saw the crossing:
//! `crossing_seen` live / revisit / incoming, "n/a" where swarmscan does not report it) and a
//! per-kind summary, on success and on failure alike.
//!
//! IPv6: libtorrent dials us over IPv6 without a listen port (it sends none until it learns an
//! external IPv6 address) and with a peer-id of that connection only, so the connection is
//! stored under its ephemeral port (`portless`), apart from the client's listen-port row. The
//! test asserts that such a row is never confirmed when its crossing is the one of a client's
//! listen-port row (`duplicate_of_port` names that row), so every download counts once.
//!
//! Every child process is killed and every iptables rule deleted when the test ends, on every
//! path; every wait has a hard bound. The test takes about two minutes. To look at what
//! happened: SWARMSCAN_KEEP_TEST_DIR=1 keeps the tracker, swarm and swarmscan logs and the
//! database; SWARM_KINDS_DEBUG=1 makes the clients log every peer connection and why it ended.

use std::time::Instant;

mod common;
use common::kinds_swarm::{KindsSwarm, Scan, Stored, Verdict};
use common::swarm::{secs_from, start_bittorrent_tracker};
use common::{free_port_on_all, python_with_libtorrent, test_dir, IptablesGuard};

/// Leechers (the driver's default; kinds in turn, so at least two of each).
const LEECHERS: usize = 9;
/// How long swarmscan scans. The last leecher starts 66 s after "go" and needs about 30 s.
const SCAN_SECS: u64 = 110;
/// A finished leecher must have finished this long before the scan ended (else the swarm was
/// too slow on this machine for the test to say anything).
const FINISH_MARGIN_MS: i64 = 8_000;
/// swarmscan's crossing time against the client's own.
const CROSSING_TOLERANCE_MS: i64 = 2_000;

#[test]
fn confirms_exactly_the_finished_leechers_of_a_swarm_met_as_a_user_would() {
    let started = Instant::now();
    let py = python_with_libtorrent();
    let mut rules = IptablesGuard::new();
    let tmp = test_dir("swarmscan-swarm-defaults-");
    let dir = tmp.path();
    eprintln!("swarm defaults: working in {}", dir.display());

    let tracker_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let _tracker = start_bittorrent_tracker(dir, tracker_port, "::1");
    let mut swarm = KindsSwarm::plan(&py, dir, tracker_port, LEECHERS, &[], SCAN_SECS + 20);

    // NAT'd clients: nobody can open a connection to them.
    for p in swarm.truth.plan.iter().filter(|p| p.kind == "nat") {
        for &(ip, port) in &p.addrs {
            rules.reject_syn(ip, port);
        }
    }

    // swarmscan as a user runs it.
    let listen_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let db = dir.join("scan.sqlite");
    let scan_args = vec![
        "run".to_string(),
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
        swarm.torrent_path.clone(),
    ];
    let mut scan = Scan::start(dir, "swarm defaults", &db, &scan_args);
    swarm.go();
    let scan_ended_ms = swarm.collect_during(&mut scan, SCAN_SECS, |_| {});

    // Stop the swarm, then lift the NAT.
    swarm.stop();
    drop(rules);
    swarm.assert_every_leecher_finished(scan_ended_ms, FINISH_MARGIN_MS);

    let stored = Stored::read(dir, &db);
    let verdict = Verdict::compare(&swarm, &stored, &scan, false, |leecher| {
        let d = leecher.crossing_delta_ms;
        (d.abs() > CROSSING_TOLERANCE_MS).then(|| {
            format!(
                "{} ({}, {}, {}): crossed_at is {d:+} ms off the client's own crossing at {} \
                 (seen {})",
                leecher.client.name,
                leecher.client.kind,
                leecher.addr,
                leecher.how,
                secs_from(leecher.client_crossed, scan.started_ms),
                leecher.seen
            )
        })
    });
    verdict.finish("swarm defaults", started, Vec::new());
}

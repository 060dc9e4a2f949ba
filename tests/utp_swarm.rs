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
//! * Path outage: when `utp1` (quits on finishing; it dialled swarmscan, which watches it on
//!   that incoming connection) has 24 of its 128 pieces, every UDP datagram between it and
//!   swarmscan's UDP ports is dropped for [`OUTAGE`] (iptables, deleted on every exit path).
//!   libtorrent times its side of the uTP connection out after three unanswered sends (about
//!   3.5 s) and then ignores the connection's packets without a RESET; swarmscan has to notice
//!   on its own (its liveness keep-alive goes unanswered) and visit the leecher again before it
//!   finishes and quits. Not `utpin1` (reached only by swarmscan's own probes): when the outage
//!   meets a probe rather than a watched connection, the connect times out, TCP is refused, and
//!   the failure back-off (tens of seconds) can outlast the rest of its download; see the
//!   session notes (open).
//!
//! Asserted: every leecher that finished is confirmed and its row's transport includes `utp`
//! (for `utpin*` leechers never `incoming`: swarmscan's outgoing uTP probes saw them); no other
//! peer is confirmed (the seeder never); the report's transport table names uTP. The
//! test prints one line per client on success and failure alike.
//!
//! Every child process is killed when the test ends, on every path; every wait has a hard
//! bound. About two minutes. SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs and the database.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::kinds_swarm::{KindsSwarm, Scan, Stored, Truth, Verdict};
use common::process::read_to_string_lossy;
use common::swarm::{secs_from, start_bittorrent_tracker};
use common::{free_port_on_all, now_ms, python_with_libtorrent, test_dir, IptablesGuard};

/// Leechers (kinds utp, utpenc, utpin and utpinenc in turn: two of each).
const LEECHERS: usize = 8;
/// How long swarmscan scans. The last leecher starts 58 s after "go" and needs about 30 s.
const SCAN_SECS: u64 = 110;
/// How long the path between an outage's leecher and swarmscan is down.
const OUTAGE: Duration = Duration::from_secs(6);
/// Leechers whose path to swarmscan goes down, and at how many pieces.
const OUTAGE_LEECHERS: [&str; 1] = ["utp1"];
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

#[test]
fn confirms_exactly_the_finished_leechers_that_speak_utp_only() {
    let started = Instant::now();
    let py = python_with_libtorrent();
    let tmp = test_dir("swarmscan-utp-swarm-");
    let dir = tmp.path();
    eprintln!("utp swarm: working in {}", dir.display());

    let tracker_port = free_port_on_all(&["127.0.0.1", "::1"]);
    let _tracker = start_bittorrent_tracker(dir, tracker_port, "::1");
    let mut swarm = KindsSwarm::plan(
        &py,
        dir,
        tracker_port,
        LEECHERS,
        &["--kinds", "utp,utpenc,utpin,utpinenc"],
        SCAN_SECS + 20,
    );
    let mut outages: Vec<Outage> = OUTAGE_LEECHERS
        .iter()
        .map(|&name| Outage {
            name,
            ip: swarm
                .truth
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
        swarm.torrent_path.clone(),
    ];
    let mut scan = Scan::start(dir, "utp swarm", &db, &scan_args);
    swarm.go();
    let scan_ended_ms = swarm.collect_during(&mut scan, SCAN_SECS, |truth| {
        for outage in &mut outages {
            outage.step(truth);
        }
    });
    // Every path is up again, whatever happened.
    for outage in &mut outages {
        outage.rules = None;
    }

    swarm.stop();
    swarm.assert_every_leecher_finished(scan_ended_ms, FINISH_MARGIN_MS);
    let truth = &swarm.truth;

    // The outages happened, and ended before their leecher crossed (else they tested nothing).
    for o in &outages {
        let crossed = truth.crossed.get(o.name).copied();
        assert!(
            o.started.is_some()
                && o.ended_ms
                    .zip(crossed)
                    .is_some_and(|(ended, crossed)| ended < crossed),
            "the outage of {} did not happen within its download (started {:?}, ended {:?}, \
             crossed {crossed:?}, last pieces {:?})",
            o.name,
            o.started.map(|(_, ms)| ms),
            o.ended_ms,
            truth.last_pieces.get(o.name)
        );
    }

    let stored = Stored::read(dir, &db);
    let mut verdict = Verdict::compare(&swarm, &stored, &scan, true, |leecher| {
        let (p, addr, r) = (leecher.client, leecher.addr, leecher.row);
        if !over_utp(r) {
            Some(format!(
                "{} ({}, {addr}) is confirmed, but no successful contact was over uTP (a client \
                 with TCP off): {r}",
                p.name, p.kind
            ))
        } else if p.kind.starts_with("utpin") && incoming(r) {
            // It dials nobody: swarmscan reached it by its own uTP probes.
            Some(format!(
                "{} ({}, {addr}) opens no connection, yet a contact is marked incoming: {r}",
                p.name, p.kind
            ))
        } else {
            None
        }
    });
    // The run summary's uTP counters saw what the clients did: swarmscan's uTP connects came
    // up (the clients speak nothing else), and nothing the tracker sent looked forged.
    let out = read_to_string_lossy(&scan.out);
    match serde_json::from_str::<Json>(out.trim()) {
        Ok(summary) => {
            let utp = &summary["utp"];
            let n = |v: &Json| v.as_u64().unwrap_or(0);
            if n(&utp["connected"]) == 0 || n(&utp["connected"]) > n(&utp["connects_started"]) {
                verdict.failures.push(format!(
                    "run summary: uTP connects started/connected do not add up: {utp}"
                ));
            }
            if n(&summary["udp_datagrams"]["utp"]) == 0 {
                verdict.failures.push(format!(
                    "run summary: no uTP datagram received: {}",
                    summary["udp_datagrams"]
                ));
            }
            if n(&summary["udp_trackers"]["replies_forged"]) != 0 {
                verdict.failures.push(format!(
                    "run summary: the tracker's replies taken for forgeries: {}",
                    summary["udp_trackers"]
                ));
            }
        }
        Err(e) => verdict
            .failures
            .push(format!("run --json printed no summary ({e}): {out}")),
    }
    // The report's transport table counts the uTP peers.
    let report = &stored.report;
    let leechers = truth.leechers().len() as i64;
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
    if utp_in_report != leechers {
        verdict.failures.push(format!(
            "report: {utp_in_report} confirmed peers with a uTP contact in the transport table \
             (expected {leechers}): {}",
            report["transports"]
        ));
    }

    let outage_lines = outages
        .iter()
        .map(|o| {
            format!(
                "  outage of {} ({}): {} to {}, crossed at {}",
                o.name,
                o.ip,
                secs_from(o.started.map(|(_, ms)| ms), scan.started_ms),
                secs_from(o.ended_ms, scan.started_ms),
                secs_from(truth.crossed.get(o.name).copied(), scan.started_ms)
            )
        })
        .collect();
    verdict.finish("utp swarm", started, outage_lines);
}

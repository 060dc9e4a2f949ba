//! swarmscan's DHT node against libtorrent's (2.1.1, tests/py/dht_swarm.py, interpreter in env
//! `SWARMSCAN_PYTHON`): a swarm with no tracker at all, one seeder and three rate-limited
//! leechers that finish one after another, each a libtorrent session with the DHT on, on its
//! own 127.0.0.x address, bootstrapping from each other and from our node.
//!
//! swarmscan gets only the magnet link, on its defaults except the database, listen address,
//! intervals (`peer.revisit_secs`, `dht.lookup_secs`) and `dht.bootstrap` = the seeder's node:
//! * the metadata is resolved (name and piece count in the database; the session verifies it
//!   against the info-hash before it is used);
//! * every client is found by `get_peers`, at its address and port, with source `dht`; the
//!   lookups are recorded (discovery requests of source `dht`, `dht_lookups` with nodes
//!   queried) and `report` lists them;
//! * every leecher that finished while observed is confirmed, nothing else is;
//! * the libtorrent nodes learned of our node: its id and address are in their live nodes.
//!
//! Every child process is killed when the test ends, on every path; every wait is bounded.
//! The test takes about 75 s. SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs and the database.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::process::{read_to_string_lossy, wait_collecting, ChildGuard};
use common::swarm::{
    read_until, spawn_driver, swarmscan_peers, swarmscan_query, swarmscan_report, DatabaseFrom,
};
use common::{free_port_on_all, now_ms, python_with_libtorrent as python, test_dir};

const LEECHERS: usize = 3;
const SCAN_SECS: u64 = 62;

#[derive(Default, Debug)]
struct Truth {
    torrent: Option<Json>,
    /// ip -> client line.
    clients: BTreeMap<String, Json>,
    /// ip -> finish time.
    finished: BTreeMap<String, i64>,
    /// session name -> its live DHT nodes.
    dht_nodes: BTreeMap<String, Vec<Json>>,
    nodes_done: bool,
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
            Some("dht_nodes") => {
                let name = v["name"].as_str().unwrap().to_string();
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                self.dht_nodes.insert(name, nodes);
            }
            Some("nodes_done") => self.nodes_done = true,
            Some("end") => self.ended = true,
            _ => {}
        }
    }
}

/// Our node ids as logged at start ("DHT node started ... id=<40 hex digits>").
fn our_node_ids(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("DHT node started"))
        .filter_map(|l| {
            let at = l.find(" id=")? + 4;
            let id = l.get(at..at + 40)?;
            id.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| id.to_string())
        })
        .collect()
}

#[test]
fn finds_a_trackerless_swarm_through_libtorrents_dht_from_a_magnet_link() {
    let started = Instant::now();
    let py = python();
    let tmp = test_dir("swarmscan-dht-");
    let dir = tmp.path();
    eprintln!("dht swarm: working in {}", dir.display());

    // Our node: worker i's UDP socket is on port + i; the libtorrent leechers add node 0.
    let listen_port = free_port_on_all(&["127.0.0.1"]);
    let base_port = free_port_on_all(&["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]);
    let swarm_log = dir.join("swarm.log");
    let workdir = dir.join("swarm");
    std::fs::create_dir_all(&workdir).unwrap();
    let (mut swarm, lines) = spawn_driver(&py, "dht_swarm.py", &swarm_log, |cmd| {
        cmd.arg("--workdir")
            .arg(&workdir)
            .args(["--base-port", &base_port.to_string()])
            .args(["--leechers", &LEECHERS.to_string()])
            .args(["--our-node", &format!("127.0.0.1:{listen_port}")])
            .args(["--max-secs", &(SCAN_SECS + 40).to_string()])
    });
    let mut swarm_in = swarm.child.stdin.take().unwrap();
    let mut truth = Truth::default();
    read_until(
        &lines,
        Duration::from_secs(30),
        "dht_swarm.py made no torrent and seeder",
        &swarm_log,
        |line| {
            truth.take(line);
            truth.torrent.is_some() && !truth.clients.is_empty()
        },
    );
    let torrent = truth.torrent.clone().unwrap();
    let info_hash = torrent["info_hash"].as_str().unwrap().to_string();
    let magnet = torrent["magnet"].as_str().unwrap().to_string();

    // swarmscan as a user runs it: the magnet link, the seeder's node to bootstrap from, short
    // intervals, full addresses so the test can match peers; everything else at its default.
    let db = dir.join("scan.sqlite");
    let config = dir.join("swarmscan.toml");
    std::fs::write(
        &config,
        format!(
            "database = {db:?}\n\
             [net]\nlisten = [\"127.0.0.1:{listen_port}\"]\n\
             [peer]\nrevisit_secs = 2.0\n\
             [dht]\nbootstrap = [\"127.0.0.2:{base_port}\"]\nlookup_secs = 3.0\n\
             [privacy]\nip = \"full\"\n"
        ),
    )
    .unwrap();
    let scan_log = dir.join("swarmscan.log");
    let mut scan = ChildGuard::spawn(
        "swarmscan run",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--for", &format!("{SCAN_SECS}s"), "--json"])
            .arg(&magnet)
            .env("SWARMSCAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&scan_log).unwrap()),
    );
    let scan_started = Instant::now();
    // Near the end of the scan, ask the libtorrent sessions for their live DHT nodes.
    let mut asked = false;
    let status = wait_collecting(
        &mut scan,
        Duration::from_secs(SCAN_SECS + 40),
        &lines,
        |line| truth.take(line),
        || {
            if !asked && scan_started.elapsed() > Duration::from_secs(SCAN_SECS - 8) {
                asked = true;
                let _ = writeln!(swarm_in, "nodes");
            }
        },
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
    let log = read_to_string_lossy(&scan_log);
    assert!(status.success(), "swarmscan run failed ({status}): {log}");
    let summary: Json = serde_json::from_str(summary.trim())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}): {summary:?}"));

    let wait_until = Instant::now() + Duration::from_secs(15);
    while !truth.nodes_done && Instant::now() < wait_until {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            truth.take(&line);
        }
    }
    let _ = writeln!(swarm_in, "stop");
    drop(swarm_in);
    let swarm_status = swarm.wait_timeout(Duration::from_secs(20));
    for line in lines.finish() {
        truth.take(&line);
    }
    let swarm_text = read_to_string_lossy(&swarm_log);
    assert!(
        swarm_status.is_some_and(|s| s.success()) && truth.ended,
        "dht_swarm.py did not end cleanly ({swarm_status:?}): {swarm_text}"
    );
    assert_eq!(truth.clients.len(), LEECHERS + 1, "{swarm_text}");
    assert!(
        truth.finished.len() == LEECHERS
            && truth
                .finished
                .values()
                .all(|&at| at < scan_ended_ms - 8_000),
        "every leecher should finish well before the scan ends (the swarm is too slow here?): \
         finished {:?}, scan ended {scan_ended_ms}",
        truth.finished
    );

    // The metadata came from the swarm.
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let (name, pieces): (Option<String>, Option<i64>) = conn
        .query_row(
            "SELECT name, piece_count FROM torrents WHERE info_hash_v1 = ?1",
            [&info_hash],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(name.as_deref(), torrent["name"].as_str(), "metadata name");
    assert_eq!(pieces, torrent["pieces"].as_i64(), "metadata piece count");

    // Peers found by get_peers, and the lookups recorded.
    let (lookups, queried, replies): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), coalesce(sum(queried), 0), coalesce(sum(replies), 0) FROM dht_lookups",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!(
        lookups >= 3 && queried >= lookups && replies > 0,
        "lookups {lookups}, queried {queried}"
    );
    let peers = swarmscan_peers(dir, DatabaseFrom::Config(&config));
    for (ip, client) in &truth.clients {
        let port = client["port"].as_u64().unwrap();
        let row = peers
            .iter()
            .find(|p| p["ip"] == ip.as_str() && p["port"] == port)
            .unwrap_or_else(|| panic!("{client} is not among swarmscan's peers: {peers:#?}"));
        assert!(
            row["sources"]
                .as_str()
                .unwrap()
                .split('+')
                .any(|s| s == "dht"),
            "{client} was not found through the DHT: {row}"
        );
    }

    // Exactly the finished leechers are confirmed.
    let confirmed: BTreeSet<String> = peers
        .iter()
        .filter(|p| p["confirmed"] == true)
        .map(|p| p["ip"].as_str().unwrap().to_string())
        .collect();
    let finished: BTreeSet<String> = truth.finished.keys().cloned().collect();
    assert_eq!(confirmed, finished, "confirmed peers vs finished leechers");

    // The report lists the DHT among the sources and in its own section.
    let report = swarmscan_report(dir, DatabaseFrom::Config(&config));
    let dht_source = report["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "dht")
        .unwrap_or_else(|| panic!("no dht source in the report: {report:#}"));
    let peer_lookups: i64 = conn
        .query_row(
            "SELECT count(*) FROM dht_lookups WHERE NOT scrape",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dht_source["requests"].as_i64(), Some(peer_lookups));
    assert_eq!(
        report["dht"]["torrents"][0]["info_hash"],
        info_hash.as_str()
    );
    assert_eq!(report["dht"]["torrents"][0]["waiting_for_metadata"], false);
    assert!(
        swarmscan_query(dir, DatabaseFrom::Config(&config), &["report"])
            .contains("DHT: get_peers lookups")
    );

    // libtorrent's nodes learned of ours.
    let ours = our_node_ids(&log);
    assert!(!ours.is_empty(), "no 'DHT node started' line: {log}");
    let knows_us: Vec<&String> = truth
        .dht_nodes
        .iter()
        .filter(|(_, nodes)| {
            nodes
                .iter()
                .any(|n| n["ip"] == "127.0.0.1" && ours.iter().any(|id| n["id"] == id.as_str()))
        })
        .map(|(name, _)| name)
        .collect();
    assert!(
        !knows_us.is_empty(),
        "no libtorrent node has ours ({ours:?}) among its live nodes: {:#?}",
        truth.dht_nodes
    );
    let kept: i64 = conn
        .query_row("SELECT count(*) FROM dht_nodes", [], |r| r.get(0))
        .unwrap();
    assert!(kept > 0, "no DHT node kept for the next run");

    eprintln!(
        "dht swarm: {} clients found through the DHT, {} confirmed of {} finished, {lookups} lookups \
         ({queried} queries, {replies} replies), our node known to {:?}, {kept} nodes kept, \
         {} probes; test took {:.1} s",
        truth.clients.len(),
        confirmed.len(),
        finished.len(),
        knows_us,
        summary["probes"],
        started.elapsed().as_secs_f64()
    );
}

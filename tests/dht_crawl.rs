//! `swarmscan crawl` against libtorrent's DHT nodes (2.1.1, tests/py/dht_crawl_nodes.py,
//! interpreter in env `SWARMSCAN_PYTHON`): six libtorrent sessions with the DHT on, each on its
//! own 127.0.0.x address, bootstrapping from each other; one of them announces five random
//! info-hashes, so the nodes closest to them store them (libtorrent answers BEP 51
//! `sample_infohashes` from that store).
//!
//! swarmscan runs the crawl as a user would: database, listen address and `dht.bootstrap` =
//! one libtorrent node, everything else at its default; it is stopped with SIGINT. Then:
//! * it exits cleanly (status 0) and its summary counts answers;
//! * every announced info-hash is in the database, reported by at least one node, with first
//!   and last times within the crawl; nothing else is (the libtorrent nodes hold nothing
//!   else);
//! * `report --crawl` (text and JSON) lists them.
//!
//! Every child process is killed when the test ends, on every path; every wait is bounded.
//! The test takes about 30 s.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::process::{read_to_string_lossy, ChildGuard, StdoutLines};
use common::{free_port_on_all, now_ms, python_with_libtorrent as python, test_dir};

const NODES: usize = 6;
/// How long the crawl runs before SIGINT.
const CRAWL_SECS: u64 = 20;

#[test]
fn crawl_finds_the_info_hashes_libtorrents_dht_nodes_hold() {
    let py = python();
    let tmp = test_dir("swarmscan-crawl-");
    let dir = tmp.path();
    let ips: Vec<String> = (0..NODES).map(|i| format!("127.0.0.{}", 2 + i)).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let base_port = free_port_on_all(&ip_refs);
    let listen_port = free_port_on_all(&["127.0.0.1"]);
    let nodes_log = dir.join("nodes.log");
    let mut nodes = ChildGuard::spawn(
        "dht_crawl_nodes.py",
        Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/dht_crawl_nodes.py"))
            .args(["--base-port", &base_port.to_string()])
            .args(["--nodes", &NODES.to_string()])
            .args(["--max-secs", &(CRAWL_SECS + 60).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&nodes_log).unwrap()),
    );
    let lines = StdoutLines::of(&mut nodes);
    let mut announced: Vec<String> = Vec::new();
    while announced.is_empty() {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| {
                panic!(
                    "dht_crawl_nodes.py announced nothing within 30 s ({e}): {}",
                    read_to_string_lossy(&nodes_log)
                )
            });
        let v: Json = serde_json::from_str(&line).unwrap();
        if v["event"] == "announced" {
            announced = v["info_hashes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap().to_string())
                .collect();
        }
    }
    announced.sort();

    let db = dir.join("crawl.sqlite");
    let config = dir.join("swarmscan.toml");
    std::fs::write(
        &config,
        format!(
            "database = {db:?}\n\
             [net]\nlisten = [\"127.0.0.1:{listen_port}\"]\n\
             [dht]\nbootstrap = [\"127.0.0.2:{base_port}\"]\n"
        ),
    )
    .unwrap();
    let crawl_log = dir.join("crawl.log");
    let crawl_out = dir.join("crawl.out");
    let started = now_ms();
    let mut crawl = ChildGuard::spawn(
        "swarmscan crawl",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .arg("crawl")
            .arg("--config")
            .arg(&config)
            .args(["--for", "10m", "--json"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&crawl_out).unwrap())
            .stderr(std::fs::File::create(&crawl_log).unwrap()),
    );
    let until = Instant::now() + Duration::from_secs(CRAWL_SECS);
    while Instant::now() < until {
        assert!(
            crawl.child.try_wait().unwrap().is_none(),
            "crawl ended early: {}",
            read_to_string_lossy(&crawl_log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Safety: kill(2) with a pid of our own live child and a valid signal number.
    let rc = unsafe { libc::kill(crawl.child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = crawl.wait_timeout(Duration::from_secs(20));
    let ended = now_ms();
    let out = read_to_string_lossy(&crawl_out);
    assert!(
        status.is_some_and(|s| s.success()),
        "crawl did not stop cleanly on SIGINT ({status:?}): {}\n{out}",
        read_to_string_lossy(&crawl_log)
    );
    let summary: Json = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("crawl printed no JSON summary ({e}): {out:?}"));
    eprintln!("crawl summary: {summary}");
    assert!(
        summary["stats"]["answers"].as_u64().unwrap() > 0,
        "{summary}"
    );

    // The database holds exactly the announced info-hashes, each reported by a node.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT info_hash, COUNT(*), MIN(first_seen), MAX(last_seen)
             FROM crawl_sightings GROUP BY info_hash ORDER BY info_hash",
        )
        .unwrap();
    let rows: Vec<(String, i64, i64, i64)> = stmt
        .query_map([], |r| {
            let h: Vec<u8> = r.get(0)?;
            Ok((
                h.iter().map(|b| format!("{b:02x}")).collect(),
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let found: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(found, announced, "crawled info-hashes vs announced ones");
    for (h, nodes, first, last) in &rows {
        assert!(*nodes >= 1 && *nodes <= NODES as i64, "{h}: {nodes} nodes");
        assert!(
            started <= *first && first <= last && *last <= ended,
            "{h}: {first}..{last}"
        );
    }
    let runs: i64 = conn
        .query_row("SELECT COUNT(*) FROM crawl_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1);

    // report --crawl, text and JSON.
    for json in [false, true] {
        let mut args = vec!["report", "--crawl", "--config"];
        let config_s = config.to_str().unwrap();
        args.push(config_s);
        if json {
            args.push("--json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {:?}", out);
        let text = String::from_utf8_lossy(&out.stdout);
        if json {
            let v: Json = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(v["info_hashes"], announced.len());
            assert_eq!(v["crawl_runs"], 1);
        } else {
            assert!(
                text.contains(&format!("{} distinct info-hashes", announced.len())),
                "{text}"
            );
            for h in &announced {
                assert!(text.contains(h.as_str()), "{h} missing: {text}");
            }
        }
    }
}

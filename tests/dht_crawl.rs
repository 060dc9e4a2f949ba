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
//!
//! The other tests need no DHT to answer (their bootstrap node is a loopback port nothing
//! listens on): a crawl holds its database like `run` does (a second crawl, a sink or a run
//! on it is refused naming the crawl; `add` names it and does not signal it; a stray SIGUSR1
//! does not end it, nor does SIGHUP), refuses to run with `dht.enabled = false`, takes its
//! rate from `dht.crawl_rate` (range-checked, `--rate` overrides it), and stops when its
//! database is removed, putting it back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::process::{free_udp_port, read_to_string_lossy, ChildGuard, StdoutLines};
use common::{free_port_on_all, now_ms, python_with_libtorrent as python, test_dir};

const BIN: &str = env!("CARGO_BIN_EXE_swarmscan");

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

/// `swarmscan ARGS` on `db`, listening on a free loopback port, its DHT bootstrap node a
/// loopback port where nothing answers, plus `sets`.
fn swarmscan_on(db: &Path, args: &[&str], sets: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["--set", &format!("database={:?}", db.display().to_string())])
        .args([
            "--set",
            &format!(
                "net.listen=[\"127.0.0.1:{}\"]",
                free_port_on_all(&["127.0.0.1"])
            ),
        ])
        .args([
            "--set",
            &format!("dht.bootstrap=[\"127.0.0.1:{}\"]", free_udp_port()),
        ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn output(cmd: &mut Command) -> (Option<i32>, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_crawl_holds_its_database_against_a_second_crawl_a_sink_and_a_run_and_survives_add() {
    let tmp = test_dir("swarmscan-crawl-lock-");
    let db = tmp.path().join("crawl.sqlite");
    let pid_file = tmp.path().join("crawl.sqlite.pid");
    let log = tmp.path().join("crawl.log");
    let out = tmp.path().join("crawl.out");
    let mut crawl = ChildGuard::spawn(
        "swarmscan crawl",
        swarmscan_on(&db, &["crawl", "--for", "2m", "--json"], &[])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let pid = crawl.child.id();
    let limit = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&pid_file).unwrap_or_default() != format!("{pid}\ncrawl\n") {
        assert!(
            Instant::now() < limit && crawl.child.try_wait().unwrap().is_none(),
            "the crawl did not name itself in {}: {}",
            pid_file.display(),
            read_to_string_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A second crawl, a sink and a run on the same database: refused, naming the crawl.
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let sink_port = free_port_on_all(&["127.0.0.1"]);
    let sink_tcp = format!("sink.tcp=[\"127.0.0.1:{sink_port}\"]");
    let sink_udp = format!("sink.udp=[\"127.0.0.1:{sink_port}\"]");
    for (args, sets) in [
        (vec!["crawl", "--for", "5s"], vec![]),
        (
            vec!["sink", "--for", "5s"],
            vec![sink_tcp.as_str(), sink_udp.as_str()],
        ),
        (vec!["run", "--for", "5s", hash], vec![]),
    ] {
        let (code, _, err) = output(&mut swarmscan_on(&db, &args, &sets));
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "swarmscan: {}: the database {}",
                args[0],
                db.display()
            )) && err.contains(&format!("in use by a running `swarmscan crawl` (pid {pid}"))
                && err.contains("crawl.sqlite.pid"),
            "{args:?}: {err}"
        );
    }
    // `add` stores the torrent and names the crawl instead of signalling it.
    let (code, added, err) = output(&mut swarmscan_on(&db, &["add", hash], &[]));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        added.contains(&format!(
            "a `swarmscan crawl` (pid {pid}) holds this database"
        )),
        "{added}"
    );
    // A SIGUSR1 from elsewhere (an older `add`, a hand) does not end it either.
    // Safety: kill(2) with a pid of our own live child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        crawl.child.try_wait().unwrap().is_none(),
        "the crawl ended on SIGUSR1 or add: {}",
        read_to_string_lossy(&log)
    );

    // Safety: as above.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGINT) }, 0);
    let status = crawl.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        read_to_string_lossy(&log)
    );
    let summary: Json = serde_json::from_str(read_to_string_lossy(&out).trim()).unwrap();
    assert_eq!(summary["rate"], 50, "dht.crawl_rate's default: {summary}");
    assert!(!pid_file.exists(), "the lock file goes with the crawl");
    // The database is free again: the next crawl takes it.
    let (code, _, err) = output(&mut swarmscan_on(&db, &["crawl", "--for", "1s"], &[]));
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn a_crawl_with_the_dht_disabled_is_refused_before_it_touches_the_database() {
    let tmp = test_dir("swarmscan-crawl-nodht-");
    let db = tmp.path().join("crawl.sqlite");
    let (code, out, err) = output(&mut swarmscan_on(
        &db,
        &["crawl", "--for", "5s"],
        &["dht.enabled=false"],
    ));
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.starts_with("swarmscan: crawl: dht.enabled = false")
            && err.contains("set dht.enabled = true to crawl"),
        "{err}"
    );
    assert!(!db.exists() && !tmp.path().join("crawl.sqlite.pid").exists());
}

#[test]
fn the_crawl_rate_is_a_range_checked_config_key_that_rate_overrides() {
    let tmp = test_dir("swarmscan-crawl-rate-");
    let db = tmp.path().join("crawl.sqlite");
    for bad in ["0", "10001", "-3", "2.5"] {
        let set = format!("dht.crawl_rate={bad}");
        let (code, _, err) = output(&mut swarmscan_on(&db, &["crawl", "--for", "5s"], &[&set]));
        assert_eq!(code, Some(2), "{set}: {err}");
        assert!(err.contains("`dht.crawl_rate`"), "{set}: {err}");
        // Not a whole number of the key's type: the type error names the key too.
        if bad == "0" || bad == "10001" {
            assert!(err.contains("1..=10000"), "{set}: {err}");
        }
    }
    assert!(!db.exists(), "nothing stored by a refused crawl");
    for (args, want) in [
        (vec!["crawl", "--for", "300ms", "--json"], 7),
        (vec!["crawl", "--for", "300ms", "--json", "--rate", "9"], 9),
    ] {
        let (code, out, err) = output(&mut swarmscan_on(&db, &args, &["dht.crawl_rate=7"]));
        assert_eq!(code, Some(0), "{args:?}: {err}");
        let summary: Json = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(summary["rate"], want, "{args:?}: {summary}");
    }
}

/// Starts `swarmscan crawl --for 2m --json` on `dir/crawl.sqlite` (a bootstrap node that never
/// answers) and waits until it holds the database. Returns it, its log and its stdout file.
fn start_quiet_crawl(dir: &Path) -> (ChildGuard, std::path::PathBuf, std::path::PathBuf) {
    let db = dir.join("crawl.sqlite");
    let pid_file = dir.join("crawl.sqlite.pid");
    let log = dir.join("crawl.log");
    let out = dir.join("crawl.out");
    let mut crawl = ChildGuard::spawn(
        "swarmscan crawl",
        swarmscan_on(&db, &["crawl", "--for", "2m", "--json"], &[])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&log).unwrap()),
    );
    let pid = crawl.child.id();
    let limit = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&pid_file).unwrap_or_default() != format!("{pid}\ncrawl\n") {
        assert!(
            Instant::now() < limit && crawl.child.try_wait().unwrap().is_none(),
            "the crawl did not start: {}",
            read_to_string_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (crawl, log, out)
}

#[test]
fn a_sighup_does_not_end_a_crawl_and_it_says_nothing_was_reloaded() {
    let tmp = test_dir("swarmscan-crawl-hup-");
    let (mut crawl, log, out) = start_quiet_crawl(tmp.path());
    let pid = crawl.child.id() as libc::pid_t;
    // What `systemctl reload` (ExecReload=kill -HUP) or a logrotate postrotate sends.
    // Safety: kill(2) with a pid of our own live child and a valid signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let limit = Instant::now() + Duration::from_secs(10);
    while !read_to_string_lossy(&log).contains("SIGHUP") {
        assert!(
            Instant::now() < limit && crawl.child.try_wait().unwrap().is_none(),
            "no word on SIGHUP: {:?}",
            crawl.child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        crawl.child.try_wait().unwrap().is_none(),
        "the crawl ended on SIGHUP: {}",
        read_to_string_lossy(&log)
    );
    let said = read_to_string_lossy(&log);
    assert!(
        said.contains("SIGHUP: `swarmscan crawl` reads its configuration only at start; nothing reloaded, it goes on"),
        "{said}"
    );
    // Safety: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let status = crawl.wait_timeout(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        read_to_string_lossy(&log)
    );
    let summary: Json = serde_json::from_str(read_to_string_lossy(&out).trim()).unwrap();
    assert!(summary["seconds"].as_f64().is_some(), "{summary}");
}

#[test]
fn a_crawl_whose_database_is_removed_stops_and_puts_it_back() {
    let tmp = test_dir("swarmscan-crawl-removed-");
    let db = tmp.path().join("crawl.sqlite");
    let (mut crawl, log, _) = start_quiet_crawl(tmp.path());
    std::fs::remove_file(&db).unwrap();
    let removed = Instant::now();
    let status = crawl
        .wait_timeout(Duration::from_secs(30))
        .expect("the crawl stops by itself");
    let took = removed.elapsed();
    let said = read_to_string_lossy(&log);
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(
        took < Duration::from_secs(15),
        "stopped in {took:?}: {said}"
    );
    assert_eq!(
        said.lines().last().unwrap_or_default(),
        format!(
            "swarmscan: crawl: the database {0} was removed while it was open; everything \
             this database held is restored at {0}; 0 sightings not stored",
            db.display()
        ),
        "{said}"
    );
    // Back at its path, with this crawl's run row (written after the removal).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let runs: i64 = conn
        .query_row("SELECT count(*) FROM crawl_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 1);
}

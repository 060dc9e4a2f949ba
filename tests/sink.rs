//! `swarmscan sink` as a user runs it (defaults but for the database, its addresses and a short
//! idle time), with traffic of ten kinds aimed at it by real clients where there are some
//! (tests/py/sink_clients.py: libtorrent peers over TCP plain and encrypted and over uTP, a
//! libtorrent DHT node, a libtorrent UDP tracker announce, Python urllib and ssl) and recorded
//! handshakes (Gnutella, eMule); then `report --sink` as text, JSON and plots.
//!
//! A second test (root only) builds two network namespaces joined by veth, installs
//! tuning/sink-redirect.nft in the sink's, and checks that connections and datagrams to any
//! port of the address arrive with their original destination port.
//!
//! More hold the sink to what `run` promises: one sink per database (a second sink, a
//! crawl or a run on it is refused naming the sink; `add` names it and does not signal it; a
//! stray SIGUSR1 does not end it), a SIGHUP (`systemctl reload`, logrotate) does not end it
//! and loses no flow, and a database that stays unwritable stops the sink with a
//! clear error and a non-zero exit, keeping what was committed before.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

mod common;
use common::process::{free_tcp_port, read_to_string_lossy, ChildGuard};
use common::{python_with_libtorrent, test_dir};

const BIN: &str = env!("CARGO_BIN_EXE_swarmscan");

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn db_set(db: &Path) -> String {
    format!("database={:?}", db.display().to_string())
}

/// Starts the sink on `addr` (TCP and UDP) with `prefix` (e.g. `ip netns exec NS`) and waits
/// until it says it listens.
fn start_sink(prefix: &[&str], db: &Path, addr: &str, log: &Path) -> ChildGuard {
    start_sink_with(prefix, db, addr, log, &[])
}

/// [`start_sink`] with more `--set`s.
fn start_sink_with(
    prefix: &[&str],
    db: &Path,
    addr: &str,
    log: &Path,
    sets: &[&str],
) -> ChildGuard {
    let (program, pre) = match prefix.split_first() {
        Some((p, rest)) => (*p, rest.to_vec()),
        None => (BIN, Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(&pre);
    if !prefix.is_empty() {
        cmd.arg(BIN);
    }
    cmd.args(["sink", "--json", "--for", "120s"])
        .args(["--set", &db_set(db)])
        .args(["--set", &format!("sink.tcp=[\"{addr}\"]")])
        .args(["--set", &format!("sink.udp=[\"{addr}\"]")])
        .args(["--set", "sink.idle_secs=2"])
        .args(sets.iter().flat_map(|s| ["--set", s]))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    let sink = ChildGuard::spawn("swarmscan sink", &mut cmd);
    let limit = Instant::now() + Duration::from_secs(20);
    while !read_to_string_lossy(log).contains("listening") {
        assert!(
            Instant::now() < limit,
            "the sink did not start: {}",
            read_to_string_lossy(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sink
}

/// SIGINT, then the sink's JSON summary (it must stop by itself, exit 0).
fn stop_sink(mut sink: ChildGuard, log: &Path) -> Json {
    // Safety: kill(2) on our own child's pid.
    unsafe { libc::kill(sink.child.id() as i32, libc::SIGINT) };
    let status = sink
        .wait_timeout(Duration::from_secs(20))
        .expect("the sink stops on SIGINT");
    assert!(status.success(), "{}", read_to_string_lossy(log));
    let mut out = String::new();
    std::io::Read::read_to_string(sink.child.stdout.as_mut().unwrap(), &mut out).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn swarmscan(args: &[&str], db: &Path) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .args(["--set", &db_set(db)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

/// (transport, protocol, dst_port, details JSON) of every stored flow.
fn flows(db: &Path) -> Vec<(String, String, u16, Json)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT transport, protocol, dst_port, details FROM sink_flows ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| {
        let details: Option<String> = r.get(3)?;
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            details.map_or(Json::Null, |d| serde_json::from_str(&d).unwrap()),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn ten_kinds_of_traffic_are_classified_and_reported() {
    let py = python_with_libtorrent();
    let dir = test_dir("sink-");
    let db = dir.path().join("sink.sqlite");
    let log = dir.path().join("sink.log");
    let port = common::free_port_on_all(&["127.0.0.1"]);
    let sink = start_sink(&[], &db, &format!("127.0.0.1:{port}"), &log);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/sink_clients.py");
    let mut clients = ChildGuard::spawn(
        "sink_clients.py",
        Command::new(&py)
            .arg(&script)
            .args(["127.0.0.1", &port.to_string()])
            .stdout(Stdio::piped()),
    );
    assert!(
        clients
            .wait_timeout(Duration::from_secs(60))
            .is_some_and(|s| s.success()),
        "sink_clients.py failed or hung"
    );
    let mut said = String::new();
    std::io::Read::read_to_string(clients.child.stdout.as_mut().unwrap(), &mut said).unwrap();
    let said: Json = serde_json::from_str(said.trim()).unwrap();
    let summary = stop_sink(sink, &log);

    let flows = flows(&db);
    assert_eq!(
        summary["stored"].as_u64(),
        Some(flows.len() as u64),
        "{summary}"
    );
    let of = |protocol: &str| -> Vec<&(String, String, u16, Json)> {
        flows.iter().filter(|f| f.1 == protocol).collect()
    };
    let show = format!("{flows:#?}");
    // Every kind arrived and was recognised, on the transport it uses.
    for (protocol, transport) in [
        ("bittorrent", "tcp"),
        ("mse", "tcp"),
        ("utp", "udp"),
        ("krpc", "udp"),
        ("udp_tracker", "udp"),
        ("http", "tcp"),
        ("tls", "tcp"),
        ("gnutella", "tcp"),
        ("edonkey", "tcp"),
        ("other", "tcp"),
    ] {
        let found = of(protocol);
        assert!(!found.is_empty(), "no {protocol} flow: {show}");
        assert!(
            found.iter().all(|f| f.0 == transport && f.2 == port),
            "{protocol}: {show}"
        );
    }
    // What each kind's first bytes said.
    let prefix_hex: String = said["peer_id_prefix"]
        .as_str()
        .unwrap()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    for f in of("bittorrent") {
        assert_eq!(f.3["info_hash"], said["info_hash"], "{show}");
        assert!(
            f.3["peer_id"].as_str().unwrap().starts_with(&prefix_hex),
            "{show}"
        );
    }
    assert!(
        of("tls").iter().all(|f| f.3["host"] == said["sni"]),
        "{show}"
    );
    assert!(
        of("http")
            .iter()
            .all(|f| f.3["host"] == said["http_host"] && f.3["kind"] == "GET"),
        "{show}"
    );
    assert!(of("utp").iter().all(|f| f.3["kind"] == "syn"), "{show}");
    assert!(
        of("udp_tracker").iter().all(|f| f.3["kind"] == "connect"),
        "{show}"
    );
    assert!(
        of("krpc").iter().all(|f| matches!(
            f.3["kind"].as_str(),
            Some("ping" | "find_node" | "get_peers")
        )),
        "{show}"
    );
    assert!(
        of("other")
            .iter()
            .all(|f| f.3["first_bytes"].as_str().unwrap().starts_with("0007")),
        "{show}"
    );

    // The report: JSON counts equal the rows; text tables name every protocol.
    let json: Json =
        serde_json::from_slice(&swarmscan(&["report", "--sink", "--json"], &db).stdout).unwrap();
    let protocols = json["protocols"].as_object().unwrap();
    assert_eq!(protocols.len(), 10, "{json}");
    for (name, n) in protocols {
        assert_eq!(n.as_u64(), Some(of(name).len() as u64), "{name}: {json}");
    }
    assert_eq!(json["sources"], 1, "every client is on 127.0.0.1: {json}");
    assert_eq!(json["requests"].as_u64(), Some(flows.len() as u64));
    assert_eq!(
        json["requests_per_source"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["share"],
        1.0
    );
    assert_eq!(
        json["sink_addresses"][0]["key"],
        format!("127.0.0.1:{port}"),
        "{json}"
    );
    assert_eq!(json["countries"][0]["key"], "?", "no geo.city_db: {json}");
    assert_eq!(
        json["local_time_from"]["unknown"].as_u64(),
        Some(flows.len() as u64)
    );
    let report = text(&swarmscan(&["report", "--sink"], &db).stdout);
    for needle in [
        "Requests by protocol (table I)",
        "Requests per source, CDF (fig. 3)",
        "Requests per sink address, CDF (fig. 4)",
        "Source countries (fig. 5",
        "Sender's local time (figs. 7-8)",
    ] {
        assert!(report.contains(needle), "{needle}: {report}");
    }
    for (name, n) in protocols {
        let row = report
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no row for {name}: {report}"));
        assert_eq!(
            row.split_whitespace().nth(1),
            Some(n.to_string().as_str()),
            "{row}"
        );
    }
    let plots = dir.path().join("plots");
    swarmscan(
        &["report", "--sink", "--plots", plots.to_str().unwrap()],
        &db,
    );
    for name in [
        "sink_protocols",
        "sink_requests_cdf",
        "sink_countries",
        "sink_local_hour",
        "sink_local_weekday",
    ] {
        for ext in ["svg", "png"] {
            let file: PathBuf = plots.join(format!("{name}.{ext}"));
            assert!(
                std::fs::metadata(&file).is_ok_and(|m| m.len() > 200),
                "{}",
                file.display()
            );
        }
    }
    // Without geo.city_db the local-time figures say why they are empty.
    let hour = std::fs::read_to_string(plots.join("sink_local_hour.svg")).unwrap();
    assert!(hour.contains("local time unknown"), "{hour}");
}

/// Runs `args` (a command line), failing with its output.
fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Two network namespaces joined by veth, deleted on drop.
struct Namespaces {
    sink: String,
    client: String,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.sink, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn every_port_of_the_address_arrives_with_its_original_destination() {
    // Safety: geteuid(2) has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!(
            "SKIPPED: the redirect test needs root, ip and nft to build network namespaces \
             (root: {root}, tools: {tools})"
        );
        return;
    }
    let id = std::process::id();
    let ns = Namespaces {
        sink: format!("ss-sink-{id}"),
        client: format!("ss-cli-{id}"),
    };
    let (veth_sink, veth_client) = (format!("sss{id}"), format!("ssc{id}"));
    sh(&["ip", "netns", "add", &ns.sink]);
    sh(&["ip", "netns", "add", &ns.client]);
    sh(&[
        "ip",
        "link",
        "add",
        &veth_sink,
        "netns",
        &ns.sink,
        "type",
        "veth",
        "peer",
        "name",
        &veth_client,
        "netns",
        &ns.client,
    ]);
    for (space, dev, addr) in [
        (&ns.sink, &veth_sink, "10.77.0.1/24"),
        (&ns.client, &veth_client, "10.77.0.2/24"),
    ] {
        sh(&["ip", "-n", space, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", space, "link", "set", dev, "up"]);
        sh(&["ip", "-n", space, "link", "set", "lo", "up"]);
    }
    // The shipped rules, with this test's address and port.
    let sink_port = free_tcp_port("127.0.0.1");
    let rules = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/sink-redirect.nft"),
    )
    .unwrap()
    .lines()
    .map(|l| match l {
        l if l.starts_with("define sink_addr") => "define sink_addr = 10.77.0.1".to_string(),
        l if l.starts_with("define sink_port") => format!("define sink_port = {sink_port}"),
        l => l.to_string(),
    })
    .collect::<Vec<_>>()
    .join("\n");
    let dir = test_dir("sink-redirect-");
    let rules_file = dir.path().join("rules.nft");
    std::fs::write(&rules_file, rules).unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns.sink,
        "nft",
        "-f",
        rules_file.to_str().unwrap(),
    ]);
    let db = dir.path().join("sink.sqlite");
    let log = dir.path().join("sink.log");
    let sink = start_sink(
        &["ip", "netns", "exec", &ns.sink],
        &db,
        &format!("10.77.0.1:{sink_port}"),
        &log,
    );
    // From the other namespace: TCP to ports 6881 and 51413, UDP to 6881 and 4444.
    let client = r#"
import socket, sys, time
for port in (6881, 51413):
    s = socket.create_connection(("10.77.0.1", port), timeout=5)
    s.sendall(b"\x13BitTorrent protocol" + bytes(48))
    s.close()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in (6881, 4444):
    u.sendto(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", ("10.77.0.1", port))
time.sleep(0.5)
"#;
    sh(&["ip", "netns", "exec", &ns.client, "python3", "-c", client]);
    std::thread::sleep(Duration::from_millis(500));
    let summary = stop_sink(sink, &log);
    let mut got: Vec<(String, String, u16)> =
        flows(&db).into_iter().map(|f| (f.0, f.1, f.2)).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("tcp".into(), "bittorrent".into(), 6881),
            ("tcp".into(), "bittorrent".into(), 51413),
            ("udp".into(), "krpc".into(), 4444),
            ("udp".into(), "krpc".into(), 6881),
        ],
        "{summary}"
    );
}

/// The sender's local time and country come from `geo.city_db` (looked up with the real
/// address): a Tokyo sender by its time zone, a New York one by its longitude (-74° → UTC-5),
/// an unknown one counted as unknown.
#[test]
fn local_time_and_country_come_from_the_city_database() {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let dir = test_dir("sink-geo-");
    let city = dir.path().join("city.mmdb");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/write_sink_geo_mmdb.py");
    let out = Command::new(&py).arg(&script).arg(&city).output().unwrap();
    assert!(
        out.status.success(),
        "{py} {}: this test needs PyPI mmdb-writer (scripts/test installs it): {}",
        script.display(),
        text(&out.stderr)
    );
    let db = dir.path().join("sink.sqlite");
    let log = dir.path().join("sink.log");
    let port = common::free_port_on_all(&["127.0.0.1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args(["sink", "--json", "--for", "60s"])
        .args(["--set", &db_set(&db)])
        .args(["--set", &format!("sink.tcp=[\"{addr}\"]")])
        .args(["--set", &format!("sink.udp=[\"{addr}\"]")])
        .args([
            "--set",
            &format!("geo.city_db={:?}", city.display().to_string()),
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let sink = ChildGuard::spawn("swarmscan sink", &mut cmd);
    let limit = Instant::now() + Duration::from_secs(20);
    while !read_to_string_lossy(&log).contains("listening") {
        assert!(Instant::now() < limit, "{}", read_to_string_lossy(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    // One connection from each sender address.
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let from: std::net::SocketAddr = format!("{source}:0").parse().unwrap();
        socket.bind(&from.into()).unwrap();
        let to: std::net::SocketAddr = addr.parse().unwrap();
        socket.connect(&to.into()).unwrap();
        let mut stream: std::net::TcpStream = socket.into();
        std::io::Write::write_all(&mut stream, b"GNUTELLA CONNECT/0.6\r\n\r\n").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    stop_sink(sink, &log);
    let json: Json =
        serde_json::from_slice(&swarmscan(&["report", "--sink", "--json"], &db).stdout).unwrap();
    assert_eq!(json["sources"], 3, "{json}");
    assert_eq!(
        json["local_time_from"],
        serde_json::json!({"time_zone": 1, "longitude": 1, "unknown": 1}),
        "{json}"
    );
    let countries: Vec<(String, u64)> = json["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["key"].as_str().unwrap().to_string(),
                c["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    for country in ["JP", "US", "?"] {
        assert!(countries.contains(&(country.to_string(), 1)), "{json}");
    }
    // Tokyo is UTC+9 all year; -74° is UTC-5: the two hours are the first request's UTC hour
    // shifted (the three connections lie within a second; a test across an hour boundary
    // would see the two hours one apart from what is computed here, so take them from the
    // stored first_at of each).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let hour_of = |country: &str, shift: i64| -> usize {
        let at: i64 = conn
            .query_row(
                "SELECT first_at FROM sink_flows WHERE country = ?1",
                [country],
                |r| r.get(0),
            )
            .unwrap();
        ((at / 3_600_000 + shift).rem_euclid(24)) as usize
    };
    let mut expected = vec![0u64; 24];
    expected[hour_of("JP", 9)] += 1;
    expected[hour_of("US", -5)] += 1;
    let hours: Vec<u64> = json["local_hour"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    assert_eq!(hours, expected, "{json}");
    assert_eq!(
        json["local_weekday"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .sum::<u64>(),
        2
    );
    let report = text(&swarmscan(&["report", "--sink"], &db).stdout);
    assert!(
        report.contains("1 by GeoIP time zone, 1 by longitude, 1 unknown"),
        "{report}"
    );
}

/// Sends one UDP datagram from a fresh socket to `addr`.
fn knock(addr: &str, bytes: &[u8]) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(bytes, addr).unwrap();
}

fn sink_flow_count(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM sink_flows", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_sink_holds_its_database_against_a_second_sink_a_crawl_and_a_run_and_survives_add() {
    let dir = test_dir("sink-lock-");
    let db = dir.path().join("sink.sqlite");
    let pid_file = dir.path().join("sink.sqlite.pid");
    let log = dir.path().join("sink.log");
    let port = common::free_port_on_all(&["127.0.0.1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut sink = start_sink(&[], &db, &addr, &log);
    let pid = sink.child.id();
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{pid}\nsink\n"),
        "the lock file names the sink"
    );

    let hash = "0123456789abcdef0123456789abcdef01234567";
    let other = common::free_port_on_all(&["127.0.0.1"]);
    let listen = format!("net.listen=[\"127.0.0.1:{other}\"]");
    let sink_tcp = format!("sink.tcp=[\"127.0.0.1:{other}\"]");
    let sink_udp = format!("sink.udp=[\"127.0.0.1:{other}\"]");
    let bootstrap = format!("dht.bootstrap=[\"127.0.0.1:{other}\"]");
    for (args, sets) in [
        (vec!["sink", "--for", "5s"], vec![&sink_tcp, &sink_udp]),
        (vec!["crawl", "--for", "5s"], vec![&listen, &bootstrap]),
        (vec!["run", "--for", "5s", hash], vec![&listen]),
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .args(["--set", &db_set(&db)])
            .args(sets.iter().flat_map(|s| ["--set", s.as_str()]))
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(&format!(
                "swarmscan: {}: the database {}",
                args[0],
                db.display()
            )) && err.contains(&format!("in use by a running `swarmscan sink` (pid {pid}"))
                && err.contains("sink.sqlite.pid"),
            "{args:?}: {err}"
        );
    }
    // `add` stores the torrent and names the sink instead of signalling it.
    let added = text(&swarmscan(&["add", hash], &db).stdout);
    assert!(
        added.contains(&format!(
            "a `swarmscan sink` (pid {pid}) holds this database"
        )),
        "{added}"
    );
    // A SIGUSR1 from elsewhere (an older `add`, a hand) does not end it either.
    // Safety: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "the sink ended on SIGUSR1 or add: {}",
        read_to_string_lossy(&log)
    );
    knock(&addr, b"still listening");
    std::thread::sleep(Duration::from_millis(300));
    let summary = stop_sink(sink, &log);
    assert_eq!(summary["stored"], 1, "{summary}");
    assert_eq!(sink_flow_count(&db), 1);
    assert!(!pid_file.exists(), "the lock file goes with the sink");
}

#[test]
fn a_sighup_does_not_end_a_sink_and_it_says_nothing_was_reloaded() {
    let dir = test_dir("sink-hup-");
    let db = dir.path().join("sink.sqlite");
    let log = dir.path().join("sink.log");
    let port = common::free_port_on_all(&["127.0.0.1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut sink = start_sink(&[], &db, &addr, &log);
    knock(&addr, b"before the reload");
    // What `systemctl reload` (ExecReload=kill -HUP) or a logrotate postrotate sends.
    let pid = sink.child.id() as i32;
    // Safety: kill(2) on our own child's pid.
    let sent = unsafe { libc::kill(pid, libc::SIGHUP) };
    assert_eq!(sent, 0);
    let limit = Instant::now() + Duration::from_secs(10);
    while !read_to_string_lossy(&log).contains("SIGHUP") {
        assert!(
            Instant::now() < limit && sink.child.try_wait().unwrap().is_none(),
            "no word on SIGHUP: {}",
            read_to_string_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        sink.child.try_wait().unwrap().is_none(),
        "the sink ended on SIGHUP: {}",
        read_to_string_lossy(&log)
    );
    assert!(
        read_to_string_lossy(&log).contains(
            "SIGHUP: `swarmscan sink` reads its configuration only at start; nothing reloaded, it goes on"
        ),
        "{}",
        read_to_string_lossy(&log)
    );
    knock(&addr, b"after the reload");
    std::thread::sleep(Duration::from_millis(300));
    // Both flows, the one open across the SIGHUP and the one after it.
    let summary = stop_sink(sink, &log);
    assert_eq!(summary["stored"], 2, "{summary}");
    assert_eq!(sink_flow_count(&db), 2);
}

#[test]
fn a_database_that_stays_unwritable_stops_the_sink_with_a_clear_error_keeping_what_was_stored() {
    let dir = test_dir("sink-unwritable-");
    let db = dir.path().join("sink.sqlite");
    let log = dir.path().join("sink.log");
    let port = common::free_port_on_all(&["127.0.0.1"]);
    let addr = format!("127.0.0.1:{port}");
    let mut sink = start_sink_with(
        &[],
        &db,
        &addr,
        &log,
        &["sink.idle_secs=0.2", "store.unwritable_secs=2"],
    );
    // A flow stored while the database takes commits.
    knock(&addr, b"before");
    let limit = Instant::now() + Duration::from_secs(20);
    while sink_flow_count(&db) < 1 {
        assert!(Instant::now() < limit, "{}", read_to_string_lossy(&log));
        std::thread::sleep(Duration::from_millis(50));
    }
    // Another connection holds the database's write lock: every commit of the sink's writer
    // is refused ("database is locked", after SQLite's 5 s busy wait), as on a full disk.
    let blocker = rusqlite::Connection::open(&db).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let locked_at = Instant::now();
    knock(&addr, b"while locked");
    let status = sink.wait_timeout(Duration::from_secs(60));
    let took = locked_at.elapsed();
    let stderr = read_to_string_lossy(&log);
    eprintln!(
        "exit {status:?} {:.1} s after the lock; stderr:\n{stderr}",
        took.as_secs_f64()
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the sink stops by itself (long before --for 120s) with a non-zero exit"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!("swarmscan: sink: the database {}", db.display()))
            && last.contains("stayed unwritable")
            && last.contains("store.unwritable_secs = 2")
            && last.contains("records not stored"),
        "a clear last word: {last:?}"
    );
    assert!(stderr.contains("stopping the sink"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    // What was committed before stays; the lock went with the sink.
    assert_eq!(sink_flow_count(&db), 1);
    assert!(!dir.path().join("sink.sqlite.pid").exists());
}

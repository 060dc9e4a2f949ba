//! DHT node ids kept across runs: three consecutive `swarmscan run`s on one database, each
//! bootstrapping from three small DHT responders this test runs on 127.0.0.2–4. The responders
//! answer every query with an empty node list and the `ip` field (BEP 42) naming the address
//! the test says we have, so the three of them outvote nothing and decide our external address.
//!
//! * run 1 (we are 203.0.113.5): starts with a new id, derives a BEP 42 id for that address;
//! * run 2 (same address): starts with run 1's derived id, and keeps it;
//! * run 3 (we moved to 198.51.100.20): starts with it too, then derives a new one for the new
//!   address, and the database keeps the new one with the new address.
//!
//! swarmscan runs on its defaults except the database, listen address, `dht.bootstrap` and
//! `privacy.ip` left at its default (`hmac`): our own address is stored as is (it is not a
//! peer's). Every wait is bounded; SWARMSCAN_KEEP_TEST_DIR=1 keeps the logs and the database.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use swarmscan::proto::hex;
use swarmscan::proto::krpc::{bep42_id_matches, decode, Body, Id20, Message, Response};

mod common;
use common::process::{read_to_string_lossy, ChildGuard};
use common::{free_port_on_all, test_dir};

const RESPONDERS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// DHT nodes that answer every query (find_node, get_peers, ping, …) with no nodes, a token,
/// and `ip` = the address in `claimed`.
struct Responders {
    claimed: Arc<Mutex<IpAddr>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<u64>>,
}

impl Responders {
    fn start(port: u16, claimed: IpAddr) -> Responders {
        let claimed = Arc::new(Mutex::new(claimed));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = RESPONDERS
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                let socket = UdpSocket::bind((ip.parse::<IpAddr>().unwrap(), port)).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(100)))
                    .unwrap();
                let (claimed, stop) = (claimed.clone(), stop.clone());
                let id = Id20([0x40 + i as u8; 20]);
                std::thread::spawn(move || {
                    let mut answered = 0u64;
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok((n, from)) = socket.recv_from(&mut buf) else {
                            continue;
                        };
                        let Ok(query) = decode(&buf[..n]) else {
                            continue;
                        };
                        if !matches!(query.body, Body::Query(_)) {
                            continue;
                        }
                        let mut reply = Message::new(
                            query.transaction_id,
                            Body::Response(Response {
                                id,
                                nodes: Some(Vec::new()),
                                token: Some(b"token".to_vec()),
                                ..Response::default()
                            }),
                        );
                        let ours = *claimed.lock().unwrap();
                        reply.external_ip = Some(SocketAddr::new(ours, from.port()));
                        if socket.send_to(&reply.encode(), from).is_ok() {
                            answered += 1;
                        }
                    }
                    answered
                })
            })
            .collect();
        Responders {
            claimed,
            stop,
            threads,
        }
    }

    fn claim(&self, ip: IpAddr) {
        *self.claimed.lock().unwrap() = ip;
    }

    /// Stops the threads; the queries answered by each.
    fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect()
    }
}

/// One `swarmscan run` of a few seconds; its log (info level).
fn run_once(dir: &Path, config: &Path, name: &str) -> String {
    let log_path = dir.join(format!("{name}.log"));
    let mut scan = ChildGuard::spawn(
        "swarmscan run",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--for", "4s"])
            .arg(format!("magnet:?xt=urn:btih:{}", "ab".repeat(20)))
            .env("SWARMSCAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap()),
    );
    let status = scan.wait_timeout(Duration::from_secs(40));
    let log = read_to_string_lossy(&log_path);
    assert!(
        status.is_some_and(|s| s.success()),
        "swarmscan run ({name}) failed or hung ({status:?}): {log}"
    );
    log
}

/// The value of ` key=` on the first log line containing `marker`, if any.
fn field(log: &str, marker: &str, key: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    Some(
        line[at..]
            .split(|c: char| c.is_whitespace())
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// Node 0's id at start, whether it was kept, and the id BEP 42 gave it during the run.
fn ids_of(log: &str) -> (String, String, Option<String>) {
    let started = field(log, "DHT node started", "id")
        .unwrap_or_else(|| panic!("no 'DHT node started' line: {log}"));
    let kept = field(log, "DHT node started", "kept").unwrap();
    let derived = field(log, "node id now derived", "id");
    (started, kept, derived)
}

/// The database's node ids: (node, id in hex, external address).
fn stored_ids(db: &Path) -> Vec<(i64, String, Option<String>)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT node, node_id, external_ip FROM dht_node_ids ORDER BY node")
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            hex::encode(&r.get::<_, Vec<u8>>(1)?),
            r.get::<_, Option<String>>(2)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn id20(hex_id: &str) -> Id20 {
    Id20(hex::decode_array::<20>(hex_id).unwrap())
}

#[test]
fn node_ids_are_kept_across_runs_until_our_address_changes() {
    let tmp = test_dir("swarmscan-dht-ids-");
    let dir = tmp.path();
    let listen_port = free_port_on_all(&["127.0.0.1"]);
    let responder_port = free_port_on_all(&RESPONDERS);
    let first_ip: IpAddr = "203.0.113.5".parse().unwrap();
    let moved_ip: IpAddr = "198.51.100.20".parse().unwrap();
    let responders = Responders::start(responder_port, first_ip);

    let db = dir.join("scan.sqlite");
    let config = dir.join("swarmscan.toml");
    let bootstrap: Vec<String> = RESPONDERS
        .iter()
        .map(|ip| format!("\"{ip}:{responder_port}\""))
        .collect();
    std::fs::write(
        &config,
        format!(
            "database = {db:?}\n\
             [net]\nlisten = [\"127.0.0.1:{listen_port}\"]\n\
             [dht]\nbootstrap = [{}]\n",
            bootstrap.join(", ")
        ),
    )
    .unwrap();

    // Run 1: a new id, then one derived for our address.
    let log1 = run_once(dir, &config, "run1");
    let (start1, kept1, derived1) = ids_of(&log1);
    assert_eq!(kept1, "false", "a new database has no id to keep");
    let derived1 = derived1.unwrap_or_else(|| panic!("no BEP 42 id in run 1: {log1}"));
    assert_ne!(derived1, start1);
    assert!(bep42_id_matches(&id20(&derived1), first_ip));
    assert_eq!(
        stored_ids(&db),
        [(0, derived1.clone(), Some(first_ip.to_string()))]
    );

    // Run 2, same address: the same id, from start to end.
    let log2 = run_once(dir, &config, "run2");
    let (start2, kept2, derived2) = ids_of(&log2);
    assert_eq!(
        (start2.as_str(), kept2.as_str()),
        (derived1.as_str(), "true")
    );
    assert_eq!(derived2, None, "the kept id fits our address: {log2}");
    assert!(
        log2.contains("DHT: our external address"),
        "the vote happened in run 2 too: {log2}"
    );
    assert_eq!(
        stored_ids(&db),
        [(0, derived1.clone(), Some(first_ip.to_string()))]
    );

    // Run 3, our address moved: the kept id is used until the vote says so, then replaced.
    responders.claim(moved_ip);
    let log3 = run_once(dir, &config, "run3");
    let (start3, kept3, derived3) = ids_of(&log3);
    assert_eq!(
        (start3.as_str(), kept3.as_str()),
        (derived1.as_str(), "true")
    );
    let derived3 = derived3.unwrap_or_else(|| panic!("no new BEP 42 id in run 3: {log3}"));
    assert_ne!(derived3, derived1);
    assert!(bep42_id_matches(&id20(&derived3), moved_ip));
    assert_eq!(
        stored_ids(&db),
        [(0, derived3.clone(), Some(moved_ip.to_string()))]
    );

    let answered = responders.stop();
    assert!(answered.iter().all(|&n| n > 0), "answered {answered:?}");
    eprintln!(
        "dht node ids: run 1 {start1} -> {derived1}, run 2 kept it, run 3 -> {derived3}; \
         responders answered {answered:?}"
    );
}

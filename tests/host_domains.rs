//! Host domains from reverse DNS, end to end: `swarmscan run` on the built-in simulated swarm
//! (loopback) with `geo.reverse_dns` on and `geo.dns_resolver` pointing at a DNS responder this
//! test runs on 127.0.0.1. The responder answers PTR queries for the swarm's addresses with
//! names under two domains, NXDOMAIN or an empty answer for others, and records every query.
//! Checked: the stored host domain of every peer is the registrable domain of its name (under
//! the default `privacy.ip = "hmac"`), peers without a name have none, the queries keep to
//! `geo.reverse_dns_per_sec`, a second run asks only about addresses the first did not, and the
//! report's host-domain table shows the data.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use simple_dns::rdata::{RData, PTR};
use simple_dns::{Name, Packet, ResourceRecord, CLASS, RCODE};
use swarmscan::config::IpMode;
use swarmscan::sim::{SimOptions, SimSwarm};
use swarmscan::store::anon::Anonymizer;

const BIN: &str = env!("CARGO_BIN_EXE_swarmscan");
/// Second octet of the simulated peers' addresses (127.OCTET.torrent.n).
const OCTET: u8 = 141;
const PER_SEC: f64 = 4.0;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The responder's zone: a name for most of the swarm, none for every fourth peer.
fn ptr_name(ip: IpAddr) -> Result<Option<String>, ()> {
    let IpAddr::V4(v4) = ip else { return Err(()) };
    match v4.octets() {
        [127, OCTET, _, n] if n % 4 == 0 => Ok(None),
        [127, OCTET, 0, n] => Ok(Some(format!("peer{n}.dsl.example-isp.co.uk"))),
        [127, OCTET, 1, n] => Ok(Some(format!("node{n}.fast-seedbox.com.au"))),
        _ => Err(()),
    }
}

/// The host domain a peer at `ip` must get.
fn expected_domain(ip: IpAddr) -> Option<&'static str> {
    let IpAddr::V4(v4) = ip else { return None };
    match v4.octets() {
        [_, _, _, n] if n % 4 == 0 => None,
        [_, _, 0, _] => Some("example-isp.co.uk"),
        _ => Some("fast-seedbox.com.au"),
    }
}

/// "4.3.2.1.in-addr.arpa" → 1.2.3.4
fn address_of(reverse: &str) -> Option<IpAddr> {
    let labels: Vec<&str> = reverse.strip_suffix(".in-addr.arpa")?.split('.').collect();
    let octets: Vec<u8> = labels
        .iter()
        .rev()
        .map(|l| l.parse().ok())
        .collect::<Option<_>>()?;
    Some(IpAddr::from(<[u8; 4]>::try_from(octets).ok()?))
}

/// A DNS responder on 127.0.0.1: answers PTR queries from its zone and records (time, address)
/// of each.
struct Responder {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<(Instant, IpAddr)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    fn start() -> Responder {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (queries.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                let query = Packet::parse(&buf[..n]).expect("a DNS query");
                let question = query.questions[0].clone();
                let qname = question.qname.to_string();
                let ip = address_of(&qname).expect("an in-addr.arpa question");
                q.lock().unwrap().push((Instant::now(), ip));
                let name = ptr_name(ip);
                let mut reply = Packet::new_reply(query.id());
                reply.questions.push(question.clone());
                match &name {
                    Ok(Some(name)) => reply.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        300,
                        RData::PTR(PTR(Name::new_unchecked(name))),
                    )),
                    // NXDOMAIN for one torrent's nameless peers, an empty answer for the other's.
                    Ok(None) if ip.to_string().split('.').nth(2) == Some("0") => {
                        *reply.rcode_mut() = RCODE::NameError
                    }
                    Ok(None) => {}
                    Err(()) => *reply.rcode_mut() = RCODE::Refused,
                }
                socket
                    .send_to(&reply.build_bytes_vec().unwrap(), from)
                    .unwrap();
            }
        });
        Responder {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }

    fn take(&self) -> Vec<(Instant, IpAddr)> {
        std::mem::take(&mut *self.queries.lock().unwrap())
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn set(key: &str, value: &Path) -> String {
    format!("{key}={:?}", value.display().to_string())
}

/// `swarmscan run` for a few seconds on the defaults but for the database, a free listen
/// port, the interval and reverse DNS.
fn scan(dir: &Path, sim: &SimSwarm, db: &Path, resolver: SocketAddr) {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--for", "6s"])
        .args(["--set", &set("database", db)])
        .args([
            "--set",
            &format!("net.listen=[\"127.0.0.1:{}\"]", free_port()),
        ])
        .args(["--set", "geo.reverse_dns=true"])
        .args(["--set", &format!("geo.dns_resolver=\"{resolver}\"")])
        .args(["--set", &format!("geo.reverse_dns_per_sec={PER_SEC}")]);
    for (i, bytes) in sim.torrent_files.iter().enumerate() {
        let path = dir.join(format!("t{i}.torrent"));
        std::fs::write(&path, bytes).unwrap();
        cmd.arg(path);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

fn swarmscan(args: &[&str], db: &Path) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .args(["--set", &set("database", db)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    out
}

/// The queries keep to the rate: never more than the token bucket allows (one at once, then
/// PER_SEC a second) between any two of them; 50 ms of slack for scheduling.
fn assert_rate(queries: &[(Instant, IpAddr)]) {
    for (i, first) in queries.iter().enumerate() {
        for (j, later) in queries.iter().enumerate().skip(i + 1) {
            let secs = later.0.duration_since(first.0).as_secs_f64() + 0.05;
            assert!(
                (j - i) as f64 <= 1.0 + PER_SEC * secs,
                "{} queries in {secs:.2} s at {PER_SEC}/s",
                j - i + 1
            );
        }
    }
}

#[test]
fn a_scan_fills_host_domains_from_a_loopback_resolver_at_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimSwarm::start(&SimOptions {
        torrents: 2,
        peers_per_torrent: 20,
        horizon_secs: 8.0,
        addr_octet: OCTET,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap();
    let dns = Responder::start();
    let db = dir.path().join("rdns.sqlite");

    // Run 1: more addresses than the rate allows in the run.
    scan(dir.path(), &sim, &db, dns.addr);
    let first = dns.take();
    assert_rate(&first);
    let mut asked: Vec<IpAddr> = first.iter().map(|q| q.1).collect();
    asked.sort();
    asked.dedup();
    assert_eq!(
        asked.len(),
        first.len(),
        "no address asked twice: {first:?}"
    );
    assert!(
        (10..(6.0 * PER_SEC) as usize + 4).contains(&first.len()),
        "{} queries in a 6 s run at {PER_SEC}/s",
        first.len()
    );

    // Run 2: only addresses run 1 did not ask about (answers are cached in the database).
    scan(dir.path(), &sim, &db, dns.addr);
    let second = dns.take();
    assert_rate(&second);
    for q in &second {
        assert!(!asked.contains(&q.1), "{} asked again", q.1);
    }
    asked.extend(second.iter().map(|q| q.1));

    let key: [u8; 32] = std::fs::read(dir.path().join("rdns.sqlite.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let hmac = Anonymizer::new(IpMode::Hmac, key);
    let peers: Vec<Json> = text(&swarmscan(&["peers", "--json"], &db).stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (mut named, mut nameless, mut not_asked) = (0, 0, 0);
    let mut by_domain = std::collections::BTreeMap::<&str, i64>::new();
    for p in &sim.peers.peers {
        let shown = hmac.anonymize(p.addr.ip()).shown;
        let Some(row) = peers
            .iter()
            .find(|r| r["ip"] == shown.as_str() && r["port"] == p.addr.port())
        else {
            continue;
        };
        if !asked.contains(&p.addr.ip()) {
            // A peer whose query was still waiting when run 1 ended and that left the swarm
            // before run 2 (its address never reached the writer again).
            assert!(row["host_domain"].is_null(), "{}: {row}", p.addr);
            not_asked += 1;
            continue;
        }
        let expected = expected_domain(p.addr.ip());
        assert_eq!(row["host_domain"].as_str(), expected, "{}: {row}", p.addr);
        match expected {
            Some(d) => {
                named += 1;
                *by_domain.entry(d).or_default() += 1;
            }
            None => nameless += 1,
        }
    }
    assert_eq!(
        named + nameless + not_asked,
        peers.len(),
        "every stored peer is a peer of the swarm"
    );
    eprintln!(
        "queries: {} in run 1, {} in run 2; peers: {named} named {by_domain:?}, {nameless} without a name, {not_asked} not asked",
        first.len(),
        second.len()
    );
    assert!(
        named > 15 && nameless > 3 && by_domain.len() == 2,
        "{named} named, {nameless} without a name, {not_asked} not asked: {by_domain:?}"
    );
    // Neither addresses nor PTR names are stored: only keyed hashes and registrable domains.
    let dump = std::fs::read(&db).unwrap();
    let needle = format!("127.{OCTET}.");
    assert!(!dump.windows(needle.len()).any(|w| w == needle.as_bytes()));
    assert!(!dump.windows(9).any(|w| w == b"peer1.dsl"));

    // The report's host-domain table.
    let report: Json =
        serde_json::from_slice(&swarmscan(&["report", "--json"], &db).stdout).unwrap();
    let table = &report["study"]["host_domains"];
    let rows: std::collections::BTreeMap<&str, i64> = table["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["label"] == "(all)" || r["label"].is_null() || r["label"] == "(none)")
        .map(|r| (r["key"].as_str().unwrap(), r["peers"].as_i64().unwrap()))
        .collect();
    assert_eq!(rows, by_domain, "{table}");
    let report_text = text(&swarmscan(&["report"], &db).stdout);
    assert!(
        report_text.contains("Host domains (registrable domain of the reverse DNS name)")
            && report_text.contains("example-isp.co.uk")
            && report_text.contains("fast-seedbox.com.au")
            && report_text.contains(&format!(
                "reverse DNS answered for {} peers: {named} with a name, {nameless} without one",
                named + nameless
            )),
        "{report_text}"
    );
}

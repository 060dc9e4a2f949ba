//! Hostile peers against the real binary, on swarmscan's defaults (plus a database, a listener,
//! full addresses in the store and, where a test needs visits again and again, a short revisit
//! interval). Each hostile peer is a small server in this process on 127.0.0.100–127.0.0.200;
//! swarmscan finds them through a tracker of this test (torrents known by a .torrent file) or
//! the `x.pe` addresses of a magnet link (torrents known by hash). Every test asserts time
//! (measured by the peers: how long swarmscan kept each connection), memory (the swarmscan
//! process's VmHWM) and classification (what the database holds).
//!
//! The tests of this file run one at a time (they compare rates within a run, which a second
//! scan on the same two cores would skew).

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::{free_tcp_port, read_to_string_lossy, ChildGuard};
use swarmscan::proto::bencode::OwnedValue;
use swarmscan::proto::hex;
use swarmscan::proto::metainfo::Metainfo;
use swarmscan::proto::peer_wire::ext::{ExtHandshake, MetadataMessage};
use swarmscan::proto::peer_wire::{encode_handshake, Message, MessageReader, Reserved};
use swarmscan::proto::probe::OUR_UT_METADATA_ID;

/// One test at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Runs `f` on a thread with a small stack (hundreds of fake peers run at once).
fn spawn_small(f: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new()
        .stack_size(128 << 10)
        .spawn(f)
        .is_ok()
}

/// One connection a fake peer accepted: when, and when swarmscan closed it.
#[derive(Debug, Clone, Copy)]
struct Conn {
    accepted: Instant,
    ended: Option<Instant>,
}

type Behaviour = Arc<dyn Fn(TcpStream) + Send + Sync>;

/// A fake peer: a listener on `ip`:(any port) that runs `behaviour` on every connection (each
/// on its own thread) and logs the connections. Its threads live until the test process ends.
struct FakePeer {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Conn>>>,
}

impl FakePeer {
    fn start(ip: IpAddr, behaviour: Behaviour) -> FakePeer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let accept_log = log.clone();
        assert!(spawn_small(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let idx = {
                    let mut log = accept_log.lock().unwrap();
                    log.push(Conn {
                        accepted: Instant::now(),
                        ended: None,
                    });
                    log.len() - 1
                };
                let (b, log) = (behaviour.clone(), accept_log.clone());
                spawn_small(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(40)));
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
                    b(stream);
                    log.lock().unwrap()[idx].ended = Some(Instant::now());
                });
            }
        }));
        FakePeer { addr, log }
    }

    fn conns(&self) -> Vec<Conn> {
        self.log.lock().unwrap().clone()
    }
}

/// Reads until swarmscan closes the connection (EOF or reset).
fn until_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

/// Reads swarmscan's handshake; false if it is not one for `hash`.
fn read_handshake(s: &mut TcpStream, hash: &[u8; 20]) -> bool {
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs).is_ok() && hs[0] == 19 && &hs[28..48] == hash
}

fn our_handshake(hash: &[u8; 20]) -> Vec<u8> {
    encode_handshake(
        hash,
        b"-HP0001-hostilepeer0",
        Reserved::NONE.with_extended(true).with_fast(true),
    )
    .to_vec()
}

fn msg(m: Message) -> Vec<u8> {
    let mut v = Vec::new();
    m.encode_into(&mut v);
    v
}

/// A bitfield of `pieces` with the first `have` set.
fn bitfield(pieces: u32, have: u32) -> Vec<u8> {
    let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
    for i in 0..have {
        bits[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    bits
}

fn ext_handshake(metadata_size: Option<i64>) -> Vec<u8> {
    ExtHandshake {
        m: vec![(b"ut_metadata".as_slice(), 3)],
        v: Some(b"hostile/1.0"),
        metadata_size,
        ..ExtHandshake::default()
    }
    .to_message_bytes()
}

/// Answers ut_metadata requests from `info` (or, when `garbage_claim` is set, with garbage
/// pieces of a dictionary that size) until swarmscan closes the connection.
fn serve_metadata(s: &mut TcpStream, info: &[u8], garbage_claim: Option<u32>) {
    let total = garbage_claim.unwrap_or(info.len() as u32);
    // Garbage that starts like a dictionary, so it passes for one until the hash is checked.
    let mut garbage = vec![0x5au8; 16384];
    garbage[..12].copy_from_slice(b"d4:name3:abc");
    let mut reader = MessageReader::default();
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        reader.feed(&buf[..n]);
        let mut out = Vec::new();
        while let Ok(Some(m)) = reader.read_message() {
            let Message::Extended { ext_id: 3, payload } = m else {
                continue;
            };
            let Ok(MetadataMessage::Request { piece }) = MetadataMessage::decode(payload) else {
                continue;
            };
            let start = piece as usize * 16384;
            let end = (start + 16384).min(total as usize);
            if start >= end {
                continue;
            }
            let data = match garbage_claim {
                Some(_) => &garbage[..end - start],
                None => &info[start..end],
            };
            let payload = MetadataMessage::Data {
                piece,
                total_size: total,
                data,
            }
            .encode();
            Message::Extended {
                ext_id: OUR_UT_METADATA_ID,
                payload: &payload,
            }
            .encode_into(&mut out);
        }
        if s.write_all(&out).is_err() {
            return;
        }
    }
}

/// A well-behaved seed (every piece: at the threshold, so it is not watched but revisited when
/// `peer.stop_at_threshold` is off); serves the metadata when `info` is given.
fn normal_peer(hash: [u8; 20], pieces: u32, info: Option<Arc<Vec<u8>>>) -> Behaviour {
    Arc::new(move |mut s| {
        if !read_handshake(&mut s, &hash) {
            return;
        }
        let mut out = our_handshake(&hash);
        if let Some(info) = &info {
            out.extend(ext_handshake(Some(info.len() as i64)));
        }
        out.extend(msg(Message::Bitfield(&bitfield(pieces, pieces))));
        if s.write_all(&out).is_err() {
            return;
        }
        match &info {
            Some(info) => serve_metadata(&mut s, info, None),
            None => until_closed(&mut s),
        }
    })
}

/// A test tracker: every HTTP request gets the compact list of `peers`.
fn tracker(ip: IpAddr, peers: &[SocketAddr]) -> String {
    let listener = TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut compact = Vec::new();
    for p in peers {
        let SocketAddr::V4(v4) = p else {
            panic!("IPv4 only")
        };
        compact.extend_from_slice(&v4.ip().octets());
        compact.extend_from_slice(&v4.port().to_be_bytes());
    }
    let body = OwnedValue::dict()
        .with("interval", 3600)
        .with("peers", compact)
        .encode();
    assert!(spawn_small(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => req.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let mut resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            resp.extend_from_slice(&body);
            let _ = s.write_all(&resp);
        }
    }));
    format!("http://{addr}/announce")
}

/// An info dictionary of `pieces` pieces of 16 KiB, its v1 info-hash, and a .torrent for it
/// announcing to `announce`.
fn torrent(pieces: u32, announce: &str) -> (Vec<u8>, [u8; 20], Vec<u8>) {
    let info = OwnedValue::dict()
        .with("length", i64::from(pieces) * 16384)
        .with("name", "hostile.bin")
        .with("piece length", 16384)
        .with("pieces", vec![7u8; pieces as usize * 20]);
    let info_bytes = info.encode();
    let file = OwnedValue::dict()
        .with("announce", announce)
        .with("info", info)
        .encode();
    let m = Metainfo::from_bytes(&file).unwrap();
    let hash = m.info_hashes.v1.unwrap().0;
    (info_bytes, hash, file)
}

/// VmHWM (peak resident set) of a process, kB.
fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `swarmscan run --for` under way.
struct Scan {
    child: ChildGuard,
    log: std::path::PathBuf,
    db: std::path::PathBuf,
    started: Instant,
    peak_kb: u64,
}

impl Scan {
    fn start(dir: &Path, secs: u32, listen: SocketAddr, extra: &[&str], inputs: &[String]) -> Scan {
        let db = dir.join("scan.sqlite");
        let log = dir.join("scan.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
        cmd.args(["run", "--for", &format!("{secs}s"), "--json"])
            .args(["--set", &format!("database={:?}", db.display().to_string())])
            .args(["--set", &format!("net.listen=[\"{listen}\"]")])
            .args(["--set", "privacy.ip=\"full\""])
            .args(["--set", "engine.pin_workers=false"])
            .args(["--set", "tracker.scrape_secs=0"]);
        for e in extra {
            cmd.args(["--set", e]);
        }
        cmd.args(inputs)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        Scan {
            child: ChildGuard::spawn("swarmscan", &mut cmd),
            log,
            db,
            started: Instant::now(),
            peak_kb: 0,
        }
    }

    /// Seconds since the scan started.
    fn at(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Samples the peak RSS while waiting until `secs` after the start (or the exit).
    fn wait_until(&mut self, secs: f64) {
        while self.at() < secs {
            if let Some(kb) = vm_hwm_kb(self.child.child.id()) {
                self.peak_kb = self.peak_kb.max(kb);
            }
            if let Ok(Some(_)) = self.child.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the exit (within `limit` of the start); the JSON summary.
    fn finish(mut self, limit: f64) -> (serde_json::Value, u64, std::path::PathBuf) {
        loop {
            if let Some(kb) = vm_hwm_kb(self.child.child.id()) {
                self.peak_kb = self.peak_kb.max(kb);
            }
            if let Ok(Some(_)) = self.child.child.try_wait() {
                break;
            }
            assert!(
                self.at() < limit,
                "swarmscan still running after {limit} s: {}",
                read_to_string_lossy(&self.log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut out = String::new();
        self.child
            .child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = self.child.child.wait().unwrap();
        assert!(
            status.success(),
            "exit {status:?}: {}",
            read_to_string_lossy(&self.log)
        );
        let summary: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!("summary {out:?}: {e}: {}", read_to_string_lossy(&self.log))
        });
        (summary, self.peak_kb, self.db.clone())
    }
}

/// A peer's row: (attempts, contacts, failures, last_error, last_progress).
type PeerRow = (i64, i64, i64, Option<String>, Option<f64>);

fn peer_rows(db: &Path) -> HashMap<SocketAddr, PeerRow> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT ip, port, attempts, contacts, failures, last_error, last_progress FROM peers",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            let ip: String = r.get(0)?;
            let port: i64 = r.get(1)?;
            Ok((
                SocketAddr::new(ip.parse().unwrap(), port as u16),
                (r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?),
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// Incoming connections for no torrent (or not BitTorrent at all), by class.
fn unmatched_incoming(db: &Path) -> HashMap<String, i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT class, count FROM outcome_counts WHERE torrent_id = 0 AND event = 'incoming'",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    assert!(!v.is_empty());
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds swarmscan held each ended connection of these peers.
fn held_secs(peers: &[FakePeer]) -> Vec<f64> {
    peers
        .iter()
        .flat_map(|p| p.conns())
        .filter_map(|c| c.ended.map(|e| (e - c.accepted).as_secs_f64()))
        .collect()
}

/// Hostile behaviours of outgoing-probe peers, each with what swarmscan must store and the
/// longest it may hold a connection.
struct Kind {
    name: &'static str,
    behaviour: Behaviour,
    /// `last_error` of the peer row (None: a success, with `progress`).
    class: Option<&'static str>,
    progress: Option<f64>,
    /// Longest connection, seconds; and the shortest (slowloris must wait out the timeout).
    max_secs: f64,
    min_secs: f64,
}

fn kinds(hash: [u8; 20], pieces: u32) -> Vec<Kind> {
    let quiet = 6.0; // peer.quiet_timeout_ms default
    vec![
        Kind {
            name: "normal",
            behaviour: normal_peer(hash, pieces, None),
            class: None,
            progress: Some(1.0),
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            // A length prefix of 4 GiB after the handshake.
            name: "length_bomb",
            behaviour: Arc::new(move |mut s| {
                if read_handshake(&mut s, &hash) {
                    let mut out = our_handshake(&hash);
                    out.extend_from_slice(&[0xff, 0xff, 0xff, 0xf0, 5, 0xff, 0xff]);
                    let _ = s.write_all(&out);
                    until_closed(&mut s);
                }
            }),
            // A BitTorrent peer (its handshake was right) breaking the protocol.
            class: Some("protocol_error"),
            progress: None,
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            // `have` after `have` as fast as the socket takes them, never a bitfield.
            name: "endless_haves",
            behaviour: Arc::new(move |mut s| {
                if read_handshake(&mut s, &hash) && s.write_all(&our_handshake(&hash)).is_ok() {
                    let mut i = 0u32;
                    loop {
                        let batch: Vec<u8> = (0..64)
                            .flat_map(|k| msg(Message::Have((i + k) % pieces)))
                            .collect();
                        i = i.wrapping_add(64);
                        if s.write_all(&batch).is_err() {
                            break;
                        }
                    }
                }
            }),
            // Ended at the message cap; no bitfield: progress never stated.
            class: Some("broken"),
            progress: None,
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            // The handshake one byte every 400 ms: never complete within the quiet timeout.
            name: "slowloris",
            behaviour: Arc::new(move |mut s| {
                if read_handshake(&mut s, &hash) {
                    for b in our_handshake(&hash) {
                        if s.write_all(&[b]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(400));
                    }
                    until_closed(&mut s);
                }
            }),
            class: Some("timed_out"),
            progress: None,
            max_secs: quiet + 1.5,
            min_secs: quiet - 0.5,
        },
        Kind {
            name: "garbage",
            behaviour: Arc::new(move |mut s| {
                let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                let _ = s.write_all(&junk);
                until_closed(&mut s);
            }),
            class: Some("unknown_protocol"),
            progress: None,
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            name: "wrong_info_hash",
            behaviour: Arc::new(move |mut s| {
                if read_handshake(&mut s, &hash) {
                    let mut out = our_handshake(&[0xee; 20]);
                    out.extend(msg(Message::HaveAll));
                    let _ = s.write_all(&out);
                    until_closed(&mut s);
                }
            }),
            class: Some("unknown_info_hash"),
            progress: None,
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            // A bitfield three times too long.
            name: "bad_bitfield",
            behaviour: Arc::new(move |mut s| {
                if read_handshake(&mut s, &hash) {
                    let mut out = our_handshake(&hash);
                    out.extend(msg(Message::Bitfield(&vec![
                        0xff;
                        pieces.div_ceil(8) as usize * 3
                    ])));
                    let _ = s.write_all(&out);
                    until_closed(&mut s);
                }
            }),
            class: Some("protocol_error"),
            progress: None,
            max_secs: 2.0,
            min_secs: 0.0,
        },
        Kind {
            // Reset on accept (SO_LINGER 0), every time.
            name: "rst_storm",
            behaviour: Arc::new(|s| {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                drop(s);
            }),
            // Tried plaintext, then at once over MSE (a hang-up right after connecting is what
            // a peer that requires encryption does), then plaintext, then at once over uTP
            // (`net.utp = "fallback"`: a peer that refuses TCP may speak uTP only), where
            // nothing listens: the last try of the chain is refused, then backed off.
            class: Some("utp_refused"),
            progress: None,
            max_secs: 1.0,
            min_secs: 0.0,
        },
    ]
}

#[test]
fn hostile_outgoing_peers_end_in_time_classified_with_bounded_memory() {
    let _serial = serial();
    let dir = common::test_dir("hostile-out");
    const PIECES: u32 = 64;
    const PER_KIND: usize = 10;
    // The hash comes from the info dictionary alone: the tracker URL can follow.
    let (_, hash, _) = torrent(PIECES, "http://x/announce");
    let kinds = kinds(hash, PIECES);
    let peers: Vec<Vec<FakePeer>> = kinds
        .iter()
        .enumerate()
        .map(|(k, kind)| {
            (0..PER_KIND)
                .map(|_| FakePeer::start(ip(101 + k as u8), kind.behaviour.clone()))
                .collect()
        })
        .collect();
    let all: Vec<SocketAddr> = peers.iter().flatten().map(|p| p.addr).collect();
    let announce = tracker(ip(100), &all);
    let (_, hash2, file) = torrent(PIECES, &announce);
    assert_eq!(hash, hash2);
    let path = dir.path().join("hostile.torrent");
    std::fs::write(&path, file).unwrap();

    let listen = SocketAddr::new(ip(100), free_tcp_port("127.0.0.100"));
    let mut scan = Scan::start(dir.path(), 12, listen, &[], &[path.display().to_string()]);
    scan.wait_until(12.0);
    let (summary, peak_kb, db) = scan.finish(40.0);
    let rows = peer_rows(&db);
    eprintln!("summary: {summary}");
    eprintln!("swarmscan VmHWM: {peak_kb} kB");
    for (kind, peers) in kinds.iter().zip(&peers) {
        let held = held_secs(peers);
        let longest = held.iter().cloned().fold(0.0, f64::max);
        let shortest = held.iter().cloned().fold(f64::MAX, f64::min);
        let attempts: i64 = peers.iter().map(|p| rows[&p.addr].0).sum();
        eprintln!(
            "{:<16} connections {:>3}  held {:.2}–{:.2} s (median {:.2})  attempts {attempts}  stored {:?}",
            kind.name,
            held.len(),
            shortest,
            longest,
            median(held.clone()),
            rows[&peers[0].addr]
        );
        assert!(
            held.len() >= PER_KIND,
            "{}: {} connections",
            kind.name,
            held.len()
        );
        assert!(
            longest <= kind.max_secs,
            "{}: a connection held {longest:.2} s > {} s",
            kind.name,
            kind.max_secs
        );
        assert!(
            shortest >= kind.min_secs,
            "{}: a connection ended after {shortest:.2} s < {} s",
            kind.name,
            kind.min_secs
        );
        for p in peers {
            let (attempts, contacts, failures, last_error, last_progress) = rows
                .get(&p.addr)
                .unwrap_or_else(|| panic!("{}: {} not stored", kind.name, p.addr))
                .clone();
            assert!(attempts >= 1, "{}: {attempts} attempts", kind.name);
            match kind.class {
                None => {
                    assert_eq!(contacts, attempts, "{}", kind.name);
                    assert_eq!(last_progress, kind.progress, "{}", kind.name);
                }
                Some(class) => {
                    // rst_storm: the reset on accept is reported as the connect's result
                    // (ECONNRESET) or as an end of stream right after it, a race; either way the
                    // chain ends over uTP, where nothing listens.
                    assert_eq!(
                        last_error.as_deref(),
                        Some(class),
                        "{} at {}",
                        kind.name,
                        p.addr
                    );
                    assert_eq!(failures, attempts, "{}", kind.name);
                }
            }
            if kind.name == "rst_storm" {
                // Plaintext, at once over MSE, at once plaintext again (MSE failed too), at once
                // over uTP, then the retry back-off (peer.revisit_secs): not hammered.
                assert!(attempts <= 4, "rst_storm: {attempts} attempts in 12 s");
            }
        }
    }
    // Memory: the whole scan of 80 hostile and 10 normal peers stays near an idle scan's.
    assert!(peak_kb < 64 * 1024, "swarmscan VmHWM {peak_kb} kB");
}

/// Outcome counts of the scan's database: (event, class) → count.
fn outcome_counts(db: &Path) -> HashMap<(String, String), i64> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT event, class, sum(count) FROM outcome_counts GROUP BY event, class")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// docs/OUTCOMES.md: a peer that completes the handshake and then breaks the protocol, or
/// stays silent, is a failure (never a success at 0 %), backs off like any failure, and only
/// its first attempt is a `first_contact`. Revisits every 2 s (a setting a user gives) make
/// the back-off visible within the scan: without it, 6 attempts in 12 s.
#[test]
fn peers_that_break_the_protocol_or_state_nothing_fail_and_back_off() {
    let _serial = serial();
    let dir = common::test_dir("hostile-taxonomy");
    const PIECES: u32 = 64;
    const PER_KIND: usize = 5;
    let (_, hash, _) = torrent(PIECES, "http://x/announce");
    let violator: Behaviour = Arc::new(move |mut s| {
        if read_handshake(&mut s, &hash) {
            let mut out = our_handshake(&hash);
            out.extend(msg(Message::Bitfield(&[0xff; 3])));
            let _ = s.write_all(&out);
            until_closed(&mut s);
        }
    });
    let silent: Behaviour = Arc::new(move |mut s| {
        if read_handshake(&mut s, &hash) && s.write_all(&our_handshake(&hash)).is_ok() {
            until_closed(&mut s);
        }
    });
    let violators: Vec<FakePeer> = (0..PER_KIND)
        .map(|_| FakePeer::start(ip(111), violator.clone()))
        .collect();
    let silents: Vec<FakePeer> = (0..PER_KIND)
        .map(|_| FakePeer::start(ip(112), silent.clone()))
        .collect();
    let all: Vec<SocketAddr> = violators.iter().chain(&silents).map(|p| p.addr).collect();
    let announce = tracker(ip(110), &all);
    let (_, _, file) = torrent(PIECES, &announce);
    let path = dir.path().join("taxonomy.torrent");
    std::fs::write(&path, file).unwrap();
    let listen = SocketAddr::new(ip(110), free_tcp_port("127.0.0.110"));
    let mut scan = Scan::start(
        dir.path(),
        12,
        listen,
        &["peer.revisit_secs=2"],
        &[path.display().to_string()],
    );
    scan.wait_until(12.0);
    let (_, _, db) = scan.finish(40.0);
    let rows = peer_rows(&db);
    let counts = outcome_counts(&db);
    eprintln!("outcome counts: {counts:?}");
    for (peers, class, most) in [(&violators, "protocol_error", 3), (&silents, "broken", 2)] {
        for p in peers {
            let (attempts, contacts, failures, last_error, last_progress) = rows[&p.addr].clone();
            eprintln!("{class}: {} attempts {attempts}", p.addr);
            assert_eq!(last_error.as_deref(), Some(class), "{}", p.addr);
            assert_eq!(
                (contacts, last_progress),
                (0, None),
                "{}: never a success",
                p.addr
            );
            assert_eq!(failures, attempts, "{}", p.addr);
            // Back-off from 2 s, doubling: at 0, 2 and 6 s for an answer that comes at once
            // (12 s scan); the silent ones hold each attempt for the 6 s quiet timeout.
            assert!(
                (1..=most).contains(&attempts),
                "{class} {}: {attempts} attempts in 12 s (backed off: at most {most})",
                p.addr
            );
        }
        let first = counts
            .get(&("first_contact".to_string(), class.to_string()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            first, PER_KIND as i64,
            "{class}: one first_contact per peer"
        );
        assert_eq!(
            counts.get(&("first_contact".to_string(), "success".to_string())),
            None,
            "nothing here is a success"
        );
    }
    let later = counts
        .get(&("later_contact".to_string(), "protocol_error".to_string()))
        .copied()
        .unwrap_or(0);
    assert!(
        later >= PER_KIND as i64,
        "violators retried as later_contact: {later}"
    );
}

#[test]
fn metadata_bombs_buy_no_memory_and_normal_probes_keep_their_speed() {
    let _serial = serial();
    let dir = common::test_dir("hostile-meta");
    // The real metadata: 2,000 pieces, 40 KB of hashes, 3 ut_metadata pieces.
    const PIECES: u32 = 2000;
    let (info, hash, _) = torrent(PIECES, "http://x/announce");
    let info = Arc::new(info);
    const CLAIM: u32 = 8 << 20;
    // 300 peers claim 8 MiB (peer.metadata_max_bytes: accepted, and fetched) and answer every
    // request with a garbage piece; 10 claim 64 MiB (refused); 20 are normal and serve the
    // real metadata.
    let bomb = |claim: u32| -> Behaviour {
        Arc::new(move |mut s| {
            if read_handshake(&mut s, &hash) {
                let mut out = our_handshake(&hash);
                out.extend(ext_handshake(Some(i64::from(claim))));
                if s.write_all(&out).is_ok() {
                    serve_metadata(&mut s, &[], Some(claim));
                }
            }
        })
    };
    // (HOSTILE_BOMBS=0 gives the same scan without bombs, for comparison.)
    let n_bombs: usize = std::env::var("HOSTILE_BOMBS")
        .map(|v| v.parse().unwrap())
        .unwrap_or(300);
    let bombs: Vec<FakePeer> = (0..n_bombs)
        .map(|i| FakePeer::start(ip(120 + (i / 10) as u8), bomb(CLAIM)))
        .collect();
    let big: Vec<FakePeer> = (0..10)
        .map(|_| FakePeer::start(ip(160), bomb(64 << 20)))
        .collect();
    let normal: Vec<FakePeer> = (0..20)
        .map(|i| {
            FakePeer::start(
                ip(150 + (i / 2) as u8),
                normal_peer(hash, PIECES, Some(info.clone())),
            )
        })
        .collect();
    let mut magnet = format!("magnet:?xt=urn:btih:{}", hex::encode(&hash));
    for p in bombs.iter().chain(&big).chain(&normal) {
        magnet.push_str(&format!("&x.pe={}", p.addr));
    }
    let listen = SocketAddr::new(ip(161), free_tcp_port("127.0.0.161"));
    let mut scan = Scan::start(
        dir.path(),
        20,
        listen,
        &[
            "peer.revisit_secs=2",
            "peer.retry_backoff_secs=2",
            "peer.stop_at_threshold=false",
        ],
        &[magnet],
    );
    scan.wait_until(20.0);
    let (summary, peak_kb, db) = scan.finish(60.0);
    eprintln!("summary: {summary}");
    eprintln!("swarmscan VmHWM: {peak_kb} kB");

    let held = held_secs(&normal);
    let bomb_conns = held_secs(&bombs).len();
    eprintln!(
        "normal probes: {} connections, held median {:.2} s, longest {:.2} s; bomb connections {bomb_conns}",
        held.len(),
        median(held.clone()),
        held.iter().cloned().fold(0.0, f64::max)
    );
    // Memory: at most peer.metadata_fetches_per_torrent (2) fetches of 8 MiB each at once,
    // whatever 300 peers claim; 2,400 MB before the budgets.
    assert!(peak_kb < 128 * 1024, "swarmscan VmHWM {peak_kb} kB");
    // The refusals are counted.
    assert!(
        summary["metadata_refused_too_large"].as_u64().unwrap() >= 10,
        "{summary}"
    );
    assert!(
        summary["metadata_refused_busy"].as_u64().unwrap() > 100,
        "{summary}"
    );
    // Normal peers (seeds): visited every 2 s, answered in about the bitfield grace (0.5 s).
    assert!(held.len() >= 20 * 4, "{} normal probes", held.len());
    assert!(median(held.clone()) < 1.5, "normal probes held {held:?}");
    // The real metadata got through: the torrent's pieces are known, the peers measured.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let pieces: Option<i64> = conn
        .query_row("SELECT piece_count FROM torrents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pieces, Some(i64::from(PIECES)));
    let rows = peer_rows(&db);
    let measured = normal
        .iter()
        .filter(|p| rows[&p.addr].4 == Some(1.0))
        .count();
    assert_eq!(measured, normal.len(), "{rows:?}");
    // The bombs: never measured with progress, every connection over by the quiet timeout (6 s;
    // they never state their progress), and each tried again at the retry interval.
    let bomb_held = held_secs(&bombs);
    let longest = bomb_held.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "bombs: {} connections, held median {:.2} s, longest {longest:.2} s; stored {:?}",
        bomb_held.len(),
        median(bomb_held.clone()),
        rows[&bombs[0].addr]
    );
    assert!(longest < 6.0 + 1.5, "a bomb held {longest:.2} s");
    for p in bombs.iter().chain(&big) {
        let (attempts, _, _, _, progress) = rows[&p.addr].clone();
        assert!(attempts >= 2, "{}: {attempts} attempts", p.addr);
        assert!(
            progress.unwrap_or(0.0) == 0.0,
            "{}: progress {progress:?}",
            p.addr
        );
    }
}

/// Opens up to `n` idle connections to `to` and keeps them open, reopening any that
/// swarmscan closed, once a second, until `stop`.
fn idle_flood(to: SocketAddr, n: usize, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for c in conns.iter_mut() {
            let alive = c.as_mut().is_some_and(|s| {
                let mut b = [0u8; 64];
                matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
            });
            if !alive {
                *c = TcpStream::connect_timeout(&to, Duration::from_millis(500))
                    .ok()
                    .filter(|s| s.set_nonblocking(true).is_ok());
                if c.is_some() {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    for s in conns.into_iter().flatten() {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// Connections that send 1,100 bytes of garbage and wait for the close, `per_sec` a second.
/// Bytes that do not start like a BitTorrent handshake may be an MSE key exchange: swarmscan
/// can only tell garbage once the exchange fails to synchronise (96 + 512 + 20 bytes), or
/// when its budget of DH computations (`net.mse_incoming_per_sec`) refuses one.
fn garbage_flood(to: SocketAddr, per_sec: u32, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let junk: Vec<u8> = (0..1100u32).map(|i| (i * 31 + 7) as u8).collect();
    let gap = Duration::from_secs(1) / per_sec;
    let mut next = Instant::now();
    let mut open: Vec<TcpStream> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut s) = TcpStream::connect_timeout(&to, Duration::from_millis(500)) {
            if s.write_all(&junk).is_ok() {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            let _ = s.set_nonblocking(true);
            open.push(s);
        }
        // Forget the ones swarmscan closed.
        open.retain_mut(|s| {
            let mut b = [0u8; 64];
            matches!(s.read(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock)
        });
        next += gap;
        if let Some(rest) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
    }
}

/// Probes of the normal peers whose connection was accepted in [from, to) seconds of the scan.
fn probes_between(peers: &[FakePeer], start: Instant, from: f64, to: f64) -> f64 {
    let n = peers
        .iter()
        .flat_map(|p| p.conns())
        .filter(|c| {
            let at = (c.accepted - start).as_secs_f64();
            at >= from && at < to
        })
        .count();
    n as f64 / (to - from)
}

#[test]
fn idle_and_garbage_incoming_floods_do_not_starve_outgoing_probes() {
    let _serial = serial();
    let dir = common::test_dir("hostile-flood");
    const PIECES: u32 = 64;
    let (_, hash, _) = torrent(PIECES, "http://x/announce");
    // 100 normal peers, each visited every second or so (about 60 probes/s).
    let normal: Vec<FakePeer> = (0..100)
        .map(|i| FakePeer::start(ip(170 + (i / 10) as u8), normal_peer(hash, PIECES, None)))
        .collect();
    let addrs: Vec<SocketAddr> = normal.iter().map(|p| p.addr).collect();
    let announce = tracker(ip(169), &addrs);
    let (_, _, file) = torrent(PIECES, &announce);
    let path = dir.path().join("flood.torrent");
    std::fs::write(&path, file).unwrap();
    let listen = SocketAddr::new(ip(199), free_tcp_port("127.0.0.199"));
    let mut scan = Scan::start(
        dir.path(),
        36,
        listen,
        &["peer.revisit_secs=1", "peer.stop_at_threshold=false"],
        &[path.display().to_string()],
    );
    let start = scan.started;
    // Phase A (4–12 s): no flood.
    scan.wait_until(12.0);
    // Phase B (14–22 s): 5,000 idle connections, kept open (reopened when closed).
    let stop_idle = Arc::new(AtomicBool::new(false));
    let idle_opened = Arc::new(AtomicU64::new(0));
    let idle = {
        let (stop, opened) = (stop_idle.clone(), idle_opened.clone());
        std::thread::spawn(move || idle_flood(listen, 5000, stop, opened))
    };
    scan.wait_until(22.0);
    stop_idle.store(true, Ordering::Relaxed);
    idle.join().unwrap();
    // Phase C (25–33 s): garbage, 150 new connections a second (each costs swarmscan a DH
    // computation, slow in a debug build; `net.mse_incoming_per_sec` bounds those).
    let stop_garbage = Arc::new(AtomicBool::new(false));
    let garbage_sent = Arc::new(AtomicU64::new(0));
    let garbage = {
        let (stop, sent) = (stop_garbage.clone(), garbage_sent.clone());
        std::thread::spawn(move || garbage_flood(listen, 150, stop, sent))
    };
    scan.wait_until(33.0);
    stop_garbage.store(true, Ordering::Relaxed);
    garbage.join().unwrap();
    let (summary, peak_kb, db) = scan.finish(80.0);

    let a = probes_between(&normal, start, 4.0, 12.0);
    let b = probes_between(&normal, start, 14.0, 22.0);
    let c = probes_between(&normal, start, 25.0, 33.0);
    eprintln!("summary: {summary}");
    eprintln!(
        "outgoing probes/s: {a:.1} without a flood, {b:.1} with 5,000 idle incoming ({:.0} %), \
         {c:.1} with garbage incoming ({:.0} %); idle connections opened {}, garbage sent {}; \
         VmHWM {peak_kb} kB",
        100.0 * b / a,
        100.0 * c / a,
        idle_opened.load(Ordering::Relaxed),
        garbage_sent.load(Ordering::Relaxed)
    );
    assert!(a > 20.0, "baseline rate {a:.1}/s");
    assert!(b >= 0.8 * a, "idle flood: {b:.1}/s vs {a:.1}/s");
    assert!(c >= 0.8 * a, "garbage flood: {c:.1}/s vs {a:.1}/s");
    // Each budget counted: 5,000 > peer.max_incoming (2,048) were refused at once, the rest
    // closed at the pre-handshake timeout; the garbage stored as a failed MSE handshake (the
    // only thing bytes that are not a BitTorrent handshake can be).
    assert!(
        summary["incoming_refused_full"].as_u64().unwrap() > 0,
        "{summary}"
    );
    assert!(
        summary["incoming_silent_closed"].as_u64().unwrap() >= 2000,
        "{summary}"
    );
    let unmatched = unmatched_incoming(&db);
    eprintln!("unmatched incoming: {unmatched:?}");
    let garbage_stored = unmatched.get("mse_failed").copied().unwrap_or(0);
    let sent = garbage_sent.load(Ordering::Relaxed) as i64;
    assert!(
        garbage_stored as f64 >= 0.9 * sent as f64,
        "{garbage_stored} of {sent} garbage connections stored"
    );
    assert!(
        unmatched.get("timed_out").copied().unwrap_or(0) >= 2000,
        "{unmatched:?}"
    );
    assert!(peak_kb < 128 * 1024, "swarmscan VmHWM {peak_kb} kB");
}

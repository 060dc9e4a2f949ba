//! `proto::utp` against a real libtorrent 2.1.1 with TCP disabled, over UDP on loopback:
//! outgoing (we dial libtorrent's uTP listener) and incoming (libtorrent dials us). Each
//! side completes a BitTorrent handshake, reads the seeder's bitfield and closes with FIN.
//!
//! Every call into the connection is logged as a trace (see `tests/data/utp/README.md`);
//! with env `SWARMSCAN_RECORD_UTP=DIR` the traces are written to DIR, which is how the
//! recordings that `proto::utp`'s unit tests replay were made.

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use swarmscan::proto::hex;
use swarmscan::proto::peer_wire::{encode_handshake, Message, MessageReader, Reserved};
use swarmscan::proto::utp::{self, CloseReason, State, UtpConnection};

mod common;
use common::python_with_libtorrent as python;

const PEER_ID: [u8; 20] = *b"-SS0001-utp-livetest";
/// Bounds every exchange: a loopback exchange takes milliseconds; this only stops a hang.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(20);
/// The trace clock starts here, so timestamps are never 0 ("none" to libtorrent).
const CLOCK_BASE_US: u64 = 1_000_000;

struct Seeder {
    child: Child,
    stdin: Option<ChildStdin>,
    info_hash: [u8; 20],
    num_pieces: u32,
    port: u16,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seeder(pieces: u32) -> Seeder {
    let py = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lt_utp_peer.py");
    let mut child = Command::new(&py)
        .args([script, &pieces.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("seeder's JSON line");
    assert_eq!(info["seeding"], true, "{info}");
    Seeder {
        stdin: child.stdin.take(),
        child,
        info_hash: hex::decode_array(info["info_hash"].as_str().unwrap()).unwrap(),
        num_pieces: info["num_pieces"].as_u64().unwrap() as u32,
        port: info["port"].as_u64().unwrap() as u16,
    }
}

/// A connection with every call on it logged, so the exchange can be replayed exactly.
struct Traced {
    conn: UtpConnection,
    start: Instant,
    log: Vec<String>,
    sock: UdpSocket,
}

fn now_us(start: Instant) -> u64 {
    CLOCK_BASE_US + start.elapsed().as_micros() as u64
}

impl Traced {
    fn send(&mut self, t: u64, datagram: &[u8]) {
        self.log.push(format!("out {t} {}", hex::encode(datagram)));
        self.sock.send(datagram).unwrap();
    }

    fn flush(&mut self) {
        loop {
            let t = now_us(self.start);
            let Some(d) = self.conn.poll_transmit(t) else {
                break;
            };
            self.send(t, &d);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let n = self.conn.write(bytes);
        assert_eq!(n, bytes.len());
        self.log.push(format!("write {}", hex::encode(bytes)));
    }

    fn close(&mut self) {
        self.conn.close();
        self.log.push("close".into());
    }

    /// Waits for one datagram (up to the retransmission timer or 50 ms), feeds it, and
    /// returns what became readable.
    fn step(&mut self) -> Vec<u8> {
        let wait = self
            .conn
            .next_timeout()
            .map_or(50_000, |t| t.saturating_sub(now_us(self.start)))
            .clamp(1_000, 50_000);
        self.sock
            .set_read_timeout(Some(Duration::from_micros(wait)))
            .unwrap();
        let mut buf = [0u8; 65_536];
        if let Ok(n) = self.sock.recv(&mut buf) {
            let t = now_us(self.start);
            let result = self.conn.on_datagram(&buf[..n], t);
            self.log.push(format!(
                "in {t} {} {}",
                hex::encode(&buf[..n]),
                match result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("ignored:{e}"),
                }
            ));
        }
        let mut got = Vec::new();
        let n = self.conn.read(&mut got);
        if n > 0 {
            self.log.push(format!("read {n}"));
        }
        got
    }

    fn save(&self, name: &str, meta: &str) {
        let Some(dir) = std::env::var_os("SWARMSCAN_RECORD_UTP") else {
            return;
        };
        let mut text = format!("meta {meta}\n");
        for line in &self.log {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!("state {:?}\n", self.conn.state()));
        std::fs::write(std::path::Path::new(&dir).join(name), text).unwrap();
    }
}

/// What the probe learned from the peer's bytes.
#[derive(Default)]
struct PeerView {
    handshake: Option<[u8; 20]>,
    bitfield: Option<Vec<u8>>,
    messages: Vec<String>,
}

impl PeerView {
    fn feed(&mut self, reader: &mut MessageReader, bytes: &[u8]) {
        reader.feed(bytes);
        if self.handshake.is_none() {
            match reader.read_handshake().unwrap() {
                Some(h) => self.handshake = Some(h.info_hash),
                None => return,
            }
        }
        while let Some(m) = reader.read_message().unwrap() {
            self.messages.push(m.name().to_string());
            if let Message::Bitfield(bits) = m {
                self.bitfield = Some(bits.to_vec());
            }
        }
    }
}

fn assert_full_bitfield(bits: &[u8], pieces: u32) {
    assert_eq!(bits.len(), pieces.div_ceil(8) as usize);
    let set: u32 = bits.iter().map(|b| b.count_ones()).sum();
    assert_eq!(set, pieces, "a seeder has every piece");
}

/// Runs the exchange until the connection closes or the limit: reads, hands what came to
/// `on_bytes`, sends what is due.
fn drive(t: &mut Traced, mut on_bytes: impl FnMut(&mut Traced, &[u8])) {
    let deadline = Instant::now() + EXCHANGE_LIMIT;
    while !t.conn.is_closed() && Instant::now() < deadline {
        t.flush();
        let got = t.step();
        if !got.is_empty() {
            on_bytes(t, &got);
        }
        t.flush();
    }
}

#[test]
fn outgoing_utp_handshake_and_bitfield_from_libtorrent() {
    let seeder = seeder(40);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(("127.0.0.1", seeder.port)).unwrap();
    let start = Instant::now();
    // Ids and initial sequence numbers are the caller's randomness; any value works.
    let salt = std::process::id() as u16;
    let (conn_id, seq) = (0x5a00 ^ salt, 0x1234 ^ salt.rotate_left(7));
    let t0 = now_us(start);
    let (conn, syn) = UtpConnection::connect(conn_id, seq, t0);
    let mut t = Traced {
        conn,
        start,
        log: vec![format!("connect {conn_id} {seq} {t0}")],
        sock,
    };
    t.send(t0, &syn);
    t.write(&encode_handshake(
        &seeder.info_hash,
        &PEER_ID,
        Reserved::default().with_extended(true),
    ));
    let mut reader = MessageReader::default();
    let mut view = PeerView::default();
    drive(&mut t, |t, bytes| {
        view.feed(&mut reader, bytes);
        if view.bitfield.is_some() && !t.conn.is_closed() {
            t.close();
        }
    });
    t.save(
        "outgoing.trace",
        &format!(
            "info_hash={} pieces={}",
            hex::encode(&seeder.info_hash),
            seeder.num_pieces
        ),
    );
    assert_eq!(view.handshake, Some(seeder.info_hash), "{:?}", t.log);
    assert_full_bitfield(view.bitfield.as_deref().unwrap(), seeder.num_pieces);
    assert!(
        view.messages.iter().any(|m| m == "extended"),
        "libtorrent's extension handshake came over uTP too: {:?}",
        view.messages
    );
    assert_eq!(
        t.conn.state(),
        State::Closed(CloseReason::Finished),
        "FIN both ways, acked: {:#?}",
        t.log
    );
    // Everything libtorrent sent was for us and acceptable.
    let ignored: Vec<_> = t.log.iter().filter(|l| l.contains("ignored:")).collect();
    assert!(ignored.is_empty(), "{ignored:#?}");
}

#[test]
fn incoming_utp_from_libtorrent_is_accepted_and_read() {
    let mut seeder = seeder(40);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sock.local_addr().unwrap().port();
    let stdin = seeder.stdin.as_mut().unwrap();
    writeln!(stdin, "connect {port}").unwrap();
    stdin.flush().unwrap();

    // libtorrent's SYN.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 65_536];
    let (n, from) = sock
        .recv_from(&mut buf)
        .expect("libtorrent dials us over uTP within 10 s");
    let syn = buf[..n].to_vec();
    assert_eq!(
        utp::looks_like_utp(&syn).map(|(kind, _)| kind),
        Some(utp::PacketType::Syn)
    );
    sock.connect(from).unwrap();
    let start = Instant::now();
    let t0 = now_us(start);
    let seq = 0xffff; // our handshake is packet 65535, our FIN packet 0
    let (conn, state) = UtpConnection::accept(&syn, seq, t0).unwrap();
    let mut t = Traced {
        conn,
        start,
        log: vec![format!("accept {seq} {t0} {}", hex::encode(&syn))],
        sock,
    };
    t.send(t0, &state);

    let mut reader = MessageReader::default();
    let mut view = PeerView::default();
    let info_hash = seeder.info_hash;
    drive(&mut t, |t, bytes| {
        let had_handshake = view.handshake.is_some();
        view.feed(&mut reader, bytes);
        if !had_handshake && view.handshake.is_some() {
            // Answer as a peer with nothing yet (no bitfield needed without pieces).
            t.write(&encode_handshake(&info_hash, &PEER_ID, Reserved::default()));
        }
        if view.bitfield.is_some() && !t.conn.is_closed() {
            t.close();
        }
    });
    t.save(
        "incoming.trace",
        &format!(
            "info_hash={} pieces={}",
            hex::encode(&seeder.info_hash),
            seeder.num_pieces
        ),
    );
    assert_eq!(view.handshake, Some(seeder.info_hash), "{:#?}", t.log);
    assert_full_bitfield(view.bitfield.as_deref().unwrap(), seeder.num_pieces);
    assert_eq!(
        t.conn.state(),
        State::Closed(CloseReason::Finished),
        "{:#?}",
        t.log
    );
    let ignored: Vec<_> = t.log.iter().filter(|l| l.contains("ignored:")).collect();
    assert!(ignored.is_empty(), "{ignored:#?}");
}

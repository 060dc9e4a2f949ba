//! Simulated BitTorrent peers on loopback whose download progress grows over time.
//!
//! Each peer listens on its own 127.x address. It answers a handshake for its torrent with
//! its own handshake, an extension handshake (client name, listen port), its progress at
//! that moment (bitfield, or have_all / have_none) and, while downloading, a `have` for every
//! piece it finishes while the connection lasts (at most 15 s); then it hangs up. Some peers misbehave on purpose (refuse,
//! stay silent, speak another protocol, leave when finished) so every error class shows up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::peer_wire::{
    self, ext::ExtHandshake, Handshake, Message, Reserved, HANDSHAKE_LEN,
};

/// How a simulated peer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Behaviour {
    /// Answers every probe with its current progress.
    Normal,
    /// Answers until it finishes, then stops listening (clients often quit when done).
    LeavesWhenDone,
    /// No listener: connections are refused.
    Refuses,
    /// Accepts and never says anything (the scanner's quiet timeout ends it).
    Silent,
    /// Speaks something that is not BitTorrent.
    NotBitTorrent,
}

/// One simulated peer: progress(t) = min(1, start + rate · t) once t ≥ delay.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SimPeer {
    pub addr: SocketAddr,
    pub torrent: usize,
    pub start_progress: f64,
    /// Fraction of the torrent per second.
    pub rate: f64,
    pub behaviour: Behaviour,
    /// 8-byte Azureus-style client prefix of the peer-id, e.g. `-qB4130-`.
    pub client_prefix: [u8; 8],
    /// Extension-handshake `v` string.
    pub client_name: &'static str,
}

impl SimPeer {
    pub fn progress_at(&self, secs: f64) -> f64 {
        (self.start_progress + self.rate * secs).clamp(0.0, 1.0)
    }
    /// Seconds after the start when progress reaches `threshold` (None if never in `horizon`).
    pub fn crossing_time(&self, threshold: f64, horizon: f64) -> Option<f64> {
        if self.start_progress >= threshold || self.rate <= 0.0 {
            return None;
        }
        let t = (threshold - self.start_progress) / self.rate;
        (t <= horizon).then_some(t)
    }
}

/// Per peer, every answer it gave: (seconds since the start, progress it advertised).
pub type AnswerLog = Arc<Mutex<Vec<Vec<(f64, f64)>>>>;

/// A torrent served by the simulation.
#[derive(Debug, Clone)]
pub struct SimTorrent {
    pub info_hash: [u8; 20],
    pub piece_count: u32,
}

/// Running simulated peers; dropping it (or [`SimPeers::stop`]) stops every thread.
pub struct SimPeers {
    pub peers: Vec<SimPeer>,
    pub torrents: Vec<SimTorrent>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections served, for the demo's summary.
    pub served: Arc<AtomicU64>,
    /// Per peer: seconds since start at which each answered probe happened, and its progress.
    pub answers: AnswerLog,
}

const CLIENTS: [(&[u8; 8], &str); 6] = [
    (b"-qB4130-", "qBittorrent/4.1.3"),
    (b"-UT3540-", "\u{b5}Torrent 3.5.4"),
    (b"-TR4000-", "Transmission 4.0.0"),
    (b"-LT2110-", "libtorrent/2.1.1.0"),
    (b"-DE13F0-", "Deluge 1.3.15"),
    (b"-BT7a4S-", "BitTorrent 7.10.4"),
];

/// A small deterministic generator, so every demo run simulates the same swarm.
struct SplitMix(u64);
impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Plans a swarm: `per_torrent` peers for each torrent, with a mix of seeders, leechers that
/// finish within `horizon_secs`, slow leechers, and misbehaving peers.
pub fn plan(
    torrents: &[SimTorrent],
    per_torrent: usize,
    horizon_secs: f64,
    addr_octet: u8,
    port: u16,
    seed: u64,
) -> Vec<SimPeer> {
    let mut rng = SplitMix(seed);
    let mut peers = Vec::new();
    for (t, _) in torrents.iter().enumerate() {
        for i in 0..per_torrent {
            // 127.<addr_octet>.<torrent>.<i+1>: one address per peer, all on loopback.
            let ip = Ipv4Addr::new(127, addr_octet, t as u8, (i + 1) as u8);
            // The first four peers of every torrent cover the cases a report must show
            // (refused, timed out, not BitTorrent, seeder); the rest are drawn at random.
            let roll = match i {
                0 => 0.85,
                1 => 0.90,
                2 => 0.97,
                3 => 0.0,
                _ => rng.unit(),
            };
            let (start, rate, behaviour) = if roll < 0.15 {
                (1.0, 0.0, Behaviour::Normal) // seeder
            } else if roll < 0.50 {
                // Finishes inside the window (at 20–80 % of it), after being seen below.
                let start = rng.unit() * 0.6;
                let finish_at = horizon_secs * (0.2 + 0.6 * rng.unit());
                let b = if rng.unit() < 0.3 {
                    Behaviour::LeavesWhenDone
                } else {
                    Behaviour::Normal
                };
                (start, (1.0 - start) / finish_at, b)
            } else if roll < 0.80 {
                // Slow: still downloading when the demo ends.
                let start = rng.unit() * 0.5;
                (
                    start,
                    (0.9 - start) / (horizon_secs * 4.0),
                    Behaviour::Normal,
                )
            } else if roll < 0.88 {
                (0.0, 0.0, Behaviour::Refuses)
            } else if roll < 0.95 {
                (0.0, 0.0, Behaviour::Silent)
            } else {
                (0.0, 0.0, Behaviour::NotBitTorrent)
            };
            let (prefix, name) = CLIENTS[(rng.next() % CLIENTS.len() as u64) as usize];
            peers.push(SimPeer {
                addr: SocketAddr::new(ip.into(), port),
                torrent: t,
                start_progress: start,
                rate,
                behaviour,
                client_prefix: *prefix,
                client_name: name,
            });
        }
    }
    peers
}

impl SimPeers {
    /// Starts listeners for every peer that has one.
    pub fn start(torrents: Vec<SimTorrent>, peers: Vec<SimPeer>) -> std::io::Result<SimPeers> {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let answers = Arc::new(Mutex::new(vec![Vec::new(); peers.len()]));
        let epoch = Instant::now();
        let mut listeners = Vec::new();
        for (i, p) in peers.iter().enumerate() {
            if p.behaviour == Behaviour::Refuses {
                continue;
            }
            let l = TcpListener::bind(p.addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("simulated peer {}: bind: {e}", p.addr))
            })?;
            l.set_nonblocking(true)?;
            listeners.push((i, l));
        }
        let shared = Arc::new(Shared {
            peers: peers.clone(),
            torrents: torrents.clone(),
            epoch,
            stop: stop.clone(),
            served: served.clone(),
            answers: answers.clone(),
        });
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("sim-peers".into())
                .spawn(move || accept_loop(shared, listeners))?
        };
        Ok(SimPeers {
            peers,
            torrents,
            epoch,
            stop,
            threads: vec![acceptor],
            served,
            answers,
        })
    }

    /// When the simulation started (progress is a function of time since then).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn elapsed(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The name of a simulation thread that ended before [`SimPeers::stop`] (it panicked).
    pub fn ended_thread(&self) -> Option<String> {
        crate::threads::first_finished(&self.threads)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SimPeers {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Shared {
    peers: Vec<SimPeer>,
    torrents: Vec<SimTorrent>,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    answers: AnswerLog,
}

fn accept_loop(shared: Arc<Shared>, mut listeners: Vec<(usize, TcpListener)>) {
    let mut handlers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        let now = shared.epoch.elapsed().as_secs_f64();
        // A peer that leaves when done closes its listener: later probes are refused.
        listeners.retain(|(i, _)| {
            let p = &shared.peers[*i];
            !(p.behaviour == Behaviour::LeavesWhenDone && p.progress_at(now) >= 1.0)
        });
        let mut accepted = false;
        for (i, l) in &listeners {
            while let Ok((stream, _)) = l.accept() {
                accepted = true;
                let shared = shared.clone();
                let i = *i;
                handlers.push(std::thread::spawn(move || serve(&shared, i, stream)));
            }
        }
        handlers.retain(|h| !h.is_finished());
        if !accepted {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

fn serve(shared: &Shared, i: usize, mut stream: TcpStream) {
    shared.served.fetch_add(1, Ordering::Relaxed);
    let peer = &shared.peers[i];
    let torrent = &shared.torrents[peer.torrent];
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(15);
    match peer.behaviour {
        Behaviour::Silent => {
            drain_until_closed(shared, &mut stream, deadline);
            return;
        }
        Behaviour::NotBitTorrent => {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            drain_until_closed(shared, &mut stream, deadline);
            return;
        }
        _ => {}
    }
    let mut buf = [0u8; HANDSHAKE_LEN];
    if !read_exact_until(shared, &mut stream, &mut buf, deadline) {
        return;
    }
    match Handshake::decode(&buf) {
        Ok((h, _)) if h.info_hash == torrent.info_hash => {}
        _ => return, // wrong torrent: hang up, as real clients do
    }
    let now = shared.epoch.elapsed().as_secs_f64();
    let progress = peer.progress_at(now);
    let mut peer_id = [b'0'; 20];
    peer_id[..8].copy_from_slice(&peer.client_prefix);
    peer_id[8..12].copy_from_slice(&(i as u32).to_be_bytes());
    let reserved = Reserved::NONE.with_extended(true).with_fast(true);
    let mut out = peer_wire::encode_handshake(&torrent.info_hash, &peer_id, reserved).to_vec();
    let ext = ExtHandshake {
        m: vec![(b"ut_pex".as_slice(), 1), (b"ut_metadata".as_slice(), 2)],
        v: Some(peer.client_name.as_bytes()),
        p: Some(peer.addr.port()),
        ..ExtHandshake::default()
    };
    out.extend(ext.to_message_bytes());
    let n = torrent.piece_count;
    let have = ((progress * n as f64).floor() as u32).min(n);
    // What this answer advertises: the bitfield plus the haves that follow it.
    let advertised = if have == n || have == 0 {
        have
    } else {
        (have + 3).min(n)
    };
    if let Ok(mut a) = shared.answers.lock() {
        a[i].push((now, advertised as f64 / n as f64));
    }
    if have == n {
        Message::HaveAll.encode_into(&mut out);
    } else if have == 0 {
        Message::HaveNone.encode_into(&mut out);
    } else {
        let mut bits = vec![0u8; peer_wire::bitfield::byte_len(n)];
        for piece in 0..have {
            peer_wire::bitfield::set_piece(&mut bits, piece);
        }
        Message::Bitfield(&bits).encode_into(&mut out);
        // A downloading peer keeps announcing new pieces.
        for piece in have..(have + 3).min(n) {
            Message::Have(piece).encode_into(&mut out);
        }
    }
    if stream.write_all(&out).is_err() {
        return;
    }
    // Like a real client, a downloading peer announces every piece it finishes to every
    // connected peer while the connection lasts; one that leaves when done hangs up at once.
    let mut announced = advertised;
    let mut sink = [0u8; 1024];
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let now = shared.epoch.elapsed().as_secs_f64();
        let target = ((peer.progress_at(now) * n as f64).floor() as u32).min(n);
        if target > announced {
            let mut out = Vec::new();
            for piece in announced..target {
                Message::Have(piece).encode_into(&mut out);
            }
            announced = target;
            if let Ok(mut a) = shared.answers.lock() {
                a[i].push((now, announced as f64 / n as f64));
            }
            if stream.write_all(&out).is_err() {
                return;
            }
        }
        if peer.behaviour == Behaviour::LeavesWhenDone && announced == n {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

fn read_exact_until(shared: &Shared, s: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> bool {
    let mut got = 0;
    while got < buf.len() {
        if shared.stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return false;
        }
        match s.read(&mut buf[got..]) {
            Ok(0) => return false,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

fn drain_until_closed(shared: &Shared, s: &mut TcpStream, deadline: Instant) {
    let mut sink = [0u8; 1024];
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

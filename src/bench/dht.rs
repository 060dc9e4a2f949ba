//! `swarmscan bench dht`: KRPC queries and lookups per second that one engine worker running
//! our DHT node ([`crate::proto::dht::DhtNode`]) sustains against a simulated DHT on
//! loopback, and the floor measured in the same run.
//!
//! - The simulated DHT: a second engine worker binds one UDP socket per simulated node
//!   (127.77.x.y, `--nodes` of them) and answers `ping`, `find_node` and `get_peers` with
//!   correct KRPC: the 8 nodes closest to the target, a token, and for info-hashes it is
//!   among the closest to, 8 peers.
//! - The engine side: one worker hosting one `DhtNode` on its UDP socket through the scan's
//!   glue ([`crate::dht::host::DhtHost`]), bootstrapped from the simulated nodes, keeping `--lookups` `get_peers` lookups for random info-hashes
//!   running (each α = 3 queries in flight).
//! - The floor: the cheapest loop that gets the same answers from the same simulated DHT: one
//!   plain socket, prebuilt `find_node` queries sent with `sendmmsg`, answers taken with
//!   `recvmmsg`, as many outstanding as the node can have (`--lookups` × 3), no decoding.
//!
//! Engine and floor rounds alternate; each reports replies per second of wall time and per
//! CPU second of its own thread (what one core sustains, less blurred by a loaded machine),
//! and the ratios engine/floor.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::dht::host::{DhtHost, HostConfig, HostEvent};
use crate::engine::exchange::Exchange;
use crate::engine::net::RawSockAddr;
use crate::engine::{
    DatagramQueue, Millis, ProbeDone, ProbeRequest, Worker, WorkerConfig, WorkerDriver,
};
use crate::limits;
use crate::proto::dht::{DhtConfig, GetPeersOptions};
use crate::proto::krpc::{self, Body, Id20, Message, NodeV4, Query, QueryKind, Response, Want};

/// Nodes in a `nodes` answer, and peers a simulated node holds per info-hash.
const K: usize = 8;
/// Parallel queries per lookup (our node's α).
const ALPHA: usize = 3;
/// Datagrams per recvmmsg / sendmmsg call in the floor.
const BATCH: usize = 64;
/// Floor: with nothing back for this long, the window is assumed lost and sent again.
const FLOOR_LOSS_MS: u64 = 20;

/// Options of `bench dht`.
#[derive(clap::Args, Debug, Clone)]
pub struct DhtBenchArgs {
    /// Measured seconds per side (engine and floor), split over the rounds (0.1 to 86400).
    #[arg(long, default_value_t = 6.0, value_parser = limits::secs(0.1, 86_400.0))]
    seconds: f64,
    /// Alternating engine/floor rounds (evens out machine noise).
    #[arg(long, default_value_t = 3, value_parser = limits::count::<u32>(1, 1000))]
    rounds: u32,
    /// Simulated DHT nodes (one UDP socket each, on 127.77.x.y).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<usize>(16, 60_000))]
    nodes: usize,
    /// `get_peers` lookups our node keeps running (at most the node's lookup limit, 64).
    #[arg(long, default_value_t = 64, value_parser = limits::count::<usize>(1, 64))]
    lookups: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn node_addr(k: usize) -> SocketAddr {
    SocketAddr::from(([127, 77, (k / 250) as u8, (k % 250 + 1) as u8], 0))
}

fn sha1_id(data: &[u8]) -> Id20 {
    Id20(Sha1::digest(data).into())
}

/// The simulated DHT: every node's id, and an index sorted by id to find the closest.
struct Network {
    ids: Vec<Id20>,
    /// (id, node), sorted by id: the nodes sharing the longest prefix with a target are
    /// neighbours here, so the closest by XOR are among a target's neighbours.
    sorted: Vec<(Id20, usize)>,
}

impl Network {
    fn new(nodes: usize) -> Network {
        let ids: Vec<Id20> = (0..nodes)
            .map(|k| sha1_id(format!("bench node {k}").as_bytes()))
            .collect();
        let mut sorted: Vec<(Id20, usize)> = ids.iter().copied().zip(0..).collect();
        sorted.sort();
        Network { ids, sorted }
    }

    /// The `K` nodes closest to `target` (searched among its 32 neighbours in id order,
    /// which hold them for any network this size short of a coincidence).
    fn closest(&self, target: &Id20) -> [usize; K] {
        let pos = self.sorted.partition_point(|(id, _)| id < target);
        let lo = pos.saturating_sub(16);
        let hi = (pos + 16).min(self.sorted.len());
        let mut near: Vec<(Id20, usize)> = self.sorted[lo..hi]
            .iter()
            .map(|(id, k)| (id.distance(target), *k))
            .collect();
        near.sort_unstable();
        let mut out = [0; K];
        for (slot, (_, k)) in out.iter_mut().zip(near) {
            *slot = k;
        }
        out
    }
}

/// The simulated DHT's worker driver: answers each query from the node whose socket it hit.
struct SimulatedDht {
    net: Network,
    /// Local socket address → simulated node.
    by_local: HashMap<SocketAddr, usize>,
    locals: Vec<SocketAddr>,
    answered: u64,
    refused: u64,
    garbage: u64,
}

impl SimulatedDht {
    fn answer(&mut self, me: usize, bytes: &[u8]) -> Option<Vec<u8>> {
        let msg = krpc::decode(bytes).ok()?;
        let Body::Query(q) = msg.body else {
            return None;
        };
        let mut r = Response::with_id(self.net.ids[me]);
        let (target, get_peers) = match q.kind {
            QueryKind::Ping => (None, false),
            QueryKind::FindNode { target } => (Some(target), false),
            QueryKind::GetPeers { info_hash, .. } => (Some(info_hash), true),
            _ => return None,
        };
        if let Some(target) = target {
            let closest = self.net.closest(&target);
            r.nodes = Some(
                closest
                    .iter()
                    .filter_map(|&k| match self.locals.get(k) {
                        Some(SocketAddr::V4(addr)) => Some(NodeV4 {
                            id: self.net.ids[k],
                            addr: *addr,
                        }),
                        _ => None,
                    })
                    .collect(),
            );
            if get_peers {
                r.token = Some(b"tokn".to_vec());
                if closest.contains(&me) {
                    // Peers derived from the info-hash, the same at every node.
                    r.values = Some(
                        (0..K as u8)
                            .map(|p| SocketAddr::from(([127, 99, target.0[0], p + 1], 6881)))
                            .collect(),
                    );
                }
            }
        }
        Some(Message::new(msg.transaction_id, Body::Response(r)).encode())
    }
}

impl WorkerDriver for SimulatedDht {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.locals = udp.to_vec();
        self.by_local = udp.iter().copied().zip(0..).collect();
    }
    fn datagram(
        &mut self,
        _now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        let Some(&me) = self.by_local.get(&local) else {
            return;
        };
        match self.answer(me, bytes) {
            Some(reply) => match out.push(local, from, &reply) {
                Ok(_) => self.answered += 1,
                Err(_) => self.refused += 1,
            },
            None => self.garbage += 1,
        }
    }
}

/// What the engine side counted in one round.
#[derive(Default)]
struct EngineRound {
    replies: u64,
    queries: u64,
    timeouts: u64,
    lookups_done: u64,
    lookup_queries: u64,
    peers: u64,
    send_refused: u64,
    secs: f64,
    cpu_secs: f64,
}

/// Our node on an engine worker (through the scan's own glue, [`DhtHost`]), keeping
/// `lookups` get_peers lookups running.
struct NodeDriver {
    host: DhtHost,
    lookups: usize,
    next_target: u64,
    round: EngineRound,
}

impl NodeDriver {
    fn events(&mut self) {
        while let Some(e) = self.host.poll_event() {
            match e {
                HostEvent::LookupDone { result, .. } => {
                    self.round.lookups_done += 1;
                    self.round.lookup_queries += result.queries as u64;
                }
                HostEvent::Peers { peers, .. } => self.round.peers += peers.len() as u64,
                _ => {}
            }
        }
    }
}

impl WorkerDriver for NodeDriver {
    type Conv = Exchange;
    fn next_probe(&mut self, _: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _: Millis, _: ProbeDone<Exchange>) {}
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.host.on_udp_bound(udp, 0);
    }
    fn datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        self.host.handle_datagram(now, local, from, bytes);
        self.host.poll_transmit(now, out);
        self.events();
    }
    fn poll_datagrams(&mut self, now: Millis, out: &mut DatagramQueue) {
        while self.host.lookups_running(0) < self.lookups {
            self.next_target += 1;
            let target = sha1_id(&self.next_target.to_be_bytes());
            let key = self.next_target;
            if self
                .host
                .get_peers(0, key, target, GetPeersOptions::default(), now)
                .is_err()
            {
                // No nodes yet (the bootstrap is under way): lookups start on a later call.
                break;
            }
        }
        self.host.poll_transmit(now, out);
        self.events();
    }
    fn next_wakeup(&self) -> Option<Millis> {
        self.host.next_deadline()
    }
}

fn engine_round(args: &DhtBenchArgs, bootstrap: &[SocketAddr], secs: f64, seed: u8) -> EngineRound {
    let stop = AtomicBool::new(false);
    let epoch = Instant::now();
    let host = DhtHost::new(HostConfig {
        node: DhtConfig {
            // Our bootstrap lookups and refreshes count against the limit too.
            max_lookups: args.lookups + 16,
            ..DhtConfig::default()
        },
        bootstrap: bootstrap.to_vec(),
        seed: Some([seed; 32]),
        ..HostConfig::default()
    });
    let mut driver = NodeDriver {
        host,
        lookups: args.lookups,
        next_target: u64::from(seed) << 40,
        round: EngineRound::default(),
    };
    let (started, cpu) = (Instant::now(), super::thread_cpu_secs());
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::SeqCst);
        });
        let cfg = WorkerConfig {
            max_in_flight: 1,
            ring_entries: 1024,
            recv_buffers: 16,
            udp: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..WorkerConfig::default()
        };
        Worker::<Exchange>::new(cfg, epoch).and_then(|mut w| w.run(&mut driver, &stop))
    });
    let mut round = std::mem::take(&mut driver.round);
    round.secs = started.elapsed().as_secs_f64();
    round.cpu_secs = super::thread_cpu_secs() - cpu;
    let stats = driver.host.node_stats();
    round.replies = stats.replies;
    round.queries = stats.datagrams_out;
    round.timeouts = stats.timeouts;
    round.send_refused = driver.host.stats().send_refused;
    if let Err(e) = result {
        eprintln!("bench dht: engine worker: {e}");
    }
    round
}

/// Fixed arrays for one recvmmsg / sendmmsg batch; pointers are set right before each call.
struct Batch {
    bufs: Vec<[u8; 2048]>,
    iovs: Vec<libc::iovec>,
    names: Vec<libc::sockaddr_in6>,
    msgs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        fn zeroed<T>() -> T {
            // Safety: only used for iovec, sockaddr_in6 and mmsghdr, plain C structs for
            // which all-zero is valid (null pointers, zero lengths).
            unsafe { std::mem::zeroed() }
        }
        Batch {
            bufs: vec![[0u8; 2048]; BATCH],
            iovs: (0..BATCH).map(|_| zeroed()).collect(),
            names: (0..BATCH).map(|_| zeroed()).collect(),
            msgs: (0..BATCH).map(|_| zeroed()).collect(),
        }
    }

    /// recvmmsg: waits (up to the socket's timeout) for one, takes what else is there.
    fn recv(&mut self, fd: i32) -> usize {
        for i in 0..BATCH {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = self.bufs[i].len();
            let hdr = &mut self.msgs[i].msg_hdr;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in6).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in6>() as u32;
            self.msgs[i].msg_len = 0;
        }
        // Safety: every message points into this batch's live arrays of the stated sizes.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        n.max(0) as usize
    }
}

/// The floor's prebuilt queries: one `find_node` per simulated node, and its address.
struct FloorQueries {
    queries: Vec<Vec<u8>>,
    to: Vec<RawSockAddr>,
    next: usize,
}

impl FloorQueries {
    fn new(nodes: &[SocketAddr]) -> FloorQueries {
        let own = sha1_id(b"bench floor");
        let queries = (0..nodes.len())
            .map(|k| {
                let target = sha1_id(format!("floor target {k}").as_bytes());
                let q = Query {
                    id: own,
                    want: Want::default(),
                    kind: QueryKind::FindNode { target },
                };
                Message::new(b"fl\x00\x01".to_vec(), Body::Query(q)).encode()
            })
            .collect();
        FloorQueries {
            queries,
            to: nodes.iter().map(|a| RawSockAddr::new(*a)).collect(),
            next: 0,
        }
    }

    /// Sends `count` queries to the next nodes in turn, `BATCH` per sendmmsg.
    fn send(&mut self, fd: i32, out: &mut Batch, count: usize) {
        let mut left = count;
        while left > 0 {
            let now = left.min(BATCH);
            for i in 0..now {
                let k = self.next;
                self.next = (self.next + 1) % self.queries.len();
                // sendmmsg only reads the buffer.
                out.iovs[i].iov_base = self.queries[k].as_ptr() as *mut libc::c_void;
                out.iovs[i].iov_len = self.queries[k].len();
                let hdr = &mut out.msgs[i].msg_hdr;
                hdr.msg_iov = &mut out.iovs[i];
                hdr.msg_iovlen = 1;
                hdr.msg_name = self.to[k].as_ptr() as *mut libc::c_void;
                hdr.msg_namelen = self.to[k].len();
            }
            // Safety: messages 0..now point at live queries and addresses of the stated sizes.
            unsafe { libc::sendmmsg(fd, out.msgs.as_mut_ptr(), now as u32, 0) };
            left -= now;
        }
    }
}

struct FloorRound {
    replies: u64,
    refills: u64,
    secs: f64,
    cpu_secs: f64,
}

fn floor_round(
    queries: &mut FloorQueries,
    window: usize,
    secs: f64,
) -> std::io::Result<FloorRound> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(FLOOR_LOSS_MS)))?;
    let fd = socket.as_raw_fd();
    let (mut out, mut back) = (Batch::new(), Batch::new());
    let (mut replies, mut refills) = (0u64, 0u64);
    let (started, cpu) = (Instant::now(), super::thread_cpu_secs());
    let until = started + Duration::from_secs_f64(secs);
    queries.send(fd, &mut out, window);
    while Instant::now() < until {
        let n = back.recv(fd);
        if n == 0 {
            refills += 1;
            queries.send(fd, &mut out, window);
            continue;
        }
        replies += n as u64;
        queries.send(fd, &mut out, n);
    }
    Ok(FloorRound {
        replies,
        refills,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: super::thread_cpu_secs() - cpu,
    })
}

pub fn run(args: &DhtBenchArgs) -> std::io::Result<()> {
    crate::engine::net::raise_nofile_limit(
        args.nodes as u64 + 256,
        &format!("--nodes {}", args.nodes),
    )
    .map_err(std::io::Error::other)?;
    let stop_dht = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<Vec<SocketAddr>>();
    let per_round = args.seconds / args.rounds as f64;
    let window = args.lookups * ALPHA;
    let mut engine_rounds = Vec::new();
    let mut floor_rounds = Vec::new();
    let simulated = std::thread::scope(|scope| -> std::io::Result<SimulatedDht> {
        let dht = scope.spawn(|| -> std::io::Result<SimulatedDht> {
            let mut sim = SimulatedDht {
                net: Network::new(args.nodes),
                by_local: HashMap::new(),
                locals: Vec::new(),
                answered: 0,
                refused: 0,
                garbage: 0,
            };
            let cfg = WorkerConfig {
                index: 1,
                max_in_flight: 1,
                ring_entries: 4096,
                recv_buffers: 16,
                udp: (0..args.nodes).map(node_addr).collect(),
                udp_recv_buffers: 4096,
                udp_send_slots: 4096,
                ..WorkerConfig::default()
            };
            let worker = Worker::<Exchange>::new(cfg, Instant::now());
            let mut worker = match worker {
                Ok(w) => w,
                Err(e) => {
                    let _ = tx.send(Vec::new());
                    return Err(e);
                }
            };
            let _ = tx.send(worker.udp_addrs());
            worker.run(&mut sim, &stop_dht)?;
            Ok(sim)
        });
        let nodes = rx.recv().unwrap_or_default();
        if nodes.len() == args.nodes {
            let bootstrap: Vec<SocketAddr> =
                nodes.iter().step_by(nodes.len() / 8).copied().collect();
            let mut queries = FloorQueries::new(&nodes);
            for r in 0..args.rounds {
                engine_rounds.push(engine_round(args, &bootstrap, per_round, r as u8 + 1));
                match floor_round(&mut queries, window, per_round) {
                    Ok(f) => floor_rounds.push(f),
                    Err(e) => {
                        stop_dht.store(true, Ordering::SeqCst);
                        return Err(e);
                    }
                }
            }
        }
        stop_dht.store(true, Ordering::SeqCst);
        dht.join()
            .map_err(|_| std::io::Error::other("the simulated DHT's thread panicked"))?
    })?;
    let sum_e = |f: fn(&EngineRound) -> f64| engine_rounds.iter().map(f).sum::<f64>();
    let sum_f = |f: fn(&FloorRound) -> f64| floor_rounds.iter().map(f).sum::<f64>();
    let replies = sum_e(|r| r.replies as f64);
    let engine_per_sec = replies / sum_e(|r| r.secs);
    let engine_per_cpu_sec = replies / sum_e(|r| r.cpu_secs);
    let lookups = sum_e(|r| r.lookups_done as f64);
    let floor_replies = sum_f(|r| r.replies as f64);
    let floor_per_sec = floor_replies / sum_f(|r| r.secs);
    let floor_per_cpu_sec = floor_replies / sum_f(|r| r.cpu_secs);
    if replies == 0.0 || floor_replies == 0.0 || lookups == 0.0 {
        return Err(std::io::Error::other(format!(
            "nothing measured: {replies} replies to our node, {lookups} lookups, {floor_replies} to the floor (simulated DHT answered {}, refused {}, garbage {})",
            simulated.answered, simulated.refused, simulated.garbage
        )));
    }
    let out = serde_json::json!({
        "bench": "dht",
        "seconds_per_side": args.seconds,
        "rounds": args.rounds,
        "simulated_nodes": args.nodes,
        "lookups_running": args.lookups,
        "window": window,
        "queries_per_sec": super::round2(engine_per_sec),
        "queries_per_cpu_sec": super::round2(engine_per_cpu_sec),
        "lookups_per_sec": super::round2(lookups / sum_e(|r| r.secs)),
        "lookups_per_cpu_sec": super::round2(lookups / sum_e(|r| r.cpu_secs)),
        "queries_per_lookup": super::round2(sum_e(|r| r.lookup_queries as f64) / lookups),
        "peers_found": sum_e(|r| r.peers as f64),
        "queries_sent": sum_e(|r| r.queries as f64),
        "timeouts": sum_e(|r| r.timeouts as f64),
        "send_refused": sum_e(|r| r.send_refused as f64),
        "floor_datagrams_per_sec": super::round2(floor_per_sec),
        "floor_datagrams_per_cpu_sec": super::round2(floor_per_cpu_sec),
        "floor_window_refills": sum_f(|r| r.refills as f64),
        "ratio": super::round3(engine_per_sec / floor_per_sec),
        "cpu_ratio": super::round3(engine_per_cpu_sec / floor_per_cpu_sec),
        "simulated_dht_answered": simulated.answered,
        "simulated_dht_refused": simulated.refused,
        "loadavg": super::loadavg(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    super::print_report(&out, args.json);
    Ok(())
}

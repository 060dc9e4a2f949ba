//! `swarmscan bench watch`: memory per watched (held) connection.
//!
//! `swarmscan bench watch --watched 10000 --hold-secs 30 --workers 2 --json`
//!
//! A fake swarm in a child process (its descriptors do not count against ours) answers every
//! connection with a handshake and a bitfield, keeps it open and sends a `have` every
//! `--have-every-ms` per connection. Our side is the real engine with the real
//! [`ProbeConv`](crate::scan::driver::ProbeConv): on [`AskReason::Answered`] the driver calls
//! `watch` with a threshold the fake peers never reach, so every connection becomes held (one
//! connection per fake peer, no revisits). RSS is sampled before any connection (rings and
//! slab built), with half of the connections held and with all of them held (then for
//! `--hold-secs`), and the kernel's socket memory is read from `/proc/meminfo` (Slab) and
//! `/proc/net/sockstat` (TCP buffer pages) at the same points.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    cpu_secs, peer_addr, print_report, round2, spawn_fake_swarm, status_field, SwarmChild,
};
use crate::engine::{self, Ending, EngineConfig, Millis, ProbeDone, ProbeRequest, WorkerDriver};
use crate::limits;
use crate::proto::probe::{AskReason, ProbeSettings, WatchPlan};
use crate::scan::catalog::{Catalog, CatalogTorrent};
use crate::scan::driver::{ProbeConv, WatchSettings};

/// Options of `bench watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Connections to hold open (one fake peer each, 127.10.0.1 upwards).
    #[arg(long, default_value_t = 10_000, value_parser = limits::count::<u32>(1, super::MAX_FAKE_PEERS))]
    watched: u32,
    /// Seconds to hold them all while sampling RSS (up to 86400).
    #[arg(long, default_value_t = 30.0, value_parser = limits::secs(limits::MIN_SECS, 86_400.0))]
    hold_secs: f64,
    /// Longest time to get them all connected and held, seconds (up to 86400).
    #[arg(long, default_value_t = 120.0, value_parser = limits::secs(limits::MIN_SECS, 86_400.0))]
    connect_secs: f64,
    /// Engine workers.
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    workers: usize,
    /// Fake swarm threads.
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    swarm_threads: usize,
    /// Pieces in the fake torrent (bitfield size; each peer has about half).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<u32>(1, limits::MAX_PIECES))]
    pieces: u32,
    /// Each fake peer sends a `have` this often (0 = never).
    #[arg(long, default_value_t = 5000, value_parser = limits::count::<u64>(0, limits::MAX_MS))]
    have_every_ms: u64,
    /// Keep-alive interval on watched connections, ms (the scan's is 60 000).
    #[arg(long, default_value_t = 10_000, value_parser = limits::count::<u64>(1, limits::MAX_MS))]
    keepalive_ms: u64,
    /// Probes in flight before they turn into watches (over all workers).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<usize>(1, limits::MAX_CONNECTIONS))]
    in_flight: usize,
    /// Connects per second (0 = unlimited).
    #[arg(long, default_value_t = 2000, value_parser = limits::count::<u64>(0, limits::MAX_CONNECTIONS))]
    connect_rate: u64,
    /// Receive buffers per worker ring (power of two) × 4 KiB.
    #[arg(long, default_value_t = 1024, value_parser = limits::power_of_two::<u16>(1, 32768))]
    recv_buffers: u16,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct WatchShared {
    /// Probes may start for tokens below this.
    limit: AtomicU64,
    workers_started: AtomicUsize,
    held: AtomicUsize,
    held_max: AtomicUsize,
    /// Answers whose watch the budget refused (never expected).
    refused: AtomicU64,
    /// Probes that ended before their answer (connect errors, timeouts, ...).
    failed: AtomicU64,
    /// Watches that ended before the stop (the peer closed or went silent).
    ended_early: AtomicU64,
    /// `have` messages received on watched connections.
    haves: AtomicU64,
}

struct WatchDriver {
    shared: Arc<WatchShared>,
    next: u64,
    stride: u64,
    peers: u32,
    port: u16,
    settings: Arc<ProbeSettings>,
    catalog: Arc<Catalog>,
    plan: WatchPlan,
    /// Watches this worker may hold.
    budget: usize,
    held: usize,
}

impl WorkerDriver for WatchDriver {
    type Conv = ProbeConv;

    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        let token = self.next;
        if token >= self.shared.limit.load(Ordering::Relaxed) {
            return None;
        }
        self.next += self.stride;
        Some(ProbeRequest {
            addr: peer_addr(token, self.peers, self.port),
            token,
            conv: ProbeConv::outgoing(
                self.settings.clone(),
                self.catalog.clone(),
                0,
                crate::store::record::ProbeEvent::FirstContact,
                now,
            ),
        })
    }

    fn on_start(&mut self, _waker: engine::Waker, _listening: &[SocketAddr]) {
        self.shared.workers_started.fetch_add(1, Ordering::Relaxed);
    }

    fn on_ask(
        &mut self,
        now: Millis,
        _token: u64,
        _peer: SocketAddr,
        _incoming: bool,
        conv: &mut ProbeConv,
        send: &mut Vec<u8>,
    ) -> engine::Verdict {
        match conv.take_ask() {
            Some(AskReason::Answered) if self.held < self.budget => {
                // As the scan's `on_answered` does for a peer worth watching.
                conv.watch(now, self.plan);
                self.held += 1;
                let held = self.shared.held.fetch_add(1, Ordering::Relaxed) + 1;
                self.shared.held_max.fetch_max(held, Ordering::Relaxed);
                engine::Verdict::Continue
            }
            Some(AskReason::Answered) => {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                conv.stop(now, send);
                engine::Verdict::Finished
            }
            // The scan records a sample (or a batch of haves) here; the watch goes on.
            Some(AskReason::Sample | AskReason::Progress) | None => engine::Verdict::Continue,
            // The threshold is out of reach; should a peer cross it, the watch ends as in a scan.
            Some(AskReason::Crossed(_)) => {
                conv.stop(now, send);
                engine::Verdict::Finished
            }
        }
    }

    fn probe_done(&mut self, _now: Millis, done: ProbeDone<ProbeConv>) {
        let s = &self.shared;
        if done.conv.was_watched() {
            self.held -= 1;
            s.held.fetch_sub(1, Ordering::Relaxed);
            s.haves
                .fetch_add(u64::from(done.conv.report().haves), Ordering::Relaxed);
            if !matches!(done.ending, Ending::Closed(Some(libc::ECANCELED))) {
                s.ended_early.fetch_add(1, Ordering::Relaxed);
            }
        } else if !matches!(done.ending, Ending::Finished) {
            s.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, ProbeConv)> {
        None
    }
}

/// System-wide kernel memory figures that grow with TCP sockets.
#[derive(Debug, Clone, Copy, Default)]
struct KernelMem {
    /// `/proc/meminfo` Slab (socket, inode, file, epoll and io_uring objects live there).
    slab_bytes: u64,
    /// `/proc/net/sockstat` TCP `mem` (pages of socket buffers) × page size.
    tcp_buffer_bytes: u64,
    /// `/proc/net/sockstat` TCP `inuse`.
    tcp_inuse: u64,
}

impl KernelMem {
    fn read() -> KernelMem {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let slab_kb = meminfo
            .lines()
            .find(|l| l.starts_with("Slab:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
        let tcp: Vec<&str> = sockstat
            .lines()
            .find(|l| l.starts_with("TCP:"))
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        let field = |name: &str| {
            tcp.iter()
                .position(|w| *w == name)
                .and_then(|i| tcp.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Safety: sysconf has no pointer arguments.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        KernelMem {
            slab_bytes: slab_kb * 1024,
            tcp_buffer_bytes: field("mem") * page,
            tcp_inuse: field("inuse"),
        }
    }
}

fn spawn_watch_swarm(args: &WatchArgs, max_seconds: u64) -> std::io::Result<SwarmChild> {
    spawn_fake_swarm(&[
        "--threads".into(),
        args.swarm_threads.to_string(),
        "--pieces".into(),
        args.pieces.to_string(),
        "--have-every-ms".into(),
        args.have_every_ms.to_string(),
        "--max-seconds".into(),
        max_seconds.to_string(),
    ])
}

/// Waits (bounded) until `done()`; true if it happened.
fn wait_for(until: Instant, done: impl Fn() -> bool) -> bool {
    while !done() {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// One snapshot of our memory and the kernel's.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss: u64,
    kernel: KernelMem,
    held: usize,
}

fn sample(shared: &WatchShared) -> Sample {
    Sample {
        rss: status_field("VmRSS:"),
        kernel: KernelMem::read(),
        held: shared.held.load(Ordering::Relaxed),
    }
}

/// Runs `bench watch`.
pub fn run(args: &WatchArgs) -> std::io::Result<()> {
    // Every flag was checked by its parser (crate::limits).
    let watched = args.watched as usize;
    let cfg = EngineConfig {
        workers: args.workers,
        max_in_flight: args.in_flight.min(watched),
        max_held: watched,
        max_incoming: 0,
        connects_per_sec: args.connect_rate,
        connect_timeout_ms: 10_000,
        pin_cores: false,
        recv_buffers: args.recv_buffers,
        recv_buffer_size: 4096,
        ring_entries: 4096,
        listen: Vec::new(),
        // No UDP sockets: these benchmarks are TCP only.
        ..EngineConfig::default()
    };
    engine::net::raise_nofile_limit(
        cfg.descriptors_needed(),
        &format!("--watched {} --in-flight {}", args.watched, args.in_flight),
    )
    .map_err(std::io::Error::other)?;
    let rss_idle = status_field("VmRSS:");
    let budget = args.connect_secs * 2.0 + args.hold_secs + 60.0;
    let swarm = spawn_watch_swarm(args, budget as u64)?;
    let settings = Arc::new(ProbeSettings {
        quiet_timeout_ms: 10_000,
        grace_ms: 0,
        max_duration_ms: 30_000,
        ..Default::default()
    });
    let catalog = Catalog::new(vec![CatalogTorrent {
        db_id: 0,
        wire_hash: [0xAB; 20],
        alt_hash: None,
        name: "bench".into(),
        piece_count: args.pieces.into(),
        total_size: 0,
        trackers: Vec::new(),
    }]);
    let defaults = WatchSettings::default();
    let plan = WatchPlan {
        // Out of reach: the fake peers never have every piece plus one.
        notify_have: args.pieces + 1,
        sample_ms: defaults.sample_ms,
        keepalive_ms: args.keepalive_ms,
        silence_ms: defaults.silence_ms,
        // TCP only here (no liveness keep-alives; see `UTP_LIVENESS_MS`).
        liveness_ms: None,
    };
    let shared = Arc::new(WatchShared::default());
    let drivers: Vec<_> = (0..args.workers)
        .map(|w| WatchDriver {
            shared: shared.clone(),
            next: w as u64,
            stride: args.workers as u64,
            peers: args.watched,
            port: swarm.port,
            settings: settings.clone(),
            catalog: catalog.clone(),
            plan,
            budget: cfg.worker(w).max_held,
            held: 0,
        })
        .collect();
    let stop = AtomicBool::new(false);
    let cpu_before = cpu_secs();
    let started = Instant::now();
    let connect_until = started + Duration::from_secs_f64(args.connect_secs + 10.0);
    let all = watched;
    let half = watched / 2;
    let (result, baseline, at_half, at_full, rss_max, at_end, connect_secs, hold_secs) =
        std::thread::scope(|scope| {
            // Set on every way out of this closure, a panic included: the workers then end.
            let _stop = crate::threads::StoreOnDrop(&stop, true);
            let runner = scope.spawn(|| engine::run_workers(&cfg, drivers, &stop));
            // Rings, buffer rings and slabs built, no connection yet.
            wait_for(connect_until, || {
                shared.workers_started.load(Ordering::Relaxed) == args.workers
                    || runner.is_finished()
            });
            std::thread::sleep(Duration::from_millis(300));
            let baseline = sample(&shared);
            let go = Instant::now();
            let until = go + Duration::from_secs_f64(args.connect_secs);
            // Half, then all: the slope between the two excludes fixed costs that show up
            // with the first connections (receive buffers touched, allocator arenas).
            shared.limit.store(half as u64, Ordering::Relaxed);
            wait_for(until, || {
                shared.held.load(Ordering::Relaxed) >= half || runner.is_finished()
            });
            std::thread::sleep(Duration::from_millis(1000));
            let at_half = sample(&shared);
            shared.limit.store(all as u64, Ordering::Relaxed);
            wait_for(until, || {
                shared.held.load(Ordering::Relaxed) >= all || runner.is_finished()
            });
            let connect_secs = go.elapsed().as_secs_f64();
            std::thread::sleep(Duration::from_millis(1000));
            let at_full = sample(&shared);
            // Hold them, sampling.
            let hold_started = Instant::now();
            let hold_until = hold_started + Duration::from_secs_f64(args.hold_secs);
            let mut rss_max = at_full.rss;
            while Instant::now() < hold_until && !runner.is_finished() {
                std::thread::sleep(Duration::from_millis(100));
                rss_max = rss_max.max(status_field("VmRSS:"));
            }
            let at_end = sample(&shared);
            let hold_secs = hold_started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let result = runner
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("engine panicked")));
            (
                result,
                baseline,
                at_half,
                at_full,
                rss_max,
                at_end,
                connect_secs,
                hold_secs,
            )
        });
    let cpu = cpu_secs() - cpu_before;
    drop(swarm);
    let stats: Vec<_> = result?.into_iter().map(|(_, s)| s).collect();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let held = at_end.held;
    let per = |num: u64, den: usize| {
        if den > 0 {
            (num as f64 / den as f64).round()
        } else {
            0.0
        }
    };
    let rss_held = at_end.rss;
    let rss_per_watched = per(rss_held.saturating_sub(baseline.rss), held);
    let slope_n = at_end.held.saturating_sub(at_half.held);
    let rss_slope = per(rss_held.saturating_sub(at_half.rss), slope_n);
    let slot_bytes = engine::Worker::<ProbeConv>::bytes_per_slot();
    // Both ends of every connection are on this host: two sockets per watched connection.
    let sockets = 2 * held;
    let k0 = baseline.kernel;
    let k1 = at_end.kernel;
    let slab_delta = k1.slab_bytes.saturating_sub(k0.slab_bytes);
    let buf_delta = k1.tcp_buffer_bytes.saturating_sub(k0.tcp_buffer_bytes);
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let out = serde_json::json!({
        "bench": "watch",
        "watched": args.watched,
        "held_max": shared.held_max.load(Ordering::Relaxed),
        "held": held,
        "held_half": at_half.held,
        "rss_idle_bytes": rss_idle,
        "rss_baseline_bytes": baseline.rss,
        "rss_half_bytes": at_half.rss,
        "rss_full_bytes": at_full.rss,
        "rss_held_bytes": rss_held,
        "rss_max_while_held_bytes": rss_max,
        // (RSS with all held − RSS with rings and slab built, no connection) / held.
        "rss_per_watched_bytes": rss_per_watched,
        // (RSS with all held − RSS with half held) / the difference in held: the marginal
        // cost, free of fixed costs touched by the first connections.
        "rss_per_watched_slope_bytes": rss_slope,
        // Slab entry reserved per slot of max_in_flight + max_held when a worker is built
        // (inside the baseline, so in neither figure above).
        "slot_bytes_reserved": slot_bytes,
        "kernel_bytes_per_socket": per(slab_delta + buf_delta, sockets),
        "kernel": {
            "sockets_both_ends": sockets,
            "tcp_inuse_delta": k1.tcp_inuse as i64 - k0.tcp_inuse as i64,
            "slab_delta_bytes": slab_delta,
            "tcp_buffer_delta_bytes": buf_delta,
            "slab_bytes_per_socket": per(slab_delta, sockets),
            "tcp_buffer_bytes_per_socket": per(buf_delta, sockets),
            "slab_half_bytes": at_half.kernel.slab_bytes,
            "release": engine::ring::kernel_release(),
        },
        "haves_received": load(&shared.haves),
        "haves_per_sec": round2(load(&shared.haves) as f64 / (connect_secs + hold_secs).max(0.001)),
        "failed": load(&shared.failed),
        "refused": load(&shared.refused),
        "ended_early": load(&shared.ended_early),
        "connect_secs": round2(connect_secs),
        "seconds": round2(hold_secs),
        "cpu_secs": round2(cpu),
        "workers": args.workers,
        "swarm_threads": args.swarm_threads,
        "pieces": args.pieces,
        "have_every_ms": args.have_every_ms,
        "keepalive_ms": args.keepalive_ms,
        "in_flight": cfg.max_in_flight,
        "recv_buffers_per_worker": args.recv_buffers,
        "engine": stats,
        "loadavg": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    print_report(&out, args.json);
    Ok(())
}

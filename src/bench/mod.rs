//! Probe throughput benchmark: a fake swarm in a child process, the real engine running the
//! scan's own probe ([`ProbeConv`](crate::scan::driver::ProbeConv)), and the kernel floor
//! (cheapest possible loop) in the same run.
//!
//! `swarmscan bench probes --seconds 10 --peers 20000 --in-flight 1000 --workers 2 --json`
//!
//! With `--encryption require` every round also runs the engine with MSE/PE on every probe
//! (the fake swarm answers as an MSE responder), and a micro-measurement of the DH
//! exponentiation: encrypted and plaintext probes/s come from the same run.

pub mod dht;
pub mod fake_swarm;
pub mod handshake;
pub mod memory;
pub mod utp;
pub mod watch;

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::{self, Ending, EngineConfig, Millis, ProbeDone, ProbeRequest, WorkerDriver};
use crate::limits;

/// Most fake peers: distinct addresses from 127.10.0.1 to 127.255.255.255.
pub const MAX_FAKE_PEERS: u64 = 0x00F5_FFFE;

/// The info-hash of the benchmark torrent (the fake swarm's MSE responder knows only it).
pub const BENCH_INFO_HASH: [u8; 20] = [0xAB; 20];

/// Encryption of the engine's probes in `bench probes`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchEncryption {
    /// Plaintext probes only.
    Off,
    /// Each round also runs a phase with MSE/PE on every probe, after the plaintext phase.
    Require,
}

/// `swarmscan bench ...`
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(clap::Subcommand, Debug)]
enum BenchCommand {
    /// Probe throughput of the engine against a fake swarm, relative to the kernel floor.
    Probes(ProbesArgs),
    /// Engine memory per known peer (peer tables + revisit wheels), against a flat baseline.
    Peers(crate::scan::bench_peers::PeersBenchArgs),
    /// Memory per watched (held) connection: the real probe watching fake peers.
    Watch(watch::WatchArgs),
    /// Peak memory of a real scan on the 1 GB profile under a full load, against its limits.
    Memory(memory::MemoryArgs),
    /// uTP probe throughput against a fake uTP swarm, against TCP's in the same run.
    Utp(utp::UtpBenchArgs),
    /// `swarmscan sink` under a connection and datagram flood, against a kernel baseline.
    Sink(crate::sink::bench::SinkBenchArgs),
    /// KRPC queries/s and lookups/s of one worker's DHT node against a simulated DHT on
    /// loopback, relative to a sendmmsg/recvmmsg floor.
    Dht(dht::DhtBenchArgs),
    /// (internal) The fake swarm, run as a child process by `bench probes`.
    #[command(hide = true)]
    FakeSwarm(FakeSwarmArgs),
    /// (internal) The fake uTP swarm, run as a child process by `bench utp`.
    #[command(hide = true)]
    FakeUtpSwarm(utp::FakeUtpSwarmArgs),
}

/// Options of `bench probes`.
#[derive(clap::Args, Debug, Clone)]
pub struct ProbesArgs {
    /// Measured seconds per side (engine and floor), split over the rounds (0.1 to 86400).
    #[arg(long, default_value_t = 10.0, value_parser = limits::secs(0.1, 86_400.0))]
    seconds: f64,
    /// Fake peers (distinct 127.x addresses, 127.10.0.1 upwards).
    #[arg(long, default_value_t = 20_000, value_parser = limits::count::<u32>(1, MAX_FAKE_PEERS))]
    peers: u32,
    /// Probes in flight (over all workers).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<usize>(1, limits::MAX_CONNECTIONS))]
    in_flight: usize,
    /// Delay before a fake peer answers the handshake.
    #[arg(long, default_value_t = 0, value_parser = limits::count::<u64>(0, limits::MAX_MS))]
    peer_delay_ms: u64,
    /// Engine workers (and floor threads).
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    workers: usize,
    /// Fake swarm threads.
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    swarm_threads: usize,
    /// Alternating engine/floor rounds (evens out machine noise).
    #[arg(long, default_value_t = 4, value_parser = limits::count::<u32>(1, 1000))]
    rounds: u32,
    /// Pieces in the fake torrent (bitfield size).
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<u32>(1, limits::MAX_PIECES))]
    pieces: u32,
    /// Connects per second (0 = unlimited).
    #[arg(long, default_value_t = 0, value_parser = limits::count::<u64>(0, limits::MAX_CONNECTIONS))]
    connect_rate: u64,
    /// Receive buffers per worker ring (power of two) × 4 KiB.
    #[arg(long, default_value_t = 1024, value_parser = limits::power_of_two::<u16>(1, 32768))]
    recv_buffers: u16,
    /// Pin workers to cores.
    #[arg(long)]
    pin: bool,
    /// `require`: also measure probes with MSE/PE (RC4) on every connection, in the same run,
    /// and one DH exponentiation; the output gives encrypted/plaintext probes/s.
    #[arg(long, value_enum, default_value_t = BenchEncryption::Off)]
    encryption: BenchEncryption,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Also send every outcome to the real SQLite writer (as a scan does) and report whether
    /// it kept up. On a 2-core machine its thread takes CPU from the workers, so the
    /// engine/floor ratio is measured without it by default.
    #[arg(long)]
    store: bool,
}

/// Options of the hidden fake swarm.
#[derive(clap::Args, Debug, Clone)]
pub struct FakeSwarmArgs {
    /// Serving threads.
    #[arg(long, default_value_t = 2, value_parser = limits::count::<usize>(1, limits::MAX_THREADS))]
    threads: usize,
    /// Answer delay.
    #[arg(long, default_value_t = 0, value_parser = limits::count::<u64>(0, limits::MAX_MS))]
    delay_ms: u64,
    /// Pieces in the torrent.
    #[arg(long, default_value_t = 1000, value_parser = limits::count::<u32>(1, limits::MAX_PIECES))]
    pieces: u32,
    /// Exit after this many seconds at the latest.
    #[arg(long, default_value_t = 600, value_parser = limits::count::<u64>(1, limits::MAX_SECS as u64))]
    max_seconds: u64,
    /// After answering, send a `have` this often per connection (0 = never; `bench watch`).
    #[arg(long, default_value_t = 0, value_parser = limits::count::<u64>(0, limits::MAX_MS))]
    have_every_ms: u64,
}

/// Runs a bench subcommand; returns the exit code.
pub fn run(args: &BenchArgs) -> i32 {
    let result = match &args.command {
        BenchCommand::Probes(a) => run_probes(a),
        BenchCommand::Peers(a) => {
            return crate::scan::bench_peers::run(a);
        }
        BenchCommand::Watch(a) => watch::run(a),
        BenchCommand::Memory(a) => memory::run(a),
        BenchCommand::Utp(a) => utp::run(a),
        BenchCommand::Dht(a) => dht::run(a),
        BenchCommand::FakeSwarm(a) => run_fake_swarm(a),
        BenchCommand::FakeUtpSwarm(a) => utp::run_fake_utp_swarm(a),
        BenchCommand::Sink(a) => crate::sink::bench::run(a).map_err(std::io::Error::other),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e}");
            1
        }
    }
}

fn run_fake_swarm(args: &FakeSwarmArgs) -> std::io::Result<()> {
    let _ = engine::net::raise_nofile_limit(1024, "the fake swarm");
    let cfg = fake_swarm::SwarmConfig {
        port: 0,
        threads: args.threads,
        delay_ms: args.delay_ms,
        pieces: args.pieces,
        have_every_ms: args.have_every_ms,
    };
    let (listeners, port) = fake_swarm::bind(&cfg)?;
    println!("READY {port}");
    let stop = stop_on_stdin_or_after(args.max_seconds);
    fake_swarm::serve(&cfg, listeners, stop)
}

/// A flag set when our stdin closes (the parent ended or dropped us) or after `max_seconds`.
fn stop_on_stdin_or_after(max_seconds: u64) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let watcher_stop = stop.clone();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while let Ok(n) = stdin.read(&mut sink) {
            if n == 0 {
                break;
            }
        }
        watcher_stop.store(true, Ordering::Relaxed);
    });
    let limit_stop = stop.clone();
    std::thread::spawn(move || {
        let until = Instant::now() + Duration::from_secs(max_seconds);
        while !limit_stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(100));
        }
        limit_stop.store(true, Ordering::Relaxed);
    });
    stop
}

/// The address of fake peer `i` (127.10.0.1 upwards).
fn peer_addr(i: u64, peers: u32, port: u16) -> SocketAddr {
    let ip = 0x7F0A_0001u32 + (i % peers as u64) as u32;
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))
}

#[derive(Default)]
struct Shared {
    ok: AtomicU64,
    refused: AtomicU64,
    reset: AtomicU64,
    connect_timeout: AtomicU64,
    quiet_timeout: AtomicU64,
    eof: AtomicU64,
    bad_handshake: AtomicU64,
    other: AtomicU64,
    cancelled_at_stop: AtomicU64,
    in_flight: AtomicUsize,
    in_flight_max: AtomicUsize,
    connect_ms_sum: AtomicU64,
    /// Outcome records handed to the store writer.
    stored: AtomicU64,
    /// Most records any worker held back because the writer's channel was full.
    overflow_max: AtomicU64,
    /// Probes whose MSE handshake failed.
    mse_failed: AtomicU64,
    /// Successful probes that ran over MSE.
    mse_ok: AtomicU64,
}

struct BenchDriver {
    shared: Arc<Shared>,
    next: u64,
    stride: u64,
    peers: u32,
    port: u16,
    /// The real probe logic, as a scan runs it (grace 0: end at the bitfield, like the floor).
    settings: Arc<crate::proto::probe::ProbeSettings>,
    catalog: Arc<crate::scan::catalog::Catalog>,
    /// Every outcome goes to the real store writer, as in a scan (with `--store`).
    records: Option<crate::store::writer::RecordSender>,
    torrent_id: i64,
    /// MSE/PE on every probe.
    mse: bool,
}

/// The scan's own conversation type: the engine benchmark drives the real probe.
type RealProbe = crate::scan::driver::ProbeConv;

impl WorkerDriver for BenchDriver {
    type Conv = RealProbe;

    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<RealProbe>> {
        let token = self.next;
        self.next += self.stride;
        let cur = self.shared.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.shared.in_flight_max.fetch_max(cur, Ordering::Relaxed);
        let conv = RealProbe::outgoing(
            self.settings.clone(),
            self.catalog.clone(),
            0,
            crate::store::record::ProbeEvent::FirstContact,
            now,
        );
        Some(ProbeRequest {
            addr: peer_addr(token, self.peers, self.port),
            token,
            conv: if self.mse { conv.with_mse() } else { conv },
        })
    }

    fn on_ask(
        &mut self,
        now: Millis,
        _token: u64,
        _peer: std::net::SocketAddr,
        _incoming: bool,
        conv: &mut RealProbe,
        send: &mut Vec<u8>,
    ) -> crate::engine::Verdict {
        // The answer is known; as in a scan with no watch budget, the probe ends here.
        let _ = conv.take_ask();
        conv.stop(now, send);
        crate::engine::Verdict::Finished
    }

    fn probe_done(&mut self, _now: Millis, done: ProbeDone<RealProbe>) {
        use crate::proto::probe::ProbeEnd;
        self.shared.in_flight.fetch_sub(1, Ordering::Relaxed);
        let s = &self.shared;
        let report = done.conv.report();
        if let (Some(records), false) = (
            self.records.as_mut(),
            matches!(done.ending, Ending::Closed(Some(libc::ECANCELED))),
        ) {
            let outcome = crate::scan::driver::outcome_record(
                self.torrent_id,
                done.peer,
                crate::store::record::ProbeEvent::FirstContact,
                done.started_at as i64,
                done.connect_ms,
                report,
                None,
            );
            records.send(crate::store::record::Record::Outcome(Box::new(outcome)));
            s.stored.fetch_add(1, Ordering::Relaxed);
        }
        let counter = match (done.ending, &report.end) {
            (Ending::Finished, _) if report.succeeded() && report.pieces_have > 0 => {
                s.connect_ms_sum
                    .fetch_add(done.connect_ms.unwrap_or(0), Ordering::Relaxed);
                if report.mse.is_some() {
                    s.mse_ok.fetch_add(1, Ordering::Relaxed);
                }
                &s.ok
            }
            (_, ProbeEnd::MseFailed(_)) => &s.mse_failed,
            (_, ProbeEnd::QuietTimeout) => &s.quiet_timeout,
            (
                _,
                ProbeEnd::UnknownProtocol | ProbeEnd::UnknownInfoHash | ProbeEnd::ProtocolError(_),
            ) => &s.bad_handshake,
            (Ending::Closed(Some(libc::ECANCELED)), _) => &s.cancelled_at_stop,
            (Ending::Closed(Some(libc::ECONNREFUSED)), _) => &s.refused,
            (Ending::Closed(Some(libc::ECONNRESET)), _) => &s.reset,
            (Ending::Closed(Some(libc::ETIMEDOUT)), _) => &s.connect_timeout,
            (Ending::Closed(None), _) => &s.eof,
            _ => &s.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, RealProbe)> {
        None
    }

    fn tick(&mut self, _now: Millis) {
        let waiting = self.records.as_mut().map_or(0, |r| r.pump()) as u64;
        self.shared
            .overflow_max
            .fetch_max(waiting, Ordering::Relaxed);
    }
}

fn status_field(name: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn cpu_secs() -> f64 {
    // Safety: rusage is POD; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

struct SwarmChild {
    child: Child,
    port: u16,
}

impl SwarmChild {
    /// CPU seconds (user + system, all threads) the fake swarm has used so far.
    fn cpu_secs(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|v| v.parse::<u64>().ok())
            .sum();
        // Safety: sysconf has no pointer arguments.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        ticks as f64 / hz as f64
    }
}

impl Drop for SwarmChild {
    fn drop(&mut self) {
        // Closing stdin tells the child to stop; wait (bounded), then kill our own child.
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_swarm(args: &ProbesArgs, max_seconds: u64) -> std::io::Result<SwarmChild> {
    spawn_fake_swarm(&[
        "--threads".into(),
        args.swarm_threads.to_string(),
        "--delay-ms".into(),
        args.peer_delay_ms.to_string(),
        "--pieces".into(),
        args.pieces.to_string(),
        "--max-seconds".into(),
        max_seconds.to_string(),
    ])
}

/// Starts `swarmscan bench fake-swarm ARGS` as a child (its descriptors do not count against
/// ours) and waits for its `READY <port>` line.
fn spawn_fake_swarm(args: &[String]) -> std::io::Result<SwarmChild> {
    spawn_child("fake-swarm", args)
}

/// Starts `swarmscan bench SUBCOMMAND ARGS` as a child and waits for its `READY <port>` line.
fn spawn_child(subcommand: &str, args: &[String]) -> std::io::Result<SwarmChild> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(["bench", subcommand])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| {
            std::io::Error::other(format!("fake swarm did not start (said {line:?})"))
        })?;
    Ok(SwarmChild { child, port })
}

struct EnginePhase {
    ok: u64,
    cpu: f64,
    rss_max: u64,
    stats: Vec<engine::WorkerStats>,
}

fn engine_phase(
    args: &ProbesArgs,
    port: u16,
    secs: f64,
    shared: &Arc<Shared>,
    first: u64,
    writer: Option<&BenchStore>,
    mse: bool,
) -> std::io::Result<EnginePhase> {
    let cfg = EngineConfig {
        workers: args.workers,
        max_in_flight: args.in_flight,
        max_held: 0,
        max_incoming: 0,
        connects_per_sec: args.connect_rate,
        connect_timeout_ms: 10_000,
        pin_cores: args.pin,
        recv_buffers: args.recv_buffers,
        recv_buffer_size: 4096,
        ring_entries: 4096,
        listen: Vec::new(),
        // No UDP sockets: these benchmarks are TCP only.
        ..EngineConfig::default()
    };
    let settings = Arc::new(crate::proto::probe::ProbeSettings {
        quiet_timeout_ms: args.peer_delay_ms + 5000,
        grace_ms: 0,
        max_duration_ms: args.peer_delay_ms + 30_000,
        ..Default::default()
    });
    let catalog = crate::scan::catalog::Catalog::new(vec![crate::scan::catalog::CatalogTorrent {
        db_id: 0,
        wire_hash: BENCH_INFO_HASH,
        alt_hash: None,
        name: "bench".into(),
        piece_count: args.pieces.into(),
        total_size: 0,
        trackers: Vec::new(),
    }]);
    let drivers: Vec<_> = (0..args.workers)
        .map(|w| BenchDriver {
            shared: shared.clone(),
            next: first + w as u64,
            stride: args.workers as u64,
            peers: args.peers,
            port,
            settings: settings.clone(),
            catalog: catalog.clone(),
            records: writer.map(|w| w.writer.sender()),
            torrent_id: writer.map_or(0, |w| w.torrent_id),
            mse,
        })
        .collect();
    let stop = AtomicBool::new(false);
    let sampling = AtomicBool::new(true);
    let ok_before = shared.ok.load(Ordering::Relaxed);
    let cpu_before = cpu_secs();
    let (result, rss_max, ok) = std::thread::scope(|scope| {
        // Set on every way out of this closure, a panic included: the threads then end.
        let _stop = crate::threads::StoreOnDrop(&stop, true);
        let _sampling = crate::threads::StoreOnDrop(&sampling, false);
        let sampler = scope.spawn(|| {
            let mut max = 0;
            while sampling.load(Ordering::Relaxed) {
                max = max.max(status_field("VmRSS:"));
                std::thread::sleep(Duration::from_millis(20));
            }
            max
        });
        let runner = scope.spawn(|| engine::run_workers(&cfg, drivers, &stop));
        std::thread::sleep(Duration::from_secs_f64(secs));
        let ok = shared.ok.load(Ordering::Relaxed) - ok_before;
        stop.store(true, Ordering::Relaxed);
        let result = runner
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("engine panicked")));
        sampling.store(false, Ordering::Relaxed);
        (result, sampler.join().unwrap_or(0), ok)
    });
    let cpu = cpu_secs() - cpu_before;
    let stats = result?.into_iter().map(|(_, s)| s).collect();
    Ok(EnginePhase {
        ok,
        cpu,
        rss_max,
        stats,
    })
}

fn floor_phase(
    args: &ProbesArgs,
    port: u16,
    secs: f64,
    first: u64,
) -> std::io::Result<(u64, u64, f64)> {
    let answer_len = handshake::HANDSHAKE_LEN + 5 + args.pieces.div_ceil(8) as usize;
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let cpu_before = cpu_secs();
    let per = (args.in_flight / args.workers.max(1)).max(1);
    let (ok, result) = std::thread::scope(|scope| {
        let _stop = crate::threads::StoreOnDrop(&stop, true);
        let handles: Vec<_> = (0..args.workers)
            .map(|w| {
                let (stop, done, errors) = (&stop, &done, &errors);
                let peers = args.peers;
                let pin = args.pin;
                scope.spawn(move || {
                    if pin {
                        let _ = engine::net::pin_current_thread(w);
                    }
                    let peer = move |i: u64| peer_addr(i, peers, port);
                    let request = handshake::handshake(&BENCH_INFO_HASH, b"-SS0001-floorfloorfl");
                    engine::floor::run(
                        per,
                        &request,
                        answer_len,
                        &peer,
                        first + w as u64 * 1_000_000,
                        stop,
                        done,
                        errors,
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        let ok = done.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for h in handles {
            if let Err(e) = h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("floor panicked")))
            {
                result = Err(e);
            }
        }
        (ok, result)
    });
    result?;
    Ok((ok, errors.load(Ordering::Relaxed), cpu_secs() - cpu_before))
}

/// The real store writer on a temporary database, fed by the engine benchmark.
struct BenchStore {
    writer: crate::store::writer::Writer,
    torrent_id: i64,
    _dir: tempfile::TempDir,
}

fn bench_store() -> std::io::Result<BenchStore> {
    use crate::store::{anon::Anonymizer, writer::WriterOptions, Store};
    let other = |e: crate::store::StoreError| std::io::Error::other(e.to_string());
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("bench.sqlite")).map_err(other)?;
    let anonymizer = Anonymizer::new(crate::config::IpMode::Hmac, [7; 32]);
    let cfg = crate::config::Config::default();
    let writer = crate::store::writer::Writer::start(store, anonymizer, WriterOptions::from(&cfg))
        .map_err(other)?;
    let torrent_id = writer
        .handle()
        .register_torrent(crate::store::record::TorrentRecord {
            info_hash_v1: Some(BENCH_INFO_HASH),
            info_hash_v2: None,
            name: Some("bench".into()),
            piece_count: None,
            piece_length: None,
            total_size: None,
            source: crate::store::record::TorrentSource::Hash,
            added_at: 0,
            trackers: Vec::new(),
        })
        .map_err(std::io::Error::other)?;
    Ok(BenchStore {
        writer,
        torrent_id,
        _dir: dir,
    })
}

fn run_probes(args: &ProbesArgs) -> std::io::Result<()> {
    // Every flag was checked by its parser (crate::limits): positive counts, bounded seconds.
    let needed = EngineConfig {
        workers: args.workers,
        max_in_flight: args.in_flight,
        ..Default::default()
    }
    .descriptors_needed();
    engine::net::raise_nofile_limit(needed, &format!("--in-flight {}", args.in_flight))
        .map_err(std::io::Error::other)?;
    let per_round = args.seconds / args.rounds as f64;
    let budget = (args.seconds * 2.0 + 60.0 + args.rounds as f64 * 20.0) as u64;
    let swarm = spawn_swarm(args, budget)?;
    let store = if args.store {
        Some(bench_store()?)
    } else {
        None
    };
    let shared = Arc::new(Shared::default());
    let shared_mse = Arc::new(Shared::default());
    let encrypted = args.encryption == BenchEncryption::Require;
    let (mut mse_ok, mut mse_cpu) = (0u64, 0.0f64);
    // The fake swarm's CPU during the engine phases (its share of the machine).
    let (mut swarm_cpu, mut swarm_cpu_mse) = (0.0f64, 0.0f64);
    let loadavg_before = loadavg();
    // One DH exponentiation (the shared secret an MSE initiator computes), before the rounds.
    let dh = if encrypted {
        Some(dh_micro_measurement(0.5))
    } else {
        None
    };
    let baseline_rss = status_field("VmRSS:");
    let (mut engine_ok, mut engine_cpu, mut rss_max) = (0u64, 0.0f64, 0u64);
    let (mut floor_ok, mut floor_errors, mut floor_cpu) = (0u64, 0u64, 0.0f64);
    let mut stats = Vec::new();
    for round in 0..args.rounds as u64 {
        let swarm_before = swarm.cpu_secs();
        let phase = engine_phase(
            args,
            swarm.port,
            per_round,
            &shared,
            round * 100_000_000,
            store.as_ref(),
            false,
        )?;
        swarm_cpu += swarm.cpu_secs() - swarm_before;
        engine_ok += phase.ok;
        engine_cpu += phase.cpu;
        rss_max = rss_max.max(phase.rss_max);
        stats = phase.stats;
        // Let the fake swarm see the resets before the next phase.
        std::thread::sleep(Duration::from_millis(300));
        if encrypted {
            let swarm_before = swarm.cpu_secs();
            let phase = engine_phase(
                args,
                swarm.port,
                per_round,
                &shared_mse,
                round * 100_000_000 + 25_000_000,
                store.as_ref(),
                true,
            )?;
            swarm_cpu_mse += swarm.cpu_secs() - swarm_before;
            mse_ok += phase.ok;
            mse_cpu += phase.cpu;
            rss_max = rss_max.max(phase.rss_max);
            std::thread::sleep(Duration::from_millis(300));
        }
        let (ok, errors, cpu) = floor_phase(
            args,
            swarm.port,
            per_round,
            round * 100_000_000 + 50_000_000,
        )?;
        floor_ok += ok;
        floor_errors += errors;
        floor_cpu += cpu;
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(swarm);
    // Everything the engine produced must reach the database; time the final drain.
    let store_json = match store {
        None => serde_json::Value::Null,
        Some(store) => {
            let drain_started = std::time::Instant::now();
            let metrics = store.writer.metrics();
            let counts = store
                .writer
                .finish()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
            serde_json::json!({
                "outcomes_sent": load(&shared.stored),
                "records_committed": counts.records,
                "backpressure_events": metrics.backpressure.load(Ordering::Relaxed),
                "overflow_max_records": load(&shared.overflow_max),
                "lost": metrics.lost.load(Ordering::Relaxed),
                "drain_secs_after_stop": round3(drain_started.elapsed().as_secs_f64()),
            })
        }
    };
    let probes_per_sec = engine_ok as f64 / args.seconds;
    let floor_per_sec = floor_ok as f64 / args.seconds;
    let in_flight_max = shared.in_flight_max.load(Ordering::Relaxed);
    let per_in_flight = rss_max.saturating_sub(baseline_rss) as f64 / in_flight_max.max(1) as f64;
    let s = &shared;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let encryption_json = match &dh {
        None => serde_json::Value::Null,
        Some(dh) => {
            let m = &shared_mse;
            let mse_per_sec = mse_ok as f64 / args.seconds;
            serde_json::json!({
                "encrypted_probes_per_sec": round2(mse_per_sec),
                "plaintext_probes_per_sec": round2(probes_per_sec),
                "encrypted_over_plaintext": if probes_per_sec > 0.0 { round3(mse_per_sec / probes_per_sec) } else { 0.0 },
                "encrypted_probes_total": mse_ok,
                "encrypted_probes_over_mse": load(&m.mse_ok),
                "encrypted_cpu_secs_per_1k_probes": if mse_ok > 0 { round3(mse_cpu * 1000.0 / mse_ok as f64) } else { 0.0 },
                "plaintext_cpu_secs_per_1k_probes": if engine_ok > 0 { round3(engine_cpu * 1000.0 / engine_ok as f64) } else { 0.0 },
                // The fake swarm (another process) during the same phases.
                "fake_swarm_encrypted_cpu_secs_per_1k_probes": if mse_ok > 0 { round3(swarm_cpu_mse * 1000.0 / mse_ok as f64) } else { 0.0 },
                "fake_swarm_plaintext_cpu_secs_per_1k_probes": if engine_ok > 0 { round3(swarm_cpu * 1000.0 / engine_ok as f64) } else { 0.0 },
                "dh_ops_per_sec_per_core": dh.ops_per_cpu_sec.round(),
                "dh_us_per_op": round2(dh.us_per_op),
                "dh_window_bits": crate::proto::mse::WINDOW,
                "dh_exponent_bits": crate::scan::mse_budget::PRIVATE_KEY_BITS,
                "errors": {
                    "mse_failed": load(&m.mse_failed),
                    "refused": load(&m.refused),
                    "reset": load(&m.reset),
                    "connect_timeout": load(&m.connect_timeout),
                    "quiet_timeout": load(&m.quiet_timeout),
                    "eof": load(&m.eof),
                    "bad_handshake": load(&m.bad_handshake),
                    "other": load(&m.other),
                },
                "cancelled_at_stop": load(&m.cancelled_at_stop),
            })
        }
    };
    let out = serde_json::json!({
        "bench": "probes",
        "probes_per_sec": round2(probes_per_sec),
        "floor_probes_per_sec": round2(floor_per_sec),
        "ratio": if floor_per_sec > 0.0 { round3(probes_per_sec / floor_per_sec) } else { 0.0 },
        "probes_total": engine_ok,
        "floor_probes_total": floor_ok,
        "in_flight_target": args.in_flight,
        "in_flight_max": in_flight_max,
        "rss_baseline_bytes": baseline_rss,
        "rss_max_bytes": rss_max,
        "vm_hwm_bytes": status_field("VmHWM:"),
        "rss_per_in_flight_bytes": per_in_flight.round(),
        "cpu_secs_per_1k_probes": if engine_ok > 0 { round3(engine_cpu * 1000.0 / engine_ok as f64) } else { 0.0 },
        // CPU per probe of the floor over the engine's: less sensitive to other load on the
        // machine than the throughput ratio (1.0 = the engine costs no more than the floor).
        "cpu_ratio": if engine_ok > 0 && floor_ok > 0 && engine_cpu > 0.0 {
            round3((floor_cpu / floor_ok as f64) / (engine_cpu / engine_ok as f64))
        } else { 0.0 },
        "floor_cpu_secs_per_1k_probes": if floor_ok > 0 { round3(floor_cpu * 1000.0 / floor_ok as f64) } else { 0.0 },
        "mean_connect_ms": if load(&s.ok) > 0 { round2(load(&s.connect_ms_sum) as f64 / load(&s.ok) as f64) } else { 0.0 },
        "errors": {
            "refused": load(&s.refused),
            "reset": load(&s.reset),
            "connect_timeout": load(&s.connect_timeout),
            "quiet_timeout": load(&s.quiet_timeout),
            "eof": load(&s.eof),
            "bad_handshake": load(&s.bad_handshake),
            "other": load(&s.other),
            "floor": floor_errors,
        },
        "cancelled_at_stop": load(&s.cancelled_at_stop),
        // With --encryption require: MSE probes measured in the same rounds, and one DH.
        "encryption": encryption_json,
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
        // The store writer (SQLite, WAL, batched) received every outcome; the probe loop
        // never waits for it (try_send + per-worker overflow queue).
        "store": store_json,
        "engine_last_round": stats,
        "peers": args.peers,
        "peer_delay_ms": args.peer_delay_ms,
        "workers": args.workers,
        "swarm_threads": args.swarm_threads,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "recv_buffers_per_worker": args.recv_buffers,
        "kernel": engine::ring::kernel_release(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
    });
    print_report(&out, args.json);
    Ok(())
}

/// The 1-, 5- and 15-minute load averages (other work on the machine skews the figures).
fn loadavg() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

/// Seconds of CPU time this thread has used.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

struct DhMeasurement {
    ops_per_cpu_sec: f64,
    us_per_op: f64,
}

/// Shared-secret computations (one 768-bit exponentiation with a 160-bit exponent each) on
/// this thread for about `cpu_secs` of its CPU time: the cost of one outgoing MSE handshake.
fn dh_micro_measurement(cpu_secs: f64) -> DhMeasurement {
    use crate::proto::mse::DhKey;
    let ours = crate::scan::mse_budget::worker_dh_key();
    let mut peer = DhKey::new([0x5A; 20]).public_key().to_owned();
    let start = thread_cpu_secs();
    let mut ops = 0u64;
    while thread_cpu_secs() - start < cpu_secs {
        for _ in 0..50 {
            // Chain the results so no call can be skipped; a secret is a valid public key.
            peer = ours.shared_secret(&peer).unwrap_or(peer);
        }
        ops += 50;
    }
    std::hint::black_box(peer);
    let used = thread_cpu_secs() - start;
    DhMeasurement {
        ops_per_cpu_sec: ops as f64 / used,
        us_per_op: used * 1e6 / ops as f64,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Prints a benchmark's JSON report: one line with `--json`, indented otherwise.
fn print_report(out: &serde_json::Value, one_line: bool) {
    if one_line {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(out).unwrap_or_default());
    }
}

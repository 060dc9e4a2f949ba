//! `swarmscan sink`: the passive P2P trace collector.
//!
//! Peers keep addresses in their caches (DHT routing tables, tracker replies, PEX) long after
//! the host behind them is gone. A sink takes such an address over and records whatever
//! arrives, never answering with content (Huang et al., "Observe Internet Peer-to-Peer
//! Activities at Home"): who knocks, on which port, speaking what.
//!
//! * The engine's workers accept on every `sink.tcp` address (SO_REUSEPORT, multishot
//!   accept) and receive on every `sink.udp` address (all workers on the configured port with
//!   SO_REUSEPORT, multishot recvmsg; nothing is ever sent, so which worker gets a sender
//!   does not matter). The original destination is recovered: `SO_ORIGINAL_DST` for TCP
//!   (after a REDIRECT), the `IP_ORIGDSTADDR` control message for UDP (after a TPROXY); see
//!   `tuning/sink-redirect.nft`.
//! * A TCP connection ([`driver::SinkConv`]) writes nothing; it is read until it has been
//!   quiet `sink.idle_secs`, the peer closes it, or `sink.max_bytes` arrived. The first
//!   `sink.keep_bytes` are kept for the classifier; the rest only counted. At
//!   `sink.max_connections` open connections the oldest is closed for the newest.
//! * UDP datagrams are grouped into flows by (sender, destination, protocol family) until
//!   quiet for `sink.idle_secs`; a flow's first datagram is classified; every datagram is
//!   counted. At
//!   `sink.max_udp_flows` flows the oldest is stored early.
//! * Each flow becomes one `sink_flows` row through the batched writer (source per
//!   `privacy.ip`, GeoIP per `geo.*` looked up with the real address). SIGINT/SIGTERM or
//!   `--for` stop it; open connections and flows are stored as `stopped`. So does a writer
//!   that gives up on a database unwritable for `store.unwritable_secs` (as in `run`): the
//!   sink stops at once and exits non-zero naming the database, instead of running on blind.
//! * Like `run` and `crawl`, `swarmscan sink` holds the database's instance lock while it
//!   runs (`service::instance`), and ignores SIGUSR1; SIGHUP is logged and changes nothing
//!   (the sink's settings are read at start). A database removed or replaced under it stops
//!   it like an unwritable one, saved where it can be found (the writer's rule,
//!   `store::place`).
//!
//! Memory is bounded by the two caps: per connection a slot, a kernel socket and at most
//! `keep_bytes`; per UDP flow about 200 bytes plus its kept details; and by a bound on the
//! records a worker holds for a writer that is behind (then new connections are reset and
//! new UDP flows only counted: `refused_writer_behind`, `datagrams_writer_behind`).

pub mod bench;
pub mod cmd;
pub mod driver;
pub mod plots;
pub mod report;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::{EngineConfig, WorkerStats};
use driver::{SinkCounters, SinkDriver, SinkLimits};

/// What `swarmscan sink` runs with, from the `sink.*` keys and `[engine]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkSettings {
    /// The engine: listeners, UDP sockets, the connection cap (workers 0 = one per core).
    pub engine: EngineConfig,
    /// Idle timeout, bytes kept, byte cap; `max_udp_flows` is the total over all workers.
    pub limits: SinkLimits,
}

impl From<&Config> for SinkSettings {
    fn from(config: &Config) -> SinkSettings {
        let k = &config.sink;
        SinkSettings {
            engine: EngineConfig {
                workers: config.engine.workers,
                // The sink dials nothing: one idle slot per worker.
                max_in_flight: 1,
                max_held: 0,
                max_incoming: k.max_connections as usize,
                connects_per_sec: 0,
                listen: k.tcp.clone(),
                udp: k.udp.clone(),
                pin_cores: config.engine.pin_workers,
                recv_buffers: config.engine.recv_buffers.min(32768) as u16,
                recv_buffer_size: config.engine.recv_buffer_size,
                ring_entries: config.engine.ring_entries,
                original_dst: true,
                udp_reuseport: true,
                evict_oldest_incoming: true,
                ..EngineConfig::default()
            },
            limits: SinkLimits {
                idle_ms: (k.idle_secs * 1000.0).round() as u64,
                keep_bytes: k.keep_bytes as usize,
                max_bytes: k.max_bytes,
                max_udp_flows: k.max_udp_flows as usize,
            },
        }
    }
}

/// What a sink run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkSummary {
    /// Seconds it ran.
    pub seconds: f64,
    /// Workers.
    pub workers: usize,
    /// Per-flow counters summed over the workers.
    pub flows: SinkCounters,
    /// TCP connections accepted.
    pub connections_accepted: u64,
    /// TCP connections closed early for a newer one (at `sink.max_connections`).
    pub connections_evicted: u64,
    /// TCP connections reset at once: no slot, or gone (reset by the peer) before the accept.
    pub connections_refused: u64,
    /// Of those, the ones that found every slot taken (evicted ones still closing).
    pub connections_no_slot: u64,
    /// Accept errors (e.g. EMFILE).
    pub accept_errors: u64,
    /// Datagrams lost to full receive buffers (multishot re-armed).
    pub udp_recv_enobufs: u64,
    /// Datagrams longer than the receive buffer.
    pub udp_truncated: u64,
    /// Rows committed to `sink_flows`.
    pub stored: u64,
}

/// Runs the sink until `stop` is set or `duration` passed; every flow is stored before it
/// returns. Errors name what was wrong (a bad address, a database that cannot be opened).
pub fn run(
    config: &Config,
    duration: Option<Duration>,
    stop: &AtomicBool,
) -> Result<SinkSummary, String> {
    let mut settings = SinkSettings::from(config);
    if settings.engine.listen.is_empty() && settings.engine.udp.is_empty() {
        return Err("sink.tcp and sink.udp are both empty: nothing to listen on".into());
    }
    if settings.engine.workers == 0 {
        settings.engine.workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
    }
    let workers = settings.engine.workers;
    let writer = crate::settings::start_writer(config).map_err(|e| e.to_string())?;
    let mut limits = settings.limits.clone();
    limits.max_udp_flows = (limits.max_udp_flows / workers).max(1);
    let epoch_ms = unix_ms();
    let up = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let drivers: Vec<SinkDriver> = (0..workers)
        .map(|_| {
            SinkDriver::new(limits.clone(), writer.sender(), epoch_ms)
                .announce_when_up(up.clone(), workers)
        })
        .collect();
    let started = Instant::now();
    let writer_ref = &writer;
    let result = std::thread::scope(|scope| {
        let watch = scope.spawn(move || watch(writer_ref, started, duration, stop));
        let result = crate::engine::run_workers(&settings.engine, drivers, stop);
        // The watch ends with the run (a failed start leaves the flag set for it).
        stop.store(true, Ordering::Relaxed);
        let _ = watch.join();
        result
    });
    let mut summary = SinkSummary {
        workers,
        ..SinkSummary::default()
    };
    let finished = match result {
        Ok(done) => done,
        Err(e) => {
            let _ = writer.finish();
            return Err(e.to_string());
        }
    };
    for (driver, stats) in finished {
        add_counters(&mut summary.flows, &driver.finish());
        add_stats(&mut summary, &stats);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    let counts = writer.finish().map_err(|e| e.to_string())?;
    summary.stored = counts.sink_flows;
    Ok(summary)
}

fn add_counters(total: &mut SinkCounters, c: &SinkCounters) {
    total.tcp_flows += c.tcp_flows;
    total.datagrams += c.datagrams;
    total.udp_flows += c.udp_flows;
    total.udp_flows_evicted += c.udp_flows_evicted;
    total.udp_flows_max += c.udp_flows_max;
    total.refused_writer_behind += c.refused_writer_behind;
    total.datagrams_writer_behind += c.datagrams_writer_behind;
}

fn add_stats(summary: &mut SinkSummary, s: &WorkerStats) {
    summary.connections_accepted += s.incoming_accepted;
    summary.connections_evicted += s.incoming_evicted;
    summary.connections_refused += s.incoming_refused;
    summary.connections_no_slot += s.incoming_no_slot;
    summary.accept_errors += s.accept_errors;
    summary.udp_recv_enobufs += s.udp_recv_enobufs;
    summary.udp_truncated += s.udp_recv_truncated;
}

/// Stops the sink (sets `stop`) when `duration` has passed, or at once when the writer can
/// no longer store what the sink sees: it gave up on a database that stayed unwritable for
/// `store.unwritable_secs`, or its thread ended. As `run` does, the sink never goes on blind;
/// [`Writer::finish`](crate::store::Writer::finish) then returns the writer's error.
fn watch(
    writer: &crate::store::Writer,
    started: Instant,
    duration: Option<Duration>,
    stop: &AtomicBool,
) {
    let metrics = writer.metrics();
    let step = Duration::from_millis(20).min(duration.unwrap_or(Duration::MAX));
    while !stop.load(Ordering::Relaxed) {
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if let Some(why) = metrics.failure() {
            tracing::error!("stopping the sink: {why}");
            break;
        }
        if writer.ended() {
            tracing::error!("stopping the sink: the writer thread ended");
            break;
        }
        std::thread::sleep(step);
    }
    stop.store(true, Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

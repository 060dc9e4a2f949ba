//! io_uring engine: the only code that touches sockets, io_uring and time.
//!
//! The scan layer implements [`WorkerDriver`] (one per worker) and hands out
//! [`Conversation`]s; [`run_workers`] runs one [`Worker`] per core until a stop flag is set.
//! Every conversation that was started or accepted comes back through
//! [`WorkerDriver::probe_done`] exactly once, with timings. With [`EngineConfig::udp`] each
//! worker also owns UDP sockets on its ring ([`udp`]): datagrams go to
//! [`WorkerDriver::datagram`], answers and queries leave through a bounded [`DatagramQueue`].
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use std::sync::atomic::AtomicBool;
//! use std::sync::Arc;
//! use swarmscan_engine::exchange::Exchange;
//! use swarmscan_engine::{EngineConfig, Millis, ProbeDone, ProbeRequest, WorkerDriver};
//!
//! /// Dials one address forever; a real driver owns a peer table and a revisit wheel.
//! struct Driver {
//!     next_token: u64,
//!     request: Arc<[u8]>,
//! }
//!
//! impl WorkerDriver for Driver {
//!     type Conv = Exchange;
//!     fn next_probe(&mut self, _now: Millis) -> Option<ProbeRequest<Exchange>> {
//!         self.next_token += 1;
//!         let addr: SocketAddr = "127.0.0.1:6881".parse().unwrap();
//!         let conv = Exchange::dial(self.request.clone(), 16, 6000);
//!         Some(ProbeRequest { addr, token: self.next_token, conv })
//!     }
//!     fn probe_done(&mut self, _now: Millis, done: ProbeDone<Exchange>) {
//!         // Turn (done.token, done.conv, done.ending, done.connect_ms, done.total_ms) into a
//!         // record and reschedule the address.
//!     }
//!     fn incoming(&mut self, _now: Millis, _remote: SocketAddr, _local: SocketAddr) -> Option<(u64, Exchange)> {
//!         None // or Some((token, a conversation that reads the caller first))
//!     }
//! }
//!
//! let cfg = EngineConfig { workers: 2, max_in_flight: 1000, connects_per_sec: 500, ..Default::default() };
//! let stop = AtomicBool::new(false); // set from a signal handler / timer to stop
//! let request: Arc<[u8]> = Arc::from(&b"hello"[..]);
//! let drivers = (0..cfg.workers).map(|_| Driver { next_token: 0, request: request.clone() }).collect();
//! for (driver, stats) in swarmscan_engine::run_workers(&cfg, drivers, &stop).unwrap() {
//!     println!("{} finished, {} closed", stats.finished, stats.closed);
//! }
//! ```

mod buf_ring;
pub mod conversation;
pub mod exchange;
pub mod floor;
pub mod net;
pub mod rate;
pub mod ring;
pub mod slots;
pub mod udp;
pub mod user_data;
pub mod wheel;
pub mod worker;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod udp_tests;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub use conversation::{Conversation, Millis, Verdict};
pub use udp::{DatagramQueue, SendRefused};
pub use worker::{
    Ending, ProbeDone, ProbeRequest, Waker, Worker, WorkerConfig, WorkerDriver, WorkerStats,
};

/// Settings for a set of workers (totals are split evenly).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    /// Number of workers (threads, rings).
    pub workers: usize,
    /// Total outgoing probes alive at once, over all workers.
    pub max_in_flight: usize,
    /// Total held connections (long-lived on purpose, see [`Conversation::held`]) on top of
    /// `max_in_flight`, over all workers.
    pub max_held: usize,
    /// Total accepted connections (not held) alive at once, over all workers: a budget apart
    /// from `max_in_flight`, so accepted connections never take an outgoing probe's slot.
    pub max_incoming: usize,
    /// Total connects per second over all workers (0 = unlimited).
    pub connects_per_sec: u64,
    /// Connect deadline in milliseconds.
    pub connect_timeout_ms: u64,
    /// Addresses to accept on (every worker binds each with SO_REUSEPORT).
    pub listen: Vec<SocketAddr>,
    /// Pin worker i to CPU i.
    pub pin_cores: bool,
    /// Receive buffers per worker (power of two) and their size.
    pub recv_buffers: u16,
    /// Size of each receive buffer in bytes.
    pub recv_buffer_size: u32,
    /// Submission queue entries per worker.
    pub ring_entries: u32,
    /// UDP addresses (see [`udp`]): worker i binds each at `port + i` (port 0: a port of the
    /// kernel's choosing per worker); the driver learns them in
    /// [`WorkerDriver::on_udp_bound`]. Empty = no UDP.
    pub udp: Vec<SocketAddr>,
    /// UDP receive buffers per worker (power of two).
    pub udp_recv_buffers: u16,
    /// Longest UDP datagram received or sent.
    pub udp_max_datagram: u32,
    /// UDP datagrams queued or in flight at once per worker.
    pub udp_send_slots: usize,
    /// See [`WorkerConfig::original_dst`].
    pub original_dst: bool,
    /// See [`WorkerConfig::udp_reuseport`].
    pub udp_reuseport: bool,
    /// See [`WorkerConfig::evict_oldest_incoming`].
    pub evict_oldest_incoming: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            max_in_flight: 4096,
            max_held: 0,
            max_incoming: 1024,
            connects_per_sec: 0,
            connect_timeout_ms: 5000,
            listen: Vec::new(),
            pin_cores: false,
            recv_buffers: 1024,
            recv_buffer_size: 4096,
            ring_entries: 4096,
            udp: Vec::new(),
            udp_recv_buffers: 1024,
            udp_max_datagram: 2048,
            udp_send_slots: 1024,
            original_dst: false,
            udp_reuseport: false,
            evict_oldest_incoming: false,
        }
    }
}

impl EngineConfig {
    /// Descriptors the engine needs: one per in-flight slot, plus rings, listeners, UDP
    /// sockets, slack.
    pub fn descriptors_needed(&self) -> u64 {
        self.max_in_flight as u64
            + self.max_held as u64
            + self.max_incoming as u64 * (1 + u64::from(self.evict_oldest_incoming))
            + (self.workers as u64) * (2 + self.listen.len() as u64 + self.udp.len() as u64)
            + 64
    }

    /// The configuration of worker `index`.
    pub fn worker(&self, index: usize) -> WorkerConfig {
        let workers = self.workers.max(1);
        let share = |total: usize| total / workers + usize::from(index < total % workers);
        WorkerConfig {
            index,
            max_in_flight: share(self.max_in_flight).max(1),
            max_held: share(self.max_held),
            max_incoming: share(self.max_incoming),
            connects_per_sec: if self.connects_per_sec == 0 {
                0
            } else {
                (share(self.connects_per_sec as usize) as u64).max(1)
            },
            connect_burst: (self.connects_per_sec / 10 / workers as u64).max(16),
            connect_timeout_ms: self.connect_timeout_ms,
            ring_entries: self.ring_entries,
            recv_buffers: self.recv_buffers,
            recv_buffer_size: self.recv_buffer_size,
            listen: self.listen.clone(),
            udp: self.udp.clone(),
            udp_recv_buffers: self.udp_recv_buffers,
            udp_max_datagram: self.udp_max_datagram,
            udp_send_slots: self.udp_send_slots,
            original_dst: self.original_dst,
            udp_reuseport: self.udp_reuseport,
            evict_oldest_incoming: self.evict_oldest_incoming,
            pin_cpu: self.pin_cores.then_some(index),
            ..WorkerConfig::default()
        }
    }
}

/// Raises RLIMIT_NOFILE for `cfg`, then runs one worker thread per driver until `stop` is
/// set (or every driver says `should_stop`). Returns each driver with its worker's counters.
pub fn run_workers<D>(
    cfg: &EngineConfig,
    drivers: Vec<D>,
    stop: &AtomicBool,
) -> io::Result<Vec<(D, WorkerStats)>>
where
    D: WorkerDriver + Send,
{
    net::raise_nofile_limit(
        cfg.descriptors_needed(),
        &format!("max_in_flight={}", cfg.max_in_flight),
    )
    .map_err(io::Error::other)?;
    let epoch = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = drivers
            .into_iter()
            .enumerate()
            .map(|(index, mut driver)| {
                let wcfg = cfg.worker(index);
                std::thread::Builder::new()
                    .name(format!("engine-{index}"))
                    .spawn_scoped(scope, move || {
                        let mut worker = Worker::<D::Conv>::new(wcfg, epoch)?;
                        let stats = worker.run(&mut driver, stop)?;
                        Ok((driver, stats))
                    })
                    .expect("spawn worker thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let name = h.thread().name().unwrap_or("engine").to_string();
                h.join().unwrap_or_else(|p| {
                    let message = panic_message(&*p);
                    Err(io::Error::other(format!(
                        "thread '{name}' panicked: {message}"
                    )))
                })
            })
            .collect()
    })
}

/// The message a panic was raised with (`panic!("...")`, `expect`, an arithmetic overflow ...).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

//! Step 4: stop every thread, flush the writer, say what the scan did or why it failed.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use super::monitor::Ended;
use super::start::Running;
use crate::scan::udp_counters::{DhtSummary, UdpDatagramSummary, UdpTrackerSummary, UtpSummary};

/// What a finished scan did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunSummary {
    pub seconds: f64,
    pub torrents: usize,
    pub peers_known: u64,
    pub probes: u64,
    pub probes_ok: u64,
    pub confirmed_this_run: u64,
    pub records_committed: u64,
    /// Incoming MSE handshakes closed unanswered: the workers' DH budget was spent
    /// (`net.mse_incoming_per_sec`).
    pub mse_incoming_refused: u64,
    pub listen: Vec<SocketAddr>,
    /// The TCP port announced to trackers and peers (0 = none).
    pub announce_port: u16,
    /// Addresses from trackers and PEX that were our own (never probed).
    pub own_address_dropped: u64,
    /// Threshold crossings seen live, on a watched connection (part of `confirmed_this_run`).
    pub crossed_live: u64,
    /// Watch candidates that found `peer.max_watched` full of better ones.
    pub watch_refused: u64,
    /// IPv6 addresses ignored because `net.ipv6 = false`.
    pub ipv6_ignored: u64,
    /// Probes the stop cut short before the peer stated its progress (not recorded; those
    /// that had it are recorded as the visits they were).
    pub cancelled_at_stop: u64,
    /// Log lines dropped because stderr could not be written (e.g. its file system is full).
    pub log_writes_dropped: u64,
    /// Incoming connections reset at once: `peer.max_incoming` were alive.
    pub incoming_refused_full: u64,
    /// Incoming connections closed without a handshake after `peer.incoming_handshake_ms`.
    pub incoming_silent_closed: u64,
    /// Metadata fetches started (torrents known by hash or magnet).
    pub metadata_fetches: u64,
    /// Metadata claims above `peer.metadata_max_bytes` (or 0) refused.
    pub metadata_refused_too_large: u64,
    /// Metadata offers turned away while `peer.metadata_fetches_per_torrent` /
    /// `peer.metadata_fetches` were under way.
    pub metadata_refused_busy: u64,
    /// uTP connects by how they ended, incoming uTP connections, RESETs.
    pub utp: UtpSummary,
    /// DHT queries, replies, lookups, peers found, good nodes at the stop.
    pub dht: DhtSummary,
    /// UDP tracker replies dropped (forged, late, short) and requests not sent.
    pub udp_trackers: UdpTrackerSummary,
    /// Datagrams received on the UDP sockets, by protocol.
    pub udp_datagrams: UdpDatagramSummary,
}

impl Running {
    /// Stops and joins every thread, then flushes and closes the database. Every thread's
    /// failure is reported, not only the first.
    pub(super) fn shutdown(self, ended: Ended) -> Result<RunSummary, String> {
        let _ = self
            .notifier
            .notify("STOPPING=1\nSTATUS=stopping: flushing records to the database");
        self.stop.store(true, Ordering::SeqCst);
        let mut errors: Vec<String> = Vec::new();
        if let Some(t) = self.metrics_thread {
            if let Err(e) = crate::threads::join(t) {
                errors.push(e);
            }
        }
        let mut incoming_refused_full = 0;
        for t in self.worker_threads {
            match crate::threads::join(t).and_then(|r| r) {
                Ok(stats) => incoming_refused_full += stats.incoming_budget_full,
                Err(e) => errors.push(e),
            }
        }
        if let Err(e) = self.discovery.join() {
            errors.push(e);
        }
        let counts = self.writer.finish().map_err(|e| e.to_string());
        if let Err(e) = &counts {
            errors.push(e.clone());
        }
        if let (Some(name), true) = (&ended.thread, errors.is_empty()) {
            errors.push(format!("thread '{name}' ended unexpectedly"));
        }
        if !errors.is_empty() {
            let stopped = if ended.thread.is_some() {
                "; the scan was stopped"
            } else {
                ""
            };
            return Err(format!("{}{stopped}", errors.join("; ")));
        }
        let counts = counts?;
        let sum = |f: fn(&crate::scan::driver::WorkerCounters) -> u64| {
            self.counters.iter().map(|c| f(c)).sum::<u64>()
        };
        let metadata = &self.catalog.metadata;
        Ok(RunSummary {
            seconds: self.started.elapsed().as_secs_f64(),
            torrents: self.catalog.len(),
            peers_known: sum(|c| c.known_peers.load(Ordering::Relaxed)),
            probes: sum(|c| c.probes_done.load(Ordering::Relaxed)),
            probes_ok: sum(|c| c.probes_ok.load(Ordering::Relaxed)),
            confirmed_this_run: sum(|c| c.confirmed.load(Ordering::Relaxed)),
            records_committed: counts.records,
            mse_incoming_refused: sum(|c| c.mse_incoming_refused.load(Ordering::Relaxed)),
            listen: self.listen,
            announce_port: self.listen_port,
            own_address_dropped: self.own.dropped(),
            crossed_live: sum(|c| c.crossed_live.load(Ordering::Relaxed)),
            watch_refused: sum(|c| c.watch_refused.load(Ordering::Relaxed)),
            ipv6_ignored: sum(|c| c.ipv6_ignored.load(Ordering::Relaxed)),
            cancelled_at_stop: sum(|c| c.cancelled_at_stop.load(Ordering::Relaxed)),
            log_writes_dropped: crate::logging::dropped_writes(),
            incoming_refused_full,
            incoming_silent_closed: sum(|c| c.incoming_silent_closed.load(Ordering::Relaxed)),
            metadata_fetches: metadata.started.load(Ordering::Relaxed),
            metadata_refused_too_large: metadata.refused_too_large.load(Ordering::Relaxed),
            metadata_refused_busy: metadata.refused_busy.load(Ordering::Relaxed),
            utp: UtpSummary::of(&self.counters),
            dht: DhtSummary::of(&self.counters),
            udp_trackers: UdpTrackerSummary::of(&self.counters),
            udp_datagrams: UdpDatagramSummary::of(&self.counters),
        })
    }
}

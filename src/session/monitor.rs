//! Step 3: this thread's loop while the scan runs — status line, statistics rows and log
//! lines, the watchdog rule, and the stop conditions.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::start::Running;
use crate::inputs::now_unix_ms;
use crate::scan::driver::WorkerCounters;
use crate::service::health::Heartbeats;
use crate::service::notify::status_line;
use crate::store::record::{Record, StatsRecord};

/// Why the monitor loop ended, when it was not asked to (a signal or `--for`).
pub(super) struct Ended {
    /// A thread that must run until stopped and ended first: a failure, reported at shutdown.
    pub(super) thread: Option<String>,
}

impl Running {
    /// The sum of one counter over the workers.
    pub(super) fn sum(&self, f: fn(&WorkerCounters) -> u64) -> u64 {
        self.counters.iter().map(|c| f(c)).sum()
    }

    /// Runs until a signal, `--for`, a thread that ended or a database that stayed unwritable.
    pub(super) fn monitor(&mut self) -> Ended {
        // The watchdog rule (service::health): pings only while every worker loop and the
        // writer make progress.
        let mut heartbeats = Heartbeats::default();
        for (i, c) in self.counters.iter().enumerate() {
            let c = c.clone();
            heartbeats.add(
                format!("engine-{i}"),
                Instant::now(),
                Box::new(move || c.loops.load(Ordering::Relaxed)),
            );
        }
        {
            let m = self.writer.metrics();
            heartbeats.add(
                "swarmscan-writer",
                Instant::now(),
                Box::new(move || m.loops.load(Ordering::Relaxed)),
            );
        }
        let watchdog = self.notifier.watchdog();
        let stall_limit = crate::service::health::stall_limit(watchdog.unwrap_or(Duration::ZERO));
        let mut last_ping: Option<Instant> = None;
        let mut stalled_before = false;
        if let Some(wd) = watchdog {
            tracing::info!(
                timeout_ms = wd.as_millis() as u64,
                "systemd watchdog: pinging while every worker and the writer make progress"
            );
        }

        let show_status = self
            .opts
            .status_line
            .unwrap_or_else(|| std::io::stderr().is_terminal());
        let mut stats_sender = self.writer.sender();
        let mut next_stats = Instant::now() + self.stats_interval;
        let mut last_probes = 0u64;
        let mut last_at = Instant::now();
        let mut rate = 0.0;
        let mut cpu = crate::metrics::CpuMeter::default();
        let writer_metrics = self.writer.metrics();
        let mut ended: Option<String> = None;
        let mut live = super::live::LiveTorrents::new(self);
        let mut reloader = super::reload::Reloader::new(self);
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if self
                .opts
                .duration
                .is_some_and(|d| self.started.elapsed() >= d)
            {
                break;
            }
            // Every thread runs until `stop`: one that ended has failed (a panic, or a worker
            // that could not go on). Stop everything and report it, never a half-run.
            ended = crate::threads::first_finished(&self.worker_threads)
                .or_else(|| crate::threads::first_finished(&self.metrics_thread))
                .or_else(|| self.discovery.ended_thread())
                .or_else(|| self.writer.ended().then(|| "swarmscan-writer".to_string()));
            if ended.is_some() {
                // Read after the thread was seen ended: a signal (or a worker that failed to
                // start) set it first, and the threads ended because of it.
                if self.stop.load(Ordering::SeqCst) {
                    ended = None;
                }
                break;
            }
            if let Some(why) = writer_metrics.failure() {
                // The database stayed unwritable: stop probing; shutdown reports it.
                tracing::error!("stopping the scan: {why}");
                break;
            }
            crate::threads::debug_panic_point("status");
            live.poll(self);
            let stats_interval = self.stats_interval;
            reloader.poll(self);
            if self.stats_interval != stats_interval {
                next_stats = Instant::now() + self.stats_interval;
            }
            let stalled = heartbeats.stalled(Instant::now(), stall_limit);
            self.stalled_threads
                .store(stalled.len() as u64, Ordering::Relaxed);
            if !stalled.is_empty() && !stalled_before {
                let names: Vec<String> = stalled
                    .iter()
                    .map(|(n, d)| format!("{n} ({:.1} s)", d.as_secs_f64()))
                    .collect();
                let consequence = if watchdog.is_some() {
                    "watchdog pings withheld"
                } else {
                    "no systemd watchdog to tell"
                };
                tracing::error!("no progress from {}: {consequence}", names.join(", "));
                let _ = self
                    .notifier
                    .notify(&status_line(&format!("stalled: {}", names.join(", "))));
            } else if stalled.is_empty() && stalled_before {
                tracing::warn!("every worker and the writer make progress again");
            }
            stalled_before = !stalled.is_empty();
            if let Some(wd) = watchdog {
                if stalled.is_empty() && last_ping.is_none_or(|t| t.elapsed() >= wd / 4) {
                    let _ = self.notifier.notify("WATCHDOG=1");
                    last_ping = Some(Instant::now());
                }
            }
            let probes = self.sum(|c| c.probes_done.load(Ordering::Relaxed));
            if last_at.elapsed() >= Duration::from_secs(1) {
                rate = (probes - last_probes) as f64 / last_at.elapsed().as_secs_f64();
                last_probes = probes;
                last_at = Instant::now();
                let known = self.sum(|c| c.known_peers.load(Ordering::Relaxed));
                let in_flight = self.sum(|c| c.in_flight.load(Ordering::Relaxed));
                let watched = self.sum(|c| c.watched.load(Ordering::Relaxed));
                let confirmed = self.sum(|c| c.confirmed.load(Ordering::Relaxed));
                if show_status {
                    eprint!(
                        "\r\x1b[2K{:>6.0}s  peers {known}  in flight {in_flight}  watched {watched}  {rate:.0} probes/s  probes {probes}  confirmed {confirmed}",
                        self.started.elapsed().as_secs_f64()
                    );
                }
                if !stalled_before {
                    let queue = writer_metrics.queued.load(Ordering::Relaxed) as i64
                        + writer_metrics.overflow.load(Ordering::Relaxed).max(0);
                    let _ = self.notifier.notify(&status_line(&format!(
                        "peers {known}, in flight {in_flight}, watched {watched}, {rate:.0} probes/s, confirmed {confirmed}, writer queue {queue}"
                    )));
                }
            }
            if Instant::now() >= next_stats {
                next_stats += self.stats_interval;
                stats_sender.send(Record::Stats(StatsRecord {
                    at: now_unix_ms(),
                    peers_known: self.sum(|c| c.known_peers.load(Ordering::Relaxed)) as i64,
                    in_flight: self.sum(|c| c.in_flight.load(Ordering::Relaxed)) as i64,
                    probes_per_sec: rate,
                    confirmed: self.sum(|c| c.confirmed.load(Ordering::Relaxed)) as i64,
                    due_queue: self.sum(|c| c.due_queue.load(Ordering::Relaxed)) as i64,
                    writer_overflow: writer_metrics.overflow.load(Ordering::Relaxed),
                    writer_backpressure: writer_metrics.backpressure.load(Ordering::Relaxed) as i64,
                    rss_bytes: crate::metrics::rss_bytes() as i64,
                    cpu_percent: cpu.percent(),
                }));
                stats_sender.pump();
                // One log line per statistics interval (journald's view of the scan), never
                // one per probe.
                tracing::info!(
                    peers = self.sum(|c| c.known_peers.load(Ordering::Relaxed)),
                    in_flight = self.sum(|c| c.in_flight.load(Ordering::Relaxed)),
                    watched = self.sum(|c| c.watched.load(Ordering::Relaxed)),
                    probes_per_sec = format_args!("{rate:.0}"),
                    probes = self.sum(|c| c.probes_done.load(Ordering::Relaxed)),
                    confirmed = self.sum(|c| c.confirmed.load(Ordering::Relaxed)),
                    writer_queue = writer_metrics.queued.load(Ordering::Relaxed) as i64
                        + writer_metrics.overflow.load(Ordering::Relaxed).max(0),
                    "scan"
                );
            }
        }
        if show_status {
            eprintln!();
        }
        stats_sender.close();
        Ended { thread: ended }
    }
}

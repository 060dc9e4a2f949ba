//! The Prometheus endpoint: `GET /metrics` on `metrics.listen`, in the OpenMetrics text format
//! (which Prometheus scrapes natively), encoded by `prometheus-client`.
//!
//! Nothing here is on the probe path: the workers, the writer and discovery keep their plain
//! relaxed atomics (`WorkerCounters`, `WriterMetrics`), and a [`Collector`] sums them at each
//! scrape. One small thread serves the requests one at a time with blocking sockets and short
//! timeouts (a scrape every few seconds needs no async runtime); it ends with the scan.
//!
//! Labels are bounded sets only: probe kind, outcome class, transport, address family,
//! discovery source and result, client name (from the peer-id's fixed table, at most 64
//! names), country (ISO code of the GeoIP lookup: the first 30 seen in a run, then `other`,
//! and `unknown`), the UDP plane's fixed results, reasons and states, and the DHT node number
//! (at most `dht::host::MAX_NODE_IDS`). Never an address or an info-hash.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::scan::driver::WorkerCounters;
use crate::scan::own_addr::OwnAddresses;
use crate::scan::udp_counters::{DhtCounters, UdpTrackerCounters, UtpCounters, MAX_DHT_NODES};
use crate::store::writer::WriterMetrics;

/// Everything the endpoint reads, shared with the scan.
#[derive(Debug)]
pub struct ScanMetrics {
    /// One per engine worker.
    pub workers: Vec<Arc<WorkerCounters>>,
    /// The writer's counters and the tally of the records it applied.
    pub writer: Arc<WriterMetrics>,
    /// Our own addresses (counts those dropped from tracker answers and PEX).
    pub own: Arc<OwnAddresses>,
    /// Threads whose heartbeat stands still (set by the status loop; see `service::health`).
    pub stalled: Arc<AtomicU64>,
    /// Torrents scanned now: added while running counted, removed ones not (`session::live`).
    pub torrents: Arc<AtomicU64>,
    /// When the scan started, Unix seconds.
    pub start_time: f64,
}

impl ScanMetrics {
    fn sum(&self, f: impl Fn(&WorkerCounters) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|c| f(c).load(Ordering::Relaxed))
            .sum()
    }
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: V,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One counter family with a single label: a series per (label value, count).
fn counters_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for &(value, n) in series {
        ConstCounter::new(n).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

/// One gauge family with a single label.
fn gauges_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    series: &[(&str, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for &(value, n) in series {
        ConstGauge::new(n as i64).encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

fn histogram(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &crate::metrics::AtomicHistogram,
) -> Result<(), std::fmt::Error> {
    let (sum, count, buckets) = h.snapshot();
    let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
}

impl ScanMetrics {
    /// The UDP plane: datagrams by protocol, uTP connections, the DHT nodes and lookups,
    /// UDP tracker replies dropped (`scan::udp_counters`).
    fn encode_udp_plane(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        counters_by(
            e,
            "udp_datagrams_received",
            "Datagrams received on the workers' UDP sockets, by the protocol they look like \
             (krpc: DHT, utp, tracker: UDP tracker replies, other).",
            "kind",
            &[
                ("krpc", self.sum(|c| &c.udp_krpc)),
                ("utp", self.sum(|c| &c.udp_utp)),
                ("tracker", self.sum(|c| &c.udp_tracker)),
                ("other", self.sum(|c| &c.udp_other)),
            ],
        )?;

        let utp = |f: fn(&UtpCounters) -> &AtomicU64| self.sum(move |c| f(&c.utp));
        counter(
            e,
            "utp_connects_started",
            "Outgoing uTP connects started (SYN sent).",
            utp(|u| &u.connects_started),
        )?;
        counters_by(
            e,
            "utp_connects",
            "Outgoing uTP connects that are over, by result: connected; timed_out (no answer \
             to the SYN); refused (RESET or ICMP port unreachable); failed (another ICMP \
             error, a protocol error); cancelled (the scan stopped).",
            "result",
            &[
                ("connected", utp(|u| &u.connected)),
                ("timed_out", utp(|u| &u.connect_timed_out)),
                ("refused", utp(|u| &u.connect_refused)),
                ("failed", utp(|u| &u.connect_failed)),
                ("cancelled", utp(|u| &u.connect_cancelled)),
            ],
        )?;
        counters_by(
            e,
            "utp_incoming",
            "Incoming uTP connections (SYNs): accepted, or refused because the worker's \
             share of peer.max_incoming was alive.",
            "result",
            &[
                ("accepted", utp(|u| &u.accepted)),
                ("refused", utp(|u| &u.incoming_refused)),
            ],
        )?;
        gauges_by(
            e,
            "utp_connections",
            "uTP connections open: carrying an outgoing or an incoming probe, or closing \
             (probe over, our FIN not yet acknowledged).",
            "state",
            &[
                ("outgoing", utp(|u| &u.open_outgoing)),
                ("incoming", utp(|u| &u.open_incoming)),
                ("closing", utp(|u| &u.closing)),
            ],
        )?;
        counter(
            e,
            "utp_reset_by_peer",
            "Established uTP connections the peer ended with RESET.",
            utp(|u| &u.reset_by_peer),
        )?;
        counter(
            e,
            "utp_resets_sent",
            "RESETs sent for uTP packets of no connection of ours.",
            utp(|u| &u.resets_sent),
        )?;
        counter(
            e,
            "utp_resets_suppressed",
            "Such RESETs not sent (over the per-worker rate limit).",
            utp(|u| &u.resets_suppressed),
        )?;
        counter(
            e,
            "utp_ignored_packets",
            "uTP packets of known connections ignored as protocol violations.",
            utp(|u| &u.ignored_packets),
        )?;

        let dht = |f: fn(&DhtCounters) -> &AtomicU64| self.sum(move |c| f(&c.dht));
        counter(
            e,
            "dht_queries_sent",
            "KRPC queries our DHT nodes sent (lookups, pings, announces; retries included).",
            dht(|d| &d.queries_sent),
        )?;
        counter(
            e,
            "dht_replies",
            "Replies (answers or errors) to our DHT queries.",
            dht(|d| &d.replies),
        )?;
        counter(
            e,
            "dht_query_timeouts",
            "DHT queries of ours that got no reply in time.",
            dht(|d| &d.timeouts),
        )?;
        counter(
            e,
            "dht_replies_unmatched",
            "DHT replies dropped: a transaction id we never gave their sender (forged or \
             late).",
            dht(|d| &d.replies_unmatched),
        )?;
        counters_by(
            e,
            "dht_queries_received",
            "DHT queries other nodes sent ours: answered, answered with an error, or dropped \
             (rate limit, size budget, read-only mode, full queue).",
            "result",
            &[
                ("answered", dht(|d| &d.queries_answered)),
                ("error", dht(|d| &d.queries_errors)),
                ("dropped", dht(|d| &d.queries_dropped)),
            ],
        )?;
        counter(
            e,
            "dht_garbage",
            "Datagrams that looked like KRPC but were not (or reached a socket no node uses).",
            dht(|d| &d.garbage),
        )?;
        counters_by(
            e,
            "dht_datagrams",
            "KRPC datagrams our DHT nodes received (in) and sent (out).",
            "direction",
            &[
                ("in", dht(|d| &d.datagrams_in)),
                ("out", dht(|d| &d.datagrams_out)),
            ],
        )?;
        counters_by(
            e,
            "dht_bytes",
            "KRPC bytes our DHT nodes received (in) and sent (out).",
            "direction",
            &[("in", dht(|d| &d.bytes_in)), ("out", dht(|d| &d.bytes_out))],
        )?;
        counters_by(
            e,
            "dht_datagrams_unsent",
            "DHT datagrams not sent: unreachable (a loopback-bound node addressed another \
             host) or queue_full (the node's or the worker's send queue).",
            "reason",
            &[
                ("unreachable", dht(|d| &d.unsent_unreachable)),
                ("queue_full", dht(|d| &d.unsent_queue_full)),
            ],
        )?;
        counter(
            e,
            "dht_lookups_started",
            "DHT get_peers lookups of the scanned torrents started.",
            dht(|d| &d.lookups_started),
        )?;
        let finished = dht(|d| &d.lookups_finished);
        let failed = dht(|d| &d.lookups_failed);
        counters_by(
            e,
            "dht_lookups",
            "DHT lookups finished: ok (some node answered) or no_answer.",
            "result",
            &[
                ("ok", finished.saturating_sub(failed)),
                ("no_answer", failed),
            ],
        )?;
        counter(
            e,
            "dht_lookups_no_nodes",
            "DHT lookups that could not start: the node knew no other node yet (retried).",
            dht(|d| &d.lookups_no_nodes),
        )?;
        gauge(
            e,
            "dht_lookups_running",
            "DHT lookups of the scanned torrents under way.",
            dht(|d| &d.lookups_running),
        )?;
        counter(
            e,
            "dht_lookup_peers",
            "Peers DHT lookups found (distinct within each lookup, summed over lookups).",
            dht(|d| &d.peers_found),
        )?;
        counter(
            e,
            "dht_announces_received",
            "announce_peer queries other nodes sent to ours.",
            dht(|d| &d.announces_received),
        )?;
        {
            let mut m = e.encode_descriptor(
                "dht_routing_nodes",
                "Entries in each DHT node's routing tables, by node (dht.node_ids number), \
                 family and status (good: answered within 15 minutes; questionable; bad).",
                None,
                MetricType::Gauge,
            )?;
            for node in 0..MAX_DHT_NODES {
                let running = self
                    .workers
                    .iter()
                    .any(|c| c.dht.nodes[node].running.load(Ordering::Relaxed));
                if !running {
                    continue;
                }
                let node_label = node.to_string();
                for (f, family) in ["ipv4", "ipv6"].into_iter().enumerate() {
                    for (st, status) in ["good", "questionable", "bad"].into_iter().enumerate() {
                        let n = self.sum(|c| &c.dht.nodes[node].routing[f][st]);
                        let labels = [
                            ("node", node_label.as_str()),
                            ("family", family),
                            ("status", status),
                        ];
                        ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
                    }
                }
            }
        }

        let trackers =
            &|f: fn(&UdpTrackerCounters) -> &AtomicU64| self.sum(move |c| f(&c.udp_trackers));
        counters_by(
            e,
            "udp_tracker_replies_dropped",
            "UDP tracker replies dropped: forged (a transaction id we never gave that \
             address), late (valid, but nothing waits for it any more), short.",
            "reason",
            &[
                ("forged", trackers(|t| &t.replies_forged)),
                ("late", trackers(|t| &t.replies_late)),
                ("short", trackers(|t| &t.replies_short)),
            ],
        )?;
        counter(
            e,
            "udp_tracker_requests_unsent",
            "UDP tracker requests the worker's send queue refused (sent again on their \
             retransmission timer).",
            trackers(|t| &t.requests_unsent),
        )?;
        Ok(())
    }
}

impl Collector for ScanMetrics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let w = &self.writer;
        let tally = &w.tally;
        {
            let mut m = e.encode_descriptor(
                "build_info",
                "Always 1; the label says which swarmscan runs.",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", env!("CARGO_PKG_VERSION"))];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        gauge(
            &mut e,
            "start_time_seconds",
            "When the scan started, Unix time.",
            self.start_time,
        )?;
        gauge(
            &mut e,
            "torrents",
            "Torrents scanned (not removed).",
            self.torrents.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "workers",
            "Engine workers.",
            self.workers.len() as u64,
        )?;
        gauge(
            &mut e,
            "peers_known",
            "Peers in the workers' tables.",
            self.sum(|c| &c.known_peers),
        )?;
        gauge(
            &mut e,
            "probes_in_flight",
            "Probes under way.",
            self.sum(|c| &c.in_flight),
        )?;
        gauge(
            &mut e,
            "watched_connections",
            "Connections held open to see a peer cross the threshold live.",
            self.sum(|c| &c.watched),
        )?;
        {
            let mut m = e.encode_descriptor(
                "probes",
                "Finished probes by kind (first_contact, later_contact, incoming), outcome \
                 (success or the error class of docs/OUTCOMES.md), transport and address family.",
                None,
                MetricType::Counter,
            )?;
            for (kind, outcome, transport, family, n) in tally.probes() {
                let labels = [
                    ("kind", kind),
                    ("outcome", outcome),
                    ("transport", transport),
                    ("family", family),
                ];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            &mut e,
            "watched_samples",
            "Progress samples taken on watched connections.",
            tally.watched_samples(),
        )?;
        {
            let mut m = e.encode_descriptor(
                "incoming_unmatched",
                "Incoming connections tied to no torrent we scan, by outcome.",
                None,
                MetricType::Counter,
            )?;
            for (outcome, n) in tally.unmatched_incoming() {
                ConstCounter::new(n).encode(m.encode_family(&[("outcome", outcome)])?)?;
            }
        }
        counter(
            &mut e,
            "confirmed_downloads",
            "Peers seen below the threshold and later at or above it, this run.",
            self.sum(|c| &c.confirmed),
        )?;
        counter(
            &mut e,
            "confirmed_live",
            "Confirmed downloads whose crossing was seen live on a watched connection.",
            self.sum(|c| &c.crossed_live),
        )?;
        {
            let mut m = e.encode_descriptor(
                "discovery_requests",
                "Discovery requests (announces, PEX messages, incoming connections) by source \
                 and result.",
                None,
                MetricType::Counter,
            )?;
            for (source, result, n) in tally.discovery() {
                let labels = [("source", source), ("result", result)];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "discovery_addresses",
                "Peer addresses received, by source (duplicates included).",
                None,
                MetricType::Counter,
            )?;
            for (source, n) in tally.discovery_addresses() {
                ConstCounter::new(n).encode(m.encode_family(&[("source", source)])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "client_answers",
                "Probe answers carrying a peer-id, by the client its peer-id names (unknown: \
                 not in the table; other: past the first 64 names).",
                None,
                MetricType::Counter,
            )?;
            for (client, n) in tally.clients() {
                ConstCounter::new(n).encode(m.encode_family(&[("client", client.as_str())])?)?;
            }
        }
        {
            let countries = tally.countries();
            let mut m = e.encode_descriptor(
                "peers_stored",
                "Peers stored this run, by country (GeoIP; the first 30 countries seen, then \
                 other; unknown: no GeoIP database or no entry).",
                None,
                MetricType::Counter,
            )?;
            for (country, peers, _) in &countries {
                ConstCounter::new(*peers)
                    .encode(m.encode_family(&[("country", country.as_str())])?)?;
            }
            let mut m = e.encode_descriptor(
                "confirmed_downloads_by_country",
                "Confirmed downloads this run, by the peer's country (labels as peers_stored).",
                None,
                MetricType::Counter,
            )?;
            for (country, _, confirmed) in &countries {
                ConstCounter::new(*confirmed)
                    .encode(m.encode_family(&[("country", country.as_str())])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "writer_queue_records",
                "Records waiting for the writer: in its channel, and in producers' overflow \
                 queues (the channel was full).",
                None,
                MetricType::Gauge,
            )?;
            let channel = w.queued.load(Ordering::Relaxed) as i64;
            let overflow = w.overflow.load(Ordering::Relaxed).max(0);
            ConstGauge::new(channel).encode(m.encode_family(&[("queue", "channel")])?)?;
            ConstGauge::new(overflow).encode(m.encode_family(&[("queue", "overflow")])?)?;
        }
        counter(
            &mut e,
            "writer_records_committed",
            "Records committed to the database.",
            w.committed.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "writer_batches",
            "Transactions committed.",
            w.batches.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "writer_backpressure",
            "Records that found the writer's channel full and waited in an overflow queue.",
            w.backpressure.load(Ordering::Relaxed),
        )?;
        counter(
            &mut e,
            "writer_lost",
            "Records lost because the writer was gone (0 unless it failed).",
            w.lost.load(Ordering::Relaxed),
        )?;
        histogram(
            &mut e,
            "writer_commit_seconds",
            "Time per COMMIT (the batch's aggregates included).",
            &w.commit_seconds.0,
        )?;
        histogram(
            &mut e,
            "writer_batch_records",
            "Records per committed transaction.",
            &w.batch_records.0,
        )?;
        counter(
            &mut e,
            "peers_blocked",
            "Addresses dropped because the blocklist names them.",
            self.sum(|c| &c.blocked),
        )?;
        counter(
            &mut e,
            "peer_table_full",
            "Addresses dropped because engine.max_peers was reached.",
            self.sum(|c| &c.table_full),
        )?;
        counter(
            &mut e,
            "watch_refused",
            "Watch candidates turned away because peer.max_watched was full of better ones.",
            self.sum(|c| &c.watch_refused),
        )?;
        counter(
            &mut e,
            "mse_incoming_refused",
            "Incoming MSE handshakes closed unanswered (net.mse_incoming_per_sec spent).",
            self.sum(|c| &c.mse_incoming_refused),
        )?;
        counter(
            &mut e,
            "ipv6_ignored",
            "IPv6 addresses ignored because net.ipv6 = false.",
            self.sum(|c| &c.ipv6_ignored),
        )?;
        counter(
            &mut e,
            "own_address_dropped",
            "Addresses from trackers and PEX that were our own.",
            self.own.dropped(),
        )?;
        self.encode_udp_plane(&mut e)?;
        gauge(
            &mut e,
            "threads_stalled",
            "Engine workers and writer whose loop has not moved within the stall limit \
             (while above 0 no systemd watchdog ping is sent).",
            self.stalled.load(Ordering::Relaxed),
        )?;
        gauge(
            &mut e,
            "resident_memory_bytes",
            "Resident set size of the process.",
            crate::metrics::rss_bytes(),
        )?;
        Ok(())
    }
}

/// The registry served at `/metrics`: every series prefixed `swarmscan_`.
pub fn registry(metrics: ScanMetrics) -> Registry {
    let mut r = Registry::with_prefix("swarmscan");
    r.register_collector(Box::new(metrics));
    r
}

/// The registry as OpenMetrics text.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; a collector error would leave a partial body.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics listener (before the scan starts: a taken port is an error at once).
pub fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    let l = TcpListener::bind(addr).map_err(|e| format!("metrics.listen: {addr}: {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("metrics.listen: {addr}: {e}"))?;
    Ok(l)
}

/// Serves `registry` on `listener` until `stop` is set.
pub fn serve(
    listener: TcpListener,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("swarmscan-metrics".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = answer(stream, &registry) {
                            tracing::debug!("metrics request: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => {
                        tracing::warn!("metrics listener: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            }
        })
}

/// Longest request head read.
const MAX_HEAD: usize = 8192;

/// Answers one request: `GET /metrics` (or `HEAD`), else 404 / 405.
fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"",
            );
        }
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = encode(registry);
            let body = if method == "HEAD" { "" } else { body.as_str() };
            respond(&mut stream, "200 OK", CONTENT_TYPE, body.as_bytes())
        }
        ("GET" | "HEAD", "/") => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            b"swarmscan: metrics at /metrics\n",
        ),
        ("GET" | "HEAD", _) => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"GET /metrics\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Unix time now, seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

//! Process metrics read from the kernel (status line, periodic statistics, benchmarks), and the
//! lock-free counters the metrics endpoint reads (`service::prometheus`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::store::record::{ErrorClass, PeerSource, ProbeEvent, ProbeResult, Record, Transport};

/// Resident set size of this process in bytes (0 if /proc is unavailable).
pub fn rss_bytes() -> u64 {
    // Safety: sysconf has no preconditions; it returns -1 on error.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = if page > 0 { page as u64 } else { 4096 };
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// CPU time (user + system) this process has used so far.
pub fn cpu_time() -> std::time::Duration {
    // Safety: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // Safety: see above; `usage` outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return std::time::Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU use between two readings, in percent of one core (200 = two cores busy).
#[derive(Debug)]
pub struct CpuMeter {
    last_cpu: std::time::Duration,
    last_at: std::time::Instant,
}

impl Default for CpuMeter {
    fn default() -> Self {
        CpuMeter {
            last_cpu: cpu_time(),
            last_at: std::time::Instant::now(),
        }
    }
}

impl CpuMeter {
    /// Percent of one core used since the last call (or since the meter was made).
    pub fn percent(&mut self) -> f64 {
        let (cpu, at) = (cpu_time(), std::time::Instant::now());
        let wall = at.duration_since(self.last_at).as_secs_f64();
        let used = cpu.saturating_sub(self.last_cpu).as_secs_f64();
        self.last_cpu = cpu;
        self.last_at = at;
        if wall > 0.0 {
            used / wall * 100.0
        } else {
            0.0
        }
    }
}

/// A histogram with fixed bucket bounds, observed by one thread and read by another (the
/// metrics endpoint) without a lock. Sums are kept in millionths.
#[derive(Debug)]
pub struct AtomicHistogram {
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative), then the overflow bucket.
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl AtomicHistogram {
    /// A histogram with these upper bounds (ascending; `+Inf` is implied).
    pub fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let micros = if v.is_finite() && v > 0.0 {
            (v * 1e6) as u64
        } else {
            0
        };
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (sum, count, per-bucket counts with `+Inf` last): what `prometheus-client`'s
    /// `encode_histogram` takes (it makes the buckets cumulative itself).
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        // The count is the sum of the buckets read, so `_count` and `+Inf` always agree.
        (sum, count, buckets)
    }
}

/// Probe kinds counted by the metrics endpoint (watched samples are counted apart).
pub const PROBE_KINDS: [ProbeEvent; 3] = [
    ProbeEvent::FirstContact,
    ProbeEvent::LaterContact,
    ProbeEvent::Incoming,
];
/// Outcome classes: `success`, the classes of [`ErrorClass`], and `other` for any other errno.
pub const OUTCOMES: [&str; 12] = [
    "success",
    "timed_out",
    "refused",
    "reset",
    "broken",
    "no_route",
    "net_unreachable",
    "unknown_protocol",
    "unknown_info_hash",
    "mse_failed",
    "protocol_error",
    "other",
];
/// Transports: TCP or uTP, plaintext or MSE.
pub const TRANSPORTS: [&str; 4] = ["tcp", "tcp_mse", "utp", "utp_mse"];
/// Address families.
pub const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];
/// Discovery sources.
pub const SOURCES: [PeerSource; 5] = PeerSource::ALL;
/// Discovery results.
pub const RESULTS: [&str; 2] = ["ok", "error"];
/// Distinct client names kept as labels; further names count under `other`.
pub const MAX_CLIENT_LABELS: usize = 64;

/// Countries kept as labels: the first this many seen in a run (a swarm's largest countries
/// come first almost always); later ones count under `other`. Labels never move once given:
/// the series are counters, and a country moving from `other` to its own label would make
/// `other` go down (read as a reset by Prometheus).
pub const MAX_COUNTRY_LABELS: usize = 30;

const CELLS: usize = PROBE_KINDS.len() * OUTCOMES.len() * TRANSPORTS.len() * FAMILIES.len();

fn outcome_index(result: &ProbeResult) -> usize {
    match result {
        ProbeResult::Success(_) => 0,
        ProbeResult::Failed(class) => error_index(*class),
    }
}

fn error_index(class: ErrorClass) -> usize {
    match class {
        // uTP's classes count under their TCP counterparts: the transport is a label here.
        ErrorClass::TimedOut | ErrorClass::UtpTimedOut => 1,
        ErrorClass::Refused | ErrorClass::UtpRefused => 2,
        ErrorClass::Reset | ErrorClass::UtpReset => 3,
        ErrorClass::Broken => 4,
        ErrorClass::NoRoute => 5,
        ErrorClass::NetUnreachable => 6,
        ErrorClass::UnknownProtocol => 7,
        ErrorClass::UnknownInfoHash => 8,
        ErrorClass::MseFailed => 9,
        ErrorClass::ProtocolError | ErrorClass::UtpProtocol => 10,
        ErrorClass::Other(_) => 11,
    }
}

fn transport_index(t: Transport) -> usize {
    let utp = usize::from(t.contains(Transport::UTP));
    let mse = usize::from(t.contains(Transport::MSE));
    utp * 2 + mse
}

/// What the records passing through the writer say, counted for the metrics endpoint: probes
/// by kind, outcome, transport and family; watched samples; discovery requests by source and
/// result; answers by client name (from the peer-id: a bounded set of names). Written by the
/// writer thread only, read at each scrape. No address and no info-hash is ever a label.
#[derive(Debug)]
pub struct RecordTally {
    probes: Vec<AtomicU64>,
    watched_samples: AtomicU64,
    unmatched_incoming: [AtomicU64; OUTCOMES.len()],
    discovery: [[AtomicU64; RESULTS.len()]; SOURCES.len()],
    discovery_addresses: [AtomicU64; SOURCES.len()],
    clients: Mutex<HashMap<String, u64>>,
    /// Peers stored and confirmed downloads of this run, by country label.
    countries: Mutex<HashMap<String, (u64, u64)>>,
}

impl Default for RecordTally {
    fn default() -> Self {
        RecordTally {
            probes: (0..CELLS).map(|_| AtomicU64::new(0)).collect(),
            watched_samples: AtomicU64::new(0),
            unmatched_incoming: Default::default(),
            discovery: Default::default(),
            discovery_addresses: Default::default(),
            clients: Mutex::new(HashMap::new()),
            countries: Mutex::new(HashMap::new()),
        }
    }
}

fn cell(kind: usize, outcome: usize, transport: usize, family: usize) -> usize {
    ((kind * OUTCOMES.len() + outcome) * TRANSPORTS.len() + transport) * FAMILIES.len() + family
}

/// The client label of a peer-id: the client's name when the peer-id encodes a known one
/// (a fixed table, so the label set is bounded), else `unknown`.
pub fn client_label(peer_id: &[u8; 20]) -> String {
    crate::proto::client_id::from_peer_id(peer_id)
        .name()
        .map_or_else(|| "unknown".to_string(), str::to_string)
}

impl RecordTally {
    /// Counts one record.
    pub fn observe(&self, record: &Record) {
        match record {
            Record::Outcome(o) => {
                let Some(kind) = PROBE_KINDS.iter().position(|k| *k == o.event) else {
                    self.watched_samples.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let family = usize::from(o.addr.ip().to_canonical().is_ipv6());
                let i = cell(
                    kind,
                    outcome_index(&o.result),
                    transport_index(o.transport),
                    family,
                );
                self.probes[i].fetch_add(1, Ordering::Relaxed);
                if let Some(id) = &o.peer_id {
                    let name = client_label(id);
                    let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                    let name = if clients.contains_key(&name) || clients.len() < MAX_CLIENT_LABELS {
                        name
                    } else {
                        "other".to_string()
                    };
                    *clients.entry(name).or_insert(0) += 1;
                }
            }
            Record::Discovery(d) => {
                let Some(s) = SOURCES.iter().position(|s| *s == d.source) else {
                    return;
                };
                let r = usize::from(d.error.is_some());
                self.discovery[s][r].fetch_add(1, Ordering::Relaxed);
                self.discovery_addresses[s].fetch_add(d.peers.len() as u64, Ordering::Relaxed);
            }
            Record::UnmatchedIncoming { error, .. } => {
                self.unmatched_incoming[error_index(*error)].fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// Every non-zero probe cell: (kind, outcome, transport, family, count).
    pub fn probes(&self) -> Vec<(&'static str, &'static str, &'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (k, kind) in PROBE_KINDS.iter().enumerate() {
            for (o, outcome) in OUTCOMES.iter().enumerate() {
                for (t, transport) in TRANSPORTS.iter().enumerate() {
                    for (f, family) in FAMILIES.iter().enumerate() {
                        let n = self.probes[cell(k, o, t, f)].load(Ordering::Relaxed);
                        if n > 0 {
                            out.push((kind.as_str(), *outcome, *transport, *family, n));
                        }
                    }
                }
            }
        }
        out
    }

    /// Samples taken on watched connections.
    pub fn watched_samples(&self) -> u64 {
        self.watched_samples.load(Ordering::Relaxed)
    }

    /// Incoming connections tied to no torrent we scan, by outcome (non-zero only).
    pub fn unmatched_incoming(&self) -> Vec<(&'static str, u64)> {
        OUTCOMES
            .iter()
            .zip(&self.unmatched_incoming)
            .map(|(o, n)| (*o, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Discovery requests: (source, result, count) for every pair, zeros included.
    pub fn discovery(&self) -> Vec<(&'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (s, source) in SOURCES.iter().enumerate() {
            for (r, result) in RESULTS.iter().enumerate() {
                out.push((
                    source.as_str(),
                    *result,
                    self.discovery[s][r].load(Ordering::Relaxed),
                ));
            }
        }
        out
    }

    /// Addresses received, by source.
    pub fn discovery_addresses(&self) -> Vec<(&'static str, u64)> {
        SOURCES
            .iter()
            .zip(&self.discovery_addresses)
            .map(|(s, n)| (s.as_str(), n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Adds a committed batch's (new peers, confirmed downloads) by country (ISO code; `None`
    /// = unknown: no GeoIP database or no entry).
    pub fn add_countries(&self, batch: &HashMap<Option<String>, (u64, u64)>) {
        let mut countries = self.countries.lock().unwrap_or_else(|e| e.into_inner());
        for (country, (peers, confirmed)) in batch {
            let label = match country {
                None => "unknown".to_string(),
                Some(c) if countries.contains_key(c) => c.clone(),
                // "other" and "unknown" are not ISO codes: no clash.
                Some(c)
                    if countries
                        .keys()
                        .filter(|k| *k != "other" && *k != "unknown")
                        .count()
                        < MAX_COUNTRY_LABELS =>
                {
                    c.clone()
                }
                Some(_) => "other".to_string(),
            };
            let e = countries.entry(label).or_insert((0, 0));
            e.0 += peers;
            e.1 += confirmed;
        }
    }

    /// (country label, peers stored, confirmed downloads) of this run, sorted by label.
    pub fn countries(&self) -> Vec<(String, u64, u64)> {
        let countries = self.countries.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = countries
            .iter()
            .map(|(k, (p, c))| (k.clone(), *p, *c))
            .collect();
        v.sort();
        v
    }

    /// Answers carrying a peer-id, by client name, sorted by name.
    pub fn clients(&self) -> Vec<(String, u64)> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, u64)> = clients.iter().map(|(k, v)| (k.clone(), *v)).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::record::{DiscoveryRecord, ProbeOutcome, Progress};

    #[test]
    fn cpu_meter_sees_a_busy_loop() {
        let mut meter = CpuMeter::default();
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(300) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let p = meter.percent();
        // A busy thread on a shared machine: well above idle, at most all cores.
        assert!(p > 20.0 && p < 100.0 * 64.0, "{p}");
    }

    #[test]
    fn histogram_counts_per_bucket_and_count_matches() {
        static B: [f64; 3] = [0.001, 0.01, 0.1];
        let h = AtomicHistogram::new(&B);
        for v in [0.0005, 0.005, 0.005, 0.05, 3.0] {
            h.observe(v);
        }
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 5);
        assert!((sum - 3.0605).abs() < 1e-6, "{sum}");
        assert_eq!(
            buckets,
            vec![(0.001, 1), (0.01, 2), (0.1, 1), (f64::INFINITY, 1)]
        );
    }

    fn outcome(event: ProbeEvent, result: ProbeResult, peer_id: Option<[u8; 20]>) -> Record {
        Record::Outcome(Box::new(ProbeOutcome {
            torrent_id: 1,
            addr: "[::ffff:127.0.0.1]:6881".parse().unwrap(),
            event,
            at: 0,
            result,
            client: None,
            peer_id,
            transport: Transport::TCP | Transport::MSE,
            connect_ms: None,
            duration_ms: 0,
            longest_gap_ms: None,
            messages: 0,
            next_visit_at: None,
            portless: false,
        }))
    }

    #[test]
    fn tally_counts_by_bounded_labels() {
        let t = RecordTally::default();
        let mut qb = [b'0'; 20];
        qb[..8].copy_from_slice(b"-qB4130-");
        let ok = ProbeResult::Success(Progress { have: 1, pieces: 2 });
        t.observe(&outcome(ProbeEvent::FirstContact, ok, Some(qb)));
        t.observe(&outcome(ProbeEvent::FirstContact, ok, Some([0xff; 20])));
        t.observe(&outcome(
            ProbeEvent::LaterContact,
            ProbeResult::Failed(ErrorClass::Other(99)),
            None,
        ));
        t.observe(&outcome(ProbeEvent::Watched, ok, None));
        t.observe(&Record::Discovery(DiscoveryRecord {
            at: 0,
            torrent_id: 1,
            source: PeerSource::TrackerUdp,
            tracker: Some("udp://x".into()),
            duration_ms: 1,
            error: Some("timeout".into()),
            peers: vec![],
        }));
        assert_eq!(
            t.probes(),
            vec![
                ("first_contact", "success", "tcp_mse", "ipv4", 2),
                ("later_contact", "other", "tcp_mse", "ipv4", 1),
            ],
            "IPv4-mapped addresses count as IPv4"
        );
        assert_eq!(t.watched_samples(), 1);
        assert_eq!(
            t.clients(),
            vec![("qBittorrent".to_string(), 1), ("unknown".to_string(), 1)]
        );
        assert!(t.discovery().contains(&("tracker_udp", "error", 1)));
        for i in 0..(MAX_CLIENT_LABELS * 2) {
            let mut id = [b'0'; 20];
            id[..8].copy_from_slice(format!("-Z{:01}0000-", i % 10).as_bytes());
            t.observe(&outcome(
                ProbeEvent::FirstContact,
                ProbeResult::Failed(ErrorClass::Reset),
                Some(id),
            ));
        }
        assert!(t.clients().len() <= MAX_CLIENT_LABELS + 1);
    }

    #[test]
    fn countries_are_a_bounded_label_set_that_never_moves() {
        let t = RecordTally::default();
        let batch = |rows: &[(Option<&str>, u64, u64)]| {
            rows.iter()
                .map(|(c, p, k)| (c.map(str::to_string), (*p, *k)))
                .collect::<HashMap<_, _>>()
        };
        t.add_countries(&batch(&[(Some("DE"), 3, 1), (None, 2, 0)]));
        t.add_countries(&batch(&[(Some("DE"), 1, 1), (Some("SE"), 1, 0)]));
        assert_eq!(
            t.countries(),
            vec![
                ("DE".to_string(), 4, 2),
                ("SE".to_string(), 1, 0),
                ("unknown".to_string(), 2, 0)
            ]
        );
        // 200 more countries: at most MAX_COUNTRY_LABELS codes, then "other"; a code that
        // has its label keeps it.
        for i in 0..200u32 {
            let code = format!(
                "{}{}",
                (b'A' + (i / 26) as u8) as char,
                (b'A' + (i % 26) as u8) as char
            );
            t.add_countries(&batch(&[
                (Some(&code), 1, u64::from(i % 2)),
                (Some("SE"), 1, 0),
            ]));
        }
        let all = t.countries();
        let codes = all
            .iter()
            .filter(|c| c.0 != "other" && c.0 != "unknown")
            .count();
        assert_eq!(codes, MAX_COUNTRY_LABELS);
        let other = all.iter().find(|c| c.0 == "other").unwrap();
        let named: u64 = all.iter().filter(|c| c.0 != "unknown").map(|c| c.1).sum();
        assert_eq!(named, 4 + 1 + 200 + 200, "nothing lost");
        assert!(other.1 > 150 && other.2 > 70, "{other:?}");
        assert_eq!(all.iter().find(|c| c.0 == "SE").unwrap().1, 201);
    }
}

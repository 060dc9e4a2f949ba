//! The sink's per-worker driver: a silent conversation per accepted TCP connection and a
//! bounded table of UDP flows; every finished flow becomes a [`SinkFlowRecord`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::engine::{
    Conversation, DatagramQueue, Millis, ProbeDone, ProbeRequest, Verdict, WorkerDriver,
};
use crate::proto::sink_classify::{self, Classification, Protocol, Transport};
use crate::store::{RecordSender, SinkFlowRecord};

/// What a sink worker needs to know (a share of the `sink.*` settings).
#[derive(Debug, Clone, PartialEq)]
pub struct SinkLimits {
    /// Quiet this long: the flow is over.
    pub idle_ms: Millis,
    /// Bytes of a flow kept for classification.
    pub keep_bytes: usize,
    /// Close a TCP connection after this many bytes (0 = never).
    pub max_bytes: u64,
    /// UDP flows tracked by this worker.
    pub max_udp_flows: usize,
}

/// Records a worker may hold waiting for the writer (about 200 bytes each). Past it the
/// writer is behind the flood: new connections are reset and new UDP flows only counted, so
/// memory stays bounded; flows already open are still stored.
const MAX_PENDING_RECORDS: usize = 65_536;

/// How a flow ended, as stored.
fn ending_name(errno: Option<i32>) -> &'static str {
    match errno {
        None => "closed",
        Some(libc::ECONNABORTED) => "evicted",
        Some(libc::ECANCELED) => "stopped",
        Some(_) => "reset",
    }
}

/// One accepted TCP connection: reads, never writes; keeps the first bytes.
#[derive(Debug)]
pub struct SinkConv {
    destination: SocketAddr,
    idle_ms: Millis,
    keep_bytes: usize,
    max_bytes: u64,
    prefix: Vec<u8>,
    bytes: u64,
    reads: u64,
    started: Millis,
    last: Millis,
    ending: &'static str,
}

impl SinkConv {
    /// A connection accepted at `now` that was sent to `destination`.
    pub fn new(destination: SocketAddr, limits: &SinkLimits, now: Millis) -> SinkConv {
        SinkConv {
            destination,
            idle_ms: limits.idle_ms,
            keep_bytes: limits.keep_bytes,
            max_bytes: limits.max_bytes,
            prefix: Vec::new(),
            bytes: 0,
            reads: 0,
            started: now,
            last: now,
            ending: "stopped",
        }
    }

    /// What the first bytes are.
    pub fn classify(&self) -> Classification {
        sink_classify::classify_stream(&self.prefix)
    }
}

impl Conversation for SinkConv {
    fn on_connected(&mut self, now: Millis, _send: &mut Vec<u8>) {
        self.last = now;
    }

    fn on_bytes(&mut self, now: Millis, bytes: &[u8], _send: &mut Vec<u8>) -> Verdict {
        let room = self.keep_bytes.saturating_sub(self.prefix.len());
        self.prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.bytes += bytes.len() as u64;
        self.reads += 1;
        self.last = now;
        if self.max_bytes > 0 && self.bytes >= self.max_bytes {
            self.ending = "byte_cap";
            return Verdict::Finished;
        }
        Verdict::Continue
    }

    fn deadline(&self) -> Millis {
        self.last.saturating_add(self.idle_ms)
    }

    fn on_deadline(&mut self, _now: Millis, _send: &mut Vec<u8>) -> Verdict {
        self.ending = "idle";
        Verdict::Finished
    }

    fn on_closed(&mut self, _now: Millis, errno: Option<i32>) {
        self.ending = ending_name(errno);
    }
}

/// A UDP flow: datagrams of one protocol from one sender to one destination, until quiet.
#[derive(Debug)]
struct UdpFlow {
    first: Millis,
    last: Millis,
    bytes: u64,
    packets: u64,
    class: Classification,
}

/// A UDP flow's identity: sender, destination, protocol family (one client's DHT node, uTP
/// connections and tracker announces on one socket are three flows; see
/// `sink_classify::datagram_family`).
type FlowKey = (SocketAddr, SocketAddr, Protocol);

/// Counters of one sink worker.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SinkCounters {
    /// TCP connections stored.
    pub tcp_flows: u64,
    /// UDP datagrams received.
    pub datagrams: u64,
    /// UDP flows stored.
    pub udp_flows: u64,
    /// UDP flows stored early to make room for a new one.
    pub udp_flows_evicted: u64,
    /// Most UDP flows tracked at once.
    pub udp_flows_max: usize,
    /// Connections reset because the writer was [`MAX_PENDING_RECORDS`] behind.
    pub refused_writer_behind: u64,
    /// Datagrams of new UDP flows not recorded because the writer was that far behind.
    pub datagrams_writer_behind: u64,
    /// Workers (for the start message; summed, it is the number of workers).
    #[serde(skip)]
    pub workers: usize,
}

/// One worker's sink: hands the engine silent conversations, tracks UDP flows, sends records.
pub struct SinkDriver {
    limits: SinkLimits,
    records: RecordSender,
    /// Unix milliseconds at engine time 0.
    unix_epoch_ms: i64,
    next_token: u64,
    udp: HashMap<FlowKey, UdpFlow>,
    /// UDP flow keys oldest first (with their start, to skip keys of flows already gone).
    udp_order: VecDeque<(FlowKey, Millis)>,
    next_sweep: Millis,
    /// Workers up so far (shared); the last one to come up says the sink listens.
    started: Option<Arc<AtomicUsize>>,
    tcp: Vec<SocketAddr>,
    /// Counters, read after the run.
    pub counters: SinkCounters,
}

impl SinkDriver {
    /// A driver whose engine clock started at `unix_epoch_ms`.
    pub fn new(limits: SinkLimits, records: RecordSender, unix_epoch_ms: i64) -> SinkDriver {
        SinkDriver {
            limits,
            records,
            unix_epoch_ms,
            next_token: 0,
            udp: HashMap::new(),
            udp_order: VecDeque::new(),
            next_sweep: 0,
            started: None,
            tcp: Vec::new(),
            counters: SinkCounters::default(),
        }
    }

    /// Prints "sink: listening on ..." once all `workers` sharing `started` are up.
    pub fn announce_when_up(mut self, started: Arc<AtomicUsize>, workers: usize) -> SinkDriver {
        self.started = Some(started);
        self.counters.workers = workers;
        self
    }

    fn unix(&self, at: Millis) -> i64 {
        self.unix_epoch_ms.saturating_add(at as i64)
    }

    fn store(
        &mut self,
        transport: Transport,
        class: &Classification,
        source: SocketAddr,
        destination: SocketAddr,
        times: (Millis, Millis, u64, u64),
        ending: &'static str,
    ) {
        let (first, last, bytes, packets) = times;
        let details = (!class.details.is_empty())
            .then(|| serde_json::to_string(&class.details).unwrap_or_default());
        let record = SinkFlowRecord {
            transport: transport.name(),
            protocol: class.protocol.name(),
            source,
            destination,
            first_at: self.unix(first),
            last_at: self.unix(last),
            bytes,
            packets,
            ending,
            details,
        };
        self.records
            .send(crate::store::Record::SinkFlow(Box::new(record)));
    }

    fn store_udp(&mut self, key: FlowKey, ending: &'static str) {
        if let Some(flow) = self.udp.remove(&key) {
            self.counters.udp_flows += 1;
            let times = (flow.first, flow.last, flow.bytes, flow.packets);
            self.store(Transport::Udp, &flow.class, key.0, key.1, times, ending);
        }
    }

    /// Stores the UDP flows quiet for `idle_ms` (all of them with `everything`).
    fn sweep_udp(&mut self, now: Millis, everything: bool) {
        let idle = self.limits.idle_ms;
        let quiet: Vec<_> = self
            .udp
            .iter()
            .filter(|(_, f)| everything || now.saturating_sub(f.last) >= idle)
            .map(|(k, _)| *k)
            .collect();
        let ending = if everything { "stopped" } else { "idle" };
        for key in quiet {
            self.store_udp(key, ending);
        }
        if self.udp_order.len() > 2 * self.udp.len() + 1024 {
            let udp = &self.udp;
            self.udp_order
                .retain(|(k, first)| udp.get(k).is_some_and(|f| f.first == *first));
        }
    }

    /// Stores every flow still open and hands the overflow to the writer (after the run).
    pub fn finish(mut self) -> SinkCounters {
        self.sweep_udp(Millis::MAX, true);
        let counters = self.counters.clone();
        self.records.close();
        counters
    }
}

impl WorkerDriver for SinkDriver {
    type Conv = SinkConv;

    fn next_probe(&mut self, _now: Millis) -> Option<ProbeRequest<SinkConv>> {
        None
    }

    fn probe_done(&mut self, _now: Millis, done: ProbeDone<SinkConv>) {
        let conv = done.conv;
        let class = conv.classify();
        self.counters.tcp_flows += 1;
        let times = (conv.started, conv.last, conv.bytes, conv.reads);
        self.store(
            Transport::Tcp,
            &class,
            done.peer,
            conv.destination,
            times,
            conv.ending,
        );
    }

    fn incoming(
        &mut self,
        now: Millis,
        remote: SocketAddr,
        local: SocketAddr,
    ) -> Option<(u64, SinkConv)> {
        self.incoming_to(now, remote, local, None)
    }

    fn incoming_to(
        &mut self,
        now: Millis,
        _remote: SocketAddr,
        local: SocketAddr,
        original_dst: Option<SocketAddr>,
    ) -> Option<(u64, SinkConv)> {
        if self.records.pending() >= MAX_PENDING_RECORDS {
            self.counters.refused_writer_behind += 1;
            return None;
        }
        self.next_token += 1;
        let destination = original_dst.unwrap_or(local);
        Some((
            self.next_token,
            SinkConv::new(destination, &self.limits, now),
        ))
    }

    fn on_start(&mut self, _waker: crate::engine::Waker, listening: &[SocketAddr]) {
        self.tcp = listening.to_vec();
    }

    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        if let Some(started) = self.started.take() {
            if started.fetch_add(1, Ordering::SeqCst) + 1 == self.counters.workers {
                crate::logging::say(format_args!(
                    "swarmscan: sink listening on tcp {:?} udp {:?}; answering nothing",
                    self.tcp, udp
                ));
            }
        }
    }

    fn tick(&mut self, now: Millis) {
        self.records.pump();
        if now >= self.next_sweep {
            // Flows are stored at most half an idle time late (and within a second).
            self.next_sweep = now + (self.limits.idle_ms / 2).clamp(10, 1000);
            self.sweep_udp(now, false);
        }
    }

    fn datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        self.datagram_to(now, local, None, from, bytes, out)
    }

    fn datagram_to(
        &mut self,
        now: Millis,
        local: SocketAddr,
        original_dst: Option<SocketAddr>,
        from: SocketAddr,
        bytes: &[u8],
        _out: &mut DatagramQueue,
    ) {
        // Nothing is ever pushed to `_out`: the sink never answers.
        self.on_datagram(now, original_dst.unwrap_or(local), from, bytes);
    }

    fn next_wakeup(&self) -> Option<Millis> {
        (!self.udp.is_empty()).then_some(self.next_sweep)
    }
}

impl SinkDriver {
    /// A datagram from `from` to `destination`: counted into its flow, or a new flow (the
    /// oldest stored first when the table is full).
    fn on_datagram(
        &mut self,
        now: Millis,
        destination: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
    ) {
        self.counters.datagrams += 1;
        // Grouped by the cheap family; only a flow's first datagram is fully classified.
        let key = (from, destination, sink_classify::datagram_family(bytes));
        if let Some(flow) = self.udp.get_mut(&key) {
            flow.last = now;
            flow.bytes += bytes.len() as u64;
            flow.packets += 1;
            return;
        }
        if self.records.pending() >= MAX_PENDING_RECORDS {
            self.counters.datagrams_writer_behind += 1;
            return;
        }
        let kept = &bytes[..bytes.len().min(self.limits.keep_bytes)];
        let class = sink_classify::classify_datagram(kept);
        // A new flow: make room first, oldest first.
        while self.udp.len() >= self.limits.max_udp_flows {
            let Some((old, first)) = self.udp_order.pop_front() else {
                break;
            };
            if self.udp.get(&old).is_some_and(|f| f.first == first) {
                self.counters.udp_flows_evicted += 1;
                self.store_udp(old, "evicted");
            }
        }
        self.udp.insert(
            key,
            UdpFlow {
                first: now,
                last: now,
                bytes: bytes.len() as u64,
                packets: 1,
                class,
            },
        );
        self.udp_order.push_back((key, now));
        self.counters.udp_flows_max = self.counters.udp_flows_max.max(self.udp.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::anon::Anonymizer;
    use crate::store::{Store, Writer, WriterOptions};

    #[test]
    fn udp_flows_group_by_sender_and_protocol_end_when_idle_and_the_oldest_makes_room() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let writer = Writer::start(
            Store::open(&path).unwrap(),
            Anonymizer::new(crate::config::IpMode::Full, [0; 32]),
            WriterOptions {
                batch_rows: 100,
                batch_ms: 50,
                channel_capacity: 64,
                threshold: 0.98,
                unwritable: std::time::Duration::from_secs(60),
                geo: Default::default(),
                reverse_dns: false,
            },
        )
        .unwrap();
        let limits = SinkLimits {
            keep_bytes: 1024,
            ..limits()
        };
        let mut sink = SinkDriver::new(limits, writer.sender(), 1_000_000);
        let dst: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let (a, b, c): (SocketAddr, SocketAddr, SocketAddr) = (
            "10.0.0.1:1000".parse().unwrap(),
            "10.0.0.2:2000".parse().unwrap(),
            "10.0.0.3:3000".parse().unwrap(),
        );
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let mut connect = crate::proto::tracker_udp::PROTOCOL_ID
            .to_be_bytes()
            .to_vec();
        connect.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 9]);
        // A's pings are one flow; its tracker connect is another (max 2 flows).
        sink.on_datagram(0, dst, a, ping);
        sink.on_datagram(10, dst, a, ping);
        sink.on_datagram(20, dst, a, &connect);
        assert_eq!(sink.udp.len(), 2);
        // B's ping makes room: A's KRPC flow (the oldest) is stored as evicted.
        sink.on_datagram(30, dst, b, ping);
        assert_eq!(sink.counters.udp_flows_evicted, 1);
        // Flows quiet for the idle time (100 ms) are stored by the sweep; C's, newer, stays
        // until the end.
        sink.tick(135);
        assert!(sink.udp.is_empty());
        sink.on_datagram(140, dst, c, ping);
        sink.tick(150);
        assert_eq!(sink.udp.len(), 1);
        let counters = sink.finish();
        assert_eq!((counters.datagrams, counters.udp_flows), (5, 4));
        writer.finish().unwrap();
        let conn = rusqlite::Connection::open(&path).unwrap();
        let rows: Vec<(String, String, i64, i64, i64, String)> = conn
            .prepare(
                "SELECT src_ip, protocol, packets, first_at, last_at, ending FROM sink_flows
                 ORDER BY src_ip, protocol",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let row = |ip: &str, p: &str, n: i64, first: i64, last: i64, end: &str| {
            (
                ip.to_string(),
                p.to_string(),
                n,
                1_000_000 + first,
                1_000_000 + last,
                end.to_string(),
            )
        };
        assert_eq!(
            rows,
            vec![
                row("10.0.0.1", "krpc", 2, 0, 10, "evicted"),
                row("10.0.0.1", "udp_tracker", 1, 20, 20, "idle"),
                row("10.0.0.2", "krpc", 1, 30, 30, "idle"),
                row("10.0.0.3", "krpc", 1, 140, 140, "stopped"),
            ]
        );
    }

    fn limits() -> SinkLimits {
        SinkLimits {
            idle_ms: 100,
            keep_bytes: 8,
            max_bytes: 20,
            max_udp_flows: 2,
        }
    }

    #[test]
    fn a_writer_far_behind_bounds_what_is_held_and_loses_nothing_already_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let store = Store::open(&path).unwrap();
        let writer = Writer::start(
            store,
            Anonymizer::new(crate::config::IpMode::Full, [0; 32]),
            WriterOptions {
                batch_rows: 16,
                batch_ms: 10,
                channel_capacity: 16,
                threshold: 0.98,
                unwritable: std::time::Duration::from_secs(600),
                geo: Default::default(),
                reverse_dns: false,
            },
        )
        .unwrap();
        // Another connection holds the database: the writer's commits fail, its spool fills,
        // the channel fills, records wait in the worker's sender.
        let blocker = rusqlite::Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let limits = SinkLimits {
            keep_bytes: 1024,
            max_udp_flows: 1,
            ..limits()
        };
        let mut sink = SinkDriver::new(limits, writer.sender(), 0);
        let dst: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        // With one flow allowed, each sender's datagram stores the previous sender's flow.
        let total = MAX_PENDING_RECORDS + 200;
        for i in 0..total {
            let from = SocketAddr::from(([10, 0, (i >> 16) as u8, (i >> 8) as u8], i as u16));
            sink.on_datagram(i as Millis, dst, from, b"x");
        }
        assert!(sink.records.pending() >= MAX_PENDING_RECORDS);
        assert!(sink.counters.datagrams_writer_behind > 0);
        assert!(sink.incoming_to(0, dst, dst, None).is_none());
        assert_eq!(sink.counters.refused_writer_behind, 1);
        let counters = sink.counters.clone();
        blocker.execute_batch("ROLLBACK").unwrap();
        drop(blocker);
        let counters_after = sink.finish();
        assert_eq!(counters_after.udp_flows, counters.udp_flows + 1);
        writer.finish().unwrap();
        let rows: i64 = rusqlite::Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM sink_flows", [], |r| r.get(0))
            .unwrap();
        // Every flow recorded was stored; the rest were counted, not held.
        assert_eq!(rows as u64, counters_after.udp_flows);
        assert_eq!(
            counters_after.udp_flows + counters_after.datagrams_writer_behind,
            total as u64
        );
    }

    #[test]
    fn a_connection_keeps_its_first_bytes_counts_the_rest_and_answers_nothing() {
        let dst: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let mut conv = SinkConv::new(dst, &limits(), 5);
        let mut send = Vec::new();
        conv.on_connected(5, &mut send);
        assert_eq!(conv.deadline(), 105);
        assert_eq!(
            conv.on_bytes(10, b"GET / HTTP/1.1\r\n", &mut send),
            Verdict::Continue
        );
        assert_eq!(conv.prefix, b"GET / HT");
        assert_eq!(conv.deadline(), 110);
        // The byte cap ends it.
        assert_eq!(
            conv.on_bytes(20, b"Host: x\r\n", &mut send),
            Verdict::Finished
        );
        assert_eq!((conv.bytes, conv.reads, conv.ending), (25, 2, "byte_cap"));
        assert!(send.is_empty());
        let mut idle = SinkConv::new(dst, &limits(), 0);
        assert_eq!(idle.on_deadline(100, &mut send), Verdict::Finished);
        assert_eq!(idle.ending, "idle");
        idle.on_closed(101, Some(libc::ECONNABORTED));
        assert_eq!(idle.ending, "evicted");
    }
}

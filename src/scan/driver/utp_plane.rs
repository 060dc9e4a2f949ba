//! uTP probes (BEP 29) on a worker's UDP sockets: the same [`ProbeConv`] (peer session: MSE
//! layer and probe) as over TCP, carried by a sans-IO [`UtpConnection`] instead of a TCP
//! socket, with the results going through the same `probe_done` path as TCP ones.
//!
//! * Shared: the plane serves any worker driver that owns one and owns the conversations
//!   ([`UtpHost`]): the scan's [`ScanDriver`] and `swarmscan probe`'s one-peer driver. The
//!   functions here ([`start`], [`datagram`], [`poll`], [`datagram_error`], [`cancel_all`]) are
//!   its whole drive loop; the transport rule of `net.utp` ([`next_way`]) is shared too: the
//!   scan keeps a [`Way`] per peer, the probe command one for its peer.
//! * Connections are keyed by (remote address, the connection id its packets carry to us).
//!   Datagrams of known connections are fed to them; an unknown SYN is accepted (within the
//!   incoming budget, unless `net.utp = "off"`, and when the host gives it a conversation);
//!   any other unknown packet is answered with RESET as libtorrent does, at most
//!   [`MAX_RESETS_PER_SEC`] a second, and a RESET (20 bytes) is never larger than the packet
//!   it answers.
//! * Timers (retransmissions, the probe's deadlines, the connect deadline, the linger after
//!   the conversation ended) are kept in a heap and served from `poll_datagrams`; the worker
//!   sleeps no longer than the earliest ([`UtpPlane::next_wakeup`]).
//! * Budgets: every outgoing probe start, TCP or uTP, takes a token from the worker's connect
//!   budget here (`peer.connects_per_sec`, and `peer.max_in_flight` over TCP and uTP probes
//!   together: the engine's own limits only see TCP). Incoming uTP connections alive at once
//!   are bounded by the worker's share of `peer.max_incoming`.
//! * Congestion control is the fixed window of `proto::utp` (no LEDBAT): a probe sends a few
//!   hundred bytes and reads a few kilobytes.
//! * Transport memory ([`Way`]): per peer, which transport to try first, and whether the
//!   current chain of immediate retries has switched transport already (one switch per
//!   chain, so a peer that answers neither way costs at most one try of each).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use super::{flag, PeerIdx, ProbeConv, ScanDriver};
use crate::config::UtpMode;
use crate::engine::conversation::{Conversation, Millis, Verdict};
use crate::engine::rate::ConnectBudget;
use crate::engine::worker::{Ending, ProbeDone, ProbeRequest, WorkerConfig, WorkerDriver};
use crate::engine::DatagramQueue;
use crate::proto::probe::ProbeEnd;
use crate::proto::session::Fallback;
use crate::proto::utp::{self, CloseReason, PacketType, State, UtpConnection};
use crate::scan::udp_counters::{bump, UtpCounters};
use std::sync::atomic::{AtomicU64, Ordering};

/// RESETs sent for packets of unknown connections, per worker and second.
pub const MAX_RESETS_PER_SEC: u32 = 200;
/// Packets a connection may have ignored (protocol violations) before we reset it.
pub const MAX_IGNORED_PACKETS: u32 = 64;
/// How long a connection whose conversation ended stays to deliver our FIN (and ack the
/// peer's), ms; it is reset if not closed by then.
pub const LINGER_MS: Millis = 3_000;
/// Probe starts per `next_probe` call (uTP ones do not return to the engine).
const STARTS_PER_CALL: usize = 64;

/// The worker's uTP limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UtpSettings {
    pub mode: UtpMode,
    /// Outgoing probes in flight, TCP and uTP together.
    pub max_in_flight: usize,
    /// Incoming uTP connections alive at once.
    pub max_incoming: usize,
    /// Probe starts per second, TCP and uTP together (0 = unlimited).
    pub connects_per_sec: u64,
    pub connect_burst: u64,
    /// No answer to our SYN within this long: the connect timed out.
    pub connect_timeout_ms: Millis,
}

impl Default for UtpSettings {
    /// uTP on, no limits of its own (the engine's limits bound TCP): for drivers built
    /// without [`ScanDriver::with_utp`].
    fn default() -> Self {
        UtpSettings {
            mode: UtpMode::Fallback,
            max_in_flight: usize::MAX,
            max_incoming: 1024,
            connects_per_sec: 0,
            connect_burst: 64,
            connect_timeout_ms: 5_000,
        }
    }
}

impl UtpSettings {
    /// `net.utp` with one worker's budgets.
    pub fn for_worker(mode: UtpMode, worker: &WorkerConfig) -> UtpSettings {
        UtpSettings {
            mode,
            max_in_flight: worker.max_in_flight,
            max_incoming: worker.max_incoming,
            connects_per_sec: worker.connects_per_sec,
            connect_burst: worker.connect_burst,
            connect_timeout_ms: worker.connect_timeout_ms,
        }
    }
}

/// What to try first with a peer, and whether this chain of immediate retries switched
/// transport already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Way {
    pub utp: bool,
    pub switched: bool,
}

impl Way {
    /// The setting's default: uTP first under `prefer`, TCP first otherwise.
    pub fn first(mode: UtpMode) -> Way {
        Way {
            utp: mode == UtpMode::Prefer,
            switched: false,
        }
    }
}

/// One uTP connection and the conversation it carries (None once handed back: lingering).
struct UtpProbe {
    conn: UtpConnection,
    conv: Option<ProbeConv>,
    token: u64,
    incoming: bool,
    local: SocketAddr,
    remote: SocketAddr,
    started_at: Millis,
    connected_at: Option<Millis>,
    ignored: u32,
    /// The heap entry that is current for this connection (older ones are stale).
    timer_at: Millis,
    linger_until: Millis,
}

/// A worker's uTP connections, timers, budget and UDP sockets.
pub struct UtpPlane {
    settings: UtpSettings,
    conns: HashMap<(SocketAddr, u16), UtpProbe>,
    timers: BinaryHeap<Reverse<(Millis, SocketAddr, u16)>>,
    budget: ConnectBudget,
    outgoing: usize,
    incoming: usize,
    rng: u64,
    clock: Instant,
    /// The worker's UDP sockets as bound.
    locals: Vec<SocketAddr>,
    /// The engine time of the latest call into the plane.
    now: Millis,
    /// SYNs of probes started in `next_probe` (no send queue there): sent at the next poll.
    unsent: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// (second, RESETs sent in it).
    resets: (Millis, u32),
}

/// A worker driver that carries probes over uTP: it owns a [`UtpPlane`] and the counters it
/// adds to, and is the owner of the conversations on it (`on_ask`, `probe_done`, and
/// `incoming` for a SYN of a peer).
pub trait UtpHost: WorkerDriver<Conv = ProbeConv> {
    fn utp(&self) -> &UtpPlane;
    /// The plane and its counters (two fields of the host, borrowed together).
    fn utp_parts(&mut self) -> (&mut UtpPlane, &UtpCounters);
    fn utp_mut(&mut self) -> &mut UtpPlane {
        self.utp_parts().0
    }
}

impl UtpPlane {
    pub fn new(settings: UtpSettings, seed: u64) -> UtpPlane {
        UtpPlane {
            settings,
            conns: HashMap::new(),
            timers: BinaryHeap::new(),
            budget: ConnectBudget::new(
                settings.connects_per_sec,
                settings.connect_burst,
                settings.max_in_flight,
                0,
            ),
            outgoing: 0,
            incoming: 0,
            rng: seed | 1,
            clock: Instant::now(),
            locals: Vec::new(),
            now: 0,
            unsent: Vec::new(),
            resets: (0, 0),
        }
    }

    pub fn settings(&self) -> &UtpSettings {
        &self.settings
    }

    /// The worker's UDP sockets (`WorkerDriver::on_udp_bound`).
    pub fn on_udp_bound(&mut self, locals: &[SocketAddr]) {
        self.locals = locals.to_vec();
    }

    /// The local socket uTP reaches `remote` from: the first of its address family.
    fn local_for(&self, remote: SocketAddr) -> Option<SocketAddr> {
        self.locals
            .iter()
            .copied()
            .find(|l| l.is_ipv4() == remote.is_ipv4())
    }

    /// Whether uTP can reach `remote` (a UDP socket of its family is bound).
    pub fn reaches(&self, remote: SocketAddr) -> bool {
        self.local_for(remote).is_some()
    }

    /// No connection left, lingering ones included, and no SYN waiting to be sent.
    pub fn is_idle(&self) -> bool {
        self.conns.is_empty() && self.unsent.is_empty()
    }

    /// When the plane wants the worker awake next.
    pub fn next_wakeup(&self) -> Option<Millis> {
        let mut at = self.timers.peek().map(|Reverse((at, _, _))| *at);
        if !self.unsent.is_empty() {
            at = Some(self.now);
        }
        if let Some(t) = self.budget.next_token_at() {
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        at
    }

    /// uTP's clock, microseconds (its low 32 bits are the wire timestamps).
    fn now_us(&self) -> u64 {
        self.clock.elapsed().as_micros() as u64
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: ids and initial sequence numbers need only be unpredictable enough
        // not to collide.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Arms the connection's timer at `at` unless an earlier one is armed.
    fn schedule(&mut self, p: &mut UtpProbe, at: Millis) {
        if at < p.timer_at {
            p.timer_at = at;
            self.timers.push(Reverse((at, p.remote, p.conn.recv_id())));
        }
    }

    /// When the connection needs attention next, on the engine clock.
    fn timer(&self, now: Millis, now_us: u64, p: &UtpProbe) -> Millis {
        let mut at = Millis::MAX;
        if let Some(t) = p.conn.next_timeout() {
            at = at.min(now + t.saturating_sub(now_us).div_ceil(1000));
        }
        match &p.conv {
            Some(conv) if p.connected_at.is_some() => at = at.min(conv.deadline()),
            Some(_) => at = at.min(p.started_at + self.settings.connect_timeout_ms),
            None => at = at.min(p.linger_until),
        }
        // Never now: a deadline that stays in the past (a watch polled each tick) must not
        // spin the timer loop.
        at.max(now + 1)
    }

    /// Answers a packet of no connection of ours with RESET, within the budget.
    fn reset_unknown(
        &mut self,
        counters: &UtpCounters,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        let second = now / 1000;
        if self.resets.0 != second {
            self.resets = (second, 0);
        }
        if self.resets.1 >= MAX_RESETS_PER_SEC {
            bump(&counters.resets_suppressed);
            return;
        }
        let seq = self.random() as u16;
        let now_us = self.now_us();
        if let Some(reset) = utp::reset_for_unknown(bytes, seq, now_us) {
            if reset.len() <= bytes.len() && out.push(local, from, &reset).is_ok() {
                self.resets.1 += 1;
                bump(&counters.resets_sent);
            }
        }
    }
}

/// How a finished outgoing probe went, for the transport memory.
#[derive(Debug, Clone, Copy)]
pub struct TransportTry {
    utp: bool,
    /// The connection never came up: refused, or no answer within the connect deadline.
    connect_failed: bool,
    /// The peer completed the BitTorrent handshake: this transport works.
    handshake: bool,
}

impl TransportTry {
    pub fn of(done: &ProbeDone<ProbeConv>) -> TransportTry {
        let report = done.conv.report();
        // ECONNRESET before the connection came up: the peer accepted and reset at once, before
        // reading a byte (a connect's result is the socket's pending error, and the reset can
        // beat the completion); whether it is seen there or as a hang-up right after the
        // connect is a race, and both must lead to the other transport.
        let refused = matches!(report.end, ProbeEnd::SocketError(e)
            if e == libc::ECONNREFUSED || e == libc::ETIMEDOUT || e == libc::ECONNRESET);
        TransportTry {
            utp: report.utp,
            connect_failed: done.connect_ms.is_none() && refused,
            handshake: report.handshake,
        }
    }
}

/// What follows an outgoing probe under `net.utp`: the peer's way from now on, its
/// encryption flags, and whether to try it again at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextTry {
    pub way: Way,
    pub flags: u8,
    pub retry: bool,
}

/// The transport rule of `net.utp`, after an outgoing probe that went over `way` and ended
/// as `tried` and `fallback` say, with the peer's encryption flags (`flag::USE_MSE`,
/// `flag::MSE_FAILED`) as the encryption fallback left them and `encryption_retry` when it
/// wants another try anyway. A transport that works is remembered; one that is refused,
/// times out at connect, or whose peer hangs up on every encryption is left for the other
/// at once, once per chain of retries, when the other can reach the peer (`utp_reachable`:
/// a UDP socket of its family); the encryption flags start over then (what TCP showed says
/// nothing of uTP). When both ways failed, the setting's default is back.
pub fn next_way(
    mode: UtpMode,
    way: Way,
    flags: u8,
    tried: TransportTry,
    fallback: Fallback,
    encryption_retry: bool,
    utp_reachable: bool,
) -> NextTry {
    let stay = |way, retry| NextTry { way, flags, retry };
    if mode == UtpMode::Off {
        return stay(way, encryption_retry);
    }
    if tried.handshake {
        let works = Way {
            utp: tried.utp,
            switched: false,
        };
        return stay(works, encryption_retry);
    }
    if encryption_retry {
        return stay(way, true);
    }
    let gave_up = tried.connect_failed || fallback.hung_up;
    if gave_up && !way.switched && (tried.utp || utp_reachable) {
        let flags = if fallback.hung_up {
            flags & !(flag::USE_MSE | flag::MSE_FAILED)
        } else {
            flags
        };
        let other = Way {
            utp: !tried.utp,
            switched: true,
        };
        return NextTry {
            way: other,
            flags,
            retry: true,
        };
    }
    // Nothing worked either way (or the chain ended).
    if gave_up && way.switched {
        stay(Way::first(mode), false)
    } else {
        let chain_over = Way {
            utp: way.utp,
            switched: false,
        };
        stay(chain_over, false)
    }
}

impl UtpCounters {
    /// The counter a connection handed back this way adds to, if any: how an outgoing
    /// connect that never came up ended, or an established connection the peer reset.
    fn ending(
        &self,
        incoming: bool,
        connected_at: Option<Millis>,
        ending: Ending,
    ) -> Option<&AtomicU64> {
        let errno = match ending {
            Ending::Closed(errno) => errno,
            Ending::Finished => None,
        };
        if connected_at.is_some() {
            return (errno == Some(libc::ECONNRESET)).then_some(&self.reset_by_peer);
        }
        if incoming {
            return None;
        }
        Some(match errno {
            Some(libc::ETIMEDOUT) => &self.connect_timed_out,
            Some(libc::ECONNREFUSED) => &self.connect_refused,
            Some(libc::ECANCELED) => &self.connect_cancelled,
            _ => &self.connect_failed,
        })
    }
}

/// The errno a uTP connection that closed this way reports to its conversation.
fn close_errno(reason: CloseReason, connected: bool) -> Option<i32> {
    match reason {
        CloseReason::Finished => None,
        CloseReason::Reset if connected => Some(libc::ECONNRESET),
        CloseReason::Reset => Some(libc::ECONNREFUSED),
        CloseReason::TimedOut => Some(libc::ETIMEDOUT),
        CloseReason::Aborted => Some(libc::EPROTO),
    }
}

/// Starts an outgoing probe over uTP; gives the request back (for TCP) when uTP cannot reach
/// the address (no UDP socket of its family).
pub fn start<H: UtpHost>(
    host: &mut H,
    now: Millis,
    req: ProbeRequest<ProbeConv>,
) -> Option<ProbeRequest<ProbeConv>> {
    let (plane, counters) = host.utp_parts();
    plane.now = now;
    let remote = req.addr;
    let Some(local) = plane.local_for(remote) else {
        return Some(req);
    };
    let mut id = plane.random() as u16;
    for _ in 0..8 {
        if !plane.conns.contains_key(&(remote, id)) {
            break;
        }
        id = plane.random() as u16;
    }
    if plane.conns.contains_key(&(remote, id)) {
        return Some(req);
    }
    let now_us = plane.now_us();
    let seq = plane.random() as u16;
    let (conn, syn) = UtpConnection::connect(id, seq, now_us);
    plane.unsent.push((local, remote, syn));
    plane.outgoing += 1;
    bump(&counters.connects_started);
    let mut p = UtpProbe {
        conn,
        conv: Some(req.conv.over_utp()),
        token: req.token,
        incoming: false,
        local,
        remote,
        started_at: now,
        connected_at: None,
        ignored: 0,
        timer_at: Millis::MAX,
        linger_until: Millis::MAX,
    };
    let at = plane.timer(now, now_us, &p);
    plane.schedule(&mut p, at);
    plane.conns.insert((remote, id), p);
    None
}

/// A uTP datagram arrived (see [`super::super::udp_demux`]); anything else is ignored.
pub fn datagram<H: UtpHost>(
    host: &mut H,
    now: Millis,
    local: SocketAddr,
    from: SocketAddr,
    bytes: &[u8],
    out: &mut DatagramQueue,
) {
    let Some((kind, id)) = utp::looks_like_utp(bytes) else {
        return;
    };
    let (plane, counters) = host.utp_parts();
    plane.now = now;
    // A SYN names the initiator's receive id; we receive on the next one.
    let ours = if kind == PacketType::Syn {
        id.wrapping_add(1)
    } else {
        id
    };
    if let Some(mut p) = plane.conns.remove(&(from, ours)) {
        let now_us = plane.now_us();
        if p.conn.on_datagram(bytes, now_us).is_err() {
            bump(&counters.ignored_packets);
            p.ignored += 1;
            if p.ignored > MAX_IGNORED_PACKETS {
                if let Some(reset) = p.conn.reset(now_us) {
                    let _ = out.push(p.local, p.remote, &reset);
                }
            }
        }
        drive(host, now, p, out);
        return;
    }
    match kind {
        PacketType::Syn => accept(host, now, local, from, bytes, out),
        _ => plane.reset_unknown(counters, now, local, from, bytes, out),
    }
}

/// An incoming SYN: accepted and evaluated like an incoming TCP connection (the host's
/// `incoming` gives the conversation, or refuses), within the incoming budget (over it, or
/// with `net.utp = "off"`, the SYN is ignored: the peer's retries and its TCP fallback take
/// their course).
fn accept<H: UtpHost>(
    host: &mut H,
    now: Millis,
    local: SocketAddr,
    from: SocketAddr,
    syn: &[u8],
    out: &mut DatagramQueue,
) {
    let (plane, counters) = host.utp_parts();
    if plane.settings.mode == UtpMode::Off {
        return;
    }
    if plane.incoming >= plane.settings.max_incoming {
        bump(&counters.incoming_refused);
        return;
    }
    let now_us = plane.now_us();
    let seq = plane.random() as u16;
    let Ok((conn, state)) = UtpConnection::accept(syn, seq, now_us) else {
        return;
    };
    let Some((token, conv)) = host.incoming(now, from, local) else {
        return;
    };
    let _ = out.push(local, from, &state);
    let mut conv = conv.over_utp();
    let mut send = Vec::new();
    conv.on_connected(now, &mut send);
    let mut p = UtpProbe {
        conn,
        conv: Some(conv),
        token,
        incoming: true,
        local,
        remote: from,
        started_at: now,
        connected_at: Some(now),
        ignored: 0,
        timer_at: Millis::MAX,
        linger_until: Millis::MAX,
    };
    p.conn.write(&send);
    let (plane, counters) = host.utp_parts();
    plane.incoming += 1;
    bump(&counters.accepted);
    drive(host, now, p, out);
}

/// The SYNs of new probes, then every timer due.
pub fn poll<H: UtpHost>(host: &mut H, now: Millis, out: &mut DatagramQueue) {
    let plane = host.utp_mut();
    plane.now = now;
    for (local, remote, syn) in plane.unsent.drain(..) {
        // A full send arena drops it like a lost packet: the SYN is resent on its timer.
        let _ = out.push(local, remote, &syn);
    }
    loop {
        let plane = host.utp_mut();
        let Some(&Reverse((at, remote, id))) = plane.timers.peek() else {
            break;
        };
        if at > now {
            break;
        }
        plane.timers.pop();
        let Some(mut p) = plane.conns.remove(&(remote, id)) else {
            continue;
        };
        if p.timer_at != at {
            plane.conns.insert((remote, id), p);
            continue;
        }
        p.timer_at = Millis::MAX;
        drive(host, now, p, out);
    }
}

/// An ICMP error for a datagram to `to`: port unreachable ends the connects to it that are
/// not up yet (refused); established connections ride it out.
pub fn datagram_error<H: UtpHost>(host: &mut H, now: Millis, to: SocketAddr, errno: i32) {
    let plane = host.utp_mut();
    plane.now = now;
    let keys: Vec<(SocketAddr, u16)> = plane
        .conns
        .iter()
        .filter(|(k, p)| k.0 == to && !p.incoming && p.connected_at.is_none())
        .map(|(k, _)| *k)
        .collect();
    for key in keys {
        if let Some(mut p) = host.utp_mut().conns.remove(&key) {
            // Dropped at once: the peer never answered, so there is nothing to close.
            hand_back(host, now, &mut p, Ending::Closed(Some(errno)));
        }
    }
}

/// The worker stops: every uTP conversation comes back as cancelled, like TCP ones do.
pub fn cancel_all<H: UtpHost>(host: &mut H, now: Millis) {
    let keys: Vec<(SocketAddr, u16)> = host.utp().conns.keys().copied().collect();
    for key in keys {
        if let Some(mut p) = host.utp_mut().conns.remove(&key) {
            hand_back(host, now, &mut p, Ending::Closed(Some(libc::ECANCELED)));
        }
    }
}

/// Moves a connection on after anything happened to it (a datagram, a timer): the
/// conversation reads and answers, asks its owner, ends; then what the connection has to
/// send goes out and its timer is armed, or it is dropped once done.
fn drive<H: UtpHost>(host: &mut H, now: Millis, mut p: UtpProbe, out: &mut DatagramQueue) {
    let now_us = host.utp().now_us();
    let connect_timeout_ms = host.utp().settings.connect_timeout_ms;
    let mut send = Vec::new();
    if let Some(mut conv) = p.conv.take() {
        let mut verdict = Verdict::Continue;
        let mut closed = None;
        if p.connected_at.is_none() && p.conn.is_connected() {
            p.connected_at = Some(now);
            bump(&host.utp_parts().1.connected);
            conv.on_connected(now, &mut send);
        }
        if p.connected_at.is_some() {
            let mut bytes = Vec::new();
            if p.conn.read(&mut bytes) > 0 {
                verdict = conv.on_bytes(now, &bytes, &mut send);
            }
            if verdict == Verdict::Continue && conv.deadline() <= now {
                verdict = conv.on_deadline(now, &mut send);
            }
            if verdict == Verdict::Ask {
                verdict = host.on_ask(now, p.token, p.remote, p.incoming, &mut conv, &mut send);
            }
        } else if now >= p.started_at + connect_timeout_ms {
            closed = Some(Some(libc::ETIMEDOUT));
        }
        if p.conn.write(&send) < send.len() {
            // The send buffer (64 KiB) is far above what a probe sends.
            tracing::debug!(peer = %p.remote, "uTP send buffer full; bytes dropped");
        }
        p.conv = Some(conv);
        if let Some(errno) = closed {
            if let Some(reset) = p.conn.reset(now_us) {
                let _ = out.push(p.local, p.remote, &reset);
            }
            hand_back(host, now, &mut p, Ending::Closed(errno));
        } else if verdict == Verdict::Finished {
            p.conn.close();
            hand_back(host, now, &mut p, Ending::Finished);
        } else if p.conn.is_eof() {
            p.conn.close();
            hand_back(host, now, &mut p, Ending::Closed(None));
        }
    } else {
        // Lingering: whatever still arrives is read and dropped.
        let mut sink = Vec::new();
        p.conn.read(&mut sink);
    }
    while let Some(datagram) = p.conn.poll_transmit(now_us) {
        // A full arena drops it like a lost packet; retransmission covers it.
        let _ = out.push(p.local, p.remote, &datagram);
    }
    if let State::Closed(reason) = p.conn.state() {
        if p.conv.is_some() {
            let errno = close_errno(reason, p.connected_at.is_some());
            hand_back(host, now, &mut p, Ending::Closed(errno));
        }
        return;
    }
    if p.conv.is_none() && (p.conn.fin_acked() && p.conn.is_eof() || now >= p.linger_until) {
        if !(p.conn.fin_acked() && p.conn.is_eof()) {
            if let Some(reset) = p.conn.reset(now_us) {
                let _ = out.push(p.local, p.remote, &reset);
            }
        }
        return;
    }
    let plane = host.utp_mut();
    let at = plane.timer(now, now_us, &p);
    plane.schedule(&mut p, at);
    plane.conns.insert((p.remote, p.conn.recv_id()), p);
}

/// The conversation goes back through the host's `probe_done`, like a TCP one; the
/// connection lingers to close.
fn hand_back<H: UtpHost>(host: &mut H, now: Millis, p: &mut UtpProbe, ending: Ending) {
    let Some(mut conv) = p.conv.take() else {
        return;
    };
    if let Ending::Closed(errno) = ending {
        conv.on_closed(now, errno);
    }
    let (plane, counters) = host.utp_parts();
    if let Some(counter) = counters.ending(p.incoming, p.connected_at, ending) {
        bump(counter);
    }
    if p.incoming {
        plane.incoming -= 1;
    } else {
        plane.outgoing -= 1;
    }
    p.linger_until = now + LINGER_MS;
    let done = ProbeDone {
        token: p.token,
        conv,
        peer: p.remote,
        incoming: p.incoming,
        ending,
        connect_ms: p.connected_at.map(|t| t.saturating_sub(p.started_at)),
        total_ms: now.saturating_sub(p.started_at),
        started_at: p.started_at,
    };
    host.probe_done(now, done);
}

impl UtpHost for ScanDriver {
    fn utp(&self) -> &UtpPlane {
        &self.utp
    }

    fn utp_parts(&mut self) -> (&mut UtpPlane, &UtpCounters) {
        (&mut self.utp, &self.counters.utp)
    }
}

impl ScanDriver {
    /// uTP (`net.utp`) with this worker's budgets.
    pub fn with_utp(mut self, settings: UtpSettings) -> ScanDriver {
        let seed = self.utp_seed();
        let locals = std::mem::take(&mut self.utp.locals);
        self.utp = UtpPlane::new(settings, seed);
        self.utp.on_udp_bound(&locals);
        self
    }

    pub(super) fn utp_seed(&self) -> u64 {
        (self.epoch_unix_ms as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(self.worker as u64 + 1)
    }

    /// Sets the gauges of open connections (the counters are counted as things happen).
    pub(super) fn utp_publish_gauges(&self) {
        let c = &self.counters.utp;
        let live = self.utp.outgoing + self.utp.incoming;
        c.open_outgoing
            .store(self.utp.outgoing as u64, Ordering::Relaxed);
        c.open_incoming
            .store(self.utp.incoming as u64, Ordering::Relaxed);
        c.closing.store(
            self.utp.conns.len().saturating_sub(live) as u64,
            Ordering::Relaxed,
        );
    }

    fn way(&self, idx: PeerIdx) -> Way {
        self.utp_ways
            .get(&idx)
            .copied()
            .unwrap_or(Way::first(self.utp.settings.mode))
    }

    /// Remembers a peer's way; peers whose way is the setting's default have no entry.
    fn set_way(&mut self, idx: PeerIdx, way: Way) {
        if way == Way::first(self.utp.settings.mode) {
            self.utp_ways.remove(&idx);
        } else {
            self.utp_ways.insert(idx, way);
        }
    }

    /// Whether the next probe of this peer goes over uTP.
    fn prefers_utp(&self, idx: PeerIdx) -> bool {
        self.utp.settings.mode != UtpMode::Off && self.way(idx).utp
    }

    /// The engine asks for a probe: due peers are taken one by one; those whose way is uTP
    /// start here, the first TCP one goes back to the engine. Every start takes a token of
    /// the worker's budget, and TCP and uTP probes in flight together stay within it.
    pub(super) fn next_probe_any(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        for _ in 0..STARTS_PER_CALL {
            let in_flight = self.counters.in_flight.load(Ordering::Relaxed) as usize;
            if !self.utp.budget.may_connect(now, in_flight) {
                return None;
            }
            let req = self.pick_probe(now)?;
            self.utp.budget.take();
            let idx = req.token as PeerIdx;
            if !self.prefers_utp(idx) {
                return Some(req);
            }
            if let Some(req) = start(self, now, req) {
                return Some(req);
            }
        }
        None
    }

    /// After an outgoing probe: updates the peer's transport memory and encryption flags by
    /// [`next_way`] and says whether to try it again at once (`encryption_retry`: the
    /// encryption fallback wants one anyway).
    pub(super) fn transport_after_probe(
        &mut self,
        idx: PeerIdx,
        tried: TransportTry,
        fallback: Fallback,
        encryption_retry: bool,
    ) -> bool {
        let peer = self.table.get(idx);
        let next = next_way(
            self.utp.settings.mode,
            self.way(idx),
            peer.flags,
            tried,
            fallback,
            encryption_retry,
            self.utp.reaches(peer.addr()),
        );
        self.set_way(idx, next.way);
        self.table.get_mut(idx).flags = next.flags;
        next.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::peer_table::Inserted;
    use std::sync::Arc;

    /// A driver with one peer (index returned) and an IPv4 UDP socket, under `mode`; the
    /// writer and its directory first, so that the driver is dropped before them.
    fn driver(
        mode: UtpMode,
    ) -> (
        crate::store::writer::Writer,
        tempfile::TempDir,
        PeerIdx,
        ScanDriver,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("t.sqlite")).unwrap();
        let writer = crate::store::writer::Writer::start(
            store,
            crate::store::anon::Anonymizer::new(crate::config::IpMode::Full, [1; 32]),
            crate::store::writer::WriterOptions::from(&crate::config::Config::default()),
        )
        .unwrap();
        let catalog = crate::scan::catalog::Catalog::new(Vec::new());
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut d = ScanDriver::new(
            0,
            catalog,
            Arc::new(Default::default()),
            crate::scan::revisit::RevisitPolicy::from(&crate::config::Config::default()),
            16,
            rx,
            vec![tx],
            writer.sender(),
            0,
            Arc::new(std::sync::atomic::AtomicBool::new(false)),
            Arc::new(crate::scan::blocklist::Blocklist::default()),
        )
        .with_utp(UtpSettings {
            mode,
            ..UtpSettings::default()
        });
        d.on_udp_bound(&["127.0.0.1:6881".parse().unwrap()]);
        let Inserted::New(idx) = d.table.insert(0, "127.0.0.9:7000".parse().unwrap(), 1, 0) else {
            panic!("a new peer")
        };
        (writer, dir, idx, d)
    }

    const REFUSED: TransportTry = TransportTry {
        utp: false,
        connect_failed: true,
        handshake: false,
    };

    fn refused(utp: bool) -> TransportTry {
        TransportTry { utp, ..REFUSED }
    }

    fn answered(utp: bool) -> TransportTry {
        TransportTry {
            utp,
            connect_failed: false,
            handshake: true,
        }
    }

    const NO_FALLBACK: Fallback = Fallback {
        hung_up: false,
        mse_failed: false,
        silent: false,
    };

    #[test]
    fn fallback_turns_to_utp_at_once_when_tcp_is_refused_and_remembers_it() {
        let (_w, _dir, idx, mut d) = driver(UtpMode::Fallback);
        assert!(!d.prefers_utp(idx), "TCP first");
        assert!(d.transport_after_probe(idx, refused(false), NO_FALLBACK, false));
        assert!(d.prefers_utp(idx), "uTP at once");
        assert!(!d.transport_after_probe(idx, answered(true), NO_FALLBACK, false));
        assert!(d.prefers_utp(idx), "uTP worked: first choice from now on");
        // The peer's uTP goes away: TCP is tried at once (a new chain may switch once).
        assert!(d.transport_after_probe(idx, refused(true), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx));
        // TCP refused too in the same chain: no more immediate tries; the default is back.
        assert!(!d.transport_after_probe(idx, refused(false), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx));
        assert!(
            d.utp_ways.is_empty(),
            "nothing remembered for a default peer"
        );
    }

    #[test]
    fn a_peer_that_hangs_up_on_every_encryption_over_tcp_gets_utp_with_fresh_flags() {
        let (_w, _dir, idx, mut d) = driver(UtpMode::Fallback);
        d.table.get_mut(idx).flags |= flag::USE_MSE | flag::MSE_FAILED;
        let hung_up = Fallback {
            hung_up: true,
            mse_failed: false,
            silent: true,
        };
        let tried = TransportTry {
            utp: false,
            connect_failed: false,
            handshake: false,
        };
        // While the encryption fallback still has a try, it goes first (same transport).
        assert!(d.transport_after_probe(idx, tried, hung_up, true));
        assert!(!d.prefers_utp(idx));
        assert!(d.transport_after_probe(idx, tried, hung_up, false));
        assert!(d.prefers_utp(idx));
        assert_eq!(
            d.table.get(idx).flags & (flag::USE_MSE | flag::MSE_FAILED),
            0,
            "uTP starts over with plaintext"
        );
    }

    #[test]
    fn prefer_turns_to_tcp_when_utp_gets_no_answer_and_off_never_uses_utp() {
        let (_w, _dir, idx, mut d) = driver(UtpMode::Prefer);
        assert!(d.prefers_utp(idx), "uTP first");
        assert!(d.transport_after_probe(idx, refused(true), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx));
        assert!(!d.transport_after_probe(idx, answered(false), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx), "TCP worked: remembered");

        let (_w, _dir, idx, mut d) = driver(UtpMode::Off);
        assert!(!d.prefers_utp(idx));
        assert!(!d.transport_after_probe(idx, refused(false), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx));
        assert!(d.transport_after_probe(idx, refused(false), NO_FALLBACK, true));
    }

    #[test]
    fn without_a_udp_socket_of_the_peers_family_tcp_failures_stay_on_tcp() {
        let (_w, _dir, idx, mut d) = driver(UtpMode::Fallback);
        d.on_udp_bound(&["[::1]:6881".parse().unwrap()]);
        assert!(!d.transport_after_probe(idx, refused(false), NO_FALLBACK, false));
        assert!(!d.prefers_utp(idx));
    }

    fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }

    #[test]
    fn incoming_syns_are_counted_as_accepted_or_refused_and_strays_get_a_counted_reset() {
        let local: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let peer: SocketAddr = "127.0.0.9:7001".parse().unwrap();
        let mut out = DatagramQueue::unbound(16, 2048, vec![local]);
        let (_w, _dir, _, mut d) = driver(UtpMode::Fallback);
        let (_peer_conn, syn) = UtpConnection::connect(100, 1, 0);
        datagram(&mut d, 10, local, peer, &syn, &mut out);
        let c = &d.counters.utp;
        assert_eq!((load(&c.accepted), load(&c.incoming_refused)), (1, 0));
        let sent = out.take_queued();
        assert!(
            sent.iter()
                .any(|(from, to, _)| *from == local && *to == peer),
            "the SYN is answered: {sent:?}"
        );
        d.utp_publish_gauges();
        assert_eq!(load(&c.open_incoming), 1);
        assert_eq!(load(&c.open_outgoing), 0);
        // Our STATE, sent back from another address, names no connection there: RESET.
        let (_, _, state) = &sent[0];
        let stranger: SocketAddr = "127.0.0.10:7002".parse().unwrap();
        datagram(&mut d, 20, local, stranger, state, &mut out);
        assert_eq!(load(&d.counters.utp.resets_sent), 1);
        assert!(out.take_queued().iter().any(|(_, to, _)| *to == stranger));

        // No room for incoming connections: the SYN is ignored, and counted.
        let (_w, _dir, _, mut d) = driver(UtpMode::Fallback);
        d.utp.settings.max_incoming = 0;
        datagram(&mut d, 10, local, peer, &syn, &mut out);
        let c = &d.counters.utp;
        assert_eq!((load(&c.accepted), load(&c.incoming_refused)), (0, 1));
        assert!(out.take_queued().is_empty());
    }

    #[test]
    fn each_way_a_utp_connection_ends_has_its_counter() {
        let c = UtpCounters::default();
        let closed = |errno| Ending::Closed(Some(errno));
        let counter = |incoming, connected: Option<Millis>, ending| {
            c.ending(incoming, connected, ending)
                .map(|a| a as *const AtomicU64)
        };
        let is = |a: &AtomicU64| Some(a as *const AtomicU64);
        assert_eq!(
            counter(false, None, closed(libc::ETIMEDOUT)),
            is(&c.connect_timed_out)
        );
        assert_eq!(
            counter(false, None, closed(libc::ECONNREFUSED)),
            is(&c.connect_refused)
        );
        assert_eq!(
            counter(false, None, closed(libc::ECANCELED)),
            is(&c.connect_cancelled)
        );
        assert_eq!(
            counter(false, None, closed(libc::EHOSTUNREACH)),
            is(&c.connect_failed)
        );
        assert_eq!(
            counter(false, None, closed(libc::EPROTO)),
            is(&c.connect_failed)
        );
        // Once connected, only a reset by the peer is counted (`connected` counted it up).
        assert_eq!(
            counter(false, Some(5), closed(libc::ECONNRESET)),
            is(&c.reset_by_peer)
        );
        assert_eq!(
            counter(true, Some(5), closed(libc::ECONNRESET)),
            is(&c.reset_by_peer)
        );
        assert_eq!(counter(false, Some(5), Ending::Finished), None);
        assert_eq!(counter(true, Some(5), Ending::Closed(None)), None);
        assert_eq!(counter(false, Some(5), closed(libc::ETIMEDOUT)), None);
    }

    #[test]
    fn close_reasons_map_to_the_utp_error_classes() {
        use crate::store::record::ErrorClass;
        let class =
            |reason, connected| close_errno(reason, connected).map(ErrorClass::from_utp_errno);
        assert_eq!(
            class(CloseReason::TimedOut, false),
            Some(ErrorClass::UtpTimedOut)
        );
        assert_eq!(
            class(CloseReason::Reset, false),
            Some(ErrorClass::UtpRefused)
        );
        assert_eq!(class(CloseReason::Reset, true), Some(ErrorClass::UtpReset));
        assert_eq!(
            class(CloseReason::Aborted, true),
            Some(ErrorClass::UtpProtocol)
        );
        assert_eq!(class(CloseReason::Finished, true), None);
    }
}

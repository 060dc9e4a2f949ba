//! `swarmscan probe ADDR TORRENT`: one look at one peer, printed like a capture.
//!
//! It runs the code a scan runs, not a copy of it: the scan's conversation
//! ([`ProbeConv`], the engine adapter of `proto::session::PeerSession`, MSE included, with the
//! worker's key and pads) on one real engine worker, over TCP or over uTP on the scan's uTP
//! plane ([`utp_plane`]: the worker's UDP socket, its connections and timers), with the probe
//! settings a scan derives from the same configuration, and the scan's policies: which
//! encryption first ([`use_mse`]) and when to try again at once the other way
//! ([`retry_other_way`]); which transport first and when to switch (`net.utp`:
//! [`utp_plane::next_way`]), unless `--transport` names one. The session's tap
//! ([`PeerSession::with_tap`](crate::proto::session::PeerSession::with_tap)) gives the
//! plaintext BitTorrent messages both ways, also when the wire is encrypted.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::{ConfigArgs, Encryption, UtpMode};
use crate::engine::worker::{ProbeDone, ProbeRequest, WorkerDriver};
use crate::engine::{DatagramQueue, EngineConfig, Millis, Verdict};
use crate::inputs::load_inputs;
use crate::proto::hex;
use crate::proto::magnet::TorrentRef;
use crate::proto::peer_wire::{self, Message};
use crate::proto::probe::{ProbeEnd, ProbeReport, ProbeSettings};
use crate::proto::session::{Fallback, PlainTap};
use crate::scan::catalog::{Catalog, CatalogTorrent};
use crate::scan::driver::utp_plane::{self, TransportTry, UtpHost, UtpPlane, UtpSettings, Way};
use crate::scan::driver::{error_class, retry_other_way, stored_as_success, use_mse, ProbeConv};
use crate::scan::udp_counters::UtpCounters;
use crate::settings::ScanSettings;
use crate::store::record::{ProbeEvent, Transport};

#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Peer address, e.g. 127.0.0.1:6881 or [::1]:6881.
    pub addr: SocketAddr,
    /// Info-hash (40 hex), magnet link, or .torrent file (gives the piece count).
    pub torrent: String,
    /// Piece count, when the torrent is given by hash only.
    #[arg(long, value_parser = crate::limits::count::<u32>(1, crate::limits::MAX_PIECES))]
    pub pieces: Option<u32>,
    /// MSE/PE encryption: off, fallback (plaintext first, MSE when the peer hangs up on it),
    /// prefer (MSE first, plaintext when it fails) or require (MSE only). Default:
    /// net.encryption (fallback).
    #[arg(long, value_name = "WHEN", value_parser = parse_encryption)]
    pub encryption: Option<Encryption>,
    /// Talk over this transport only: tcp, or utp (uTP, BEP 29, on a UDP socket of a port of
    /// the kernel's choosing). Default: both, as net.utp orders them (fallback: TCP first,
    /// uTP when TCP is refused, times out or hangs up on every encryption; prefer: uTP
    /// first, TCP when uTP gets no answer; off: TCP only).
    #[arg(long, value_name = "ONLY", value_parser = parse_transport)]
    pub transport: Option<OnlyTransport>,
    /// Quiet timeout in milliseconds (default: peer.quiet_timeout_ms, 6000).
    #[arg(long, value_parser = crate::limits::count::<u64>(1, crate::limits::MAX_MS))]
    pub quiet_timeout_ms: Option<u64>,
    /// Connect timeout in milliseconds, TCP and uTP (default: peer.connect_timeout_ms, 5000).
    #[arg(long, value_parser = crate::limits::count::<u64>(1, crate::limits::MAX_MS))]
    pub connect_timeout_ms: Option<u64>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The values of `net.encryption`, by the names its TOML uses.
fn parse_encryption(s: &str) -> Result<Encryption, String> {
    match s {
        "off" => Ok(Encryption::Off),
        "fallback" => Ok(Encryption::Fallback),
        "prefer" => Ok(Encryption::Prefer),
        "require" => Ok(Encryption::Require),
        _ => Err(format!(
            "{s:?} is not one of off, fallback, prefer, require"
        )),
    }
}

/// The one transport `--transport` allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnlyTransport {
    Tcp,
    Utp,
}

fn parse_transport(s: &str) -> Result<OnlyTransport, String> {
    match s {
        "tcp" => Ok(OnlyTransport::Tcp),
        "utp" => Ok(OnlyTransport::Utp),
        _ => Err(format!("{s:?} is not one of tcp, utp")),
    }
}

/// Connections one probe may take. The scan's policies retry at once at most twice in a
/// row per transport (plaintext → MSE → plaintext under `fallback`) and switch transport
/// once per chain; the cap only keeps the loop bounded.
const MAX_ATTEMPTS: usize = 6;

/// One connection of the probe, as it ended.
struct Attempt {
    utp: bool,
    mse: bool,
    started_at: Millis,
    connect_ms: Option<Millis>,
    total_ms: Millis,
    fallback: Fallback,
    tap: PlainTap,
    report: ProbeReport,
}

impl Attempt {
    /// "tcp", "utp+mse", ...: the way this connection was tried, named as the store names
    /// transports (`+mse` here means MSE/PE was attempted; `report.mse` says whether it
    /// got through).
    fn transport(&self) -> String {
        let base = if self.utp {
            Transport::UTP
        } else {
            Transport::TCP
        };
        let t = if self.mse {
            base | Transport::MSE
        } else {
            base
        };
        t.names()
    }

    /// How it ended, with the scan's error class when it learned no progress.
    fn outcome(&self) -> String {
        let end = end_text(&self.report.end);
        if stored_as_success(&self.report) {
            end
        } else {
            format!("{end} [{}]", error_class(&self.report).name())
        }
    }
}

/// A worker's driver that probes one peer: one connection, and others at once where the
/// scan's policies would retry (the other encryption, the other transport).
struct OnePeer {
    addr: SocketAddr,
    settings: Arc<ProbeSettings>,
    catalog: Arc<Catalog>,
    encryption: Encryption,
    /// `net.utp`: the transports' order.
    utp_mode: UtpMode,
    /// `--transport`: the only transport tried.
    only: Option<OnlyTransport>,
    /// The transport to try next and whether this probe switched already, as the scan keeps
    /// it per peer.
    way: Way,
    utp: UtpPlane,
    /// The plane's counters (a scan exports them; `probe` tells each connection's end).
    utp_counters: UtpCounters,
    /// The peer's encryption flags, as the scan keeps them (`peer_table::flag`).
    flags: u8,
    /// Makes the peer-id of each connection differ, as a scan's probes do.
    nonce: u64,
    /// A connection is to be started.
    pending: bool,
    /// The last connection ended and no other is due.
    finished: bool,
    attempts: Vec<Attempt>,
}

impl OnePeer {
    fn next_over_utp(&self) -> bool {
        match self.only {
            Some(only) => only == OnlyTransport::Utp,
            None => self.utp_mode != UtpMode::Off && self.way.utp,
        }
    }
}

impl UtpHost for OnePeer {
    fn utp(&self) -> &UtpPlane {
        &self.utp
    }

    fn utp_parts(&mut self) -> (&mut UtpPlane, &UtpCounters) {
        (&mut self.utp, &self.utp_counters)
    }
}

impl WorkerDriver for OnePeer {
    type Conv = ProbeConv;

    fn next_probe(&mut self, now: Millis) -> Option<ProbeRequest<ProbeConv>> {
        if !self.pending {
            return None;
        }
        self.pending = false;
        let nonce = self.nonce.wrapping_add(self.attempts.len() as u64);
        let conv = ProbeConv::outgoing(
            self.settings.clone(),
            self.catalog.clone(),
            0,
            ProbeEvent::FirstContact,
            now,
        )
        .with_peer_id_nonce(nonce)
        .with_tap();
        let conv = if use_mse(self.encryption, self.flags) {
            conv.with_mse()
        } else {
            conv
        };
        let req = ProbeRequest {
            addr: self.addr,
            token: self.attempts.len() as u64,
            conv,
        };
        if self.next_over_utp() {
            // Given back only without a UDP socket of the peer's family (then TCP, as in a
            // scan); `probe` binds one whenever uTP may be used.
            return utp_plane::start(self, now, req);
        }
        Some(req)
    }

    fn on_ask(
        &mut self,
        now: Millis,
        _token: u64,
        _peer: SocketAddr,
        _incoming: bool,
        conv: &mut ProbeConv,
        send: &mut Vec<u8>,
    ) -> Verdict {
        // One look is all `probe` takes: the answer ends it, as in a scan that watches no one.
        let _ = conv.take_ask();
        conv.stop(now, send);
        Verdict::Finished
    }

    fn probe_done(&mut self, _now: Millis, done: ProbeDone<ProbeConv>) {
        let tried = TransportTry::of(&done);
        let mse = done.conv.mse_attempted();
        let fallback = done.conv.session().fallback();
        let tap = done.conv.session().tap().cloned().unwrap_or_default();
        let report = done.conv.into_report();
        self.attempts.push(Attempt {
            utp: report.utp,
            mse,
            started_at: done.started_at,
            connect_ms: done.connect_ms,
            total_ms: done.total_ms,
            fallback,
            tap,
            report,
        });
        let encryption_retry = retry_other_way(self.encryption, self.flags, fallback, mse);
        if let Some(flags) = encryption_retry {
            self.flags = flags;
        }
        let retry = match self.only {
            Some(_) => encryption_retry.is_some(),
            None => {
                let next = utp_plane::next_way(
                    self.utp_mode,
                    self.way,
                    self.flags,
                    tried,
                    fallback,
                    encryption_retry.is_some(),
                    self.utp.reaches(self.addr),
                );
                self.way = next.way;
                self.flags = next.flags;
                next.retry
            }
        };
        if retry && self.attempts.len() < MAX_ATTEMPTS {
            self.pending = true;
        } else {
            self.finished = true;
        }
    }

    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, ProbeConv)> {
        None
    }

    fn on_udp_bound(&mut self, udp: &[SocketAddr]) {
        self.utp.on_udp_bound(udp);
    }

    fn datagram(
        &mut self,
        now: Millis,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        utp_plane::datagram(self, now, local, from, bytes, out);
    }

    fn poll_datagrams(&mut self, now: Millis, out: &mut DatagramQueue) {
        utp_plane::poll(self, now, out);
    }

    fn datagram_error(
        &mut self,
        now: Millis,
        _local: SocketAddr,
        to: SocketAddr,
        errno: i32,
        _out: &mut DatagramQueue,
    ) {
        utp_plane::datagram_error(self, now, to, errno);
    }

    fn next_wakeup(&self) -> Option<Millis> {
        self.utp.next_wakeup()
    }

    fn should_stop(&self) -> bool {
        // A uTP connection that ended lingers until our FIN is delivered (at most
        // `utp_plane::LINGER_MS`), as in a scan.
        self.finished && self.utp.is_idle()
    }
}

pub fn probe(args: &ProbeArgs) -> i32 {
    let (info_hash, pieces) = match resolve_torrent(&args.torrent) {
        Ok((h, p)) => (h, args.pieces.or(p).unwrap_or(0)),
        Err(e) => {
            eprintln!("swarmscan: probe: {e}");
            return 2;
        }
    };
    let config = match args.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("swarmscan: probe: {e}");
            return 2;
        }
    };
    let scan = ScanSettings::from(&config);
    let mut settings = scan.probe;
    if let Some(ms) = args.quiet_timeout_ms {
        settings.quiet_timeout_ms = ms;
    }
    let may_use_utp = match args.transport {
        Some(only) => only == OnlyTransport::Utp,
        None => scan.utp != UtpMode::Off,
    };
    // uTP runs on a UDP socket of the peer's family, on a port of the kernel's choosing.
    let udp = if may_use_utp {
        let any = if args.addr.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        vec![SocketAddr::new(any, 0)]
    } else {
        Vec::new()
    };
    let connect_timeout_ms = args
        .connect_timeout_ms
        .unwrap_or(scan.engine.connect_timeout_ms);
    let engine = EngineConfig {
        workers: 1,
        max_in_flight: 1,
        max_held: 0,
        max_incoming: 0,
        connects_per_sec: 0,
        connect_timeout_ms,
        listen: Vec::new(),
        pin_cores: false,
        // One connection: a few buffers of the scan's size do (all are powers of two).
        recv_buffers: scan.engine.recv_buffers.min(64),
        recv_buffer_size: scan.engine.recv_buffer_size,
        ring_entries: scan.engine.ring_entries.min(256),
        udp,
        udp_recv_buffers: scan.engine.udp_recv_buffers.min(64),
        udp_send_slots: scan.engine.udp_send_slots.min(64),
        ..scan.engine.clone()
    };
    let catalog = Catalog::with_metadata_limits(
        vec![CatalogTorrent {
            db_id: 0,
            wire_hash: info_hash,
            alt_hash: None,
            name: String::new(),
            piece_count: pieces.into(),
            total_size: 0,
            trackers: Vec::new(),
        }],
        scan.metadata,
    );
    let encryption = args.encryption.unwrap_or(scan.encryption);
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let utp_settings = UtpSettings {
        mode: scan.utp,
        max_in_flight: 1,
        // No SYN of anyone is accepted: `probe` only dials.
        max_incoming: 0,
        connects_per_sec: 0,
        connect_burst: 1,
        connect_timeout_ms,
    };
    let driver = OnePeer {
        addr: args.addr,
        settings: Arc::new(settings),
        catalog,
        encryption,
        utp_mode: scan.utp,
        only: args.transport,
        way: Way::first(scan.utp),
        utp: UtpPlane::new(utp_settings, unix_ms),
        utp_counters: UtpCounters::default(),
        flags: 0,
        nonce: unix_ms.wrapping_mul(1_000_003),
        pending: true,
        finished: false,
        attempts: Vec::new(),
    };
    let stop = AtomicBool::new(false);
    let attempts = match crate::engine::run_workers(&engine, vec![driver], &stop) {
        Ok(mut workers) => match workers.pop() {
            Some((driver, _)) => driver.attempts,
            None => Vec::new(),
        },
        Err(e) => {
            eprintln!("swarmscan: probe: the engine failed: {e}");
            return 1;
        }
    };
    let Some(last) = attempts.last() else {
        eprintln!("swarmscan: probe: the engine ended before the probe started");
        return 1;
    };
    let ways = Ways {
        encryption,
        utp: scan.utp,
        only: args.transport,
    };
    let mut out = std::io::stdout().lock();
    // Not println!: a failed write (stdout closed) must not panic.
    let _ = if args.json {
        write_json(&mut out, &attempts)
    } else {
        write_transcript(&mut out, args.addr, ways, &attempts)
    };
    if last.report.handshake {
        0
    } else {
        1
    }
}

/// The last connection's report, with its transport, its error class (when it learned no
/// progress), the number of connections and each connection's transport and end.
fn write_json(out: &mut impl Write, attempts: &[Attempt]) -> std::io::Result<()> {
    let Some(last) = attempts.last() else {
        return Ok(());
    };
    let class =
        |a: &Attempt| (!stored_as_success(&a.report)).then(|| error_class(&a.report).name());
    let mut json = serde_json::to_value(&last.report).unwrap_or_default();
    if let Some(map) = json.as_object_mut() {
        map.insert("transport".into(), last.transport().into());
        map.insert("error_class".into(), class(last).into());
        map.insert("attempts".into(), attempts.len().into());
        let tried: Vec<serde_json::Value> = attempts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "transport": a.transport(),
                    "connect_ms": a.connect_ms,
                    "end": a.report.end,
                    "error_class": class(a),
                })
            })
            .collect();
        map.insert("tried".into(), tried.into());
    }
    writeln!(out, "{json}")
}

/// The settings that chose the probe's connections, for the transcript's explanations.
#[derive(Clone, Copy)]
struct Ways {
    encryption: Encryption,
    utp: UtpMode,
    only: Option<OnlyTransport>,
}

fn transport_title(utp: bool) -> &'static str {
    if utp {
        "uTP"
    } else {
        "TCP"
    }
}

/// Why the probe went on after `a` (whose successor is `next`), or, for the last one, why
/// it did not; None when there is nothing to explain.
fn after_attempt(a: &Attempt, next: Option<&Attempt>, ways: Ways) -> Option<String> {
    let gave_up = a.connect_ms.is_none() || a.fallback.hung_up;
    let over = transport_title(a.utp);
    match next {
        Some(n) if n.utp != a.utp => {
            let why = if a.connect_ms.is_none() {
                format!("no connection over {over}")
            } else {
                format!("the peer hung up on every encryption over {over}")
            };
            Some(format!(
                "{why}, trying {} (net.utp = {:?})",
                transport_title(n.utp),
                utp_mode_name(ways.utp)
            ))
        }
        Some(_) if !a.mse && a.fallback.hung_up => {
            Some("the peer hung up on plaintext, trying MSE/PE".into())
        }
        Some(_) if a.mse => Some("MSE/PE failed, trying plaintext".into()),
        Some(_) => Some("trying the other way".into()),
        None if a.report.handshake => None,
        None if a.mse && a.fallback.mse_failed && ways.encryption == Encryption::Require => {
            Some("MSE/PE failed and encryption is \"require\": no plaintext retry".into())
        }
        None if !a.mse && a.fallback.hung_up && ways.encryption == Encryption::Off => Some(
            "the peer hung up on plaintext (it may require encryption) and encryption is \"off\""
                .into(),
        ),
        None if gave_up && ways.only.is_some() => Some(format!(
            "--transport {}: the other transport is not tried",
            if a.utp { "utp" } else { "tcp" }
        )),
        None if gave_up && ways.utp == UtpMode::Off => {
            Some("net.utp = \"off\": uTP is not tried".into())
        }
        None => None,
    }
}

fn utp_mode_name(mode: UtpMode) -> &'static str {
    match mode {
        UtpMode::Off => "off",
        UtpMode::Fallback => "fallback",
        UtpMode::Prefer => "prefer",
    }
}

fn write_transcript(
    out: &mut impl Write,
    addr: SocketAddr,
    ways: Ways,
    attempts: &[Attempt],
) -> std::io::Result<()> {
    for (i, a) in attempts.iter().enumerate() {
        let way = if a.mse {
            "MSE/PE (RC4 or plaintext offered)"
        } else {
            "plaintext"
        };
        writeln!(
            out,
            "{:>6} ms connecting to {addr} over {} ({way}, attempt {} of the probe)",
            a.started_at,
            transport_title(a.utp),
            i + 1
        )?;
        if let Some(connect_ms) = a.connect_ms {
            let up = a.started_at + connect_ms;
            let encrypted = match (a.mse, a.report.mse, &a.report.end) {
                (false, _, _) => "plaintext BitTorrent".to_string(),
                (true, Some("rc4"), _) => "MSE/PE handshake done: RC4-encrypted stream".to_string(),
                (true, Some(other), _) => format!("MSE/PE handshake done: {other} stream"),
                (true, None, ProbeEnd::MseFailed(e)) => format!("MSE/PE handshake failed: {e}"),
                (true, None, _) => "MSE/PE handshake did not complete".to_string(),
            };
            writeln!(out, "{up:>6} ms connected; {encrypted}")?;
            let mut transcript = Transcript::default();
            for chunk in &a.tap.chunks {
                transcript.log(out, chunk.at, chunk.outgoing, &chunk.bytes)?;
            }
        }
        let ended = a.started_at + a.total_ms;
        match after_attempt(a, attempts.get(i + 1), ways) {
            Some(why) => writeln!(out, "{ended:>6} ms {}: {why}", a.outcome())?,
            // A connection that never came up: its end is all there is to tell.
            None if a.connect_ms.is_none() => writeln!(out, "{ended:>6} ms {}", a.outcome())?,
            None => {}
        }
    }
    let Some(a) = attempts.last() else {
        return Ok(());
    };
    let r = &a.report;
    let progress = match (r.progress(), r.progress_source) {
        (Some(p), Some(source)) => format!(
            "{:.1}% ({} of {} pieces, from {source:?})",
            p * 100.0,
            r.pieces_have,
            r.piece_count,
        ),
        (None, Some(_)) => format!(
            "{} pieces (piece count unknown: pass --pieces or a .torrent)",
            r.pieces_have
        ),
        _ => "unknown".to_string(),
    };
    let transport = match r.mse {
        Some(crypto) => format!("{} ({crypto})", a.transport()),
        None => a.transport(),
    };
    writeln!(
        out,
        "{:>6} ms end: {}; progress {progress}; client {}; transport {transport}; attempts {}",
        a.started_at + a.total_ms,
        a.outcome(),
        r.client.as_deref().unwrap_or("-"),
        attempts.len()
    )
}

/// How a connection ended, with the errno's meaning.
fn end_text(end: &ProbeEnd) -> String {
    match end {
        ProbeEnd::SocketError(errno) => format!(
            "SocketError({errno}: {})",
            std::io::Error::from_raw_os_error(*errno)
        ),
        other => format!("{other:?}"),
    }
}

/// One message as shown by `swarmscan probe`.
fn describe(m: &Message<'_>) -> String {
    match m {
        Message::Bitfield(b) => format!(
            "bitfield ({} bytes, {} bits set)",
            b.len(),
            b.iter().map(|x| x.count_ones()).sum::<u32>()
        ),
        Message::Have(i) => format!("have {i}"),
        Message::Port(p) => format!("port {p}"),
        Message::Extended { ext_id: 0, payload } => {
            match peer_wire::ext::ExtHandshake::decode(payload) {
                Ok(h) => format!(
                    "extension handshake v={:?} p={:?} m={:?} metadata_size={:?}",
                    h.client().unwrap_or(""),
                    h.p,
                    h.m.iter()
                        .map(|(k, v)| format!("{}={v}", String::from_utf8_lossy(k)))
                        .collect::<Vec<_>>(),
                    h.metadata_size
                ),
                Err(e) => format!("extension handshake (invalid: {e})"),
            }
        }
        Message::Extended { ext_id, payload } => {
            format!("extended id {ext_id} ({} bytes)", payload.len())
        }
        other => other.name().to_string(),
    }
}

/// Decodes both directions of one connection's plaintext into messages.
#[derive(Default)]
struct Transcript {
    sent: peer_wire::MessageReader,
    recv: peer_wire::MessageReader,
    sent_handshake: bool,
    recv_handshake: bool,
    /// A direction stopped parsing after garbage (nothing after it is shown).
    sent_broken: bool,
    recv_broken: bool,
}

impl Transcript {
    fn log(
        &mut self,
        out: &mut impl Write,
        ms: Millis,
        outgoing: bool,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let arrow = if outgoing { "->" } else { "<-" };
        let (reader, hs_done, broken) = if outgoing {
            (
                &mut self.sent,
                &mut self.sent_handshake,
                &mut self.sent_broken,
            )
        } else {
            (
                &mut self.recv,
                &mut self.recv_handshake,
                &mut self.recv_broken,
            )
        };
        if *broken {
            return Ok(());
        }
        reader.feed(bytes);
        if !*hs_done {
            match reader.read_handshake() {
                Ok(Some(h)) => {
                    *hs_done = true;
                    let id = crate::proto::client_id::from_peer_id(&h.peer_id);
                    writeln!(
                        out,
                        "{ms:>6} ms {arrow} handshake info_hash={} peer_id={} ({id}) reserved={}{}{}",
                        hex::encode(&h.info_hash),
                        crate::proto::bencode::DebugBytes(&h.peer_id),
                        if h.reserved.extended() { "ext " } else { "" },
                        if h.reserved.fast() { "fast " } else { "" },
                        if h.reserved.dht() { "dht" } else { "" },
                    )?;
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    *broken = true;
                    return writeln!(out, "{ms:>6} ms {arrow} not a BitTorrent handshake: {e}");
                }
            }
        }
        loop {
            match reader.read_message() {
                Ok(Some(m)) => writeln!(out, "{ms:>6} ms {arrow} {}", describe(&m))?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    *broken = true;
                    return writeln!(out, "{ms:>6} ms {arrow} invalid message: {e}");
                }
            }
        }
    }
}

/// Info-hash and (when known) piece count of a probe target.
fn resolve_torrent(s: &str) -> Result<([u8; 20], Option<u32>), String> {
    if TorrentRef::looks_like_input(s) {
        let r = TorrentRef::parse_input(s).map_err(|e| format!("{s}: {e}"))?;
        let h = r
            .info_hashes()
            .primary_wire_id()
            .ok_or_else(|| format!("{s}: no info-hash"))?;
        return Ok((h, None));
    }
    let inputs = load_inputs(&[s.to_string()])?;
    let t = inputs.first().ok_or_else(|| format!("{s}: no torrent"))?;
    Ok((t.wire_hash, Some(t.piece_count)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_values_are_those_of_the_config_key() {
        for (name, want) in [
            ("off", Encryption::Off),
            ("fallback", Encryption::Fallback),
            ("prefer", Encryption::Prefer),
            ("require", Encryption::Require),
        ] {
            assert_eq!(parse_encryption(name), Ok(want));
            let toml = format!("[net]\nencryption = {name:?}\n");
            let config: crate::config::Config = toml::from_str(&toml).unwrap();
            assert_eq!(config.net.encryption, want, "{name}");
        }
        let e = parse_encryption("always").unwrap_err();
        assert!(e.contains("\"always\"") && e.contains("require"), "{e}");
    }

    #[test]
    fn transport_values_name_one_transport_and_refuse_the_rest() {
        assert_eq!(parse_transport("tcp"), Ok(OnlyTransport::Tcp));
        assert_eq!(parse_transport("utp"), Ok(OnlyTransport::Utp));
        let e = parse_transport("uTP").unwrap_err();
        assert!(e.contains("\"uTP\"") && e.contains("tcp, utp"), "{e}");
    }

    /// The transcript decodes the tap: messages in order, garbage named once and not past.
    #[test]
    fn transcript_decodes_messages_and_stops_at_garbage() {
        let mut t = Transcript::default();
        let mut out = Vec::new();
        let hs = peer_wire::encode_handshake(
            &[1; 20],
            b"-lt20B0-abcdefghijkl",
            peer_wire::Reserved::PROBE,
        );
        let mut peer = hs.to_vec();
        peer.extend(Message::Bitfield(&[0xff, 0x80]).to_vec());
        // Split mid-message: nothing is printed until the whole message is in.
        let (a, b) = peer.split_at(70);
        t.log(&mut out, 5, false, a).unwrap();
        t.log(&mut out, 7, false, b).unwrap();
        // A length no message may have.
        t.log(&mut out, 8, false, &[0xff, 0xff, 0xff, 0xff, 5])
            .unwrap();
        t.log(&mut out, 9, false, &Message::Have(3).to_vec())
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("     5 ms <- handshake info_hash=0101"),
            "{text}"
        );
        assert_eq!(lines[1], "     7 ms <- bitfield (2 bytes, 9 bits set)");
        assert!(
            lines[2].starts_with("     8 ms <- invalid message"),
            "{text}"
        );
    }
}

//! One peer evaluation (a "probe"), as a sans-IO state machine.
//!
//! The engine feeds it connection events and received bytes with the current time; the probe
//! says what to send and when it is done. It reads the peer's handshake, extension handshake
//! and the progress it advertises (bitfield, have, have_all, have_none), plus PEX and its DHT
//! port, and ends as soon as the answer is known:
//! - `have_all` / `have_none` / `bitfield`: the answer; a short grace period follows to collect
//!   trailing haves, the extension handshake and PEX. The grace is *not* extended by further
//!   messages: a peer that is downloading sends haves without pause, and reading until it is
//!   quiet would report progress it did not have when we came.
//! - the quiet timeout (no message for that long; thesis: 6 s covered 93.9 % of gaps);
//! - the message cap (thesis: 256).
//!
//! When the answer is known the probe does not close by itself: it asks its owner
//! ([`Step::Ask`], [`AskReason::Answered`]). The owner either ends it ([`Probe::stop`]) or
//! keeps the connection open to *watch* the peer ([`Probe::watch`]): a connected peer sends
//! `have` for every piece it finishes, so the moment it crosses a threshold is seen as it
//! happens ([`AskReason::Crossed`]), even for a peer that quits right after. A watched probe
//! sends keep-alives, asks again every sample interval ([`AskReason::Sample`]) and ends when
//! the peer goes silent for too long or closes.
//!
//! It never requests or sends content: the only messages it sends are the handshake, our
//! extension handshake (so the peer tells us its client and listen port), keep-alives while
//! watching, and `port`.

use std::net::{IpAddr, SocketAddr};

use super::metainfo::{InfoHashV1, InfoHashV2, InfoHashes, Metainfo};
use super::peer_wire::{
    bitfield,
    ext::{metadata_piece_count, ExtHandshake, MetadataMessage, PexMessage, UT_METADATA, UT_PEX},
    Handshake, Message, MessageReader, Reserved, WireError, DEFAULT_MAX_MESSAGE_LEN,
};

/// Milliseconds on the caller's clock.
pub type Millis = u64;

/// The extension id under which we ask peers to send us ut_pex.
pub const OUR_UT_PEX_ID: u8 = 1;

/// Most PEX addresses kept from one probe.
pub const MAX_PEX_PEERS: usize = 500;

/// The extension id under which we ask peers to send us ut_metadata (BEP 9).
pub const OUR_UT_METADATA_ID: u8 = 2;

/// Largest info dictionary fetched with ut_metadata when the lookup sets no limit of its own
/// (real ones are at most a few MiB; the scan's limit is `peer.metadata_max_bytes`).
pub const MAX_METADATA_SIZE: i64 = 8 << 20;

/// ut_metadata requests a fetch keeps outstanding. Each piece (16 KiB) is kept in its own
/// buffer, allocated when it arrives, so a fetch holds the bytes received, never the size the
/// peer claimed.
pub const METADATA_WINDOW: u32 = 8;

/// Most `have` indices remembered while the piece count is still unknown.
const MAX_PENDING_HAVES: usize = 1024;

/// Settings shared by every probe of a scan.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeSettings {
    pub peer_id: [u8; 20],
    /// Our TCP listen port, announced in the extension handshake (`p`), 0 = none.
    pub listen_port: u16,
    /// Our DHT port, sent in a `port` message before closing (0 = don't send).
    pub dht_port: u16,
    /// Client string in our extension handshake (`v`).
    pub client: String,
    pub quiet_timeout_ms: Millis,
    /// An incoming connection must complete the BitTorrent handshake (through MSE when it is
    /// encrypted) this soon after it was accepted, or it ends as a quiet timeout: a peer that
    /// dials us speaks first, so a silent one holds a slot for nothing.
    pub incoming_handshake_ms: Millis,
    pub grace_ms: Millis,
    pub message_cap: u32,
    /// Longest whole conversation, whatever happens (a bound on slow-drip peers).
    pub max_duration_ms: Millis,
    /// Our extension handshake message, encoded once and reused by every probe.
    pub ext_handshake_cache: std::sync::OnceLock<Vec<u8>>,
    /// Fetch the info dictionary (BEP 9 ut_metadata) from peers of torrents whose piece
    /// count is unknown (known only by hash or magnet), so their progress can be measured.
    pub fetch_metadata: bool,
    /// Ask peers for peer exchange (BEP 11) and keep the addresses they send.
    pub pex: bool,
}

impl ProbeSettings {
    /// Our extension handshake (BEP 10) as a whole message: `v`, `p`, and `m` with ut_pex
    /// (when `pex`) and ut_metadata.
    pub fn ext_handshake_message(&self) -> &[u8] {
        self.ext_handshake_cache.get_or_init(|| {
            let mut m = vec![(UT_METADATA.as_bytes(), OUR_UT_METADATA_ID)];
            if self.pex {
                m.insert(0, (UT_PEX.as_bytes(), OUR_UT_PEX_ID));
            }
            ExtHandshake {
                m,
                v: Some(self.client.as_bytes()),
                p: (self.listen_port != 0).then_some(self.listen_port),
                ..ExtHandshake::default()
            }
            .to_message_bytes()
        })
    }
}

impl Default for ProbeSettings {
    fn default() -> Self {
        ProbeSettings {
            peer_id: *b"-SW0100-000000000000",
            listen_port: 0,
            dht_port: 0,
            client: concat!("swarmscan/", env!("CARGO_PKG_VERSION")).to_string(),
            quiet_timeout_ms: 6000,
            incoming_handshake_ms: 3000,
            grace_ms: 500,
            message_cap: 256,
            max_duration_ms: 30_000,
            ext_handshake_cache: std::sync::OnceLock::new(),
            fetch_metadata: true,
            pex: true,
        }
    }
}

/// How the probe learned the peer's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressSource {
    Bitfield,
    HaveAll,
    HaveNone,
}

/// Why a probe ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum ProbeEnd {
    /// Progress known and the grace period over.
    Answered,
    /// No message for the quiet timeout.
    QuietTimeout,
    /// The message cap was reached.
    MessageCap,
    /// The overall duration bound was reached.
    MaxDuration,
    /// The peer closed the connection (orderly EOF).
    PeerClosed,
    /// The connection failed with this errno (refused, reset, timed out, ...).
    SocketError(i32),
    /// The peer does not speak BitTorrent (wrong handshake).
    UnknownProtocol,
    /// The peer answered for another torrent (outgoing), or asked for one we do not scan
    /// (incoming).
    UnknownInfoHash,
    /// The peer broke the protocol (bad message); what was wrong.
    ProtocolError(String),
    /// The MSE/PE (encryption) handshake failed; what was wrong.
    MseFailed(String),
}

/// What one probe found. Progress fields are valid when `progress_source` is set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProbeReport {
    pub end: ProbeEnd,
    pub handshake: bool,
    pub info_hash: Option<[u8; 20]>,
    pub peer_id: Option<[u8; 20]>,
    pub reserved: Option<[u8; 8]>,
    /// Extension handshake `v`.
    pub client: Option<String>,
    /// Extension handshake `p`: the peer's listen port (identity of incoming peers).
    pub listen_port: Option<u16>,
    pub metadata_size: Option<i64>,
    pub yourip: Option<IpAddr>,
    pub upload_only: bool,
    pub progress_source: Option<ProgressSource>,
    pub pieces_have: u32,
    pub piece_count: u32,
    /// Bitfield had spare bits set (recorded, not fatal).
    pub spare_bits_set: bool,
    pub messages: u32,
    pub haves: u32,
    /// Milliseconds from connect to the first progress message.
    pub answer_ms: Option<Millis>,
    /// Longest gap between two received messages (thesis figure 5.1).
    pub longest_gap_ms: Millis,
    pub total_ms: Millis,
    /// The peer's DHT port (`port` message).
    pub dht_port: Option<u16>,
    /// Addresses learned from ut_pex (capped at [`MAX_PEX_PEERS`]).
    pub pex: Vec<SocketAddr>,
    /// The torrent's metadata, fetched with ut_metadata and verified against the info-hash
    /// (only for torrents whose piece count was unknown).
    #[serde(skip)]
    pub metainfo: Option<Box<Metainfo>>,
    /// The connection used MSE/PE: the method selected ("rc4" or "plaintext").
    pub mse: Option<&'static str>,
    /// The peer offered metadata we needed, and the fetch was refused (why).
    pub metadata_refused: Option<MetadataRefusal>,
    /// A metadata fetch from this peer failed: rejected, a bad piece, not the torrent's
    /// metadata, or unfinished when the probe ended. Its owner should not let it hold a
    /// fetch's place again.
    pub metadata_failed: bool,
    /// The connection ran over uTP (BEP 29) rather than TCP (set by the connection's owner).
    pub utp: bool,
}

impl ProbeReport {
    /// Progress as a fraction, when known.
    pub fn progress(&self) -> Option<f64> {
        match self.progress_source {
            Some(_) if self.piece_count > 0 => {
                Some(self.pieces_have as f64 / self.piece_count as f64)
            }
            _ => None,
        }
    }
    /// True when the probe produced a progress value.
    pub fn succeeded(&self) -> bool {
        self.progress().is_some()
    }
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialled: we send our handshake first.
    Outgoing {
        info_hash: [u8; 20],
        piece_count: u32,
    },
    /// The peer dialled us: we read its handshake first and answer only if we know the torrent.
    Incoming,
}

/// What the caller must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// Send what was appended, then close (without TIME_WAIT).
    Finished,
    /// Send what was appended and ask the owner ([`Probe::take_ask`] says why).
    Ask,
}

/// Why a probe returned [`Step::Ask`] (see [`Probe::take_ask`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AskReason {
    /// The answer is known (the grace after the progress message is over): stop or watch?
    Answered,
    /// A watched peer reached the watch's `notify_have`.
    Crossed(Crossing),
    /// A watched peer's sample interval passed.
    Sample,
    /// A watched peer that batches its haves sent a batch: what we see lags its real progress
    /// by up to a batch period, so its owner may want to look with a fresh connection near the
    /// predicted crossing.
    Progress,
}

/// When a watched peer crossed `notify_have`: the last time it was seen below, and the message
/// that took it across.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// Last message time at which the peer was still below.
    pub below_at: Millis,
    /// Its pieces then.
    pub below_have: u32,
    /// The time of the message that took it to `notify_have` or more.
    pub at: Millis,
    /// Its pieces right after that message.
    pub have: u32,
}

/// How to watch a peer (see [`Probe::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchPlan {
    /// Ask ([`AskReason::Crossed`]) once when the peer has at least this many pieces.
    pub notify_have: u32,
    /// Ask ([`AskReason::Sample`]) this often.
    pub sample_ms: Millis,
    /// Send a keep-alive after this long without sending (BEP 3: peers drop a connection
    /// after about two minutes of silence).
    pub keepalive_ms: Millis,
    /// End the watch after this long without a message from the peer.
    pub silence_ms: Millis,
    /// When set, also a keep-alive once neither side has sent anything for this long: on a
    /// transport that cannot tell a dead path from an idle one by itself. A uTP peer whose
    /// stack timed the connection out (libtorrent does after three unanswered sends) just
    /// stops answering; our keep-alive going unacknowledged is what ends the connection, so
    /// the watch ends in seconds instead of after `silence_ms`.
    pub liveness_ms: Option<Millis>,
}

#[derive(Debug)]
struct Watch {
    plan: WatchPlan,
    next_sample: Millis,
    last_sent: Millis,
    crossed: bool,
    /// (time, pieces) at the end of the last read while below `notify_have`: the crossing lies
    /// between that read and the one that crosses.
    below: (Millis, u32),
    /// When the last read brought new pieces.
    last_progress_at: Millis,
    /// A read brought new pieces during this watch: only a burst after that is evidence of
    /// batching (a peer idle since the watch began, e.g. with no source yet, then getting
    /// several pieces at once, is not batching).
    progressed: bool,
    /// The peer sends its haves in bursts (see [`AskReason::Progress`]).
    batched: bool,
}

impl Watch {
    /// When the liveness keep-alive is due: `liveness_ms` after the later of the peer's last
    /// message and our last send (never without `liveness_ms`).
    fn liveness_check_at(&self, last_message: Millis) -> Millis {
        self.plan.liveness_ms.map_or(Millis::MAX, |l| {
            last_message.max(self.last_sent).saturating_add(l)
        })
    }
}

/// A read that brings at least this many new pieces after at least [`BATCH_GAP_MS`] without
/// any marks a peer that batches its haves (Transmission 3.00 sends them at most every 10 s to
/// a peer it exchanges no data with; libtorrent sends each at once).
const BATCH_MIN_PIECES: u32 = 2;
/// See [`BATCH_MIN_PIECES`].
const BATCH_GAP_MS: Millis = 3000;

/// Looks up a torrent by info-hash for incoming connections: its piece count, if we scan it.
/// It also decides whether a probe may fetch a torrent's metadata (BEP 9): a peer's extension
/// handshake names the size, and a hostile peer names the largest it may, so fetches are a
/// budget the owner keeps (per torrent and in all), and sizes above a limit are refused.
pub trait TorrentLookup {
    fn piece_count(&self, info_hash: &[u8; 20]) -> Option<u32>;

    /// A fetch of `size` bytes of the metadata of `info_hash` may start: the permit is held
    /// for as long as the fetch lasts. The default allows every fetch up to
    /// [`MAX_METADATA_SIZE`].
    fn metadata_permit(
        &self,
        _info_hash: &[u8; 20],
        size: u64,
    ) -> Result<MetadataPermit, MetadataRefusal> {
        if size > MAX_METADATA_SIZE as u64 {
            return Err(MetadataRefusal::TooLarge);
        }
        Ok(MetadataPermit::unlimited())
    }

    /// The info-hash of a torrent we scan whose MSE `req2` hash ([`mse::req2_hash`]) is
    /// `req2`: which torrent an incoming encrypted connection asks for. The default knows none.
    ///
    /// [`mse::req2_hash`]: super::mse::req2_hash
    fn info_hash_by_req2(&self, _req2: &[u8; 20]) -> Option<[u8; 20]> {
        None
    }
}

/// Why a metadata fetch did not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataRefusal {
    /// The size the peer claimed is above the limit (or 0).
    TooLarge,
    /// Enough fetches of this torrent, or of all torrents, are under way.
    Busy,
}

/// Permission for one metadata fetch (see [`TorrentLookup::metadata_permit`]); dropping it
/// gives the place back.
pub struct MetadataPermit {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl MetadataPermit {
    /// A permit that holds no place in any budget.
    pub fn unlimited() -> MetadataPermit {
        MetadataPermit { release: None }
    }

    /// A permit that calls `release` when dropped.
    pub fn releasing(release: impl FnOnce() + Send + 'static) -> MetadataPermit {
        MetadataPermit {
            release: Some(Box::new(release)),
        }
    }
}

impl Drop for MetadataPermit {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

impl std::fmt::Debug for MetadataPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.release.is_some() {
            "MetadataPermit"
        } else {
            "MetadataPermit(unlimited)"
        })
    }
}

impl<F: Fn(&[u8; 20]) -> Option<u32>> TorrentLookup for F {
    fn piece_count(&self, info_hash: &[u8; 20]) -> Option<u32> {
        self(info_hash)
    }
}

/// One probe.
#[derive(Debug)]
pub struct Probe {
    direction: Direction,
    reader: MessageReader,
    report: ProbeReport,
    started: Millis,
    last_message: Millis,
    answered_at: Option<Millis>,
    /// Piece bitset, only while the probe is live.
    bits: Vec<u8>,
    peer_ut_pex: bool,
    sent_ext_handshake: bool,
    done: bool,
    /// The bitfield as sent, while the piece count is unknown.
    raw_bitfield: Vec<u8>,
    /// `have` indices seen while the piece count is unknown.
    pending_haves: Vec<u32>,
    metadata: Option<MetadataFetch>,
    /// Metadata may be fetched on this connection (see [`Probe::without_metadata_fetch`]).
    may_fetch_metadata: bool,
    peer_id_nonce: Option<u64>,
    /// Replaces `ProbeSettings::grace_ms` for this probe (see [`Probe::without_grace`]).
    grace_override: Option<Millis>,
    /// The owner was asked about the answer ([`AskReason::Answered`]).
    asked: bool,
    /// Why the probe asks, until the owner takes it.
    ask: Option<AskReason>,
    watch: Option<Watch>,
}

/// An info dictionary being fetched with ut_metadata. Pieces are kept as they arrive (nothing is
/// allocated for the size the peer claimed up front), at most [`METADATA_WINDOW`] are
/// requested at once, and the whole is checked against the info-hash at the end (hashed piece
/// by piece: only the torrent's real metadata is ever put in one buffer).
#[derive(Debug)]
struct MetadataFetch {
    size: usize,
    /// The peer's ut_metadata extension id.
    their_id: u8,
    pieces: u32,
    /// Each piece's bytes, once received.
    chunks: Vec<Option<Box<[u8]>>>,
    left: u32,
    /// Pieces below this one were requested.
    next_request: u32,
    /// Requested, not yet received.
    outstanding: u32,
    _permit: MetadataPermit,
}

impl MetadataFetch {
    /// Requests pieces until the window is full.
    fn request_more(&mut self, send: &mut Vec<u8>) {
        while self.outstanding < METADATA_WINDOW && self.next_request < self.pieces {
            let payload = MetadataMessage::Request {
                piece: self.next_request,
            }
            .encode();
            Message::Extended {
                ext_id: self.their_id,
                payload: &payload,
            }
            .encode_into(send);
            self.next_request += 1;
            self.outstanding += 1;
        }
    }
}

impl Probe {
    pub fn new(direction: Direction, now: Millis) -> Probe {
        let (info_hash, piece_count) = match direction {
            Direction::Outgoing {
                info_hash,
                piece_count,
            } => (Some(info_hash), piece_count),
            Direction::Incoming => (None, 0),
        };
        Probe {
            direction,
            reader: MessageReader::new(DEFAULT_MAX_MESSAGE_LEN),
            report: ProbeReport {
                end: ProbeEnd::QuietTimeout,
                handshake: false,
                info_hash,
                peer_id: None,
                reserved: None,
                client: None,
                listen_port: None,
                metadata_size: None,
                yourip: None,
                upload_only: false,
                progress_source: None,
                pieces_have: 0,
                piece_count,
                spare_bits_set: false,
                messages: 0,
                haves: 0,
                answer_ms: None,
                longest_gap_ms: 0,
                total_ms: 0,
                dht_port: None,
                pex: Vec::new(),
                metainfo: None,
                mse: None,
                metadata_refused: None,
                metadata_failed: false,
                utp: false,
            },
            started: now,
            last_message: now,
            answered_at: None,
            bits: Vec::new(),
            peer_ut_pex: false,
            sent_ext_handshake: false,
            done: false,
            raw_bitfield: Vec::new(),
            pending_haves: Vec::new(),
            metadata: None,
            may_fetch_metadata: true,
            peer_id_nonce: None,
            grace_override: None,
            asked: false,
            ask: None,
            watch: None,
        }
    }

    /// Marks the report as one of a connection over uTP.
    pub fn set_utp(&mut self) {
        self.report.utp = true;
    }

    pub fn report(&self) -> &ProbeReport {
        &self.report
    }

    pub fn into_report(self) -> ProbeReport {
        self.report
    }

    /// Records that the connection runs over MSE/PE with this method.
    pub fn set_mse(&mut self, method: &'static str) {
        self.report.mse = Some(method);
    }

    /// Ends the probe for a reason found outside it (e.g. a failed encryption handshake).
    pub fn abort(&mut self, now: Millis, end: ProbeEnd) {
        if !self.done {
            self.report.end = end;
            self.report.total_ms = now.saturating_sub(self.started);
            self.done = true;
            self.bits = Vec::new();
            self.drop_fetch();
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Why the last [`Step::Ask`] was returned (taken once).
    pub fn take_ask(&mut self) -> Option<AskReason> {
        self.ask.take()
    }

    /// True while the peer is being watched.
    pub fn is_watching(&self) -> bool {
        self.watch.is_some() && !self.done
    }

    /// Keeps the connection open after the answer to watch the peer's progress.
    pub fn watch(&mut self, now: Millis, plan: WatchPlan) {
        if self.done {
            return;
        }
        self.watch = Some(Watch {
            plan,
            next_sample: now + plan.sample_ms.max(1),
            last_sent: now,
            crossed: self.report.pieces_have >= plan.notify_have,
            below: (now, self.report.pieces_have),
            last_progress_at: now,
            progressed: false,
            batched: false,
        });
    }

    /// Ends the probe now (answer known, or the watch released): appends the `port` message
    /// where it belongs.
    pub fn stop(&mut self, settings: &ProbeSettings, now: Millis, send: &mut Vec<u8>) {
        if !self.done {
            self.finish(settings, now, ProbeEnd::Answered, send);
        }
    }

    /// The report as it is now, for a record while the probe goes on: PEX addresses and
    /// fetched metadata are moved out (each is reported once).
    pub fn snapshot(&mut self, now: Millis) -> ProbeReport {
        let pex = std::mem::take(&mut self.report.pex);
        let metainfo = self.report.metainfo.take();
        let mut report = self.report.clone();
        report.pex = pex;
        report.metainfo = metainfo;
        report.end = ProbeEnd::Answered;
        report.total_ms = now.saturating_sub(self.started);
        report
    }

    /// Gives back what [`Probe::snapshot`] moved out of a report its owner did not record
    /// (PEX addresses, fetched metadata), so the final report carries them.
    pub fn unsnapshot(&mut self, report: ProbeReport) {
        let mut pex = report.pex;
        pex.append(&mut self.report.pex);
        self.report.pex = pex;
        if self.report.metainfo.is_none() {
            self.report.metainfo = report.metainfo;
        }
    }

    /// The answer is known: ask the owner once, then end.
    fn answer_known(&mut self, settings: &ProbeSettings, now: Millis, send: &mut Vec<u8>) -> Step {
        if self.asked {
            return self.finish(settings, now, ProbeEnd::Answered, send);
        }
        self.asked = true;
        self.ask = Some(AskReason::Answered);
        Step::Ask
    }

    fn handshake_bytes(&self, settings: &ProbeSettings, info_hash: &[u8; 20]) -> [u8; 68] {
        let reserved = Reserved::NONE
            .with_extended(true)
            .with_fast(true)
            .with_dht(settings.dht_port != 0);
        let mut peer_id = settings.peer_id;
        if let Some(nonce) = self.peer_id_nonce {
            // Keep the client prefix (8 bytes); make the rest unique to this connection.
            let mut x = nonce;
            for b in peer_id.iter_mut().skip(8) {
                *b = b'0' + (x % 10) as u8;
                x /= 10;
            }
        }
        super::peer_wire::encode_handshake(info_hash, &peer_id, reserved)
    }

    /// Fetches no metadata on this connection (the peer failed a fetch before).
    pub fn without_metadata_fetch(mut self) -> Probe {
        self.may_fetch_metadata = false;
        self
    }

    /// Gives this probe its own peer-id suffix. A client that has a connection open with us
    /// (it dialled our listener) drops a second one with the same peer-id as a duplicate, so
    /// every outgoing probe uses its own.
    pub fn with_peer_id_nonce(mut self, nonce: u64) -> Probe {
        self.peer_id_nonce = Some(nonce);
        self
    }

    /// Answers at the first progress message, without the grace for trailing messages: for a
    /// visit aimed at a predicted crossing, where only the progress matters and every
    /// moment this connection stays open delays the next look (a client keeps one
    /// connection per address).
    pub fn without_grace(mut self) -> Probe {
        self.grace_override = Some(0);
        self
    }

    fn grace_ms(&self, settings: &ProbeSettings) -> Millis {
        self.grace_override.unwrap_or(settings.grace_ms)
    }

    /// The connection is up.
    pub fn on_connected(&mut self, settings: &ProbeSettings, now: Millis, send: &mut Vec<u8>) {
        self.started = now;
        self.last_message = now;
        if let Direction::Outgoing { info_hash, .. } = self.direction {
            send.extend_from_slice(&self.handshake_bytes(settings, &info_hash));
        }
    }

    /// When the caller must call [`Probe::on_deadline`] if nothing arrives first.
    pub fn deadline(&self, settings: &ProbeSettings) -> Millis {
        if let Some(w) = self.watch.as_ref().filter(|_| !self.done) {
            return (self.last_message + w.plan.silence_ms)
                .min(w.last_sent + w.plan.keepalive_ms)
                .min(w.liveness_check_at(self.last_message))
                .min(w.next_sample);
        }
        let mut d = (self.last_message + settings.quiet_timeout_ms)
            .min(self.started + settings.max_duration_ms);
        if self.direction == Direction::Incoming && !self.report.handshake {
            d = d.min(self.started + settings.incoming_handshake_ms);
        }
        // While metadata is on its way, the grace does not end the probe (quiet still does).
        if let (Some(at), None) = (self.answered_at, &self.metadata) {
            d = d.min(at + self.grace_ms(settings));
        }
        d
    }

    /// The deadline passed.
    pub fn on_deadline(
        &mut self,
        settings: &ProbeSettings,
        now: Millis,
        send: &mut Vec<u8>,
    ) -> Step {
        if self.done {
            return Step::Finished;
        }
        if now < self.deadline(settings) {
            return Step::Continue;
        }
        if let Some(w) = self.watch.as_mut() {
            if now >= self.last_message + w.plan.silence_ms {
                return self.finish(settings, now, ProbeEnd::QuietTimeout, send);
            }
            if now >= w.last_sent + w.plan.keepalive_ms
                || now >= w.liveness_check_at(self.last_message)
            {
                Message::KeepAlive.encode_into(send);
                w.last_sent = now;
            }
            if now >= w.next_sample {
                w.next_sample = now + w.plan.sample_ms.max(1);
                self.ask = Some(AskReason::Sample);
                return Step::Ask;
            }
            return Step::Continue;
        }
        let answered = self.metadata.is_none()
            && self.report.progress_source.is_some()
            && self
                .answered_at
                .is_some_and(|at| now >= at + self.grace_ms(settings));
        if answered && !self.asked {
            return self.answer_known(settings, now, send);
        }
        let end = if self.metadata.is_none()
            && self
                .answered_at
                .is_some_and(|at| now >= at + self.grace_ms(settings))
        {
            ProbeEnd::Answered
        } else if now >= self.started + settings.max_duration_ms {
            ProbeEnd::MaxDuration
        } else {
            ProbeEnd::QuietTimeout
        };
        // Handshake done, quiet, no bitfield: BEP 3 lets a peer with no pieces omit it, but a
        // seeder that holds its bitfield back (super-seeding) looks the same; taking silence
        // for 0 % would confirm such a peer the first time it shows 100 %. Progress counts
        // only when the peer stated it (bitfield, have_all, have_none).
        self.finish(settings, now, end, send)
    }

    /// The connection ended before the probe finished.
    pub fn on_closed(&mut self, now: Millis, errno: Option<i32>) {
        if self.done {
            return;
        }
        self.report.end = match errno {
            None => ProbeEnd::PeerClosed,
            Some(e) => ProbeEnd::SocketError(e),
        };
        self.report.total_ms = now.saturating_sub(self.started);
        self.done = true;
        self.bits = Vec::new();
        self.drop_fetch();
    }

    fn finish(
        &mut self,
        settings: &ProbeSettings,
        now: Millis,
        end: ProbeEnd,
        send: &mut Vec<u8>,
    ) -> Step {
        let ok = matches!(
            end,
            ProbeEnd::Answered
                | ProbeEnd::QuietTimeout
                | ProbeEnd::MessageCap
                | ProbeEnd::MaxDuration
        );
        if ok
            && self.report.handshake
            && settings.dht_port != 0
            && self.report.reserved.is_some_and(|r| Reserved(r).dht())
        {
            Message::Port(settings.dht_port).encode_into(send);
        }
        self.report.end = end;
        self.report.total_ms = now.saturating_sub(self.started);
        self.done = true;
        self.bits = Vec::new();
        self.drop_fetch();
        Step::Finished
    }

    /// Bytes arrived. For incoming probes, `lookup` decides whether we scan the torrent.
    pub fn on_bytes(
        &mut self,
        settings: &ProbeSettings,
        lookup: &dyn TorrentLookup,
        now: Millis,
        bytes: &[u8],
        send: &mut Vec<u8>,
    ) -> Step {
        if self.done {
            return Step::Finished;
        }
        let have_before = self.report.pieces_have;
        self.reader.feed(bytes);
        if !self.report.handshake {
            let hs = match self.reader.read_handshake() {
                Ok(Some(h)) => h,
                Ok(None) => return Step::Continue,
                Err(WireError::NotBitTorrent { .. }) => {
                    return self.finish(settings, now, ProbeEnd::UnknownProtocol, send)
                }
                Err(e) => {
                    return self.finish(settings, now, ProbeEnd::ProtocolError(e.to_string()), send)
                }
            };
            if let Some(step) = self.on_handshake(settings, lookup, now, hs, send) {
                return step;
            }
        }
        // The reader is taken out while its messages are handled, so they can borrow it
        // instead of being copied.
        let mut reader = std::mem::take(&mut self.reader);
        let step = loop {
            let msg = match reader.read_message() {
                Ok(Some(m)) => m,
                Ok(None) => break Step::Continue,
                Err(e) => {
                    let e = e.to_string();
                    break self.finish(settings, now, ProbeEnd::ProtocolError(e), send);
                }
            };
            let event = Event::from_message(&msg);
            if let Some(step) = self.on_event(settings, lookup, now, event, send) {
                break step;
            }
        };
        self.reader = reader;
        if step == Step::Continue {
            self.after_watched_read(now, have_before);
        }
        if step == Step::Continue && self.ask.is_some() {
            return Step::Ask;
        }
        step
    }

    /// Bookkeeping of a watched peer after a read: the last evidence below the threshold, and
    /// whether the peer batches its haves.
    fn after_watched_read(&mut self, now: Millis, have_before: u32) {
        let have = self.report.pieces_have;
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        if !w.crossed {
            w.below = (now, have);
        }
        if have > have_before {
            let gap = now.saturating_sub(w.last_progress_at);
            if !w.batched
                && w.progressed
                && have - have_before >= BATCH_MIN_PIECES
                && gap >= BATCH_GAP_MS
            {
                w.batched = true;
            }
            w.last_progress_at = now;
            w.progressed = true;
            if w.batched && self.ask.is_none() {
                self.ask = Some(AskReason::Progress);
            }
        }
    }

    /// True when the watched peer was seen sending its haves in bursts.
    pub fn haves_batched(&self) -> bool {
        self.watch.as_ref().is_some_and(|w| w.batched)
    }

    fn on_handshake(
        &mut self,
        settings: &ProbeSettings,
        lookup: &dyn TorrentLookup,
        now: Millis,
        hs: Handshake,
        send: &mut Vec<u8>,
    ) -> Option<Step> {
        self.report.peer_id = Some(hs.peer_id);
        self.report.reserved = Some(hs.reserved.0);
        match self.direction {
            Direction::Outgoing { info_hash, .. } => {
                if hs.info_hash != info_hash {
                    return Some(self.finish(settings, now, ProbeEnd::UnknownInfoHash, send));
                }
            }
            Direction::Incoming => {
                self.report.info_hash = Some(hs.info_hash);
                match lookup.piece_count(&hs.info_hash) {
                    // Drop at once: the thesis tool held these for the full quiet timeout.
                    None => {
                        return Some(self.finish(settings, now, ProbeEnd::UnknownInfoHash, send))
                    }
                    Some(n) => {
                        self.report.piece_count = n;
                        let ours = self.handshake_bytes(settings, &hs.info_hash);
                        send.extend_from_slice(&ours);
                    }
                }
            }
        }
        self.report.handshake = true;
        self.last_message = now;
        if hs.reserved.extended() && !self.sent_ext_handshake {
            self.sent_ext_handshake = true;
            send.extend_from_slice(settings.ext_handshake_message());
        }
        None
    }

    fn on_event(
        &mut self,
        settings: &ProbeSettings,
        lookup: &dyn TorrentLookup,
        now: Millis,
        event: Event,
        send: &mut Vec<u8>,
    ) -> Option<Step> {
        self.report.messages += 1;
        let gap = now.saturating_sub(self.last_message);
        self.report.longest_gap_ms = self.report.longest_gap_ms.max(gap);
        self.last_message = now;
        let n = self.report.piece_count;
        match event {
            Event::Bitfield(bits) => {
                if n > 0 {
                    match bitfield::summarize(bits, n) {
                        Ok(summary) => {
                            self.report.spare_bits_set = summary.spare_bits_set;
                            // Haves that came first stay counted: OR them in.
                            self.ensure_bits();
                            for (mine, theirs) in self.bits.iter_mut().zip(bits) {
                                *mine |= theirs;
                            }
                            if summary.spare_bits_set {
                                // Don't count spare bits from the OR.
                                let last = self.bits.len() - 1;
                                let spare = (self.bits.len() * 8 - n as usize) as u32;
                                self.bits[last] &= !(((1u16 << spare) - 1) as u8);
                            }
                            self.report.pieces_have =
                                self.bits.iter().map(|b| b.count_ones()).sum();
                        }
                        Err(e) => {
                            return Some(self.finish(
                                settings,
                                now,
                                ProbeEnd::ProtocolError(e.to_string()),
                                send,
                            ))
                        }
                    }
                } else {
                    self.report.pieces_have = bits.iter().map(|b| b.count_ones()).sum();
                    self.raw_bitfield = bits.to_vec();
                }
                self.answered(now, ProgressSource::Bitfield);
            }
            Event::Have(index) => {
                self.report.haves += 1;
                if n == 0 && self.pending_haves.len() < MAX_PENDING_HAVES {
                    self.pending_haves.push(index);
                }
                if n > 0 {
                    if index >= n {
                        let e = bitfield::BitfieldError::IndexOutOfRange {
                            index,
                            piece_count: n,
                        };
                        return Some(self.finish(
                            settings,
                            now,
                            ProbeEnd::ProtocolError(e.to_string()),
                            send,
                        ));
                    }
                    self.ensure_bits();
                    // Count a piece once, however often it is announced (the thesis tool's
                    // bit-setting bug made haves undercount).
                    if !bitfield::has_piece(&self.bits, index) {
                        bitfield::set_piece(&mut self.bits, index);
                        self.report.pieces_have += 1;
                    }
                }
            }
            Event::HaveAll => {
                self.report.pieces_have = n;
                self.answered(now, ProgressSource::HaveAll);
            }
            Event::HaveNone => {
                self.report.pieces_have = 0;
                self.answered(now, ProgressSource::HaveNone);
            }
            Event::Port(p) => self.report.dht_port = Some(p),
            Event::ExtHandshake(payload) => {
                if let Ok(h) = ExtHandshake::decode(payload) {
                    self.report.client = h
                        .client()
                        .map(str::to_string)
                        .or_else(|| h.v.map(|v| String::from_utf8_lossy(v).into_owned()));
                    self.report.listen_port = h.p.filter(|p| *p != 0);
                    self.report.metadata_size = h.metadata_size;
                    self.report.yourip = h.yourip;
                    self.report.upload_only = h.upload_only.is_some_and(|u| u != 0);
                    self.peer_ut_pex = h.id_of(UT_PEX).is_some_and(|id| id != 0);
                    let their_id = h.id_of(UT_METADATA).filter(|id| *id != 0);
                    if let (Some(id), Some(size)) = (their_id, h.metadata_size) {
                        self.start_metadata_fetch(settings, lookup, id, size, send);
                    }
                }
            }
            Event::Extended(OUR_UT_METADATA_ID, payload) => {
                if let Some(step) = self.on_metadata(settings, now, payload, send) {
                    return Some(step);
                }
            }
            Event::Extended(ext_id, payload) => {
                if settings.pex && ext_id == OUR_UT_PEX_ID && self.report.pex.len() < MAX_PEX_PEERS
                {
                    if let Ok(pex) = PexMessage::decode(payload) {
                        let room = MAX_PEX_PEERS - self.report.pex.len();
                        self.report
                            .pex
                            .extend(pex.added.iter().take(room).map(|p| p.addr));
                    }
                }
            }
            Event::Other => {}
        }
        if let Some(w) = self.watch.as_mut() {
            // Watching: no message cap (a downloading peer sends a have per piece).
            let have = self.report.pieces_have;
            if !w.crossed && have >= w.plan.notify_have {
                w.crossed = true;
                self.ask = Some(AskReason::Crossed(Crossing {
                    below_at: w.below.0,
                    below_have: w.below.1,
                    at: now,
                    have,
                }));
            }
            return None;
        }
        if self.report.messages >= settings.message_cap {
            return Some(self.finish(settings, now, ProbeEnd::MessageCap, send));
        }
        if self.grace_ms(settings) == 0
            && self.answered_at.is_some()
            && self.metadata.is_none()
            && !self.asked
        {
            // No grace wanted: the answer is known now.
            return Some(self.answer_known(settings, now, send));
        }
        None
    }

    fn start_metadata_fetch(
        &mut self,
        settings: &ProbeSettings,
        lookup: &dyn TorrentLookup,
        their_id: u8,
        size: i64,
        send: &mut Vec<u8>,
    ) {
        if !settings.fetch_metadata
            || !self.may_fetch_metadata
            || self.report.metadata_failed
            || self.report.piece_count > 0
            || self.metadata.is_some()
            || self.report.metainfo.is_some()
        {
            return;
        }
        let Some(info_hash) = self.report.info_hash else {
            return;
        };
        // A claim of 0, or one that does not fit the 32-bit sizes of BEP 9, is refused like
        // one above the limit.
        let permit = match u32::try_from(size) {
            Ok(s) if s > 0 => lookup.metadata_permit(&info_hash, u64::from(s)),
            _ => Err(MetadataRefusal::TooLarge),
        };
        let permit = match permit {
            Ok(p) => p,
            Err(why) => {
                self.report.metadata_refused = Some(why);
                return;
            }
        };
        let pieces = metadata_piece_count(size as u32);
        let mut fetch = MetadataFetch {
            size: size as usize,
            their_id,
            pieces,
            chunks: vec![None; pieces as usize],
            left: pieces,
            next_request: 0,
            outstanding: 0,
            _permit: permit,
        };
        fetch.request_more(send);
        self.metadata = Some(fetch);
    }

    /// A ut_metadata message for us. A reject or a bad piece abandons the fetch (the probe
    /// goes on as for any torrent of unknown size).
    fn on_metadata(
        &mut self,
        settings: &ProbeSettings,
        now: Millis,
        payload: &[u8],
        send: &mut Vec<u8>,
    ) -> Option<Step> {
        let fetch = self.metadata.as_mut()?;
        let piece_len = super::peer_wire::ext::METADATA_PIECE_LEN;
        match MetadataMessage::decode(payload) {
            Ok(MetadataMessage::Data {
                piece,
                total_size,
                data,
            }) => {
                let start = piece as usize * piece_len;
                let expected = fetch.size.saturating_sub(start).min(piece_len);
                // Only pieces we asked for, of the length the claimed size gives them.
                let ok = total_size as usize == fetch.size
                    && piece < fetch.next_request
                    && data.len() == expected;
                // An info dictionary is a bencoded dictionary: garbage ends at the first piece.
                if !ok || (piece == 0 && data.first() != Some(&b'd')) {
                    self.drop_fetch();
                    return None;
                }
                let chunk = &mut fetch.chunks[piece as usize];
                if chunk.is_none() {
                    *chunk = Some(data.into());
                    fetch.left -= 1;
                    fetch.outstanding -= 1;
                    fetch.request_more(send);
                }
                if fetch.left == 0 {
                    let fetch = self.metadata.take()?;
                    self.on_metadata_complete(fetch.chunks);
                    if self.grace_ms(settings) == 0 && self.answered_at.is_some() && !self.asked {
                        return Some(self.answer_known(settings, now, send));
                    }
                }
            }
            // BEP 9: unknown message types are ignored, not an error.
            Err(super::peer_wire::ext::ExtError::UnknownMetadataType(_)) => {}
            Ok(MetadataMessage::Reject { .. }) | Err(_) => self.drop_fetch(),
            Ok(MetadataMessage::Request { .. }) => {}
        }
        None
    }

    /// Abandons a metadata fetch under way (its place in the budget is given back) and says so
    /// in the report.
    fn drop_fetch(&mut self) {
        if self.metadata.take().is_some() {
            self.report.metadata_failed = true;
        }
    }

    /// Verifies the info dictionary against the info-hash (v1, or truncated v2) and, if it
    /// matches, learns the piece count and measures what the peer already advertised.
    fn on_metadata_complete(&mut self, chunks: Vec<Option<Box<[u8]>>>) {
        use sha1::Digest as _;
        let Some(wire) = self.report.info_hash else {
            return;
        };
        let pieces = || chunks.iter().flatten();
        let mut sha1 = sha1::Sha1::new();
        pieces().for_each(|c| sha1.update(c));
        let v1: [u8; 20] = sha1.finalize().into();
        let expected = if v1 == wire {
            InfoHashes {
                v1: Some(InfoHashV1(v1)),
                v2: None,
            }
        } else {
            let mut sha256 = sha2::Sha256::new();
            pieces().for_each(|c| sha256.update(c));
            let v2: [u8; 32] = sha256.finalize().into();
            if v2[..20] != wire {
                self.report.metadata_failed = true;
                return; // not the torrent's metadata: ignore it
            }
            InfoHashes {
                v1: None,
                v2: Some(InfoHashV2(v2)),
            }
        };
        let info: Vec<u8> = pieces().flat_map(|c| c.iter().copied()).collect();
        drop(chunks);
        let Ok(meta) = Metainfo::from_info_dict(&info, &expected) else {
            self.report.metadata_failed = true;
            return;
        };
        let n = match u32::try_from(meta.piece_count) {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        self.report.piece_count = n;
        self.report.metainfo = Some(Box::new(meta));
        match self.report.progress_source {
            Some(ProgressSource::HaveAll) => self.report.pieces_have = n,
            Some(ProgressSource::HaveNone) => self.report.pieces_have = 0,
            _ => {
                if !self.raw_bitfield.is_empty() {
                    if bitfield::summarize(&self.raw_bitfield, n).is_err() {
                        // The bitfield does not fit the metadata: no progress from it.
                        self.report.progress_source = None;
                        self.report.pieces_have = 0;
                        return;
                    }
                    self.bits = std::mem::take(&mut self.raw_bitfield);
                    let spare = (self.bits.len() * 8 - n as usize) as u32;
                    if let Some(last) = self.bits.last_mut() {
                        *last &= !(((1u16 << spare) - 1) as u8);
                    }
                }
                for index in std::mem::take(&mut self.pending_haves) {
                    if index < n {
                        self.ensure_bits();
                        bitfield::set_piece(&mut self.bits, index);
                    }
                }
                self.report.pieces_have = self.bits.iter().map(|b| b.count_ones()).sum();
            }
        }
    }

    fn ensure_bits(&mut self) {
        if self.bits.is_empty() && self.report.piece_count > 0 {
            self.bits = vec![0; bitfield::byte_len(self.report.piece_count)];
        }
    }

    fn answered(&mut self, now: Millis, source: ProgressSource) {
        if self.answered_at.is_none() {
            self.answered_at = Some(now);
            self.report.answer_ms = Some(now.saturating_sub(self.started));
        }
        self.report.progress_source = Some(source);
    }
}

/// What a message means to a probe.
enum Event<'a> {
    Bitfield(&'a [u8]),
    Have(u32),
    HaveAll,
    HaveNone,
    Port(u16),
    ExtHandshake(&'a [u8]),
    Extended(u8, &'a [u8]),
    Other,
}

impl<'a> Event<'a> {
    fn from_message(m: &Message<'a>) -> Event<'a> {
        match *m {
            Message::Bitfield(b) => Event::Bitfield(b),
            Message::Have(i) => Event::Have(i),
            Message::HaveAll => Event::HaveAll,
            Message::HaveNone => Event::HaveNone,
            Message::Port(p) => Event::Port(p),
            Message::Extended { ext_id: 0, payload } => Event::ExtHandshake(payload),
            Message::Extended { ext_id, payload } => Event::Extended(ext_id, payload),
            _ => Event::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_wire::encode_handshake;

    const HASH: [u8; 20] = [7; 20];

    fn settings() -> ProbeSettings {
        ProbeSettings {
            dht_port: 6881,
            listen_port: 51413,
            ..ProbeSettings::default()
        }
    }

    fn no_torrents(_: &[u8; 20]) -> Option<u32> {
        None
    }

    fn peer_handshake(reserved: Reserved) -> Vec<u8> {
        encode_handshake(&HASH, b"-qB4130-abcdefghijkl", reserved).to_vec()
    }

    fn msg(m: Message<'_>) -> Vec<u8> {
        m.to_vec()
    }

    fn outgoing(pieces: u32) -> (Probe, ProbeSettings, Vec<u8>) {
        let s = settings();
        let mut p = Probe::new(
            Direction::Outgoing {
                info_hash: HASH,
                piece_count: pieces,
            },
            0,
        );
        let mut send = Vec::new();
        p.on_connected(&s, 0, &mut send);
        (p, s, send)
    }

    #[test]
    fn sends_handshake_and_reads_bitfield_then_grace() {
        let (mut p, s, send) = outgoing(10);
        assert_eq!(send.len(), 68);
        let hs = Handshake::decode(&send).unwrap().0;
        assert!(hs.reserved.extended() && hs.reserved.fast() && hs.reserved.dht());
        assert_eq!(hs.info_hash, HASH);

        let mut out = Vec::new();
        let peer = peer_handshake(Reserved::PROBE);
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 10, &peer, &mut out),
            Step::Continue
        );
        assert!(!out.is_empty(), "our extension handshake goes out");
        out.clear();
        // 10 pieces: bits 0..7 in byte 0, 8..9 in byte 1.
        let bf = msg(Message::Bitfield(&[0b1111_0000, 0b1000_0000]));
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 20, &bf, &mut out),
            Step::Continue
        );
        assert_eq!(p.deadline(&s), 20 + s.grace_ms);
        // Haves keep coming during the grace; they count but don't extend it.
        let have = msg(Message::Have(9));
        p.on_bytes(&s, &no_torrents, 300, &have, &mut out);
        p.on_bytes(&s, &no_torrents, 400, &msg(Message::Have(9)), &mut out);
        assert_eq!(p.deadline(&s), 20 + s.grace_ms);
        // The answer is known: the owner is asked whether to watch; it ends the probe.
        assert_eq!(p.on_deadline(&s, 520, &mut out), Step::Ask);
        assert_eq!(p.take_ask(), Some(AskReason::Answered));
        assert!(out.is_empty());
        p.stop(&s, 520, &mut out);
        assert!(p.is_done());
        // A `port` message with our DHT port, since the peer set the DHT bit.
        assert_eq!(out, msg(Message::Port(6881)));
        let r = p.into_report();
        assert_eq!(r.end, ProbeEnd::Answered);
        assert_eq!(
            r.pieces_have, 6,
            "5 from the bitfield, piece 9 counted once"
        );
        assert_eq!(r.haves, 2);
        assert_eq!(r.progress(), Some(0.6));
        assert_eq!(r.answer_ms, Some(20));
        assert_eq!(r.longest_gap_ms, 280);
        assert_eq!(r.peer_id.as_ref().map(|p| &p[..8]), Some(&b"-qB4130-"[..]));
    }

    #[test]
    fn an_aimed_probe_answers_at_the_first_progress_message() {
        let (p, s, _) = outgoing(10);
        let mut p = p.without_grace();
        let mut out = Vec::new();
        p.on_bytes(
            &s,
            &no_torrents,
            10,
            &peer_handshake(Reserved::PROBE),
            &mut out,
        );
        assert!(s.grace_ms > 0, "the default has a grace");
        let bf = msg(Message::Bitfield(&[0b1111_0000, 0b1000_0000]));
        assert_eq!(p.on_bytes(&s, &no_torrents, 20, &bf, &mut out), Step::Ask);
        assert_eq!(p.take_ask(), Some(AskReason::Answered));
        let r = p.snapshot(20);
        assert_eq!((r.progress(), r.answer_ms), (Some(0.5), Some(20)));
    }

    #[test]
    fn works_on_any_chunking() {
        let mut stream = peer_handshake(Reserved::PROBE);
        let ext = ExtHandshake {
            m: vec![(b"ut_pex".as_slice(), 2)],
            v: Some(b"qBittorrent/4.1.3"),
            p: Some(8999),
            ..ExtHandshake::default()
        };
        stream.extend(ext.to_message_bytes());
        stream.extend(msg(Message::HaveAll));
        for chunk in [1, 2, 3, 7, 64, 1000] {
            let (mut p, s, _) = outgoing(100);
            let mut out = Vec::new();
            for c in stream.chunks(chunk) {
                assert_eq!(p.on_bytes(&s, &no_torrents, 5, c, &mut out), Step::Continue);
            }
            p.on_deadline(&s, 5 + s.grace_ms, &mut out);
            let r = p.report();
            assert_eq!(r.progress(), Some(1.0), "chunk {chunk}");
            assert_eq!(r.client.as_deref(), Some("qBittorrent/4.1.3"));
            assert_eq!(r.listen_port, Some(8999));
            assert_eq!(r.progress_source, Some(ProgressSource::HaveAll));
        }
    }

    #[test]
    fn classifies_failures() {
        let (mut p, s, _) = outgoing(10);
        let mut out = Vec::new();
        assert_eq!(
            p.on_bytes(
                &s,
                &no_torrents,
                1,
                b"HTTP/1.1 400 Bad Request\r\n",
                &mut out
            ),
            Step::Finished
        );
        assert_eq!(p.report().end, ProbeEnd::UnknownProtocol);

        let (mut p, s, _) = outgoing(10);
        let other = encode_handshake(&[9; 20], &[1; 20], Reserved::NONE);
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 1, &other, &mut out),
            Step::Finished
        );
        assert_eq!(p.report().end, ProbeEnd::UnknownInfoHash);

        let (mut p, s, _) = outgoing(10);
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &peer_handshake(Reserved::NONE),
            &mut out,
        );
        let huge = [0xff, 0xff, 0xff, 0xff, 5];
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 2, &huge, &mut out),
            Step::Finished
        );
        assert!(matches!(p.report().end, ProbeEnd::ProtocolError(_)));

        let (mut p, s, _) = outgoing(10);
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &peer_handshake(Reserved::NONE),
            &mut out,
        );
        let wrong_len = msg(Message::Bitfield(&[0xff; 3]));
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 2, &wrong_len, &mut out),
            Step::Finished
        );
        assert!(matches!(p.report().end, ProbeEnd::ProtocolError(_)));

        let (mut p, _, _) = outgoing(10);
        p.on_closed(50, Some(libc_econnrefused()));
        assert_eq!(p.report().end, ProbeEnd::SocketError(111));
        assert!(!p.report().succeeded());
    }

    fn libc_econnrefused() -> i32 {
        111
    }

    #[test]
    fn a_quiet_peer_after_the_handshake_stated_no_progress() {
        let (mut p, s, _) = outgoing(10);
        let mut out = Vec::new();
        p.on_bytes(
            &s,
            &no_torrents,
            100,
            &peer_handshake(Reserved::NONE),
            &mut out,
        );
        assert_eq!(p.deadline(&s), 100 + s.quiet_timeout_ms);
        assert_eq!(
            p.on_deadline(&s, 100 + s.quiet_timeout_ms, &mut out),
            Step::Finished
        );
        let r = p.report();
        assert_eq!(r.end, ProbeEnd::QuietTimeout);
        assert!(r.handshake);
        assert_eq!(
            r.progress_source, None,
            "silence is no statement of progress"
        );
        assert_eq!(r.progress(), None);
    }

    #[test]
    fn message_cap_ends_a_chatty_peer() {
        let (mut p, s, _) = outgoing(1000);
        let mut out = Vec::new();
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &peer_handshake(Reserved::NONE),
            &mut out,
        );
        let mut step = Step::Continue;
        for i in 0..300 {
            step = p.on_bytes(&s, &no_torrents, 2, &msg(Message::Have(i)), &mut out);
            if step == Step::Finished {
                break;
            }
        }
        assert_eq!(step, Step::Finished);
        assert_eq!(p.report().end, ProbeEnd::MessageCap);
        assert_eq!(p.report().messages, s.message_cap);
        assert_eq!(p.report().pieces_have, s.message_cap);
    }

    #[test]
    fn incoming_known_and_unknown_torrents() {
        let s = settings();
        let known = |h: &[u8; 20]| (h == &HASH).then_some(40u32);
        let mut p = Probe::new(Direction::Incoming, 0);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        assert!(out.is_empty(), "incoming: the peer speaks first");
        assert_eq!(
            p.on_bytes(&s, &known, 3, &peer_handshake(Reserved::PROBE), &mut out),
            Step::Continue
        );
        assert_eq!(&out[28..48], &HASH, "we answer with the torrent's hash");
        p.on_bytes(&s, &known, 4, &msg(Message::HaveNone), &mut out);
        p.on_deadline(&s, 4 + s.grace_ms, &mut out);
        assert_eq!(p.report().progress(), Some(0.0));
        assert_eq!(p.report().info_hash, Some(HASH));

        let mut p = Probe::new(Direction::Incoming, 0);
        let mut out = Vec::new();
        let unknown = encode_handshake(&[1; 20], &[2; 20], Reserved::NONE);
        assert_eq!(
            p.on_bytes(&s, &known, 3, &unknown, &mut out),
            Step::Finished
        );
        assert_eq!(p.report().end, ProbeEnd::UnknownInfoHash);
        assert!(out.is_empty(), "nothing is sent to an unknown-torrent peer");
    }

    /// An info dictionary of `pieces` pieces and its v1 info-hash.
    fn info_dict(pieces: u32) -> (Vec<u8>, [u8; 20]) {
        use sha1::Digest as _;
        let info = crate::bencode::OwnedValue::dict()
            .with("name", "x")
            .with("piece length", 16384)
            .with("length", i64::from(pieces) * 16384 - 100)
            .with("pieces", vec![7u8; pieces as usize * 20])
            .encode();
        let hash: [u8; 20] = sha1::Sha1::digest(&info).into();
        (info, hash)
    }

    fn metadata_peer(info: &[u8], hash: &[u8; 20], ext_id: u8) -> Vec<u8> {
        let mut stream = encode_handshake(hash, b"-qB4130-abcdefghijkl", Reserved::PROBE).to_vec();
        let ext = ExtHandshake {
            m: vec![(b"ut_metadata".as_slice(), ext_id)],
            metadata_size: Some(info.len() as i64),
            ..ExtHandshake::default()
        };
        stream.extend(ext.to_message_bytes());
        stream
    }

    fn data_message(info: &[u8], piece: u32) -> Vec<u8> {
        let start = piece as usize * 16384;
        let end = (start + 16384).min(info.len());
        let payload = MetadataMessage::Data {
            piece,
            total_size: info.len() as u32,
            data: &info[start..end],
        }
        .encode();
        msg(Message::Extended {
            ext_id: OUR_UT_METADATA_ID,
            payload: &payload,
        })
    }

    #[test]
    fn fetches_metadata_when_the_piece_count_is_unknown() {
        // 1000 pieces: the info dict is > 16 KiB, so it comes in two ut_metadata pieces.
        let (info, hash) = info_dict(1000);
        assert!(info.len() > 16384);
        let s = settings();
        let mut p = Probe::new(
            Direction::Outgoing {
                info_hash: hash,
                piece_count: 0,
            },
            0,
        );
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        out.clear();
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &metadata_peer(&info, &hash, 3),
            &mut out,
        );
        // Our extension handshake, then one request per metadata piece, to the peer's id 3.
        let mut requests = Vec::new();
        let mut rest = &out[..];
        while let Ok((m, used)) = crate::peer_wire::decode(rest) {
            if let Message::Extended { ext_id: 3, payload } = m {
                requests.push(MetadataMessage::decode(payload).unwrap());
            }
            rest = &rest[used..];
        }
        assert_eq!(
            requests,
            vec![
                MetadataMessage::Request { piece: 0 },
                MetadataMessage::Request { piece: 1 }
            ]
        );
        // Bitfield for 1000 pieces (125 bytes), 250 set, and a have before the metadata.
        let mut bits = vec![0u8; 125];
        for i in 0..250 {
            crate::peer_wire::bitfield::set_piece(&mut bits, i);
        }
        p.on_bytes(
            &s,
            &no_torrents,
            2,
            &msg(Message::Bitfield(&bits)),
            &mut out,
        );
        p.on_bytes(&s, &no_torrents, 3, &msg(Message::Have(900)), &mut out);
        assert_eq!(p.report().progress(), None, "piece count still unknown");
        // The grace does not end the probe while metadata is on its way.
        assert_eq!(p.deadline(&s), 3 + s.quiet_timeout_ms);
        // A ut_metadata message type we don't know is ignored (BEP 9), not fatal to the fetch.
        let unknown = msg(Message::Extended {
            ext_id: OUR_UT_METADATA_ID,
            payload: b"d8:msg_typei9e5:piecei0ee",
        });
        p.on_bytes(&s, &no_torrents, 4, &unknown, &mut out);
        p.on_bytes(&s, &no_torrents, 4, &data_message(&info, 1), &mut out);
        p.on_bytes(&s, &no_torrents, 5, &data_message(&info, 0), &mut out);
        let r = p.report();
        assert_eq!(r.piece_count, 1000);
        assert_eq!(r.pieces_have, 251);
        assert_eq!(r.metainfo.as_ref().unwrap().name, "x");
        assert_eq!(
            p.deadline(&s),
            2 + s.grace_ms,
            "grace from the bitfield applies again"
        );
    }

    #[test]
    fn metadata_that_does_not_match_the_hash_is_ignored() {
        let (info, _) = info_dict(10);
        let wrong_hash = [9u8; 20];
        let s = settings();
        let mut p = Probe::new(
            Direction::Outgoing {
                info_hash: wrong_hash,
                piece_count: 0,
            },
            0,
        );
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &metadata_peer(&info, &wrong_hash, 3),
            &mut out,
        );
        p.on_bytes(&s, &no_torrents, 2, &msg(Message::HaveAll), &mut out);
        p.on_bytes(&s, &no_torrents, 3, &data_message(&info, 0), &mut out);
        assert_eq!(p.report().piece_count, 0);
        assert!(p.report().metainfo.is_none());
        assert!(p.report().metadata_failed);
        // A rejected or useless fetch leaves the probe to end on its grace.
        assert_eq!(p.deadline(&s), 2 + s.grace_ms);
    }

    #[test]
    fn each_probe_can_have_its_own_peer_id() {
        let s = settings();
        let id = |nonce| {
            let mut p = Probe::new(
                Direction::Outgoing {
                    info_hash: HASH,
                    piece_count: 1,
                },
                0,
            )
            .with_peer_id_nonce(nonce);
            let mut out = Vec::new();
            p.on_connected(&s, 0, &mut out);
            Handshake::decode(&out).unwrap().0.peer_id
        };
        let (a, b) = (id(1), id(2));
        assert_ne!(a, b);
        assert_eq!(a[..8], s.peer_id[..8], "the client prefix stays");
        assert!(a[8..].iter().all(u8::is_ascii_digit));
    }

    /// An outgoing probe of a 100-piece torrent that has its answer (bitfield with `have`
    /// pieces, grace over at 600): the owner was asked.
    fn answered_probe(have: u32) -> (Probe, ProbeSettings) {
        let (mut p, s, _) = outgoing(100);
        let mut out = Vec::new();
        p.on_bytes(
            &s,
            &no_torrents,
            10,
            &peer_handshake(Reserved::NONE),
            &mut out,
        );
        let mut bits = vec![0u8; 13];
        for i in 0..have {
            bitfield::set_piece(&mut bits, i);
        }
        p.on_bytes(
            &s,
            &no_torrents,
            100,
            &msg(Message::Bitfield(&bits)),
            &mut out,
        );
        assert_eq!(p.on_deadline(&s, 600, &mut out), Step::Ask);
        assert_eq!(p.take_ask(), Some(AskReason::Answered));
        (p, s)
    }

    const PLAN: WatchPlan = WatchPlan {
        notify_have: 98,
        sample_ms: 10_000,
        keepalive_ms: 60_000,
        silence_ms: 300_000,
        liveness_ms: None,
    };

    #[test]
    fn a_watched_peer_reports_the_have_that_crosses_the_threshold() {
        let (mut p, s) = answered_probe(90);
        p.watch(600, PLAN);
        assert!(p.is_watching());
        let mut out = Vec::new();
        // Haves below the threshold: no question, and no message cap while watching.
        for (i, piece) in (90..97).enumerate() {
            let step = p.on_bytes(
                &s,
                &no_torrents,
                1000 + i as u64 * 100,
                &msg(Message::Have(piece)),
                &mut out,
            );
            assert_eq!(step, Step::Continue);
        }
        assert_eq!(p.report().pieces_have, 97);
        // The 98th piece arrives together with the 99th in one read.
        let mut both = msg(Message::Have(97));
        both.extend(msg(Message::Have(98)));
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 2500, &both, &mut out),
            Step::Ask
        );
        assert_eq!(
            p.take_ask(),
            Some(AskReason::Crossed(Crossing {
                below_at: 1600,
                below_have: 97,
                at: 2500,
                have: 98,
            }))
        );
        // Both were read: the snapshot has 99.
        assert_eq!(p.snapshot(2500).pieces_have, 99);
        // Further haves do not ask again.
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 2600, &msg(Message::Have(99)), &mut out),
            Step::Continue
        );
        assert!(
            out.is_empty(),
            "we never send anything but keep-alives while watching"
        );
        let mut many = Vec::new();
        for _ in 0..400 {
            many.extend(msg(Message::Have(1)));
        }
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 2700, &many, &mut out),
            Step::Continue
        );
        assert!(
            !p.is_done(),
            "the message cap does not apply while watching"
        );
    }

    #[test]
    fn a_watched_peer_gets_keepalives_samples_and_ends_when_silent() {
        let (mut p, s) = answered_probe(50);
        p.watch(600, PLAN);
        let mut out = Vec::new();
        // First the sample, then keep-alives every minute, each time the deadline says.
        assert_eq!(p.deadline(&s), 10_600);
        assert_eq!(p.on_deadline(&s, 10_600, &mut out), Step::Ask);
        assert_eq!(p.take_ask(), Some(AskReason::Sample));
        assert!(out.is_empty());
        let mut keepalives = 0;
        let mut samples = 1;
        let mut now;
        loop {
            now = p.deadline(&s);
            match p.on_deadline(&s, now, &mut out) {
                Step::Ask => {
                    assert_eq!(p.take_ask(), Some(AskReason::Sample));
                    samples += 1;
                }
                Step::Continue => {}
                Step::Finished => break,
            }
            if !out.is_empty() {
                assert_eq!(out, msg(Message::KeepAlive));
                keepalives += 1;
                out.clear();
            }
            assert!(now < 1_000_000, "bounded");
        }
        // The peer said nothing after 100 ms: the watch ends 300 s later.
        assert_eq!(now, 100 + 300_000);
        assert_eq!(keepalives, 4, "at 60.6, 120.6, 180.6 and 240.6 s");
        assert_eq!(samples, 29, "every 10 s from 10.6 to 290.6 s");
        let r = p.into_report();
        assert_eq!(r.end, ProbeEnd::QuietTimeout);
        assert_eq!(
            r.progress(),
            Some(0.5),
            "a watch that ends keeps its progress"
        );
    }

    #[test]
    fn with_liveness_a_quiet_watched_connection_gets_a_keepalive_once_both_sides_are_silent() {
        let (mut p, s) = answered_probe(50);
        p.watch(
            600,
            WatchPlan {
                liveness_ms: Some(5_000),
                ..PLAN
            },
        );
        let mut out = Vec::new();
        // The peer's last message was at 100 ms, our last send is the watch start (600 ms).
        assert_eq!(p.deadline(&s), 5_600);
        assert_eq!(p.on_deadline(&s, 5_600, &mut out), Step::Continue);
        assert_eq!(out, msg(Message::KeepAlive));
        out.clear();
        // A peer that keeps talking holds the check off: 5 s after its last message.
        for at in [6_000, 9_000, 12_000] {
            assert_eq!(
                p.on_bytes(&s, &no_torrents, at, &msg(Message::Have(60)), &mut out),
                Step::Continue
            );
        }
        assert_eq!(p.deadline(&s), 10_600, "the sample comes first");
        assert_eq!(p.on_deadline(&s, 10_600, &mut out), Step::Ask);
        assert_eq!(p.take_ask(), Some(AskReason::Sample));
        assert!(out.is_empty());
        assert_eq!(p.deadline(&s), 17_000);
        assert_eq!(p.on_deadline(&s, 17_000, &mut out), Step::Continue);
        assert_eq!(out, msg(Message::KeepAlive));
        out.clear();
        // Silent on both sides again: every 5 s (the transport says whether it got through).
        assert_eq!(p.deadline(&s), 20_600, "the next sample");
        assert_eq!(p.on_deadline(&s, 20_600, &mut out), Step::Ask);
        p.take_ask();
        assert_eq!(p.deadline(&s), 22_000);
        // Without liveness, the same watch sends nothing before a minute (see above).
        let (mut q, s) = answered_probe(50);
        q.watch(600, PLAN);
        assert_eq!(q.deadline(&s), 10_600);
    }

    #[test]
    fn a_watched_peer_that_closes_keeps_its_last_progress() {
        let (mut p, s) = answered_probe(96);
        p.watch(600, PLAN);
        let mut out = Vec::new();
        let mut last = msg(Message::Have(96));
        last.extend(msg(Message::Have(97)));
        last.extend(msg(Message::Have(98)));
        last.extend(msg(Message::Have(99)));
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 5000, &last, &mut out),
            Step::Ask
        );
        // All in one read: the last evidence below is the watch's start.
        assert!(
            matches!(p.take_ask(), Some(AskReason::Crossed(c)) if c.have == 98 && c.below_have == 96 && c.below_at == 600)
        );
        assert!(
            !p.haves_batched(),
            "the first pieces of the watch, even 4 at once after 4.4 s, are no evidence of batching"
        );
        p.on_closed(5001, None);
        let r = p.into_report();
        assert_eq!(r.end, ProbeEnd::PeerClosed);
        assert_eq!(r.pieces_have, 100);
        assert!(r.succeeded());
    }

    #[test]
    fn a_peer_idle_since_the_watch_began_is_not_taken_for_batching_at_its_first_burst() {
        let (mut p, s) = answered_probe(0);
        p.watch(600, PLAN);
        let mut out = Vec::new();
        let batch = |from: u32, n: u32| -> Vec<u8> {
            (from..from + n)
                .flat_map(|i| msg(Message::Have(i)))
                .collect()
        };
        // Nothing for 8 s (no source yet), then several pieces in one read.
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 8_600, &batch(0, 5), &mut out),
            Step::Continue
        );
        assert!(!p.haves_batched());
        // A burst after a gap once it has progressed: batching.
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 20_000, &batch(5, 10), &mut out),
            Step::Ask
        );
        assert_eq!(p.take_ask(), Some(AskReason::Progress));
        assert!(p.haves_batched());
    }

    #[test]
    fn a_peer_that_batches_its_haves_is_told_apart_and_asks_at_each_batch() {
        let (mut p, s) = answered_probe(10);
        p.watch(600, PLAN);
        let mut out = Vec::new();
        let batch = |from: u32, n: u32| -> Vec<u8> {
            (from..from + n)
                .flat_map(|i| msg(Message::Have(i)))
                .collect()
        };
        // One have at a time, steadily: a client that sends each at once.
        for (i, piece) in (10..14).enumerate() {
            let step = p.on_bytes(
                &s,
                &no_torrents,
                1000 + i as u64 * 500,
                &batch(piece, 1),
                &mut out,
            );
            assert_eq!(step, Step::Continue);
        }
        assert!(!p.haves_batched());
        // Then ten pieces at once after 10 s of silence: a batching client.
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 12_500, &batch(14, 10), &mut out),
            Step::Ask
        );
        assert_eq!(p.take_ask(), Some(AskReason::Progress));
        assert!(p.haves_batched());
        // Every later batch asks again; the crossing read still says it crossed, and where
        // the last batch below was.
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 22_500, &batch(24, 60), &mut out),
            Step::Ask
        );
        assert_eq!(p.take_ask(), Some(AskReason::Progress));
        assert_eq!(
            p.on_bytes(&s, &no_torrents, 32_500, &batch(84, 16), &mut out),
            Step::Ask
        );
        assert_eq!(
            p.take_ask(),
            Some(AskReason::Crossed(Crossing {
                below_at: 22_500,
                below_have: 84,
                at: 32_500,
                have: 98,
            }))
        );
    }

    #[test]
    fn an_owner_that_neither_watches_nor_stops_gets_the_probe_ended() {
        let (mut p, s) = answered_probe(10);
        let mut out = Vec::new();
        // Asked once; the next deadline ends it.
        assert_eq!(p.on_deadline(&s, 610, &mut out), Step::Finished);
        assert_eq!(p.into_report().end, ProbeEnd::Answered);
    }

    #[test]
    fn collects_pex() {
        let (mut p, s, _) = outgoing(8);
        let mut out = Vec::new();
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &peer_handshake(Reserved::PROBE),
            &mut out,
        );
        let mut payload = b"d5:added12:".to_vec();
        payload.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0x1a, 0xe2]);
        payload.extend_from_slice(b"e");
        let pex = msg(Message::Extended {
            ext_id: OUR_UT_PEX_ID,
            payload: &payload,
        });
        p.on_bytes(&s, &no_torrents, 2, &pex, &mut out);
        assert_eq!(
            p.report().pex,
            vec![
                "10.0.0.1:6881".parse().unwrap(),
                "10.0.0.2:6882".parse().unwrap()
            ]
        );
    }

    /// A lookup with a metadata budget of `places` fetches up to `limit` bytes; counts the
    /// permits live.
    struct Budgeted {
        limit: u64,
        places: usize,
        live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl TorrentLookup for Budgeted {
        fn piece_count(&self, _: &[u8; 20]) -> Option<u32> {
            None
        }
        fn metadata_permit(
            &self,
            _: &[u8; 20],
            size: u64,
        ) -> Result<MetadataPermit, MetadataRefusal> {
            use std::sync::atomic::Ordering::SeqCst;
            if size > self.limit {
                return Err(MetadataRefusal::TooLarge);
            }
            if self.live.load(SeqCst) >= self.places {
                return Err(MetadataRefusal::Busy);
            }
            self.live.fetch_add(1, SeqCst);
            let live = self.live.clone();
            Ok(MetadataPermit::releasing(move || {
                live.fetch_sub(1, SeqCst);
            }))
        }
    }

    fn budgeted(limit: u64, places: usize) -> Budgeted {
        Budgeted {
            limit,
            places,
            live: Default::default(),
        }
    }

    /// The ut_metadata requests in `out` after our extension handshake.
    fn metadata_requests(out: &[u8]) -> Vec<u32> {
        let mut reader = MessageReader::new(DEFAULT_MAX_MESSAGE_LEN);
        reader.feed(&out[68..]);
        let mut pieces = Vec::new();
        while let Ok(Some(m)) = reader.read_message() {
            if let Message::Extended { ext_id: 3, payload } = m {
                if let Ok(MetadataMessage::Request { piece }) = MetadataMessage::decode(payload) {
                    pieces.push(piece);
                }
            }
        }
        pieces
    }

    fn unknown_size_probe(hash: [u8; 20]) -> Probe {
        Probe::new(
            Direction::Outgoing {
                info_hash: hash,
                piece_count: 0,
            },
            0,
        )
    }

    #[test]
    fn a_metadata_bomb_buys_no_memory_and_holds_its_place_only_while_it_lasts() {
        // A peer claims 8 MiB of metadata and sends none of it.
        let s = settings();
        let lookup = budgeted(8 << 20, 1);
        let mut stream = encode_handshake(&HASH, b"-qB4130-abcdefghijkl", Reserved::PROBE).to_vec();
        stream.extend(
            ExtHandshake {
                m: vec![(b"ut_metadata".as_slice(), 3)],
                metadata_size: Some(8 << 20),
                ..ExtHandshake::default()
            }
            .to_message_bytes(),
        );
        let mut p = unknown_size_probe(HASH);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(&s, &lookup, 1, &stream, &mut out);
        // A window of requests, not all 512, and no buffer until data comes.
        assert_eq!(
            metadata_requests(&out),
            (0..METADATA_WINDOW).collect::<Vec<_>>()
        );
        let fetch = p.metadata.as_ref().expect("fetch under way");
        assert!(fetch.chunks.iter().all(Option::is_none));
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A second bomb of the same torrent finds the budget spent.
        let mut q = unknown_size_probe(HASH);
        let mut out2 = Vec::new();
        q.on_connected(&s, 0, &mut out2);
        q.on_bytes(&s, &lookup, 1, &stream, &mut out2);
        assert!(metadata_requests(&out2).is_empty());
        assert_eq!(q.report().metadata_refused, Some(MetadataRefusal::Busy));

        // The probe ends at the quiet timeout; its place is given back.
        let end = p.deadline(&s);
        assert_eq!(p.on_deadline(&s, end, &mut out), Step::Finished);
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(p.report().metadata_failed, "unfinished: failed");
        assert!(!q.report().metadata_failed, "never started");

        // The owner remembers: the next probe of the bomb fetches nothing.
        let mut p = unknown_size_probe(HASH).without_metadata_fetch();
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(&s, &lookup, 1, &stream, &mut out);
        assert!(metadata_requests(&out).is_empty());
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_first_metadata_piece_that_is_no_dictionary_ends_the_fetch() {
        let (info, hash) = info_dict(20_000);
        let s = settings();
        let lookup = budgeted(8 << 20, 1);
        let mut p = unknown_size_probe(hash);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(&s, &lookup, 1, &metadata_peer(&info, &hash, 3), &mut out);
        let mut garbage = info.clone();
        garbage[0] = b'x';
        p.on_bytes(&s, &lookup, 2, &data_message(&garbage, 0), &mut out);
        assert!(p.metadata.is_none());
        assert!(p.report().metadata_failed);
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_snapshot_not_recorded_gives_its_pex_and_metadata_back() {
        let (info, hash) = info_dict(1000);
        let s = settings();
        let mut p = unknown_size_probe(hash);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(
            &s,
            &no_torrents,
            1,
            &metadata_peer(&info, &hash, 3),
            &mut out,
        );
        for piece in 0..2 {
            p.on_bytes(&s, &no_torrents, 2, &data_message(&info, piece), &mut out);
        }
        let pex = PexMessage {
            added: vec![crate::peer_wire::ext::PexPeer {
                addr: "10.0.0.1:6881".parse().unwrap(),
                flags: crate::peer_wire::ext::PexFlags(0),
            }],
            ..PexMessage::default()
        }
        .encode();
        p.on_bytes(
            &s,
            &no_torrents,
            3,
            &msg(Message::Extended {
                ext_id: OUR_UT_PEX_ID,
                payload: &pex,
            }),
            &mut out,
        );
        let snap = p.snapshot(4);
        assert!(snap.metainfo.is_some() && snap.pex.len() == 1);
        assert!(p.report().metainfo.is_none() && p.report().pex.is_empty());
        p.unsnapshot(snap);
        p.stop(&s, 5, &mut out);
        let r = p.into_report();
        assert!(r.metainfo.is_some(), "the end report has the metadata");
        assert_eq!(r.pex.len(), 1);
    }

    #[test]
    fn metadata_claims_above_the_limit_are_refused() {
        let s = settings();
        let lookup = budgeted(1 << 20, 4);
        for claim in [(1i64 << 20) + 1, 0, -5, i64::from(u32::MAX) + 1] {
            let mut stream =
                encode_handshake(&HASH, b"-qB4130-abcdefghijkl", Reserved::PROBE).to_vec();
            stream.extend(
                ExtHandshake {
                    m: vec![(b"ut_metadata".as_slice(), 3)],
                    metadata_size: Some(claim),
                    ..ExtHandshake::default()
                }
                .to_message_bytes(),
            );
            let mut p = unknown_size_probe(HASH);
            let mut out = Vec::new();
            p.on_connected(&s, 0, &mut out);
            p.on_bytes(&s, &lookup, 1, &stream, &mut out);
            assert!(metadata_requests(&out).is_empty(), "claim {claim}");
            assert_eq!(
                p.report().metadata_refused,
                Some(MetadataRefusal::TooLarge),
                "claim {claim}"
            );
        }
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn metadata_arrives_window_by_window_and_memory_grows_with_it() {
        // 20 000 pieces: 400 KB of hashes, 25 ut_metadata pieces.
        let (info, hash) = info_dict(20_000);
        let pieces = metadata_piece_count(info.len() as u32);
        assert!(pieces > 2 * METADATA_WINDOW);
        let s = settings();
        let lookup = budgeted(8 << 20, 1);
        let mut p = unknown_size_probe(hash);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(&s, &lookup, 1, &metadata_peer(&info, &hash, 3), &mut out);
        let mut asked = metadata_requests(&out);
        assert_eq!(asked.len(), METADATA_WINDOW as usize);
        // The peer answers each request as it comes, the second of each pair first.
        let mut answered = 0;
        while answered < asked.len() {
            let batch: Vec<u32> = asked[answered..].to_vec();
            for pair in batch.chunks(2) {
                for &piece in pair.iter().rev() {
                    let before = out.len();
                    p.on_bytes(&s, &lookup, 2, &data_message(&info, piece), &mut out);
                    let mut tail = vec![0u8; 68];
                    tail.extend_from_slice(&out[before..]);
                    asked.extend(metadata_requests(&tail));
                    answered += 1;
                    if let Some(f) = p.metadata.as_ref() {
                        let held: usize = f.chunks.iter().flatten().map(|c| c.len()).sum();
                        assert_eq!(held, answered * 16384, "exactly what arrived");
                    }
                }
            }
        }
        assert_eq!(asked, (0..pieces).collect::<Vec<_>>());
        assert_eq!(p.report().piece_count, 20_000, "verified and learned");
        assert!(p.report().metainfo.is_some());
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_piece_we_did_not_ask_for_ends_the_fetch() {
        let (info, hash) = info_dict(20_000);
        let s = settings();
        let lookup = budgeted(8 << 20, 1);
        let mut p = unknown_size_probe(hash);
        let mut out = Vec::new();
        p.on_connected(&s, 0, &mut out);
        p.on_bytes(&s, &lookup, 1, &metadata_peer(&info, &hash, 3), &mut out);
        p.on_bytes(&s, &lookup, 2, &data_message(&info, 10), &mut out);
        assert!(p.metadata.is_none());
        assert!(p.report().metadata_failed);
        assert_eq!(lookup.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_silent_incoming_connection_ends_at_the_handshake_timeout() {
        let s = settings();
        let known = |h: &[u8; 20]| (h == &HASH).then_some(40u32);
        let mut p = Probe::new(Direction::Incoming, 0);
        let mut out = Vec::new();
        p.on_connected(&s, 100, &mut out);
        assert!(s.incoming_handshake_ms < s.quiet_timeout_ms);
        assert_eq!(p.deadline(&s), 100 + s.incoming_handshake_ms);
        assert_eq!(
            p.on_deadline(&s, 100 + s.incoming_handshake_ms, &mut out),
            Step::Finished
        );
        assert_eq!(p.report().end, ProbeEnd::QuietTimeout);
        assert!(!p.report().handshake);

        // After the handshake, the quiet timeout applies as for any probe.
        let mut p = Probe::new(Direction::Incoming, 0);
        p.on_connected(&s, 100, &mut out);
        p.on_bytes(&s, &known, 200, &peer_handshake(Reserved::PROBE), &mut out);
        assert_eq!(p.deadline(&s), 200 + s.quiet_timeout_ms);
    }
}

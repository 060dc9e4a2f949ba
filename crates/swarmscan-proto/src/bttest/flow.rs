//! One end of one bttest flow, sans-IO.
//!
//! A BitTorrent flow is a real transfer between a seeder and a leecher: handshakes (the
//! initiator, always the client, speaks first), the seeder's bitfield, the leecher's
//! `interested`, the seeder's `unchoke`, then the leecher keeps [`PIPELINE`] `request`s of
//! 16 KiB blocks outstanding and the seeder answers each with a `piece` of random payload.
//! Messages are built and parsed with [`crate::peer_wire`].
//!
//! Its plain-TCP twin sends the same number of bytes in the same units at the same moments
//! (68, then 5 + bitfield, 5, 17 per request, 13 + block per piece), but every byte of every
//! unit is random, length prefixes included: nothing a middlebox could recognise as
//! BitTorrent, everything else alike. Each side counts the units it expects instead of
//! parsing them.
//!
//! The leecher ends its sending side when it has requested everything (or was told to
//! [`FlowEndpoint::stop`] when the flow's time ran out): the application then shuts down its
//! write half. The seeder answers what was requested until it sees that end of stream, then
//! is done too; the leecher is done when every requested block arrived and the seeder's end
//! of stream followed.

use std::collections::VecDeque;
use std::fmt;

use super::control::FlowKind;
use super::Rng;
use crate::peer_wire::{BlockRef, Handshake, Message, MessageReader, Reserved};

/// Bytes per block (request and piece), as every real client uses.
pub const BLOCK: u32 = 16 * 1024;
/// Bytes per piece of the test torrent.
pub const PIECE_LEN: u32 = 256 * 1024;
/// Requests the leecher keeps outstanding.
pub const PIPELINE: usize = 16;
/// Requests a seeder holds unanswered before it calls the peer broken.
pub const MAX_PENDING: usize = 256;
/// Largest payload of one flow (the bitfield must fit one peer-wire message).
pub const MAX_FLOW_BYTES: u64 = 1 << 40;

const HANDSHAKE_LEN: usize = 68;
const PIECE_HEADER: usize = 13;
const REQUEST_LEN: usize = 17;
const SHORT_LEN: usize = 5;

/// Which end of the transfer this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Has every piece, answers requests.
    Seeder,
    /// Requests and receives.
    Leecher,
}

/// What one end needs to know of its flow (both ends get the same values but the role and
/// `initiator`).
#[derive(Debug, Clone, Copy)]
pub struct FlowParams {
    /// BitTorrent or its plain-TCP twin.
    pub kind: FlowKind,
    /// This end's role.
    pub role: Role,
    /// This end opened the connection (and sends its handshake first).
    pub initiator: bool,
    /// Payload bytes of the whole transfer (1..=[`MAX_FLOW_BYTES`]).
    pub payload_bytes: u64,
    /// The flow's seed: info-hash, peer-ids and payload come from it.
    pub seed: u64,
}

/// Why a flow cannot go on: the other end did something its script does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowError {
    /// The stream did not start with a BitTorrent handshake for this flow's torrent.
    BadHandshake(String),
    /// A message that does not belong here.
    Unexpected {
        /// What the script expected.
        expected: &'static str,
        /// What came.
        got: String,
    },
    /// A request for a block that does not exist or was already asked for too often.
    BadRequest(String),
    /// A piece that does not answer the oldest outstanding request.
    BadPiece(String),
    /// The other end closed its sending side before the script was done.
    ClosedEarly(&'static str),
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlowError::BadHandshake(s) => write!(f, "bad handshake: {s}"),
            FlowError::Unexpected { expected, got } => {
                write!(f, "expected {expected}, got {got}")
            }
            FlowError::BadRequest(s) => write!(f, "bad request: {s}"),
            FlowError::BadPiece(s) => write!(f, "bad piece: {s}"),
            FlowError::ClosedEarly(s) => write!(f, "the other end closed early ({s})"),
        }
    }
}

impl std::error::Error for FlowError {}

/// What this end waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Handshake,
    Bitfield,
    Unchoke,
    Pieces,
    Interested,
    Requests,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Handshake => "a handshake",
            Stage::Bitfield => "a bitfield",
            Stage::Unchoke => "unchoke",
            Stage::Pieces => "a piece",
            Stage::Interested => "interested",
            Stage::Requests => "a request",
        }
    }
}

/// One unit the other end sent, decoded (BitTorrent) or counted (plain TCP).
enum Got {
    Handshake,
    Bitfield,
    Unchoke,
    Interested,
    Request(BlockRef),
    Piece(BlockRef),
}

/// One end of one flow.
#[derive(Debug)]
pub struct FlowEndpoint {
    kind: FlowKind,
    role: Role,
    initiator: bool,
    total: u64,
    pieces: u32,
    info_hash: [u8; 20],
    peer_id: [u8; 20],
    rng: Rng,
    stage: Stage,
    /// BitTorrent: the framer.
    reader: MessageReader,
    /// Plain TCP: bytes still missing of the unit under way.
    unit_left: usize,
    /// Small messages waiting to be sent (handshake, bitfield, interested, unchoke).
    queued: Vec<u8>,
    handshake_sent: bool,
    peer_eof: bool,
    // Leecher.
    unchoked: bool,
    stopped: bool,
    next_offset: u64,
    outstanding: VecDeque<BlockRef>,
    payload_received: u64,
    // Seeder.
    pending: VecDeque<BlockRef>,
    requested: u64,
    payload_sent: u64,
    /// One block of random payload, refilled for every piece.
    block_buf: Vec<u8>,
}

/// The block at byte `offset` of the torrent.
fn block_at(offset: u64, total: u64) -> BlockRef {
    let index = (offset / u64::from(PIECE_LEN)) as u32;
    let begin = (offset % u64::from(PIECE_LEN)) as u32;
    let piece_end = (u64::from(index) + 1) * u64::from(PIECE_LEN);
    let length = u64::from(BLOCK)
        .min(piece_end.min(total) - offset)
        .min(u64::from(BLOCK)) as u32;
    BlockRef {
        index,
        begin,
        length,
    }
}

impl FlowEndpoint {
    /// A fresh end; `payload_bytes` is clamped to 1..=[`MAX_FLOW_BYTES`].
    pub fn new(params: FlowParams) -> FlowEndpoint {
        let total = params.payload_bytes.clamp(1, MAX_FLOW_BYTES);
        let pieces = total.div_ceil(u64::from(PIECE_LEN)) as u32;
        let mut ids = Rng::new(params.seed);
        let mut info_hash = [0u8; 20];
        ids.fill(&mut info_hash);
        let role_salt: u64 = match params.role {
            Role::Seeder => 0x5345_4544,
            Role::Leecher => 0x4c45_4543,
        };
        let mut mine = Rng::new(params.seed ^ role_salt.rotate_left(32));
        let mut peer_id = *b"-SW0100-000000000000";
        mine.fill(&mut peer_id[8..]);
        FlowEndpoint {
            kind: params.kind,
            role: params.role,
            initiator: params.initiator,
            total,
            pieces,
            info_hash,
            peer_id,
            rng: mine,
            stage: Stage::Handshake,
            reader: MessageReader::new(BLOCK + 9 + 1 + pieces.div_ceil(8)),
            unit_left: HANDSHAKE_LEN,
            queued: Vec::new(),
            handshake_sent: false,
            peer_eof: false,
            unchoked: false,
            stopped: false,
            next_offset: 0,
            outstanding: VecDeque::new(),
            payload_received: 0,
            pending: VecDeque::new(),
            requested: 0,
            payload_sent: 0,
            block_buf: match params.role {
                Role::Seeder => vec![0; BLOCK as usize],
                Role::Leecher => Vec::new(),
            },
        }
    }

    fn bitfield_len(&self) -> usize {
        self.pieces.div_ceil(8) as usize
    }

    /// Payload bytes received so far.
    pub fn payload_received(&self) -> u64 {
        self.payload_received
    }

    /// Payload bytes sent so far (handed out by [`FlowEndpoint::poll_transmit`]).
    pub fn payload_sent(&self) -> u64 {
        self.payload_sent
    }

    /// The flow's time is up: a leecher requests nothing more (what is outstanding still
    /// arrives). A seeder keeps answering: its end follows the leecher's.
    pub fn stop(&mut self) {
        self.stopped = true;
    }

    /// Nothing more will be sent: once what [`FlowEndpoint::poll_transmit`] gave is written,
    /// shut down the write half.
    pub fn send_finished(&self) -> bool {
        if !self.queued.is_empty() {
            return false;
        }
        match self.role {
            Role::Leecher => self.stopped || (self.unchoked && self.next_offset >= self.total),
            Role::Seeder => self.peer_eof && self.pending.is_empty(),
        }
    }

    /// This end is over: every byte of its script moved and the other end closed.
    pub fn complete(&self) -> bool {
        self.peer_eof && self.send_finished() && self.outstanding.is_empty()
    }

    /// Appends what may be sent now to `out`, at most about `budget` bytes of pieces (small
    /// messages always go).
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>, budget: usize) {
        if self.initiator && !self.handshake_sent {
            self.push_handshake();
        }
        out.append(&mut self.queued);
        match self.role {
            Role::Leecher => {
                if !self.unchoked || self.stopped {
                    return;
                }
                while self.outstanding.len() < PIPELINE && self.next_offset < self.total {
                    let block = block_at(self.next_offset, self.total);
                    self.next_offset += u64::from(block.length);
                    self.outstanding.push_back(block);
                    match self.kind {
                        FlowKind::BitTorrent => Message::Request(block).encode_into(out),
                        FlowKind::PlainTcp => self.push_random(out, REQUEST_LEN),
                    }
                }
            }
            Role::Seeder => {
                let limit = out.len() + budget;
                while out.len() < limit {
                    let Some(block) = self.pending.pop_front() else {
                        break;
                    };
                    // Both kinds fill the block the same way and copy it once, so that
                    // neither costs more CPU than the other on a fast path.
                    let payload = &mut self.block_buf[..block.length as usize];
                    self.rng.fill(payload);
                    match self.kind {
                        FlowKind::BitTorrent => Message::Piece {
                            index: block.index,
                            begin: block.begin,
                            block: payload,
                        }
                        .encode_into(out),
                        FlowKind::PlainTcp => {
                            let mut header = [0u8; PIECE_HEADER];
                            self.rng.fill(&mut header);
                            out.extend_from_slice(&header);
                            out.extend_from_slice(&self.block_buf[..block.length as usize]);
                        }
                    }
                    self.payload_sent += u64::from(block.length);
                }
            }
        }
    }

    fn push_random(&mut self, out: &mut Vec<u8>, n: usize) {
        let start = out.len();
        out.resize(start + n, 0);
        self.rng.fill(&mut out[start..]);
    }

    fn push_handshake(&mut self) {
        self.handshake_sent = true;
        match self.kind {
            FlowKind::BitTorrent => {
                let h = Handshake {
                    reserved: Reserved::default(),
                    info_hash: self.info_hash,
                    peer_id: self.peer_id,
                };
                self.queued.extend_from_slice(&h.encode());
            }
            FlowKind::PlainTcp => {
                let mut q = std::mem::take(&mut self.queued);
                self.push_random(&mut q, HANDSHAKE_LEN);
                self.queued = q;
            }
        }
    }

    /// The length of the plain-TCP unit expected next.
    fn unit_len(&self) -> Result<usize, FlowError> {
        Ok(match self.stage {
            Stage::Handshake => HANDSHAKE_LEN,
            Stage::Bitfield => SHORT_LEN + self.bitfield_len(),
            Stage::Unchoke | Stage::Interested => SHORT_LEN,
            Stage::Requests => REQUEST_LEN,
            Stage::Pieces => match self.outstanding.front() {
                Some(b) => PIECE_HEADER + b.length as usize,
                None => {
                    return Err(FlowError::BadPiece(
                        "data while no request is outstanding".into(),
                    ))
                }
            },
        })
    }

    /// Feeds bytes received from the other end.
    pub fn on_bytes(&mut self, mut data: &[u8]) -> Result<(), FlowError> {
        match self.kind {
            FlowKind::BitTorrent => {
                self.reader.feed(data);
                loop {
                    let got = if self.stage == Stage::Handshake {
                        match self.reader.read_handshake() {
                            Ok(Some(h)) if h.info_hash == self.info_hash => Got::Handshake,
                            Ok(Some(_)) => {
                                return Err(FlowError::BadHandshake(
                                    "info-hash of another flow".into(),
                                ))
                            }
                            Ok(None) => return Ok(()),
                            Err(e) => return Err(FlowError::BadHandshake(e.to_string())),
                        }
                    } else {
                        let expected = self.stage.name();
                        let bitfield_len = self.bitfield_len();
                        let got = match self.reader.read_message() {
                            Ok(Some(m)) => m,
                            Ok(None) => return Ok(()),
                            Err(e) => {
                                return Err(FlowError::Unexpected {
                                    expected,
                                    got: e.to_string(),
                                })
                            }
                        };
                        match got {
                            Message::Bitfield(b) if b.len() == bitfield_len => Got::Bitfield,
                            Message::Unchoke => Got::Unchoke,
                            Message::Interested => Got::Interested,
                            Message::Request(b) => Got::Request(b),
                            Message::Piece {
                                index,
                                begin,
                                block,
                            } => Got::Piece(BlockRef {
                                index,
                                begin,
                                length: block.len() as u32,
                            }),
                            other => {
                                return Err(FlowError::Unexpected {
                                    expected,
                                    got: other.name().to_string(),
                                })
                            }
                        }
                    };
                    self.handle(got)?;
                }
            }
            FlowKind::PlainTcp => {
                while !data.is_empty() {
                    if self.unit_left == 0 {
                        self.unit_left = self.unit_len()?;
                    }
                    let n = self.unit_left.min(data.len());
                    self.unit_left -= n;
                    data = &data[n..];
                    if self.unit_left == 0 {
                        let got = match self.stage {
                            Stage::Handshake => Got::Handshake,
                            Stage::Bitfield => Got::Bitfield,
                            Stage::Unchoke => Got::Unchoke,
                            Stage::Interested => Got::Interested,
                            Stage::Requests => Got::Request(block_at(self.requested, self.total)),
                            Stage::Pieces => {
                                Got::Piece(*self.outstanding.front().expect("unit_len checked it"))
                            }
                        };
                        self.handle(got)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn handle(&mut self, got: Got) -> Result<(), FlowError> {
        let unexpected = |stage: Stage, what: &str| FlowError::Unexpected {
            expected: stage.name(),
            got: what.to_string(),
        };
        match (self.stage, got) {
            (Stage::Handshake, Got::Handshake) => {
                if !self.handshake_sent {
                    self.push_handshake();
                }
                match self.role {
                    Role::Seeder => {
                        let len = self.bitfield_len();
                        let mut bits = vec![0xFFu8; len];
                        let spare = len as u32 * 8 - self.pieces;
                        if let Some(last) = bits.last_mut() {
                            *last = 0xFFu8 << spare;
                        }
                        match self.kind {
                            FlowKind::BitTorrent => {
                                Message::Bitfield(&bits).encode_into(&mut self.queued)
                            }
                            FlowKind::PlainTcp => {
                                let mut q = std::mem::take(&mut self.queued);
                                self.push_random(&mut q, SHORT_LEN + len);
                                self.queued = q;
                            }
                        }
                        self.stage = Stage::Interested;
                    }
                    Role::Leecher => self.stage = Stage::Bitfield,
                }
            }
            (Stage::Bitfield, Got::Bitfield) => {
                self.push_short(Message::Interested);
                self.stage = Stage::Unchoke;
            }
            (Stage::Unchoke, Got::Unchoke) => {
                self.unchoked = true;
                self.stage = Stage::Pieces;
            }
            (Stage::Interested, Got::Interested) => {
                self.push_short(Message::Unchoke);
                self.stage = Stage::Requests;
            }
            (Stage::Requests, Got::Request(b)) => {
                let offset = u64::from(b.index) * u64::from(PIECE_LEN) + u64::from(b.begin);
                if offset >= self.total || b != block_at(offset, self.total) {
                    return Err(FlowError::BadRequest(format!(
                        "piece {} offset {} length {} is not a block of this torrent",
                        b.index, b.begin, b.length
                    )));
                }
                if self.pending.len() >= MAX_PENDING {
                    return Err(FlowError::BadRequest(format!(
                        "more than {MAX_PENDING} requests unanswered"
                    )));
                }
                self.requested += u64::from(b.length);
                if self.requested > self.total {
                    return Err(FlowError::BadRequest(
                        "more bytes requested than the torrent has".into(),
                    ));
                }
                self.pending.push_back(b);
            }
            (Stage::Pieces, Got::Piece(b)) => match self.outstanding.pop_front() {
                Some(want) if want == b => self.payload_received += u64::from(b.length),
                want => {
                    return Err(FlowError::BadPiece(format!(
                        "piece {} offset {} length {} while {want:?} was the oldest request",
                        b.index, b.begin, b.length
                    )))
                }
            },
            (stage, got) => {
                let what = match got {
                    Got::Handshake => "a handshake",
                    Got::Bitfield => "a bitfield",
                    Got::Unchoke => "unchoke",
                    Got::Interested => "interested",
                    Got::Request(_) => "a request",
                    Got::Piece(_) => "a piece",
                };
                return Err(unexpected(stage, what));
            }
        }
        Ok(())
    }

    fn push_short(&mut self, message: Message<'_>) {
        match self.kind {
            FlowKind::BitTorrent => message.encode_into(&mut self.queued),
            FlowKind::PlainTcp => {
                let mut q = std::mem::take(&mut self.queued);
                self.push_random(&mut q, SHORT_LEN);
                self.queued = q;
            }
        }
    }

    /// The other end closed its sending side. An error when its script was not done.
    pub fn on_eof(&mut self) -> Result<(), FlowError> {
        self.peer_eof = true;
        let partial = match self.kind {
            FlowKind::BitTorrent => !self.reader.pending().is_empty(),
            FlowKind::PlainTcp => self.unit_left != 0,
        };
        if partial {
            return Err(FlowError::ClosedEarly("in the middle of a message"));
        }
        match self.role {
            Role::Seeder if self.stage != Stage::Requests => {
                Err(FlowError::ClosedEarly("before asking for pieces"))
            }
            Role::Leecher if !self.outstanding.is_empty() => {
                Err(FlowError::ClosedEarly("with requests unanswered"))
            }
            Role::Leecher if !self.stopped && self.next_offset < self.total => {
                Err(FlowError::ClosedEarly("before every piece was requested"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs both ends against each other in memory, delivering at most `chunk` bytes at a
    /// time; returns the bytes that went each way.
    fn run_pair(
        kind: FlowKind,
        seeder_initiates: bool,
        total: u64,
        chunk: usize,
        stop_after: Option<usize>,
    ) -> (FlowEndpoint, FlowEndpoint, Vec<u8>, Vec<u8>) {
        let params = |role, initiator| FlowParams {
            kind,
            role,
            initiator,
            payload_bytes: total,
            seed: 42,
        };
        let mut seeder = FlowEndpoint::new(params(Role::Seeder, seeder_initiates));
        let mut leecher = FlowEndpoint::new(params(Role::Leecher, !seeder_initiates));
        let (mut to_leecher, mut to_seeder) = (Vec::new(), Vec::new());
        let (mut s_pos, mut l_pos) = (0, 0);
        let (mut s_shut, mut l_shut) = (false, false);
        for round in 0..1_000_000 {
            if stop_after == Some(round) {
                leecher.stop();
            }
            seeder.poll_transmit(&mut to_leecher, 64 * 1024);
            leecher.poll_transmit(&mut to_seeder, 64 * 1024);
            let mut progressed = false;
            if l_pos < to_seeder.len() {
                let end = (l_pos + chunk).min(to_seeder.len());
                seeder.on_bytes(&to_seeder[l_pos..end]).unwrap();
                l_pos = end;
                progressed = true;
            } else if leecher.send_finished() && !l_shut {
                l_shut = true;
                seeder.on_eof().unwrap();
                progressed = true;
            }
            if s_pos < to_leecher.len() {
                let end = (s_pos + chunk).min(to_leecher.len());
                leecher.on_bytes(&to_leecher[s_pos..end]).unwrap();
                s_pos = end;
                progressed = true;
            } else if seeder.send_finished() && !s_shut {
                s_shut = true;
                leecher.on_eof().unwrap();
                progressed = true;
            }
            if seeder.complete() && leecher.complete() {
                return (seeder, leecher, to_leecher, to_seeder);
            }
            assert!(progressed, "stuck at round {round}");
        }
        panic!("did not finish");
    }

    #[test]
    fn bittorrent_and_plain_tcp_move_the_same_bytes_in_the_same_units() {
        for total in [1, 16_383, 16_384, 300_000, 1_000_000] {
            for chunk in [1, 7, 1500, 1 << 20] {
                if chunk == 1 && total > 20_000 {
                    continue;
                }
                let (s, l, down, up) = run_pair(FlowKind::BitTorrent, false, total, chunk, None);
                assert_eq!(s.payload_sent(), total);
                assert_eq!(l.payload_received(), total);
                let (ts, tl, tdown, tup) = run_pair(FlowKind::PlainTcp, false, total, chunk, None);
                assert_eq!(ts.payload_sent(), total);
                assert_eq!(tl.payload_received(), total);
                assert_eq!((down.len(), up.len()), (tdown.len(), tup.len()));
                // The real flow speaks BitTorrent from its first byte; the twin never does.
                assert_eq!(&up[..20], b"\x13BitTorrent protocol");
                assert_eq!(&down[..20], b"\x13BitTorrent protocol");
                for stream in [&tdown, &tup] {
                    assert!(!stream.windows(19).any(|w| w == b"BitTorrent protocol"));
                }
            }
        }
    }

    #[test]
    fn the_seeder_may_initiate_and_the_real_flow_parses_as_peer_wire() {
        let (_, _, down, up) = run_pair(FlowKind::BitTorrent, true, 600_000, 4096, None);
        let mut reader = MessageReader::default();
        reader.feed(&down);
        assert!(reader.read_handshake().unwrap().is_some());
        let mut names = Vec::new();
        while let Some(m) = reader.read_message().unwrap() {
            names.push(m.name());
        }
        assert_eq!(names[..2], ["bitfield", "unchoke"]);
        assert_eq!(names.iter().filter(|n| **n == "piece").count(), 37);
        let mut reader = MessageReader::default();
        reader.feed(&up);
        assert!(reader.read_handshake().unwrap().is_some());
        let m = reader.read_message().unwrap().unwrap();
        assert_eq!(m.name(), "interested");
    }

    #[test]
    fn a_stopped_leecher_drains_what_it_asked_for_and_both_end_cleanly() {
        for kind in [FlowKind::BitTorrent, FlowKind::PlainTcp] {
            let (s, l, _, _) = run_pair(kind, false, 10_000_000, 1500, Some(200));
            assert!(l.payload_received() < 10_000_000);
            assert!(l.payload_received() > 0);
            assert_eq!(s.payload_sent(), l.payload_received());
        }
    }

    #[test]
    fn broken_peers_are_errors_not_panics() {
        let params = |kind, role| FlowParams {
            kind,
            role,
            initiator: false,
            payload_bytes: 100_000,
            seed: 1,
        };
        // Another protocol on the BitTorrent port.
        let mut s = FlowEndpoint::new(params(FlowKind::BitTorrent, Role::Seeder));
        assert!(matches!(
            s.on_bytes(b"GET / HTTP/1.1\r\n"),
            Err(FlowError::BadHandshake(_))
        ));
        // A handshake of another flow.
        let mut other = FlowEndpoint::new(FlowParams {
            seed: 2,
            initiator: true,
            ..params(FlowKind::BitTorrent, Role::Leecher)
        });
        let mut hs = Vec::new();
        other.poll_transmit(&mut hs, 0);
        let mut s = FlowEndpoint::new(params(FlowKind::BitTorrent, Role::Seeder));
        assert!(matches!(s.on_bytes(&hs), Err(FlowError::BadHandshake(_))));
        // Requests out of range, and a piece nobody asked for.
        let mut leecher = FlowEndpoint::new(FlowParams {
            initiator: true,
            ..params(FlowKind::BitTorrent, Role::Leecher)
        });
        let mut hs = Vec::new();
        leecher.poll_transmit(&mut hs, 0);
        let mut s = FlowEndpoint::new(params(FlowKind::BitTorrent, Role::Seeder));
        s.on_bytes(&hs).unwrap();
        s.on_bytes(&Message::Interested.to_vec()).unwrap();
        let bad = Message::Request(BlockRef {
            index: 9,
            begin: 0,
            length: BLOCK,
        });
        assert!(matches!(
            s.on_bytes(&bad.to_vec()),
            Err(FlowError::BadRequest(_))
        ));
        let mut s2 = FlowEndpoint::new(params(FlowKind::BitTorrent, Role::Seeder));
        s2.on_bytes(&hs).unwrap();
        let piece = Message::Piece {
            index: 0,
            begin: 0,
            block: &[1, 2, 3],
        };
        assert!(matches!(
            s2.on_bytes(&piece.to_vec()),
            Err(FlowError::Unexpected { .. })
        ));
        // Plain TCP: data to a leecher that asked for nothing, and early ends.
        let mut l = FlowEndpoint::new(params(FlowKind::PlainTcp, Role::Leecher));
        l.on_bytes(&[0; 68 + 5 + 1 + 5]).unwrap();
        assert!(matches!(l.on_bytes(&[0; 3]), Err(FlowError::BadPiece(_))));
        let mut l = FlowEndpoint::new(params(FlowKind::PlainTcp, Role::Leecher));
        l.on_bytes(&[0; 30]).unwrap();
        assert!(matches!(l.on_eof(), Err(FlowError::ClosedEarly(_))));
        let mut s = FlowEndpoint::new(params(FlowKind::PlainTcp, Role::Seeder));
        assert!(matches!(s.on_eof(), Err(FlowError::ClosedEarly(_))));
    }

    #[test]
    fn blocks_tile_the_torrent() {
        let total = 3 * u64::from(PIECE_LEN) + 5000;
        let mut offset = 0;
        let mut n = 0;
        while offset < total {
            let b = block_at(offset, total);
            assert!(b.length > 0 && b.length <= BLOCK);
            assert_eq!(
                u64::from(b.index) * u64::from(PIECE_LEN) + u64::from(b.begin),
                offset
            );
            offset += u64::from(b.length);
            n += 1;
        }
        assert_eq!(offset, total);
        assert_eq!(n, 3 * 16 + 1);
    }
}

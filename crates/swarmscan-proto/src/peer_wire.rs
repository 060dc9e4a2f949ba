//! BitTorrent peer wire protocol (BEP 3, fast extension BEP 6, DHT port BEP 5, extension
//! protocol BEP 10), sans-IO.
//!
//! - [`Handshake`]: the fixed 68-byte handshake. A wrong protocol string is reported as
//!   [`WireError::NotBitTorrent`], which is how a probe classifies "unknown protocol".
//! - [`Message`]: every length-prefixed message; [`decode`] borrows from the input and returns
//!   `(message, bytes consumed)` or [`WireError::NeedMore`] so it works on split buffers.
//! - [`MessageReader`]: a framer fed arbitrary chunks that yields handshake and messages.
//! - [`ext`]: the extension handshake, ut_metadata (BEP 9) and ut_pex (BEP 11) payloads.
//! - [`bitfield`]: progress helpers (set bits, spare bits, `have` range checks).
//!
//! A peer's claimed message length is checked against a cap before anything is buffered or
//! allocated, so a 4 GB length prefix is an error, not an allocation.
//!
//! A probe, in short:
//!
//! ```
//! use swarmscan_proto::peer_wire::{self, bitfield, ext, Message, MessageReader, Reserved};
//! let info_hash = [0xab; 20];
//! let mut out =
//!     peer_wire::encode_handshake(&info_hash, b"-SS0001-000000000000", Reserved::PROBE).to_vec();
//! let ours = ext::ExtHandshake { m: vec![(b"ut_pex", 2)], ..Default::default() };
//! out.extend_from_slice(&ours.to_message_bytes());
//! // ... send `out`; feed whatever arrives (here: the same bytes plus a have_all).
//! let mut reader = MessageReader::default();
//! reader.feed(&out);
//! reader.feed(&Message::HaveAll.to_vec());
//! let theirs = reader.read_handshake()?.expect("68 bytes are here");
//! assert!(theirs.info_hash == info_hash && theirs.reserved.extended());
//! let mut seed = false;
//! while let Some(msg) = reader.read_message()? {
//!     match msg {
//!         Message::Extended { ext_id: ext::HANDSHAKE_ID, payload } => {
//!             let h = ext::ExtHandshake::decode(payload).expect("a dictionary");
//!             assert_eq!(h.id_of(ext::UT_PEX), Some(2));
//!         }
//!         Message::HaveAll => seed = true,
//!         Message::Bitfield(bits) => seed = bitfield::summarize(bits, 100).is_ok_and(|s| s.is_complete()),
//!         _ => {}
//!     }
//! }
//! assert!(seed);
//! let port = Message::Port(6881).to_vec(); // then close
//! # assert_eq!(port, [0, 0, 0, 3, 9, 0x1a, 0xe1]);
//! # Ok::<(), peer_wire::WireError>(())
//! ```

pub mod bitfield;
pub mod ext;

use std::fmt;

/// The protocol string every BitTorrent handshake starts with (after its length byte, 19).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Length of a handshake: 1 + 19 + 8 reserved + 20 info-hash + 20 peer-id.
pub const HANDSHAKE_LEN: usize = 68;
/// Default cap on one message's length prefix. A bitfield for 8 million pieces (1 MiB) plus
/// the id byte fits; so does any 16 KiB block with a lot of room to spare.
pub const DEFAULT_MAX_MESSAGE_LEN: u32 = (1 << 20) + 1;

/// Message ids (BEP 3, BEP 5, BEP 6, BEP 10); see [`super::Message`] for their meaning.
pub mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    pub const SUGGEST: u8 = 0x0D;
    pub const HAVE_ALL: u8 = 0x0E;
    pub const HAVE_NONE: u8 = 0x0F;
    pub const REJECT: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
    pub const EXTENDED: u8 = 20;
}

/// What was wrong with peer wire input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not an error in the data: at least this many more bytes are needed.
    #[error("need {0} more bytes")]
    NeedMore(usize),
    /// The handshake does not start with `\x13BitTorrent protocol` (unknown protocol, or an
    /// encrypted stream). `got` is the input up to and including the first wrong byte, at
    /// `offset`; it does not depend on how the input was split.
    #[error(
        "not a BitTorrent handshake: byte {offset} wrong in {}",
        crate::bencode::DebugBytes(got)
    )]
    NotBitTorrent { offset: usize, got: Vec<u8> },
    /// A length prefix larger than the configured cap.
    #[error("message length {len} exceeds the cap of {max} bytes")]
    TooLong { len: u32, max: u32 },
    /// A message whose payload length does not fit its id.
    #[error("{name} message (id {id}) with {len}-byte payload, expected {expected}")]
    BadLength {
        id: u8,
        name: &'static str,
        len: usize,
        expected: &'static str,
    },
}

impl WireError {
    /// True for [`WireError::NeedMore`]: wait for more input rather than failing.
    pub fn is_need_more(&self) -> bool {
        matches!(self, WireError::NeedMore(_))
    }
}

/// The 8 reserved handshake bytes. Named accessors for the bits we use; unknown bits are kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Reserved(pub [u8; 8]);

impl Reserved {
    /// No extensions at all.
    pub const NONE: Reserved = Reserved([0; 8]);
    /// What a probe announces: extension protocol, DHT and fast extension.
    pub const PROBE: Reserved = Reserved([0, 0, 0, 0, 0, 0x10, 0, 0x05]);

    /// BEP 10 extension protocol (reserved[5] & 0x10).
    pub fn extended(self) -> bool {
        self.0[5] & 0x10 != 0
    }
    /// BEP 5 DHT (reserved[7] & 0x01): the peer may send a `port` message.
    pub fn dht(self) -> bool {
        self.0[7] & 0x01 != 0
    }
    /// BEP 6 fast extension (reserved[7] & 0x04): have_all/have_none/reject/...
    pub fn fast(self) -> bool {
        self.0[7] & 0x04 != 0
    }
    /// Copy with the extension protocol bit set or cleared.
    pub fn with_extended(mut self, on: bool) -> Self {
        set_bit(&mut self.0[5], 0x10, on);
        self
    }
    /// Copy with the DHT bit set or cleared.
    pub fn with_dht(mut self, on: bool) -> Self {
        set_bit(&mut self.0[7], 0x01, on);
        self
    }
    /// Copy with the fast extension bit set or cleared.
    pub fn with_fast(mut self, on: bool) -> Self {
        set_bit(&mut self.0[7], 0x04, on);
        self
    }
    /// The reserved bytes with the three named bits cleared: anything else a client set.
    pub fn unknown_bits(self) -> [u8; 8] {
        let mut b = self.0;
        b[5] &= !0x10;
        b[7] &= !0x05;
        b
    }
}

fn set_bit(byte: &mut u8, mask: u8, on: bool) {
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
}

impl fmt::Debug for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Reserved({} ext={} dht={} fast={})",
            crate::hex::encode(&self.0),
            self.extended(),
            self.dht(),
            self.fast()
        )
    }
}

/// A decoded handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Extension bits.
    pub reserved: Reserved,
    /// SHA-1 of the info dictionary (v1) or the truncated SHA-256 (v2) of the torrent.
    pub info_hash: [u8; 20],
    /// The sender's peer-id (client prefix such as `-LT2110-`, then random bytes).
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// The 68 bytes of this handshake.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        encode_handshake(&self.info_hash, &self.peer_id, self.reserved)
    }

    /// Decode a handshake from the start of `buf`; returns it and the bytes used (always 68).
    ///
    /// A wrong first byte or protocol string is reported as soon as the bytes seen so far
    /// disagree, so a non-BitTorrent peer is classified without waiting for 68 bytes.
    pub fn decode(buf: &[u8]) -> Result<(Handshake, usize), WireError> {
        let mut expected = [0u8; 20];
        expected[0] = PROTOCOL.len() as u8;
        expected[1..].copy_from_slice(PROTOCOL);
        if let Some(offset) = buf
            .iter()
            .zip(expected)
            .position(|(got, want)| *got != want)
        {
            return Err(WireError::NotBitTorrent {
                offset,
                got: buf[..=offset].to_vec(),
            });
        }
        if buf.len() < HANDSHAKE_LEN {
            return Err(WireError::NeedMore(HANDSHAKE_LEN - buf.len()));
        }
        let mut h = Handshake {
            reserved: Reserved([0; 8]),
            info_hash: [0; 20],
            peer_id: [0; 20],
        };
        h.reserved.0.copy_from_slice(&buf[20..28]);
        h.info_hash.copy_from_slice(&buf[28..48]);
        h.peer_id.copy_from_slice(&buf[48..68]);
        Ok((h, HANDSHAKE_LEN))
    }
}

/// Encode a handshake: `\x13BitTorrent protocol`, reserved, info-hash, peer-id.
pub fn encode_handshake(
    info_hash: &[u8; 20],
    peer_id: &[u8; 20],
    reserved: Reserved,
) -> [u8; HANDSHAKE_LEN] {
    let mut out = [0u8; HANDSHAKE_LEN];
    out[0] = PROTOCOL.len() as u8;
    out[1..20].copy_from_slice(PROTOCOL);
    out[20..28].copy_from_slice(&reserved.0);
    out[28..48].copy_from_slice(info_hash);
    out[48..68].copy_from_slice(peer_id);
    out
}

/// A block reference: used by request, cancel and reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Piece index.
    pub index: u32,
    /// Byte offset inside the piece.
    pub begin: u32,
    /// Block length in bytes (normally 16 KiB).
    pub length: u32,
}

/// One peer wire message, borrowing variable-length payloads from the decoded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// A zero length prefix: no id, no payload.
    KeepAlive,
    /// The sender will not answer requests.
    Choke,
    /// The sender will answer requests.
    Unchoke,
    /// The sender wants pieces we have.
    Interested,
    /// The sender wants nothing from us.
    NotInterested,
    /// The peer now has this piece.
    Have(u32),
    /// One bit per piece, high bit of the first byte is piece 0 (see [`bitfield`]).
    Bitfield(&'a [u8]),
    /// Please send this block.
    Request(BlockRef),
    /// A block of piece data.
    Piece {
        /// Piece index.
        index: u32,
        /// Byte offset inside the piece.
        begin: u32,
        /// The data.
        block: &'a [u8],
    },
    /// Withdraw an earlier request.
    Cancel(BlockRef),
    /// BEP 5: the peer's DHT node listens on this UDP port.
    Port(u16),
    /// BEP 6: the sender suggests downloading this piece.
    Suggest(u32),
    /// BEP 6: the peer has every piece (a seed).
    HaveAll,
    /// BEP 6: the peer has no piece.
    HaveNone,
    /// BEP 6: the sender will not send this requested block.
    Reject(BlockRef),
    /// BEP 6: this piece may be requested even while choked.
    AllowedFast(u32),
    /// BEP 10: `ext_id` 0 is the extension handshake, others are the ids *we* advertised.
    /// Decode the payload with [`ext`].
    Extended { ext_id: u8, payload: &'a [u8] },
    /// An id this decoder does not know (BEP 52 hash messages, old Azureus ids, ...):
    /// length-checked and skipped, never a fatal error.
    Unknown { id: u8, payload: &'a [u8] },
}

impl<'a> Message<'a> {
    /// The message id, or `None` for a keep-alive.
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => id::CHOKE,
            Message::Unchoke => id::UNCHOKE,
            Message::Interested => id::INTERESTED,
            Message::NotInterested => id::NOT_INTERESTED,
            Message::Have(_) => id::HAVE,
            Message::Bitfield(_) => id::BITFIELD,
            Message::Request(_) => id::REQUEST,
            Message::Piece { .. } => id::PIECE,
            Message::Cancel(_) => id::CANCEL,
            Message::Port(_) => id::PORT,
            Message::Suggest(_) => id::SUGGEST,
            Message::HaveAll => id::HAVE_ALL,
            Message::HaveNone => id::HAVE_NONE,
            Message::Reject(_) => id::REJECT,
            Message::AllowedFast(_) => id::ALLOWED_FAST,
            Message::Extended { .. } => id::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// Short name for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Message::KeepAlive => "keep-alive",
            Message::Unknown { .. } => "unknown",
            m => id_name(m.id().unwrap_or(0)),
        }
    }

    /// Length of the payload after the id byte.
    fn payload_len(&self) -> usize {
        match self {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 0,
            Message::Have(_) | Message::Suggest(_) | Message::AllowedFast(_) => 4,
            Message::Port(_) => 2,
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 12,
            Message::Bitfield(b) => b.len(),
            Message::Piece { block, .. } => 8 + block.len(),
            Message::Extended { payload, .. } => 1 + payload.len(),
            Message::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Total encoded size including the 4-byte length prefix.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::KeepAlive => 4,
            m => 5 + m.payload_len(),
        }
    }

    /// Append the encoded message (length prefix included) to `out`.
    ///
    /// Panics only if a payload is longer than `u32::MAX - 1` bytes, which no caller can
    /// build by accident.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let Some(msg_id) = self.id() else {
            out.extend_from_slice(&0u32.to_be_bytes());
            return;
        };
        let len = u32::try_from(1 + self.payload_len()).expect("message longer than 4 GiB");
        out.reserve(4 + len as usize);
        out.extend_from_slice(&len.to_be_bytes());
        out.push(msg_id);
        match self {
            Message::Have(i) | Message::Suggest(i) | Message::AllowedFast(i) => {
                out.extend_from_slice(&i.to_be_bytes())
            }
            Message::Port(p) => out.extend_from_slice(&p.to_be_bytes()),
            Message::Request(b) | Message::Cancel(b) | Message::Reject(b) => {
                out.extend_from_slice(&b.index.to_be_bytes());
                out.extend_from_slice(&b.begin.to_be_bytes());
                out.extend_from_slice(&b.length.to_be_bytes());
            }
            Message::Bitfield(bits) => out.extend_from_slice(bits),
            Message::Piece {
                index,
                begin,
                block,
            } => {
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&begin.to_be_bytes());
                out.extend_from_slice(block);
            }
            Message::Extended { ext_id, payload } => {
                out.push(*ext_id);
                out.extend_from_slice(payload);
            }
            Message::Unknown { payload, .. } => out.extend_from_slice(payload),
            _ => {}
        }
    }

    /// The encoded message as a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode_into(&mut out);
        out
    }
}

/// Name of a message id ("unknown" for ids this module does not know).
pub fn id_name(msg_id: u8) -> &'static str {
    match msg_id {
        id::CHOKE => "choke",
        id::UNCHOKE => "unchoke",
        id::INTERESTED => "interested",
        id::NOT_INTERESTED => "not interested",
        id::HAVE => "have",
        id::BITFIELD => "bitfield",
        id::REQUEST => "request",
        id::PIECE => "piece",
        id::CANCEL => "cancel",
        id::PORT => "port",
        id::SUGGEST => "suggest",
        id::HAVE_ALL => "have_all",
        id::HAVE_NONE => "have_none",
        id::REJECT => "reject",
        id::ALLOWED_FAST => "allowed_fast",
        id::EXTENDED => "extended",
        _ => "unknown",
    }
}

/// Decode one message from the start of `buf` with the default length cap.
pub fn decode(buf: &[u8]) -> Result<(Message<'_>, usize), WireError> {
    decode_with(buf, DEFAULT_MAX_MESSAGE_LEN)
}

/// Decode one message from the start of `buf`; `max_len` caps the length prefix.
///
/// Returns the message and the bytes it used, [`WireError::NeedMore`] with the exact number
/// of missing bytes, or an error for a length over the cap or a payload of the wrong size.
pub fn decode_with(buf: &[u8], max_len: u32) -> Result<(Message<'_>, usize), WireError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Err(WireError::NeedMore(4 - buf.len()));
    };
    let len = u32::from_be_bytes(*prefix);
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    // len <= max_len <= u32::MAX, and buf.len() bounds the slice; no overflow on 64-bit or
    // 32-bit targets because both sides are compared as usize after the cap check.
    let total = 4usize.saturating_add(len as usize);
    if buf.len() < total {
        return Err(WireError::NeedMore(total - buf.len()));
    }
    if len == 0 {
        return Ok((Message::KeepAlive, 4));
    }
    let msg_id = buf[4];
    let p = &buf[5..total];
    let msg = parse_body(msg_id, p)?;
    Ok((msg, total))
}

fn bad_len(msg_id: u8, len: usize, expected: &'static str) -> WireError {
    WireError::BadLength {
        id: msg_id,
        name: id_name(msg_id),
        len,
        expected,
    }
}

fn be32(p: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

fn parse_body(msg_id: u8, p: &[u8]) -> Result<Message<'_>, WireError> {
    let exact = |n: usize, what: &'static str| {
        if p.len() == n {
            Ok(())
        } else {
            Err(bad_len(msg_id, p.len(), what))
        }
    };
    let block = |p: &[u8]| BlockRef {
        index: be32(p, 0),
        begin: be32(p, 4),
        length: be32(p, 8),
    };
    Ok(match msg_id {
        id::CHOKE => exact(0, "0").map(|_| Message::Choke)?,
        id::UNCHOKE => exact(0, "0").map(|_| Message::Unchoke)?,
        id::INTERESTED => exact(0, "0").map(|_| Message::Interested)?,
        id::NOT_INTERESTED => exact(0, "0").map(|_| Message::NotInterested)?,
        id::HAVE_ALL => exact(0, "0").map(|_| Message::HaveAll)?,
        id::HAVE_NONE => exact(0, "0").map(|_| Message::HaveNone)?,
        id::HAVE => exact(4, "4").map(|_| Message::Have(be32(p, 0)))?,
        id::SUGGEST => exact(4, "4").map(|_| Message::Suggest(be32(p, 0)))?,
        id::ALLOWED_FAST => exact(4, "4").map(|_| Message::AllowedFast(be32(p, 0)))?,
        id::PORT => exact(2, "2").map(|_| Message::Port(u16::from_be_bytes([p[0], p[1]])))?,
        id::REQUEST => exact(12, "12").map(|_| Message::Request(block(p)))?,
        id::CANCEL => exact(12, "12").map(|_| Message::Cancel(block(p)))?,
        id::REJECT => exact(12, "12").map(|_| Message::Reject(block(p)))?,
        id::BITFIELD => Message::Bitfield(p),
        id::PIECE => {
            if p.len() < 8 {
                return Err(bad_len(msg_id, p.len(), "at least 8"));
            }
            Message::Piece {
                index: be32(p, 0),
                begin: be32(p, 4),
                block: &p[8..],
            }
        }
        id::EXTENDED => match p.split_first() {
            Some((&ext_id, payload)) => Message::Extended { ext_id, payload },
            None => return Err(bad_len(msg_id, 0, "at least 1")),
        },
        other => Message::Unknown {
            id: other,
            payload: p,
        },
    })
}

/// A framer for one connection: feed it received chunks of any size, take out the handshake
/// and then messages. Buffers at most one incomplete message (bounded by the length cap).
#[derive(Debug, Clone)]
pub struct MessageReader {
    buf: Vec<u8>,
    start: usize,
    max_len: u32,
}

impl Default for MessageReader {
    fn default() -> Self {
        MessageReader::new(DEFAULT_MAX_MESSAGE_LEN)
    }
}

impl MessageReader {
    /// A reader whose messages may be at most `max_len` bytes (length prefix value).
    pub fn new(max_len: u32) -> Self {
        MessageReader {
            buf: Vec::new(),
            start: 0,
            max_len,
        }
    }

    /// Append received bytes. Take out what is complete (`read_*` until `Ok(None)`) before
    /// feeding again: then the buffer never holds more than one incomplete message (at most
    /// the length cap + 4 bytes) plus the newest chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            // Drop what earlier messages used; the borrow they had ended with `&mut self`.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received but not yet returned as a handshake or message.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Take the handshake if it is complete: `Ok(None)` means feed more.
    pub fn read_handshake(&mut self) -> Result<Option<Handshake>, WireError> {
        match Handshake::decode(&self.buf[self.start..]) {
            Ok((h, used)) => {
                self.start += used;
                Ok(Some(h))
            }
            Err(WireError::NeedMore(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Take the next message if it is complete: `Ok(None)` means feed more.
    pub fn read_message(&mut self) -> Result<Option<Message<'_>>, WireError> {
        match decode_with(&self.buf[self.start..], self.max_len) {
            Ok((m, used)) => {
                self.start += used;
                Ok(Some(m))
            }
            Err(WireError::NeedMore(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests;

//! uTP, the µTorrent transport protocol (BEP 29): a sans-IO codec and connection state
//! machine, for probes over UDP.
//!
//! [`decode`]/[`encode`] handle the 20-byte header and the extension chain (selective ack
//! parsed and emitted, unknown extensions skipped). [`UtpConnection`] is one connection,
//! outgoing ([`UtpConnection::connect`]) or incoming ([`UtpConnection::accept`]): datagrams
//! in through [`UtpConnection::on_datagram`], datagrams out through
//! [`UtpConnection::poll_transmit`], stream bytes through `write`/`read`. The caller owns the
//! socket and the clock: every call that needs time takes `now_us`, a monotonic clock in
//! microseconds (its low 32 bits are the wire timestamp), and randomness (connection id,
//! initial sequence number) is passed in.
//!
//! What is minimal, because a probe sends a few hundred bytes and reads a few kilobytes:
//! congestion control is a fixed window ([`CWND_BYTES`], capped by the peer's advertised
//! window) instead of LEDBAT, there is no path-MTU discovery (payloads stay at
//! [`MAX_PAYLOAD`], which fits an IPv6 minimum MTU), and a lost packet is resent on the
//! retransmission timeout, on three duplicate acks or when a selective ack shows three later
//! packets arrived. Everything on the wire follows BEP 29 as libtorrent reads it: connection
//! ids (the initiator receives on `id` and sends on `id + 1`, the acceptor the reverse),
//! sequence and ack numbers with wrap-around, timestamps and `timestamp_difference`, the
//! receive window, FIN and RESET.
//!
//! Bounds no peer controls: at most [`RECV_BUFFER`] bytes held for the reader (in order plus
//! out of order), at most [`REORDER_PACKETS`] packets ahead of the ack, at most
//! [`SEND_BUFFER`] bytes queued for sending.

use std::collections::VecDeque;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 20;
/// The only protocol version (BEP 29).
pub const VERSION: u8 = 1;
/// Extension type of a selective ack.
pub const EXT_SELECTIVE_ACK: u8 = 1;
/// Most payload bytes in one packet we send: 1280 (IPv6 minimum MTU) − 40 (IPv6) − 8 (UDP)
/// − 20 (uTP header) − 12 (room for a selective ack), so no packet of ours needs fragmenting.
pub const MAX_PAYLOAD: usize = 1200;
/// Bytes we hold for the reader, in order and out of order; the advertised window is what is
/// left of it.
pub const RECV_BUFFER: usize = 64 * 1024;
/// Packets we buffer ahead of the first missing one (libtorrent's minimum is 16).
pub const REORDER_PACKETS: u16 = 64;
/// Bytes `write` accepts before the peer acks some.
pub const SEND_BUFFER: usize = 64 * 1024;
/// Fixed congestion window: bytes in flight at most (further capped by the peer's window).
pub const CWND_BYTES: usize = 8 * MAX_PAYLOAD;
/// Retransmission timeout before the first RTT sample (BEP 29: 1000 ms).
pub const INITIAL_RTO_US: u64 = 1_000_000;
/// Lower bound of the retransmission timeout (BEP 29: 500 ms).
pub const MIN_RTO_US: u64 = 500_000;
/// Upper bound of the retransmission timeout after back-off.
pub const MAX_RTO_US: u64 = 8_000_000;
/// Transmissions of a SYN before the connection counts as timed out.
pub const MAX_SYN_TRANSMISSIONS: u32 = 3;
/// Transmissions of a DATA or FIN packet before the connection counts as timed out (the last
/// timeout expires 0.5 + 1 + 2 + 4 = 7.5 s after the first send at the minimum timeout).
/// libtorrent gives up after three (`utp_num_resends`); we wait one more, and a peer that
/// timed out its side answers nothing, so more would only delay noticing a dead connection.
pub const MAX_TRANSMISSIONS: u32 = 4;
/// Duplicate acks (or later packets selectively acked) that trigger a fast resend.
const FAST_RESEND_THRESHOLD: u32 = 3;

/// Packet type, the high nibble of the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    Data = 0,
    Fin = 1,
    State = 2,
    Reset = 3,
    Syn = 4,
}

impl PacketType {
    pub fn from_u8(value: u8) -> Option<PacketType> {
        Some(match value {
            0 => PacketType::Data,
            1 => PacketType::Fin,
            2 => PacketType::State,
            3 => PacketType::Reset,
            4 => PacketType::Syn,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PacketType::Data => "ST_DATA",
            PacketType::Fin => "ST_FIN",
            PacketType::State => "ST_STATE",
            PacketType::Reset => "ST_RESET",
            PacketType::Syn => "ST_SYN",
        }
    }
}

/// The fixed 20-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub packet_type: PacketType,
    pub conn_id: u16,
    pub timestamp_us: u32,
    pub timestamp_diff_us: u32,
    pub wnd_size: u32,
    pub seq_nr: u16,
    pub ack_nr: u16,
}

/// A decoded datagram, borrowing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet<'a> {
    pub header: Header,
    /// The selective-ack bitmask, if the packet has one: bit `i` (LSB first in each byte) is
    /// packet `ack_nr + 2 + i`.
    pub selective_ack: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

/// Why a datagram is not a uTP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("uTP packet of {0} bytes is shorter than the 20-byte header")]
    TooShort(usize),
    #[error("uTP version {0} (only version 1 exists)")]
    BadVersion(u8),
    #[error("uTP packet type {0} (types are 0 to 4)")]
    BadType(u8),
    #[error("uTP extension header at byte {at} runs past the end of the packet")]
    TruncatedExtension { at: usize },
}

/// Decodes one datagram. Unknown extensions are skipped; a selective ack of any length is
/// returned as found (libtorrent sends multiples of 4 bytes).
pub fn decode(datagram: &[u8]) -> Result<Packet<'_>, DecodeError> {
    if datagram.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(datagram.len()));
    }
    let version = datagram[0] & 0x0f;
    if version != VERSION {
        return Err(DecodeError::BadVersion(version));
    }
    let packet_type =
        PacketType::from_u8(datagram[0] >> 4).ok_or(DecodeError::BadType(datagram[0] >> 4))?;
    let u16_at = |i: usize| u16::from_be_bytes([datagram[i], datagram[i + 1]]);
    let u32_at = |i: usize| {
        u32::from_be_bytes([
            datagram[i],
            datagram[i + 1],
            datagram[i + 2],
            datagram[i + 3],
        ])
    };
    let header = Header {
        packet_type,
        conn_id: u16_at(2),
        timestamp_us: u32_at(4),
        timestamp_diff_us: u32_at(8),
        wnd_size: u32_at(12),
        seq_nr: u16_at(16),
        ack_nr: u16_at(18),
    };
    let mut extension = datagram[1];
    let mut at = HEADER_LEN;
    let mut selective_ack = None;
    // Each step consumes at least two bytes, so the chain ends within the datagram.
    while extension != 0 {
        if at + 2 > datagram.len() {
            return Err(DecodeError::TruncatedExtension { at });
        }
        let next = datagram[at];
        let len = usize::from(datagram[at + 1]);
        let body = datagram
            .get(at + 2..at + 2 + len)
            .ok_or(DecodeError::TruncatedExtension { at })?;
        if extension == EXT_SELECTIVE_ACK && selective_ack.is_none() {
            selective_ack = Some(body);
        }
        at += 2 + len;
        extension = next;
    }
    Ok(Packet {
        header,
        selective_ack,
        payload: &datagram[at..],
    })
}

/// Appends one packet to `out`. A selective ack longer than 255 bytes is cut (the length
/// field is one byte).
pub fn encode(header: &Header, selective_ack: Option<&[u8]>, payload: &[u8], out: &mut Vec<u8>) {
    let selective_ack = selective_ack.map(|s| &s[..s.len().min(255)]);
    out.push(((header.packet_type as u8) << 4) | VERSION);
    out.push(if selective_ack.is_some() {
        EXT_SELECTIVE_ACK
    } else {
        0
    });
    out.extend_from_slice(&header.conn_id.to_be_bytes());
    out.extend_from_slice(&header.timestamp_us.to_be_bytes());
    out.extend_from_slice(&header.timestamp_diff_us.to_be_bytes());
    out.extend_from_slice(&header.wnd_size.to_be_bytes());
    out.extend_from_slice(&header.seq_nr.to_be_bytes());
    out.extend_from_slice(&header.ack_nr.to_be_bytes());
    if let Some(mask) = selective_ack {
        out.push(0); // no further extension
        out.push(mask.len() as u8);
        out.extend_from_slice(mask);
    }
    out.extend_from_slice(payload);
}

/// For a UDP socket shared with KRPC (bencoded, first byte `d`) and UDP trackers (first
/// byte 0, the high byte of the action): the packet type and connection id if `datagram`
/// has a valid uTP header (version 1, known type, well-formed extension chain), else `None`.
/// A SYN's id is the initiator's receive id; any other packet's id is the receiver's.
pub fn looks_like_utp(datagram: &[u8]) -> Option<(PacketType, u16)> {
    decode(datagram)
        .ok()
        .map(|p| (p.header.packet_type, p.header.conn_id))
}

/// A RESET for a packet that matches no connection (what libtorrent sends back), or `None`
/// for packets that get no answer (not uTP, a RESET itself, or a SYN, which the caller
/// answers by accepting or ignoring).
pub fn reset_for_unknown(datagram: &[u8], seq_nr: u16, now_us: u64) -> Option<Vec<u8>> {
    let packet = decode(datagram).ok()?;
    let h = packet.header;
    if matches!(h.packet_type, PacketType::Reset | PacketType::Syn) {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN);
    encode(
        &Header {
            packet_type: PacketType::Reset,
            conn_id: h.conn_id,
            timestamp_us: now_us as u32,
            timestamp_diff_us: (now_us as u32).wrapping_sub(h.timestamp_us),
            wnd_size: 0,
            seq_nr,
            ack_nr: h.seq_nr,
        },
        None,
        &[],
        &mut out,
    );
    Some(out)
}

/// `a` comes before `b` in wrapping 16-bit sequence space.
pub fn seq_before(a: u16, b: u16) -> bool {
    (b.wrapping_sub(a) as i16) > 0
}

/// Which end opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Acceptor,
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// SYN sent, waiting for the acceptor's ack.
    SynSent,
    /// Acceptor: SYN answered, waiting for the initiator's first packet, which shows our
    /// STATE arrived. Writes are queued until then: data sent earlier could reach the
    /// initiator before the STATE, and it would take that packet's number as the first.
    SynReceived,
    /// Data flows both ways (possibly after one or both sides sent FIN).
    Connected,
    /// Nothing more is sent or accepted.
    Closed(CloseReason),
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Both FINs sent and acked: a clean close.
    Finished,
    /// The peer sent RESET.
    Reset,
    /// A packet went unacked through all its transmissions (a SYN: nobody answered).
    TimedOut,
    /// We aborted with [`UtpConnection::reset`].
    Aborted,
}

/// Why [`UtpConnection::on_datagram`] ignored a datagram. Nothing changes in the connection;
/// the caller may count these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("uTP packet for connection id {got}, this connection receives on {expected}")]
    WrongConnection { got: u16, expected: u16 },
    #[error("uTP packet acks {ack_nr}, but the last packet sent was {last_sent}")]
    AckAhead { ack_nr: u16, last_sent: u16 },
    #[error("uTP {0} unexpected in this state")]
    Unexpected(&'static str),
    #[error("uTP packet {seq_nr} is beyond the reorder window (acked up to {ack_nr})")]
    BeyondWindow { seq_nr: u16, ack_nr: u16 },
    #[error("uTP payload after the peer's FIN")]
    AfterFin,
}

/// A packet we sent and the peer has not acked yet.
#[derive(Debug, Clone)]
struct Outgoing {
    seq_nr: u16,
    packet_type: PacketType,
    payload: Vec<u8>,
    sent_at_us: u64,
    transmissions: u32,
    need_resend: bool,
    /// Selectively acked; dropped once the cumulative ack passes it.
    acked: bool,
}

/// A received packet waiting for the ones before it.
#[derive(Debug, Clone)]
struct Incoming {
    payload: Vec<u8>,
    fin: bool,
}

/// One uTP connection, either side. See the module documentation for the call pattern:
/// after `on_datagram`, `write`, `read` or `close`, and when [`next_timeout`] is reached,
/// call [`poll_transmit`] until it returns `None`.
///
/// [`next_timeout`]: UtpConnection::next_timeout
/// [`poll_transmit`]: UtpConnection::poll_transmit
#[derive(Debug, Clone)]
pub struct UtpConnection {
    role: Role,
    state: State,
    recv_id: u16,
    send_id: u16,
    /// Sequence number of the next packet we send (STATE packets carry it unconsumed).
    seq_nr: u16,
    /// Last packet received in order.
    ack_nr: u16,
    /// The SYN's sequence number: ours as initiator, the peer's as acceptor.
    syn_seq: u16,

    send_queue: VecDeque<u8>,
    in_flight: VecDeque<Outgoing>,
    fin_wanted: bool,
    fin_sent: bool,
    peer_wnd: u32,
    duplicate_acks: u32,
    /// The sequence number last fast-resent, so one loss costs one fast resend.
    fast_resent: Option<u16>,

    rtt_us: Option<u64>,
    rtt_var_us: u64,
    rto_us: u64,
    timeout_at: Option<u64>,

    /// Our receive time minus the peer's timestamp, of the last packet: the delay sample
    /// the peer's congestion control reads from our `timestamp_difference`.
    reply_micro: u32,
    readable: Vec<u8>,
    /// Slot `i` holds packet `ack_nr + 1 + i`; slot 0 is empty between calls (it would have
    /// been delivered).
    reorder: VecDeque<Option<Incoming>>,
    reorder_bytes: usize,
    /// Sequence number of the peer's FIN, once seen.
    peer_fin_seq: Option<u16>,
    peer_eof: bool,
    ack_owed: bool,
    /// Acceptor: the initiator resent its SYN, so it missed our STATE; answer again.
    syn_ack_owed: bool,
    /// The window we advertised last, to send an update when reading reopens it.
    advertised_wnd: u32,
}

impl UtpConnection {
    fn new(role: Role, recv_id: u16, send_id: u16, seq_nr: u16, ack_nr: u16) -> Self {
        UtpConnection {
            role,
            state: State::SynSent,
            recv_id,
            send_id,
            seq_nr,
            ack_nr,
            syn_seq: 0,
            send_queue: VecDeque::new(),
            in_flight: VecDeque::new(),
            fin_wanted: false,
            fin_sent: false,
            peer_wnd: 0,
            duplicate_acks: 0,
            fast_resent: None,
            rtt_us: None,
            rtt_var_us: 0,
            rto_us: INITIAL_RTO_US,
            timeout_at: None,
            reply_micro: 0,
            readable: Vec::new(),
            reorder: VecDeque::new(),
            reorder_bytes: 0,
            peer_fin_seq: None,
            peer_eof: false,
            ack_owed: false,
            syn_ack_owed: false,
            advertised_wnd: RECV_BUFFER as u32,
        }
    }

    /// Opens an outgoing connection: receives on `conn_id`, sends on `conn_id + 1`, and the
    /// SYN (returned, to be sent now) carries `initial_seq`. The SYN is retransmitted by
    /// `poll_transmit` until acked or [`MAX_SYN_TRANSMISSIONS`] are spent.
    pub fn connect(conn_id: u16, initial_seq: u16, now_us: u64) -> (Self, Vec<u8>) {
        let mut conn = UtpConnection::new(
            Role::Initiator,
            conn_id,
            conn_id.wrapping_add(1),
            initial_seq,
            0,
        );
        conn.syn_seq = initial_seq;
        let syn = conn.queue_packet(PacketType::Syn, Vec::new(), now_us);
        (conn, syn)
    }

    /// Accepts an incoming SYN: receives on its id + 1, sends on its id, and answers with the
    /// returned STATE (to be sent now), whose sequence number `initial_seq` is that of our
    /// first data packet. A retransmitted SYN (same id and sequence number) later given to
    /// [`on_datagram`](Self::on_datagram) is answered again; the caller's demultiplexer
    /// routes a SYN to this connection when one exists with `recv_id == syn id + 1` for the
    /// same address.
    pub fn accept(
        syn: &[u8],
        initial_seq: u16,
        now_us: u64,
    ) -> Result<(Self, Vec<u8>), PacketError> {
        let packet = decode(syn)?;
        let h = packet.header;
        if h.packet_type != PacketType::Syn {
            return Err(PacketError::Unexpected(h.packet_type.name()));
        }
        let mut conn = UtpConnection::new(
            Role::Acceptor,
            h.conn_id.wrapping_add(1),
            h.conn_id,
            initial_seq,
            h.seq_nr,
        );
        conn.syn_seq = h.seq_nr;
        conn.state = State::SynReceived;
        conn.peer_wnd = h.wnd_size;
        conn.note_timestamp(h.timestamp_us, now_us);
        let state = conn.build(PacketType::State, conn.seq_nr, &[], now_us);
        Ok((conn, state))
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed(_))
    }

    /// The connection id packets to us carry.
    pub fn recv_id(&self) -> u16 {
        self.recv_id
    }

    /// The connection id our packets carry (a SYN carries [`recv_id`](Self::recv_id)).
    pub fn send_id(&self) -> u16 {
        self.send_id
    }

    /// The peer sent FIN and everything before it was read: no more bytes will come.
    pub fn is_eof(&self) -> bool {
        self.peer_eof && self.readable.is_empty()
    }

    /// Our FIN was sent and it and everything before it acked (a selective ack of the FIN
    /// alone does not count: data before it may still need resending).
    pub fn fin_acked(&self) -> bool {
        self.fin_sent && self.in_flight.is_empty()
    }

    /// Smoothed round-trip time, once a packet sent once was acked.
    pub fn rtt_us(&self) -> Option<u64> {
        self.rtt_us
    }

    /// Current retransmission timeout.
    pub fn rto_us(&self) -> u64 {
        self.rto_us
    }

    /// Bytes written but not yet acked (queued or in flight).
    pub fn unacked_bytes(&self) -> usize {
        self.send_queue.len()
            + self
                .in_flight
                .iter()
                .filter(|p| !p.acked)
                .map(|p| p.payload.len())
                .sum::<usize>()
    }

    /// Bytes ready for [`read`](Self::read).
    pub fn readable_len(&self) -> usize {
        self.readable.len()
    }

    /// When `poll_transmit` must next be called even if nothing arrives (the retransmission
    /// timer), or `None` when nothing waits on time.
    pub fn next_timeout(&self) -> Option<u64> {
        if self.is_closed() {
            None
        } else {
            self.timeout_at
        }
    }

    /// Queues stream bytes; returns how many were taken (fewer when the send buffer, which
    /// holds queued and in-flight bytes, is full; none after `close` or once closed).
    pub fn write(&mut self, data: &[u8]) -> usize {
        if self.is_closed() || self.fin_wanted {
            return 0;
        }
        let n = data
            .len()
            .min(SEND_BUFFER.saturating_sub(self.unacked_bytes()));
        self.send_queue.extend(&data[..n]);
        n
    }

    /// Appends the bytes received in order to `out`; returns how many.
    pub fn read(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.readable.len();
        out.append(&mut self.readable);
        // A window we had shut (or nearly) is open again: tell the peer, or it waits for a
        // timeout to probe it.
        if n > 0 && (self.advertised_wnd as usize) < MAX_PAYLOAD && !self.is_closed() {
            self.ack_owed = true;
        }
        n
    }

    /// Sends FIN once everything written is sent. Reading goes on until the peer's FIN.
    pub fn close(&mut self) {
        self.fin_wanted = true;
    }

    /// Aborts: returns the RESET to send (nothing if already closed) and closes.
    pub fn reset(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.is_closed() {
            return None;
        }
        let reset = self.build(PacketType::Reset, self.seq_nr, &[], now_us);
        self.state = State::Closed(CloseReason::Aborted);
        Some(reset)
    }

    fn free_window(&self) -> u32 {
        RECV_BUFFER.saturating_sub(self.readable.len() + self.reorder_bytes) as u32
    }

    fn note_timestamp(&mut self, timestamp_us: u32, now_us: u64) {
        // libtorrent treats 0 as "no timestamp" too.
        if timestamp_us != 0 {
            self.reply_micro = (now_us as u32).wrapping_sub(timestamp_us);
        }
    }

    /// The selective-ack bitmask for what waits in the reorder buffer, in whole 4-byte words
    /// (BEP 29).
    fn selective_ack(&self) -> Option<Vec<u8>> {
        // Bit 0 is packet `ack_nr + 2`, slot 1.
        let last = self
            .reorder
            .iter()
            .rposition(Option::is_some)?
            .checked_sub(1)?;
        let bytes = (last / 32 + 1) * 4;
        let mut mask = vec![0u8; bytes];
        for (i, slot) in self.reorder.iter().skip(1).enumerate() {
            if slot.is_some() {
                mask[i / 8] |= 1 << (i % 8);
            }
        }
        Some(mask)
    }

    fn build(
        &mut self,
        packet_type: PacketType,
        seq_nr: u16,
        payload: &[u8],
        now_us: u64,
    ) -> Vec<u8> {
        let wnd_size = self.free_window();
        self.advertised_wnd = wnd_size;
        let sack = self.selective_ack();
        let header = Header {
            packet_type,
            conn_id: if packet_type == PacketType::Syn {
                self.recv_id
            } else {
                self.send_id
            },
            timestamp_us: now_us as u32,
            timestamp_diff_us: self.reply_micro,
            wnd_size,
            seq_nr,
            ack_nr: if packet_type == PacketType::Syn {
                0
            } else {
                self.ack_nr
            },
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 2 + 8);
        encode(&header, sack.as_deref(), payload, &mut out);
        // Every packet carries the ack.
        self.ack_owed = false;
        out
    }

    /// Puts a sequenced packet (SYN, DATA, FIN) in flight and returns its first transmission.
    fn queue_packet(&mut self, packet_type: PacketType, payload: Vec<u8>, now_us: u64) -> Vec<u8> {
        let seq_nr = self.seq_nr;
        self.seq_nr = self.seq_nr.wrapping_add(1);
        let datagram = self.build(packet_type, seq_nr, &payload, now_us);
        self.in_flight.push_back(Outgoing {
            seq_nr,
            packet_type,
            payload,
            sent_at_us: now_us,
            transmissions: 1,
            need_resend: false,
            acked: false,
        });
        if self.timeout_at.is_none() {
            self.timeout_at = Some(now_us + self.rto_us);
        }
        datagram
    }

    fn bytes_in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .filter(|p| !p.acked)
            .map(|p| p.payload.len())
            .sum()
    }

    fn rtt_sample(&mut self, sample_us: u64) {
        match self.rtt_us {
            None => {
                self.rtt_us = Some(sample_us);
                self.rtt_var_us = sample_us / 2;
            }
            Some(rtt) => {
                let delta = rtt.abs_diff(sample_us);
                self.rtt_var_us = (self.rtt_var_us * 3 + delta) / 4;
                self.rtt_us = Some((rtt * 7 + sample_us) / 8);
            }
        }
        let rtt = self.rtt_us.unwrap_or(sample_us);
        self.rto_us = (rtt + 4 * self.rtt_var_us).clamp(MIN_RTO_US, MAX_RTO_US);
    }

    /// Marks `p` acked; an RTT sample only from packets sent once (Karn).
    fn ack_one(&mut self, index: usize, now_us: u64) {
        let p = &mut self.in_flight[index];
        if p.acked {
            return;
        }
        p.acked = true;
        let sample = (p.transmissions == 1).then(|| now_us.saturating_sub(p.sent_at_us));
        if let Some(sample) = sample {
            self.rtt_sample(sample);
        }
    }

    /// Feeds one datagram from the peer. An `Err` means it was ignored (not uTP, another
    /// connection's, or not acceptable now); the connection is unchanged then.
    pub fn on_datagram(&mut self, datagram: &[u8], now_us: u64) -> Result<(), PacketError> {
        let packet = decode(datagram)?;
        let h = packet.header;
        if self.is_closed() {
            // After a clean close, keep acking what the peer resends (our last ack may have
            // been lost), as TCP's TIME_WAIT would; the caller decides how long to linger.
            if self.state == State::Closed(CloseReason::Finished)
                && matches!(h.packet_type, PacketType::Fin | PacketType::Data)
                && h.conn_id == self.recv_id
            {
                self.ack_owed = true;
            }
            return Ok(());
        }
        match h.packet_type {
            PacketType::Syn => {
                // Only a retransmitted SYN of the connection we accepted: our STATE was lost.
                if self.role == Role::Acceptor
                    && h.conn_id == self.send_id
                    && h.seq_nr == self.syn_seq
                {
                    self.syn_ack_owed = true;
                    return Ok(());
                }
                return Err(PacketError::Unexpected("ST_SYN"));
            }
            PacketType::Reset => {
                // libutp sends RESET on either id; libtorrent on ours.
                if h.conn_id != self.recv_id && h.conn_id != self.send_id {
                    return Err(PacketError::WrongConnection {
                        got: h.conn_id,
                        expected: self.recv_id,
                    });
                }
                self.state = State::Closed(CloseReason::Reset);
                self.timeout_at = None;
                return Ok(());
            }
            _ => {}
        }
        if h.conn_id != self.recv_id {
            return Err(PacketError::WrongConnection {
                got: h.conn_id,
                expected: self.recv_id,
            });
        }
        let last_sent = self.seq_nr.wrapping_sub(1);
        if seq_before(last_sent, h.ack_nr) {
            return Err(PacketError::AckAhead {
                ack_nr: h.ack_nr,
                last_sent,
            });
        }
        let carries_sequence = matches!(h.packet_type, PacketType::Data | PacketType::Fin);
        // The acceptor's STATE carries the sequence number of its first data packet.
        let ack_nr = if self.state == State::SynSent {
            if h.ack_nr != self.syn_seq {
                return Err(PacketError::Unexpected("packet not acking our SYN"));
            }
            h.seq_nr.wrapping_sub(1)
        } else {
            self.ack_nr
        };
        if carries_sequence {
            if let Some(fin) = self.peer_fin_seq {
                if seq_before(fin, h.seq_nr) {
                    return Err(PacketError::AfterFin);
                }
            }
            let ahead = h.seq_nr.wrapping_sub(ack_nr);
            if ahead < 0x8000 && ahead > REORDER_PACKETS {
                return Err(PacketError::BeyondWindow {
                    seq_nr: h.seq_nr,
                    ack_nr,
                });
            }
        }
        // Accepted: from here on the packet counts.
        self.ack_nr = ack_nr;
        if matches!(self.state, State::SynSent | State::SynReceived) {
            self.state = State::Connected;
        }

        self.note_timestamp(h.timestamp_us, now_us);
        self.peer_wnd = h.wnd_size;
        self.process_acks(&packet, now_us);
        if carries_sequence {
            self.receive(h.packet_type, h.seq_nr, packet.payload);
        }
        if self.peer_eof && self.fin_acked() {
            self.state = State::Closed(CloseReason::Finished);
            self.timeout_at = None;
        }
        Ok(())
    }

    fn process_acks(&mut self, packet: &Packet<'_>, now_us: u64) {
        let h = &packet.header;
        let ack = h.ack_nr;
        let mut progress = false;
        let oldest_unacked = self.in_flight.iter().find(|p| !p.acked).map(|p| p.seq_nr);
        for i in 0..self.in_flight.len() {
            if seq_before(ack, self.in_flight[i].seq_nr) {
                break;
            }
            progress |= !self.in_flight[i].acked;
            self.ack_one(i, now_us);
        }
        let mut acked_after_gap = 0;
        if let Some(mask) = packet.selective_ack {
            for (byte_index, byte) in mask.iter().enumerate() {
                for bit in 0..8 {
                    if byte & (1 << bit) == 0 {
                        continue;
                    }
                    let seq = ack
                        .wrapping_add(2)
                        .wrapping_add((byte_index * 8 + bit) as u16);
                    if let Some(i) = self.in_flight.iter().position(|p| p.seq_nr == seq) {
                        progress |= !self.in_flight[i].acked;
                        self.ack_one(i, now_us);
                        acked_after_gap += 1;
                    }
                }
            }
        }
        while self.in_flight.front().is_some_and(|p| p.acked) {
            self.in_flight.pop_front();
        }
        // Duplicate acks: a STATE acking nothing new while we wait for acks.
        if h.packet_type == PacketType::State
            && !progress
            && oldest_unacked.is_some_and(|s| s == ack.wrapping_add(1))
        {
            self.duplicate_acks += 1;
        } else if progress {
            self.duplicate_acks = 0;
        }
        if self.duplicate_acks >= FAST_RESEND_THRESHOLD || acked_after_gap >= FAST_RESEND_THRESHOLD
        {
            let first = ack.wrapping_add(1);
            if self.fast_resent != Some(first) {
                if let Some(p) = self
                    .in_flight
                    .iter_mut()
                    .find(|p| p.seq_nr == first && !p.acked)
                {
                    p.need_resend = true;
                    self.fast_resent = Some(first);
                }
            }
        }
        if progress {
            self.timeout_at = (!self.in_flight.is_empty()).then_some(now_us + self.rto_us);
        }
    }

    fn receive(&mut self, packet_type: PacketType, seq_nr: u16, payload: &[u8]) {
        // Whatever happens, the peer learns our ack and window.
        self.ack_owed = true;
        let ahead = seq_nr.wrapping_sub(self.ack_nr);
        if ahead == 0 || ahead >= 0x8000 {
            return; // a duplicate
        }
        let fin = packet_type == PacketType::Fin;
        if payload.len() > self.free_window() as usize {
            return; // no room: the peer resends once we advertise space again
        }
        let slot = usize::from(ahead - 1);
        if self.reorder.len() <= slot {
            self.reorder.resize(slot + 1, None);
        }
        if self.reorder[slot].is_some() {
            return; // a duplicate out-of-order packet
        }
        if fin && self.peer_fin_seq.is_none() {
            self.peer_fin_seq = Some(seq_nr);
        }
        self.reorder_bytes += payload.len();
        self.reorder[slot] = Some(Incoming {
            payload: payload.to_vec(),
            fin,
        });
        while let Some(Some(_)) = self.reorder.front() {
            let Some(Some(incoming)) = self.reorder.pop_front() else {
                break;
            };
            self.ack_nr = self.ack_nr.wrapping_add(1);
            self.reorder_bytes -= incoming.payload.len();
            self.readable.extend_from_slice(&incoming.payload);
            if incoming.fin {
                self.peer_eof = true;
                self.reorder.clear();
                self.reorder_bytes = 0;
                break;
            }
        }
    }

    /// The next datagram to send, if any: a due retransmission, new data within the window,
    /// our FIN, or an ack we owe. Also runs the retransmission timer: at [`next_timeout`]
    /// the oldest unacked packet is resent with the timeout doubled, and when it has been
    /// sent its allowed number of times the connection closes as timed out.
    ///
    /// [`next_timeout`]: Self::next_timeout
    pub fn poll_transmit(&mut self, now_us: u64) -> Option<Vec<u8>> {
        if self.is_closed() {
            if self.state == State::Closed(CloseReason::Finished) && self.ack_owed {
                return Some(self.build(PacketType::State, self.seq_nr, &[], now_us));
            }
            return None;
        }
        if self.syn_ack_owed {
            self.syn_ack_owed = false;
            // The initiator takes this sequence number for our first data packet, so it
            // is the oldest one not yet acked.
            let seq_nr = self.in_flight.front().map_or(self.seq_nr, |p| p.seq_nr);
            return Some(self.build(PacketType::State, seq_nr, &[], now_us));
        }
        if let Some(deadline) = self.timeout_at {
            if now_us >= deadline {
                self.on_timeout(now_us);
                if self.is_closed() {
                    return None;
                }
            }
        }
        if let Some(i) = self
            .in_flight
            .iter()
            .position(|p| p.need_resend && !p.acked)
        {
            let (packet_type, seq_nr, payload) = {
                let p = &mut self.in_flight[i];
                p.need_resend = false;
                p.transmissions += 1;
                p.sent_at_us = now_us;
                (p.packet_type, p.seq_nr, std::mem::take(&mut p.payload))
            };
            let datagram = self.build(packet_type, seq_nr, &payload, now_us);
            self.in_flight[i].payload = payload;
            return Some(datagram);
        }
        if self.state != State::Connected {
            return None;
        }
        if !self.fin_sent && !self.send_queue.is_empty() {
            let in_flight = self.bytes_in_flight();
            let window = CWND_BYTES.min(self.peer_wnd as usize);
            // With nothing in flight one packet always goes, so a zero window is probed.
            let room = if in_flight == 0 {
                MAX_PAYLOAD
            } else {
                window.saturating_sub(in_flight)
            };
            let n = room.min(MAX_PAYLOAD).min(self.send_queue.len());
            if n > 0 {
                let payload: Vec<u8> = self.send_queue.drain(..n).collect();
                return Some(self.queue_packet(PacketType::Data, payload, now_us));
            }
        }
        if self.fin_wanted && !self.fin_sent && self.send_queue.is_empty() {
            self.fin_sent = true;
            return Some(self.queue_packet(PacketType::Fin, Vec::new(), now_us));
        }
        if self.ack_owed {
            return Some(self.build(PacketType::State, self.seq_nr, &[], now_us));
        }
        None
    }

    fn on_timeout(&mut self, now_us: u64) {
        let Some(oldest) = self.in_flight.iter_mut().find(|p| !p.acked) else {
            self.timeout_at = None;
            return;
        };
        let limit = if oldest.packet_type == PacketType::Syn {
            MAX_SYN_TRANSMISSIONS
        } else {
            MAX_TRANSMISSIONS
        };
        if oldest.transmissions >= limit {
            self.state = State::Closed(CloseReason::TimedOut);
            self.timeout_at = None;
            return;
        }
        oldest.need_resend = true;
        self.rto_us = (self.rto_us * 2).min(MAX_RTO_US);
        self.timeout_at = Some(now_us + self.rto_us);
    }
}

#[cfg(test)]
mod tests;

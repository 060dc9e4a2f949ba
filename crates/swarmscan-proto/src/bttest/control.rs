//! The bttest control protocol: length-framed messages on one TCP connection from the
//! client to the server's control address.
//!
//! A frame is a 4-byte big-endian length (of what follows, at most [`MAX_FRAME`]), a 1-byte
//! message type and the message's fields (integers big-endian, strings and lists with a
//! 2-byte count). A test goes:
//!
//! ```text
//! client                               server
//! Hello {version, test_id}        →
//!                                 ←    Welcome {version, ports, limits} | Refuse {reason}
//! Schedule {bytes, ms, flows}     →
//!                                 ←    Ready {index: 0xFFFF} | Refuse {reason}
//! for each flow i:
//!   Start {i, seed}               →
//!                                 ←    Ready {i}
//!   (the flow on a test port; each side, when its end is over:)
//!   FlowEnd {i}                   ↔    FlowEnd {i}
//! Results {client's reports}      →
//!                                 ←    Results {server's reports}
//! Bye                             →
//! ```
//!
//! `Hello` keeps its first two fields in every version, so a server can always read the
//! version and refuse a client it does not speak with a message that says so.

use std::fmt;

/// The protocol version this build speaks.
pub const VERSION: u16 = 1;
/// Longest frame body (type + fields), bytes.
pub const MAX_FRAME: usize = 64 * 1024;
/// Most flows in one schedule.
pub const MAX_FLOWS: usize = 8 * 100;
/// Longest string field (a refusal reason, a flow's error detail), bytes.
pub const MAX_TEXT: usize = 1024;

/// What a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FlowKind {
    /// A real BitTorrent transfer.
    BitTorrent,
    /// The same byte counts, every byte random.
    PlainTcp,
}

impl FlowKind {
    /// Short name used in tables, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowKind::BitTorrent => "bittorrent",
            FlowKind::PlainTcp => "tcp",
        }
    }
}

/// Which way the payload goes, seen from the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// Client to server (the client seeds).
    Upload,
    /// Server to client (the server seeds).
    Download,
}

impl Direction {
    /// Short name used in tables, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

/// One scheduled flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowSpec {
    /// BitTorrent or plain TCP.
    pub kind: FlowKind,
    /// Upload or download.
    pub direction: Direction,
    /// The server's test port the client connects to.
    pub port: u16,
}

/// How one side's end of a flow ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowOutcome {
    /// Every byte moved and both ends closed cleanly.
    Complete,
    /// The flow's time ran out first; what moved until then moved cleanly.
    TimeCapped,
    /// The connection was reset (ECONNRESET, EPIPE, or a connect answered by a reset).
    Reset,
    /// The other side said its end was over and ours made no further progress.
    Abandoned,
    /// No progress until the hard deadline (or a connect that timed out).
    Stalled,
    /// The other end sent something the flow's script does not allow.
    ProtocolError,
    /// Any other socket error.
    Error,
}

impl FlowOutcome {
    /// Short name used in tables, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowOutcome::Complete => "complete",
            FlowOutcome::TimeCapped => "time_capped",
            FlowOutcome::Reset => "reset",
            FlowOutcome::Abandoned => "abandoned",
            FlowOutcome::Stalled => "stalled",
            FlowOutcome::ProtocolError => "protocol_error",
            FlowOutcome::Error => "error",
        }
    }

    fn code(self) -> u8 {
        match self {
            FlowOutcome::Complete => 0,
            FlowOutcome::TimeCapped => 1,
            FlowOutcome::Reset => 2,
            FlowOutcome::Abandoned => 3,
            FlowOutcome::Stalled => 4,
            FlowOutcome::ProtocolError => 5,
            FlowOutcome::Error => 6,
        }
    }

    fn from_code(code: u8) -> Option<FlowOutcome> {
        Some(match code {
            0 => FlowOutcome::Complete,
            1 => FlowOutcome::TimeCapped,
            2 => FlowOutcome::Reset,
            3 => FlowOutcome::Abandoned,
            4 => FlowOutcome::Stalled,
            5 => FlowOutcome::ProtocolError,
            6 => FlowOutcome::Error,
            _ => return None,
        })
    }
}

/// What one side measured of one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowReport {
    /// The flow's index in the schedule.
    pub index: u16,
    /// Payload (piece block) bytes this side received.
    pub payload_received: u64,
    /// Payload bytes this side sent.
    pub payload_sent: u64,
    /// Microseconds from connect (or accept) to the end of this side's flow.
    pub duration_us: u64,
    /// Resets this side caused (closing with unread data, an abortive close).
    pub rst_sent: u32,
    /// Resets this side saw that it did not cause (ECONNRESET/EPIPE/refused connect).
    pub rst_seen: u32,
    /// How it ended.
    pub outcome: FlowOutcome,
    /// The error, when there was one ("" otherwise).
    pub detail: String,
}

/// One control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// Client → server: the first message.
    Hello {
        /// The client's protocol version.
        version: u16,
        /// Random identifier of this test (both sides log it).
        test_id: u64,
    },
    /// Server → client: the test may go ahead.
    Welcome {
        /// The server's protocol version.
        version: u16,
        /// The test ports: the well-known BitTorrent port first, then the other one.
        ports: [u16; 2],
        /// Most payload bytes per flow the server accepts.
        max_flow_bytes: u64,
        /// Longest flow the server accepts, ms.
        max_flow_ms: u32,
    },
    /// Either way: the test cannot go on, and why.
    Refuse {
        /// A sentence for the user.
        reason: String,
    },
    /// Client → server: the flows to run, in order.
    Schedule {
        /// Payload bytes of every flow.
        flow_bytes: u64,
        /// Time cap of every flow, ms (the receiving end stops requesting then).
        flow_ms: u32,
        /// The flows.
        flows: Vec<FlowSpec>,
    },
    /// Client → server: about to connect for flow `index`; `seed` drives its random bytes.
    Start {
        /// Flow index in the schedule.
        index: u16,
        /// Seed of the flow's [`super::Rng`]s.
        seed: u64,
    },
    /// Server → client: ready for flow `index` (0xFFFF: the schedule is accepted).
    Ready {
        /// Flow index.
        index: u16,
    },
    /// Either way: this side's end of flow `index` is over.
    FlowEnd {
        /// Flow index.
        index: u16,
    },
    /// Either way, at the end: this side's report of every flow.
    Results {
        /// One report per flow run.
        reports: Vec<FlowReport>,
    },
    /// Client → server: done.
    Bye,
}

/// A control frame that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The length prefix is over [`MAX_FRAME`] (or zero).
    BadLength(u32),
    /// An unknown message type.
    UnknownType(u8),
    /// A frame shorter than its fields say, or with bytes left over.
    Malformed(&'static str),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::BadLength(n) => write!(
                f,
                "control frame length {n} out of range (1..={MAX_FRAME}): not a swarmscan bttest peer?"
            ),
            ControlError::UnknownType(t) => write!(f, "unknown control message type {t}"),
            ControlError::Malformed(what) => write!(f, "malformed control message: {what}"),
        }
    }
}

impl std::error::Error for ControlError {}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSE: u8 = 3;
const SCHEDULE: u8 = 4;
const START: u8 = 5;
const READY: u8 = 6;
const FLOW_END: u8 = 7;
const RESULTS: u8 = 8;
const BYE: u8 = 9;

fn put_text(out: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
}

impl Control {
    /// Appends this message as one frame to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Control::Hello { version, test_id } => {
                out.push(HELLO);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&test_id.to_be_bytes());
            }
            Control::Welcome {
                version,
                ports,
                max_flow_bytes,
                max_flow_ms,
            } => {
                out.push(WELCOME);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&ports[0].to_be_bytes());
                out.extend_from_slice(&ports[1].to_be_bytes());
                out.extend_from_slice(&max_flow_bytes.to_be_bytes());
                out.extend_from_slice(&max_flow_ms.to_be_bytes());
            }
            Control::Refuse { reason } => {
                out.push(REFUSE);
                put_text(out, reason);
            }
            Control::Schedule {
                flow_bytes,
                flow_ms,
                flows,
            } => {
                out.push(SCHEDULE);
                out.extend_from_slice(&flow_bytes.to_be_bytes());
                out.extend_from_slice(&flow_ms.to_be_bytes());
                let n = flows.len().min(MAX_FLOWS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for flow in &flows[..n] {
                    out.push(match flow.kind {
                        FlowKind::BitTorrent => 0,
                        FlowKind::PlainTcp => 1,
                    });
                    out.push(match flow.direction {
                        Direction::Upload => 0,
                        Direction::Download => 1,
                    });
                    out.extend_from_slice(&flow.port.to_be_bytes());
                }
            }
            Control::Start { index, seed } => {
                out.push(START);
                out.extend_from_slice(&index.to_be_bytes());
                out.extend_from_slice(&seed.to_be_bytes());
            }
            Control::Ready { index } => {
                out.push(READY);
                out.extend_from_slice(&index.to_be_bytes());
            }
            Control::FlowEnd { index } => {
                out.push(FLOW_END);
                out.extend_from_slice(&index.to_be_bytes());
            }
            Control::Results { reports } => {
                out.push(RESULTS);
                let n = reports.len().min(MAX_FLOWS);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for r in &reports[..n] {
                    out.extend_from_slice(&r.index.to_be_bytes());
                    out.extend_from_slice(&r.payload_received.to_be_bytes());
                    out.extend_from_slice(&r.payload_sent.to_be_bytes());
                    out.extend_from_slice(&r.duration_us.to_be_bytes());
                    out.extend_from_slice(&r.rst_sent.to_be_bytes());
                    out.extend_from_slice(&r.rst_seen.to_be_bytes());
                    out.push(r.outcome.code());
                    // Details are short; keep the whole frame under MAX_FRAME whatever they say.
                    put_text(out, truncate(&r.detail, 40));
                }
            }
            Control::Bye => out.push(BYE),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// This message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one frame body (type and fields, without the length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Control, ControlError> {
        let mut c = Cursor { buf: body, pos: 0 };
        let kind = c.u8()?;
        let msg = match kind {
            HELLO => Control::Hello {
                version: c.u16()?,
                test_id: c.u64()?,
            },
            WELCOME => Control::Welcome {
                version: c.u16()?,
                ports: [c.u16()?, c.u16()?],
                max_flow_bytes: c.u64()?,
                max_flow_ms: c.u32()?,
            },
            REFUSE => Control::Refuse { reason: c.text()? },
            SCHEDULE => {
                let flow_bytes = c.u64()?;
                let flow_ms = c.u32()?;
                let n = c.u16()? as usize;
                if n > MAX_FLOWS {
                    return Err(ControlError::Malformed("more flows than allowed"));
                }
                let mut flows = Vec::with_capacity(n);
                for _ in 0..n {
                    let kind = match c.u8()? {
                        0 => FlowKind::BitTorrent,
                        1 => FlowKind::PlainTcp,
                        _ => return Err(ControlError::Malformed("unknown flow kind")),
                    };
                    let direction = match c.u8()? {
                        0 => Direction::Upload,
                        1 => Direction::Download,
                        _ => return Err(ControlError::Malformed("unknown flow direction")),
                    };
                    flows.push(FlowSpec {
                        kind,
                        direction,
                        port: c.u16()?,
                    });
                }
                Control::Schedule {
                    flow_bytes,
                    flow_ms,
                    flows,
                }
            }
            START => Control::Start {
                index: c.u16()?,
                seed: c.u64()?,
            },
            READY => Control::Ready { index: c.u16()? },
            FLOW_END => Control::FlowEnd { index: c.u16()? },
            RESULTS => {
                let n = c.u16()? as usize;
                if n > MAX_FLOWS {
                    return Err(ControlError::Malformed("more reports than allowed"));
                }
                let mut reports = Vec::with_capacity(n);
                for _ in 0..n {
                    reports.push(FlowReport {
                        index: c.u16()?,
                        payload_received: c.u64()?,
                        payload_sent: c.u64()?,
                        duration_us: c.u64()?,
                        rst_sent: c.u32()?,
                        rst_seen: c.u32()?,
                        outcome: FlowOutcome::from_code(c.u8()?)
                            .ok_or(ControlError::Malformed("unknown flow outcome"))?,
                        detail: c.text()?,
                    });
                }
                Control::Results { reports }
            }
            BYE => Control::Bye,
            other => return Err(ControlError::UnknownType(other)),
        };
        if c.pos != body.len() {
            return Err(ControlError::Malformed("bytes left over after the fields"));
        }
        Ok(msg)
    }
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], ControlError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or(ControlError::Malformed("frame shorter than its fields"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ControlError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, ControlError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, ControlError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn text(&mut self) -> Result<String, ControlError> {
        let n = self.u16()? as usize;
        if n > MAX_TEXT {
            return Err(ControlError::Malformed("text field too long"));
        }
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
}

/// Frames control messages out of a byte stream fed in chunks of any size. Holds at most one
/// incomplete frame ([`MAX_FRAME`] + 4 bytes) plus the newest chunk.
#[derive(Debug, Default)]
pub struct ControlReader {
    buf: Vec<u8>,
}

impl ControlReader {
    /// An empty reader.
    pub fn new() -> ControlReader {
        ControlReader::default()
    }

    /// Appends received bytes; take messages out with [`ControlReader::next_message`].
    pub fn feed(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, `Ok(None)` when more bytes are needed. After an error the
    /// stream is unusable (framing is lost).
    pub fn next_message(&mut self) -> Result<Option<Control>, ControlError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(ControlError::BadLength(len));
        }
        let total = 4 + len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let msg = Control::decode_body(&self.buf[4..total]);
        self.buf.drain(..total);
        msg.map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Control> {
        vec![
            Control::Hello {
                version: VERSION,
                test_id: 0x0102_0304_0506_0708,
            },
            Control::Welcome {
                version: VERSION,
                ports: [6881, 4711],
                max_flow_bytes: 1 << 30,
                max_flow_ms: 60_000,
            },
            Control::Refuse {
                reason: "busy: another test is running".into(),
            },
            Control::Schedule {
                flow_bytes: 2_000_000,
                flow_ms: 20_000,
                flows: vec![
                    FlowSpec {
                        kind: FlowKind::BitTorrent,
                        direction: Direction::Upload,
                        port: 6881,
                    },
                    FlowSpec {
                        kind: FlowKind::PlainTcp,
                        direction: Direction::Download,
                        port: 4711,
                    },
                ],
            },
            Control::Start {
                index: 3,
                seed: u64::MAX,
            },
            Control::Ready { index: 0xFFFF },
            Control::FlowEnd { index: 7 },
            Control::Results {
                reports: vec![FlowReport {
                    index: 1,
                    payload_received: 5,
                    payload_sent: 6,
                    duration_us: 7,
                    rst_sent: 0,
                    rst_seen: 1,
                    outcome: FlowOutcome::Reset,
                    detail: "connection reset by peer".into(),
                }],
            },
            Control::Bye,
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_byte_at_a_time_reader() {
        let mut stream = Vec::new();
        for m in samples() {
            m.encode(&mut stream);
        }
        let mut reader = ControlReader::new();
        let mut got = Vec::new();
        for b in stream {
            reader.feed(&[b]);
            while let Some(m) = reader.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn truncated_garbled_and_oversized_frames_are_errors_not_panics() {
        for m in samples() {
            let frame = m.to_frame();
            let body = &frame[4..];
            for cut in 0..body.len() {
                // A body cut short is malformed (or, at 0 bytes, has no type).
                assert!(
                    Control::decode_body(&body[..cut]).is_err(),
                    "{m:?} cut {cut}"
                );
            }
            let mut longer = body.to_vec();
            longer.push(0);
            assert!(Control::decode_body(&longer).is_err());
        }
        let mut reader = ControlReader::new();
        reader.feed(&(MAX_FRAME as u32 + 1).to_be_bytes());
        assert_eq!(
            reader.next_message(),
            Err(ControlError::BadLength(MAX_FRAME as u32 + 1))
        );
        assert_eq!(
            Control::decode_body(&[200]),
            Err(ControlError::UnknownType(200))
        );
        // An HTTP request on the control port is not taken for a frame.
        let mut reader = ControlReader::new();
        reader.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert!(reader.next_message().is_err());
        // Every byte value in every position of a Results frame decodes or errors.
        let frame = samples()[7].to_frame();
        for i in 4..frame.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut f = frame.clone();
                f[i] = v;
                let _ = Control::decode_body(&f[4..]);
            }
        }
    }

    proptest::proptest! {
        /// Arbitrary bytes in arbitrary chunks: messages or an error, never a panic, and the
        /// reader holds no more than one frame plus the newest chunk.
        #[test]
        fn arbitrary_bytes_frame_or_fail(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048), chunk in 1usize..300) {
            let mut reader = ControlReader::new();
            'feed: for piece in data.chunks(chunk) {
                reader.feed(piece);
                loop {
                    match reader.next_message() {
                        Ok(Some(m)) => {
                            let frame = m.to_frame();
                            proptest::prop_assert_eq!(Control::decode_body(&frame[4..]), Ok(m));
                        }
                        Ok(None) => break,
                        Err(_) => break 'feed,
                    }
                }
                proptest::prop_assert!(reader.buf.len() <= MAX_FRAME + 4 + chunk);
            }
        }
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let reason = "é".repeat(MAX_TEXT);
        let frame = Control::Refuse { reason }.to_frame();
        match Control::decode_body(&frame[4..]).unwrap() {
            Control::Refuse { reason } => {
                assert!(reason.len() <= MAX_TEXT);
                assert!(reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }
}

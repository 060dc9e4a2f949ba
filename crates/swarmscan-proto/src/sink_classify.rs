//! What unsolicited traffic is: the passive sink's classifier (`swarmscan sink`).
//!
//! Pure: a TCP stream's first bytes (as many as the sink kept) or one UDP datagram in, a
//! [`Classification`] out. Nothing is answered, so a flow is judged only on what the remote
//! sent first. The checks, in order:
//!
//! * TCP: BitTorrent handshake (`\x13BitTorrent protocol`; info-hash and peer-id kept),
//!   HTTP (a method line; `Host` kept), TLS (a ClientHello record; SNI kept), Gnutella
//!   (`GNUTELLA CONNECT/`), eDonkey/eMule (marker 0xE3, 0xC5 or 0xD4, then a plausible
//!   little-endian length and opcode), MSE/PE (at least [`MSE_MIN_BYTES`] bytes that look
//!   random: the initiator's 96-byte Diffie-Hellman key and random padding), else other.
//! * UDP: UDP tracker (BEP 15 connect magic `0x41727101980`, or an announce/scrape with an
//!   action and length that fit), KRPC (a bencoded dictionary: the query method and its
//!   target or info-hash kept), uTP (a valid BEP 29 header: packet type and connection id
//!   kept), eDonkey/Kad (marker 0xE3, 0xC5, 0xE4 or 0xE5), else other.
//!
//! "Other" keeps the first [`FIRST_BYTES`] bytes so unknown protocols can be studied later.

use serde::Serialize;

use crate::hex;
use crate::krpc::{self, Body, QueryKind};
use crate::tracker_udp::PROTOCOL_ID;
use crate::utp;

/// Bytes of an unknown flow kept in [`Details::first_bytes`].
pub const FIRST_BYTES: usize = 64;

/// The fewest random-looking bytes taken for an MSE/PE handshake (the initiator's public
/// key alone is 96 bytes).
pub const MSE_MIN_BYTES: usize = 96;

/// Longest text field kept (host, SNI, method, path).
const MAX_TEXT: usize = 255;

/// How the bytes arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    /// Lower-case name as stored.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// The protocol a flow was classified as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    BitTorrent,
    Mse,
    Krpc,
    Utp,
    UdpTracker,
    Gnutella,
    Edonkey,
    Http,
    Tls,
    Other,
}

impl Protocol {
    /// Every protocol, in report order.
    pub const ALL: [Protocol; 10] = [
        Protocol::BitTorrent,
        Protocol::Mse,
        Protocol::Krpc,
        Protocol::Utp,
        Protocol::UdpTracker,
        Protocol::Gnutella,
        Protocol::Edonkey,
        Protocol::Http,
        Protocol::Tls,
        Protocol::Other,
    ];

    /// The name as stored and reported.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::BitTorrent => "bittorrent",
            Protocol::Mse => "mse",
            Protocol::Krpc => "krpc",
            Protocol::Utp => "utp",
            Protocol::UdpTracker => "udp_tracker",
            Protocol::Gnutella => "gnutella",
            Protocol::Edonkey => "edonkey",
            Protocol::Http => "http",
            Protocol::Tls => "tls",
            Protocol::Other => "other",
        }
    }

    /// The protocol of a stored name.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// What the first bytes said beyond the protocol; fields that do not apply are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    /// BitTorrent handshake, KRPC get_peers/announce_peer, UDP tracker announce: hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info_hash: Option<String>,
    /// BitTorrent handshake, UDP tracker announce: hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// KRPC: the query method, or `response` / `error`; UDP tracker: the action; HTTP: the
    /// method; uTP: the packet type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// KRPC find_node / sample_infohashes target: hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// HTTP `Host` header, TLS server name (SNI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP request path (bounded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// uTP connection id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_id: Option<u16>,
    /// Other: the first [`FIRST_BYTES`] bytes, hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_bytes: Option<String>,
}

impl Details {
    /// True when no field is set.
    pub fn is_empty(&self) -> bool {
        *self == Details::default()
    }
}

/// A protocol and what its first bytes said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Classification {
    pub protocol: Protocol,
    pub details: Details,
}

impl Classification {
    fn bare(protocol: Protocol) -> Classification {
        Classification {
            protocol,
            details: Details::default(),
        }
    }
}

/// Classifies the first bytes a TCP peer sent (the whole prefix the sink kept).
pub fn classify_stream(prefix: &[u8]) -> Classification {
    if let Some(c) = bittorrent(prefix) {
        return c;
    }
    if let Some(c) = http(prefix) {
        return c;
    }
    if let Some(c) = tls(prefix) {
        return c;
    }
    if prefix.starts_with(b"GNUTELLA CONNECT/") {
        return Classification::bare(Protocol::Gnutella);
    }
    if edonkey_tcp(prefix) {
        return Classification::bare(Protocol::Edonkey);
    }
    if looks_random(prefix) {
        return Classification::bare(Protocol::Mse);
    }
    other(prefix)
}

/// Classifies one UDP datagram.
pub fn classify_datagram(bytes: &[u8]) -> Classification {
    if let Some(c) = udp_tracker(bytes) {
        return c;
    }
    if bytes.first() == Some(&b'd') {
        if let Some(c) = krpc_message(bytes) {
            return c;
        }
    }
    if let Ok(packet) = utp::decode(bytes) {
        let name = match packet.header.packet_type {
            utp::PacketType::Data => "data",
            utp::PacketType::Fin => "fin",
            utp::PacketType::State => "state",
            utp::PacketType::Reset => "reset",
            utp::PacketType::Syn => "syn",
        };
        return Classification {
            protocol: Protocol::Utp,
            details: Details {
                kind: Some(name.to_string()),
                connection_id: Some(packet.header.conn_id),
                ..Details::default()
            },
        };
    }
    // eDonkey (0xE3), eMule extended (0xC5), Kad (0xE4), Kad packed (0xE5): marker, opcode.
    if bytes.len() >= 2 && matches!(bytes[0], 0xE3 | 0xC5 | 0xE4 | 0xE5) {
        return Classification::bare(Protocol::Edonkey);
    }
    other(bytes)
}

/// The protocol a datagram's first bytes suggest, without decoding it: a cheap key for
/// grouping a sender's datagrams into flows (only a flow's first datagram gets
/// [`classify_datagram`]). Agrees with it on well-formed datagrams.
pub fn datagram_family(bytes: &[u8]) -> Protocol {
    if udp_tracker_action(bytes).is_some() {
        return Protocol::UdpTracker;
    }
    match bytes {
        [b'd', ..] => Protocol::Krpc,
        [first, ..] if bytes.len() >= 20 && first & 0x0f == 1 && first >> 4 <= 4 => Protocol::Utp,
        [0xE3 | 0xC5 | 0xE4 | 0xE5, _, ..] => Protocol::Edonkey,
        _ => Protocol::Other,
    }
}

fn other(bytes: &[u8]) -> Classification {
    Classification {
        protocol: Protocol::Other,
        details: Details {
            first_bytes: (!bytes.is_empty())
                .then(|| hex::encode(&bytes[..bytes.len().min(FIRST_BYTES)])),
            ..Details::default()
        },
    }
}

fn bittorrent(b: &[u8]) -> Option<Classification> {
    const PREFIX: &[u8] = b"\x13BitTorrent protocol";
    if !b.starts_with(PREFIX) {
        return None;
    }
    // prefix (20), reserved (8), info-hash (20), peer-id (20): each kept when complete.
    let field = |at: usize| b.get(at..at + 20).map(hex::encode);
    Some(Classification {
        protocol: Protocol::BitTorrent,
        details: Details {
            info_hash: field(28),
            peer_id: field(48),
            ..Details::default()
        },
    })
}

fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TEXT)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

fn http(b: &[u8]) -> Option<Classification> {
    const METHODS: &[&str] = &[
        "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT", "PATCH", "TRACE",
    ];
    let line_end = b.iter().position(|&c| c == b'\n').unwrap_or(b.len());
    let line = &b[..line_end];
    let mut parts = line.split(|&c| c == b' ');
    let method = parts.next()?;
    let method = METHODS.iter().find(|m| m.as_bytes() == method).copied()?;
    let path = parts.next().filter(|p| !p.is_empty())?;
    // The version, when the line is complete, must be HTTP/x.y.
    if line_end < b.len() {
        let version = parts.next()?;
        if !version.starts_with(b"HTTP/") {
            return None;
        }
    }
    let headers = b.get(line_end + 1..).unwrap_or_default();
    let host = headers
        .split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
        .find_map(|l| {
            let colon = l.iter().position(|&c| c == b':')?;
            l[..colon]
                .eq_ignore_ascii_case(b"host")
                .then(|| text(l[colon + 1..].trim_ascii()))
        });
    Some(Classification {
        protocol: Protocol::Http,
        details: Details {
            kind: Some(method.to_string()),
            path: Some(text(path)),
            host,
            ..Details::default()
        },
    })
}

/// A TLS handshake record holding a ClientHello; the server name when the extension is
/// there and complete.
fn tls(b: &[u8]) -> Option<Classification> {
    // Record: type 22 (handshake), version 3.x, length; handshake type 1 (ClientHello).
    if b.len() < 6 || b[0] != 0x16 || b[1] != 3 || b[2] > 4 || b[5] != 1 {
        return None;
    }
    Some(Classification {
        protocol: Protocol::Tls,
        details: Details {
            host: server_name(b),
            ..Details::default()
        },
    })
}

fn server_name(b: &[u8]) -> Option<String> {
    let u16_at = |at: usize| -> Option<usize> {
        Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]) as usize)
    };
    // Record header (5), handshake header (4), client version (2), random (32).
    let mut at = 5 + 4 + 2 + 32;
    at += 1 + *b.get(at)? as usize; // session id
    at += 2 + u16_at(at)?; // cipher suites
    at += 1 + *b.get(at)? as usize; // compression methods
    let extensions_end = (at + 2 + u16_at(at)?).min(b.len());
    at += 2;
    while at + 4 <= extensions_end {
        let (kind, len) = (u16_at(at)?, u16_at(at + 2)?);
        let body = at + 4;
        if kind == 0 {
            // server_name_list: length, then entries of type (0 = host_name), length, name.
            let name_type = *b.get(body + 2)?;
            let name_len = u16_at(body + 3)?;
            let name = b.get(body + 5..body + 5 + name_len)?;
            return (name_type == 0).then(|| text(name));
        }
        at = body + len;
    }
    None
}

fn edonkey_tcp(b: &[u8]) -> bool {
    // Marker, 32-bit little-endian length of what follows (opcode + payload), opcode.
    if b.len() < 6 || !matches!(b[0], 0xE3 | 0xC5 | 0xD4) {
        return false;
    }
    let len = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
    // A hello is about 80 bytes; the protocol caps packets well below 2 MiB.
    (1..=2 << 20).contains(&len)
}

/// Whether `b` looks like the start of an MSE handshake: at least [`MSE_MIN_BYTES`] bytes
/// with about as many distinct values as random bytes would have (text, zeros and binary
/// headers have far fewer).
fn looks_random(b: &[u8]) -> bool {
    if b.len() < MSE_MIN_BYTES {
        return false;
    }
    // Ya (96) and PadA (up to 512) are random; judge at most that much.
    let sample = &b[..b.len().min(608)];
    let mut seen = [false; 256];
    for &byte in sample {
        seen[byte as usize] = true;
    }
    let distinct = seen.iter().filter(|&&s| s).count() as f64;
    // Distinct values expected among n random bytes: 256 × (1 − (255/256)^n).
    let expected = 256.0 * (1.0 - (255.0f64 / 256.0).powi(sample.len() as i32));
    distinct >= 0.8 * expected
}

/// The BEP 15 request action (0 connect, 1 announce, 2 scrape) when `b` is shaped like one:
/// a connect with the protocol magic, an announce of at least 98 bytes, a scrape of 16 + 20·n.
fn udp_tracker_action(b: &[u8]) -> Option<u32> {
    if b.len() < 16 {
        return None;
    }
    let connection_id = u64::from_be_bytes(b[0..8].try_into().ok()?);
    let action = u32::from_be_bytes(b[8..12].try_into().ok()?);
    match action {
        0 if connection_id == PROTOCOL_ID => Some(0),
        1 if b.len() >= 98 => Some(1),
        2 if b.len() >= 36 && (b.len() - 16) % 20 == 0 => Some(2),
        _ => None,
    }
}

fn udp_tracker(b: &[u8]) -> Option<Classification> {
    let action = udp_tracker_action(b)?;
    let hex20 = |at: usize| b.get(at..at + 20).map(hex::encode);
    let details = match action {
        0 => Details {
            kind: Some("connect".into()),
            ..Details::default()
        },
        // An announce or scrape carries a connection id only a tracker hands out; a sink
        // never answers a connect, so these come from clients that remember an old one.
        1 => Details {
            kind: Some("announce".into()),
            info_hash: hex20(16),
            peer_id: hex20(36),
            ..Details::default()
        },
        _ => Details {
            kind: Some("scrape".into()),
            info_hash: hex20(16),
            ..Details::default()
        },
    };
    Some(Classification {
        protocol: Protocol::UdpTracker,
        details,
    })
}

fn krpc_message(b: &[u8]) -> Option<Classification> {
    let message = krpc::decode(b).ok()?;
    let hex20 = |id: &krpc::Id20| hex::encode(&id.0);
    let mut details = Details::default();
    match &message.body {
        Body::Query(q) => {
            details.kind = Some(text(q.kind.method_name()));
            match &q.kind {
                QueryKind::FindNode { target } | QueryKind::SampleInfohashes { target } => {
                    details.target = Some(hex20(target));
                }
                QueryKind::GetPeers { info_hash, .. }
                | QueryKind::AnnouncePeer { info_hash, .. } => {
                    details.info_hash = Some(hex20(info_hash));
                }
                QueryKind::Other {
                    target, info_hash, ..
                } => {
                    details.target = target.as_ref().map(hex20);
                    details.info_hash = info_hash.as_ref().map(hex20);
                }
                QueryKind::Ping => {}
            }
        }
        Body::Response(_) => details.kind = Some("response".into()),
        Body::Error(_) => details.kind = Some("error".into()),
    }
    Some(Classification {
        protocol: Protocol::Krpc,
        details,
    })
}

#[cfg(test)]
mod tests;

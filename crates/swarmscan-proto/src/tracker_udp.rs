//! UDP tracker protocol (BEP 15) with the BEP 41 URL-data option.
//!
//! Sans-IO codecs for both directions: a client encodes [`Request`]s and decodes
//! [`Response`]s; a tracker (or a test faking one) does the opposite. All integers are big
//! endian. Exchange: `connect` gives a connection id, which then authenticates `announce`
//! and `scrape` requests; every reply echoes the request's transaction id.
//!
//! Announce replies carry 6-byte peers on an IPv4 socket and 18-byte peers on an IPv6
//! socket (BEP 15: the size depends on the address family the request came over), so
//! decoding a reply needs the [`AddressFamily`].
//!
//! [`client::Client`] is the client's state machine on top of the codecs: connection ids
//! reused for their lifetime, retransmissions, keyed transaction ids; time is passed in.

use crate::tracker_http::{split_authority, strip_scheme, Event, UrlError};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Magic connection id of a connect request ("protocol id").
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// Most info-hashes in one scrape (BEP 15: "up to about 74", so the reply fits a packet).
pub const MAX_SCRAPE_HASHES: usize = 74;
/// How long a client may use a connection id after receiving it, ms (BEP 15: one minute).
pub const CONNECTION_ID_LIFETIME_MS: u64 = 60_000;

/// Request/response kind (the `action` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Connect,
    Announce,
    Scrape,
    Error,
}

impl Action {
    /// Wire value.
    pub fn to_u32(self) -> u32 {
        match self {
            Action::Connect => 0,
            Action::Announce => 1,
            Action::Scrape => 2,
            Action::Error => 3,
        }
    }
    /// From the wire value.
    pub fn from_u32(n: u32) -> Option<Action> {
        Some(match n {
            0 => Action::Connect,
            1 => Action::Announce,
            2 => Action::Scrape,
            3 => Action::Error,
            _ => return None,
        })
    }
}

/// Address family of the socket an announce went over; decides the peer size in replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// 6-byte peers (4 address + 2 port).
    V4,
    /// 18-byte peers (16 address + 2 port).
    V6,
}

impl AddressFamily {
    /// The family of a tracker's address.
    pub fn of(addr: &SocketAddr) -> AddressFamily {
        if addr.is_ipv4() {
            AddressFamily::V4
        } else {
            AddressFamily::V6
        }
    }
    fn peer_size(self) -> usize {
        match self {
            AddressFamily::V4 => 6,
            AddressFamily::V6 => 18,
        }
    }
}

/// What was wrong with a packet. Offsets are byte offsets in the packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    #[error("{what}: packet of {len} bytes is shorter than the {need} bytes required")]
    TooShort {
        what: &'static str,
        len: usize,
        need: usize,
    },
    #[error("unknown action {action} at byte {offset}")]
    UnknownAction { action: u32, offset: usize },
    #[error("connect request must carry protocol id {PROTOCOL_ID:#x}, found {found:#x}")]
    BadProtocolId { found: u64 },
    #[error("unknown announce event {event} at byte 80")]
    UnknownEvent { event: u32 },
    #[error("{what}: {len} bytes after the {header}-byte header is not a multiple of {size}")]
    RaggedList {
        what: &'static str,
        len: usize,
        header: usize,
        size: usize,
    },
    #[error("scrape request with no info-hash")]
    EmptyScrape,
    #[error("BEP 41 option at byte {offset} runs past the end of the packet")]
    TruncatedOption { offset: usize },
    #[error("transaction id {found:#010x} does not match the request's {expected:#010x}")]
    TransactionMismatch { expected: u32, found: u32 },
    #[error("expected a {expected:?} response, got {found:?}")]
    UnexpectedAction { expected: Action, found: Action },
    #[error("tracker error: {0}")]
    Tracker(String),
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn arr20(b: &[u8], at: usize) -> [u8; 20] {
    let mut a = [0u8; 20];
    a.copy_from_slice(&b[at..at + 20]);
    a
}
fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), UdpError> {
    if b.len() < n {
        Err(UdpError::TooShort {
            what,
            len: b.len(),
            need: n,
        })
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Requests

/// Announce request (98 bytes plus BEP 41 options).
#[derive(Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub downloaded: u64,
    pub left: u64,
    pub uploaded: u64,
    pub event: Event,
    /// Address to advertise; 0.0.0.0 means "the one this packet came from".
    pub ip: Ipv4Addr,
    pub key: u32,
    /// -1 for the tracker's default.
    pub num_want: i32,
    pub port: u16,
    /// BEP 41 URL data: the path and query of the tracker URL (empty: no option sent).
    pub url_data: Vec<u8>,
}

impl fmt::Debug for AnnounceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::bencode::DebugBytes;
        f.debug_struct("AnnounceRequest")
            .field("connection_id", &format_args!("{:#x}", self.connection_id))
            .field(
                "transaction_id",
                &format_args!("{:#x}", self.transaction_id),
            )
            .field("info_hash", &crate::hex::encode(&self.info_hash))
            .field("peer_id", &DebugBytes(&self.peer_id))
            .field("downloaded", &self.downloaded)
            .field("left", &self.left)
            .field("uploaded", &self.uploaded)
            .field("event", &self.event)
            .field("ip", &self.ip)
            .field("key", &format_args!("{:#x}", self.key))
            .field("num_want", &self.num_want)
            .field("port", &self.port)
            .field("url_data", &DebugBytes(&self.url_data))
            .finish()
    }
}

impl AnnounceRequest {
    /// An announce from the HTTP-style parameters (`ip`/`ipv4`/`ipv6`/`trackerid` do not
    /// exist in BEP 15 and are ignored; `numwant` None becomes -1, `key` None becomes 0).
    pub fn from_params(
        connection_id: u64,
        transaction_id: u32,
        params: &crate::tracker_http::AnnounceParams,
        url_data: &[u8],
    ) -> Self {
        AnnounceRequest {
            connection_id,
            transaction_id,
            info_hash: params.info_hash,
            peer_id: params.peer_id,
            downloaded: params.downloaded,
            left: params.left,
            uploaded: params.uploaded,
            event: params.event,
            ip: params.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            key: params.key.unwrap_or(0),
            num_want: params
                .numwant
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(-1),
            port: params.port,
            url_data: url_data.to_vec(),
        }
    }
}

/// Scrape request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeRequest {
    pub connection_id: u64,
    pub transaction_id: u32,
    /// At most [`MAX_SCRAPE_HASHES`] for a reply that fits one packet.
    pub info_hashes: Vec<[u8; 20]>,
}

/// A client-to-tracker packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Connect { transaction_id: u32 },
    Announce(AnnounceRequest),
    Scrape(ScrapeRequest),
}

impl Request {
    /// The transaction id the reply must echo.
    pub fn transaction_id(&self) -> u32 {
        match self {
            Request::Connect { transaction_id } => *transaction_id,
            Request::Announce(a) => a.transaction_id,
            Request::Scrape(s) => s.transaction_id,
        }
    }

    /// The action of this request.
    pub fn action(&self) -> Action {
        match self {
            Request::Connect { .. } => Action::Connect,
            Request::Announce(_) => Action::Announce,
            Request::Scrape(_) => Action::Scrape,
        }
    }

    /// Appends the wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Request::Connect { transaction_id } => {
                out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
                out.extend_from_slice(&0u32.to_be_bytes());
                out.extend_from_slice(&transaction_id.to_be_bytes());
            }
            Request::Announce(a) => {
                out.extend_from_slice(&a.connection_id.to_be_bytes());
                out.extend_from_slice(&1u32.to_be_bytes());
                out.extend_from_slice(&a.transaction_id.to_be_bytes());
                out.extend_from_slice(&a.info_hash);
                out.extend_from_slice(&a.peer_id);
                out.extend_from_slice(&a.downloaded.to_be_bytes());
                out.extend_from_slice(&a.left.to_be_bytes());
                out.extend_from_slice(&a.uploaded.to_be_bytes());
                out.extend_from_slice(&a.event.to_udp().to_be_bytes());
                out.extend_from_slice(&a.ip.octets());
                out.extend_from_slice(&a.key.to_be_bytes());
                out.extend_from_slice(&a.num_want.to_be_bytes());
                out.extend_from_slice(&a.port.to_be_bytes());
                encode_url_data(&a.url_data, out);
            }
            Request::Scrape(s) => {
                out.extend_from_slice(&s.connection_id.to_be_bytes());
                out.extend_from_slice(&2u32.to_be_bytes());
                out.extend_from_slice(&s.transaction_id.to_be_bytes());
                for h in &s.info_hashes {
                    out.extend_from_slice(h);
                }
            }
        }
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(100);
        self.encode(&mut out);
        out
    }

    /// Decodes a request (tracker side).
    pub fn decode(b: &[u8]) -> Result<Request, UdpError> {
        need("request", b, 16)?;
        let connection_id = be_u64(b, 0);
        let action = be_u32(b, 8);
        let transaction_id = be_u32(b, 12);
        match Action::from_u32(action) {
            Some(Action::Connect) => {
                if connection_id != PROTOCOL_ID {
                    return Err(UdpError::BadProtocolId {
                        found: connection_id,
                    });
                }
                Ok(Request::Connect { transaction_id })
            }
            Some(Action::Announce) => {
                need("announce request", b, 98)?;
                let event_n = be_u32(b, 80);
                let event =
                    Event::from_udp(event_n).ok_or(UdpError::UnknownEvent { event: event_n })?;
                let url_data = decode_options(b, 98)?;
                Ok(Request::Announce(AnnounceRequest {
                    connection_id,
                    transaction_id,
                    info_hash: arr20(b, 16),
                    peer_id: arr20(b, 36),
                    downloaded: be_u64(b, 56),
                    left: be_u64(b, 64),
                    uploaded: be_u64(b, 72),
                    event,
                    ip: Ipv4Addr::from(be_u32(b, 84)),
                    key: be_u32(b, 88),
                    num_want: be_u32(b, 92) as i32,
                    port: be_u16(b, 96),
                    url_data,
                }))
            }
            Some(Action::Scrape) => {
                let rest = &b[16..];
                if rest.is_empty() {
                    return Err(UdpError::EmptyScrape);
                }
                if rest.len() % 20 != 0 {
                    return Err(UdpError::RaggedList {
                        what: "scrape request",
                        len: rest.len(),
                        header: 16,
                        size: 20,
                    });
                }
                Ok(Request::Scrape(ScrapeRequest {
                    connection_id,
                    transaction_id,
                    info_hashes: rest.chunks_exact(20).map(|c| arr20(c, 0)).collect(),
                }))
            }
            _ => Err(UdpError::UnknownAction { action, offset: 8 }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// BEP 41 options

/// BEP 41 option types.
pub const OPTION_END: u8 = 0;
/// BEP 41 no-op (a single byte, for padding).
pub const OPTION_NOP: u8 = 1;
/// BEP 41 URL data: length byte then up to 255 bytes of the URL's path and query.
pub const OPTION_URL_DATA: u8 = 2;

/// Appends URL-data options for `url_data` (split into 255-byte chunks). Nothing is written
/// for empty data. No end-of-options byte follows: the options end with the packet, and this
/// is what libtorrent sends (checked against its recorded packets).
pub fn encode_url_data(url_data: &[u8], out: &mut Vec<u8>) {
    for chunk in url_data.chunks(255) {
        out.push(OPTION_URL_DATA);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}

/// Reads BEP 41 options starting at `at`; returns the concatenated URL data. End-of-options
/// stops reading, NOPs are skipped, unknown options are skipped by their length byte.
pub fn decode_options(b: &[u8], mut at: usize) -> Result<Vec<u8>, UdpError> {
    let mut url = Vec::new();
    while at < b.len() {
        match b[at] {
            OPTION_END => break,
            OPTION_NOP => at += 1,
            kind => {
                let len = usize::from(
                    *b.get(at + 1)
                        .ok_or(UdpError::TruncatedOption { offset: at })?,
                );
                let data = b
                    .get(at + 2..at + 2 + len)
                    .ok_or(UdpError::TruncatedOption { offset: at })?;
                if kind == OPTION_URL_DATA {
                    url.extend_from_slice(data);
                }
                at += 2 + len;
            }
        }
    }
    Ok(url)
}

// ---------------------------------------------------------------------------------------
// Responses

/// Announce reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    pub transaction_id: u32,
    /// Seconds until the next announce.
    pub interval: u32,
    pub leechers: u32,
    pub seeders: u32,
    /// Peers; all of the socket's family.
    pub peers: Vec<SocketAddr>,
}

/// One torrent's counts in a scrape reply, in the order of the request's hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrapeStats {
    pub seeders: u32,
    /// Completed downloads ever.
    pub completed: u32,
    pub leechers: u32,
}

/// A tracker-to-client packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Connect {
        transaction_id: u32,
        connection_id: u64,
    },
    Announce(AnnounceResponse),
    Scrape {
        transaction_id: u32,
        stats: Vec<ScrapeStats>,
    },
    Error {
        transaction_id: u32,
        /// The message (lossy UTF-8).
        message: String,
    },
}

/// The transaction id of a reply without decoding the rest — for matching a datagram to a
/// pending request before anything else (None if shorter than 8 bytes).
pub fn peek_transaction_id(b: &[u8]) -> Option<u32> {
    (b.len() >= 8).then(|| be_u32(b, 4))
}

impl Response {
    /// The echoed transaction id.
    pub fn transaction_id(&self) -> u32 {
        match self {
            Response::Connect { transaction_id, .. }
            | Response::Scrape { transaction_id, .. }
            | Response::Error { transaction_id, .. } => *transaction_id,
            Response::Announce(a) => a.transaction_id,
        }
    }

    /// The action of this response.
    pub fn action(&self) -> Action {
        match self {
            Response::Connect { .. } => Action::Connect,
            Response::Announce(_) => Action::Announce,
            Response::Scrape { .. } => Action::Scrape,
            Response::Error { .. } => Action::Error,
        }
    }

    /// Decodes a reply. `family` is the address family of the socket the announce went
    /// over (only announce replies depend on it).
    pub fn decode(b: &[u8], family: AddressFamily) -> Result<Response, UdpError> {
        need("response", b, 8)?;
        let action = be_u32(b, 0);
        let transaction_id = be_u32(b, 4);
        match Action::from_u32(action) {
            Some(Action::Connect) => {
                need("connect response", b, 16)?;
                Ok(Response::Connect {
                    transaction_id,
                    connection_id: be_u64(b, 8),
                })
            }
            Some(Action::Announce) => {
                need("announce response", b, 20)?;
                let size = family.peer_size();
                let rest = &b[20..];
                if rest.len() % size != 0 {
                    return Err(UdpError::RaggedList {
                        what: "announce response peers",
                        len: rest.len(),
                        header: 20,
                        size,
                    });
                }
                let peers = rest
                    .chunks_exact(size)
                    .map(|c| match family {
                        AddressFamily::V4 => SocketAddr::V4(SocketAddrV4::new(
                            Ipv4Addr::from(be_u32(c, 0)),
                            be_u16(c, 4),
                        )),
                        AddressFamily::V6 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(&c[..16]);
                            SocketAddr::V6(SocketAddrV6::new(
                                Ipv6Addr::from(a),
                                be_u16(c, 16),
                                0,
                                0,
                            ))
                        }
                    })
                    .collect();
                Ok(Response::Announce(AnnounceResponse {
                    transaction_id,
                    interval: be_u32(b, 8),
                    leechers: be_u32(b, 12),
                    seeders: be_u32(b, 16),
                    peers,
                }))
            }
            Some(Action::Scrape) => {
                let rest = &b[8..];
                if rest.len() % 12 != 0 {
                    return Err(UdpError::RaggedList {
                        what: "scrape response",
                        len: rest.len(),
                        header: 8,
                        size: 12,
                    });
                }
                Ok(Response::Scrape {
                    transaction_id,
                    stats: rest
                        .chunks_exact(12)
                        .map(|c| ScrapeStats {
                            seeders: be_u32(c, 0),
                            completed: be_u32(c, 4),
                            leechers: be_u32(c, 8),
                        })
                        .collect(),
                })
            }
            Some(Action::Error) => Ok(Response::Error {
                transaction_id,
                message: String::from_utf8_lossy(&b[8..]).into_owned(),
            }),
            None => Err(UdpError::UnknownAction { action, offset: 0 }),
        }
    }

    /// Appends the wire form (tracker side). Announce peers not of `family` are skipped.
    pub fn encode(&self, family: AddressFamily, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.action().to_u32().to_be_bytes());
        out.extend_from_slice(&self.transaction_id().to_be_bytes());
        match self {
            Response::Connect { connection_id, .. } => {
                out.extend_from_slice(&connection_id.to_be_bytes())
            }
            Response::Announce(a) => {
                out.extend_from_slice(&a.interval.to_be_bytes());
                out.extend_from_slice(&a.leechers.to_be_bytes());
                out.extend_from_slice(&a.seeders.to_be_bytes());
                for p in &a.peers {
                    match (p, family) {
                        (SocketAddr::V4(v4), AddressFamily::V4) => {
                            out.extend_from_slice(&v4.ip().octets());
                            out.extend_from_slice(&v4.port().to_be_bytes());
                        }
                        (SocketAddr::V6(v6), AddressFamily::V6) => {
                            out.extend_from_slice(&v6.ip().octets());
                            out.extend_from_slice(&v6.port().to_be_bytes());
                        }
                        _ => {}
                    }
                }
            }
            Response::Scrape { stats, .. } => {
                for s in stats {
                    out.extend_from_slice(&s.seeders.to_be_bytes());
                    out.extend_from_slice(&s.completed.to_be_bytes());
                    out.extend_from_slice(&s.leechers.to_be_bytes());
                }
            }
            Response::Error { message, .. } => out.extend_from_slice(message.as_bytes()),
        }
    }

    /// The wire form.
    pub fn to_bytes(&self, family: AddressFamily) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.encode(family, &mut out);
        out
    }

    /// Checks that this reply answers `request`: same transaction id, and the same action
    /// (an error reply becomes [`UdpError::Tracker`]).
    pub fn check_answers(self, request: &Request) -> Result<Response, UdpError> {
        let expected = request.transaction_id();
        if self.transaction_id() != expected {
            return Err(UdpError::TransactionMismatch {
                expected,
                found: self.transaction_id(),
            });
        }
        match self {
            Response::Error { message, .. } => Err(UdpError::Tracker(message)),
            r if r.action() == request.action() => Ok(r),
            r => Err(UdpError::UnexpectedAction {
                expected: request.action(),
                found: r.action(),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------
// URLs

/// A parsed `udp://host:port/path?query` tracker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpTrackerUrl {
    /// Host name or address literal, without IPv6 brackets.
    pub host: String,
    pub port: u16,
    /// Path and query (fragment dropped), sent as BEP 41 URL data; may be empty.
    pub path_and_query: String,
}

impl UdpTrackerUrl {
    /// The host as an IP address if it is a literal.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
    /// The tracker's socket address if the host is a literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.ip().map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// Parses a `udp://` tracker URL; the port is required.
pub fn parse_udp_url(url: &str) -> Result<UdpTrackerUrl, UrlError> {
    let rest = strip_scheme(url, "udp://").ok_or_else(|| UrlError::UnsupportedScheme {
        url: url.to_string(),
        expected: "udp://",
    })?;
    let (host, port, path) = split_authority(url, rest)?;
    Ok(UdpTrackerUrl {
        host,
        port: port.ok_or_else(|| UrlError::MissingPort(url.to_string()))?,
        path_and_query: path,
    })
}

pub mod client;

#[cfg(test)]
mod tests;

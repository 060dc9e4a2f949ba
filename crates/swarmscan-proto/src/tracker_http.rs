//! HTTP tracker protocol: announce (BEP 3, BEP 23 compact peers, BEP 7 IPv6, BEP 24
//! external ip) and scrape (BEP 48).
//!
//! Sans-IO: this module builds URLs and parses bodies; [`crate::http`] frames the
//! HTTP exchange. The engine's flow for one announce:
//!
//! ```
//! use swarmscan_proto::{http, tracker_http::*};
//! let params = AnnounceParams::new([1; 20], *b"-SW0100-abcdefghijkl", 6881);
//! let url = announce_url("http://127.0.0.1:6969/announce", &params).unwrap();
//! let target = parse_http_url(&url).unwrap();
//! let request = http::build_get_request(&target.host, target.port, &target.path_and_query, "swarmscan").unwrap();
//! assert!(request.starts_with(b"GET /announce?info_hash=%01%01"));
//! // ... send, feed the bytes to http::ResponseReader, then:
//! let reply = parse_announce_response(b"d8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1a\xe1e").unwrap();
//! assert_eq!(reply.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
//! ```
//!
//! Decoders for the *request* side (announce/scrape query strings) and encoders for the
//! *response* side exist too, so tests can act as a tracker.

use crate::bencode::{self, FieldError, OwnedValue, Value};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Announce event (BEP 3). The UDP protocol (BEP 15) numbers them 0..=3 in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Event {
    /// A regular announce (no `event` parameter).
    #[default]
    None,
    Completed,
    Started,
    Stopped,
}

impl Event {
    /// The `event=` value, or None for a regular announce.
    pub fn as_query_value(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Completed => Some("completed"),
            Event::Started => Some("started"),
            Event::Stopped => Some("stopped"),
        }
    }
    /// BEP 15 number: none 0, completed 1, started 2, stopped 3.
    pub fn to_udp(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
    /// From the BEP 15 number.
    pub fn from_udp(n: u32) -> Option<Event> {
        Some(match n {
            0 => Event::None,
            1 => Event::Completed,
            2 => Event::Started,
            3 => Event::Stopped,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Percent encoding

/// Percent-encodes bytes for a query string: RFC 3986 unreserved characters
/// (`A-Za-z0-9-._~`) stay literal, everything else becomes `%XX` (uppercase hex).
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    percent_encode_into(&mut out, bytes);
    out
}

fn percent_encode_into(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}

/// Decodes `%XX` escapes (either hex case). Other bytes are taken literally (real clients
/// leave characters like `*`, `)` or `!` unescaped). `+` stays `+`: tracker query strings are
/// not form-encoded. None if an escape is malformed.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = (*b.get(i + 1)? as char).to_digit(16)?;
            let lo = (*b.get(i + 2)? as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// URLs

/// What was wrong with a tracker URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("redirect from https to plain http refused: {0:?}")]
    InsecureRedirect(String),
    #[error("unsupported URL scheme in {url:?} (expected {expected})")]
    UnsupportedScheme { url: String, expected: &'static str },
    #[error("missing host in {0:?}")]
    MissingHost(String),
    #[error("invalid host in {0:?}")]
    InvalidHost(String),
    #[error("invalid port in {0:?}")]
    InvalidPort(String),
    #[error("missing port in {0:?} (udp:// tracker URLs must name a port)")]
    MissingPort(String),
    #[error("user information (user:password@) in tracker URLs is not supported: {0:?}")]
    UserInfo(String),
    #[error("URL contains whitespace or control characters: {0:?}")]
    InvalidCharacters(String),
}

/// A parsed `http://` or `https://` tracker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTrackerUrl {
    /// `https://`: the exchange runs over TLS (done by the I/O layer; this module stays
    /// sans-IO and only carries the flag).
    pub tls: bool,
    /// Host name or address literal, without IPv6 brackets (the TLS server name).
    pub host: String,
    /// Port (80, or 443 for `https://`, if the URL names none).
    pub port: u16,
    /// Path and query (without fragment); always starts with `/`.
    pub path_and_query: String,
}

impl HttpTrackerUrl {
    /// The host as an IP address if it is a literal (no DNS needed).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// Splits `scheme://authority/rest` after the scheme was checked: returns host (brackets
/// removed), optional port, and path+query (fragment dropped, may be empty).
pub(crate) fn split_authority(
    url: &str,
    after_scheme: &str,
) -> Result<(String, Option<u16>, String), UrlError> {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(UrlError::InvalidCharacters(url.to_string()));
    }
    let end = after_scheme
        .find(['/', '?', '#'])
        .unwrap_or(after_scheme.len());
    let authority = &after_scheme[..end];
    let mut rest = &after_scheme[end..];
    if let Some(i) = rest.find('#') {
        rest = &rest[..i];
    }
    if authority.contains('@') {
        return Err(UrlError::UserInfo(url.to_string()));
    }
    let (host, port_str) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6
            .find(']')
            .ok_or_else(|| UrlError::InvalidHost(url.to_string()))?;
        let host = &v6[..close];
        // Zone ids (fe80::1%eth0) are meaningless to a tracker and not valid Ipv6Addr text.
        host.parse::<Ipv6Addr>()
            .map_err(|_| UrlError::InvalidHost(url.to_string()))?;
        let after = &v6[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::InvalidHost(url.to_string())),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::MissingHost(url.to_string()));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(UrlError::InvalidHost(url.to_string()));
    }
    let port = match port_str {
        None | Some("") => None,
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(UrlError::InvalidPort(url.to_string()));
            }
            match p.parse::<u16>() {
                Ok(n) if n != 0 => Some(n),
                _ => return Err(UrlError::InvalidPort(url.to_string())),
            }
        }
    };
    Ok((host.to_ascii_lowercase(), port, rest.to_string()))
}

/// Strips a case-insensitive scheme prefix (`"http://"`).
pub(crate) fn strip_scheme<'a>(url: &'a str, scheme: &str) -> Option<&'a str> {
    let head = url.get(..scheme.len())?;
    head.eq_ignore_ascii_case(scheme)
        .then(|| &url[scheme.len()..])
}

/// Parses an `http://` or `https://` tracker URL (scheme case-insensitive).
pub fn parse_http_url(url: &str) -> Result<HttpTrackerUrl, UrlError> {
    let (tls, rest) = match strip_scheme(url, "https://") {
        Some(rest) => (true, rest),
        None => (
            false,
            strip_scheme(url, "http://").ok_or_else(|| UrlError::UnsupportedScheme {
                url: url.to_string(),
                expected: "http:// or https://",
            })?,
        ),
    };
    let (host, port, path) = split_authority(url, rest)?;
    let path_and_query = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path
    };
    Ok(HttpTrackerUrl {
        tls,
        host,
        port: port.unwrap_or(if tls { 443 } else { 80 }),
        path_and_query,
    })
}

/// Where a redirect leads: `location` is an absolute `http://` or `https://` URL, or an
/// absolute path (`/x?y`) on the same scheme, host and port as `current`. A redirect from
/// `https://` to plain `http://` fails with [`UrlError::InsecureRedirect`] (it would send
/// the query, passkeys included, in the clear). The caller bounds the number of redirects
/// it follows.
pub fn redirect_target(
    current: &HttpTrackerUrl,
    location: &str,
) -> Result<HttpTrackerUrl, UrlError> {
    let location = location.trim();
    if location.starts_with('/') && !location.starts_with("//") {
        if location
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(UrlError::InvalidCharacters(location.to_string()));
        }
        let path = location.split('#').next().unwrap_or(location);
        return Ok(HttpTrackerUrl {
            tls: current.tls,
            host: current.host.clone(),
            port: current.port,
            path_and_query: path.to_string(),
        });
    }
    let target = parse_http_url(location)?;
    if current.tls && !target.tls {
        return Err(UrlError::InsecureRedirect(location.to_string()));
    }
    Ok(target)
}

// ---------------------------------------------------------------------------------------
// Announce request

/// Everything an announce says about us. Used by the HTTP URL builder and (through
/// `tracker_udp`) the UDP announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceParams {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    /// Our listening port.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// How many peers we want (None: tracker default).
    pub numwant: Option<u32>,
    /// Per-session random key, sent as 8 uppercase hex digits (as libtorrent does).
    pub key: Option<u32>,
    /// BEP 3 `ip`: the address to advertise (dotted, IPv6 text or DNS name).
    pub ip: Option<String>,
    /// BEP 7 `ipv4`.
    pub ipv4: Option<Ipv4Addr>,
    /// BEP 7 `ipv6`.
    pub ipv6: Option<Ipv6Addr>,
    /// `trackerid` from an earlier response, echoed back.
    pub tracker_id: Option<Vec<u8>>,
}

impl AnnounceParams {
    /// A regular announce with zero counters and nothing optional.
    pub fn new(info_hash: [u8; 20], peer_id: [u8; 20], port: u16) -> Self {
        AnnounceParams {
            info_hash,
            peer_id,
            port,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: Event::None,
            numwant: None,
            key: None,
            ip: None,
            ipv4: None,
            ipv6: None,
            tracker_id: None,
        }
    }

    /// The query parameters (without leading `?`), in the order real clients use:
    /// `info_hash, peer_id, port, uploaded, downloaded, left, [event], compact=1, [numwant],
    /// [key], [ip], [ipv4], [ipv6], [trackerid]`.
    pub fn query(&self) -> String {
        let mut q = String::with_capacity(256);
        q.push_str("info_hash=");
        percent_encode_into(&mut q, &self.info_hash);
        q.push_str("&peer_id=");
        percent_encode_into(&mut q, &self.peer_id);
        let _ = write!(
            q,
            "&port={}&uploaded={}&downloaded={}&left={}",
            self.port, self.uploaded, self.downloaded, self.left
        );
        if let Some(ev) = self.event.as_query_value() {
            let _ = write!(q, "&event={ev}");
        }
        q.push_str("&compact=1");
        if let Some(n) = self.numwant {
            let _ = write!(q, "&numwant={n}");
        }
        if let Some(k) = self.key {
            let _ = write!(q, "&key={k:08X}");
        }
        if let Some(ip) = &self.ip {
            q.push_str("&ip=");
            percent_encode_into(&mut q, ip.as_bytes());
        }
        if let Some(ip) = self.ipv4 {
            let _ = write!(q, "&ipv4={ip}");
        }
        if let Some(ip) = self.ipv6 {
            q.push_str("&ipv6=");
            percent_encode_into(&mut q, ip.to_string().as_bytes());
        }
        if let Some(id) = &self.tracker_id {
            q.push_str("&trackerid=");
            percent_encode_into(&mut q, id);
        }
        q
    }
}

/// Appends `query` to a tracker URL that may already have a query string (`?` or `&`).
/// Drops a fragment.
fn append_query(base: &str, query: &str) -> String {
    let base = base.split('#').next().unwrap_or(base);
    let sep = if !base.contains('?') {
        "?"
    } else if base.ends_with('?') || base.ends_with('&') {
        ""
    } else {
        "&"
    };
    format!("{base}{sep}{query}")
}

/// The full announce URL: the tracker's URL (checked with [`parse_http_url`]) plus our
/// parameters.
pub fn announce_url(tracker_url: &str, params: &AnnounceParams) -> Result<String, UrlError> {
    parse_http_url(tracker_url)?;
    Ok(append_query(tracker_url, &params.query()))
}

/// What was wrong with a query string (request side).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("missing query parameter `{0}`")]
    Missing(&'static str),
    #[error("query parameter `{name}`: {problem}")]
    Invalid { name: String, problem: String },
}

fn invalid(name: &str, problem: impl Into<String>) -> QueryError {
    QueryError::Invalid {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// Splits a query string into decoded (name, value) pairs.
pub fn parse_query(query: &str) -> Result<Vec<(String, Vec<u8>)>, QueryError> {
    let query = query.strip_prefix('?').unwrap_or(query);
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name_bytes =
            percent_decode(name).ok_or_else(|| invalid(name, "bad % escape in name"))?;
        let name = String::from_utf8_lossy(&name_bytes).into_owned();
        let value = percent_decode(value).ok_or_else(|| invalid(&name, "bad % escape"))?;
        out.push((name, value));
    }
    Ok(out)
}

/// An announce request as a tracker decodes it from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedAnnounce {
    pub params: AnnounceParams,
    /// `compact` as sent (None if absent).
    pub compact: Option<bool>,
    /// Parameters this decoder does not interpret (e.g. libtorrent's `supportcrypto`), in order.
    pub other: Vec<(String, Vec<u8>)>,
}

fn bytes20(name: &'static str, v: &[u8]) -> Result<[u8; 20], QueryError> {
    v.try_into()
        .map_err(|_| invalid(name, format!("{} bytes, expected 20", v.len())))
}

fn number<T: std::str::FromStr>(name: &str, v: &[u8]) -> Result<T, QueryError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            invalid(
                name,
                format!("not a number: {:?}", String::from_utf8_lossy(v)),
            )
        })
}

/// Decodes an announce query string (with or without leading `?`, e.g. the part of the
/// request target after `?`). Accepts lowercase hex escapes and literal punctuation, as
/// real clients send.
pub fn parse_announce_query(query: &str) -> Result<DecodedAnnounce, QueryError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut p = AnnounceParams::new([0; 20], [0; 20], 0);
    let (mut uploaded, mut downloaded, mut left) = (None, None, None);
    let mut compact = None;
    let mut other = Vec::new();
    for (name, v) in parse_query(query)? {
        match name.as_str() {
            "info_hash" => info_hash = Some(bytes20("info_hash", &v)?),
            "peer_id" => peer_id = Some(bytes20("peer_id", &v)?),
            "port" => port = Some(number::<u16>("port", &v)?),
            "uploaded" => uploaded = Some(number::<u64>("uploaded", &v)?),
            "downloaded" => downloaded = Some(number::<u64>("downloaded", &v)?),
            "left" => left = Some(number::<u64>("left", &v)?),
            "numwant" => p.numwant = Some(number("numwant", &v)?),
            "compact" => compact = Some(v != b"0"),
            "event" => {
                p.event = match &v[..] {
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    b"" | b"empty" | b"paused" => Event::None,
                    _ => {
                        return Err(invalid(
                            "event",
                            format!("unknown event {:?}", String::from_utf8_lossy(&v)),
                        ))
                    }
                }
            }
            "key" => {
                let s = std::str::from_utf8(&v).map_err(|_| invalid("key", "not text"))?;
                p.key = Some(
                    u32::from_str_radix(s, 16)
                        .map_err(|_| invalid("key", format!("not 1-8 hex digits: {s:?}")))?,
                );
            }
            "ip" => p.ip = Some(String::from_utf8_lossy(&v).into_owned()),
            "ipv4" => p.ipv4 = Some(number("ipv4", &v)?),
            "ipv6" => p.ipv6 = Some(number("ipv6", &v)?),
            "trackerid" => p.tracker_id = Some(v),
            _ => other.push((name, v)),
        }
    }
    p.info_hash = info_hash.ok_or(QueryError::Missing("info_hash"))?;
    p.peer_id = peer_id.ok_or(QueryError::Missing("peer_id"))?;
    p.port = port.ok_or(QueryError::Missing("port"))?;
    p.uploaded = uploaded.ok_or(QueryError::Missing("uploaded"))?;
    p.downloaded = downloaded.ok_or(QueryError::Missing("downloaded"))?;
    p.left = left.ok_or(QueryError::Missing("left"))?;
    Ok(DecodedAnnounce {
        params: p,
        compact,
        other,
    })
}

// ---------------------------------------------------------------------------------------
// Announce response

/// Errors from announce / scrape responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    #[error("response is not valid bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error(transparent)]
    Field(#[from] FieldError),
    #[error("tracker failure: {}", .0.reason)]
    Failure(TrackerFailure),
}

/// A `failure reason` response (the tracker refused the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerFailure {
    /// The `failure reason` text (lossy UTF-8).
    pub reason: String,
    /// BEP 31 `retry in` minutes, if given as a number.
    pub retry_in_minutes: Option<u64>,
    /// BEP 31 `retry in: "never"`.
    pub retry_never: bool,
}

/// A parsed announce response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceResponse {
    /// Seconds until the next regular announce.
    pub interval: Option<u32>,
    /// Seconds the tracker wants at least between announces.
    pub min_interval: Option<u32>,
    /// `tracker id`, to send back as `trackerid`.
    pub tracker_id: Option<Vec<u8>>,
    /// `warning message` (lossy UTF-8); the response is still valid.
    pub warning: Option<String>,
    /// Seeders.
    pub complete: Option<u64>,
    /// Leechers.
    pub incomplete: Option<u64>,
    /// Completed downloads (not in BEP 3, but many trackers send it).
    pub downloaded: Option<u64>,
    /// Peers from `peers` (compact 6-byte or list of dicts) and `peers6` (compact 18-byte).
    pub peers: Vec<SocketAddr>,
    /// Peers from the dictionary form that carried a `peer id`.
    pub peer_ids: Vec<(SocketAddr, [u8; 20])>,
    /// Dictionary-form peers whose `ip` is a DNS name (needs resolving; rare).
    pub peer_hosts: Vec<(String, u16)>,
    /// BEP 24 `external ip`: our address as the tracker saw it.
    pub external_ip: Option<IpAddr>,
}

fn opt_u64(d: &Value<'_>, field: &str) -> Result<Option<u64>, FieldError> {
    match d.get(field) {
        None => Ok(None),
        Some(v) => {
            let n = v
                .as_int()
                .ok_or_else(|| FieldError::wrong_type(field, v, "integer"))?;
            u64::try_from(n)
                .map(Some)
                .map_err(|_| FieldError::invalid(field, v, format!("negative value {n}")))
        }
    }
}

fn opt_u32(d: &Value<'_>, field: &str) -> Result<Option<u32>, FieldError> {
    match opt_u64(d, field)? {
        None => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| match d.get(field) {
            Some(v) => FieldError::invalid(field, v, format!("{n} is out of range")),
            None => FieldError::Missing(field.to_string()),
        }),
    }
}

/// An interval in seconds: an integer, clamped to 0..=u32::MAX (a negative or huge value is the
/// tracker's mistake, not a reason to throw away the peers it sent; the scheduler ignores 0
/// and caps long intervals).
fn opt_interval(d: &Value<'_>, field: &str) -> Result<Option<u32>, FieldError> {
    match d.get(field) {
        None => Ok(None),
        Some(v) => {
            let n = v
                .as_int()
                .ok_or_else(|| FieldError::wrong_type(field, v, "integer"))?;
            Ok(Some(n.clamp(0, i64::from(u32::MAX)) as u32))
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Compact IPv4 peers: 4 address bytes + 2 port bytes each, network order (BEP 23).
pub fn decode_compact_v4(b: &[u8]) -> Option<Vec<SocketAddr>> {
    if b.len() % 6 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(6)
            .map(|c| {
                let ip = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
                SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be_bytes([c[4], c[5]])))
            })
            .collect(),
    )
}

/// Compact IPv6 peers: 16 address bytes + 2 port bytes each (BEP 7).
pub fn decode_compact_v6(b: &[u8]) -> Option<Vec<SocketAddr>> {
    if b.len() % 18 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(18)
            .map(|c| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&c[..16]);
                let port = u16::from_be_bytes([c[16], c[17]]);
                SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), port, 0, 0))
            })
            .collect(),
    )
}

/// Compact encoding of peers of one family (others are skipped): 6 or 18 bytes each.
pub fn encode_compact(peers: &[SocketAddr], v6: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for p in peers {
        match (p, v6) {
            (SocketAddr::V4(a), false) => {
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_be_bytes());
            }
            (SocketAddr::V6(a), true) => {
                out.extend_from_slice(&a.ip().octets());
                out.extend_from_slice(&a.port().to_be_bytes());
            }
            _ => {}
        }
    }
    out
}

fn check_failure(d: &Value<'_>) -> Result<(), TrackerError> {
    if let Some(reason) = d.opt_bytes("failure reason")? {
        let (retry_in_minutes, retry_never) = match d.get("retry in") {
            Some(v) => match (v.as_int(), v.as_bytes()) {
                (Some(n), _) => (u64::try_from(n).ok(), false),
                (_, Some(b"never")) => (None, true),
                _ => (None, false),
            },
            None => (None, false),
        };
        return Err(TrackerError::Failure(TrackerFailure {
            reason: lossy(reason),
            retry_in_minutes,
            retry_never,
        }));
    }
    Ok(())
}

fn decode_peer_list(
    field: &str,
    list: &[Value<'_>],
    out: &mut AnnounceResponse,
) -> Result<(), FieldError> {
    for entry in list {
        if entry.as_dict().is_none() {
            return Err(FieldError::wrong_type(field, entry, "dictionary"));
        }
        let ip_v = entry.req("ip")?;
        let ip_b = ip_v
            .as_bytes()
            .ok_or_else(|| FieldError::wrong_type("ip", ip_v, "byte string"))?;
        let port_v = entry.req("port")?;
        let port = port_v
            .as_int()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| FieldError::invalid("port", port_v, "not a port number"))?;
        // `ip` is text (dotted quad, IPv6 text or DNS name); some trackers send 4/16 raw bytes.
        let ip: Option<IpAddr> = match std::str::from_utf8(ip_b).ok().and_then(|s| s.parse().ok()) {
            Some(ip) => Some(ip),
            None => match ip_b.len() {
                4 => Some(IpAddr::from(<[u8; 4]>::try_from(ip_b).unwrap_or_default())),
                16 => Some(IpAddr::from(<[u8; 16]>::try_from(ip_b).unwrap_or_default())),
                _ => None,
            },
        };
        match ip {
            Some(ip) => {
                let addr = SocketAddr::new(ip, port);
                out.peers.push(addr);
                if let Some(id) = entry.opt_bytes("peer id")? {
                    if let Ok(id) = <[u8; 20]>::try_from(id) {
                        out.peer_ids.push((addr, id));
                    }
                }
            }
            None => {
                let host = std::str::from_utf8(ip_b)
                    .ok()
                    .filter(|h| !h.is_empty() && h.len() <= 253)
                    .ok_or_else(|| {
                        FieldError::invalid("ip", ip_v, "not an address or host name")
                    })?;
                out.peer_hosts.push((host.to_string(), port));
            }
        }
    }
    Ok(())
}

/// Decodes a response body, allowing trailing ASCII whitespace: aquatic_http 0.9.0 counts a
/// trailing CRLF into Content-Length. Any other trailing byte is an error.
fn decode_body(body: &[u8]) -> Result<Value<'_>, bencode::DecodeError> {
    let (root, used) = bencode::decode_prefix_with(body, bencode::Limits::DEFAULT)?;
    if let Some(extra) = body[used..].iter().position(|b| !b.is_ascii_whitespace()) {
        return Err(bencode::DecodeError {
            offset: used + extra,
            kind: bencode::ErrorKind::TrailingData,
        });
    }
    Ok(root)
}

/// Parses an announce response body (bencoded dictionary).
///
/// A `failure reason` becomes [`TrackerError::Failure`]. Missing optional fields are None;
/// fields of the wrong type or out of range are errors naming the field, except `interval` and
/// `min interval`, which are clamped to 0..=u32::MAX (the scheduler ignores or caps them).
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let root = decode_body(body)?;
    if root.as_dict().is_none() {
        return Err(FieldError::wrong_type("(response)", &root, "dictionary").into());
    }
    check_failure(&root)?;
    let mut r = AnnounceResponse {
        interval: opt_interval(&root, "interval")?,
        min_interval: opt_interval(&root, "min interval")?,
        tracker_id: root.opt_bytes("tracker id")?.map(<[u8]>::to_vec),
        warning: root.opt_bytes("warning message")?.map(lossy),
        complete: opt_u64(&root, "complete")?,
        incomplete: opt_u64(&root, "incomplete")?,
        downloaded: opt_u64(&root, "downloaded")?,
        ..Default::default()
    };
    for (field, v6) in [("peers", false), ("peers6", true)] {
        let Some(v) = root.get(field) else { continue };
        if let Some(b) = v.as_bytes() {
            let decoded = if v6 {
                decode_compact_v6(b)
            } else {
                decode_compact_v4(b)
            };
            let size = if v6 { 18 } else { 6 };
            let peers = decoded.ok_or_else(|| {
                FieldError::invalid(
                    field,
                    v,
                    format!(
                        "compact peer string of {} bytes is not a multiple of {size}",
                        b.len()
                    ),
                )
            })?;
            r.peers.extend(peers);
        } else if let Some(list) = v.as_list() {
            decode_peer_list(field, list, &mut r)?;
        } else {
            return Err(FieldError::wrong_type(field, v, "byte string or list").into());
        }
    }
    if let Some(v) = root.get("external ip") {
        let b = v
            .as_bytes()
            .ok_or_else(|| FieldError::wrong_type("external ip", v, "byte string"))?;
        r.external_ip = Some(match b.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(b).unwrap_or_default()),
            16 => IpAddr::from(<[u8; 16]>::try_from(b).unwrap_or_default()),
            n => {
                return Err(FieldError::invalid(
                    "external ip",
                    v,
                    format!("{n} bytes, expected 4 or 16"),
                )
                .into())
            }
        });
    }
    Ok(r)
}

fn int(n: u64) -> OwnedValue {
    OwnedValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

impl AnnounceResponse {
    /// Encodes as a tracker would: compact `peers`/`peers6` for addresses; peers with ids or
    /// host names are not re-encoded (the compact form cannot carry them).
    pub fn encode(&self) -> Vec<u8> {
        let mut d = OwnedValue::dict();
        let opt = |d: OwnedValue, k: &str, v: Option<u64>| match v {
            Some(n) => d.with(k, int(n)),
            None => d,
        };
        d = opt(d, "interval", self.interval.map(u64::from));
        d = opt(d, "min interval", self.min_interval.map(u64::from));
        d = opt(d, "complete", self.complete);
        d = opt(d, "incomplete", self.incomplete);
        d = opt(d, "downloaded", self.downloaded);
        if let Some(id) = &self.tracker_id {
            d = d.with("tracker id", id.clone());
        }
        if let Some(w) = &self.warning {
            d = d.with("warning message", w.as_str());
        }
        d = d.with("peers", encode_compact(&self.peers, false));
        let v6 = encode_compact(&self.peers, true);
        if !v6.is_empty() {
            d = d.with("peers6", v6);
        }
        if let Some(ip) = self.external_ip {
            let b = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            d = d.with("external ip", b);
        }
        d.encode()
    }
}

impl TrackerFailure {
    /// Encodes a failure response.
    pub fn encode(&self) -> Vec<u8> {
        let mut d = OwnedValue::dict().with("failure reason", self.reason.as_str());
        if self.retry_never {
            d = d.with("retry in", "never");
        } else if let Some(m) = self.retry_in_minutes {
            d = d.with("retry in", int(m));
        }
        d.encode()
    }
}

// ---------------------------------------------------------------------------------------
// Scrape (BEP 48)

/// The scrape URL for an announce URL (BEP 48): the text after the last `/` must start
/// with `announce`, which is replaced by `scrape`. None if the tracker is not scrapable.
///
/// Like the long-standing convention (theory.org wiki, rtorrent, libtorrent) the last `/`
/// of the whole URL counts, so `/announce?x=2/4` is not scrapable: a `/` in the query makes
/// the URL ambiguous, and no `%`-decoding is done.
pub fn scrape_url(announce_url: &str) -> Option<String> {
    let url = announce_url.split('#').next().unwrap_or(announce_url);
    let after_scheme = url.find("://")? + 3;
    let path_start = after_scheme + url[after_scheme..].find('/')?;
    let slash = url.rfind('/')?;
    if slash < path_start || url[..slash].contains('?') {
        return None;
    }
    let tail = url[slash + 1..].strip_prefix("announce")?;
    Some(format!("{}scrape{tail}", &url[..=slash]))
}

/// Appends one `info_hash=` per hash to a scrape URL (which may have a query already).
pub fn scrape_request_url(scrape_url: &str, info_hashes: &[[u8; 20]]) -> String {
    let mut q = String::with_capacity(info_hashes.len() * 71);
    for (i, h) in info_hashes.iter().enumerate() {
        if i > 0 {
            q.push('&');
        }
        q.push_str("info_hash=");
        percent_encode_into(&mut q, h);
    }
    append_query(scrape_url, &q)
}

/// The info-hashes of a scrape query string (request side).
pub fn parse_scrape_query(query: &str) -> Result<Vec<[u8; 20]>, QueryError> {
    parse_query(query)?
        .into_iter()
        .filter(|(n, _)| n == "info_hash")
        .map(|(_, v)| bytes20("info_hash", &v))
        .collect()
}

/// One torrent's entry in a scrape response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeEntry {
    pub info_hash: [u8; 20],
    /// Seeders.
    pub complete: u64,
    /// Completed downloads ever reported to the tracker.
    pub downloaded: u64,
    /// Leechers.
    pub incomplete: u64,
    /// Optional `name` (lossy UTF-8).
    pub name: Option<String>,
}

/// A parsed scrape response.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScrapeResponse {
    /// Entries in the order the tracker sent them.
    pub files: Vec<ScrapeEntry>,
    /// `flags` → `min_request_interval` seconds, if given.
    pub min_request_interval: Option<u32>,
    /// Entries skipped because their key was not a 20-byte hash. Real trackers do send such
    /// keys: bittorrent-tracker 11 (npm) UTF-8-encodes hash bytes >= 0x80 in scrape replies.
    pub skipped_keys: usize,
}

impl ScrapeResponse {
    /// The entry for one info-hash.
    pub fn get(&self, info_hash: &[u8; 20]) -> Option<&ScrapeEntry> {
        self.files.iter().find(|e| &e.info_hash == info_hash)
    }

    /// Encodes as a tracker would.
    pub fn encode(&self) -> Vec<u8> {
        let mut files = std::collections::BTreeMap::new();
        for e in &self.files {
            let mut d = OwnedValue::dict()
                .with("complete", int(e.complete))
                .with("downloaded", int(e.downloaded))
                .with("incomplete", int(e.incomplete));
            if let Some(n) = &e.name {
                d = d.with("name", n.as_str());
            }
            files.insert(e.info_hash.to_vec(), d);
        }
        let mut root = OwnedValue::dict().with("files", OwnedValue::Dict(files));
        if let Some(m) = self.min_request_interval {
            root = root.with(
                "flags",
                OwnedValue::dict().with("min_request_interval", int(u64::from(m))),
            );
        }
        root.encode()
    }
}

/// Parses a scrape response body. Counts missing from an entry are errors naming the field
/// (`complete`, `downloaded`, `incomplete`). Keys that are not 20-byte hashes are skipped and
/// counted in [`ScrapeResponse::skipped_keys`], so one bad entry does not hide the others.
pub fn parse_scrape_response(body: &[u8]) -> Result<ScrapeResponse, TrackerError> {
    let root = decode_body(body)?;
    if root.as_dict().is_none() {
        return Err(FieldError::wrong_type("(response)", &root, "dictionary").into());
    }
    check_failure(&root)?;
    let files_v = root.req("files")?;
    let files = files_v
        .as_dict()
        .ok_or_else(|| FieldError::wrong_type("files", files_v, "dictionary"))?;
    let mut out = ScrapeResponse::default();
    for (key, entry) in files {
        let Ok(info_hash) = <[u8; 20]>::try_from(*key) else {
            out.skipped_keys += 1;
            continue;
        };
        if entry.as_dict().is_none() {
            return Err(FieldError::wrong_type("files entry", entry, "dictionary").into());
        }
        let req = |f: &str| opt_u64(entry, f)?.ok_or_else(|| FieldError::Missing(f.to_string()));
        out.files.push(ScrapeEntry {
            info_hash,
            complete: req("complete")?,
            downloaded: req("downloaded")?,
            incomplete: req("incomplete")?,
            name: entry.opt_bytes("name")?.map(lossy),
        });
    }
    if let Some(flags) = root.get("flags") {
        if flags.as_dict().is_none() {
            return Err(FieldError::wrong_type("flags", flags, "dictionary").into());
        }
        out.min_request_interval = opt_u32(flags, "min_request_interval")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

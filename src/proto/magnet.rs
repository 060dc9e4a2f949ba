//! Magnet links (BEP 9, with BEP 53 `btmh` for v2) and plain info-hash input.
//!
//! ```
//! use swarmscan::proto::magnet::Magnet;
//! let m: Magnet = "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=x".parse().unwrap();
//! assert_eq!(m.display_name.as_deref(), Some("x"));
//! assert_eq!(m.to_string().parse::<Magnet>().unwrap(), m);
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use super::hex;
use super::metainfo::{InfoHashV1, InfoHashV2, InfoHashes};

/// A parsed magnet link. `info_hashes` always has at least one hash.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Magnet {
    pub info_hashes: InfoHashes,
    /// `dn`: display name.
    pub display_name: Option<String>,
    /// `tr`: tracker URLs, in link order, deduplicated.
    pub trackers: Vec<String>,
    /// `x.pe`: peer addresses to try directly.
    pub peers: Vec<SocketAddr>,
    /// `ws`: web seeds.
    pub web_seeds: Vec<String>,
}

/// What was wrong with a magnet link or info-hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("not a magnet link (must start with \"magnet:?\")")]
    NotMagnet,
    #[error("magnet link has no xt=urn:btih: or xt=urn:btmh: info-hash")]
    NoInfoHash,
    #[error("bad percent-encoding in parameter `{0}`")]
    BadPercent(String),
    #[error("bad info-hash `{0}`: {1}")]
    BadHash(String, &'static str),
    #[error("two different {0} info-hashes in one magnet link")]
    ConflictingHash(&'static str),
    #[error("bad peer address `{0}` in x.pe (expected ip:port or [ipv6]:port)")]
    BadPeer(String),
    #[error("not a magnet link or info-hash: {0}")]
    NotInput(String),
}

/// Hashes from an `xt` value.
enum Xt {
    V1(InfoHashV1),
    V2(InfoHashV2),
    Other,
}

fn parse_btih(s: &str) -> Result<InfoHashV1, MagnetError> {
    match s.len() {
        40 => hex::decode_array::<20>(s)
            .map(InfoHashV1)
            .ok_or_else(|| MagnetError::BadHash(s.to_string(), "invalid hex")),
        32 => {
            let upper = s.to_ascii_uppercase();
            let bytes = data_encoding::BASE32_NOPAD
                .decode(upper.as_bytes())
                .map_err(|_| MagnetError::BadHash(s.to_string(), "invalid base32"))?;
            let arr: [u8; 20] = bytes
                .try_into()
                .map_err(|_| MagnetError::BadHash(s.to_string(), "invalid base32"))?;
            Ok(InfoHashV1(arr))
        }
        _ => Err(MagnetError::BadHash(
            s.to_string(),
            "btih must be 40 hex or 32 base32 characters",
        )),
    }
}

fn parse_btmh(s: &str) -> Result<InfoHashV2, MagnetError> {
    // BEP 53: a multihash; 0x12 = sha2-256, 0x20 = 32 bytes.
    let Some(rest) = s.strip_prefix("1220") else {
        return Err(MagnetError::BadHash(
            s.to_string(),
            "btmh must be a sha2-256 multihash (1220 + 64 hex)",
        ));
    };
    hex::decode_array::<32>(rest)
        .map(InfoHashV2)
        .ok_or_else(|| MagnetError::BadHash(s.to_string(), "expected 64 hex digits after 1220"))
}

fn parse_xt(value: &str) -> Result<Xt, MagnetError> {
    let lower_prefix = |p: &str| {
        value
            .get(..p.len())
            .filter(|head| head.eq_ignore_ascii_case(p))
            .map(|_| &value[p.len()..])
    };
    if let Some(h) = lower_prefix("urn:btih:") {
        parse_btih(h).map(Xt::V1)
    } else if let Some(h) = lower_prefix("urn:btmh:") {
        parse_btmh(h).map(Xt::V2)
    } else {
        // Other URNs (ed2k, sha1 of a file, ...) may share a link; they are not ours.
        Ok(Xt::Other)
    }
}

/// Percent-decodes a query component; invalid UTF-8 is replaced.
fn percent_decode(s: &str, param: &str) -> Result<String, MagnetError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let pair = b
                .get(i + 1..i + 3)
                .and_then(|p| std::str::from_utf8(p).ok());
            let byte = pair
                .and_then(hex::decode_array::<1>)
                .ok_or_else(|| MagnetError::BadPercent(param.to_string()))?;
            out.push(byte[0]);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Percent-encodes everything except RFC 3986 unreserved characters.
fn percent_encode(s: &str, out: &mut String) {
    for &c in s.as_bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(c as char);
        } else {
            out.push('%');
            out.push_str(&hex::encode(&[c]).to_ascii_uppercase());
        }
    }
}

fn push_unique(list: &mut Vec<String>, s: String) {
    if !s.is_empty() && !list.contains(&s) {
        list.push(s);
    }
}

impl FromStr for Magnet {
    type Err = MagnetError;

    fn from_str(link: &str) -> Result<Magnet, MagnetError> {
        let link = link.trim();
        let query = link
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &link[8..])
            .ok_or(MagnetError::NotMagnet)?;
        let mut m = Magnet::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = || percent_decode(raw, key);
            match key {
                "xt" => match parse_xt(&value()?)? {
                    Xt::V1(h) => {
                        if m.info_hashes.v1.is_some_and(|old| old != h) {
                            return Err(MagnetError::ConflictingHash("v1"));
                        }
                        m.info_hashes.v1 = Some(h);
                    }
                    Xt::V2(h) => {
                        if m.info_hashes.v2.is_some_and(|old| old != h) {
                            return Err(MagnetError::ConflictingHash("v2"));
                        }
                        m.info_hashes.v2 = Some(h);
                    }
                    Xt::Other => {}
                },
                // The first non-empty `dn` wins; later ones fall through to "ignored".
                "dn" if m.display_name.is_none() => {
                    m.display_name = Some(value()?).filter(|s| !s.is_empty());
                }
                "tr" => push_unique(&mut m.trackers, value()?),
                "ws" => push_unique(&mut m.web_seeds, value()?),
                "x.pe" => {
                    let v = value()?;
                    let addr: SocketAddr =
                        v.parse().map_err(|_| MagnetError::BadPeer(v.clone()))?;
                    if !m.peers.contains(&addr) {
                        m.peers.push(addr);
                    }
                }
                _ => {} // unknown parameters (so, xs, as, kt, ...) are not needed
            }
        }
        if m.info_hashes.is_empty() {
            return Err(MagnetError::NoInfoHash);
        }
        Ok(m)
    }
}

impl fmt::Display for Magnet {
    /// Canonical form: xt (btih then btmh), dn, tr..., ws..., x.pe...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("magnet:?");
        let mut sep = "";
        if let Some(h) = self.info_hashes.v1 {
            s.push_str(&format!("xt=urn:btih:{h}"));
            sep = "&";
        }
        if let Some(h) = self.info_hashes.v2 {
            s.push_str(&format!("{sep}xt=urn:btmh:1220{h}"));
            sep = "&";
        }
        let mut param = |s: &mut String, key: &str, value: &str| {
            s.push_str(sep);
            s.push_str(key);
            s.push('=');
            percent_encode(value, s);
            sep = "&";
        };
        if let Some(dn) = &self.display_name {
            param(&mut s, "dn", dn);
        }
        for t in &self.trackers {
            param(&mut s, "tr", t);
        }
        for w in &self.web_seeds {
            param(&mut s, "ws", w);
        }
        for p in &self.peers {
            // Left readable: libtorrent does not percent-decode x.pe, and ':' '[' ']' are
            // harmless in a query. Only a v6 scope id's '%' needs encoding.
            s.push_str(sep);
            s.push_str("x.pe=");
            s.push_str(&p.to_string().replace('%', "%25"));
            sep = "&";
        }
        f.write_str(&s)
    }
}

impl Magnet {
    /// A magnet link for a torrent we have the metainfo of.
    pub fn from_metainfo(m: &super::metainfo::Metainfo) -> Magnet {
        Magnet {
            info_hashes: m.info_hashes,
            display_name: Some(m.name.clone()),
            trackers: m.trackers.iter().flatten().cloned().collect(),
            peers: Vec::new(),
            web_seeds: m.url_list.clone(),
        }
    }
}

/// What a user named on the command line or in a list: a magnet link or a bare hash.
/// (A .torrent file path is the caller's business: check the file system first.)
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum TorrentRef {
    Magnet(Magnet),
    InfoHash(InfoHashes),
}

impl TorrentRef {
    /// Parses one line of user input: `magnet:?...`, a 40-hex or 32-base32 v1 info-hash, or
    /// a 64-hex v2 info-hash. Surrounding whitespace is ignored.
    pub fn parse_input(s: &str) -> Result<TorrentRef, MagnetError> {
        let s = s.trim();
        if s.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
        {
            return s.parse().map(TorrentRef::Magnet);
        }
        match s.len() {
            40 | 32 => parse_btih(s).map(|h| {
                TorrentRef::InfoHash(InfoHashes {
                    v1: Some(h),
                    v2: None,
                })
            }),
            64 => hex::decode_array::<32>(s)
                .map(|h| {
                    TorrentRef::InfoHash(InfoHashes {
                        v1: None,
                        v2: Some(InfoHashV2(h)),
                    })
                })
                .ok_or_else(|| MagnetError::BadHash(s.to_string(), "invalid hex")),
            _ => Err(MagnetError::NotInput(format!(
                "expected magnet:?..., 40 or 64 hex digits, got {} characters",
                s.chars().count()
            ))),
        }
    }

    /// True if `s` has the shape of a magnet link or bare hash (so a CLI can decide whether
    /// to treat it as a file path).
    pub fn looks_like_input(s: &str) -> bool {
        let s = s.trim();
        s.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
            || ((s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit()))
    }

    /// The hashes named, whatever the form.
    pub fn info_hashes(&self) -> InfoHashes {
        match self {
            TorrentRef::Magnet(m) => m.info_hashes,
            TorrentRef::InfoHash(h) => *h,
        }
    }
}

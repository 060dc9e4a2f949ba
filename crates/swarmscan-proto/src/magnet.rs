//! Magnet links (BEP 9, with BEP 53 `btmh` for v2) and plain info-hash input.
//!
//! ```
//! use swarmscan_proto::magnet::Magnet;
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

/// Appends `item` unless already seen; the set keeps a link with many repeated
/// parameters linear rather than quadratic.
fn push_new<T: Clone + Eq + std::hash::Hash>(
    list: &mut Vec<T>,
    seen: &mut std::collections::HashSet<T>,
    item: T,
) {
    if seen.insert(item.clone()) {
        list.push(item);
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
        let (mut seen_tr, mut seen_ws, mut seen_pe) = Default::default();
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
                "tr" | "ws" => {
                    let v = value()?;
                    if !v.is_empty() {
                        if key == "tr" {
                            push_new(&mut m.trackers, &mut seen_tr, v);
                        } else {
                            push_new(&mut m.web_seeds, &mut seen_ws, v);
                        }
                    }
                }
                "x.pe" => {
                    let v = value()?;
                    let addr: SocketAddr =
                        v.parse().map_err(|_| MagnetError::BadPeer(v.clone()))?;
                    push_new(&mut m.peers, &mut seen_pe, addr);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    // The same hash in base32 (computed with Python's base64.b32encode, and libtorrent's
    // parse_magnet_uri reads it as HEX).
    const BASE32: &str = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
    const V2: &str = "caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";

    #[test]
    fn bep9_form_with_all_parameters() {
        let link = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Some%20Name&tr=http%3A%2F%2Ft.example%2Fa&tr=udp%3A%2F%2Fu.example%3A80\
             &x.pe=10.0.0.1:6881&x.pe=[2001:db8::1]:51413&ws=http%3A%2F%2Fw.example%2F&so=0-3"
        );
        let m: Magnet = link.parse().unwrap();
        assert_eq!(m.info_hashes.v1.unwrap().to_string(), HEX);
        assert_eq!(m.info_hashes.v2, None);
        assert_eq!(m.display_name.as_deref(), Some("Some Name"));
        assert_eq!(m.trackers, ["http://t.example/a", "udp://u.example:80"]);
        assert_eq!(
            m.peers,
            [
                "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:51413".parse().unwrap()
            ]
        );
        assert_eq!(m.web_seeds, ["http://w.example/"]);
    }

    #[test]
    fn base32_and_hex_agree() {
        let a: Magnet = format!("magnet:?xt=urn:btih:{BASE32}").parse().unwrap();
        let b: Magnet = format!("magnet:?xt=urn:btih:{}", BASE32.to_lowercase())
            .parse()
            .unwrap();
        let c: Magnet = format!("magnet:?xt=urn:btih:{}", HEX.to_uppercase())
            .parse()
            .unwrap();
        assert_eq!(a.info_hashes.v1.unwrap().to_string(), HEX);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn bep53_btmh_and_hybrid() {
        let m: Magnet = format!("magnet:?xt=urn:btmh:1220{V2}&dn=bittorrent-v2-test")
            .parse()
            .unwrap();
        assert_eq!(m.info_hashes.v1, None);
        let v2 = m.info_hashes.v2.unwrap();
        assert_eq!(v2.to_string(), V2);
        assert_eq!(hex::encode(&v2.truncated()), &V2[..40]);
        let hybrid: Magnet = format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{V2}")
            .parse()
            .unwrap();
        assert!(hybrid.info_hashes.v1.is_some() && hybrid.info_hashes.v2.is_some());
        assert_eq!(
            hybrid.to_string(),
            format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btmh:1220{V2}")
        );
        assert_eq!(hybrid.info_hashes.wire_ids().len(), 2);
    }

    #[test]
    fn errors_are_specific() {
        let e = |s: &str| s.parse::<Magnet>().unwrap_err();
        assert_eq!(e("http://x"), MagnetError::NotMagnet);
        assert_eq!(e("magnet:?dn=x&xt=urn:ed2k:abc"), MagnetError::NoInfoHash);
        assert_eq!(
            e("magnet:?xt=urn:btih:abc"),
            MagnetError::BadHash("abc".into(), "btih must be 40 hex or 32 base32 characters")
        );
        assert!(
            matches!(e(&format!("magnet:?xt=urn:btih:{HEX}&dn=%4")), MagnetError::BadPercent(p) if p == "dn")
        );
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&dn=%g0")),
            MagnetError::BadPercent(_)
        ));
        assert_eq!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{BASE32}1")),
            MagnetError::BadHash(
                format!("{BASE32}1"),
                "btih must be 40 hex or 32 base32 characters"
            )
        );
        let other = "0".repeat(40);
        assert_eq!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            MagnetError::ConflictingHash("v1")
        );
        assert!(matches!(
            e(&format!("magnet:?xt=urn:btih:{HEX}&x.pe=1.2.3.4")),
            MagnetError::BadPeer(_)
        ));
        // The same hash twice (hex and base32) is not a conflict.
        assert!(format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{BASE32}")
            .parse::<Magnet>()
            .is_ok());
    }

    #[test]
    fn user_input_forms() {
        let h = TorrentRef::parse_input(&format!("  {HEX}\n")).unwrap();
        assert_eq!(h.info_hashes().v1.unwrap().to_string(), HEX);
        assert!(matches!(
            TorrentRef::parse_input(BASE32).unwrap(),
            TorrentRef::InfoHash(_)
        ));
        let h2 = TorrentRef::parse_input(V2).unwrap();
        assert_eq!(h2.info_hashes().v2.unwrap().to_string(), V2);
        assert_eq!(h2.info_hashes().v1, None);
        assert!(matches!(
            TorrentRef::parse_input(&format!("MAGNET:?xt=urn:btih:{HEX}")).unwrap(),
            TorrentRef::Magnet(_)
        ));
        assert!(matches!(
            TorrentRef::parse_input("foo.torrent"),
            Err(MagnetError::NotInput(_))
        ));
        assert!(TorrentRef::parse_input(&"g".repeat(40)).is_err());
        assert!(TorrentRef::looks_like_input(HEX));
        assert!(TorrentRef::looks_like_input(V2));
        assert!(!TorrentRef::looks_like_input("foo.torrent"));
        assert!(!TorrentRef::looks_like_input("ééééé"));
    }

    #[test]
    fn build_encodes_reserved_characters() {
        let m = Magnet {
            info_hashes: InfoHashes {
                v1: Some(InfoHashV1([0xab; 20])),
                v2: None,
            },
            display_name: Some("a b&c=d%e/ü".into()),
            trackers: vec!["http://t/?a=1&b=2".into()],
            peers: vec!["[::1]:1".parse().unwrap()],
            web_seeds: vec![],
        };
        let s = m.to_string();
        assert_eq!(
            s,
            format!(
                "magnet:?xt=urn:btih:{}&dn=a%20b%26c%3Dd%25e%2F%C3%BC&tr=http%3A%2F%2Ft%2F%3Fa%3D1%26b%3D2&x.pe=[::1]:1",
                "ab".repeat(20)
            )
        );
        assert_eq!(s.parse::<Magnet>().unwrap(), m);
    }

    fn push_unique(list: &mut Vec<String>, s: String) {
        if !s.is_empty() && !list.contains(&s) {
            list.push(s);
        }
    }

    fn url_like() -> impl Strategy<Value = String> {
        "[ -~]{1,30}|[a-zA-Z0-9äöü€ &=%?#/:]{1,20}"
    }

    prop_compose! {
        fn magnet()(
            v1 in proptest::option::of(any::<[u8; 20]>()),
            v2 in proptest::option::of(any::<[u8; 32]>()),
            dn in proptest::option::of("\\PC{1,20}"),
            trackers in proptest::collection::vec(url_like(), 0..4),
            seeds in proptest::collection::vec(url_like(), 0..3),
            peers in proptest::collection::vec(any::<SocketAddr>(), 0..3),
        ) -> Magnet {
            let v1 = if v1.is_none() && v2.is_none() { Some([1; 20]) } else { v1 };
            let mut m = Magnet {
                info_hashes: InfoHashes { v1: v1.map(InfoHashV1), v2: v2.map(InfoHashV2) },
                display_name: dn,
                ..Magnet::default()
            };
            // Same normalisation the parser applies: no duplicates, no empty values.
            for t in trackers { push_unique(&mut m.trackers, t); }
            for s in seeds { push_unique(&mut m.web_seeds, s); }
            for p in peers {
                // Flow info is not part of the text form.
                let p = match p {
                    SocketAddr::V6(mut v6) => { v6.set_flowinfo(0); SocketAddr::V6(v6) }
                    v4 => v4,
                };
                if !m.peers.contains(&p) { m.peers.push(p); }
            }
            m
        }
    }

    proptest! {
        #[test]
        fn build_parse_round_trip(m in magnet()) {
            let s = m.to_string();
            prop_assert_eq!(s.parse::<Magnet>().unwrap(), m);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = s.parse::<Magnet>();
            let _ = TorrentRef::parse_input(&s);
        }

        #[test]
        fn parse_never_panics_near_valid(tail in "[a-zA-Z0-9%&=.:\\[\\]]{0,120}") {
            let s = format!("magnet:?xt=urn:btih:{HEX}&{tail}");
            if let Ok(m) = s.parse::<Magnet>() {
                prop_assert_eq!(m.to_string().parse::<Magnet>().unwrap(), m);
            }
        }
    }
}

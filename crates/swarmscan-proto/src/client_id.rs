//! Client identification: peer-id (BEP 20 and its folklore), the extension-handshake `v`
//! string (BEP 10) and the DHT `v` field (BEP 5) → client name and version.
//!
//! Every function takes arbitrary bytes and never panics. Peer-ids are self-chosen and
//! can lie; the extension handshake's `v` is usually more precise, so [`combine`] prefers
//! it and reports when the two disagree.

use std::fmt;

/// What a client calls itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// A recognised client; `version` is `None` when the encoding carries none.
    Known {
        name: String,
        version: Option<String>,
    },
    /// Not recognised: the printable start of the input (non-printable bytes as `\xNN`).
    Unknown(String),
}

impl ClientId {
    fn known(name: &str, version: Option<String>) -> Self {
        ClientId::Known {
            name: name.to_string(),
            version,
        }
    }

    /// The client name, `None` when unknown.
    pub fn name(&self) -> Option<&str> {
        match self {
            ClientId::Known { name, .. } => Some(name),
            ClientId::Unknown(_) => None,
        }
    }

    /// The version, when known.
    pub fn version(&self) -> Option<&str> {
        match self {
            ClientId::Known { version, .. } => version.as_deref(),
            ClientId::Unknown(_) => None,
        }
    }

    /// Whether this is a recognised client.
    pub fn is_known(&self) -> bool {
        matches!(self, ClientId::Known { .. })
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Known {
                name,
                version: Some(v),
            } => write!(f, "{name} {v}"),
            ClientId::Known {
                name,
                version: None,
            } => f.write_str(name),
            ClientId::Unknown(prefix) => write!(f, "Unknown({prefix})"),
        }
    }
}

/// How a two-letter Azureus-style code's four version characters are read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scheme {
    /// `a.b.c`, with `.d` appended when the fourth is not zero. Digits, then letters as 10+.
    Dotted3,
    /// `a.b.c.d` (Azureus/Vuze family).
    Dotted4,
    /// µTorrent family: `a.b.c`, fourth character is the build type (`B` = beta).
    MicroTorrent,
    /// Transmission: `-TR2940-` = 2.94, `-TR4000-` = 4.0.0, `Z`/`X` dev, `B` beta.
    Transmission,
    /// Two decimal pairs: `-BC0158-` = 1.58 (BitComet), `-WW0105-` = 1.05 (WebTorrent).
    TwoPairs,
    /// Hexadecimal digits (rakshasa libTorrent: `-lt0D80-` = 0.13.8).
    Hex3,
}

/// Azureus-style (`-XXvvvv-`) codes: BEP 20's list plus well-known later clients.
const AZUREUS: &[(&[u8; 2], &str, Scheme)] = &[
    (b"7T", "aTorrent", Scheme::Dotted3),
    (b"AB", "AnyEvent::BitTorrent", Scheme::Dotted3),
    (b"AG", "Ares", Scheme::Dotted3),
    (b"A~", "Ares", Scheme::Dotted3),
    (b"AR", "Arctic", Scheme::Dotted3),
    (b"AT", "Artemis", Scheme::Dotted3),
    (b"AV", "Avicora", Scheme::Dotted3),
    (b"AX", "BitPump", Scheme::Dotted3),
    (b"AZ", "Vuze", Scheme::Dotted4),
    (b"BB", "BitBuddy", Scheme::Dotted3),
    (b"BC", "BitComet", Scheme::TwoPairs),
    (b"BE", "BitTorrent SDK", Scheme::Dotted3),
    (b"BF", "Bitflu", Scheme::Dotted3),
    (b"BG", "BTG", Scheme::Dotted3),
    (b"BI", "BiglyBT", Scheme::Dotted4),
    (b"BL", "BitLord", Scheme::Dotted3),
    (b"BN", "Baidu Netdisk", Scheme::Dotted3),
    (b"BR", "BitRocket", Scheme::Dotted3),
    (b"BS", "BTSlave", Scheme::Dotted3),
    (b"BT", "BitTorrent", Scheme::MicroTorrent),
    (b"BW", "BitTorrent Web", Scheme::MicroTorrent),
    (b"BX", "Bittorrent X", Scheme::Dotted3),
    (b"CD", "Enhanced CTorrent", Scheme::Dotted3),
    (b"CT", "CTorrent", Scheme::Dotted3),
    (b"DE", "Deluge", Scheme::Dotted3),
    (b"DP", "Propagate Data Client", Scheme::Dotted3),
    (b"EB", "EBit", Scheme::Dotted3),
    (b"ES", "electric sheep", Scheme::Dotted3),
    (b"FD", "Free Download Manager", Scheme::Dotted3),
    (b"FL", "Folx", Scheme::Dotted3),
    (b"FT", "FoxTorrent", Scheme::Dotted3),
    (b"FW", "FrostWire", Scheme::Dotted3),
    (b"FX", "Freebox BitTorrent", Scheme::Dotted3),
    (b"GR", "GetRight", Scheme::Dotted3),
    (b"GS", "GSTorrent", Scheme::Dotted3),
    (b"HL", "Halite", Scheme::Dotted3),
    (b"HN", "Hydranode", Scheme::Dotted3),
    (b"KG", "KGet", Scheme::Dotted3),
    (b"KT", "KTorrent", Scheme::Dotted3),
    (b"LH", "LH-ABC", Scheme::Dotted3),
    (b"LP", "Lphant", Scheme::Dotted3),
    (b"LT", "libtorrent", Scheme::Dotted3),
    (b"lt", "libTorrent (rakshasa)", Scheme::Hex3),
    (b"LW", "LimeWire", Scheme::Dotted3),
    (b"MG", "MediaGet", Scheme::Dotted3),
    (b"MO", "MonoTorrent", Scheme::Dotted3),
    (b"MP", "MooPolice", Scheme::Dotted3),
    (b"MR", "Miro", Scheme::Dotted3),
    (b"MT", "MoonlightTorrent", Scheme::Dotted3),
    (b"NX", "Net Transport", Scheme::Dotted3),
    (b"PD", "Pando", Scheme::Dotted3),
    (b"PI", "PicoTorrent", Scheme::Dotted3),
    (b"qB", "qBittorrent", Scheme::Dotted3),
    (b"QD", "QQDownload", Scheme::Dotted3),
    (b"QT", "Qt 4 Torrent example", Scheme::Dotted3),
    (b"RT", "Retriever", Scheme::Dotted3),
    (b"S~", "Shareaza alpha/beta", Scheme::Dotted3),
    (b"SB", "Swiftbit", Scheme::Dotted3),
    (b"SD", "Thunder (Xunlei)", Scheme::Dotted3),
    (b"SS", "SwarmScope", Scheme::Dotted3),
    (b"SW", "swarmscan", Scheme::Dotted3),
    (b"ST", "SymTorrent", Scheme::Dotted3),
    (b"st", "sharktorrent", Scheme::Dotted3),
    (b"SZ", "Shareaza", Scheme::Dotted3),
    (b"TL", "Tribler", Scheme::Dotted3),
    (b"TN", "TorrentDotNET", Scheme::Dotted3),
    (b"TR", "Transmission", Scheme::Transmission),
    (b"TS", "Torrentstorm", Scheme::Dotted3),
    (b"TT", "TuoTu", Scheme::Dotted3),
    (b"UE", "µTorrent Embedded", Scheme::MicroTorrent),
    (b"UL", "uLeecher!", Scheme::Dotted3),
    (b"UM", "µTorrent Mac", Scheme::MicroTorrent),
    (b"UT", "µTorrent", Scheme::MicroTorrent),
    (b"UW", "µTorrent Web", Scheme::MicroTorrent),
    (b"VG", "Vagaa", Scheme::Dotted3),
    (b"WD", "WebTorrent Desktop", Scheme::TwoPairs),
    (b"WT", "BitLet", Scheme::Dotted3),
    (b"WW", "WebTorrent", Scheme::TwoPairs),
    (b"WY", "FireTorrent", Scheme::Dotted3),
    (b"XF", "Xfplay", Scheme::Dotted3),
    (b"XL", "Xunlei", Scheme::Dotted3),
    (b"XT", "XanTorrent", Scheme::Dotted3),
    (b"XX", "Xtorrent", Scheme::Dotted3),
    (b"ZT", "ZipTorrent", Scheme::Dotted3),
];

/// Shadow-style (BEP 20): one letter, up to five version characters, dashes.
const SHADOW: &[(u8, &str)] = &[
    (b'A', "ABC"),
    (b'O', "Osprey Permaseed"),
    (b'Q', "BTQueue"),
    (b'R', "Tribler"),
    (b'S', "Shadow"),
    (b'T', "BitTornado"),
    (b'U', "UPnP NAT Bit Torrent"),
];

/// The value of one version character: digits, then `A`-`Z`/`a`-`z` as 10 and up
/// (`A` and `a` both 10, as µTorrent, qBittorrent and Deluge use them).
fn alnum_value(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some((c - b'0') as u32),
        b'A'..=b'Z' => Some((c - b'A') as u32 + 10),
        b'a'..=b'z' => Some((c - b'a') as u32 + 10),
        _ => None,
    }
}

/// The version from an Azureus-style peer-id's four characters, per the client's scheme.
fn azureus_version(v: &[u8; 4], scheme: Scheme) -> Option<String> {
    let digit = |c: u8| alnum_value(c);
    Some(match scheme {
        Scheme::Dotted3 => {
            let (a, b, c, d) = (digit(v[0])?, digit(v[1])?, digit(v[2])?, digit(v[3])?);
            if d == 0 {
                format!("{a}.{b}.{c}")
            } else {
                format!("{a}.{b}.{c}.{d}")
            }
        }
        Scheme::Dotted4 => format!(
            "{}.{}.{}.{}",
            digit(v[0])?,
            digit(v[1])?,
            digit(v[2])?,
            digit(v[3])?
        ),
        Scheme::MicroTorrent => {
            let base = format!("{}.{}.{}", digit(v[0])?, digit(v[1])?, digit(v[2])?);
            match v[3] {
                b'B' => format!("{base} Beta"),
                b'A' => format!("{base} Alpha"),
                _ => base,
            }
        }
        Scheme::Transmission => {
            let suffix = match v[3] {
                b'Z' | b'X' => "+",
                b'B' => " Beta",
                _ => "",
            };
            if &v[..3] == b"000" {
                // 0.x releases: -TR0006- = 0.6.
                format!("0.{}", digit(v[3])?)
            } else if &v[..2] == b"00" {
                // 0.xx releases: -TR0072- = 0.72.
                if !v[2].is_ascii_digit() || !v[3].is_ascii_digit() {
                    return None;
                }
                format!("0.{}{}", v[2] as char, v[3] as char)
            } else if v[0].is_ascii_digit() && v[0] < b'4' {
                // 1.xx - 3.xx: major, then two minor digits.
                if !v[1].is_ascii_digit() || !v[2].is_ascii_digit() {
                    return None;
                }
                format!("{}.{}{}{suffix}", v[0] as char, v[1] as char, v[2] as char)
            } else {
                // 4.0.0 and later: one character each for major, minor, patch.
                format!("{}.{}.{}{suffix}", digit(v[0])?, digit(v[1])?, digit(v[2])?)
            }
        }
        Scheme::TwoPairs => {
            if !v.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let major = (v[0] - b'0') as u32 * 10 + (v[1] - b'0') as u32;
            format!("{major}.{}{}", v[2] as char, v[3] as char)
        }
        Scheme::Hex3 => {
            let hex = |c: u8| (c as char).to_digit(16);
            format!("{}.{}.{}", hex(v[0])?, hex(v[1])?, hex(v[2])?)
        }
    })
}

/// Printable rendering of the first `n` bytes for [`ClientId::Unknown`].
fn printable_prefix(b: &[u8], n: usize) -> String {
    let mut s = String::new();
    for &c in b.iter().take(n) {
        if (0x20..0x7f).contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("\\x{c:02x}"));
        }
    }
    s
}

fn unknown(id: &[u8]) -> ClientId {
    // Azureus-style and most others put everything meaningful in the first 8 bytes.
    ClientId::Unknown(printable_prefix(id, 8))
}

/// Identify a client from its peer-id (normally 20 bytes; any length is accepted).
pub fn from_peer_id(id: &[u8]) -> ClientId {
    if let Some(c) = special(id) {
        return c;
    }
    if let Some(c) = azureus(id) {
        return c;
    }
    if let Some(c) = mainline(id) {
        return c;
    }
    if let Some(c) = shadow(id) {
        return c;
    }
    unknown(id)
}

/// `-XXvvvv-` (FlashGet's `FG` omits the final dash).
fn azureus(id: &[u8]) -> Option<ClientId> {
    if id.len() < 8 || id[0] != b'-' {
        return None;
    }
    let code: [u8; 2] = [id[1], id[2]];
    let version: [u8; 4] = [id[3], id[4], id[5], id[6]];
    if &code == b"FG" {
        let v = if version.iter().all(u8::is_ascii_digit) {
            azureus_version(&version, Scheme::TwoPairs)
        } else {
            None
        };
        return Some(ClientId::known("FlashGet", v));
    }
    if id[7] != b'-' {
        return None;
    }
    match AZUREUS.iter().find(|(c, _, _)| **c == code) {
        Some((_, name, scheme)) => {
            let mut name = *name;
            let version = azureus_version(&version, *scheme);
            // Azureus was renamed Vuze at 4.0 (BEP 20 lists the code as Azureus).
            if &code == b"AZ" && version.as_deref().is_some_and(|v| v.as_bytes()[0] < b'4') {
                name = "Azureus";
            }
            Some(ClientId::known(name, version))
        }
        // An unlisted but well-formed code: unknown client, the prefix says the most.
        None => Some(unknown(id)),
    }
}

/// Mainline / Queen Bee: `M4-3-6--`, `M4-20-8-`, `Q1-10-0-`.
fn mainline(id: &[u8]) -> Option<ClientId> {
    let name = match id.first()? {
        b'M' => "BitTorrent",
        b'Q' => "Queen Bee",
        _ => return None,
    };
    let head = id.get(1..8)?;
    let mut parts: Vec<&[u8]> = head.split(|&c| c == b'-').collect();
    // Three numbers, then only dashes to byte 8.
    while parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    if parts.len() != 3
        || !parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 2 && p.iter().all(u8::is_ascii_digit))
        || !head.ends_with(b"-")
    {
        return None;
    }
    let v: Vec<String> = parts
        .iter()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    Some(ClientId::known(name, Some(v.join("."))))
}

/// Shadow-style: a letter, up to five version characters padded with `-`, then `---`.
fn shadow(id: &[u8]) -> Option<ClientId> {
    let first = *id.first()?;
    let (_, name) = SHADOW.iter().find(|(c, _)| *c == first)?;
    let head = id.get(1..9)?;
    if &head[5..8] != b"---" {
        return None;
    }
    let version_chars: Vec<u8> = head[..5]
        .iter()
        .copied()
        .take_while(|&c| c != b'-')
        .collect();
    if version_chars.is_empty() || head[version_chars.len()..5].iter().any(|&c| c != b'-') {
        return None;
    }
    let mut parts = Vec::new();
    for c in version_chars {
        parts.push(match c {
            b'0'..=b'9' => (c - b'0') as u32,
            b'A'..=b'Z' => (c - b'A') as u32 + 10,
            b'a'..=b'z' => (c - b'a') as u32 + 36,
            b'.' => 62,
            _ => return None,
        });
    }
    let v: Vec<String> = parts.iter().map(u32::to_string).collect();
    Some(ClientId::known(name, Some(v.join("."))))
}

/// Clients with their own peer-id layouts.
fn special(id: &[u8]) -> Option<ClientId> {
    // BitComet before 0.59 / BitLord: "exbc" + major byte + minor byte (two decimals).
    for prefix in [&b"exbc"[..], b"FUTB", b"xUTB"] {
        if id.starts_with(prefix) && id.len() >= 6 {
            let version = Some(format!("{}.{:02}", id[4], id[5]));
            let name = if id.get(6..10) == Some(b"LORD") {
                "BitLord"
            } else {
                "BitComet"
            };
            return Some(ClientId::known(name, version));
        }
    }
    // BitSpirit: \0 + major + "BS".
    if id.len() >= 4 && id[0] == 0 && &id[2..4] == b"BS" {
        let version = match id[1] {
            0 => None,
            major => Some(format!("{major}.x")),
        };
        return Some(ClientId::known("BitSpirit", version));
    }
    // XBT: "XBT" + three digits + 'd' (debug) or '-'.
    if id.starts_with(b"XBT") && id.len() >= 7 && id[3..6].iter().all(u8::is_ascii_digit) {
        let v = format!("{}.{}.{}", id[3] as char, id[4] as char, id[5] as char);
        return Some(ClientId::known(
            "XBT Client",
            Some(if id[6] == b'd' {
                format!("{v} debug")
            } else {
                v
            }),
        ));
    }
    // Opera: "OP" + four-digit build.
    if id.starts_with(b"OP") && id.len() >= 6 && id[2..6].iter().all(u8::is_ascii_digit) {
        let build = String::from_utf8_lossy(&id[2..6]).into_owned();
        return Some(ClientId::known("Opera", Some(format!("build {build}"))));
    }
    // MLdonkey: "-ML" + dotted version + "-".
    if id.starts_with(b"-ML") {
        let rest = &id[3..];
        let end = rest.iter().position(|&c| c == b'-').unwrap_or(rest.len());
        let v = &rest[..end];
        if !v.is_empty() && v.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
            let v = String::from_utf8_lossy(v).into_owned();
            return Some(ClientId::known("MLdonkey", Some(v)));
        }
    }
    // Bits on Wheels: "-BOW" + version code.
    if id.starts_with(b"-BOW") {
        return Some(ClientId::known("Bits on Wheels", None));
    }
    // BitTyrant: "AZ2500BT".
    if id.starts_with(b"AZ2500BT") {
        return Some(ClientId::known("BitTyrant", Some("1.1".into())));
    }
    // TorrenTopia: "346-" padded.
    if id.starts_with(b"346------") {
        return Some(ClientId::known("TorrenTopia", Some("1.90".into())));
    }
    // G3 Torrent: "-G3" + nickname.
    if id.starts_with(b"-G3") {
        return Some(ClientId::known("G3 Torrent", None));
    }
    // Tixati: "TIX" + four digits (TIX0193 = 1.93).
    if id.starts_with(b"TIX") && id.len() >= 7 && id[3..7].iter().all(u8::is_ascii_digit) {
        let major = (id[3] - b'0') as u32 * 10 + (id[4] - b'0') as u32;
        return Some(ClientId::known(
            "Tixati",
            Some(format!("{major}.{}{}", id[5] as char, id[6] as char)),
        ));
    }
    // aria2: "A2-" + dash-separated numbers ("A2-1-35-0-").
    if id.starts_with(b"A2-") {
        let rest = &id[3..id.len().min(12)];
        let nums: Vec<&[u8]> = rest
            .split(|&c| c == b'-')
            .take_while(|p| !p.is_empty() && p.iter().all(u8::is_ascii_digit))
            .take(3)
            .collect();
        if nums.len() == 3 {
            let v: Vec<String> = nums
                .iter()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            return Some(ClientId::known("aria2", Some(v.join("."))));
        }
    }
    None
}

/// The DHT `v` field (BEP 5): two client letters and two version bytes. libtorrent packs
/// its version as major, then minor and tiny as nibbles (`LT\x02\x11` = 2.1.1); for other
/// clients the two bytes are shown as a big-endian number.
pub fn from_dht_version(v: &[u8]) -> ClientId {
    if v.len() != 4 {
        return ClientId::Unknown(printable_prefix(v, 8));
    }
    let code = [v[0], v[1]];
    let Some((_, name, _)) = AZUREUS.iter().find(|(c, _, _)| **c == code) else {
        return ClientId::Unknown(printable_prefix(v, 8));
    };
    let version = match &code {
        b"LT" => format!("{}.{}.{}", v[2], v[3] >> 4, v[3] & 0x0f),
        _ => format!("{}", u16::from_be_bytes([v[2], v[3]])),
    };
    ClientId::known(name, Some(version))
}

/// Canonical spellings of client names seen in extension-handshake `v` strings.
const EXT_NAMES: &[(&str, &str)] = &[
    ("µtorrent", "µTorrent"),
    ("utorrent", "µTorrent"),
    ("µtorrent mac", "µTorrent Mac"),
    ("µtorrent web", "µTorrent Web"),
    ("bittorrent", "BitTorrent"),
    ("qbittorrent", "qBittorrent"),
    ("qbittorrent enhanced", "qBittorrent Enhanced"),
    ("libtorrent", "libtorrent"),
    ("transmission", "Transmission"),
    ("deluge", "Deluge"),
    ("bitcomet", "BitComet"),
    ("bitspirit", "BitSpirit"),
    ("bitlord", "BitLord"),
    ("azureus", "Azureus"),
    ("vuze", "Vuze"),
    ("biglybt", "BiglyBT"),
    ("ktorrent", "KTorrent"),
    ("rtorrent", "rTorrent"),
    ("libtorrent (rakshasa)", "libTorrent (rakshasa)"),
    ("tixati", "Tixati"),
    ("webtorrent", "WebTorrent"),
    ("xunlei", "Xunlei"),
    ("thunder", "Thunder (Xunlei)"),
    ("aria2", "aria2"),
    ("picotorrent", "PicoTorrent"),
    ("frostwire", "FrostWire"),
    ("free download manager", "Free Download Manager"),
    ("mediaget", "MediaGet"),
    ("flashget", "FlashGet"),
    ("shareaza", "Shareaza"),
    ("halite", "Halite"),
    ("monotorrent", "MonoTorrent"),
    ("tribler", "Tribler"),
    ("folx", "Folx"),
];

/// Longest extension-handshake `v` looked at.
const MAX_EXT_VERSION: usize = 128;

/// The BEP 10 extension-handshake `v` string: "µTorrent 3.5.4", "qBittorrent/4.1.3",
/// "libtorrent/2.1.1.0", "Transmission 2.94", "Deluge 2.1.1 libtorrent/2.0.9", …
/// Name and version are separated by a space or `/` (a leading `v` on the version is
/// dropped); only the first name/version pair counts.
pub fn from_ext_version(v: &[u8]) -> ClientId {
    let v = &v[..v.len().min(MAX_EXT_VERSION)];
    // µTorrent sends µ as UTF-8; some old clients send it as Latin-1 0xB5.
    let text: String = match std::str::from_utf8(v) {
        Ok(s) => s.to_string(),
        Err(_) => v.iter().map(|&b| b as char).collect(),
    };
    let text = text.trim();
    if text.is_empty() || text.chars().any(char::is_control) {
        return ClientId::Unknown(printable_prefix(v, 32));
    }
    // Split "Name Version rest" or "Name/Version rest": the version is the first token
    // that starts with a digit (or 'v' + digit).
    let tokens: Vec<&str> = text.split([' ', '/']).filter(|t| !t.is_empty()).collect();
    let version_at = tokens.iter().position(|t| {
        let t = t.strip_prefix(['v', 'V']).unwrap_or(t);
        t.starts_with(|c: char| c.is_ascii_digit())
    });
    let (name_tokens, version) = match version_at {
        Some(i) => {
            let raw = tokens[i];
            let raw = raw.strip_prefix(['v', 'V']).unwrap_or(raw);
            (&tokens[..i], Some(normalize_version(raw)))
        }
        None => (&tokens[..], None),
    };
    if name_tokens.is_empty() {
        return ClientId::Unknown(printable_prefix(v, 32));
    }
    let name = name_tokens.join(" ");
    let canonical = EXT_NAMES
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&name) || *k == name.to_lowercase())
        .map(|(_, c)| c.to_string())
        .unwrap_or(name);
    ClientId::Known {
        name: canonical,
        version,
    }
}

/// "2.1.1.0" → "2.1.1": drop a trailing ".0" from four-part versions (libtorrent's
/// user agent), keep everything else as sent.
fn normalize_version(v: &str) -> String {
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() == 4 && parts[3] == "0" && parts[..3].iter().all(|p| !p.is_empty()) {
        parts[..3].join(".")
    } else {
        v.to_string()
    }
}

/// The result of combining a peer-id with an extension-handshake `v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identification {
    /// The best answer: `v` when it names a client, else the peer-id's reading.
    pub client: ClientId,
    /// What the peer-id says, when one was given.
    pub from_peer_id: Option<ClientId>,
    /// What `v` says, when one was given.
    pub from_ext: Option<ClientId>,
    /// Both name a client and they differ in name or version (spoofing, forks, or a
    /// library client whose peer-id names the library).
    pub disagree: bool,
}

/// Names that are one client under different labels.
fn same_family(a: &str, b: &str) -> bool {
    fn family(n: &str) -> &str {
        match n {
            "Azureus" | "Vuze" => "Vuze",
            // BitTorrent and µTorrent share code and version numbers; "µTorrent Mac" and
            // other editions are the same client.
            "BitTorrent" => "µTorrent",
            other if other.starts_with("µTorrent") => "µTorrent",
            other => other,
        }
    }
    family(a).eq_ignore_ascii_case(family(b))
}

/// Versions agree when their numeric parts agree, ignoring trailing zero parts and
/// suffixes ("2.94" = "2.94", "2.1.1" = "2.1.1.0").
fn same_version(a: &str, b: &str) -> bool {
    let nums = |v: &str| -> Vec<String> {
        let core = v.split([' ', '+', '-']).next().unwrap_or("");
        let mut parts: Vec<String> = core
            .split('.')
            .map(|p| p.trim_start_matches('0').to_string())
            .collect();
        while parts.last().is_some_and(|p| p.is_empty()) && parts.len() > 1 {
            parts.pop();
        }
        parts
    };
    nums(a) == nums(b)
}

/// Combine peer-id and extension-handshake `v` into the best answer. `v` wins when it
/// names a client (it is free text, so more precise); disagreement is reported.
pub fn combine(peer_id: Option<&[u8]>, ext_version: Option<&[u8]>) -> Identification {
    let from_peer_id = peer_id.map(from_peer_id);
    let from_ext = ext_version.map(from_ext_version);
    let disagree = match (&from_peer_id, &from_ext) {
        (
            Some(ClientId::Known {
                name: a,
                version: va,
            }),
            Some(ClientId::Known {
                name: b,
                version: vb,
            }),
        ) => {
            !same_family(a, b)
                || match (va, vb) {
                    (Some(x), Some(y)) => !same_version(x, y),
                    _ => false,
                }
        }
        _ => false,
    };
    let client = match (&from_ext, &from_peer_id) {
        (Some(e @ ClientId::Known { .. }), _) => e.clone(),
        (_, Some(p)) => p.clone(),
        (Some(e), None) => e.clone(),
        (None, None) => ClientId::Unknown(String::new()),
    };
    Identification {
        client,
        from_peer_id,
        from_ext,
        disagree,
    }
}

#[cfg(test)]
mod tests;

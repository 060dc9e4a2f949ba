//! Extension protocol payloads (BEP 10): the extension handshake, ut_metadata (BEP 9) and
//! ut_pex (BEP 11).
//!
//! These decode the `payload` of [`super::Message::Extended`]. Extension ids are chosen by
//! the receiver: a peer sends us ut_pex with the id *we* put in our `m`, and we send it
//! ut_metadata with the id *it* put in its `m` ([`ExtHandshake::id_of`]).
//!
//! Decoding is strict about structure (the payload must be a bencoded dictionary) and lenient
//! about single fields: a field with the wrong type is left out and listed in
//! [`ExtHandshake::issues`], because a measurement probe still wants the fields that are fine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::bencode::{self, FieldError, Limits, OwnedValue, Value};

/// Extended message id of the extension handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
/// Name of the metadata exchange extension in `m`.
pub const UT_METADATA: &str = "ut_metadata";
/// Name of the peer exchange extension in `m`.
pub const UT_PEX: &str = "ut_pex";
/// Size of a ut_metadata piece (BEP 9); only the last piece may be shorter.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;
/// Default cap on peers decoded from one ut_pex list (BEP 11 allows 50 added per message;
/// a few hundred bounds the work a hostile peer can cause).
pub const DEFAULT_MAX_PEX_PEERS: usize = 300;

/// What was wrong with an extension payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    /// The payload is not valid bencode.
    #[error("bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    /// The payload decodes, but not to a dictionary.
    #[error("payload is a {0}, expected a dictionary")]
    NotDictionary(&'static str),
    /// A required field is missing or malformed.
    #[error("{0}")]
    Field(#[from] FieldError),
    /// BEP 9 says to ignore unknown message types: callers should drop the message, not
    /// the connection.
    #[error("ut_metadata: unknown msg_type {0}")]
    UnknownMetadataType(i64),
    /// Wrong amount of raw data after a ut_metadata dictionary.
    #[error("ut_metadata {kind}: {len} bytes after the dictionary, expected {expected}")]
    MetadataTrailing {
        kind: &'static str,
        len: usize,
        expected: &'static str,
    },
    /// A compact address list with a torn entry.
    #[error("ut_pex field `{field}`: length {len} is not a multiple of {entry}")]
    PexLength {
        field: &'static str,
        len: usize,
        entry: usize,
    },
}

fn decode_dict(payload: &[u8]) -> Result<Value<'_>, ExtError> {
    let v = bencode::decode_with(payload, Limits::NETWORK)?;
    if v.as_dict().is_none() {
        return Err(ExtError::NotDictionary(v.type_name()));
    }
    Ok(v)
}

fn decode_dict_prefix(payload: &[u8]) -> Result<(Value<'_>, usize), ExtError> {
    let (v, used) = bencode::decode_prefix_with(payload, Limits::NETWORK)?;
    if v.as_dict().is_none() {
        return Err(ExtError::NotDictionary(v.type_name()));
    }
    Ok((v, used))
}

/// An integer field that must fit `T`; reports the field name and offset if it does not.
fn int_in<T: TryFrom<i64>>(dict: &Value<'_>, key: &str) -> Result<Option<T>, FieldError> {
    match dict.opt_int(key)? {
        None => Ok(None),
        Some(i) => T::try_from(i).map(Some).map_err(|_| {
            let v = dict.get(key).expect("opt_int found it");
            FieldError::invalid(key, v, format!("{i} out of range"))
        }),
    }
}

/// A BEP 10 extension handshake (extended message id 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake<'a> {
    /// `m`: extension name → the id the sender wants to receive it under; id 0 means the
    /// sender disables that extension. Entries keep input order; bad ids are in `issues`.
    pub m: Vec<(&'a [u8], u8)>,
    /// `v`: client name and version, e.g. "libtorrent/2.1.1.0".
    pub v: Option<&'a [u8]>,
    /// `p`: the sender's TCP listen port (how to reach a peer that connected to us).
    pub p: Option<u16>,
    /// `yourip`: the address the sender sees us at (4 or 16 bytes).
    pub yourip: Option<IpAddr>,
    /// `reqq`: how many outstanding requests the sender allows.
    pub reqq: Option<i64>,
    /// `metadata_size`: size of the info dictionary (BEP 9).
    pub metadata_size: Option<i64>,
    /// `ipv4`: the sender's own IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// `ipv6`: the sender's own IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// `upload_only` (BEP 21): the sender is a seed or only uploads (partial seed).
    pub upload_only: Option<i64>,
    /// `complete_ago` (libtorrent): minutes since the sender last had the whole torrent,
    /// -1 if never.
    pub complete_ago: Option<i64>,
    /// Fields present but malformed; they were left out above.
    pub issues: Vec<FieldError>,
    /// The decoded dictionary, for keys this type does not name ([`Self::unknown_keys`]).
    pub dict: Option<Value<'a>>,
}

const KNOWN_HANDSHAKE_KEYS: &[&[u8]] = &[
    b"m",
    b"v",
    b"p",
    b"yourip",
    b"reqq",
    b"metadata_size",
    b"ipv4",
    b"ipv6",
    b"upload_only",
    b"complete_ago",
];

fn ip_from(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}

/// A malformed optional field becomes an issue and is left out.
fn keep<T>(issues: &mut Vec<FieldError>, r: Result<Option<T>, FieldError>) -> Option<T> {
    r.unwrap_or_else(|e| {
        issues.push(e);
        None
    })
}

/// An optional byte-string field holding a raw address of `expected` bytes.
fn address<T>(
    dict: &Value<'_>,
    key: &str,
    parse: impl Fn(&[u8]) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, FieldError> {
    let Some(bytes) = dict.opt_bytes(key)? else {
        return Ok(None);
    };
    parse(bytes).map(Some).ok_or_else(|| {
        let v = dict.get(key).expect("opt_bytes found it");
        FieldError::invalid(
            key,
            v,
            format!("{} bytes, expected {expected}", bytes.len()),
        )
    })
}

impl<'a> ExtHandshake<'a> {
    /// Decode an extension handshake payload (after the extended id byte).
    pub fn decode(payload: &'a [u8]) -> Result<ExtHandshake<'a>, ExtError> {
        let dict = decode_dict(payload)?;
        let mut issues = Vec::new();
        let mut m = Vec::new();
        if let Some(mv) = dict.get("m") {
            match mv.as_dict() {
                None => issues.push(FieldError::wrong_type("m", mv, "dictionary")),
                Some(entries) => {
                    for (name, idv) in entries {
                        match idv.as_int().map(u8::try_from) {
                            Some(Ok(id)) => m.push((*name, id)),
                            _ => issues.push(FieldError::invalid(
                                &format!("m.{}", bencode::DebugBytes(name)),
                                idv,
                                "extension id is not an integer 0..=255",
                            )),
                        }
                    }
                }
            }
        }
        let v = keep(&mut issues, dict.opt_bytes("v"));
        let p = keep(&mut issues, int_in::<u16>(&dict, "p"));
        let reqq = keep(&mut issues, dict.opt_int("reqq"));
        let metadata_size = keep(&mut issues, dict.opt_int("metadata_size"));
        let upload_only = keep(&mut issues, dict.opt_int("upload_only"));
        let complete_ago = keep(&mut issues, dict.opt_int("complete_ago"));
        let yourip = keep(&mut issues, address(&dict, "yourip", ip_from, "4 or 16"));
        let ipv4 = keep(
            &mut issues,
            address(
                &dict,
                "ipv4",
                |b| <[u8; 4]>::try_from(b).ok().map(Ipv4Addr::from),
                "4",
            ),
        );
        let ipv6 = keep(
            &mut issues,
            address(
                &dict,
                "ipv6",
                |b| <[u8; 16]>::try_from(b).ok().map(Ipv6Addr::from),
                "16",
            ),
        );
        Ok(ExtHandshake {
            m,
            v,
            p,
            yourip,
            reqq,
            metadata_size,
            ipv4,
            ipv6,
            upload_only,
            complete_ago,
            issues,
            dict: Some(dict),
        })
    }

    /// The id the sender wants `name` under; `None` if absent or disabled (id 0).
    pub fn id_of(&self, name: &str) -> Option<u8> {
        self.m
            .iter()
            .find(|(n, _)| *n == name.as_bytes())
            .map(|(_, id)| *id)
            .filter(|id| *id != 0)
    }

    /// `v` as text, if it is UTF-8.
    pub fn client(&self) -> Option<&'a str> {
        self.v.and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Any key of the decoded dictionary (known or not).
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.dict.as_ref()?.get(key)
    }

    /// Keys of the decoded dictionary that this type has no field for.
    pub fn unknown_keys(&self) -> impl Iterator<Item = (&'a [u8], &Value<'a>)> + '_ {
        self.dict
            .as_ref()
            .and_then(|d| d.as_dict())
            .unwrap_or(&[])
            .iter()
            .filter(|(k, _)| !KNOWN_HANDSHAKE_KEYS.contains(k))
            .map(|(k, v)| (*k, v))
    }

    /// Encode the named fields (not `dict` or `issues`) as a bencoded dictionary.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = OwnedValue::dict();
        for (name, id) in &self.m {
            m = m.with(name.to_vec(), i64::from(*id));
        }
        let mut d = OwnedValue::dict().with("m", m);
        let ip = |ip: IpAddr| match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        if let Some(v) = self.v {
            d = d.with("v", v);
        }
        if let Some(p) = self.p {
            d = d.with("p", i64::from(p));
        }
        if let Some(a) = self.yourip {
            d = d.with("yourip", ip(a));
        }
        if let Some(a) = self.ipv4 {
            d = d.with("ipv4", a.octets().to_vec());
        }
        if let Some(a) = self.ipv6 {
            d = d.with("ipv6", a.octets().to_vec());
        }
        for (key, val) in [
            ("reqq", self.reqq),
            ("metadata_size", self.metadata_size),
            ("upload_only", self.upload_only),
            ("complete_ago", self.complete_ago),
        ] {
            if let Some(i) = val {
                d = d.with(key, i);
            }
        }
        d.encode()
    }

    /// The whole extended message (length prefix, id 20, ext id 0, dictionary).
    pub fn to_message_bytes(&self) -> Vec<u8> {
        let payload = self.encode();
        let mut out = Vec::with_capacity(payload.len() + 6);
        super::Message::Extended {
            ext_id: HANDSHAKE_ID,
            payload: &payload,
        }
        .encode_into(&mut out);
        out
    }
}

/// A ut_metadata (BEP 9) message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataMessage<'a> {
    /// msg_type 0: please send this piece of the info dictionary.
    Request { piece: u32 },
    /// msg_type 1: a piece; `data` is the raw bytes after the bencoded dictionary.
    Data {
        /// Piece index (16 KiB units).
        piece: u32,
        /// Size of the whole info dictionary.
        total_size: u32,
        /// This piece's bytes.
        data: &'a [u8],
    },
    /// msg_type 2: the sender will not send this piece.
    Reject { piece: u32 },
}

impl<'a> MetadataMessage<'a> {
    /// Decode a ut_metadata payload (after the extended id byte).
    pub fn decode(payload: &'a [u8]) -> Result<MetadataMessage<'a>, ExtError> {
        let (dict, used) = decode_dict_prefix(payload)?;
        let rest = &payload[used..];
        let msg_type = dict.req_int("msg_type")?;
        let piece = int_in::<u32>(&dict, "piece")?
            .ok_or_else(|| FieldError::Missing("piece".to_string()))?;
        let no_trailing = |kind: &'static str| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err(ExtError::MetadataTrailing {
                    kind,
                    len: rest.len(),
                    expected: "0",
                })
            }
        };
        match msg_type {
            0 => no_trailing("request").map(|_| MetadataMessage::Request { piece }),
            2 => no_trailing("reject").map(|_| MetadataMessage::Reject { piece }),
            1 => {
                let total_size = int_in::<u32>(&dict, "total_size")?
                    .ok_or_else(|| FieldError::Missing("total_size".to_string()))?;
                if rest.len() > METADATA_PIECE_LEN {
                    return Err(ExtError::MetadataTrailing {
                        kind: "data",
                        len: rest.len(),
                        expected: "at most 16384",
                    });
                }
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: rest,
                })
            }
            other => Err(ExtError::UnknownMetadataType(other)),
        }
    }

    /// Append the payload (dictionary, then data for `Data`) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let (msg_type, piece) = match *self {
            MetadataMessage::Request { piece } => (0, piece),
            MetadataMessage::Data { piece, .. } => (1, piece),
            MetadataMessage::Reject { piece } => (2, piece),
        };
        let mut d = OwnedValue::dict()
            .with("msg_type", msg_type as i64)
            .with("piece", i64::from(piece));
        if let MetadataMessage::Data { total_size, .. } = *self {
            d = d.with("total_size", i64::from(total_size));
        }
        d.encode_into(out);
        if let MetadataMessage::Data { data, .. } = *self {
            out.extend_from_slice(data);
        }
    }

    /// The payload as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }
}

/// Number of ut_metadata pieces for an info dictionary of `total_size` bytes.
pub fn metadata_piece_count(total_size: u32) -> u32 {
    total_size.div_ceil(METADATA_PIECE_LEN as u32)
}

/// ut_pex per-peer flags (BEP 11, one byte per added peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: prefers encryption.
    pub fn prefers_encryption(self) -> bool {
        self.0 & 0x01 != 0
    }
    /// 0x02: seed or upload-only.
    pub fn seed(self) -> bool {
        self.0 & 0x02 != 0
    }
    /// 0x04: supports uTP.
    pub fn utp(self) -> bool {
        self.0 & 0x04 != 0
    }
    /// 0x08: supports ut_holepunch.
    pub fn holepunch(self) -> bool {
        self.0 & 0x08 != 0
    }
    /// 0x10: outgoing: the sender connected to this peer, so it is reachable.
    pub fn reachable(self) -> bool {
        self.0 & 0x10 != 0
    }
}

/// One added peer from ut_pex.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PexPeer {
    /// Address and listen port.
    pub addr: SocketAddr,
    /// What the sender knows about the peer.
    pub flags: PexFlags,
}

/// A ut_pex message: peers added and dropped since the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// `added` (IPv4) and `added6` (IPv6), with `added.f` / `added6.f` flags (0 if missing).
    pub added: Vec<PexPeer>,
    /// `dropped` and `dropped6`.
    pub dropped: Vec<SocketAddr>,
    /// Entries present in the message but not decoded because a list hit the cap.
    pub skipped: usize,
}

fn compact_v4(b: &[u8]) -> SocketAddr {
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be_bytes([b[4], b[5]])))
}

fn compact_v6(b: &[u8]) -> SocketAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    let port = u16::from_be_bytes([b[16], b[17]]);
    SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(a), port, 0, 0))
}

fn compact_encode(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

impl PexMessage {
    /// Decode a ut_pex payload with the default per-list cap.
    pub fn decode(payload: &[u8]) -> Result<PexMessage, ExtError> {
        Self::decode_with(payload, DEFAULT_MAX_PEX_PEERS)
    }

    /// Decode a ut_pex payload; at most `max_per_list` entries are taken from each of the
    /// four address lists, the rest are counted in `skipped`.
    pub fn decode_with(payload: &[u8], max_per_list: usize) -> Result<PexMessage, ExtError> {
        let dict = decode_dict(payload)?;
        let mut msg = PexMessage::default();
        type Parse = fn(&[u8]) -> SocketAddr;
        let lists: [(&'static str, Option<&'static str>, usize, Parse); 4] = [
            ("added", Some("added.f"), 6, compact_v4),
            ("added6", Some("added6.f"), 18, compact_v6),
            ("dropped", None, 6, compact_v4),
            ("dropped6", None, 18, compact_v6),
        ];
        for (field, flags_field, entry, parse) in lists {
            let Some(bytes) = dict.opt_bytes(field)? else {
                continue;
            };
            if bytes.len() % entry != 0 {
                return Err(ExtError::PexLength {
                    field,
                    len: bytes.len(),
                    entry,
                });
            }
            let flags = match flags_field {
                Some(f) => dict.opt_bytes(f)?.unwrap_or(&[]),
                None => &[],
            };
            let count = bytes.len() / entry;
            let take = count.min(max_per_list);
            msg.skipped += count - take;
            for (i, chunk) in bytes.chunks_exact(entry).take(take).enumerate() {
                let addr = parse(chunk);
                if flags_field.is_some() {
                    let flags = PexFlags(flags.get(i).copied().unwrap_or(0));
                    msg.added.push(PexPeer { addr, flags });
                } else {
                    msg.dropped.push(addr);
                }
            }
        }
        Ok(msg)
    }

    /// Encode as a ut_pex payload (empty lists are left out, flags always written).
    pub fn encode(&self) -> Vec<u8> {
        let mut d = OwnedValue::dict();
        let mut put = |key: &str, val: Vec<u8>| {
            if !val.is_empty() {
                d = std::mem::replace(&mut d, OwnedValue::Int(0)).with(key, val);
            }
        };
        let (mut a4, mut f4, mut a6, mut f6) = (vec![], vec![], vec![], vec![]);
        for p in &self.added {
            if p.addr.is_ipv4() {
                compact_encode(&p.addr, &mut a4);
                f4.push(p.flags.0);
            } else {
                compact_encode(&p.addr, &mut a6);
                f6.push(p.flags.0);
            }
        }
        let (mut d4, mut d6) = (vec![], vec![]);
        for a in &self.dropped {
            compact_encode(a, if a.is_ipv4() { &mut d4 } else { &mut d6 });
        }
        put("added", a4);
        put("added.f", f4);
        put("added6", a6);
        put("added6.f", f6);
        put("dropped", d4);
        put("dropped6", d6);
        d.encode()
    }
}

//! KRPC, the DHT's message format (BEP 5), with the extensions a scanner meets:
//! IPv6 (`nodes6`, `want`, BEP 32), scrapes (`scrape`/`noseed`, `BFsd`/`BFpe`, BEP 33),
//! node-id security (`ip`, BEP 42), read-only nodes (`ro`, BEP 43) and infohash sampling
//! (`sample_infohashes`, BEP 51).
//!
//! [`decode`] turns one UDP payload into a [`Message`]; [`Message::encode`] does the reverse.
//! A response is decoded without knowing which query it answers (KRPC responses do not say);
//! the caller matches it by transaction id and then uses the typed views
//! ([`Response::get_peers`], [`Response::find_node`], [`Response::sample_infohashes`]).
//!
//! Unknown keys are ignored (clients add their own, e.g. libtorrent's `p` and `bs`); a known
//! key with the wrong type or length is an error naming the key and its byte offset.

mod bloom;
mod compact;
mod node_id;

pub use bloom::{BloomFilter, BLOOM_BYTES};
pub use compact::{
    decode_nodes_v4, decode_nodes_v6, decode_peer, encode_nodes_v4, encode_nodes_v6, encode_peer,
    peer_bytes, NodeV4, NodeV6, NODE_V4_LEN, NODE_V6_LEN, PEER_V4_LEN, PEER_V6_LEN,
};
pub use node_id::{
    bep42_exempt, bep42_hash, bep42_id_matches, bep42_node_id, bep42_verify, crc32c, Id20,
};

use crate::bencode::{self, encode_bytes, encode_int, FieldError, Limits, Value};
use std::net::SocketAddr;

/// Longest transaction id accepted (BEP 5 suggests 2 bytes; real clients use up to 8).
pub const MAX_TRANSACTION_ID_LEN: usize = 32;
/// Longest `v` (client version) accepted; the convention is 4 bytes.
pub const MAX_VERSION_LEN: usize = 32;
/// Longest write token accepted (libtorrent uses 4 bytes, others 8 or 20).
pub const MAX_TOKEN_LEN: usize = 64;
/// Longest query method name accepted.
pub const MAX_METHOD_LEN: usize = 64;

/// Bencode limits for one KRPC datagram: a UDP payload is at most 64 KiB, and no valid
/// message nests deeper than 4 levels.
pub const LIMITS: Limits = Limits {
    max_depth: 8,
    max_size: 65_536,
    max_values: 16_384,
    require_sorted_keys: false,
};

/// Error codes of BEP 5.
pub mod error_code {
    /// 201: generic error.
    pub const GENERIC: i64 = 201;
    /// 202: server error.
    pub const SERVER: i64 = 202;
    /// 203: protocol error (malformed packet, invalid arguments, bad token).
    pub const PROTOCOL: i64 = 203;
    /// 204: method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
}

/// Why a datagram is not a valid KRPC message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    #[error("not bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error(transparent)]
    Field(#[from] FieldError),
}

/// One KRPC message: the envelope common to all kinds, and the kind-specific body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `t`: chosen by the querier, echoed by the responder.
    pub transaction_id: Vec<u8>,
    /// `v`: client and version, conventionally 2 letters + 2 version bytes (BEP 5 says so
    /// in passing); see [`crate::client_id::from_dht_version`].
    pub version: Option<Vec<u8>>,
    /// `ip`: the address the sender sees us at (BEP 42), usually only in responses.
    pub external_ip: Option<SocketAddr>,
    /// `ro`: the sender is a read-only node and must not be queried (BEP 43).
    pub read_only: bool,
    /// Query, response or error.
    pub body: Body,
}

/// The three KRPC message kinds (`y` = `q`, `r`, `e`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error(ErrorReply),
}

/// A query (`y` = `q`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `a.id`: the querying node's id.
    pub id: Id20,
    /// `a.want` (BEP 32): which address families of nodes the querier wants back.
    pub want: Want,
    /// The method and its own arguments.
    pub kind: QueryKind,
}

/// `want` flags (BEP 32). Both false means the key is absent (the responder answers in the
/// family the query arrived on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

/// A query method and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKind {
    Ping,
    FindNode {
        target: Id20,
    },
    GetPeers {
        info_hash: Id20,
        /// BEP 33: prefer non-seeds in `values`.
        noseed: bool,
        /// BEP 33: include `BFsd`/`BFpe` bloom filters.
        scrape: bool,
    },
    AnnouncePeer {
        info_hash: Id20,
        port: u16,
        /// Use the UDP source port instead of `port`.
        implied_port: bool,
        token: Vec<u8>,
        /// BEP 33: the announcer is a seed.
        seed: bool,
    },
    SampleInfohashes {
        target: Id20,
    },
    /// Any other method. BEP 5 asks nodes to answer unknown methods that carry a `target`
    /// or `info_hash` like `find_node`, so those are kept.
    Other {
        method: Vec<u8>,
        target: Option<Id20>,
        info_hash: Option<Id20>,
    },
}

/// The known query methods, for naming which query a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Ping,
    FindNode,
    GetPeers,
    AnnouncePeer,
    SampleInfohashes,
}

impl Method {
    /// The method's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Ping => "ping",
            Method::FindNode => "find_node",
            Method::GetPeers => "get_peers",
            Method::AnnouncePeer => "announce_peer",
            Method::SampleInfohashes => "sample_infohashes",
        }
    }

    fn from_name(name: &[u8]) -> Option<Method> {
        Some(match name {
            b"ping" => Method::Ping,
            b"find_node" => Method::FindNode,
            b"get_peers" => Method::GetPeers,
            b"announce_peer" => Method::AnnouncePeer,
            b"sample_infohashes" => Method::SampleInfohashes,
            _ => return None,
        })
    }
}

impl QueryKind {
    /// The method name on the wire.
    pub fn method_name(&self) -> &[u8] {
        match self {
            QueryKind::Ping => b"ping",
            QueryKind::FindNode { .. } => b"find_node",
            QueryKind::GetPeers { .. } => b"get_peers",
            QueryKind::AnnouncePeer { .. } => b"announce_peer",
            QueryKind::SampleInfohashes { .. } => b"sample_infohashes",
            QueryKind::Other { method, .. } => method,
        }
    }

    /// The known method, `None` for [`QueryKind::Other`].
    pub fn method(&self) -> Option<Method> {
        Method::from_name(self.method_name())
    }
}

/// A response (`y` = `r`). Every field but `id` is optional on the wire; which ones a valid
/// answer needs depends on the query (see the typed views).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    /// `r.id`: the responding node's id.
    pub id: Id20,
    /// `nodes`: IPv4 nodes close to the target.
    pub nodes: Option<Vec<NodeV4>>,
    /// `nodes6` (BEP 32): IPv6 nodes close to the target.
    pub nodes6: Option<Vec<NodeV6>>,
    /// `values`: peers for the info-hash (compact, IPv4 or IPv6 per entry).
    pub values: Option<Vec<SocketAddr>>,
    /// `token`: write token for a later `announce_peer`.
    pub token: Option<Vec<u8>>,
    /// `samples` (BEP 51): info-hashes the node stores.
    pub samples: Option<Vec<Id20>>,
    /// `num` (BEP 51): how many info-hashes the node stores in total.
    pub num: Option<i64>,
    /// `interval` (BEP 51): seconds before the node's sample changes.
    pub interval: Option<i64>,
    /// `BFsd` (BEP 33): bloom filter of seeds.
    pub seeds_filter: Option<Box<BloomFilter>>,
    /// `BFpe` (BEP 33): bloom filter of peers (non-seeds).
    pub peers_filter: Option<Box<BloomFilter>>,
}

/// An error (`y` = `e`): `e` = [code, message].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorReply {
    /// 201-204 in BEP 5 ([`error_code`]); other values occur.
    pub code: i64,
    /// Human-readable text (bytes on the wire; see [`ErrorReply::message_lossy`]).
    pub message: Vec<u8>,
    /// Some nodes (libtorrent) also send `r.id` with an error.
    pub id: Option<Id20>,
}

impl ErrorReply {
    /// The message as text (invalid UTF-8 replaced).
    pub fn message_lossy(&self) -> String {
        String::from_utf8_lossy(&self.message).into_owned()
    }
}

/// Typed view of a `get_peers` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GetPeersReply<'a> {
    pub id: Id20,
    /// Required to announce later; nodes that will not store the announce omit it (BEP 33).
    pub token: Option<&'a [u8]>,
    pub peers: &'a [SocketAddr],
    pub nodes: &'a [NodeV4],
    pub nodes6: &'a [NodeV6],
    pub seeds_filter: Option<&'a BloomFilter>,
    pub peers_filter: Option<&'a BloomFilter>,
}

/// Typed view of a `find_node` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FindNodeReply<'a> {
    pub id: Id20,
    pub nodes: &'a [NodeV4],
    pub nodes6: &'a [NodeV6],
}

/// Typed view of a `sample_infohashes` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleInfohashesReply<'a> {
    pub id: Id20,
    pub samples: &'a [Id20],
    pub num: Option<i64>,
    pub interval: Option<i64>,
    pub nodes: &'a [NodeV4],
    pub nodes6: &'a [NodeV6],
}

impl Response {
    /// A response with only an id (the answer to `ping` and `announce_peer`).
    pub fn with_id(id: Id20) -> Self {
        Response {
            id,
            ..Default::default()
        }
    }

    fn nodes_or_empty(&self) -> (&[NodeV4], &[NodeV6]) {
        (
            self.nodes.as_deref().unwrap_or(&[]),
            self.nodes6.as_deref().unwrap_or(&[]),
        )
    }

    /// View as a `get_peers` answer: needs `values` or `nodes`/`nodes6`.
    pub fn get_peers(&self) -> Result<GetPeersReply<'_>, FieldError> {
        if self.values.is_none() && self.nodes.is_none() && self.nodes6.is_none() {
            return Err(FieldError::Missing("values or nodes".into()));
        }
        let (nodes, nodes6) = self.nodes_or_empty();
        Ok(GetPeersReply {
            id: self.id,
            token: self.token.as_deref(),
            peers: self.values.as_deref().unwrap_or(&[]),
            nodes,
            nodes6,
            seeds_filter: self.seeds_filter.as_deref(),
            peers_filter: self.peers_filter.as_deref(),
        })
    }

    /// View as a `find_node` answer: needs `nodes` or `nodes6`.
    pub fn find_node(&self) -> Result<FindNodeReply<'_>, FieldError> {
        if self.nodes.is_none() && self.nodes6.is_none() {
            return Err(FieldError::Missing("nodes".into()));
        }
        let (nodes, nodes6) = self.nodes_or_empty();
        Ok(FindNodeReply {
            id: self.id,
            nodes,
            nodes6,
        })
    }

    /// View as a `sample_infohashes` answer: needs `samples` (BEP 51 says supporting nodes
    /// always send it, possibly empty, which is how support is told apart).
    pub fn sample_infohashes(&self) -> Result<SampleInfohashesReply<'_>, FieldError> {
        let samples = self
            .samples
            .as_deref()
            .ok_or_else(|| FieldError::Missing("samples".into()))?;
        let (nodes, nodes6) = self.nodes_or_empty();
        Ok(SampleInfohashesReply {
            id: self.id,
            samples,
            num: self.num,
            interval: self.interval,
            nodes,
            nodes6,
        })
    }

    /// Check that the response has what an answer to `method` needs.
    pub fn check_answers(&self, method: Method) -> Result<(), FieldError> {
        match method {
            Method::Ping | Method::AnnouncePeer => Ok(()),
            Method::FindNode => self.find_node().map(|_| ()),
            Method::GetPeers => self.get_peers().map(|_| ()),
            Method::SampleInfohashes => self.sample_infohashes().map(|_| ()),
        }
    }
}

impl Message {
    /// A message with this transaction id and body, and no optional envelope fields.
    pub fn new(transaction_id: impl Into<Vec<u8>>, body: Body) -> Self {
        Message {
            transaction_id: transaction_id.into(),
            version: None,
            external_ip: None,
            read_only: false,
            body,
        }
    }

    /// The node id of the sender, if the message carries one.
    pub fn sender_id(&self) -> Option<Id20> {
        match &self.body {
            Body::Query(q) => Some(q.id),
            Body::Response(r) => Some(r.id),
            Body::Error(e) => e.id,
        }
    }

    /// The sender's client and version, read from `v`.
    pub fn client(&self) -> Option<crate::client_id::ClientId> {
        self.version
            .as_deref()
            .map(crate::client_id::from_dht_version)
    }

    /// Encode to bencode (canonical: keys sorted).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(&mut out);
        out
    }

    /// Append the bencoded message to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(b'd');
        match &self.body {
            Body::Query(q) => {
                key(out, "a");
                encode_query_args(out, q);
            }
            Body::Error(e) => {
                key(out, "e");
                out.push(b'l');
                encode_int(out, e.code);
                encode_bytes(out, &e.message);
                out.push(b'e');
            }
            Body::Response(_) => {}
        }
        if let Some(ip) = &self.external_ip {
            key(out, "ip");
            encode_bytes(out, &peer_bytes(ip));
        }
        if let Body::Query(q) = &self.body {
            key(out, "q");
            encode_bytes(out, q.kind.method_name());
        }
        match &self.body {
            Body::Response(r) => {
                key(out, "r");
                encode_response(out, r);
            }
            Body::Error(ErrorReply { id: Some(id), .. }) => {
                key(out, "r");
                out.push(b'd');
                key(out, "id");
                encode_bytes(out, &id.0);
                out.push(b'e');
            }
            _ => {}
        }
        if self.read_only {
            key(out, "ro");
            encode_int(out, 1);
        }
        key(out, "t");
        encode_bytes(out, &self.transaction_id);
        if let Some(v) = &self.version {
            key(out, "v");
            encode_bytes(out, v);
        }
        key(out, "y");
        encode_bytes(
            out,
            match self.body {
                Body::Query(_) => b"q",
                Body::Response(_) => b"r",
                Body::Error(_) => b"e",
            },
        );
        out.push(b'e');
    }
}

fn key(out: &mut Vec<u8>, k: &str) {
    encode_bytes(out, k.as_bytes());
}

fn flag(out: &mut Vec<u8>, k: &str, on: bool) {
    if on {
        key(out, k);
        encode_int(out, 1);
    }
}

// Keys are written in sorted order by hand so no tree is built.
fn encode_query_args(out: &mut Vec<u8>, q: &Query) {
    out.push(b'd');
    key(out, "id");
    encode_bytes(out, &q.id.0);
    let (target, info_hash) = match &q.kind {
        QueryKind::FindNode { target } | QueryKind::SampleInfohashes { target } => {
            (Some(target), None)
        }
        QueryKind::GetPeers { info_hash, .. } | QueryKind::AnnouncePeer { info_hash, .. } => {
            (None, Some(info_hash))
        }
        QueryKind::Other {
            target, info_hash, ..
        } => (target.as_ref(), info_hash.as_ref()),
        QueryKind::Ping => (None, None),
    };
    if let QueryKind::AnnouncePeer { implied_port, .. } = &q.kind {
        flag(out, "implied_port", *implied_port);
    }
    if let Some(h) = info_hash {
        key(out, "info_hash");
        encode_bytes(out, &h.0);
    }
    if let QueryKind::GetPeers { noseed, .. } = &q.kind {
        flag(out, "noseed", *noseed);
    }
    if let QueryKind::AnnouncePeer { port, .. } = &q.kind {
        key(out, "port");
        encode_int(out, *port as i64);
    }
    if let QueryKind::GetPeers { scrape, .. } = &q.kind {
        flag(out, "scrape", *scrape);
    }
    if let QueryKind::AnnouncePeer { seed, .. } = &q.kind {
        flag(out, "seed", *seed);
    }
    if let Some(t) = target {
        key(out, "target");
        encode_bytes(out, &t.0);
    }
    if let QueryKind::AnnouncePeer { token, .. } = &q.kind {
        key(out, "token");
        encode_bytes(out, token);
    }
    if q.want.n4 || q.want.n6 {
        key(out, "want");
        out.push(b'l');
        if q.want.n4 {
            encode_bytes(out, b"n4");
        }
        if q.want.n6 {
            encode_bytes(out, b"n6");
        }
        out.push(b'e');
    }
    out.push(b'e');
}

fn encode_response(out: &mut Vec<u8>, r: &Response) {
    out.push(b'd');
    // Upper-case keys sort first.
    if let Some(f) = &r.peers_filter {
        key(out, "BFpe");
        encode_bytes(out, &f.0);
    }
    if let Some(f) = &r.seeds_filter {
        key(out, "BFsd");
        encode_bytes(out, &f.0);
    }
    key(out, "id");
    encode_bytes(out, &r.id.0);
    if let Some(i) = r.interval {
        key(out, "interval");
        encode_int(out, i);
    }
    if let Some(n) = &r.nodes {
        key(out, "nodes");
        encode_bytes(out, &encode_nodes_v4(n));
    }
    if let Some(n) = &r.nodes6 {
        key(out, "nodes6");
        encode_bytes(out, &encode_nodes_v6(n));
    }
    if let Some(n) = r.num {
        key(out, "num");
        encode_int(out, n);
    }
    if let Some(s) = &r.samples {
        key(out, "samples");
        let mut all = Vec::with_capacity(s.len() * 20);
        for id in s {
            all.extend_from_slice(&id.0);
        }
        encode_bytes(out, &all);
    }
    if let Some(t) = &r.token {
        key(out, "token");
        encode_bytes(out, t);
    }
    if let Some(v) = &r.values {
        key(out, "values");
        out.push(b'l');
        for p in v {
            encode_bytes(out, &peer_bytes(p));
        }
        out.push(b'e');
    }
    out.push(b'e');
}

/// Decode one KRPC datagram.
pub fn decode(buf: &[u8]) -> Result<Message, KrpcError> {
    let root = bencode::decode_with(buf, LIMITS)?;
    if root.as_dict().is_none() {
        return Err(FieldError::wrong_type("(message)", &root, "dictionary").into());
    }
    let transaction_id = capped(&root, "t", MAX_TRANSACTION_ID_LEN)?.to_vec();
    let version = match root.get("v") {
        None => None,
        Some(_) => Some(capped(&root, "v", MAX_VERSION_LEN)?.to_vec()),
    };
    let external_ip = match root.get("ip") {
        None => None,
        Some(v) => {
            let b = v
                .as_bytes()
                .ok_or_else(|| FieldError::wrong_type("ip", v, "byte string"))?;
            Some(decode_peer(b).ok_or_else(|| {
                FieldError::invalid("ip", v, format!("{} bytes, expected 6 or 18", b.len()))
            })?)
        }
    };
    let read_only = root.opt_int("ro")?.is_some_and(|v| v == 1);
    let y = root.req_bytes("y")?;
    let body = match y {
        b"q" => Body::Query(decode_query(&root)?),
        b"r" => Body::Response(decode_response(root.req("r")?)?),
        b"e" => Body::Error(decode_error(&root)?),
        _ => {
            let v = root.req("y")?;
            return Err(FieldError::invalid(
                "y",
                v,
                format!("unknown message type {}", bencode::DebugBytes(y)),
            )
            .into());
        }
    };
    Ok(Message {
        transaction_id,
        version,
        external_ip,
        read_only,
        body,
    })
}

/// A byte string no longer than `max`.
fn capped<'a>(dict: &Value<'a>, field: &str, max: usize) -> Result<&'a [u8], FieldError> {
    let b = dict.req_bytes(field)?;
    if b.len() > max {
        let v = dict.req(field)?;
        return Err(FieldError::invalid(
            field,
            v,
            format!("{} bytes, more than {max}", b.len()),
        ));
    }
    Ok(b)
}

fn id20(dict: &Value<'_>, field: &str) -> Result<Id20, FieldError> {
    let b = dict.req_bytes(field)?;
    Id20::from_slice(b).ok_or_else(|| {
        // req_bytes succeeded, so req does too.
        match dict.req(field) {
            Ok(v) => FieldError::invalid(field, v, format!("{} bytes, expected 20", b.len())),
            Err(e) => e,
        }
    })
}

fn opt_id20(dict: &Value<'_>, field: &str) -> Result<Option<Id20>, FieldError> {
    match dict.get(field) {
        None => Ok(None),
        Some(_) => id20(dict, field).map(Some),
    }
}

/// An optional integer flag: present and non-zero means set.
fn opt_flag(dict: &Value<'_>, field: &str) -> Result<bool, FieldError> {
    Ok(dict.opt_int(field)?.is_some_and(|v| v != 0))
}

fn decode_query(root: &Value<'_>) -> Result<Query, FieldError> {
    let method = capped(root, "q", MAX_METHOD_LEN)?;
    let a = root.req("a")?;
    if a.as_dict().is_none() {
        return Err(FieldError::wrong_type("a", a, "dictionary"));
    }
    let id = id20(a, "id")?;
    let want = match a.get("want") {
        None => Want::default(),
        Some(w) => {
            let list = w
                .as_list()
                .ok_or_else(|| FieldError::wrong_type("want", w, "list"))?;
            let mut want = Want::default();
            for item in list {
                match item.as_bytes() {
                    Some(b"n4") => want.n4 = true,
                    Some(b"n6") => want.n6 = true,
                    _ => {} // other families may be defined later
                }
            }
            want
        }
    };
    let kind = match Method::from_name(method) {
        Some(Method::Ping) => QueryKind::Ping,
        Some(Method::FindNode) => QueryKind::FindNode {
            target: id20(a, "target")?,
        },
        Some(Method::GetPeers) => QueryKind::GetPeers {
            info_hash: id20(a, "info_hash")?,
            noseed: opt_flag(a, "noseed")?,
            scrape: opt_flag(a, "scrape")?,
        },
        Some(Method::AnnouncePeer) => {
            let port_value = a.req_int("port")?;
            let port = u16::try_from(port_value).map_err(|_| {
                // req_int succeeded, so the key exists.
                match a.req("port") {
                    Ok(v) => FieldError::invalid("port", v, format!("{port_value} out of range")),
                    Err(e) => e,
                }
            })?;
            QueryKind::AnnouncePeer {
                info_hash: id20(a, "info_hash")?,
                port,
                implied_port: opt_flag(a, "implied_port")?,
                token: capped(a, "token", MAX_TOKEN_LEN)?.to_vec(),
                seed: opt_flag(a, "seed")?,
            }
        }
        Some(Method::SampleInfohashes) => QueryKind::SampleInfohashes {
            target: id20(a, "target")?,
        },
        None => QueryKind::Other {
            method: method.to_vec(),
            target: opt_id20(a, "target")?,
            info_hash: opt_id20(a, "info_hash")?,
        },
    };
    Ok(Query { id, want, kind })
}

fn decode_response(r: &Value<'_>) -> Result<Response, FieldError> {
    if r.as_dict().is_none() {
        return Err(FieldError::wrong_type("r", r, "dictionary"));
    }
    let id = id20(r, "id")?;
    let nodes = match r.get("nodes") {
        None => None,
        Some(v) => {
            let b = v
                .as_bytes()
                .ok_or_else(|| FieldError::wrong_type("nodes", v, "byte string"))?;
            Some(decode_nodes_v4(b).ok_or_else(|| {
                FieldError::invalid(
                    "nodes",
                    v,
                    format!("{} bytes, not a multiple of {NODE_V4_LEN}", b.len()),
                )
            })?)
        }
    };
    let nodes6 = match r.get("nodes6") {
        None => None,
        Some(v) => {
            let b = v
                .as_bytes()
                .ok_or_else(|| FieldError::wrong_type("nodes6", v, "byte string"))?;
            Some(decode_nodes_v6(b).ok_or_else(|| {
                FieldError::invalid(
                    "nodes6",
                    v,
                    format!("{} bytes, not a multiple of {NODE_V6_LEN}", b.len()),
                )
            })?)
        }
    };
    let values = match r.get("values") {
        None => None,
        Some(v) => {
            let list = v
                .as_list()
                .ok_or_else(|| FieldError::wrong_type("values", v, "list"))?;
            let mut peers = Vec::with_capacity(list.len());
            for item in list {
                let b = item
                    .as_bytes()
                    .ok_or_else(|| FieldError::wrong_type("values", item, "byte string"))?;
                peers.push(decode_peer(b).ok_or_else(|| {
                    FieldError::invalid(
                        "values",
                        item,
                        format!("peer of {} bytes, expected 6 or 18", b.len()),
                    )
                })?);
            }
            Some(peers)
        }
    };
    let token = match r.get("token") {
        None => None,
        Some(_) => Some(capped(r, "token", MAX_TOKEN_LEN)?.to_vec()),
    };
    let samples = match r.get("samples") {
        None => None,
        Some(v) => {
            let b = v
                .as_bytes()
                .ok_or_else(|| FieldError::wrong_type("samples", v, "byte string"))?;
            if b.len() % 20 != 0 {
                return Err(FieldError::invalid(
                    "samples",
                    v,
                    format!("{} bytes, not a multiple of 20", b.len()),
                ));
            }
            Some(b.chunks_exact(20).filter_map(Id20::from_slice).collect())
        }
    };
    let filter = |field: &str| -> Result<Option<Box<BloomFilter>>, FieldError> {
        match r.get(field) {
            None => Ok(None),
            Some(v) => {
                let b = v
                    .as_bytes()
                    .ok_or_else(|| FieldError::wrong_type(field, v, "byte string"))?;
                BloomFilter::from_slice(b)
                    .map(|f| Some(Box::new(f)))
                    .ok_or_else(|| {
                        FieldError::invalid(
                            field,
                            v,
                            format!("{} bytes, expected {BLOOM_BYTES}", b.len()),
                        )
                    })
            }
        }
    };
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
        samples,
        num: r.opt_int("num")?,
        interval: r.opt_int("interval")?,
        seeds_filter: filter("BFsd")?,
        peers_filter: filter("BFpe")?,
    })
}

fn decode_error(root: &Value<'_>) -> Result<ErrorReply, FieldError> {
    let e = root.req("e")?;
    let list = e
        .as_list()
        .ok_or_else(|| FieldError::wrong_type("e", e, "list"))?;
    let (code, message) = match list {
        [code, message, ..] => (
            code.as_int()
                .ok_or_else(|| FieldError::wrong_type("e[0]", code, "integer"))?,
            message
                .as_bytes()
                .ok_or_else(|| FieldError::wrong_type("e[1]", message, "byte string"))?,
        ),
        _ => {
            return Err(FieldError::invalid(
                "e",
                e,
                format!("{} items, expected [code, message]", list.len()),
            ))
        }
    };
    // Some nodes also identify themselves in an error; a malformed `r` is ignored here
    // because the error itself is what matters.
    let id = root
        .get("r")
        .and_then(|r| r.get("id"))
        .and_then(|v| v.as_bytes())
        .and_then(Id20::from_slice);
    Ok(ErrorReply {
        code,
        message: message.to_vec(),
        id,
    })
}

#[cfg(test)]
mod tests;

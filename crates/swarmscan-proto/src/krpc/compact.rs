//! Compact encodings (BEP 5, BEP 32): peers as address+port (6 or 18 bytes), nodes as
//! id+address+port (26 or 38 bytes). All big-endian.

use super::Id20;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// Length of a compact IPv4 peer (address + port).
pub const PEER_V4_LEN: usize = 6;
/// Length of a compact IPv6 peer (address + port).
pub const PEER_V6_LEN: usize = 18;
/// Length of a compact IPv4 node (id + address + port).
pub const NODE_V4_LEN: usize = 26;
/// Length of a compact IPv6 node (id + address + port).
pub const NODE_V6_LEN: usize = 38;

/// A DHT node reachable over IPv4 (an entry of `nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeV4 {
    pub id: Id20,
    pub addr: SocketAddrV4,
}

/// A DHT node reachable over IPv6 (an entry of `nodes6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeV6 {
    pub id: Id20,
    pub addr: SocketAddrV6,
}

/// Decode a compact peer of either family by its length (6 or 18 bytes).
pub fn decode_peer(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        PEER_V4_LEN => Some(SocketAddr::V4(decode_v4(b))),
        PEER_V6_LEN => Some(SocketAddr::V6(decode_v6(b))),
        _ => None,
    }
}

/// Append a compact peer (6 bytes for IPv4, 18 for IPv6).
pub fn encode_peer(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => encode_v4(out, a),
        SocketAddr::V6(a) => encode_v6(out, a),
    }
}

/// The compact form of one peer, as an owned buffer.
pub fn peer_bytes(addr: &SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(PEER_V6_LEN);
    encode_peer(&mut out, addr);
    out
}

fn decode_v4(b: &[u8]) -> SocketAddrV4 {
    let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    SocketAddrV4::new(ip, u16::from_be_bytes([b[4], b[5]]))
}

fn decode_v6(b: &[u8]) -> SocketAddrV6 {
    let mut octets = [0u8; 16];
    octets.copy_from_slice(&b[..16]);
    SocketAddrV6::new(
        Ipv6Addr::from(octets),
        u16::from_be_bytes([b[16], b[17]]),
        0,
        0,
    )
}

fn encode_v4(out: &mut Vec<u8>, a: &SocketAddrV4) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn encode_v6(out: &mut Vec<u8>, a: &SocketAddrV6) {
    out.extend_from_slice(&a.ip().octets());
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn id_of(chunk: &[u8]) -> Id20 {
    let mut id = [0u8; 20];
    id.copy_from_slice(&chunk[..20]);
    Id20(id)
}

/// Decode a `nodes` string; `None` unless its length is a multiple of 26.
pub fn decode_nodes_v4(b: &[u8]) -> Option<Vec<NodeV4>> {
    if b.len() % NODE_V4_LEN != 0 {
        return None;
    }
    Some(
        b.chunks_exact(NODE_V4_LEN)
            .map(|c| NodeV4 {
                id: id_of(c),
                addr: decode_v4(&c[20..]),
            })
            .collect(),
    )
}

/// Decode a `nodes6` string; `None` unless its length is a multiple of 38.
pub fn decode_nodes_v6(b: &[u8]) -> Option<Vec<NodeV6>> {
    if b.len() % NODE_V6_LEN != 0 {
        return None;
    }
    Some(
        b.chunks_exact(NODE_V6_LEN)
            .map(|c| NodeV6 {
                id: id_of(c),
                addr: decode_v6(&c[20..]),
            })
            .collect(),
    )
}

/// Encode a `nodes` string (26 bytes per node).
pub fn encode_nodes_v4(nodes: &[NodeV4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * NODE_V4_LEN);
    for n in nodes {
        out.extend_from_slice(&n.id.0);
        encode_v4(&mut out, &n.addr);
    }
    out
}

/// Encode a `nodes6` string (38 bytes per node).
pub fn encode_nodes_v6(nodes: &[NodeV6]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * NODE_V6_LEN);
    for n in nodes {
        out.extend_from_slice(&n.id.0);
        encode_v6(&mut out, &n.addr);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_layouts() {
        let a: SocketAddr = "1.2.3.4:6881".parse().unwrap();
        assert_eq!(peer_bytes(&a), [1, 2, 3, 4, 0x1a, 0xe1]);
        assert_eq!(decode_peer(&[1, 2, 3, 4, 0x1a, 0xe1]), Some(a));
        let b: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let bytes = peer_bytes(&b);
        assert_eq!(bytes.len(), 18);
        assert_eq!(&bytes[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(&bytes[16..], &[1, 0xbb]);
        assert_eq!(decode_peer(&bytes), Some(b));
        assert_eq!(decode_peer(&[0; 7]), None);

        let n = NodeV4 {
            id: Id20([7; 20]),
            addr: "10.0.0.1:1".parse().unwrap(),
        };
        let enc = encode_nodes_v4(&[n, n]);
        assert_eq!(enc.len(), 52);
        assert_eq!(&enc[20..26], &[10, 0, 0, 1, 0, 1]);
        assert_eq!(decode_nodes_v4(&enc), Some(vec![n, n]));
        assert_eq!(decode_nodes_v4(&enc[..51]), None);
        let n6 = NodeV6 {
            id: Id20([9; 20]),
            addr: "[::1]:2".parse().unwrap(),
        };
        let enc6 = encode_nodes_v6(&[n6]);
        assert_eq!(enc6.len(), 38);
        assert_eq!(decode_nodes_v6(&enc6), Some(vec![n6]));
        assert_eq!(decode_nodes_v6(&enc6[1..]), None);
    }
}

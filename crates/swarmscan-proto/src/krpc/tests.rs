use super::*;
use crate::client_id;
use proptest::prelude::*;
use sha1::{Digest, Sha1};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

fn id(s: &[u8; 20]) -> Id20 {
    Id20(*s)
}

fn query(msg: &Message) -> &Query {
    match &msg.body {
        Body::Query(q) => q,
        other => panic!("not a query: {other:?}"),
    }
}

fn response(msg: &Message) -> &Response {
    match &msg.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn error(msg: &Message) -> &ErrorReply {
    match &msg.body {
        Body::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    }
}

/// Decode, check that re-encoding gives the same bytes (the BEP examples are canonical).
fn bep_example(bytes: &[u8]) -> Message {
    let msg = decode(bytes).unwrap_or_else(|e| panic!("{e}: {}", bencode::DebugBytes(bytes)));
    assert_eq!(
        bencode::DebugBytes(&msg.encode()).to_string(),
        bencode::DebugBytes(bytes).to_string()
    );
    msg
}

#[test]
fn bep5_ping() {
    let q = bep_example(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe");
    assert_eq!(q.transaction_id, b"aa");
    assert_eq!(query(&q).id, id(b"abcdefghij0123456789"));
    assert_eq!(query(&q).kind, QueryKind::Ping);
    assert_eq!(query(&q).kind.method(), Some(Method::Ping));
    let r = bep_example(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
    assert_eq!(
        *response(&r),
        Response::with_id(id(b"mnopqrstuvwxyz123456"))
    );
    assert!(response(&r).check_answers(Method::Ping).is_ok());
    assert!(response(&r).check_answers(Method::GetPeers).is_err());
}

#[test]
fn bep5_find_node() {
    let q = bep_example(
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::FindNode {
            target: id(b"mnopqrstuvwxyz123456")
        }
    );
    // The BEP's response example abbreviates `nodes` to "def456..." (9 bytes), which is not
    // whole compact node infos: a decoder must say so rather than invent nodes.
    let e =
        decode(b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re").unwrap_err();
    assert_eq!(
        e.to_string(),
        "field `nodes` at byte 39: 9 bytes, not a multiple of 26"
    );
}

#[test]
fn bep5_get_peers() {
    let q = bep_example(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::GetPeers {
            info_hash: id(b"mnopqrstuvwxyz123456"),
            noseed: false,
            scrape: false
        }
    );
    let r = bep_example(
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
    );
    let gp = response(&r).get_peers().unwrap();
    assert_eq!(gp.token, Some(&b"aoeusnth"[..]));
    // "axje.u" is 97.120.106.101 port 0x2e75.
    assert_eq!(
        gp.peers,
        [
            SocketAddr::from(([97, 120, 106, 101], 0x2e75)),
            SocketAddr::from(([105, 100, 104, 116], 0x6e6d)),
        ]
    );
    assert!(gp.nodes.is_empty());
    assert!(decode(
        b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re"
    )
    .is_err());
}

#[test]
fn bep5_announce_peer() {
    let q = bep_example(
        b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
    );
    assert_eq!(
        query(&q).kind,
        QueryKind::AnnouncePeer {
            info_hash: id(b"mnopqrstuvwxyz123456"),
            port: 6881,
            implied_port: false,
            token: b"aoeusnth".to_vec(),
            seed: false,
        }
    );
    // The BEP's dictionary form also has "implied_port": 1.
    let mut with_implied = q.clone();
    if let Body::Query(Query {
        kind: QueryKind::AnnouncePeer { implied_port, .. },
        ..
    }) = &mut with_implied.body
    {
        *implied_port = true;
    }
    let bytes = with_implied.encode();
    assert!(bytes.windows(17).any(|w| w == b"12:implied_porti1"));
    assert_eq!(decode(&bytes).unwrap(), with_implied);
    bep_example(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re");
}

#[test]
fn bep5_error() {
    let e = bep_example(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee");
    assert_eq!(error(&e).code, error_code::GENERIC);
    assert_eq!(error(&e).message_lossy(), "A Generic Error Ocurred");
    assert_eq!(e.sender_id(), None);
}

#[test]
fn bep51_shape() {
    let mut r = Response::with_id(Id20([1; 20]));
    r.samples = Some(vec![Id20([2; 20]), Id20([3; 20])]);
    r.num = Some(1234);
    r.interval = Some(21600);
    let msg = Message::new(*b"xy", Body::Response(r));
    let bytes = msg.encode();
    let back = decode(&bytes).unwrap();
    let s = response(&back).sample_infohashes().unwrap();
    assert_eq!(s.samples, [Id20([2; 20]), Id20([3; 20])]);
    assert_eq!((s.num, s.interval), (Some(1234), Some(21600)));
    // A plain find_node-style answer is not a sample_infohashes answer.
    let plain = Response::with_id(Id20([1; 20]));
    assert_eq!(
        plain.sample_infohashes().unwrap_err().to_string(),
        "missing field `samples`"
    );
}

#[test]
fn envelope_fields() {
    let mut msg = Message::new(
        vec![0u8, 1, 2, 3],
        Body::Query(Query {
            id: Id20([4; 20]),
            want: Want { n4: true, n6: true },
            kind: QueryKind::GetPeers {
                info_hash: Id20([5; 20]),
                noseed: true,
                scrape: true,
            },
        }),
    );
    msg.version = Some(b"LT\x02\x11".to_vec());
    msg.external_ip = Some("[2001:db8::2]:6881".parse().unwrap());
    msg.read_only = true;
    let bytes = msg.encode();
    // Canonical: decodes under the strict sorted-keys rule.
    let strict = Limits {
        require_sorted_keys: true,
        ..LIMITS
    };
    assert!(bencode::decode_with(&bytes, strict).is_ok());
    assert!(bytes.windows(14).any(|w| w == b"4:wantl2:n42:n"));
    assert_eq!(decode(&bytes).unwrap(), msg);
}

#[test]
fn rejects_with_field_and_offset() {
    let cases: &[(&[u8], &str)] = &[
        (b"le", "field `(message)` at byte 0: expected dictionary, found list"),
        (b"d1:t2:aa1:y1:xe", "field `y` at byte 11: unknown message type \"x\""),
        (b"d1:t2:aa1:y1:qe", "missing field `q`"),
        (b"d1:y1:qe", "missing field `t`"),
        (
            b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe",
            "field `id` at byte 9: 3 bytes, expected 20",
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567894:porti70000e9:info_hash20:abcdefghij01234567895:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            "field `port` at byte 38: 70000 out of range",
        ),
        (
            b"d2:ip3:abc1:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re",
            "field `ip` at byte 5: 3 bytes, expected 6 or 18",
        ),
        (
            b"d1:rd2:id20:abcdefghij01234567896:valuesl5:abcdeee1:t2:aa1:y1:re",
            "field `values` at byte 41: peer of 5 bytes, expected 6 or 18",
        ),
        (
            b"d1:eli201ee1:t2:aa1:y1:ee",
            "field `e` at byte 4: 1 items, expected [code, message]",
        ),
        (b"d1:t33:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1:y1:qe", "field `t` at byte 4: 33 bytes, more than 32"),
    ];
    for (bytes, want) in cases {
        let e = decode(bytes).unwrap_err();
        assert_eq!(e.to_string(), *want, "{}", bencode::DebugBytes(bytes));
    }
    assert!(matches!(decode(b"d1:t"), Err(KrpcError::Bencode(_))));
}

#[test]
fn unknown_methods_keep_target() {
    let bytes =
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:get1:t2:aa1:y1:qe";
    let msg = bep_example(bytes);
    assert_eq!(
        query(&msg).kind,
        QueryKind::Other {
            method: b"get".to_vec(),
            target: Some(id(b"mnopqrstuvwxyz123456")),
            info_hash: None
        }
    );
    assert_eq!(query(&msg).kind.method(), None);
}

// --- Real traffic: libtorrent 2.1.1, recorded by tests/data/record_dht.py -----------------

macro_rules! golden {
    ($name:literal) => {
        include_bytes!(concat!("../../../../tests/data/dht/", $name, ".bin"))
    };
}

/// The info-hash the recorder announced and sampled.
fn recorded_info_hash() -> Id20 {
    Id20(Sha1::digest(b"swarmscan dht recording").into())
}

/// Ids of the recorder's fake nodes.
fn fake_node_ids() -> Vec<Id20> {
    (0..4)
        .map(|i| Id20(Sha1::digest(format!("fake node {i}").as_bytes()).into()))
        .collect()
}

fn assert_libtorrent(msg: &Message) {
    let v = msg.version.as_deref().expect("libtorrent sends `v`");
    assert_eq!(v, b"LT\x02\x11");
    let client = client_id::from_dht_version(v);
    assert_eq!(client.to_string(), "libtorrent 2.1.1");
    assert_eq!(msg.client(), Some(client));
}

/// Decode, and check that our re-encoding decodes to the same message (libtorrent adds keys
/// we drop, such as `p`, so bytes differ).
fn golden_decode(bytes: &[u8]) -> Message {
    let msg = decode(bytes).unwrap_or_else(|e| panic!("{e}: {}", bencode::DebugBytes(bytes)));
    assert_eq!(decode(&msg.encode()).unwrap(), msg);
    msg
}

#[test]
fn libtorrent_queries() {
    let gp = golden_decode(golden!("lt_query_get_peers"));
    assert_libtorrent(&gp);
    assert_eq!(gp.transaction_id.len(), 2);
    let q = query(&gp);
    // libtorrent bootstraps with get_peers for an id near its own (and adds `bs`, ignored).
    let QueryKind::GetPeers { info_hash, .. } = q.kind else {
        panic!("{:?}", q.kind)
    };
    assert_eq!(info_hash.0[..10], q.id.0[..10]);

    let ap = golden_decode(golden!("lt_query_announce_peer"));
    assert_libtorrent(&ap);
    assert_eq!(
        query(&ap).kind,
        QueryKind::AnnouncePeer {
            info_hash: recorded_info_hash(),
            port: 6881,
            implied_port: false,
            token: b"tok\x01".to_vec(),
            seed: false,
        }
    );
    assert_eq!(query(&ap).id, q.id, "same libtorrent node");

    let si = golden_decode(golden!("lt_query_sample_infohashes"));
    assert_libtorrent(&si);
    assert_eq!(
        query(&si).kind,
        QueryKind::SampleInfohashes {
            target: recorded_info_hash()
        }
    );
}

#[test]
fn libtorrent_responses() {
    let ping = golden_decode(golden!("lt_response_ping"));
    assert_libtorrent(&ping);
    assert_eq!(ping.transaction_id, b"pi\x00\x01");
    let ip = ping
        .external_ip
        .expect("libtorrent reports our address (BEP 42)");
    assert_eq!(ip.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let lt_id = response(&ping).id;
    assert!(
        bep42_verify(&lt_id, Ipv4Addr::LOCALHOST.into()),
        "loopback is exempt"
    );

    let fake = fake_node_ids();
    let fnode = golden_decode(golden!("lt_response_find_node"));
    let reply = response(&fnode).find_node().unwrap();
    assert_eq!(reply.id, lt_id);
    assert!(!reply.nodes.is_empty());
    for n in reply.nodes {
        assert!(fake.contains(&n.id), "{n:?} is one of the recorder's nodes");
        assert_eq!(*n.addr.ip(), Ipv4Addr::LOCALHOST);
    }

    let gp = golden_decode(golden!("lt_response_get_peers"));
    let reply = response(&gp).get_peers().unwrap();
    assert_eq!(reply.token.map(|t| t.len()), Some(4));
    assert!(reply.peers.is_empty() && !reply.nodes.is_empty());

    let ap = golden_decode(golden!("lt_response_announce_peer"));
    assert_eq!(*response(&ap), Response::with_id(lt_id));

    // After our announce (port 6881 from 127.0.0.1) libtorrent returns us as a peer.
    let values = golden_decode(golden!("lt_response_get_peers_values"));
    let reply = response(&values).get_peers().unwrap();
    assert_eq!(reply.peers, [SocketAddr::from(([127, 0, 0, 1], 6881))]);

    // With scrape=1 it sends bloom filters instead: one non-seed, no seeds.
    let scrape = golden_decode(golden!("lt_response_get_peers_scrape"));
    let reply = response(&scrape).get_peers().unwrap();
    let peers = reply.peers_filter.expect("BFpe");
    let seeds = reply.seeds_filter.expect("BFsd");
    let mut ours = BloomFilter::new();
    ours.insert_ip(Ipv4Addr::LOCALHOST.into());
    assert_eq!(*peers, ours, "libtorrent's filter has exactly our bits");
    assert!((peers.estimate() - 1.0).abs() < 0.01);
    assert_eq!(*seeds, BloomFilter::new());

    let si = golden_decode(golden!("lt_response_sample_infohashes"));
    let reply = response(&si).sample_infohashes().unwrap();
    assert_eq!(reply.samples, [recorded_info_hash()]);
    assert_eq!(reply.num, Some(1));
    assert_eq!(reply.interval, Some(21600));

    // libtorrent answers an unknown method carrying `target` like find_node (BEP 5).
    let unknown = golden_decode(golden!("lt_response_unknown_method"));
    assert!(response(&unknown).find_node().is_ok());
}

#[test]
fn libtorrent_errors() {
    let bad = golden_decode(golden!("lt_error_bad_token"));
    assert_libtorrent(&bad);
    let e = error(&bad);
    assert_eq!(e.code, error_code::PROTOCOL);
    assert_eq!(e.message_lossy(), "invalid token");
    assert!(e.id.is_some(), "libtorrent sends its id with errors");
    let missing = golden_decode(golden!("lt_error_missing_info_hash"));
    assert_eq!(error(&missing).code, error_code::PROTOCOL);
    assert_eq!(error(&missing).message_lossy(), "missing 'info_hash' key");
}

// --- Property tests ----------------------------------------------------------------------

fn arb_id() -> impl Strategy<Value = Id20> {
    any::<[u8; 20]>().prop_map(Id20)
}

fn arb_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
}

fn arb_v6() -> impl Strategy<Value = SocketAddrV6> {
    (any::<[u8; 16]>(), any::<u16>())
        .prop_map(|(ip, port)| SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0))
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        arb_v4().prop_map(SocketAddr::V4),
        arb_v6().prop_map(SocketAddr::V6)
    ]
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

fn arb_query_kind() -> impl Strategy<Value = QueryKind> {
    prop_oneof![
        Just(QueryKind::Ping),
        arb_id().prop_map(|target| QueryKind::FindNode { target }),
        (arb_id(), any::<bool>(), any::<bool>()).prop_map(|(info_hash, noseed, scrape)| {
            QueryKind::GetPeers {
                info_hash,
                noseed,
                scrape,
            }
        }),
        (
            arb_id(),
            any::<u16>(),
            any::<bool>(),
            arb_bytes(MAX_TOKEN_LEN),
            any::<bool>()
        )
            .prop_map(|(info_hash, port, implied_port, token, seed)| {
                QueryKind::AnnouncePeer {
                    info_hash,
                    port,
                    implied_port,
                    token,
                    seed,
                }
            }),
        arb_id().prop_map(|target| QueryKind::SampleInfohashes { target }),
        (
            "[a-z_]{1,20}".prop_filter("not a known method", |m| Method::from_name(m.as_bytes())
                .is_none()),
            proptest::option::of(arb_id()),
            proptest::option::of(arb_id())
        )
            .prop_map(|(method, target, info_hash)| QueryKind::Other {
                method: method.into_bytes(),
                target,
                info_hash
            }),
    ]
}

fn arb_response() -> impl Strategy<Value = Response> {
    let nodes = proptest::collection::vec(
        (arb_id(), arb_v4()).prop_map(|(id, addr)| NodeV4 { id, addr }),
        0..10,
    );
    let nodes6 = proptest::collection::vec(
        (arb_id(), arb_v6()).prop_map(|(id, addr)| NodeV6 { id, addr }),
        0..10,
    );
    let filter = any::<[u8; 32]>().prop_map(|seed| {
        let mut f = BloomFilter::new();
        for chunk in seed.chunks(4) {
            f.insert_bytes(chunk);
        }
        Box::new(f)
    });
    (
        (
            arb_id(),
            proptest::option::of(nodes),
            proptest::option::of(nodes6),
            proptest::option::of(proptest::collection::vec(arb_addr(), 0..20)),
            proptest::option::of(arb_bytes(MAX_TOKEN_LEN)),
        ),
        (
            proptest::option::of(proptest::collection::vec(arb_id(), 0..10)),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(filter.clone()),
            proptest::option::of(filter),
        ),
    )
        .prop_map(
            |(
                (id, nodes, nodes6, values, token),
                (samples, num, interval, seeds_filter, peers_filter),
            )| Response {
                id,
                nodes,
                nodes6,
                values,
                token,
                samples,
                num,
                interval,
                seeds_filter,
                peers_filter,
            },
        )
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (arb_id(), any::<bool>(), any::<bool>(), arb_query_kind()).prop_map(
            |(id, n4, n6, kind)| Body::Query(Query {
                id,
                want: Want { n4, n6 },
                kind
            })
        ),
        arb_response().prop_map(Body::Response),
        (any::<i64>(), arb_bytes(100), proptest::option::of(arb_id()))
            .prop_map(|(code, message, id)| Body::Error(ErrorReply { code, message, id })),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    (
        arb_bytes(MAX_TRANSACTION_ID_LEN),
        proptest::option::of(arb_bytes(MAX_VERSION_LEN)),
        proptest::option::of(arb_addr()),
        any::<bool>(),
        arb_body(),
    )
        .prop_map(
            |(transaction_id, version, external_ip, read_only, body)| Message {
                transaction_id,
                version,
                external_ip,
                read_only,
                body,
            },
        )
}

proptest! {
    #[test]
    fn message_round_trip(msg in arb_message()) {
        let bytes = msg.encode();
        let back = decode(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, &msg);
        // Encoding is canonical: keys sorted, so strict decoding accepts it.
        let strict = Limits { require_sorted_keys: true, ..LIMITS };
        prop_assert!(bencode::decode_with(&bytes, strict).is_ok());
    }

    #[test]
    fn compact_nodes_round_trip(
        v4 in proptest::collection::vec((arb_id(), arb_v4()), 0..20),
        v6 in proptest::collection::vec((arb_id(), arb_v6()), 0..20),
    ) {
        let v4: Vec<NodeV4> = v4.into_iter().map(|(id, addr)| NodeV4 { id, addr }).collect();
        let v6: Vec<NodeV6> = v6.into_iter().map(|(id, addr)| NodeV6 { id, addr }).collect();
        let b4 = encode_nodes_v4(&v4);
        prop_assert_eq!(b4.len(), v4.len() * NODE_V4_LEN);
        prop_assert_eq!(decode_nodes_v4(&b4), Some(v4));
        let b6 = encode_nodes_v6(&v6);
        prop_assert_eq!(b6.len(), v6.len() * NODE_V6_LEN);
        prop_assert_eq!(decode_nodes_v6(&b6), Some(v6));
    }

    #[test]
    fn compact_peer_round_trip(addr in arb_addr()) {
        prop_assert_eq!(decode_peer(&peer_bytes(&addr)), Some(addr));
    }

    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_mutated_messages(
        msg in arb_message(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = msg.encode();
        for (at, byte) in flips {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        if let Ok(m) = decode(&bytes) {
            // Whatever decodes re-encodes to something that decodes to the same message.
            prop_assert_eq!(decode(&m.encode()).ok(), Some(m));
        }
    }

    #[test]
    fn bep42_generated_ids_verify(ip in any::<[u8; 4]>(), r in any::<u8>(), random in any::<[u8; 17]>()) {
        let ip = IpAddr::V4(ip.into());
        prop_assert!(bep42_id_matches(&bep42_node_id(ip, r, random), ip));
    }

    #[test]
    fn bep42_generated_v6_ids_verify(ip in any::<[u8; 16]>(), r in any::<u8>(), random in any::<[u8; 17]>()) {
        let ip = IpAddr::V6(ip.into());
        prop_assert!(bep42_id_matches(&bep42_node_id(ip, r, random), ip));
    }

    #[test]
    fn xor_distance_is_a_metric(a in arb_id(), b in arb_id()) {
        prop_assert_eq!(a.distance(&b), b.distance(&a));
        prop_assert_eq!(a.distance(&b).distance(&b), a);
        prop_assert_eq!(a.distance(&a), Id20::default());
    }
}

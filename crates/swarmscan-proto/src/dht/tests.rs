//! The node against hand-made queries and replies, and against libtorrent 2.1.1's recorded
//! messages (tests/data/dht, recorded by tests/data/record_dht.py).

use super::*;
use crate::bencode::{self, encode_bytes};
use crate::krpc::{decode, BloomFilter};
use proptest::prelude::*;
use sha1::{Digest, Sha1};
use std::net::Ipv4Addr;

fn t0() -> Instant {
    // A fixed base so every test's times are its own.
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn secs(s: u64) -> Instant {
    t0() + Duration::from_secs(s)
}

fn local(n: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], port))
}

fn test_config() -> DhtConfig {
    DhtConfig {
        ipv6: false,
        ..DhtConfig::default()
    }
}

fn node_with(config: DhtConfig) -> DhtNode {
    DhtNode::new(config, [9; 32], t0())
}

fn node() -> DhtNode {
    node_with(test_config())
}

fn query(tid: &[u8], id: Id20, kind: QueryKind) -> Vec<u8> {
    Message::new(
        tid.to_vec(),
        Body::Query(Query {
            id,
            want: Want::default(),
            kind,
        }),
    )
    .encode()
}

/// Everything the node sends, decoded.
fn sent(node: &mut DhtNode) -> Vec<(SocketAddr, Message)> {
    std::iter::from_fn(|| node.poll_transmit())
        .map(|d| (d.to, decode(&d.bytes).expect("we send valid KRPC")))
        .collect()
}

/// Send one datagram, return the node's only answer (if any).
fn ask(node: &mut DhtNode, from: SocketAddr, bytes: &[u8], now: Instant) -> Option<Message> {
    node.handle_datagram(from, bytes, now);
    let mut out = sent(node);
    assert!(out.len() <= 1, "one answer per query: {out:?}");
    out.pop().map(|(to, m)| {
        assert_eq!(to, from);
        m
    })
}

fn response(m: &Message) -> &Response {
    match &m.body {
        Body::Response(r) => r,
        other => panic!("not a response: {other:?}"),
    }
}

fn error(m: &Message) -> &ErrorReply {
    match &m.body {
        Body::Error(e) => e,
        other => panic!("not an error: {other:?}"),
    }
}

fn events(node: &mut DhtNode) -> Vec<Event> {
    std::iter::from_fn(|| node.poll_event()).collect()
}

fn other_id(n: u8) -> Id20 {
    Id20(Sha1::digest([n]).into())
}

/// Ping `id` at `addr` and answer: it enters the table if its bucket has room.
fn confirm(node: &mut DhtNode, id: Id20, addr: SocketAddr, now: Instant) -> bool {
    assert!(node.ping(addr, None, now));
    let (to, q) = sent(node).pop().unwrap();
    assert_eq!(to, addr);
    let reply = Message::new(q.transaction_id, Body::Response(Response::with_id(id)));
    node.handle_datagram(addr, &reply.encode(), now);
    node.table(addr.is_ipv6()).contains(&id, addr)
}

/// Replace the bencoded value at `value` (a part of `bytes`) with the byte string `new`.
fn splice(bytes: &[u8], value: &bencode::Value<'_>, new: &[u8]) -> Vec<u8> {
    let mut out = bytes[..value.offset()].to_vec();
    encode_bytes(&mut out, new);
    out.extend_from_slice(&bytes[value.offset() + value.raw().len()..]);
    out
}

fn with_tid(bytes: &[u8], tid: &[u8]) -> Vec<u8> {
    let root = bencode::decode(bytes).unwrap();
    splice(bytes, root.get("t").unwrap(), tid)
}

#[test]
fn ping_is_answered_with_our_id_and_their_address() {
    let mut n = node();
    let from = local(2, 7000);
    let r = ask(
        &mut n,
        from,
        &query(b"aa", other_id(1), QueryKind::Ping),
        t0(),
    )
    .unwrap();
    assert_eq!(r.transaction_id, b"aa");
    assert_eq!(*response(&r), Response::with_id(n.id()));
    assert_eq!(
        r.external_ip,
        Some(from),
        "BEP 42: tell them where we see them"
    );
    assert!(!r.read_only);
    // The querier waits for a ping of ours before it enters the table.
    assert!(!n.table(false).contains(&other_id(1), from));
}

#[test]
fn find_node_returns_the_closest_nodes_we_know() {
    let mut n = node();
    for i in 10..30 {
        confirm(&mut n, other_id(i), local(i, 6881), t0());
    }
    let target = other_id(12);
    let q = query(b"fn", other_id(1), QueryKind::FindNode { target });
    let r = ask(&mut n, local(2, 7000), &q, t0()).unwrap();
    let nodes = response(&r).find_node().unwrap().nodes.to_vec();
    assert_eq!(nodes.len(), K);
    assert_eq!(nodes[0].id, target, "the target itself first");
    let mut expected: Vec<Id20> = n.table(false).nodes().map(|e| e.id).collect();
    expected.sort_by_key(|id| id.distance(&target));
    let got: Vec<Id20> = nodes.iter().map(|x| x.id).collect();
    assert_eq!(got, expected[..K]);
    assert!(
        response(&r).nodes6.is_none(),
        "no `want`: the query's family only"
    );

    // BEP 32 `want`: both families asked, both keys present (the IPv6 table is empty here).
    let mut msg = decode(&q).unwrap();
    if let Body::Query(q) = &mut msg.body {
        q.want = Want { n4: true, n6: true };
    }
    let mut n6 = node_with(DhtConfig::default());
    let r = ask(&mut n6, local(2, 7000), &msg.encode(), t0()).unwrap();
    assert_eq!(response(&r).nodes6.as_deref(), Some(&[][..]));
}

#[test]
fn get_peers_token_announce_and_values() {
    let mut n = node();
    let ih = other_id(100);
    let peer_host = local(5, 40000);
    let gp = query(
        b"g1",
        other_id(5),
        QueryKind::GetPeers {
            info_hash: ih,
            noseed: false,
            scrape: false,
        },
    );
    let r = ask(&mut n, peer_host, &gp, t0()).unwrap();
    let reply = response(&r).get_peers().unwrap();
    let token = reply.token.expect("a token").to_vec();
    assert!(reply.peers.is_empty());
    assert_eq!(reply.nodes.len(), 0, "empty table, but `nodes` is there");

    let announce = |token: &[u8], implied: bool| {
        query(
            b"a1",
            other_id(5),
            QueryKind::AnnouncePeer {
                info_hash: ih,
                port: 6881,
                implied_port: implied,
                token: token.to_vec(),
                seed: true,
            },
        )
    };
    // The token is bound to the IP it was given to.
    let e = ask(&mut n, local(6, 40000), &announce(&token, false), t0()).unwrap();
    assert_eq!(error(&e).code, error_code::PROTOCOL);
    assert_eq!(error(&e).message_lossy(), "bad token");
    let e = ask(&mut n, peer_host, &announce(b"nope", false), t0()).unwrap();
    assert_eq!(error(&e).code, error_code::PROTOCOL);
    assert!(n.peer_store.values(&ih, false, false, 10, t0()).is_empty());

    let ok = ask(&mut n, peer_host, &announce(&token, false), t0()).unwrap();
    assert_eq!(*response(&ok), Response::with_id(n.id()));
    assert_eq!(
        events(&mut n),
        [Event::Announced {
            info_hash: ih,
            peer: local(5, 6881),
            seed: true
        }]
    );
    // implied_port: the UDP source port counts, not `port`.
    ask(&mut n, peer_host, &announce(&token, true), t0()).unwrap();

    // Still good after one rotation of the secret, not after two.
    n.tick(secs(301));
    let upkeep = sent(&mut n);
    assert_eq!(
        upkeep.len(),
        1,
        "table upkeep pings the querier it heard from"
    );
    assert_eq!(upkeep[0].0, peer_host);
    assert_eq!(
        upkeep[0].1.body,
        Body::Query(Query {
            id: n.id(),
            want: Want::default(),
            kind: QueryKind::Ping
        })
    );
    let other = local(7, 1234);
    let r = ask(&mut n, other, &gp, secs(301)).unwrap();
    let mut values = response(&r).values.clone().unwrap();
    values.sort();
    assert_eq!(values, [local(5, 6881), local(5, 40000)]);
    assert!(ask(&mut n, peer_host, &announce(&token, false), secs(301)).is_some());
    assert_eq!(events(&mut n).len(), 2, "two more announces");
    n.tick(secs(602));
    sent(&mut n);
    let e = ask(&mut n, peer_host, &announce(&token, false), secs(602)).unwrap();
    assert_eq!(error(&e).message_lossy(), "bad token");

    // BEP 33 scrape: both announcements were seeds, from one IP.
    let scrape = query(
        b"s1",
        other_id(7),
        QueryKind::GetPeers {
            info_hash: ih,
            noseed: false,
            scrape: true,
        },
    );
    let r = ask(&mut n, other, &scrape, secs(602)).unwrap();
    let reply = response(&r).get_peers().unwrap();
    let mut one = BloomFilter::new();
    one.insert_ip(peer_host.ip());
    assert_eq!(reply.seeds_filter, Some(&one));
    assert_eq!(reply.peers_filter, Some(&BloomFilter::new()));
}

#[test]
fn malformed_queries_get_krpc_errors() {
    let mut n = node();
    let from = local(2, 7000);
    // get_peers without info_hash: 203 naming the field.
    let bytes = b"d1:ad2:id20:abcdefghij0123456789e1:q9:get_peers1:t2:xy1:y1:qe";
    let e = ask(&mut n, from, bytes, t0()).unwrap();
    assert_eq!(e.transaction_id, b"xy");
    assert_eq!(error(&e).code, error_code::PROTOCOL);
    assert!(error(&e).message_lossy().contains("info_hash"), "{e:?}");
    // Unknown method without target: 204.
    let bytes = b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:xy1:y1:qe";
    let e = ask(&mut n, from, bytes, t0()).unwrap();
    assert_eq!(error(&e).code, error_code::METHOD_UNKNOWN);
    // Unknown method with a target: answered like find_node (BEP 5).
    let bytes =
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:put1:t2:xy1:y1:qe";
    let r = ask(&mut n, from, bytes, t0()).unwrap();
    assert!(response(&r).find_node().is_ok());
    // Not a query we can answer: no transaction id, or not KRPC at all.
    for junk in [
        &b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe"[..],
        b"\x00\x01garbage",
        b"",
        b"le",
        b"d1:y1:re",
    ] {
        assert!(ask(&mut n, from, junk, t0()).is_none(), "{junk:?}");
    }
    assert!(n.stats().garbage >= 4);
}

#[test]
fn read_only_node_answers_nothing_and_says_ro() {
    let mut n = node_with(DhtConfig {
        read_only: true,
        ..test_config()
    });
    let q = query(b"aa", other_id(1), QueryKind::Ping);
    assert!(ask(&mut n, local(2, 7000), &q, t0()).is_none());
    assert!(n.ping(local(3, 7000), None, t0()));
    let (_, ours) = sent(&mut n).pop().unwrap();
    assert!(ours.read_only, "BEP 43: ro=1 in our queries");

    // And a read-only querier is answered but not remembered.
    let mut normal = node();
    let mut msg = decode(&q).unwrap();
    msg.read_only = true;
    assert!(ask(&mut normal, local(2, 7000), &msg.encode(), t0()).is_some());
    normal.tick(t0());
    assert!(
        sent(&mut normal).is_empty(),
        "nothing to confirm: it was not recorded"
    );
}

#[test]
fn answers_per_source_prefix_are_rate_limited() {
    let mut n = node();
    let q = query(b"aa", other_id(1), QueryKind::Ping);
    let mut answered = 0;
    for i in 0..200u16 {
        // Rotating the port or the last octet does not escape the /24's bucket.
        let from = SocketAddr::from(([127, 0, 0, (i % 250) as u8 + 1], 1000 + i));
        answered += ask(&mut n, from, &q, t0()).is_some() as usize;
    }
    assert_eq!(answered, DhtConfig::default().rate_burst as usize);
    assert!(ask(&mut n, local(1, 1), &q, t0()).is_none());
    assert!(ask(&mut n, local(1, 1), &q, secs(1)).is_some(), "refills");
    assert!(ask(&mut n, SocketAddr::from(([127, 0, 1, 1], 1)), &q, t0()).is_some());
}

#[test]
fn answers_never_exceed_the_amplification_budget() {
    let mut n = node_with(DhtConfig {
        rate_burst: 10_000,
        ..test_config()
    });
    let ih = other_id(100);
    // 60 peers announced, 20 nodes known: a full answer would be far over 8× a query.
    for i in 1..=60u8 {
        let from = SocketAddr::from(([127, 1, 0, i], 6881));
        let gp = query(
            b"g",
            other_id(i),
            QueryKind::GetPeers {
                info_hash: ih,
                noseed: false,
                scrape: false,
            },
        );
        let token = response(&ask(&mut n, from, &gp, t0()).unwrap())
            .token
            .clone()
            .unwrap();
        let ap = query(
            b"a",
            other_id(i),
            QueryKind::AnnouncePeer {
                info_hash: ih,
                port: 1,
                implied_port: true,
                token,
                seed: false,
            },
        );
        assert!(ask(&mut n, from, &ap, t0()).is_some());
    }
    for i in 10..30 {
        confirm(&mut n, other_id(i), local(i, 6881), t0());
    }
    let gp = query(
        b"",
        other_id(1),
        QueryKind::GetPeers {
            info_hash: ih,
            noseed: false,
            scrape: true,
        },
    );
    let d = {
        n.handle_datagram(local(3, 3), &gp, t0());
        n.poll_transmit().unwrap()
    };
    assert!(
        d.bytes.len() <= 8 * gp.len(),
        "{} > 8 × {}",
        d.bytes.len(),
        gp.len()
    );
    let r = decode(&d.bytes).unwrap();
    let reply = response(&r).get_peers().unwrap();
    assert!(
        reply.token.is_some() && !reply.peers.is_empty(),
        "trimmed, not emptied"
    );
}

#[test]
fn replies_need_a_transaction_id_we_gave_that_address() {
    let mut n = node();
    let lt = local(2, 6881);
    assert!(n.ping(lt, None, t0()));
    let (_, q) = sent(&mut n).pop().unwrap();
    assert_eq!(q.transaction_id.len(), TID_LEN);
    let reply = |tid: &[u8]| {
        Message::new(tid.to_vec(), Body::Response(Response::with_id(other_id(2)))).encode()
    };
    // Same id from another address, and a forged id from the right one: dropped.
    n.handle_datagram(local(3, 6881), &reply(&q.transaction_id), t0());
    n.handle_datagram(lt, &reply(b"\x00\x01\x02\x03\x04\x05"), t0());
    assert_eq!(n.stats().replies_unmatched, 2);
    assert!(n.table(false).is_empty());
    n.handle_datagram(lt, &reply(&q.transaction_id), t0());
    assert!(n.table(false).contains(&other_id(2), lt));
    // Once only.
    n.handle_datagram(lt, &reply(&q.transaction_id), t0());
    assert_eq!(n.stats().replies_unmatched, 3);
}

#[test]
fn unanswered_pings_time_out_and_make_nodes_bad() {
    let mut n = node();
    let a = local(2, 6881);
    confirm(&mut n, other_id(2), a, t0());
    for round in 0..2u64 {
        assert!(n.ping(a, Some(other_id(2)), secs(round * 10)));
        sent(&mut n);
        n.tick(secs(round * 10 + 5));
    }
    assert_eq!(n.stats().timeouts, 2);
    let e = n
        .table(false)
        .nodes()
        .find(|e| e.id == other_id(2))
        .unwrap();
    assert_eq!(e.status(secs(30)), NodeStatus::Bad);
    assert!(n.outstanding.is_empty());
}

#[test]
fn external_address_vote_gives_a_bep42_id() {
    let mut n = node();
    let old = n.id();
    let public = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    for i in 2..6u8 {
        let from = local(i, 6881);
        assert!(n.ping(from, None, t0()));
        let (_, q) = sent(&mut n).pop().unwrap();
        let mut reply = Message::new(
            q.transaction_id,
            Body::Response(Response::with_id(other_id(i))),
        );
        reply.external_ip = Some(SocketAddr::new(public, 6881));
        n.handle_datagram(from, &reply.encode(), t0());
    }
    let ev = events(&mut n);
    assert_eq!(
        ev[0],
        Event::ExternalAddress(public),
        "after 3 agreeing votes"
    );
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[1], Event::NodeIdChanged { old, new: n.id() });
    assert!(bep42_id_matches(&n.id(), public));
    assert_eq!(n.table(false).own_id(), n.id());
    assert_eq!(n.table(false).len(), 4, "table rebuilt around the new id");

    // On loopback (exempt) the id stays.
    let mut n = node();
    let old = n.id();
    for i in 2..6u8 {
        let from = local(i, 6881);
        n.ping(from, None, t0());
        let (_, q) = sent(&mut n).pop().unwrap();
        let mut reply = Message::new(
            q.transaction_id,
            Body::Response(Response::with_id(other_id(i))),
        );
        reply.external_ip = Some(local(1, 6881));
        n.handle_datagram(from, &reply.encode(), t0());
    }
    assert_eq!(events(&mut n), [Event::ExternalAddress(local(1, 0).ip())]);
    assert_eq!(n.id(), old);
}

/// Replies from 127.0.0.2.. that name `seen` as our address, one per voter.
fn vote_external(n: &mut DhtNode, seen: IpAddr, voters: u8) {
    for i in 2..2 + voters {
        let from = local(i, 6881);
        assert!(n.ping(from, None, t0()));
        let (_, q) = sent(n).pop().unwrap();
        let mut reply = Message::new(
            q.transaction_id,
            Body::Response(Response::with_id(other_id(i))),
        );
        reply.external_ip = Some(SocketAddr::new(seen, 6881));
        n.handle_datagram(from, &reply.encode(), t0());
    }
}

#[test]
fn an_initial_id_is_kept_while_the_vote_agrees_and_replaced_when_it_does_not() {
    let public = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let kept = bep42_node_id(public, 5, [7; 17]);
    let with_kept = || {
        node_with(DhtConfig {
            initial_node_id: Some(kept),
            ..test_config()
        })
    };
    let mut n = with_kept();
    assert_eq!(n.id(), kept);
    vote_external(&mut n, public, 4);
    assert_eq!(events(&mut n), [Event::ExternalAddress(public)]);
    assert_eq!(n.id(), kept, "derived for the address the vote names: kept");

    let moved = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    let mut n = with_kept();
    vote_external(&mut n, moved, 4);
    assert_eq!(
        events(&mut n),
        [
            Event::ExternalAddress(moved),
            Event::NodeIdChanged {
                old: kept,
                new: n.id()
            }
        ]
    );
    assert!(bep42_id_matches(&n.id(), moved));

    // A fixed id (`node_id`) wins over an initial one and never moves.
    let fixed = other_id(99);
    let mut n = node_with(DhtConfig {
        node_id: Some(fixed),
        initial_node_id: Some(kept),
        ..test_config()
    });
    vote_external(&mut n, moved, 4);
    assert_eq!(n.id(), fixed);
}

#[test]
fn bep42_policy_decides_who_enters_the_table() {
    let public = SocketAddr::from(([203, 0, 113, 9], 6881));
    let bad_id = other_id(9);
    assert!(!bep42_id_matches(&bad_id, public.ip()));
    let good_id = bep42_node_id(public.ip(), 3, [1; 17]);
    for (policy, exempt_local, loopback_ok, public_bad_ok) in [
        (Bep42Policy::RequireVerified, true, true, false),
        (Bep42Policy::RequireVerified, false, false, false),
        (Bep42Policy::PreferVerified, true, true, true),
        (Bep42Policy::Off, false, true, true),
    ] {
        let mut n = node_with(DhtConfig {
            bep42: policy,
            bep42_exempt_local: exempt_local,
            ..test_config()
        });
        let answer = |n: &mut DhtNode, id: Id20, addr: SocketAddr| {
            n.ping(addr, None, t0());
            let (_, q) = sent(n).pop().unwrap();
            let r = Message::new(q.transaction_id, Body::Response(Response::with_id(id)));
            n.handle_datagram(addr, &r.encode(), t0());
            n.table(false).contains(&id, addr)
        };
        assert_eq!(
            answer(&mut n, bad_id, local(2, 1)),
            loopback_ok,
            "{policy:?} {exempt_local}"
        );
        assert_eq!(
            answer(&mut n, other_id(10), public),
            public_bad_ok,
            "{policy:?}"
        );
        assert!(
            answer(&mut n, good_id, public),
            "verified always enters ({policy:?})"
        );
    }
}

// --- libtorrent 2.1.1, recorded --------------------------------------------------------

macro_rules! golden {
    ($name:literal) => {
        include_bytes!(concat!("../../../../tests/data/dht/", $name, ".bin"))
    };
}

fn recorded_info_hash() -> Id20 {
    Id20(Sha1::digest(b"swarmscan dht recording").into())
}

/// libtorrent's node, as the recorder ran it.
fn lt_addr() -> SocketAddr {
    local(1, 6881)
}

#[test]
fn answers_libtorrents_queries() {
    let mut n = node();
    for i in 10..20 {
        confirm(&mut n, other_id(i), local(i, 6881), t0());
    }
    let lt = lt_addr();

    let gp = golden!("lt_query_get_peers");
    let r = ask(&mut n, lt, gp, t0()).expect("get_peers answered");
    assert_eq!(r.transaction_id, decode(gp).unwrap().transaction_id);
    let reply = response(&r).get_peers().unwrap();
    assert_eq!(reply.nodes.len(), K);
    let our_token = reply.token.unwrap().to_vec();
    assert_eq!(r.external_ip, Some(lt));

    // Its announce carries the token another node gave it: refused as BEP 5 says...
    let ap = golden!("lt_query_announce_peer");
    let e = ask(&mut n, lt, ap, t0()).unwrap();
    assert_eq!(error(&e).code, error_code::PROTOCOL);
    // ...and accepted with ours.
    let root = bencode::decode(ap).unwrap();
    let ap_ours = splice(ap, root.get("a").unwrap().get("token").unwrap(), &our_token);
    let ok = ask(&mut n, lt, &ap_ours, t0()).unwrap();
    assert_eq!(*response(&ok), Response::with_id(n.id()));
    let Event::Announced {
        info_hash,
        peer,
        seed,
    } = events(&mut n).pop().unwrap()
    else {
        panic!("announce recorded");
    };
    assert_eq!(
        (info_hash, peer, seed),
        (recorded_info_hash(), local(1, 6881), false)
    );

    let si = golden!("lt_query_sample_infohashes");
    let r = ask(&mut n, lt, si, t0()).unwrap();
    let reply = response(&r).sample_infohashes().unwrap();
    assert_eq!(reply.samples, [recorded_info_hash()]);
    assert_eq!(reply.num, Some(1));
    assert_eq!(reply.nodes.len(), K);
    // Every answer stays within the amplification budget of its query.
    for q in [&gp[..], &ap_ours, si] {
        n.handle_datagram(lt, q, secs(1));
        let d = n.poll_transmit().unwrap();
        assert!(d.bytes.len() <= 8 * q.len());
    }
}

/// The lookup's queries to `named` go unanswered: check them and their one retry, and
/// return the events once all have timed out.
fn finish_by_timeouts(n: &mut DhtNode, named: &[SocketAddr], start: u64) -> Vec<Event> {
    let asked: Vec<SocketAddr> = sent(n).into_iter().map(|(to, _)| to).collect();
    assert_eq!(asked.len(), named.len().min(3), "α at most");
    assert!(
        asked.iter().all(|a| named.contains(a)),
        "{asked:?} ⊄ {named:?}"
    );
    n.tick(secs(start + 5));
    let retried: Vec<SocketAddr> = sent(n).into_iter().map(|(to, _)| to).collect();
    assert_eq!(retried, asked, "one retry each");
    n.tick(secs(start + 10));
    // (Our small table may look itself up meanwhile; the lookup sends nothing more.)
    let late = sent(n);
    assert!(late.iter().all(|(to, _)| !named.contains(to)), "{late:?}");
    events(n)
}

#[test]
fn accepts_libtorrents_replies() {
    let mut n = node();
    let lt = lt_addr();
    // Ping: our tid spliced into its reply (its own recording used the recorder's tids).
    n.ping(lt, None, t0());
    let (_, q) = sent(&mut n).pop().unwrap();
    n.handle_datagram(
        lt,
        &with_tid(golden!("lt_response_ping"), &q.transaction_id),
        t0(),
    );
    let lt_id = decode(golden!("lt_response_ping"))
        .unwrap()
        .sender_id()
        .unwrap();
    assert!(
        n.table(false).contains(&lt_id, lt),
        "libtorrent is in our table"
    );
    assert_eq!(
        (n.stats().queries_sent, n.stats().replies),
        (1, 1),
        "one ping sent, one reply"
    );

    // get_peers lookup: its `nodes` become candidates, its values peers, its filters estimates.
    let options = GetPeersOptions {
        scrape: true,
        noseed: false,
        announce: None,
    };
    let l = n.get_peers(recorded_info_hash(), options, t0()).unwrap();
    let (to, q) = sent(&mut n).pop().unwrap();
    assert_eq!(to, lt);
    n.handle_datagram(
        to,
        &with_tid(golden!("lt_response_get_peers_values"), &q.transaction_id),
        t0(),
    );
    assert_eq!(
        events(&mut n),
        [Event::Peers {
            lookup: l,
            info_hash: recorded_info_hash(),
            peers: vec![local(1, 6881)]
        }]
    );
    // It named three more nodes (the recorder's fakes): asked, and, silent, asked again.
    let named: Vec<SocketAddr> =
        response(&decode(golden!("lt_response_get_peers_values")).unwrap())
            .nodes
            .iter()
            .flatten()
            .map(|n| SocketAddr::V4(n.addr))
            .collect();
    let done = finish_by_timeouts(&mut n, &named, 0);
    let [Event::LookupDone(result)] = &done[..] else {
        panic!("{done:?}")
    };
    assert_eq!(result.peers, [local(1, 6881)]);
    assert_eq!(result.closest.len(), 1, "only libtorrent answered");
    assert_eq!(result.closest[0].id, lt_id);
    assert_eq!(result.closest[0].token.as_ref().map(|t| t.len()), Some(4));
    assert_eq!((result.queries, result.replies, result.timeouts), (4, 1, 3));
    assert_eq!(result.seeds_estimate, None, "no scrape answers");

    // Its scrape answer merges into the estimates.
    let l2 = n
        .get_peers(recorded_info_hash(), options, secs(20))
        .unwrap();
    let (_, q) = sent(&mut n).pop().unwrap();
    let scrape = with_tid(golden!("lt_response_get_peers_scrape"), &q.transaction_id);
    n.handle_datagram(lt, &scrape, secs(20));
    let named: Vec<SocketAddr> = response(&decode(&scrape).unwrap())
        .nodes
        .iter()
        .flatten()
        .map(|n| SocketAddr::V4(n.addr))
        .collect();
    let done = finish_by_timeouts(&mut n, &named, 20);
    let Some(Event::LookupDone(result)) = done.last() else {
        panic!("{done:?}")
    };
    assert_eq!(result.id, l2);
    assert!((result.peers_estimate.unwrap() - 1.0).abs() < 0.01);
    assert_eq!(result.seeds_estimate, Some(0.0));

    // Its find_node answer feeds the next queries.
    n.find_node(other_id(1), secs(40)).unwrap();
    let (_, q) = sent(&mut n).pop().unwrap();
    n.handle_datagram(
        lt,
        &with_tid(golden!("lt_response_find_node"), &q.transaction_id),
        secs(40),
    );
    let fake = decode(golden!("lt_response_find_node")).unwrap();
    let fake_nodes = response(&fake).find_node().unwrap().nodes.to_vec();
    let next: Vec<SocketAddr> = sent(&mut n).into_iter().map(|(to, _)| to).collect();
    assert_eq!(
        next.len(),
        fake_nodes.len().min(3),
        "α queries to the nodes it named"
    );
    for to in next {
        assert!(fake_nodes.iter().any(|f| SocketAddr::V4(f.addr) == to));
    }

    // Its errors are errors, not answers: the node stays, the lookup moves on.
    n.ping(lt, None, secs(40));
    let (_, q) = sent(&mut n).pop().unwrap();
    n.handle_datagram(
        lt,
        &with_tid(golden!("lt_error_bad_token"), &q.transaction_id),
        secs(40),
    );
    assert!(n.table(false).contains(&lt_id, lt));
    assert_eq!(n.stats().replies_unmatched, 0);
}

// --- Properties ------------------------------------------------------------------------

/// Datagrams near KRPC: random bytes, mutated golden messages, and real queries.
fn arb_datagram() -> impl Strategy<Value = Vec<u8>> {
    let goldens: Vec<&'static [u8]> = vec![
        golden!("lt_query_get_peers"),
        golden!("lt_query_announce_peer"),
        golden!("lt_query_sample_infohashes"),
        golden!("lt_response_get_peers"),
        golden!("lt_response_find_node"),
        golden!("lt_error_bad_token"),
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
    ];
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        (
            proptest::sample::select(goldens),
            proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(g, flips, cut)| {
                let mut v = g.to_vec();
                for (i, b) in flips {
                    let i = i.index(v.len());
                    v[i] = b;
                }
                let keep = v.len() - cut.index(v.len() / 4 + 1);
                v.truncate(keep);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever arrives, the node does not panic and sends at most 8× the bytes it received
    /// (no lookups running: what goes out is answers, errors, and upkeep pings to the
    /// queriers it heard from).
    #[test]
    fn arbitrary_datagrams_never_amplify(
        datagrams in proptest::collection::vec((arb_datagram(), 0u8..4), 1..40)
    ) {
        let mut n = node_with(DhtConfig { rate_burst: 1000, ..DhtConfig::default() });
        for i in 10..30 {
            confirm(&mut n, other_id(i), local(i, 6881), t0());
        }
        let before_in = n.stats().bytes_in;
        let before_out = n.stats().bytes_out;
        for (k, (d, src)) in datagrams.iter().enumerate() {
            let from = if src == &3 { "[::1]:7000".parse().unwrap() } else { local(src + 1, 7000) };
            n.handle_datagram(from, d, secs(k as u64));
            if k % 8 == 0 {
                n.tick(secs(k as u64));
            }
        }
        let mut out = 0;
        while let Some(d) = n.poll_transmit() {
            out += d.bytes.len();
            prop_assert!(decode(&d.bytes).is_ok());
        }
        let received = (n.stats().bytes_in - before_in) as usize;
        prop_assert_eq!(out as u64, n.stats().bytes_out - before_out);
        prop_assert!(out <= 8 * received, "{} bytes out for {} in", out, received);
    }
}

#[test]
fn lookup_errors_are_clear() {
    let mut n = node();
    assert_eq!(
        n.get_peers(other_id(1), GetPeersOptions::default(), t0()),
        Err(LookupError::NoNodes)
    );
    assert_eq!(
        LookupError::NoNodes.to_string(),
        "no DHT nodes known yet: bootstrap first"
    );
    let mut n = node_with(DhtConfig {
        max_lookups: 1,
        ..test_config()
    });
    n.bootstrap(&[local(2, 6881)], t0()).unwrap();
    assert_eq!(
        n.find_node(other_id(1), t0()),
        Err(LookupError::TooManyLookups(1))
    );
}

#[test]
fn garbage_answers_count_as_failures_and_errors_as_life() {
    let mut n = node();
    let a = local(2, 6881);
    assert!(confirm(&mut n, other_id(2), a, t0()));
    // A find_node "answer" without nodes, twice: the node turns bad, the lookup ends.
    for round in 0..2 {
        let l = n.find_node(other_id(50 + round), t0()).unwrap();
        let (to, q) = sent(&mut n).pop().unwrap();
        assert_eq!(to, a);
        let garbage = Message::new(
            q.transaction_id,
            Body::Response(Response::with_id(other_id(2))),
        );
        n.handle_datagram(a, &garbage.encode(), t0());
        let done = events(&mut n);
        let [Event::LookupDone(r)] = &done[..] else {
            panic!("{done:?}")
        };
        assert_eq!((r.id, r.closest.len()), (l, 0));
    }
    let e = n
        .table(false)
        .nodes()
        .find(|e| e.id == other_id(2))
        .unwrap();
    assert_eq!(e.status(t0()), NodeStatus::Bad);

    // An error answer (libtorrent's "invalid token") is a sign of life: good again.
    let mut n = node();
    assert!(confirm(&mut n, other_id(2), a, t0()));
    n.ping(a, Some(other_id(2)), t0());
    sent(&mut n);
    n.tick(secs(5));
    let err = |tid: Vec<u8>| {
        Message::new(
            tid,
            Body::Error(ErrorReply {
                code: 203,
                message: b"no".to_vec(),
                id: Some(other_id(2)),
            }),
        )
        .encode()
    };
    n.ping(a, Some(other_id(2)), secs(6));
    let (_, q) = sent(&mut n).pop().unwrap();
    n.handle_datagram(a, &err(q.transaction_id), secs(6));
    let e = n
        .table(false)
        .nodes()
        .find(|e| e.id == other_id(2))
        .unwrap();
    assert_eq!(e.failures, 0);
}

#[test]
fn outstanding_queries_and_their_deadlines_stay_bounded() {
    let mut n = node_with(DhtConfig {
        max_outstanding: 16,
        ..test_config()
    });
    // 16 unanswered: the 17th query is refused.
    for i in 0..16u16 {
        assert!(n.ping(SocketAddr::from(([127, 2, 0, 1], 1000 + i)), None, t0()));
    }
    assert!(!n.ping(local(9, 9), None, t0()));
    n.tick(secs(5));
    sent(&mut n);
    // Thousands answered at once leave no pile of stale deadlines.
    for i in 0..2000u16 {
        let a = SocketAddr::from(([127, 3, (i >> 8) as u8, i as u8], 6881));
        confirm(&mut n, other_id((i % 200) as u8), a, secs(6));
        assert!(n.deadlines.len() <= 4 * 16 + 1);
    }
    assert!(n.outstanding.is_empty());
}

#[test]
fn ipv6_nodes_live_in_their_own_table_and_answer_as_nodes6() {
    let mut n = node_with(DhtConfig::default());
    let v6: SocketAddr = "[::1]:6881".parse().unwrap();
    let v4 = local(2, 6881);
    assert!(confirm(&mut n, other_id(6), v6, t0()));
    assert!(confirm(&mut n, other_id(4), v4, t0()));
    assert_eq!((n.table(false).len(), n.table(true).len()), (1, 1));
    // Our queries ask for both families when we speak both (BEP 32).
    n.ping(v4, None, t0());
    let (_, q) = sent(&mut n).pop().unwrap();
    let Body::Query(q) = q.body else { panic!() };
    assert_eq!(q.want, Want { n4: true, n6: true });
    // A query over IPv6 without `want` gets IPv6 nodes.
    let fq = query(
        b"f6",
        other_id(9),
        QueryKind::FindNode {
            target: other_id(6),
        },
    );
    let r = ask(&mut n, "[::2]:7000".parse().unwrap(), &fq, t0()).unwrap();
    let reply = response(&r).find_node().unwrap();
    assert!(reply.nodes.is_empty());
    assert_eq!(reply.nodes6.len(), 1);
    assert_eq!(SocketAddr::V6(reply.nodes6[0].addr), v6);
    // An IPv4-only node drops IPv6 traffic.
    let mut only4 = node();
    assert!(ask(&mut only4, v6, &fq, t0()).is_none());
    assert!(!only4.ping(v6, None, t0()));
}

/// Carry every datagram `from` sends to `to` (one hop).
fn deliver(from: &mut DhtNode, from_addr: SocketAddr, to: &mut DhtNode, now: Instant) {
    while let Some(d) = from.poll_transmit() {
        to.handle_datagram(from_addr, &d.bytes, now);
    }
}

#[test]
fn sample_infohashes_client_reports_samples_nodes_and_interval() {
    let (a_addr, b_addr) = (local(1, 6881), local(2, 6881));
    let mut a = node();
    let mut b = DhtNode::new(test_config(), [7; 32], t0());
    // b stores two info-hashes (announced to it by another host) and knows one node.
    let announcer = local(5, 40000);
    for n in [100u8, 101] {
        let gp = query(
            b"g1",
            other_id(5),
            QueryKind::GetPeers {
                info_hash: other_id(n),
                noseed: false,
                scrape: false,
            },
        );
        let token = response(&ask(&mut b, announcer, &gp, t0()).unwrap())
            .token
            .clone()
            .unwrap();
        let ann = query(
            b"a1",
            other_id(5),
            QueryKind::AnnouncePeer {
                info_hash: other_id(n),
                port: 6881,
                implied_port: false,
                token,
                seed: false,
            },
        );
        ask(&mut b, announcer, &ann, t0()).unwrap();
    }
    assert!(confirm(&mut b, other_id(9), local(9, 6881), t0()));
    events(&mut b);

    assert!(a.sample_infohashes(b_addr, None, other_id(1), t0()));
    deliver(&mut a, a_addr, &mut b, t0());
    deliver(&mut b, b_addr, &mut a, t0());
    let got = events(&mut a);
    let [Event::Samples(s)] = got.as_slice() else {
        panic!("one Samples event: {got:?}");
    };
    assert_eq!((s.from, s.id), (b_addr, b.id()));
    let mut samples = s.samples.clone();
    samples.sort();
    let mut expected = vec![other_id(100), other_id(101)];
    expected.sort();
    assert_eq!(samples, expected);
    assert_eq!(s.num, Some(2));
    assert_eq!(s.interval, Some(SAMPLE_INTERVAL_SECS));
    assert_eq!(s.nodes, [(other_id(9), local(9, 6881))]);

    // No answer: a failure once the query times out.
    assert!(a.sample_infohashes(local(3, 6881), None, other_id(1), t0()));
    sent(&mut a);
    a.tick(t0() + a.config().query_timeout + Duration::from_millis(1));
    assert!(events(&mut a).contains(&Event::SamplesFailed {
        from: local(3, 6881)
    }));
}

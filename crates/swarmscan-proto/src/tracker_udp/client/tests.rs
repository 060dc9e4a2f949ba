use super::*;
use crate::tracker_http::Event;
use proptest::prelude::*;
use std::net::Ipv4Addr;

const TRACKER: &str = "127.0.0.1:6969";

fn tracker() -> SocketAddr {
    TRACKER.parse().unwrap()
}

fn settings(retransmit_ms: Millis, max_retransmits: u32) -> ClientSettings {
    ClientSettings {
        retransmit_ms,
        max_retransmits,
        ..ClientSettings::default()
    }
}

fn announce(hash: u8) -> Query {
    Query::Announce(AnnounceRequest {
        connection_id: 0,
        transaction_id: 0,
        info_hash: [hash; 20],
        peer_id: [b'p'; 20],
        downloaded: 0,
        left: 1,
        uploaded: 0,
        event: Event::Started,
        ip: Ipv4Addr::UNSPECIFIED,
        key: 1,
        num_want: 50,
        port: 6881,
        url_data: b"/announce".to_vec(),
    })
}

/// Everything the client wants sent now, decoded (all to `TRACKER`).
fn sent(c: &mut Client) -> Vec<Request> {
    std::iter::from_fn(|| c.poll_transmit())
        .map(|(to, bytes)| {
            assert_eq!(to, tracker());
            Request::decode(&bytes).unwrap()
        })
        .collect()
}

fn connect_reply(req: &Request, connection_id: u64) -> Vec<u8> {
    Response::Connect {
        transaction_id: req.transaction_id(),
        connection_id,
    }
    .to_bytes(AddressFamily::V4)
}

fn announce_reply(req: &Request, peers: Vec<SocketAddr>) -> Vec<u8> {
    Response::Announce(AnnounceResponse {
        transaction_id: req.transaction_id(),
        interval: 1800,
        leechers: 1,
        seeders: 2,
        peers,
    })
    .to_bytes(AddressFamily::V4)
}

/// Connects `c` to `TRACKER` with id `cid` at `now` through a first announce (answered).
fn connected(c: &mut Client, now: Millis, cid: u64) -> RequestId {
    let id = c.request(now, tracker(), announce(1));
    let reqs = sent(c);
    assert!(matches!(reqs[..], [Request::Connect { .. }]), "{reqs:?}");
    c.handle_datagram(now, tracker(), &connect_reply(&reqs[0], cid))
        .unwrap();
    let reqs = sent(c);
    let [Request::Announce(a)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(a.connection_id, cid);
    c.handle_datagram(now, tracker(), &announce_reply(&reqs[0], vec![]))
        .unwrap();
    assert!(matches!(c.poll_event(), Some((i, Ok(_))) if i == id));
    id
}

#[test]
fn connection_id_is_reused_for_a_minute_then_renewed() {
    let mut c = Client::new([1; 32], ClientSettings::default());
    connected(&mut c, 0, 77);
    // 59.999 s later: the id is still good, the announce goes out at once.
    c.request(59_999, tracker(), announce(2));
    let reqs = sent(&mut c);
    let [Request::Announce(a)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(a.connection_id, 77);
    assert_eq!(a.info_hash, [2; 20]);
    assert_eq!(a.url_data, b"/announce");
    c.handle_datagram(60_000, tracker(), &announce_reply(&reqs[0], vec![]))
        .unwrap();
    assert!(c.poll_event().unwrap().1.is_ok());
    // A minute after it was received: connect first.
    c.request(60_000, tracker(), announce(3));
    let reqs = sent(&mut c);
    assert!(matches!(reqs[..], [Request::Connect { .. }]), "{reqs:?}");
    c.handle_datagram(60_010, tracker(), &connect_reply(&reqs[0], 78))
        .unwrap();
    let reqs = sent(&mut c);
    let [Request::Announce(a)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(a.connection_id, 78);
}

#[test]
fn unanswered_requests_are_sent_again_after_doubling_waits_then_fail() {
    // 1 s first wait, 3 retransmissions: sent at 0, 1, 3, 7 s; failed at 15 s.
    let mut c = Client::new([2; 32], settings(1000, 3));
    let id = c.request(0, tracker(), announce(1));
    let mut sends = Vec::new();
    for now in (0..20_000).step_by(100) {
        c.handle_timeout(now);
        for r in sent(&mut c) {
            assert!(matches!(r, Request::Connect { .. }));
            sends.push((now, r.transaction_id()));
        }
        if let Some(e) = c.poll_event() {
            assert_eq!(e, (id, Err(Failure::TimedOut)));
            assert_eq!(now, 15_000);
            break;
        }
    }
    let times: Vec<Millis> = sends.iter().map(|s| s.0).collect();
    assert_eq!(times, [0, 1000, 3000, 7000]);
    // Every retransmission keeps its transaction id: a late reply to any of them counts.
    assert!(sends.iter().all(|s| s.1 == sends[0].1));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.trackers(), 0, "nothing left once it failed");

    // The same for an announce on a live connection id; BEP 15's defaults: 15 s, 30 s, …
    let mut c = Client::new([2; 32], ClientSettings::default());
    connected(&mut c, 0, 5);
    let id = c.request(1000, tracker(), announce(2));
    assert_eq!(sent(&mut c).len(), 1);
    assert_eq!(c.next_timeout(), Some(16_000));
    c.handle_timeout(15_999);
    assert!(sent(&mut c).is_empty());
    // Retransmitted with the same connection id while it is good (received at 0 s) …
    c.handle_timeout(16_000);
    let reqs = sent(&mut c);
    let [Request::Announce(a)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(a.connection_id, 5);
    assert_eq!(c.next_timeout(), Some(46_000));
    c.handle_timeout(46_000);
    assert_eq!(sent(&mut c).len(), 1);
    // … and after it expired, a connect first, then the announce once more.
    c.handle_timeout(106_000);
    let reqs = sent(&mut c);
    assert!(matches!(reqs[..], [Request::Connect { .. }]), "{reqs:?}");
    c.handle_datagram(106_001, tracker(), &connect_reply(&reqs[0], 6))
        .unwrap();
    let reqs = sent(&mut c);
    let [Request::Announce(a)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(a.connection_id, 6, "sent again with the new id");
    c.handle_datagram(106_002, tracker(), &announce_reply(&reqs[0], vec![]))
        .unwrap();
    assert!(matches!(c.poll_event(), Some((i, Ok(_))) if i == id));
}

#[test]
fn replies_with_ids_we_did_not_issue_to_that_address_are_dropped() {
    let mut c = Client::new([3; 32], ClientSettings::default());
    let id = c.request(0, tracker(), announce(1));
    let reqs = sent(&mut c);
    let good = connect_reply(&reqs[0], 9);
    // Any other transaction id: forged, whatever else the packet says.
    let mut forged = good.clone();
    forged[7] ^= 1;
    assert_eq!(
        c.handle_datagram(1, tracker(), &forged),
        Err(Dropped::Forged)
    );
    // The right id from another address (or port) is not ours either.
    let other: SocketAddr = "127.0.0.1:6970".parse().unwrap();
    assert_eq!(c.handle_datagram(1, other, &good), Err(Dropped::Forged));
    // Nothing came of those: still waiting for the connect.
    assert!(sent(&mut c).is_empty());
    assert_eq!(c.poll_event(), None);
    assert_eq!(
        c.handle_datagram(1, tracker(), &good[..7]),
        Err(Dropped::TooShort)
    );
    c.handle_datagram(1, tracker(), &good).unwrap();
    // The same reply again (a duplicate, or the answer to a retransmission): nothing waits.
    assert_eq!(
        c.handle_datagram(2, tracker(), &good),
        Err(Dropped::NotPending)
    );
    let reqs = sent(&mut c);
    c.handle_datagram(3, tracker(), &announce_reply(&reqs[0], vec![]))
        .unwrap();
    assert!(matches!(c.poll_event(), Some((i, Ok(_))) if i == id));

    // Ids differ per client secret: another client's reply never verifies here.
    let mut other_client = Client::new([4; 32], ClientSettings::default());
    other_client.request(0, tracker(), announce(1));
    let theirs = sent(&mut other_client);
    assert_eq!(
        c.handle_datagram(4, tracker(), &connect_reply(&theirs[0], 1)),
        Err(Dropped::Forged)
    );
}

#[test]
fn error_replies_fail_the_request_and_drop_the_connection_id() {
    let mut c = Client::new([5; 32], ClientSettings::default());
    // An error instead of a connection id: everything waiting on the connect fails.
    let a = c.request(0, tracker(), announce(1));
    let b = c.request(0, tracker(), Query::Scrape(vec![[1; 20]]));
    let reqs = sent(&mut c);
    assert_eq!(reqs.len(), 1, "one connect for both");
    let error = |req: &Request, message: &str| {
        Response::Error {
            transaction_id: req.transaction_id(),
            message: message.into(),
        }
        .to_bytes(AddressFamily::V4)
    };
    c.handle_datagram(1, tracker(), &error(&reqs[0], "go away"))
        .unwrap();
    let expect = Err(Failure::Tracker("go away".into()));
    assert_eq!(c.poll_event(), Some((a, expect.clone())));
    assert_eq!(c.poll_event(), Some((b, expect)));
    assert_eq!(
        Failure::Tracker("go away".into()).to_string(),
        "tracker error: go away"
    );

    // An error to an announce: that request fails, and the next one connects again.
    let mut c = Client::new([5; 32], ClientSettings::default());
    connected(&mut c, 0, 11);
    let id = c.request(10, tracker(), announce(2));
    let reqs = sent(&mut c);
    c.handle_datagram(11, tracker(), &error(&reqs[0], "unregistered torrent"))
        .unwrap();
    assert_eq!(
        c.poll_event(),
        Some((id, Err(Failure::Tracker("unregistered torrent".into()))))
    );
    c.request(12, tracker(), announce(3));
    assert!(matches!(sent(&mut c)[..], [Request::Connect { .. }]));
}

#[test]
fn truncated_replies_fail_and_oversized_ones_are_cut_to_what_was_asked() {
    let mut c = Client::new([6; 32], ClientSettings::default());
    // A connect reply with bytes after the connection id: the id is used, the rest ignored.
    let id = c.request(0, tracker(), Query::Scrape(vec![[1; 20], [2; 20]]));
    let reqs = sent(&mut c);
    let mut long = connect_reply(&reqs[0], 3);
    long.extend_from_slice(&[0xee; 100]);
    c.handle_datagram(1, tracker(), &long).unwrap();
    let reqs = sent(&mut c);
    let [Request::Scrape(s)] = &reqs[..] else {
        panic!("{reqs:?}")
    };
    assert_eq!(s.connection_id, 3);
    // Three entries for two hashes: the third is not ours to keep.
    let stats = |n: u32| ScrapeStats {
        seeders: n,
        completed: n,
        leechers: n,
    };
    let reply = Response::Scrape {
        transaction_id: s.transaction_id,
        stats: vec![stats(1), stats(2), stats(3)],
    }
    .to_bytes(AddressFamily::V4);
    c.handle_datagram(2, tracker(), &reply).unwrap();
    assert_eq!(
        c.poll_event(),
        Some((id, Ok(Answer::Scrape(vec![stats(1), stats(2)]))))
    );

    // An announce reply cut inside its header, or inside a peer: the request fails, named.
    for cut in [12, 20 + 6 + 3] {
        let id = c.request(3, tracker(), announce(1));
        let reqs = sent(&mut c);
        let reply = announce_reply(&reqs[0], vec!["10.0.0.1:1".parse().unwrap(); 2]);
        c.handle_datagram(4, tracker(), &reply[..cut]).unwrap();
        let (got, result) = c.poll_event().unwrap();
        assert_eq!(got, id);
        let Err(Failure::Malformed(e)) = result else {
            panic!("{result:?}")
        };
        assert!(
            matches!(e, UdpError::TooShort { .. } | UdpError::RaggedList { .. }),
            "{e}"
        );
        // The failure dropped the connection id: reconnect for the next round.
        let reqs = sent(&mut c);
        assert!(reqs.is_empty());
        c.request(5, tracker(), Query::Scrape(vec![[1; 20]]));
        let reqs = sent(&mut c);
        assert!(matches!(reqs[..], [Request::Connect { .. }]));
        c.handle_datagram(6, tracker(), &connect_reply(&reqs[0], 3))
            .unwrap();
        let reqs = sent(&mut c);
        let reply = Response::Scrape {
            transaction_id: reqs[0].transaction_id(),
            stats: vec![stats(1)],
        }
        .to_bytes(AddressFamily::V4);
        c.handle_datagram(7, tracker(), &reply).unwrap();
        assert!(c.poll_event().unwrap().1.is_ok());
    }

    // A reply of another kind than asked (a scrape reply to an announce).
    let id = c.request(8, tracker(), announce(1));
    let reqs = sent(&mut c);
    let reply = Response::Scrape {
        transaction_id: reqs[0].transaction_id(),
        stats: vec![],
    }
    .to_bytes(AddressFamily::V4);
    c.handle_datagram(9, tracker(), &reply).unwrap();
    assert!(matches!(
        c.poll_event(),
        Some((i, Err(Failure::Malformed(UdpError::UnexpectedAction { .. })))) if i == id
    ));

    // More hashes than a reply can hold: refused before anything is sent.
    let id = c.request(10, tracker(), Query::Scrape(vec![[0; 20]; 75]));
    assert_eq!(c.poll_event(), Some((id, Err(Failure::TooManyHashes(75)))));
    assert!(sent(&mut c).is_empty());
}

#[test]
fn requests_beyond_the_in_flight_bound_wait_their_turn() {
    let mut c = Client::new(
        [7; 32],
        ClientSettings {
            max_in_flight: 2,
            max_queued: 3,
            ..ClientSettings::default()
        },
    );
    connected(&mut c, 0, 1);
    let ids: Vec<RequestId> = (0..5)
        .map(|i| c.request(1, tracker(), announce(i)))
        .collect();
    // Two in flight, three waiting; none refused.
    let first = sent(&mut c);
    assert_eq!(first.len(), 2);
    assert_eq!(c.poll_event(), None);
    // One more than the queue holds: refused at once.
    let extra = c.request(1, tracker(), announce(9));
    assert_eq!(c.poll_event(), Some((extra, Err(Failure::Overloaded))));
    // Each answer lets the next one go.
    let mut answered = Vec::new();
    let mut wire = first;
    while let Some(r) = wire.pop() {
        c.handle_datagram(2, tracker(), &announce_reply(&r, vec![]))
            .unwrap();
        answered.push(c.poll_event().unwrap().0);
        wire.extend(sent(&mut c));
        assert!(wire.len() <= 2);
    }
    answered.sort_by_key(|i| i.0);
    assert_eq!(answered, ids);
    // Distinct transaction ids for distinct requests in flight at once.
    let a = c.request(3, tracker(), announce(1));
    let b = c.request(3, tracker(), announce(2));
    let reqs = sent(&mut c);
    assert_ne!(reqs[0].transaction_id(), reqs[1].transaction_id());
    // Answering the second first is fine: replies are matched by id, not by order.
    c.handle_datagram(4, tracker(), &announce_reply(&reqs[1], vec![]))
        .unwrap();
    c.handle_datagram(4, tracker(), &announce_reply(&reqs[0], vec![]))
        .unwrap();
    assert_eq!(c.poll_event().unwrap().0, b);
    assert_eq!(c.poll_event().unwrap().0, a);
}

#[test]
fn an_unreachable_tracker_fails_its_requests_at_once() {
    let mut c = Client::new([8; 32], ClientSettings::default());
    let a = c.request(0, tracker(), announce(1));
    let b = c.request(0, tracker(), announce(2));
    let other: SocketAddr = "[::1]:80".parse().unwrap();
    let kept = c.request(0, other, announce(3));
    c.handle_unreachable(tracker(), "connection refused");
    let failed = Err(Failure::Unreachable("connection refused".into()));
    assert_eq!(c.poll_event(), Some((a, failed.clone())));
    assert_eq!(c.poll_event(), Some((b, failed)));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.trackers(), 1, "the other tracker is untouched");
    // Its announce goes over IPv6 and its replies are read with 18-byte peers.
    let (to, bytes) = std::iter::from_fn(|| c.poll_transmit())
        .find(|(t, _)| *t == other)
        .unwrap();
    assert_eq!(to, other);
    let req = Request::decode(&bytes).unwrap();
    let reply = Response::Connect {
        transaction_id: req.transaction_id(),
        connection_id: 4,
    }
    .to_bytes(AddressFamily::V6);
    c.handle_datagram(1, other, &reply).unwrap();
    let (_, bytes) = c.poll_transmit().unwrap();
    let req = Request::decode(&bytes).unwrap();
    let peer: SocketAddr = "[2001:db8::1]:51413".parse().unwrap();
    let reply = Response::Announce(AnnounceResponse {
        transaction_id: req.transaction_id(),
        interval: 60,
        leechers: 0,
        seeders: 1,
        peers: vec![peer],
    })
    .to_bytes(AddressFamily::V6);
    c.handle_datagram(2, other, &reply).unwrap();
    let (id, Ok(Answer::Announce(got))) = c.poll_event().unwrap() else {
        panic!()
    };
    assert_eq!(id, kept);
    assert_eq!(got.peers, vec![peer]);
}

#[test]
fn an_idle_tracker_is_forgotten_when_its_connection_id_expires() {
    let mut c = Client::new([9; 32], ClientSettings::default());
    connected(&mut c, 0, 1);
    assert_eq!(c.trackers(), 1);
    assert_eq!(c.next_timeout(), Some(60_000));
    c.handle_timeout(59_999);
    assert_eq!(c.trackers(), 1);
    c.handle_timeout(60_000);
    assert_eq!(c.trackers(), 0);
    assert_eq!(c.next_timeout(), None);
}

proptest! {
    /// Whatever arrives, from the tracker or anyone, the client neither panics nor answers
    /// more than it was asked.
    #[test]
    fn never_panics_on_any_datagram(data in proptest::collection::vec(any::<u8>(), 0..200),
                                    seq in 0u16..4096, forge in any::<bool>()) {
        let mut c = Client::new([10; 32], ClientSettings::default());
        c.request(0, tracker(), announce(1));
        let reqs = sent(&mut c);
        let mut bytes = data;
        if !forge && bytes.len() >= 8 {
            // A valid id for this address: decoding the rest is what is tested.
            let tid = if seq == 0 { reqs[0].transaction_id() } else { c.tid(tracker(), seq) };
            bytes[4..8].copy_from_slice(&tid.to_be_bytes());
        }
        let _ = c.handle_datagram(1, tracker(), &bytes);
        let _ = sent(&mut c);
        let mut events = 0;
        while c.poll_event().is_some() {
            events += 1;
        }
        prop_assert!(events <= 1);
        c.handle_timeout(10_000_000);
    }
}

#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use swarmscan_proto::dht::{AnnounceOptions, Bep42Policy, DhtConfig, DhtNode, GetPeersOptions};
use swarmscan_proto::krpc::{self, Id20};

// The DHT node on arbitrary traffic: datagrams from a few sources, and replies to the
// queries it sent (the fuzzer's message with the right transaction id put in), time moving
// on between them. Checks: no panic; everything sent is valid KRPC; what one datagram from
// outside makes the node send right away is at most 8× its size (answers only: the fuzzer
// cannot forge our keyed transaction ids); tables, lookups and queues stay bounded.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let start = Instant::now();
    let mut now = start;
    let config = DhtConfig {
        ipv6: mode & 1 != 0,
        read_only: mode & 2 != 0,
        bep42: match (mode >> 2) & 3 {
            0 => Bep42Policy::Off,
            1 => Bep42Policy::RequireVerified,
            _ => Bep42Policy::PreferVerified,
        },
        bep42_exempt_local: mode & 16 != 0,
        max_lookups: 4,
        max_outstanding: 64,
        max_queued: 256,
        ..DhtConfig::default()
    };
    let mut node = DhtNode::new(config, [mode; 32], now);
    let sources: [SocketAddr; 4] = [
        "127.0.0.2:6881".parse().unwrap(),
        "203.0.113.9:6881".parse().unwrap(),
        "[::1]:6881".parse().unwrap(),
        "10.1.2.3:1".parse().unwrap(),
    ];
    let _ = node.bootstrap(&sources, now);
    // Queries we sent, as (destination, transaction id), newest last.
    let mut sent_queries: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let drain = |node: &mut DhtNode, sent_queries: &mut Vec<(SocketAddr, Vec<u8>)>| {
        let mut bytes = 0;
        while let Some(d) = node.poll_transmit() {
            let msg = krpc::decode(&d.bytes).expect("we send valid KRPC");
            if let krpc::Body::Query(_) = msg.body {
                if sent_queries.len() < 256 {
                    sent_queries.push((d.to, msg.transaction_id));
                }
            } else {
                bytes += d.bytes.len();
            }
        }
        while node.poll_event().is_some() {}
        bytes
    };
    drain(&mut node, &mut sent_queries);
    let mut round = 0u32;
    while rest.len() >= 4 && round < 64 {
        round += 1;
        let (head, tail) = rest.split_at(4);
        let len = (u16::from_be_bytes([head[2], head[3]]) as usize).min(tail.len());
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        now += Duration::from_millis(head[1] as u64 * 40);
        match head[0] % 8 {
            // A reply to one of our queries: the fuzzer's message with our id put in.
            0 | 1 if !sent_queries.is_empty() => {
                let (to, tid) = sent_queries.remove(head[0] as usize % sent_queries.len());
                if let Ok(mut msg) = krpc::decode(payload) {
                    msg.transaction_id = tid;
                    node.handle_datagram(to, &msg.encode(), now);
                }
                drain(&mut node, &mut sent_queries);
            }
            2 => {
                node.tick(now);
                drain(&mut node, &mut sent_queries);
            }
            3 => {
                let mut ih = [0u8; 20];
                for (i, b) in payload.iter().take(20).enumerate() {
                    ih[i] = *b;
                }
                let options = GetPeersOptions {
                    scrape: head[0] & 8 != 0,
                    noseed: head[0] & 16 != 0,
                    announce: (head[0] & 32 != 0).then_some(AnnounceOptions {
                        port: 6881,
                        implied_port: head[0] & 64 != 0,
                        seed: false,
                    }),
                };
                let _ = node.get_peers(Id20(ih), options, now);
                drain(&mut node, &mut sent_queries);
            }
            k => {
                let from = sources[k as usize % sources.len()];
                node.handle_datagram(from, payload, now);
                let answered = drain(&mut node, &mut sent_queries);
                assert!(
                    answered <= 8 * payload.len(),
                    "{answered} bytes answered for {}",
                    payload.len()
                );
            }
        }
        assert!(node.table(false).len() <= 160 * 8);
        assert!(node.table(true).len() <= 160 * 8);
        assert!(node.lookup_count() <= 4);
    }
});

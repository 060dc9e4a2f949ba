#![no_main]
use libfuzzer_sys::fuzz_target;
use std::net::SocketAddr;
use swarmscan_proto::tracker_udp::client::{Client, ClientSettings, Query};
use swarmscan_proto::tracker_udp::Request;

// The UDP tracker client on any datagram from its tracker, at any stage (waiting for a connect
// reply, then for a scrape reply): never a panic, never more than one answer per request.
// The first byte chooses whether the datagram carries the transaction id the client issued
// (so the reply decoding is reached, not only the keyed check).
fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let tracker: SocketAddr = if mode & 2 == 0 {
        "127.0.0.1:6969".parse().unwrap()
    } else {
        "[::1]:6969".parse().unwrap()
    };
    let mut client = Client::new([3; 32], ClientSettings::default());
    client.request(0, tracker, Query::Scrape(vec![[1; 20]]));
    let mut events = 0;
    for (now, chunk) in rest.chunks(64).enumerate().take(8) {
        let mut bytes = chunk.to_vec();
        let sent: Vec<_> = std::iter::from_fn(|| client.poll_transmit()).collect();
        if mode & 1 == 1 && bytes.len() >= 8 {
            if let Some(Ok(req)) = sent.last().map(|(_, b)| Request::decode(b)) {
                bytes[4..8].copy_from_slice(&req.transaction_id().to_be_bytes());
            }
        }
        let _ = client.handle_datagram(now as u64, tracker, &bytes);
        client.handle_timeout(now as u64 * 20_000);
        while client.poll_event().is_some() {
            events += 1;
        }
    }
    assert!(events <= 1);
});

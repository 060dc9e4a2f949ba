#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::client_id;

fuzz_target!(|data: &[u8]| {
    // Never panics on any bytes; a peer-id and a `v` string from the same input combine.
    let split = data.len().min(20);
    let (peer_id, v) = data.split_at(split);
    let _ = client_id::from_peer_id(data).to_string();
    let _ = client_id::from_ext_version(data).to_string();
    let _ = client_id::from_dht_version(data).to_string();
    let id = client_id::combine(Some(peer_id), Some(v));
    let _ = id.client.to_string();
});

#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::{client_id, krpc};

fuzz_target!(|data: &[u8]| {
    // Any datagram either fails cleanly or decodes to a message whose encoding decodes to
    // the same message; the typed views never panic either.
    if let Ok(msg) = krpc::decode(data) {
        let again = msg.encode();
        let back = krpc::decode(&again).expect("re-encoded message decodes");
        assert_eq!(back, msg);
        if let krpc::Body::Response(r) = &msg.body {
            for method in [
                krpc::Method::Ping,
                krpc::Method::FindNode,
                krpc::Method::GetPeers,
                krpc::Method::AnnouncePeer,
                krpc::Method::SampleInfohashes,
            ] {
                let _ = r.check_answers(method);
            }
            if let Some(f) = &r.peers_filter {
                let _ = f.estimate();
            }
        }
        if let Some(v) = &msg.version {
            let _ = client_id::from_dht_version(v).to_string();
        }
    }
});

#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::tracker_udp::{AddressFamily, Request, Response};

// Every packet either fails cleanly or decodes to a value whose encoding decodes to the
// same value (requests and responses, both address families).
fuzz_target!(|data: &[u8]| {
    if let Ok(req) = Request::decode(data) {
        let again = req.to_bytes();
        assert_eq!(Request::decode(&again).as_ref(), Ok(&req));
    }
    for family in [AddressFamily::V4, AddressFamily::V6] {
        if let Ok(resp) = Response::decode(data, family) {
            let again = resp.to_bytes(family);
            let back = Response::decode(&again, family).expect("re-encoded response decodes");
            // Error messages are lossy UTF-8, so compare after one round.
            assert_eq!(back.to_bytes(family), again);
            if !matches!(resp, Response::Error { .. }) {
                assert_eq!(back, resp);
            }
        }
    }
});

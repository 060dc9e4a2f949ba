#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::bencode;

fuzz_target!(|data: &[u8]| {
    // Any input either fails cleanly or decodes to a value whose canonical re-encoding
    // decodes to the same tree.
    if let Ok(v) = bencode::decode_with(data, bencode::Limits::NETWORK) {
        assert_eq!(v.raw(), data);
        let owned = v.to_owned_value();
        let again = owned.encode();
        let back = bencode::decode(&again).expect("re-encoded value decodes");
        assert_eq!(back.to_owned_value(), owned);
    }
});

#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmscan_proto::magnet::{Magnet, TorrentRef};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // parse -> to_string -> parse is stable.
    if let Ok(m) = text.parse::<Magnet>() {
        let built = m.to_string();
        let again: Magnet = built
            .parse()
            .unwrap_or_else(|e| panic!("own output {built:?} does not parse: {e}"));
        assert_eq!(again, m, "{built}");
        assert_eq!(again.to_string(), built);
    }
    if let Ok(r) = TorrentRef::parse_input(&text) {
        assert!(!r.info_hashes().is_empty());
    }
});

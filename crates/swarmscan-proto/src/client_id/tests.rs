use super::*;
use proptest::prelude::*;

/// A 20-byte peer-id: `prefix` then filler.
fn pid(prefix: &[u8]) -> Vec<u8> {
    let mut id = prefix.to_vec();
    id.resize(20, b'x');
    id
}

fn peer(prefix: &[u8]) -> String {
    from_peer_id(&pid(prefix)).to_string()
}

#[test]
fn azureus_style() {
    let cases: &[(&[u8], &str)] = &[
        (b"-UT3540-", "µTorrent 3.5.4"),
        (b"-UT355B-", "µTorrent 3.5.5 Beta"),
        (b"-qB4130-", "qBittorrent 4.1.3"),
        (b"-qB4A10-", "qBittorrent 4.10.1"),
        (b"-LT2110-", "libtorrent 2.1.1"),
        (b"-LT1217-", "libtorrent 1.2.1.7"),
        (b"-lt0D80-", "libTorrent (rakshasa) 0.13.8"),
        (b"-TR4000-", "Transmission 4.0.0"),
        (b"-TR2940-", "Transmission 2.94"),
        (b"-TR294Z-", "Transmission 2.94+"),
        (b"-TR400B-", "Transmission 4.0.0 Beta"),
        (b"-TR0072-", "Transmission 0.72"),
        (b"-TR0006-", "Transmission 0.6"),
        (b"-DE13F0-", "Deluge 1.3.15"),
        (b"-DE2110-", "Deluge 2.1.1"),
        (b"-BT7a4S-", "BitTorrent 7.10.4"),
        (b"-BC0158-", "BitComet 1.58"),
        (b"-BC0070-", "BitComet 0.70"),
        (b"-AZ5760-", "Vuze 5.7.6.0"),
        (b"-AZ2060-", "Azureus 2.0.6.0"),
        (b"-BI3400-", "BiglyBT 3.4.0.0"),
        (b"-KT4130-", "KTorrent 4.1.3"),
        (b"-WW0105-", "WebTorrent 1.05"),
        (b"-XL0012-", "Xunlei 0.0.1.2"),
        (b"-SD0100-", "Thunder (Xunlei) 0.1.0"),
        (b"-BW1340-", "BitTorrent Web 1.3.4"),
        (b"-FD51W0-", "Free Download Manager 5.1.32"),
        (b"-UM1870-", "µTorrent Mac 1.8.7"),
    ];
    for (prefix, want) in cases {
        assert_eq!(peer(prefix), *want, "{}", String::from_utf8_lossy(prefix));
    }
    // A well-formed but unlisted code, and a listed code with an unreadable version.
    assert_eq!(peer(b"-ZZ1234-"), "Unknown(-ZZ1234-)");
    assert_eq!(
        from_peer_id(&pid(b"-BC00!0-")),
        ClientId::Known {
            name: "BitComet".into(),
            version: None
        }
    );
}

#[test]
fn other_styles() {
    let cases: &[(&[u8], &str)] = &[
        (b"S58B-----", "Shadow 5.8.11"),
        (b"T03I-----", "BitTornado 0.3.18"),
        (b"M7-4-3--", "BitTorrent 7.4.3"),
        (b"M4-20-8-", "BitTorrent 4.20.8"),
        (b"Q1-10-0-", "Queen Bee 1.10.0"),
        (b"exbc\x00\x46", "BitComet 0.70"),
        (b"exbc\x00\x46LORD", "BitLord 0.70"),
        (b"FUTB\x01\x02", "BitComet 1.02"),
        (b"xUTB\x01\x02", "BitComet 1.02"),
        (b"\x00\x03BS", "BitSpirit 3.x"),
        (b"\x00\x02BS", "BitSpirit 2.x"),
        (b"XBT054d-", "XBT Client 0.5.4 debug"),
        (b"XBT054--", "XBT Client 0.5.4"),
        (b"OP8123", "Opera build 8123"),
        (b"-ML2.7.2-", "MLdonkey 2.7.2"),
        (b"AZ2500BT", "BitTyrant 1.1"),
        (b"TIX0193-", "Tixati 1.93"),
        (b"A2-1-35-0-", "aria2 1.35.0"),
        (b"-FG0180", "FlashGet 1.80"),
    ];
    for (prefix, want) in cases {
        assert_eq!(peer(prefix), *want, "{}", String::from_utf8_lossy(prefix));
    }
    assert_eq!(
        from_peer_id(&[0u8; 20]).to_string(),
        "Unknown(\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00)"
    );
    assert_eq!(from_peer_id(b"").to_string(), "Unknown()");
    // Near misses stay unknown instead of being forced into a scheme.
    assert!(!from_peer_id(&pid(b"M7-4-3x-")).is_known());
    assert!(!from_peer_id(&pid(b"S58B-x---")).is_known());
}

#[test]
fn ext_handshake_versions() {
    let cases: &[(&[u8], &str)] = &[
        ("µTorrent 3.5.4".as_bytes(), "µTorrent 3.5.4"),
        (b"\xb5Torrent 3.5.4", "µTorrent 3.5.4"),
        (b"qBittorrent/4.1.3", "qBittorrent 4.1.3"),
        (b"qBittorrent v4.1.3", "qBittorrent 4.1.3"),
        (b"libtorrent/2.1.1.0", "libtorrent 2.1.1"),
        (b"Transmission 4.0.0", "Transmission 4.0.0"),
        (b"Transmission 2.94", "Transmission 2.94"),
        (b"BitSpirit 3.6.0", "BitSpirit 3.6.0"),
        (b"Deluge 2.1.1 libtorrent/2.0.9", "Deluge 2.1.1"),
        (b"Vuze 5.7.6.0", "Vuze 5.7.6"),
        (b"Tixati 3.19", "Tixati 3.19"),
        (b"Some New Client", "Some New Client"),
    ];
    for (v, want) in cases {
        assert_eq!(
            from_ext_version(v).to_string(),
            *want,
            "{}",
            String::from_utf8_lossy(v)
        );
    }
    assert!(!from_ext_version(b"").is_known());
    assert!(!from_ext_version(b"4.1.3").is_known());
    assert!(!from_ext_version(b"bad\x01name").is_known());
}

#[test]
fn dht_versions() {
    assert_eq!(
        from_dht_version(b"LT\x02\x11").to_string(),
        "libtorrent 2.1.1"
    );
    assert_eq!(
        from_dht_version(b"LT\x01\x2f").to_string(),
        "libtorrent 1.2.15"
    );
    assert_eq!(
        from_dht_version(b"UT\x87\x5c").to_string(),
        "µTorrent 34652"
    );
    assert_eq!(
        from_dht_version(b"ZZ\x00\x01").to_string(),
        "Unknown(ZZ\\x00\\x01)"
    );
    assert_eq!(from_dht_version(b"LT").to_string(), "Unknown(LT)");
}

#[test]
fn combine_prefers_ext_and_flags_disagreement() {
    let same = combine(Some(&pid(b"-qB4130-")), Some(b"qBittorrent/4.1.3"));
    assert_eq!(same.client.to_string(), "qBittorrent 4.1.3");
    assert!(!same.disagree);

    let lt = combine(Some(&pid(b"-LT2110-")), Some(b"libtorrent/2.1.1.0"));
    assert!(!lt.disagree, "{lt:?}");

    // A µTorrent peer-id with a BitTorrent-branded v is one client family.
    let bt = combine(Some(&pid(b"-UT3540-")), Some("µTorrent 3.5.4".as_bytes()));
    assert!(!bt.disagree);

    // A spoofed peer-id: v names another client.
    let spoof = combine(Some(&pid(b"-UT3540-")), Some(b"Xunlei 0.0.1.2"));
    assert_eq!(spoof.client.to_string(), "Xunlei 0.0.1.2");
    assert!(spoof.disagree);

    // Same client, other version.
    let ver = combine(Some(&pid(b"-TR2940-")), Some(b"Transmission 3.00"));
    assert!(ver.disagree);
    assert_eq!(ver.client.to_string(), "Transmission 3.00");

    // No usable v: the peer-id answers.
    let only = combine(Some(&pid(b"-DE2110-")), Some(b""));
    assert_eq!(only.client.to_string(), "Deluge 2.1.1");
    assert!(!only.disagree);
    let none = combine(None, None);
    assert!(!none.client.is_known());
}

/// libtorrent's own prefix and user agent, as recorded by tests/data/record_dht.py.
#[test]
fn recorded_libtorrent_strings() {
    let prefix = include_str!("../../../../tests/data/dht/peer_id_prefix.txt").trim();
    assert_eq!(
        from_peer_id(&pid(prefix.as_bytes())).to_string(),
        "libtorrent 2.1.1"
    );
    let ua = include_str!("../../../../tests/data/dht/ext_handshake_v.txt").trim();
    assert_eq!(
        from_ext_version(ua.as_bytes()).to_string(),
        "libtorrent 2.1.1"
    );
}

proptest! {
    #[test]
    fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = from_peer_id(&bytes).to_string();
        let _ = from_ext_version(&bytes).to_string();
        let _ = from_dht_version(&bytes).to_string();
        let _ = combine(Some(&bytes), Some(&bytes));
    }

    #[test]
    fn azureus_shape_never_panics(code in "[ -~]{2}", ver in "[ -~]{4}", tail in proptest::collection::vec(any::<u8>(), 12)) {
        let mut id = format!("-{code}{ver}-").into_bytes();
        id.extend(tail);
        let c = from_peer_id(&id);
        let _ = c.to_string();
    }
}

proptest! {
    /// Every listed Azureus-style code with a numeric version is recognised under its name
    /// (Vuze/Azureus share one code), whatever the random tail holds.
    #[test]
    fn listed_codes_are_recognised(
        entry in proptest::sample::select(AZUREUS),
        ver in "[0-9]{4}",
        tail in proptest::collection::vec(any::<u8>(), 12),
    ) {
        let (code, name, _) = entry;
        let mut id = vec![b'-', code[0], code[1]];
        id.extend_from_slice(ver.as_bytes());
        id.push(b'-');
        id.extend(tail);
        let got = from_peer_id(&id);
        let got_name = got.name().map(str::to_string);
        prop_assert!(got.is_known(), "{:?}", got);
        if code == b"AZ" {
            prop_assert!(matches!(got_name.as_deref(), Some("Azureus" | "Vuze")));
        } else {
            prop_assert_eq!(got_name.as_deref(), Some(name));
        }
    }
}

use super::*;
use crate::tracker_http::Event;
use crate::tracker_udp::{AnnounceRequest, Request};

fn bt_handshake() -> Vec<u8> {
    let mut b = b"\x13BitTorrent protocol".to_vec();
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
    b.extend_from_slice(&[0xab; 20]);
    b.extend_from_slice(b"-lt2010-abcdefghijkl");
    b
}

#[test]
fn bittorrent_handshake_keeps_info_hash_and_peer_id() {
    let c = classify_stream(&bt_handshake());
    assert_eq!(c.protocol, Protocol::BitTorrent);
    assert_eq!(c.details.info_hash.as_deref(), Some(&*"ab".repeat(20)));
    assert_eq!(
        c.details.peer_id.as_deref(),
        Some(&*hex::encode(b"-lt2010-abcdefghijkl"))
    );
    // Cut after the info-hash: no peer-id, still BitTorrent.
    let c = classify_stream(&bt_handshake()[..48]);
    assert_eq!(c.protocol, Protocol::BitTorrent);
    assert!(c.details.info_hash.is_some() && c.details.peer_id.is_none());
}

#[test]
fn mse_is_random_looking_bytes_without_the_prefix() {
    // A real initiator's first bytes: its Diffie-Hellman public key, then random padding.
    let mut first = crate::mse::dh_public_key(&[0x5a; crate::mse::PRIVATE_KEY_LEN]).to_vec();
    first.extend_from_slice(&crate::mse::dh_public_key(&[0x17; crate::mse::PRIVATE_KEY_LEN])[..40]);
    assert_eq!(classify_stream(&first).protocol, Protocol::Mse);
    // Too short to tell, or plainly not random.
    assert_eq!(classify_stream(&first[..95]).protocol, Protocol::Other);
    assert_eq!(classify_stream(&[0u8; 200]).protocol, Protocol::Other);
    let text = "the quick brown fox jumps over the lazy dog ".repeat(5);
    assert_eq!(classify_stream(text.as_bytes()).protocol, Protocol::Other);
}

#[test]
fn http_keeps_method_path_and_host() {
    let c = classify_stream(
        b"GET /announce?info_hash=%ab HTTP/1.1\r\nUser-Agent: curl/8\r\nHost: 10.0.0.7:6969\r\n\r\n",
    );
    assert_eq!(c.protocol, Protocol::Http);
    assert_eq!(c.details.kind.as_deref(), Some("GET"));
    assert_eq!(c.details.path.as_deref(), Some("/announce?info_hash=%ab"));
    assert_eq!(c.details.host.as_deref(), Some("10.0.0.7:6969"));
    // A header after the blank line is body, not a header.
    let c = classify_stream(b"POST /x HTTP/1.0\r\n\r\nHost: no\r\n");
    assert_eq!((c.protocol, c.details.host), (Protocol::Http, None));
    assert_ne!(
        classify_stream(b"GET / SMTP/1.0\r\n").protocol,
        Protocol::Http
    );
    assert_ne!(
        classify_stream(b"GETX / HTTP/1.1\r\n").protocol,
        Protocol::Http
    );
}

#[test]
fn tls_client_hello_keeps_the_server_name() {
    // Recorded from Python's ssl module (OpenSSL 3) with server_hostname=tracker.example.org.
    let hello = include_bytes!("python_client_hello.bin");
    let c = classify_stream(hello);
    assert_eq!(c.protocol, Protocol::Tls);
    assert_eq!(c.details.host.as_deref(), Some("tracker.example.org"));
    // Cut before the extensions: still TLS, no name.
    let c = classify_stream(&hello[..60]);
    assert_eq!((c.protocol, c.details.host), (Protocol::Tls, None));
}

#[test]
fn gnutella_and_edonkey_handshakes() {
    let gnutella =
        b"GNUTELLA CONNECT/0.6\r\nUser-Agent: LimeWire/4.18.8\r\nX-Ultrapeer: False\r\n\r\n";
    assert_eq!(classify_stream(gnutella).protocol, Protocol::Gnutella);
    // eDonkey hello: 0xE3, length 0x4e (LE), opcode 0x01 (OP_HELLO), hash size 16, hash...
    let mut hello = vec![0xE3, 0x4e, 0, 0, 0, 0x01, 0x10];
    hello.extend_from_slice(&[0x11; 16]);
    hello.extend_from_slice(&[0x7f, 0, 0, 1, 0x36, 0x12, 0x04, 0, 0, 0]);
    assert_eq!(classify_stream(&hello).protocol, Protocol::Edonkey);
    // eMule extended marker, and one with an absurd length is not eDonkey.
    hello[0] = 0xC5;
    assert_eq!(classify_stream(&hello).protocol, Protocol::Edonkey);
    hello[4] = 0xff;
    assert_eq!(classify_stream(&hello).protocol, Protocol::Other);
    // Kad over UDP: marker 0xE4, opcode KADEMLIA2_BOOTSTRAP_REQ (0x01).
    assert_eq!(classify_datagram(&[0xE4, 0x01]).protocol, Protocol::Edonkey);
}

#[test]
fn krpc_keeps_the_query_and_its_target() {
    // BEP 5's own examples.
    let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
    let c = classify_datagram(ping);
    assert_eq!(c.protocol, Protocol::Krpc);
    assert_eq!(c.details.kind.as_deref(), Some("ping"));
    let find = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe";
    let c = classify_datagram(find);
    assert_eq!(c.details.kind.as_deref(), Some("find_node"));
    assert_eq!(
        c.details.target.as_deref(),
        Some(&*hex::encode(b"mnopqrstuvwxyz123456"))
    );
    let get_peers = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe";
    let c = classify_datagram(get_peers);
    assert_eq!(c.details.kind.as_deref(), Some("get_peers"));
    assert_eq!(
        c.details.info_hash.as_deref(),
        Some(&*hex::encode(b"mnopqrstuvwxyz123456"))
    );
    let response = b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re";
    assert_eq!(
        classify_datagram(response).details.kind.as_deref(),
        Some("response")
    );
    // Not bencode: not KRPC.
    assert_eq!(classify_datagram(b"dxyz").protocol, Protocol::Other);
}

#[test]
fn utp_header_type_and_connection_id() {
    let mut syn = Vec::new();
    utp::encode(
        &utp::Header {
            packet_type: utp::PacketType::Syn,
            conn_id: 4242,
            timestamp_us: 1,
            timestamp_diff_us: 0,
            wnd_size: 1 << 20,
            seq_nr: 1,
            ack_nr: 0,
        },
        None,
        &[],
        &mut syn,
    );
    let c = classify_datagram(&syn);
    assert_eq!(c.protocol, Protocol::Utp);
    assert_eq!(c.details.kind.as_deref(), Some("syn"));
    assert_eq!(c.details.connection_id, Some(4242));
}

#[test]
fn udp_tracker_connect_and_announce() {
    let connect = Request::Connect { transaction_id: 7 }.to_bytes();
    let c = classify_datagram(&connect);
    assert_eq!(c.protocol, Protocol::UdpTracker);
    assert_eq!(c.details.kind.as_deref(), Some("connect"));
    let announce = Request::Announce(AnnounceRequest {
        connection_id: 99,
        transaction_id: 8,
        info_hash: [0xcd; 20],
        peer_id: *b"-qB4650-000000000000",
        downloaded: 0,
        left: 10,
        uploaded: 0,
        event: Event::Started,
        ip: std::net::Ipv4Addr::UNSPECIFIED,
        key: 1,
        num_want: -1,
        port: 6881,
        url_data: Vec::new(),
    })
    .to_bytes();
    let c = classify_datagram(&announce);
    assert_eq!(c.details.kind.as_deref(), Some("announce"));
    assert_eq!(c.details.info_hash.as_deref(), Some(&*"cd".repeat(20)));
    // Action 0 without the magic is not a connect.
    let mut wrong = connect.clone();
    wrong[0] = 1;
    assert_ne!(classify_datagram(&wrong).protocol, Protocol::UdpTracker);
}

#[test]
fn unknown_bytes_are_other_with_a_bounded_prefix() {
    let junk: Vec<u8> = (0..200u8).map(|i| i % 7).collect();
    let c = classify_stream(&junk);
    assert_eq!(c.protocol, Protocol::Other);
    assert_eq!(
        c.details.first_bytes.as_ref().map(String::len),
        Some(2 * FIRST_BYTES)
    );
    assert_eq!(classify_stream(b"").details.first_bytes, None);
    assert_eq!(classify_datagram(b"\x01\x02").protocol, Protocol::Other);
    for p in Protocol::ALL {
        assert_eq!(Protocol::from_name(p.name()), Some(p));
    }
}

#[test]
fn no_prefix_of_any_kind_panics() {
    let samples: Vec<Vec<u8>> = vec![
        bt_handshake(),
        include_bytes!("python_client_hello.bin").to_vec(),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe".to_vec(),
        vec![0xE3, 5, 0, 0, 0, 1, 2, 3],
    ];
    for s in samples {
        for n in 0..=s.len() {
            let _ = classify_stream(&s[..n]);
            let _ = classify_datagram(&s[..n]);
        }
    }
}

#[test]
fn the_cheap_family_agrees_with_the_classifier_on_well_formed_datagrams() {
    let mut syn = Vec::new();
    utp::encode(
        &utp::Header {
            packet_type: utp::PacketType::Syn,
            conn_id: 1,
            timestamp_us: 1,
            timestamp_diff_us: 0,
            wnd_size: 1,
            seq_nr: 1,
            ack_nr: 0,
        },
        None,
        &[],
        &mut syn,
    );
    let datagrams: Vec<Vec<u8>> = vec![
        b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".to_vec(),
        Request::Connect { transaction_id: 7 }.to_bytes(),
        syn,
        vec![0xE4, 0x01],
        b"hello".to_vec(),
    ];
    for d in datagrams {
        assert_eq!(datagram_family(&d), classify_datagram(&d).protocol, "{d:?}");
    }
}

use super::*;
use crate::{hex, http};
use proptest::prelude::*;

/// Facts written by tests/data/record_tracker.py next to the recorded requests.
fn meta(key: &str) -> String {
    include_str!("../../../../tests/data/tracker/libtorrent_meta.txt")
        .lines()
        .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("libtorrent_meta.txt has no {key}"))
        .to_string()
}

fn lt_info_hash() -> [u8; 20] {
    hex::decode_array(&meta("info_hash")).unwrap()
}

fn decode_lt_request(raw: &[u8]) -> (http::RequestHead, DecodedAnnounce) {
    let (head, used) = http::parse_request_head(raw, http::ResponseLimits::DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(used, raw.len());
    let (path, query) = head.target.split_once('?').unwrap();
    assert_eq!(path, "/announce");
    let decoded = parse_announce_query(query).unwrap();
    (head, decoded)
}

#[test]
fn percent_encoding_keeps_only_unreserved_literal() {
    let all: Vec<u8> = (0..=255).collect();
    let enc = percent_encode(&all);
    for b in 0..=255u8 {
        let literal = b.is_ascii_alphanumeric() || b"-._~".contains(&b);
        let escaped = format!("%{b:02X}");
        assert_eq!(enc.contains(&escaped), !literal, "byte {b:#04x}");
    }
    assert!(!enc
        .bytes()
        .any(|c| c.is_ascii_lowercase() && enc.contains(&format!("%{}", c as char))));
    assert_eq!(percent_encode(b"a b/~"), "a%20b%2F~");
    assert_eq!(percent_decode(&enc).unwrap(), all);
    assert_eq!(percent_decode("%e8%84x*)").unwrap(), b"\xe8\x84x*)");
    assert_eq!(percent_decode("%4"), None);
    assert_eq!(percent_decode("%zz"), None);
}

#[test]
fn url_parsing() {
    let u = parse_http_url("http://Tracker.Example:6969/announce?passkey=ab#frag").unwrap();
    assert_eq!(
        u,
        HttpTrackerUrl {
            tls: false,
            host: "tracker.example".into(),
            port: 6969,
            path_and_query: "/announce?passkey=ab".into()
        }
    );
    // https: TLS flag, default port 443, scheme case-insensitive.
    let u = parse_http_url("HTTPS://torrent.ubuntu.com/announce").unwrap();
    assert_eq!(
        u,
        HttpTrackerUrl {
            tls: true,
            host: "torrent.ubuntu.com".into(),
            port: 443,
            path_and_query: "/announce".into()
        }
    );
    let u = parse_http_url("https://[::1]:8443?x=1").unwrap();
    assert_eq!(
        (u.tls, u.host.as_str(), u.port, u.path_and_query.as_str()),
        (true, "::1", 8443, "/?x=1")
    );
    assert!(!parse_http_url("http://x/").unwrap().tls);
    let u = parse_http_url("HTTP://[2001:db8::1]:8080/a").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 8080));
    assert_eq!(u.ip(), Some("2001:db8::1".parse().unwrap()));
    let u = parse_http_url("http://[::1]/announce").unwrap();
    assert_eq!((u.host.as_str(), u.port), ("::1", 80));
    let u = parse_http_url("http://127.0.0.1?x=1").unwrap();
    assert_eq!(u.path_and_query, "/?x=1");
    assert!(matches!(
        parse_http_url("httpx://t.example/announce"),
        Err(UrlError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        parse_http_url("https://u:p@h/"),
        Err(UrlError::UserInfo(_))
    ));
    assert!(matches!(
        parse_http_url("udp://t:1/"),
        Err(UrlError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        parse_http_url("http://:80/"),
        Err(UrlError::MissingHost(_))
    ));
    assert!(matches!(
        parse_http_url("http://h:99999/"),
        Err(UrlError::InvalidPort(_))
    ));
    assert!(matches!(
        parse_http_url("http://h:0/"),
        Err(UrlError::InvalidPort(_))
    ));
    assert!(matches!(
        parse_http_url("http://[::1/"),
        Err(UrlError::InvalidHost(_))
    ));
    assert!(matches!(
        parse_http_url("http://[zz]:1/"),
        Err(UrlError::InvalidHost(_))
    ));
    assert!(matches!(
        parse_http_url("http://u:p@h/"),
        Err(UrlError::UserInfo(_))
    ));
    assert!(matches!(
        parse_http_url("http://h/a b"),
        Err(UrlError::InvalidCharacters(_))
    ));
}

#[test]
fn redirects() {
    let cur = parse_http_url("http://[::1]:6969/announce?a=1").unwrap();
    let rel = redirect_target(&cur, " /other?b=2#x").unwrap();
    assert_eq!(
        (rel.host.as_str(), rel.port, rel.path_and_query.as_str()),
        ("::1", 6969, "/other?b=2")
    );
    assert!(!rel.tls);
    let abs = redirect_target(&cur, "http://t2.example/announce").unwrap();
    assert_eq!((abs.host.as_str(), abs.port), ("t2.example", 80));
    // Upgrading to https is fine; a relative redirect keeps https; downgrading is refused.
    let up = redirect_target(&cur, "https://t2.example/").unwrap();
    assert_eq!(
        (up.tls, up.host.as_str(), up.port),
        (true, "t2.example", 443)
    );
    let rel_tls = redirect_target(&up, "/announce?x=1").unwrap();
    assert_eq!(
        (rel_tls.tls, rel_tls.host.as_str(), rel_tls.port),
        (true, "t2.example", 443)
    );
    assert!(matches!(
        redirect_target(&up, "http://t2.example/announce"),
        Err(UrlError::InsecureRedirect(_))
    ));
    assert!(
        redirect_target(&up, "https://t3.example:8443/a")
            .unwrap()
            .tls
    );
    assert!(matches!(
        redirect_target(&cur, "//t2.example/"),
        Err(UrlError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        redirect_target(&cur, "/a b"),
        Err(UrlError::InvalidCharacters(_))
    ));
}

#[test]
fn announce_url_appends_to_existing_query() {
    let mut p = AnnounceParams::new([0xab; 20], *b"-SW0100-abcdefghij~.", 6881);
    p.left = 100;
    p.event = Event::Started;
    p.numwant = Some(50);
    p.key = Some(0x0012_abcd);
    p.ipv6 = Some("2001:db8::1".parse().unwrap());
    p.tracker_id = Some(b"t 1".to_vec());
    let url = announce_url("http://t.example/announce?passkey=x", &p).unwrap();
    let ih = "%AB".repeat(20);
    assert_eq!(
        url,
        format!(
            "http://t.example/announce?passkey=x&info_hash={ih}&peer_id=-SW0100-abcdefghij~.&port=6881&uploaded=0&downloaded=0&left=100&event=started&compact=1&numwant=50&key=0012ABCD&ipv6=2001%3Adb8%3A%3A1&trackerid=t%201"
        )
    );
    let plain = announce_url("http://t.example/announce", &p).unwrap();
    assert!(plain.starts_with("http://t.example/announce?info_hash="));
    let trailing = announce_url("http://t.example/announce?", &p).unwrap();
    assert!(trailing.starts_with("http://t.example/announce?info_hash="));
    let tls = announce_url("https://t.example/announce?passkey=x", &p).unwrap();
    assert!(tls.starts_with("https://t.example/announce?passkey=x&info_hash="));
    assert!(matches!(
        announce_url("wss://t.example/announce", &p),
        Err(UrlError::UnsupportedScheme { .. })
    ));
}

/// libtorrent 2.1.1's own started announce (recorded by tests/data/record_tracker.py).
#[test]
fn golden_libtorrent_http_announce_started() {
    let raw = include_bytes!("../../../../tests/data/tracker/libtorrent_http_announce_started.txt");
    let (head, d) = decode_lt_request(raw);
    assert_eq!(head.method, "GET");
    assert_eq!(
        head.header("host"),
        Some(format!("127.0.0.1:{}", meta("tracker_port")).as_str())
    );
    assert_eq!(head.header("user-agent"), Some("libtorrent/2.1.1.0"));
    let p = &d.params;
    assert_eq!(p.info_hash, lt_info_hash());
    assert!(p.peer_id.starts_with(meta("peer_id_prefix").as_bytes()));
    assert_eq!(p.port.to_string(), meta("listen_port"));
    assert_eq!(p.left.to_string(), meta("total_size"));
    assert_eq!((p.uploaded, p.downloaded), (0, 0));
    assert_eq!(p.event, Event::Started);
    assert_eq!(p.numwant, Some(200));
    assert!(p.key.is_some());
    assert_eq!(d.compact, Some(true));
    // The tracker URL's own query comes first, then libtorrent's extras we do not interpret.
    let other: Vec<&str> = d.other.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        other,
        ["x", "corrupt", "no_peer_id", "supportcrypto", "redundant"]
    );
    assert_eq!(d.other[0].1, b"1");

    // Our builder, given the same values, produces a query that decodes to the same
    // announce, keeps the tracker's `x=1`, and uses the same parameter names.
    let base = format!("http://127.0.0.1:{}/announce?x=1", meta("tracker_port"));
    let ours = announce_url(&base, p).unwrap();
    let target = parse_http_url(&ours).unwrap();
    let (_, our_query) = target.path_and_query.split_once('?').unwrap();
    let again = parse_announce_query(our_query).unwrap();
    assert_eq!(&again.params, p);
    assert_eq!(again.compact, Some(true));
    assert_eq!(again.other, vec![("x".to_string(), b"1".to_vec())]);
    let (_, lt_query) = head.target.split_once('?').unwrap();
    let names = |q: &str| {
        let mut v: Vec<String> = parse_query(q)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| {
                !["corrupt", "no_peer_id", "supportcrypto", "redundant"].contains(&n.as_str())
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(lt_query), names(our_query));
    // And the request bytes we send carry the same head fields libtorrent's does.
    let req =
        http::build_get_request(&target.host, target.port, &target.path_and_query, "x").unwrap();
    let (our_head, _) = http::parse_request_head(&req, http::ResponseLimits::DEFAULT)
        .unwrap()
        .unwrap();
    assert_eq!(our_head.header("host"), head.header("host"));
    assert_eq!(our_head.header("connection"), head.header("connection"));
}

#[test]
fn golden_libtorrent_http_announce_stopped() {
    let raw = include_bytes!("../../../../tests/data/tracker/libtorrent_http_announce_stopped.txt");
    let (_, d) = decode_lt_request(raw);
    assert_eq!(d.params.event, Event::Stopped);
    assert_eq!(d.params.numwant, Some(0));
    assert_eq!(d.params.info_hash, lt_info_hash());
    let started =
        include_bytes!("../../../../tests/data/tracker/libtorrent_http_announce_started.txt");
    let (_, s) = decode_lt_request(started);
    assert_eq!(
        d.params.key, s.params.key,
        "same session key for both announces"
    );
    assert_eq!(d.params.peer_id, s.params.peer_id);
}

#[test]
fn announce_query_errors_name_the_field() {
    let ok = AnnounceParams::new([1; 20], [2; 20], 1).query();
    assert!(parse_announce_query(&ok).is_ok());
    let e = parse_announce_query(&ok.replace("port=1", "port=70000")).unwrap_err();
    assert!(e.to_string().contains("`port`"), "{e}");
    let e = parse_announce_query(&ok.replace("&left=0", "")).unwrap_err();
    assert_eq!(e, QueryError::Missing("left"));
    let e = parse_announce_query(&ok.replace("info_hash=%01", "info_hash=")).unwrap_err();
    assert!(
        e.to_string().contains("info_hash") && e.to_string().contains("19 bytes"),
        "{e}"
    );
    let e = parse_announce_query(&format!("{ok}&event=bogus")).unwrap_err();
    assert!(e.to_string().contains("`event`"), "{e}");
}

#[test]
fn compact_response() {
    // BEP 23: 4 address bytes then 2 port bytes, network order.
    let body = b"d8:completei3e10:downloadedi17e10:incompletei2e8:intervali1800e12:min intervali900e5:peers12:\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x02\x00\x50e";
    let r = parse_announce_response(body).unwrap();
    assert_eq!(r.interval, Some(1800));
    assert_eq!(r.min_interval, Some(900));
    assert_eq!(
        (r.complete, r.incomplete, r.downloaded),
        (Some(3), Some(2), Some(17))
    );
    assert_eq!(
        r.peers,
        vec![
            "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
            "192.168.1.2:80".parse().unwrap()
        ]
    );
}

#[test]
fn dictionary_peers_and_peers6_and_external_ip() {
    let mut body = b"d11:external ip4:\xcb\x00\x71\x07".to_vec();
    body.extend_from_slice(b"8:intervali60e5:peersld2:ip8:10.1.2.37:peer id20:-qB4250-aaaaaaaaaaaa4:porti51413eed2:ip11:2001:db8::54:porti1eed2:ip12:peer.example4:porti7eee");
    body.extend_from_slice(
        b"6:peers618:\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09\x1a\xe1",
    );
    body.extend_from_slice(b"10:tracker id3:abc15:warning message4:slowe");
    let r = parse_announce_response(&body).unwrap();
    let p1: SocketAddr = "10.1.2.3:51413".parse().unwrap();
    assert_eq!(
        r.peers,
        vec![
            p1,
            "[2001:db8::5]:1".parse().unwrap(),
            "[2001:db8::9]:6881".parse().unwrap()
        ]
    );
    assert_eq!(r.peer_ids, vec![(p1, *b"-qB4250-aaaaaaaaaaaa")]);
    assert_eq!(r.peer_hosts, vec![("peer.example".to_string(), 7)]);
    assert_eq!(r.external_ip, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(r.tracker_id.as_deref(), Some(&b"abc"[..]));
    assert_eq!(r.warning.as_deref(), Some("slow"));
}

#[test]
fn failure_reason() {
    let e = parse_announce_response(b"d14:failure reason17:torrent not founde").unwrap_err();
    assert_eq!(
        e,
        TrackerError::Failure(TrackerFailure {
            reason: "torrent not found".into(),
            retry_in_minutes: None,
            retry_never: false
        })
    );
    let f = TrackerFailure {
        reason: "go away".into(),
        retry_in_minutes: None,
        retry_never: true,
    };
    assert_eq!(
        parse_announce_response(&f.encode()).unwrap_err(),
        TrackerError::Failure(f.clone())
    );
    assert_eq!(
        parse_scrape_response(&f.encode()).unwrap_err(),
        TrackerError::Failure(f)
    );
}

#[test]
fn out_of_range_intervals_are_clamped_not_fatal() {
    // A tracker that sends a silly interval still sent peers: keep them, let the scheduler
    // ignore (0) or cap (huge) the interval.
    let r = parse_announce_response(
        b"d8:intervali-5e12:min intervali4294967296e5:peers6:\x7f\x00\x00\x01\x1a\xe1e",
    )
    .unwrap();
    assert_eq!(r.interval, Some(0));
    assert_eq!(r.min_interval, Some(u32::MAX));
    assert_eq!(r.peers.len(), 1);
}

#[test]
fn response_errors_name_the_field() {
    let cases: [(&[u8], &str); 6] = [
        (b"d8:interval3:abce", "`interval`"),
        (b"d12:min interval3:abce", "`min interval`"),
        (b"d5:peers5:abcdee", "`peers`"),
        (b"d6:peers67:abcdefge", "`peers6`"),
        (b"d11:external ip3:abce", "`external ip`"),
        (b"d5:peersld2:ip3:1.24:porti99999eeee", "`port`"),
    ];
    for (body, field) in cases {
        let e = parse_announce_response(body).unwrap_err().to_string();
        assert!(e.contains(field), "{e} should name {field}");
    }
    assert!(matches!(
        parse_announce_response(b"d8:interval"),
        Err(TrackerError::Bencode(_))
    ));
    assert!(matches!(
        parse_announce_response(b"le"),
        Err(TrackerError::Field(_))
    ));
}

#[test]
fn scrape_url_examples() {
    // The long-standing examples (BitTorrent spec wiki, repeated by many clients' tests).
    let cases = [
        (
            "http://example.com/announce",
            Some("http://example.com/scrape"),
        ),
        (
            "http://example.com/x/announce",
            Some("http://example.com/x/scrape"),
        ),
        (
            "http://example.com/announce.php",
            Some("http://example.com/scrape.php"),
        ),
        ("http://example.com/a", None),
        (
            "http://example.com/announce?x2%0644",
            Some("http://example.com/scrape?x2%0644"),
        ),
        ("http://example.com/announce?x=2/4", None),
        ("http://example.com/x%064announce", None),
        // Ours: no path at all, and a host that merely contains "announce".
        ("http://announce.example", None),
        (
            "http://example.com:80/announce?passkey=1#f",
            Some("http://example.com:80/scrape?passkey=1"),
        ),
        // The scheme is kept: an https tracker is scraped over https.
        (
            "https://torrent.ubuntu.com/announce",
            Some("https://torrent.ubuntu.com/scrape"),
        ),
        (
            "https://127.0.0.1:8443/x/announce?k=1",
            Some("https://127.0.0.1:8443/x/scrape?k=1"),
        ),
    ];
    for (announce, scrape) in cases {
        assert_eq!(scrape_url(announce).as_deref(), scrape, "{announce}");
    }
    let url = scrape_request_url(
        "http://example.com/scrape.php?k=v",
        &[[b'a'; 20], [0xff; 20]],
    );
    assert_eq!(
        url,
        format!(
            "http://example.com/scrape.php?k=v&info_hash={}&info_hash={}",
            "a".repeat(20),
            "%FF".repeat(20)
        )
    );
    let (_, q) = url.split_once('?').unwrap();
    assert_eq!(parse_scrape_query(q).unwrap(), vec![[b'a'; 20], [0xff; 20]]);
}

#[test]
fn scrape_response_bep48_example() {
    // BEP 48's example, with the dictionary terminators that the BEP's printed text
    // drops (as printed it is not valid bencode; we check that it is rejected).
    let printed = b"d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei11e10:downloadedi13772e10:incompletei19e\n20:yyyyyyyyyyyyyyyyyyyyd8:completei21e10:downloadedi206e10:incompletei20eee";
    assert!(matches!(
        parse_scrape_response(printed),
        Err(TrackerError::Bencode(_))
    ));
    let fixed = b"d5:filesd20:xxxxxxxxxxxxxxxxxxxxd8:completei11e10:downloadedi13772e10:incompletei19ee20:yyyyyyyyyyyyyyyyyyyyd8:completei21e10:downloadedi206e10:incompletei20eeee";
    let r = parse_scrape_response(fixed).unwrap();
    assert_eq!(
        r.get(&[b'x'; 20])
            .map(|e| (e.complete, e.downloaded, e.incomplete)),
        Some((11, 13772, 19))
    );
    assert_eq!(
        r.get(&[b'y'; 20])
            .map(|e| (e.complete, e.downloaded, e.incomplete)),
        Some((21, 206, 20))
    );
    assert_eq!(r.min_request_interval, None);
}

#[test]
fn scrape_response_flags_name_and_errors() {
    let body = b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei1e10:downloadedi2e10:incompletei3e4:name3:fooee5:flagsd20:min_request_intervali900eee";
    let r = parse_scrape_response(body).unwrap();
    assert_eq!(r.files[0].name.as_deref(), Some("foo"));
    assert_eq!(r.min_request_interval, Some(900));
    let r = parse_scrape_response(b"d5:filesd3:abcd8:completei1eeee").unwrap();
    assert_eq!((r.files.len(), r.skipped_keys), (0, 1));
    let e = parse_scrape_response(b"d5:filesd20:aaaaaaaaaaaaaaaaaaaai1eee").unwrap_err();
    assert!(e.to_string().contains("`files entry`"), "{e}");
    let e =
        parse_scrape_response(b"d5:filesd20:aaaaaaaaaaaaaaaaaaaad8:completei1e10:incompletei3eeee")
            .unwrap_err();
    assert_eq!(
        e,
        TrackerError::Field(FieldError::Missing("downloaded".into()))
    );
    let e = parse_scrape_response(b"de").unwrap_err();
    assert_eq!(e, TrackerError::Field(FieldError::Missing("files".into())));
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(IpAddr::from(ip), p)),
    ]
}

fn arb_params() -> impl Strategy<Value = AnnounceParams> {
    (
        (
            any::<[u8; 20]>(),
            any::<[u8; 20]>(),
            any::<u16>(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        ),
        (
            0u32..4,
            proptest::option::of(any::<u32>()),
            proptest::option::of(any::<u32>()),
            proptest::option::of("[a-z0-9.:]{1,20}"),
            proptest::option::of(any::<[u8; 4]>()),
            proptest::option::of(any::<[u8; 16]>()),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..30)),
        ),
    )
        .prop_map(
            |((ih, pid, port, up, down, left), (ev, numwant, key, ip, v4, v6, tid))| {
                AnnounceParams {
                    info_hash: ih,
                    peer_id: pid,
                    port,
                    uploaded: up,
                    downloaded: down,
                    left,
                    event: Event::from_udp(ev).unwrap_or_default(),
                    numwant,
                    key,
                    ip,
                    ipv4: v4.map(Ipv4Addr::from),
                    ipv6: v6.map(Ipv6Addr::from),
                    tracker_id: tid,
                }
            },
        )
}

proptest! {
    #[test]
    fn percent_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        prop_assert_eq!(percent_decode(&percent_encode(&bytes)).unwrap(), bytes);
    }

    #[test]
    fn announce_query_round_trip(p in arb_params()) {
        let url = announce_url("http://t.example:1/announce?a=b", &p).unwrap();
        let parsed = parse_http_url(&url).unwrap();
        let (_, q) = parsed.path_and_query.split_once('?').unwrap();
        let d = parse_announce_query(q).unwrap();
        prop_assert_eq!(d.params, p);
        prop_assert_eq!(d.other, vec![("a".to_string(), b"b".to_vec())]);
    }

    #[test]
    fn announce_response_round_trip(
        peers in proptest::collection::vec(arb_addr(), 0..20),
        interval in proptest::option::of(any::<u32>()),
        min_interval in proptest::option::of(any::<u32>()),
        counts in (proptest::option::of(0u64..1 << 40), proptest::option::of(0u64..1 << 40), proptest::option::of(0u64..1 << 40)),
        tracker_id in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
        warning in proptest::option::of("[ -~]{0,20}"),
        external_ip in proptest::option::of(arb_addr().prop_map(|a| a.ip())),
    ) {
        let r = AnnounceResponse {
            interval, min_interval, tracker_id, warning, external_ip,
            complete: counts.0, incomplete: counts.1, downloaded: counts.2,
            peers: peers.clone(), ..Default::default()
        };
        let back = parse_announce_response(&r.encode()).unwrap();
        // Encoding groups IPv4 before IPv6.
        let mut expected: Vec<SocketAddr> = peers.iter().filter(|a| a.is_ipv4()).copied().collect();
        expected.extend(peers.iter().filter(|a| a.is_ipv6()));
        prop_assert_eq!(back.peers.clone(), expected.clone());
        prop_assert_eq!(back, AnnounceResponse { peers: expected, ..r });
    }

    #[test]
    fn scrape_response_round_trip(
        entries in proptest::collection::btree_map(any::<[u8; 20]>(), (0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 40, proptest::option::of("[a-z]{0,8}")), 0..10),
        interval in proptest::option::of(any::<u32>()),
    ) {
        let r = ScrapeResponse {
            files: entries.into_iter().map(|(info_hash, (complete, downloaded, incomplete, name))| ScrapeEntry { info_hash, complete, downloaded, incomplete, name }).collect(),
            min_request_interval: interval,
            skipped_keys: 0,
        };
        prop_assert_eq!(parse_scrape_response(&r.encode()).unwrap(), r);
    }

    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_announce_response(&data);
        let _ = parse_scrape_response(&data);
        let s = String::from_utf8_lossy(&data);
        let _ = parse_announce_query(&s);
        let _ = parse_scrape_query(&s);
        let _ = parse_http_url(&s);
        let _ = scrape_url(&s);
        let _ = percent_decode(&s);
    }

    #[test]
    fn decoders_never_panic_on_response_like_input(
        parts in proptest::collection::vec(prop_oneof![
            Just(&b"d"[..]), Just(&b"e"[..]), Just(&b"l"[..]), Just(&b"i5e"[..]), Just(&b"i-1e"[..]),
            Just(&b"5:peers"[..]), Just(&b"6:peers6"[..]), Just(&b"2:ip"[..]), Just(&b"4:port"[..]),
            Just(&b"6:abcdef"[..]), Just(&b"8:interval"[..]), Just(&b"5:files"[..]), Just(&b"20:aaaaaaaaaaaaaaaaaaaa"[..]),
            Just(&b"8:complete"[..]), Just(&b"11:external ip"[..]), Just(&b"5:flags"[..]), Just(&b"9:127.0.0.1"[..]),
        ], 0..30)
    ) {
        let data = parts.concat();
        let _ = parse_announce_response(&data);
        let _ = parse_scrape_response(&data);
    }

    #[test]
    fn url_parsing_never_panics(s in "(https?|udp|HTTP)://[\\[\\]a-z0-9:.@%/?#&=]{0,40}") {
        let _ = parse_http_url(&s);
        let _ = scrape_url(&s);
    }
}

// Raw HTTP responses (head and body) of a real HTTP tracker, bittorrent-tracker 11.2.3 (npm,
// WebTorrent's server), recorded by tests/data/record_http_tracker.mjs: peer A (seeder, port
// 6881) and peer B (leecher, port 6882) announce for hash 01..14; B later completes.

const WT_INFO_HASH: [u8; 20] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
];

fn wt_body(raw: &[u8]) -> Vec<u8> {
    // Fed in small pieces, as a socket would deliver it.
    let mut reader = http::ResponseReader::new(http::ResponseLimits::DEFAULT);
    let mut done = false;
    for chunk in raw.chunks(7) {
        done = reader.feed(chunk).unwrap() == http::Progress::Done;
    }
    assert!(
        done,
        "Content-Length framing ends the response without a close"
    );
    let resp = reader.into_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    resp.body
}

#[test]
fn golden_webtorrent_announces() {
    let first = parse_announce_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_announce_first.bin"
    )))
    .unwrap();
    assert_eq!(first.interval, Some(600));
    assert_eq!((first.complete, first.incomplete), (Some(1), Some(0)));
    // This tracker lists the announcing peer itself.
    let a: SocketAddr = "127.0.0.1:6881".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:6882".parse().unwrap();
    assert_eq!(first.peers, vec![a]);

    let compact = parse_announce_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_announce_compact.bin"
    )))
    .unwrap();
    assert_eq!((compact.complete, compact.incomplete), (Some(1), Some(1)));
    let mut peers = compact.peers.clone();
    peers.sort();
    assert_eq!(peers, vec![a, b]);
    assert!(compact.peer_ids.is_empty());

    let dict = parse_announce_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_announce_dict.bin"
    )))
    .unwrap();
    let mut ids = dict.peer_ids.clone();
    ids.sort();
    assert_eq!(
        ids,
        vec![(a, *b"-SW0100-AAAAAAAAAAAA"), (b, *b"-SW0100-BBBBBBBBBBBB")]
    );
    assert_eq!(dict.peers.len(), 2);

    let v6 = parse_announce_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_announce_v6.bin"
    )))
    .unwrap();
    let mut peers = v6.peers.clone();
    peers.sort();
    assert_eq!(
        peers,
        vec![
            "[::1]:6881".parse::<SocketAddr>().unwrap(),
            "[::1]:6882".parse().unwrap()
        ]
    );
}

#[test]
fn golden_webtorrent_failure_and_scrape() {
    let e = parse_announce_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_failure.bin"
    )))
    .unwrap_err();
    assert!(
        matches!(&e, TrackerError::Failure(f) if f.reason == "invalid info_hash"),
        "{e:?}"
    );

    let r = parse_scrape_response(&wt_body(include_bytes!(
        "../../../../tests/data/tracker/webtorrent_http_scrape.bin"
    )))
    .unwrap();
    let e = r.get(&WT_INFO_HASH).unwrap();
    // Both peers complete; this tracker reports `downloaded` as the number of seeders.
    assert_eq!((e.complete, e.downloaded, e.incomplete), (2, 2, 0));
    assert_eq!(r.min_request_interval, Some(600));
    // The unknown hash (20 bytes of 0xee) comes back UTF-8-mangled to 40 bytes: skipped.
    assert_eq!((r.files.len(), r.skipped_keys), (1, 1));
}

// Raw HTTP responses of aquatic_http 0.9.0 (crates.io), plain HTTP, recorded by
// tests/data/record_aquatic_http.py with the same two-peer script as above.

fn aquatic_body(raw: &[u8]) -> Vec<u8> {
    let mut reader = http::ResponseReader::new(http::ResponseLimits::DEFAULT);
    // Whole at once, then check that a byte-at-a-time feed agrees.
    assert_eq!(reader.feed(raw).unwrap(), http::Progress::Done);
    let resp = reader.into_response().unwrap();
    let mut slow = http::ResponseReader::new(http::ResponseLimits::DEFAULT);
    for b in raw {
        slow.feed(std::slice::from_ref(b)).unwrap();
    }
    assert_eq!(slow.into_response().as_ref(), Some(&resp));
    assert_eq!(resp.status, 200);
    // aquatic pads the Content-Length value with spaces and counts a trailing CRLF in it.
    assert!(resp.header("content-length").is_some());
    assert!(resp.body.ends_with(b"e\r\n"));
    resp.body
}

#[test]
fn golden_aquatic_http() {
    let first = parse_announce_response(&aquatic_body(include_bytes!(
        "../../../../tests/data/tracker/aquatic_http_announce_first.bin"
    )))
    .unwrap();
    assert_eq!(first.interval, Some(120));
    assert_eq!((first.complete, first.incomplete), (Some(0), Some(0)));
    assert!(first.peers.is_empty());
    // aquatic counts the swarm before adding the announcing peer and does not list it.
    let second = parse_announce_response(&aquatic_body(include_bytes!(
        "../../../../tests/data/tracker/aquatic_http_announce_second.bin"
    )))
    .unwrap();
    assert_eq!((second.complete, second.incomplete), (Some(1), Some(0)));
    assert_eq!(
        second.peers,
        vec!["127.0.0.1:6881".parse::<SocketAddr>().unwrap()]
    );
    let v6 = parse_announce_response(&aquatic_body(include_bytes!(
        "../../../../tests/data/tracker/aquatic_http_announce_v6.bin"
    )))
    .unwrap();
    assert_eq!(v6.peers, vec!["[::1]:6881".parse::<SocketAddr>().unwrap()]);

    let scrape = parse_scrape_response(&aquatic_body(include_bytes!(
        "../../../../tests/data/tracker/aquatic_http_scrape.bin"
    )))
    .unwrap();
    let e = scrape.get(&WT_INFO_HASH).unwrap();
    // Both complete after B's "completed"; aquatic does not count downloads.
    assert_eq!((e.complete, e.downloaded, e.incomplete), (2, 0, 0));
    // The unknown hash comes back as a zero entry under its own (intact) key.
    let unknown = scrape.get(&[0xee; 20]).unwrap();
    assert_eq!(
        (unknown.complete, unknown.downloaded, unknown.incomplete),
        (0, 0, 0)
    );
    assert_eq!(scrape.skipped_keys, 0);
    assert!(
        include_str!("../../../../tests/data/tracker/aquatic_http_meta.txt")
            .contains("short_info_hash_response=none")
    );
}

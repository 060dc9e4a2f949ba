//! swarmscan against a real HTTPS tracker on loopback: aquatic_http 0.9.0 from crates.io with
//! TLS enabled (path in env `SWARMSCAN_AQUATIC_HTTP`; scripts/test installs it), serving a
//! certificate for 127.0.0.1/localhost issued by a CA this test makes (rcgen) at run time.
//!
//! * A peer announces to the tracker over HTTPS (Python's urllib, verifying the tracker
//!   against the test CA). `swarmscan run --set 'tracker.ca_files=["ca.pem"]'` with a .torrent
//!   whose announce URL is `https://127.0.0.1:PORT/announce` must learn that peer from the
//!   tracker (source tracker_http), record the announces under the URL as given with no error,
//!   and scrape the tracker over HTTPS (a scrape row with the seeder counted).
//! * Without the CA file, the certificate is not trusted: every announce is recorded with
//!   "tls: invalid peer certificate: UnknownIssuer", no peer is learnt, and the scan ends
//!   normally.
//! * A CA file that does not exist stops `swarmscan run` at startup with exit code 2 and a
//!   message naming the key and the file.
//!
//! Every child process is killed when the test ends ([`ChildGuard`]); every wait is bounded.
//! Only 127.0.0.1 is used. SWARMSCAN_KEEP_TEST_DIR=1 keeps the working directory (logs,
//! certificates, database).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use swarmscan::proto::bencode::OwnedValue;
use swarmscan::proto::hex;
use swarmscan::proto::metainfo::Metainfo;

mod common;
use common::process::{free_tcp_port, read_to_string_lossy, ChildGuard};

/// How long each scan runs: the first announce is immediate, the first scrape after 5 s.
const SCAN_SECS: u64 = 10;

fn aquatic_http() -> PathBuf {
    let path = std::env::var_os("SWARMSCAN_AQUATIC_HTTP").map(PathBuf::from);
    match path {
        Some(p) if p.is_file() => p,
        other => panic!(
            "this test needs the aquatic_http tracker binary in env SWARMSCAN_AQUATIC_HTTP (got {other:?}). \
             Run scripts/test (it runs `cargo install aquatic_http --version 0.9.0 --root ~/.cache/swarmscan/tools`) \
             or set SWARMSCAN_AQUATIC_HTTP=/path/to/aquatic_http."
        ),
    }
}

/// Any Python 3 with the standard library's ssl module (the libtorrent venv's, if set).
fn python() -> String {
    std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// A test directory, kept with SWARMSCAN_KEEP_TEST_DIR=1.
fn test_dir(prefix: &str) -> tempfile::TempDir {
    let mut tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    tmp.disable_cleanup(std::env::var_os("SWARMSCAN_KEEP_TEST_DIR").is_some());
    eprintln!("https tracker: working in {}", tmp.path().display());
    tmp
}

/// Writes `ca.pem` (a test CA) and `server.pem` / `server.key` (a certificate for 127.0.0.1
/// and localhost issued by it) into `dir`.
fn make_certificates(dir: &Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swarmscan test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    server_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "swarmscan test tracker");
    server_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
}

/// Starts aquatic_http with TLS on 127.0.0.1:`port` only and waits until it accepts
/// connections.
fn start_tracker(dir: &Path, port: u16) -> ChildGuard {
    let config = dir.join("aquatic_http.toml");
    // Only the keys that matter; everything else keeps aquatic's defaults (`aquatic_http -p`
    // prints them). The short interval lets swarmscan announce again within the scan.
    std::fs::write(
        &config,
        format!(
            "socket_workers = 1\nswarm_workers = 1\nlog_level = \"warn\"\n\
             [network]\naddress = \"127.0.0.1:{port}\"\nonly_ipv6 = false\n\
             enable_tls = true\ntls_certificate_path = {:?}\ntls_private_key_path = {:?}\n\
             [protocol]\npeer_announce_interval = 5\n",
            dir.join("server.pem"),
            dir.join("server.key"),
        ),
    )
    .unwrap();
    let log_path = dir.join("aquatic_http.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut tracker = ChildGuard::spawn(
        "aquatic_http",
        Command::new(aquatic_http())
            .arg("-c")
            .arg(&config)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    );
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = tracker.child.try_wait() {
            panic!(
                "aquatic_http exited at start ({status}): {}",
                read_to_string_lossy(&log_path)
            );
        }
        if TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
            .is_ok()
        {
            return tracker;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "aquatic_http on 127.0.0.1:{port} did not accept connections within 15 s: {}",
            read_to_string_lossy(&log_path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes a single-file .torrent announcing to `announce`; returns its path and info-hash.
fn make_torrent(dir: &Path, announce: &str) -> (PathBuf, String) {
    let piece_len: i64 = 16384;
    let pieces = 8usize;
    let info = OwnedValue::dict()
        .with(
            "name",
            OwnedValue::Bytes(b"https-tracker-test.bin".to_vec()),
        )
        .with("length", piece_len * pieces as i64)
        .with("piece length", piece_len)
        .with("pieces", OwnedValue::Bytes(vec![0x5a; 20 * pieces]));
    let torrent = OwnedValue::dict()
        .with("announce", OwnedValue::Bytes(announce.as_bytes().to_vec()))
        .with("info", info)
        .encode();
    let path = dir.join("test.torrent");
    std::fs::write(&path, &torrent).unwrap();
    let m = Metainfo::from_bytes(&torrent).unwrap();
    let hash = m.info_hashes.v1.expect("a v1 torrent has a v1 info-hash");
    (path, hex::encode(&hash.0))
}

/// Announces a seeder at 127.0.0.1:`peer_port` over HTTPS with Python's urllib, verifying the
/// tracker's certificate against `ca.pem` (so the certificate this test made is valid for
/// 127.0.0.1 to an independent TLS stack too). Returns the tracker's bencoded reply.
fn python_announce(dir: &Path, announce: &str, info_hash_hex: &str, peer_port: u16) -> Vec<u8> {
    let script = r#"
import ssl, sys, urllib.parse, urllib.request
url, ca, ih, port = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), sys.argv[4]
q = "info_hash=" + urllib.parse.quote_from_bytes(ih, safe="") + \
    "&peer_id=-PY0001-httpstest001&port=" + port + \
    "&uploaded=0&downloaded=0&left=0&event=started&compact=1&numwant=50"
ctx = ssl.create_default_context(cafile=ca)
with urllib.request.urlopen(url + "?" + q, context=ctx, timeout=10) as r:
    sys.stdout.buffer.write(r.read())
"#;
    let out_path = dir.join("announce.out");
    let err_path = dir.join("announce.err");
    let mut child = ChildGuard::spawn(
        "python announce",
        Command::new(python())
            .args(["-c", script, announce])
            .arg(dir.join("ca.pem"))
            .args([info_hash_hex, &peer_port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let status = child.wait_timeout(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the HTTPS announce from Python failed ({status:?}): {}",
        read_to_string_lossy(&err_path)
    );
    std::fs::read(&out_path).unwrap()
}

/// Runs a swarmscan command with `--set` overrides in `dir`; returns (exit code, stdout,
/// stderr). Panics if it does not end within `limit`.
fn swarmscan(dir: &Path, args: &[String], limit: Duration) -> (i32, String, String) {
    let name = args[0].clone();
    let out_path = dir.join(format!("swarmscan-{name}.out"));
    let err_path = dir.join(format!("swarmscan-{name}.err"));
    let mut cmd = ChildGuard::spawn(
        "swarmscan",
        Command::new(env!("CARGO_BIN_EXE_swarmscan"))
            .args(args)
            .current_dir(dir)
            .env("SWARMSCAN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let status = cmd.wait_timeout(limit).unwrap_or_else(|| {
        panic!(
            "swarmscan {args:?} still running after {limit:?}: {}",
            read_to_string_lossy(&err_path)
        )
    });
    (
        status.code().unwrap_or(-1),
        read_to_string_lossy(&out_path),
        read_to_string_lossy(&err_path),
    )
}

fn sets(pairs: &[String]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_string(), p.clone()])
        .collect()
}

/// `swarmscan run` for SCAN_SECS on `torrent`, with `extra` settings on top of a small,
/// loopback-only configuration. Returns its stderr; fails the test if it does not exit 0.
fn scan(dir: &Path, db: &Path, torrent: &Path, extra: &[String]) -> String {
    let listen = free_tcp_port("127.0.0.1");
    let mut settings = vec![
        format!("database={}", db.display()),
        format!("net.listen=[\"127.0.0.1:{listen}\"]"),
        "net.ipv6=false".into(),
        "engine.workers=1".into(),
        "engine.pin_workers=false".into(),
        "engine.ring_entries=256".into(),
        "engine.recv_buffers=256".into(),
        "tracker.announce_secs=3".into(),
        "tracker.scrape_secs=5".into(),
        "tracker.timeout_ms=3000".into(),
        "peer.connect_timeout_ms=1000".into(),
        "privacy.ip=\"full\"".into(),
    ];
    settings.extend_from_slice(extra);
    let mut args = vec!["run".to_string()];
    args.extend(sets(&settings));
    args.extend([
        "--for".to_string(),
        format!("{SCAN_SECS}s"),
        torrent.display().to_string(),
    ]);
    let (code, _out, err) = swarmscan(dir, &args, Duration::from_secs(SCAN_SECS + 30));
    assert_eq!(code, 0, "swarmscan run failed: {err}");
    err
}

/// (tracker, error, received) of every tracker request in the database.
fn discovery_rows(db: &Path) -> Vec<(Option<String>, Option<String>, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT tracker, error, received FROM discovery_requests ORDER BY at")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

/// (tracker, complete, incomplete, downloaded) of every scrape row in the database.
fn scrape_rows(db: &Path) -> Vec<(String, i64, i64, i64)> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT tracker, complete, incomplete, downloaded FROM scrapes ORDER BY at")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn peers_json(dir: &Path, db: &Path) -> Vec<Json> {
    let args = [
        "peers".to_string(),
        "--json".to_string(),
        "--set".to_string(),
        format!("database={}", db.display()),
    ];
    let (code, out, err) = swarmscan(dir, &args, Duration::from_secs(30));
    assert_eq!(code, 0, "swarmscan peers failed: {err}");
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn report_json(dir: &Path, db: &Path) -> Json {
    let args = [
        "report".to_string(),
        "--json".to_string(),
        "--set".to_string(),
        format!("database={}", db.display()),
    ];
    let (code, out, err) = swarmscan(dir, &args, Duration::from_secs(30));
    assert_eq!(code, 0, "swarmscan report failed: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn discovers_and_scrapes_through_a_real_https_tracker() {
    let started = Instant::now();
    let tmp = test_dir("swarmscan-https-");
    let dir = tmp.path();
    make_certificates(dir);
    let port = free_tcp_port("127.0.0.1");
    let _tracker = start_tracker(dir, port);
    let announce = format!("https://127.0.0.1:{port}/announce");
    let (torrent, info_hash) = make_torrent(dir, &announce);

    // A seeder announces itself over HTTPS.
    let peer_port = free_tcp_port("127.0.0.1");
    let reply = python_announce(dir, &announce, &info_hash, peer_port);
    assert!(
        reply.starts_with(b"d") && !reply.windows(14).any(|w| w == b"failure reason"),
        "the tracker refused the peer's announce: {}",
        String::from_utf8_lossy(&reply)
    );

    let db = dir.join("scan.sqlite");
    let log = scan(
        dir,
        &db,
        &torrent,
        &["tracker.ca_files=[\"ca.pem\"]".to_string()],
    );

    // The peer, learnt from the HTTPS tracker.
    let peers = peers_json(dir, &db);
    let peer = peers
        .iter()
        .find(|p| p["ip"] == "127.0.0.1" && p["port"] == peer_port)
        .unwrap_or_else(|| {
            panic!("the announced peer is not among swarmscan's peers: {peers:#?}\n{log}")
        });
    assert_eq!(peer["info_hash"], info_hash.as_str());
    assert!(
        peer["sources"]
            .as_str()
            .unwrap()
            .split('+')
            .any(|s| s == "tracker_http"),
        "the peer was not learnt from the HTTP(S) tracker: {peer}"
    );

    // Every announce is recorded under the tracker URL as given, and none failed.
    let requests = discovery_rows(&db);
    assert!(!requests.is_empty(), "no tracker request recorded\n{log}");
    for (tracker, error, _) in &requests {
        assert_eq!(tracker.as_deref(), Some(announce.as_str()));
        assert_eq!(error, &None, "an HTTPS announce failed\n{log}");
    }
    assert!(
        requests.iter().any(|r| r.2 >= 1),
        "no announce returned the peer: {requests:?}"
    );

    // The scrape went over HTTPS too: aquatic_http's announce replies carry no `downloaded`,
    // so a scrape row can only come from the scrape request (to .../scrape, same scheme). It
    // reports the seeder; it does not count downloads, so `downloaded` is 0.
    let scrapes = scrape_rows(&db);
    assert!(
        scrapes
            .iter()
            .any(|(t, complete, _, downloaded)| t == &announce
                && *complete == 1
                && *downloaded == 0),
        "no scrape of {announce} with the seeder counted: {scrapes:?}\n{log}"
    );

    // The report counts the requests as tracker_http, none failed.
    let report = report_json(dir, &db);
    let http = report["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["source"] == "tracker_http")
        .unwrap_or_else(|| panic!("no tracker_http line in the report: {report:#}"));
    assert_eq!(
        http["requests"].as_i64(),
        Some(requests.len() as i64),
        "{http}"
    );
    assert_eq!(http["failed_requests"].as_i64(), Some(0), "{http}");

    eprintln!(
        "https tracker: {} announces to {announce} (0 failed), peer 127.0.0.1:{peer_port} found via {}, \
         {} scrape rows (complete {}); test took {:.1} s",
        requests.len(),
        peer["sources"],
        scrapes.len(),
        scrapes.last().map_or(0, |s| s.1),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn untrusted_certificate_is_recorded_not_fatal() {
    let tmp = test_dir("swarmscan-https-untrusted-");
    let dir = tmp.path();
    make_certificates(dir);
    let port = free_tcp_port("127.0.0.1");
    let _tracker = start_tracker(dir, port);
    let announce = format!("https://127.0.0.1:{port}/announce");
    let (torrent, info_hash) = make_torrent(dir, &announce);
    let peer_port = free_tcp_port("127.0.0.1");
    python_announce(dir, &announce, &info_hash, peer_port);

    // No tracker.ca_files: the test CA is not among the web PKI roots.
    let db = dir.join("scan.sqlite");
    let log = scan(dir, &db, &torrent, &[]);
    let requests = discovery_rows(&db);
    assert!(!requests.is_empty(), "no tracker request recorded\n{log}");
    for (tracker, error, received) in &requests {
        assert_eq!(tracker.as_deref(), Some(announce.as_str()));
        assert_eq!(
            error.as_deref(),
            Some("tls: invalid peer certificate: UnknownIssuer"),
            "{requests:?}"
        );
        assert_eq!(*received, 0);
    }
    assert!(
        scrape_rows(&db).is_empty(),
        "a scrape succeeded without trust"
    );
    let peers = peers_json(dir, &db);
    assert!(peers.is_empty(), "peers learnt without trust: {peers:#?}");
    eprintln!(
        "https tracker without the CA: {} announces, each recorded as {:?}",
        requests.len(),
        requests[0].1.as_deref().unwrap_or("")
    );
}

#[test]
fn missing_ca_file_stops_run_with_exit_2() {
    let tmp = test_dir("swarmscan-https-badca-");
    let dir = tmp.path();
    let (torrent, _) = make_torrent(dir, "https://127.0.0.1:1/announce");
    let db = dir.join("scan.sqlite");
    let mut args = vec!["run".to_string()];
    args.extend(sets(&[
        format!("database={}", db.display()),
        "tracker.ca_files=[\"no-such-ca.pem\"]".to_string(),
    ]));
    args.extend([
        "--for".to_string(),
        "5s".to_string(),
        torrent.display().to_string(),
    ]);
    let (code, _, err) = swarmscan(dir, &args, Duration::from_secs(30));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("tracker.ca_files") && err.contains("no-such-ca.pem"),
        "the error should name the key and the file: {err}"
    );
    assert!(!db.exists(), "nothing should be created before the check");
}

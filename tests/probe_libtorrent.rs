//! `swarmscan probe` against real libtorrent peers: by .torrent-less info-hash only, so the
//! probe must fetch the metadata (BEP 9) to learn the piece count and measure progress; over
//! MSE/PE, as the scan talks to a peer that requires encryption; and over uTP (BEP 29), as the
//! scan talks to a peer that speaks only uTP (`net.utp`), encryption forced or not.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

mod common;
use common::python_with_libtorrent as python;

/// Starts a libtorrent seeder of `pieces` pieces; `encryption` is "plain" or "forced".
fn seeder(pieces: u32, encryption: &str) -> (Kill, serde_json::Value) {
    let (child, info) = peer(pieces, encryption, 0);
    assert_eq!(info["seeding"], true);
    (child, info)
}

/// Starts a libtorrent peer of `pieces` pieces that lacks `missing` of them; `encryption` is
/// "plain", "forced" or "forced-rc4" (see tests/data/lt_probe_target.py).
fn peer(pieces: u32, encryption: &str, missing: u32) -> (Kill, serde_json::Value) {
    peer_on(pieces, encryption, missing, "both")
}

/// As [`peer`], speaking over `transports`: "both", "tcp" (uTP off) or "utp" (TCP off).
fn peer_on(
    pieces: u32,
    encryption: &str,
    missing: u32,
    transports: &str,
) -> (Kill, serde_json::Value) {
    let py = python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/lt_probe_target.py");
    let mut child = Kill(
        Command::new(&py)
            .args([
                script,
                &pieces.to_string(),
                encryption,
                &missing.to_string(),
                transports,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&line).expect("peer's JSON line");
    assert_eq!(
        info["pieces_have"].as_u64(),
        Some(u64::from(pieces - missing)),
        "{info}"
    );
    (child, info)
}

fn probe(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .arg("probe")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the probe with `--json`, asserts its exit code and gives its JSON.
fn probe_json(args: &[&str], code: i32) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (got, text, err) = probe(&args);
    assert_eq!(got, Some(code), "{text}{err}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Runs the probe and asserts that `needles` appear in its transcript in this order.
fn probe_transcript(args: &[&str], code: i32, needles: &[&str]) -> String {
    let (got, text, err) = probe(args);
    assert_eq!(got, Some(code), "{text}{err}");
    let mut at = 0;
    for needle in needles {
        match text[at..].find(needle) {
            Some(i) => at += i + needle.len(),
            None => panic!("missing {needle:?} (in this order) in:\n{text}"),
        }
    }
    text
}

/// A partial peer that accepts only RC4-encrypted connections: on the defaults (`fallback`)
/// the probe is hung up on in plaintext, retries over MSE/PE as a scan does, and shows the
/// decrypted conversation: the peer's bitfield and its progress.
#[test]
fn probe_talks_mse_to_a_peer_that_requires_it() {
    let (_peer, info) = peer(50, "forced-rc4", 20);
    let hash = info["info_hash"].as_str().unwrap();
    let addr = format!("127.0.0.1:{}", info["port"]);

    probe_transcript(
        &[&addr, hash, "--pieces", "50"],
        0,
        &[
            "(plaintext, attempt 1 of the probe)",
            "PeerClosed [broken]: the peer hung up on plaintext, trying MSE/PE",
            "(MSE/PE (RC4 or plaintext offered), attempt 2 of the probe)",
            "connected; MSE/PE handshake done: RC4-encrypted stream",
            "-> handshake",
            "<- handshake",
            "<- bitfield (7 bytes, 30 bits set)",
            "end: Answered; progress 60.0% (30 of 50 pieces, from Bitfield)",
            "transport tcp+mse (rc4); attempts 2",
        ],
    );

    // MSE from the start: one connection.
    let r = probe_json(&[&addr, hash, "--encryption", "require"], 0);
    assert_eq!(
        (&r["transport"], &r["mse"], &r["attempts"]),
        (&"tcp+mse".into(), &"rc4".into(), &1.into()),
        "{r}"
    );
    assert_eq!(
        (r["pieces_have"].as_u64(), r["piece_count"].as_u64()),
        (Some(30), Some(50)),
        "the piece count from the metadata, fetched over RC4: {r}"
    );
}

/// `--encryption require` against a peer that refuses MSE/PE: no plaintext retry, said
/// plainly; the peer hangs up on MSE over TCP, so uTP is tried as a scan would (`net.utp`
/// default), with MSE again; exit code 1.
#[test]
fn probe_requiring_encryption_fails_clearly_against_a_plaintext_only_peer() {
    let (_seeder, info) = seeder(20, "plain");
    let hash = info["info_hash"].as_str().unwrap();
    let addr = format!("127.0.0.1:{}", info["port"]);
    let text = probe_transcript(
        &[&addr, hash, "--encryption", "require"],
        1,
        &[
            "over TCP (MSE/PE (RC4 or plaintext offered), attempt 1 of the probe)",
            "trying uTP (net.utp = \"fallback\")",
            "over uTP (MSE/PE (RC4 or plaintext offered), attempt 2 of the probe)",
            "MSE/PE failed and encryption is \"require\": no plaintext retry",
            "transport utp+mse; attempts 2",
        ],
    );
    assert!(!text.contains("(plaintext, attempt"), "{text}");
    assert!(!text.contains("<- handshake"), "{text}");
    let r = probe_json(
        &[&addr, hash, "--encryption", "require", "--transport", "tcp"],
        1,
    );
    assert_eq!(r["handshake"], false, "{r}");
    assert_eq!(
        (&r["transport"], &r["attempts"]),
        (&"tcp+mse".into(), &1.into()),
        "{r}"
    );
    assert!(r["error_class"].is_string(), "{r}");
}

/// A peer that speaks only uTP (libtorrent with TCP off both ways) is read by `probe` on its
/// defaults as a scan reads it: TCP first, which the peer hangs up on whatever the
/// encryption, then uTP at once; the bitfield and progress come over uTP, and so does the
/// metadata when only the info-hash is given.
#[test]
fn probe_reads_a_utp_only_peer_on_the_defaults() {
    let (_peer, info) = peer_on(50, "plain", 20, "utp");
    let hash = info["info_hash"].as_str().unwrap();
    let addr = format!("127.0.0.1:{}", info["port"]);
    let text = probe_transcript(
        &[&addr, hash, "--pieces", "50"],
        0,
        &[
            "over TCP (plaintext, attempt 1 of the probe)",
            "the peer hung up on every encryption over TCP, trying uTP (net.utp = \"fallback\")",
            "over uTP (plaintext, attempt",
            "connected; plaintext BitTorrent",
            "-> handshake",
            "<- handshake",
            "<- bitfield (7 bytes, 30 bits set)",
            "end: Answered; progress 60.0% (30 of 50 pieces, from Bitfield)",
            "transport utp; attempts",
        ],
    );
    assert_eq!(text.matches("over uTP").count(), 1, "{text}");

    let r = probe_json(&[&addr, hash], 0);
    assert_eq!(
        (&r["transport"], &r["utp"]),
        (&"utp".into(), &true.into()),
        "{r}"
    );
    assert_eq!(
        (r["pieces_have"].as_u64(), r["piece_count"].as_u64()),
        (Some(30), Some(50)),
        "the piece count from the metadata, fetched over uTP: {r}"
    );
    assert!(r["error_class"].is_null(), "{r}");
    let tried = r["tried"].as_array().unwrap();
    let (last, before) = tried.split_last().unwrap();
    assert_eq!(last["transport"], "utp", "{r}");
    assert!(!before.is_empty(), "TCP tried first: {r}");
    for t in before {
        assert!(t["transport"].as_str().unwrap().starts_with("tcp"), "{r}");
        assert!(
            t["error_class"].is_string(),
            "a failed try has its class: {r}"
        );
    }
}

/// `--transport utp` against a peer with uTP off: one uTP attempt, which times out (the
/// peer's UDP socket takes the SYN and never answers), named with the scan's uTP error
/// class; TCP, which would work, is not tried.
#[test]
fn probe_over_utp_only_fails_clearly_against_a_tcp_only_peer() {
    let (_seeder, info) = peer_on(20, "plain", 0, "tcp");
    let hash = info["info_hash"].as_str().unwrap();
    let addr = format!("127.0.0.1:{}", info["port"]);
    let text = probe_transcript(
        &[&addr, hash, "--transport", "utp"],
        1,
        &[
            "over uTP (plaintext, attempt 1 of the probe)",
            "[utp_timed_out]: --transport utp: the other transport is not tried",
            "end: SocketError(110: Connection timed out (os error 110)) [utp_timed_out]",
            "transport utp; attempts 1",
        ],
    );
    assert!(!text.contains("over TCP"), "{text}");
    // The same peer on the defaults: TCP first, and it answers.
    let r = probe_json(&[&addr, hash], 0);
    assert_eq!(
        (&r["transport"], &r["attempts"]),
        (&"tcp".into(), &1.into()),
        "{r}"
    );
}

/// Nothing at the address listens on UDP (only a TCP listener that is closed before the
/// probe): the kernel's port unreachable makes uTP's connect fail at once, as
/// `utp_refused`; on the defaults TCP is refused first (`refused`) and uTP tried at once.
#[test]
fn probe_names_utp_refused_when_nothing_listens_on_udp() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let hash = "0123456789abcdef0123456789abcdef01234567";
    probe_transcript(
        &[&addr, hash, "--transport", "utp"],
        1,
        &[
            "over uTP (plaintext, attempt 1 of the probe)",
            "[utp_refused]: --transport utp: the other transport is not tried",
            "transport utp; attempts 1",
        ],
    );
    probe_transcript(
        &[&addr, hash],
        1,
        &[
            "over TCP (plaintext, attempt 1 of the probe)",
            "[refused]: no connection over TCP, trying uTP (net.utp = \"fallback\")",
            "over uTP (plaintext, attempt 2 of the probe)",
            "end: SocketError(111: Connection refused (os error 111)) [utp_refused]",
            "transport utp; attempts 2",
        ],
    );
    // `net.utp = "off"`: TCP only, and the transcript says why uTP was not tried.
    probe_transcript(
        &[&addr, hash, "--set", "net.utp=\"off\""],
        1,
        &[
            "[refused]: net.utp = \"off\": uTP is not tried",
            "attempts 1",
        ],
    );
}

/// A uTP-only peer that forces encryption (RC4 only): on the defaults, TCP is given up as for
/// any uTP-only peer, uTP's plaintext is hung up on too, and MSE/PE over uTP reads the
/// peer's progress through the RC4 stream.
#[test]
fn probe_reads_an_encryption_forcing_utp_only_peer() {
    let (_peer, info) = peer_on(40, "forced-rc4", 10, "utp");
    let hash = info["info_hash"].as_str().unwrap();
    let addr = format!("127.0.0.1:{}", info["port"]);
    probe_transcript(
        &[&addr, hash, "--pieces", "40"],
        0,
        &[
            "over TCP (plaintext, attempt 1 of the probe)",
            "trying uTP (net.utp = \"fallback\")",
            "over uTP (plaintext, attempt",
            "the peer hung up on plaintext, trying MSE/PE",
            "over uTP (MSE/PE (RC4 or plaintext offered), attempt",
            "connected; MSE/PE handshake done: RC4-encrypted stream",
            "<- handshake",
            "<- bitfield (5 bytes, 30 bits set)",
            "end: Answered; progress 75.0% (30 of 40 pieces, from Bitfield)",
            "transport utp+mse (rc4)",
        ],
    );
    // Encryption required and uTP named: one connection, the metadata fetched through it.
    let r = probe_json(
        &[&addr, hash, "--encryption", "require", "--transport", "utp"],
        0,
    );
    assert_eq!(
        (&r["transport"], &r["mse"], &r["attempts"]),
        (&"utp+mse".into(), &"rc4".into(), &1.into()),
        "{r}"
    );
    assert_eq!(
        (r["pieces_have"].as_u64(), r["piece_count"].as_u64()),
        (Some(30), Some(40)),
        "{r}"
    );
}

/// A wrong `--transport` is refused before anything is dialled, naming the flag and values.
#[test]
fn probe_refuses_an_unknown_transport() {
    let (code, text, err) = probe(&[
        "127.0.0.1:9",
        "0123456789abcdef0123456789abcdef01234567",
        "--transport",
        "quic",
    ]);
    assert_eq!(code, Some(2), "{text}{err}");
    assert!(text.is_empty(), "{text}");
    assert!(
        err.contains("--transport") && err.contains("tcp, utp"),
        "{err}"
    );
}

/// A wrong `--encryption` is refused before anything is dialled, naming the flag and values.
#[test]
fn probe_refuses_an_unknown_encryption_mode() {
    let (code, text, err) = probe(&[
        "127.0.0.1:9",
        "0123456789abcdef0123456789abcdef01234567",
        "--encryption",
        "always",
    ]);
    assert_eq!(code, Some(2), "{text}{err}");
    assert!(text.is_empty(), "{text}");
    assert!(
        err.contains("--encryption") && err.contains("off, fallback, prefer, require"),
        "{err}"
    );
}

#[test]
fn probe_by_hash_fetches_metadata_and_reads_a_seeders_progress() {
    let (_seeder, info) = seeder(300, "plain");
    let hash = info["info_hash"].as_str().unwrap();
    let pieces = info["num_pieces"].as_u64().unwrap();
    let port = info["port"].as_u64().unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["probe", &format!("127.0.0.1:{port}"), hash, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["handshake"], true, "{r}");
    assert_eq!(
        r["piece_count"].as_u64(),
        Some(pieces),
        "metadata fetched: {r}"
    );
    assert_eq!(
        r["pieces_have"].as_u64(),
        Some(pieces),
        "a seeder has every piece: {r}"
    );
    assert!(
        r["client"]
            .as_str()
            .unwrap_or("")
            .starts_with("libtorrent/2.1.1"),
        "{r}"
    );
    assert_eq!(r["end"]["kind"], "answered", "{r}");

    // The text transcript names the messages as a capture would.
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["probe", &format!("127.0.0.1:{port}"), hash])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "-> handshake",
        "<- handshake",
        "<- extension handshake",
        "100.0%",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// A seeder that refuses plaintext: the scan's first probe is hung up on, the retry talks
/// MSE/PE, fetches the metadata (the torrent is given as a magnet with the peer in `x.pe`)
/// and reads the seeder's progress through the encrypted stream.
#[test]
fn scan_falls_back_to_encryption_for_a_peer_that_requires_it() {
    let (_seeder, info) = seeder(200, "forced");
    let hash = info["info_hash"].as_str().unwrap();
    let port = info["port"].as_u64().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("mse.sqlite");
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{hash}&x.pe=127.0.0.1:{port}");
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let database = format!("database={:?}", db.display().to_string());
    let out = Command::new(bin)
        .args(["run", "--for", "8s", "--json", "--set", &database])
        .args(["--set", &format!("net.listen=[\"{listen}\"]")])
        .args([
            "--set",
            "privacy.ip=\"full\"",
            "--set",
            "net.encryption=\"fallback\"",
        ])
        .args(["--set", "peer.revisit_secs=2"])
        .arg(&magnet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let peers = Command::new(bin)
        .args(["peers", "--json", "--set", &database])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&peers.stdout);
    let peer: serde_json::Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|p| p["port"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("seeder not in peers: {text}"));
    assert!(
        peer["transport"].as_str().unwrap_or("").contains("mse"),
        "{peer}"
    );
    assert_eq!(peer["last_progress"].as_f64(), Some(1.0), "{peer}");
    assert_eq!(
        peer["confirmed"], false,
        "a seeder is never confirmed: {peer}"
    );
    // The plaintext attempt that was hung up on, then the encrypted success.
    let report = Command::new(bin)
        .args(["report", "--json", "--set", &database])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let outcomes = report["outcomes"].to_string();
    assert!(outcomes.contains("success"), "{outcomes}");
}

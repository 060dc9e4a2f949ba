//! The `config`, `report` and `peers` subcommands, run as the built binary.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use swarmscan::config::{Config, IpMode};
use swarmscan::store::anon::Anonymizer;
use swarmscan::store::*;

const T0: UnixMs = 1_700_000_000_000;

fn swarmscan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(args)
        .output()
        .expect("run swarmscan")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn torrent(byte: u8, name: &str, source: TorrentSource) -> TorrentRecord {
    TorrentRecord {
        info_hash_v1: Some([byte; 20]),
        info_hash_v2: None,
        name: Some(name.into()),
        piece_count: Some(10),
        piece_length: Some(16384),
        total_size: Some(163_840),
        source,
        added_at: T0,
        trackers: vec![],
    }
}

/// A small database: torrent "demo" of 10 pieces; peer A goes 10 % → 100 % (confirmed), peer B
/// is a seeder, peer C is refused; scrapes grow 7 → 9 over the 1 hour window. Torrent "other"
/// has one peer from the DHT.
fn small_db(path: &Path) {
    let store = Store::open(path).unwrap();
    let tid = store
        .upsert_torrent(&torrent(0x11, "demo", TorrentSource::File))
        .unwrap();
    let other = store
        .upsert_torrent(&torrent(0x22, "other", TorrentSource::Magnet))
        .unwrap();
    let writer = Writer::start(
        store,
        Anonymizer::new(IpMode::Full, [0; 32]),
        WriterOptions {
            batch_rows: 100,
            batch_ms: 100,
            channel_capacity: 64,
            threshold: 0.98,
            unwritable: std::time::Duration::from_secs(300),
            geo: Default::default(),
            reverse_dns: false,
        },
    )
    .unwrap();
    let mut tx = writer.sender();
    let a: SocketAddr = "127.0.0.2:6881".parse().unwrap();
    let b: SocketAddr = "127.0.0.3:6881".parse().unwrap();
    let c: SocketAddr = "127.0.0.4:6881".parse().unwrap();
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0,
        torrent_id: tid,
        source: PeerSource::TrackerUdp,
        tracker: Some("udp://127.0.0.1:6969".into()),
        duration_ms: 3,
        error: None,
        peers: vec![a, b, c],
    }));
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0,
        torrent_id: other,
        source: PeerSource::Dht,
        tracker: None,
        duration_ms: 3,
        error: None,
        peers: vec![a],
    }));
    let probe = |addr, event, at, result| -> Record {
        ProbeOutcome {
            torrent_id: tid,
            addr,
            event,
            at,
            result,
            client: Some("qBittorrent 4.6.0".into()),
            peer_id: None,
            transport: Transport::TCP | Transport::MSE,
            connect_ms: Some(1),
            duration_ms: 100,
            longest_gap_ms: Some(50),
            messages: 4,
            next_visit_at: Some(at + 300_000),
            portless: false,
        }
        .into()
    };
    let progress = |have| ProbeResult::Success(Progress { have, pieces: 10 });
    tx.send(probe(a, ProbeEvent::FirstContact, T0 + 1000, progress(1)));
    tx.send(probe(b, ProbeEvent::FirstContact, T0 + 1000, progress(10)));
    tx.send(probe(
        c,
        ProbeEvent::FirstContact,
        T0 + 1000,
        ProbeResult::Failed(ErrorClass::Refused),
    ));
    tx.send(probe(
        a,
        ProbeEvent::LaterContact,
        T0 + 1_801_000,
        progress(10),
    ));
    for (at, downloaded) in [(T0, 7), (T0 + 3_600_000, 9)] {
        tx.send(Record::Scrape(ScrapeRecord {
            at,
            torrent_id: tid,
            tracker: "udp://127.0.0.1:6969".into(),
            complete: 1,
            incomplete: 1,
            downloaded,
        }));
    }
    drop(tx);
    writer.finish().unwrap();
}

#[test]
fn config_prints_the_documented_defaults() {
    let out = swarmscan(&["config"]);
    assert!(out.status.success());
    let printed = text(&out.stdout);
    assert!(printed.contains("# Completion fraction"));
    assert_eq!(Config::from_toml_str(&printed).unwrap(), Config::default());
}

#[test]
fn config_shows_the_effective_configuration_and_names_bad_keys() {
    let out = swarmscan(&[
        "config",
        "--set",
        "peer.threshold=0.5",
        "--set",
        "database=x.sqlite",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let effective = Config::from_toml_str(&text(&out.stdout)).unwrap();
    assert_eq!(effective.peer.threshold, 0.5);
    assert_eq!(effective.database, Path::new("x.sqlite"));

    let out = swarmscan(&["config", "--set", "peer.treshold=0.5"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown config key `peer.treshold`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn config_check_validates_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[peer]\nthreshold = 0.9\n").unwrap();
    let out = swarmscan(&["config", "--check", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[peer]\nthreshold = 2.0\n").unwrap();
    let out = swarmscan(&["config", "--check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("`peer.threshold`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn report_on_a_small_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("small.sqlite");
    small_db(&db);
    let set_db = format!("database={}", db.display());

    let out = swarmscan(&["report", "--json", "--set", &set_db]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let demo = &json["torrents"][0];
    assert_eq!(demo["info_hash"], "11".repeat(20));
    assert_eq!(demo["peers_seen"], 3);
    assert_eq!(demo["peers_evaluated"], 2);
    assert_eq!(demo["confirmed"], 1);
    assert_eq!(demo["reported"], 2);
    assert_eq!(demo["reported_total"], 9);
    assert_eq!(demo["ratio"], 0.5);
    // The window is T0 .. T0 + 1 h (last scrape), so 1 confirmed per hour.
    assert_eq!(json["window"]["hours"], 1.0);
    assert_eq!(demo["confirmed_per_hour"], 1.0);
    assert_eq!(json["torrents"][1]["peers_seen"], 1);
    assert_eq!(json["total"]["peers_seen"], 4);
    let udp = json["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "tracker_udp")
        .unwrap();
    assert_eq!(
        (udp["received"].as_i64(), udp["unique"].as_i64()),
        (Some(3), Some(3))
    );
    let first = &json["outcomes"][0];
    assert_eq!(first["event"], "first_contact");
    assert_eq!(first["attempts"], 3);

    let out = swarmscan(&["report", "--set", &set_db]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    let demo_line = report
        .lines()
        .find(|l| l.starts_with(&"11".repeat(20)))
        .expect("torrent line");
    let cells: Vec<&str> = demo_line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        // Labels ("-": none); the last column: crossings seen live / by revisit / on an
        // incoming connection.
        ["demo", "-", "3", "2", "1", "2", "9", "50.0%", "1.00", "0/1/0"]
    );
    assert!(report.contains("table 5.5") && report.contains("table 5.7"));
    assert!(report.contains("2023-11-14T22:13:20Z"));
}

#[test]
fn peers_lists_every_peer_as_text_or_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("small.sqlite");
    small_db(&db);
    let set_db = format!("database={}", db.display());

    let out = swarmscan(&[
        "peers",
        "--json",
        "--set",
        &set_db,
        "--torrent",
        &"11".repeat(20),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["ip"], "127.0.0.2");
    assert_eq!(lines[0]["confirmed"], true);
    assert_eq!(lines[0]["first_progress"], 0.1);
    assert_eq!(lines[0]["last_progress"], 1.0);
    assert_eq!(lines[0]["transport"], "tcp+mse");
    assert_eq!(lines[1]["confirmed"], false);
    assert_eq!(lines[2]["last_error"], "refused");
    // Only transports of successful contacts are recorded.
    assert_eq!(lines[2]["transport"], "");

    let out = swarmscan(&["peers", "--set", &set_db]);
    assert!(out.status.success());
    let listing = text(&out.stdout);
    assert_eq!(listing.lines().count(), 5, "header + 4 peers:\n{listing}");
    assert!(listing.lines().next().unwrap().starts_with("info_hash"));
    assert!(listing.contains("qBittorrent 4.6.0"));

    let out = swarmscan(&["peers", "--set", &set_db, "--torrent", &"33".repeat(20)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains(&"33".repeat(20)));
}

#[test]
fn missing_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here.sqlite");
    for cmd in ["report", "peers"] {
        let out = swarmscan(&[cmd, "--set", &format!("database={}", missing.display())]);
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let err = text(&out.stderr);
        assert!(
            err.contains("nothing-here.sqlite") && err.contains("does not exist"),
            "{cmd}: {err}"
        );
        assert!(!missing.exists(), "{cmd} must not create the database");
    }
}

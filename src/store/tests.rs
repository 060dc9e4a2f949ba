//! Store tests: schema and migrations, the writer, a hand-built report scenario.

use super::anon::Anonymizer;
use super::*;
use crate::config::IpMode;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const T0: UnixMs = 1_700_000_000_000;

fn options(batch_rows: usize, batch_ms: u64, channel_capacity: usize) -> WriterOptions {
    WriterOptions {
        batch_rows,
        batch_ms,
        channel_capacity,
        threshold: 0.98,
        unwritable: std::time::Duration::from_secs(300),
        geo: Default::default(),
        reverse_dns: false,
    }
}

fn full() -> Anonymizer {
    Anonymizer::new(IpMode::Full, [0; 32])
}

fn torrent(byte: u8, pieces: Option<u32>) -> TorrentRecord {
    TorrentRecord {
        info_hash_v1: Some([byte; 20]),
        info_hash_v2: None,
        name: Some(format!("torrent {byte}")),
        piece_count: pieces,
        piece_length: pieces.map(|_| 262_144),
        total_size: pieces.map(|p| u64::from(p) * 262_144),
        source: TorrentSource::File,
        added_at: T0 - 60_000,
        trackers: vec![vec!["udp://127.0.0.1:1/announce".into()]],
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn outcome(
    torrent_id: TorrentId,
    peer: &str,
    event: ProbeEvent,
    at: UnixMs,
    result: ProbeResult,
) -> Record {
    ProbeOutcome {
        torrent_id,
        addr: addr(peer),
        event,
        at,
        result,
        client: Some("libtorrent 2.0.11".into()),
        peer_id: Some(*b"-LT20B0-abcdefghijkl"),
        transport: Transport::TCP,
        connect_ms: Some(12),
        duration_ms: 800,
        longest_gap_ms: None,
        messages: 3,
        next_visit_at: Some(at + 300_000),
        portless: false,
    }
    .into()
}

fn ok(have: u32) -> ProbeResult {
    ProbeResult::Success(Progress { have, pieces: 100 })
}

fn count(store: &Store, sql: &str) -> i64 {
    store.connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn creates_schema_on_a_new_and_on_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.sqlite");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let mode: String = store
        .connection()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    for table in [
        "torrents",
        "peers",
        "discovery_requests",
        "scrapes",
        "outcome_counts",
        "gap_histogram",
        "stats",
        "runs",
        "meta",
        "tracker_state",
    ] {
        let n = count(
            &store,
            &format!(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
            ),
        );
        assert_eq!(n, 1, "table {table}");
    }
    drop(store);
    // Reopening keeps the version and does not re-run migrations.
    assert_eq!(
        Store::open(&path).unwrap().schema_version().unwrap(),
        SCHEMA_VERSION
    );

    // A zero-byte file and an SQLite file at version 0 are migrated.
    let empty = dir.path().join("empty.sqlite");
    std::fs::write(&empty, b"").unwrap();
    assert_eq!(
        Store::open_existing(&empty)
            .unwrap()
            .schema_version()
            .unwrap(),
        SCHEMA_VERSION
    );
    let v0 = dir.path().join("v0.sqlite");
    rusqlite::Connection::open(&v0)
        .unwrap()
        .execute_batch("CREATE TABLE unrelated (x);")
        .unwrap();
    let store = Store::open_existing(&v0).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(count(&store, "SELECT count(*) FROM peers"), 0);
}

#[test]
fn refuses_future_versions_non_sqlite_files_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let future = dir.path().join("future.sqlite");
    rusqlite::Connection::open(&future)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let e = Store::open(&future).unwrap_err().to_string();
    assert_eq!(e, format!("database schema version {} is newer than this swarmscan ({SCHEMA_VERSION}); upgrade swarmscan", SCHEMA_VERSION + 1));

    let text = dir.path().join("notes.txt");
    std::fs::write(
        &text,
        "this is not a database, just some text that is long enough to fill a header ".repeat(20),
    )
    .unwrap();
    let e = Store::open(&text).unwrap_err();
    assert!(matches!(e, StoreError::NotADatabase(_)), "{e:?}");
    assert!(e.to_string().contains("notes.txt"), "{e}");

    let missing = dir.path().join("missing.sqlite");
    let e = Store::open_existing(&missing).unwrap_err().to_string();
    assert!(
        e.contains("missing.sqlite") && e.contains("does not exist"),
        "{e}"
    );
    assert!(!missing.exists(), "open_existing must not create the file");
}

#[test]
fn torrent_upsert_matches_by_either_hash_and_fills_unknown_fields() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
    let mut magnet = torrent(1, None);
    magnet.name = None;
    magnet.source = TorrentSource::Magnet;
    let id = store.upsert_torrent(&magnet).unwrap();
    // Metadata arrives later, with the v2 hash too.
    let mut meta = torrent(1, Some(100));
    meta.info_hash_v2 = Some([9; 32]);
    assert_eq!(store.upsert_torrent(&meta).unwrap(), id);
    // A record with only the v2 hash is the same torrent; unknown fields do not erase known ones.
    let v2_only = TorrentRecord {
        info_hash_v1: None,
        name: None,
        piece_count: None,
        ..meta.clone()
    };
    assert_eq!(store.upsert_torrent(&v2_only).unwrap(), id);
    let rows = store.torrents().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].piece_count, Some(100));
    assert_eq!(rows[0].name.as_deref(), Some("torrent 1"));
    assert_eq!(rows[0].source, "magnet");
    assert_eq!(rows[0].info_hash_v2.as_deref(), Some(&*"09".repeat(32)));
    assert_eq!(
        store
            .torrent_by_hash(&"01".repeat(20).to_uppercase())
            .unwrap()
            .id,
        id
    );
    assert!(matches!(
        store.torrent_by_hash(&"02".repeat(20)),
        Err(StoreError::UnknownTorrent(_))
    ));
}

#[test]
fn removed_torrents_keep_their_rows_and_time_until_added_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("t.sqlite")).unwrap();
    let a = store.upsert_torrent(&torrent(1, Some(10))).unwrap();
    let b = store.upsert_torrent(&torrent(2, Some(10))).unwrap();
    assert_eq!(store.torrent_states().unwrap(), vec![(a, None), (b, None)]);
    assert_eq!(store.mark_removed(&[a], T0).unwrap(), 1);
    assert_eq!(
        store.mark_removed(&[a], T0 + 5).unwrap(),
        0,
        "a removed torrent keeps its first time"
    );
    assert_eq!(
        store.torrent_states().unwrap(),
        vec![(a, Some(T0)), (b, None)]
    );
    // Metadata learned later (an upsert) does not bring it back; `add` does.
    assert_eq!(store.upsert_torrent(&torrent(1, Some(10))).unwrap(), a);
    assert_eq!(store.torrent_states().unwrap()[0], (a, Some(T0)));
    let report = store.report().unwrap();
    assert_eq!(report.torrents[0].removed_at, Some(T0));
    assert_eq!(report.torrents[1].removed_at, None);
    assert_eq!(report.torrents.len(), 2, "its row stays in the report");
    assert!(store.mark_added(a).unwrap());
    assert!(!store.mark_added(a).unwrap(), "it was not removed any more");
    assert_eq!(store.torrent_states().unwrap(), vec![(a, None), (b, None)]);
}

#[test]
fn writer_commits_by_row_count_by_time_and_on_finish() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();

    // Row count: 25 records with batch_rows = 10 → 2 full batches while running.
    let writer = Writer::start(store, full(), options(10, 3_600_000, 1024)).unwrap();
    let metrics = writer.metrics();
    let mut tx = writer.sender();
    for i in 0..25 {
        tx.send(outcome(
            tid,
            &format!("127.0.0.1:{}", 1000 + i),
            ProbeEvent::FirstContact,
            T0 + i,
            ok(10),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.batches.load(std::sync::atomic::Ordering::Relaxed) < 2
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        metrics.committed.load(std::sync::atomic::Ordering::Relaxed),
        20
    );
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(
        count(&reader, "SELECT count(*) FROM peers"),
        20,
        "the 5 records of the open batch are not committed yet"
    );
    // Shutdown: the last 5 arrive.
    drop(tx);
    let counts = writer.finish().unwrap();
    assert_eq!(counts.outcomes, 25);
    assert_eq!(counts.batches, 3);
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 25);

    // Time: batch_ms = 50 commits a lone record without any further traffic.
    let store = Store::open(&path).unwrap();
    let writer = Writer::start(store, full(), options(1_000_000, 50, 1024)).unwrap();
    let mut tx = writer.sender();
    tx.send(outcome(
        tid,
        "127.0.0.2:1",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&reader, "SELECT count(*) FROM peers") < 26 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 26);
    // Flush: committed on request.
    tx.send(outcome(
        tid,
        "127.0.0.3:1",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    writer.handle().flush().unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 27);
    drop(tx);
    writer.finish().unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM runs"), 2);
}

#[test]
fn full_channel_never_blocks_and_never_loses_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bp.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    // A channel of 2 and big batches: the producer outruns the writer.
    let writer = Writer::start(store, full(), options(100_000, 3_600_000, 2)).unwrap();
    let metrics = writer.metrics();
    let mut tx = writer.sender();
    let mut max_pending = 0;
    for i in 0..5000u32 {
        let peer = format!("127.0.{}.{}:6881", i / 250, i % 250 + 1);
        tx.send(outcome(
            tid,
            &peer,
            ProbeEvent::FirstContact,
            T0 + i64::from(i),
            ok(10),
        ));
        max_pending = max_pending.max(tx.pending());
    }
    assert!(max_pending > 0, "the channel of 2 must have filled up");
    assert!(
        metrics
            .backpressure
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    // Pump until the overflow is empty (what a producer does on each tick).
    let deadline = Instant::now() + Duration::from_secs(60);
    while tx.pump() > 0 && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert_eq!(tx.pending(), 0);
    // A second burst left in overflow is handed over by close().
    for i in 0..500u32 {
        tx.send(outcome(
            tid,
            &format!("127.1.{}.{}:6881", i / 250, i % 250 + 1),
            ProbeEvent::FirstContact,
            T0,
            ok(1),
        ));
    }
    tx.close();
    let counts = writer.finish().unwrap();
    assert_eq!(counts.outcomes, 5500);
    assert!(counts.backpressure > 0);
    assert_eq!(metrics.lost.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(
        metrics.overflow.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 5500);
    assert_eq!(
        count(&reader, "SELECT sum(count) FROM outcome_counts"),
        5500
    );
}

#[test]
fn one_million_outcomes_from_two_threads_all_arrive() {
    const PER_THREAD: u32 = 500_000;
    const PEERS_PER_THREAD: u32 = 25_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("million.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(1000))).unwrap();
    let writer = Writer::start(store, full(), options(5000, 500, 65_536)).unwrap();
    let started = Instant::now();
    let producers: Vec<_> = (0..2u32)
        .map(|thread| {
            let mut tx = writer.sender();
            std::thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let peer = i % PEERS_PER_THREAD;
                    let visit = i / PEERS_PER_THREAD;
                    let ip = std::net::Ipv4Addr::from(0x7f00_0000 | (thread << 16) | peer);
                    let result = if visit % 4 == 3 {
                        ProbeResult::Failed(ErrorClass::TimedOut)
                    } else {
                        ProbeResult::Success(Progress {
                            have: visit * 50,
                            pieces: 1000,
                        })
                    };
                    let event = if visit == 0 {
                        ProbeEvent::FirstContact
                    } else {
                        ProbeEvent::LaterContact
                    };
                    let record = ProbeOutcome {
                        torrent_id: tid,
                        addr: SocketAddr::new(ip.into(), 6881),
                        event,
                        at: T0 + i64::from(visit) * 300_000,
                        result,
                        client: None,
                        peer_id: None,
                        transport: Transport::TCP,
                        connect_ms: Some(1),
                        duration_ms: 10,
                        longest_gap_ms: Some(visit * 100),
                        messages: 3,
                        next_visit_at: None,
                        portless: false,
                    };
                    tx.send(record.into());
                    if i % 1024 == 0 {
                        tx.pump();
                    }
                }
                tx.close();
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    let counts = writer.finish().unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "writer: {} outcomes in {secs:.2} s = {:.0} rows/s ({} batches, {} back-pressure events)",
        counts.outcomes,
        counts.outcomes as f64 / secs,
        counts.batches,
        counts.backpressure
    );
    assert_eq!(counts.outcomes, 1_000_000);
    assert_eq!(counts.errors, 0);
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 50_000);
    assert_eq!(count(&reader, "SELECT sum(attempts) FROM peers"), 1_000_000);
    assert_eq!(
        count(&reader, "SELECT sum(count) FROM outcome_counts"),
        1_000_000
    );
    // Visits 0..19, failures at visits 3, 7, 11, 15, 19: 5 per peer.
    assert_eq!(count(&reader, "SELECT sum(failures) FROM peers"), 250_000);
    // Progress 0 → 0.9 by visit 18 (have = 18 * 50 = 900 of 1000): below 0.98, none confirmed.
    assert_eq!(count(&reader, "SELECT sum(confirmed) FROM peers"), 0);
    assert_eq!(
        count(
            &reader,
            "SELECT count(*) FROM peers WHERE last_progress = 0.9"
        ),
        50_000
    );
}

/// The hand-built scenario of `report_numbers_match_a_hand_built_scenario`.
fn scenario(path: &std::path::Path) -> (TorrentId, TorrentId) {
    let store = Store::open(path).unwrap();
    let a = store.upsert_torrent(&torrent(0xaa, Some(100))).unwrap();
    let b = store.upsert_torrent(&torrent(0xbb, Some(50))).unwrap();
    let writer = Writer::start(store, full(), options(3, 3_600_000, 16)).unwrap();
    let mut tx = writer.sender();
    let (p1, p2, p3, p4, p5) = (
        "10.0.0.1:6881",
        "10.0.0.2:6881",
        "10.0.0.3:6881",
        "[2001:db8::4]:51413",
        "10.0.0.5:7000",
    );
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0,
        torrent_id: a,
        source: PeerSource::TrackerHttp,
        tracker: Some("http://127.0.0.1:1/announce".into()),
        duration_ms: 40,
        error: None,
        peers: vec![addr(p1), addr(p2), addr(p3)],
    }));
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0 + 1000,
        torrent_id: a,
        source: PeerSource::Dht,
        tracker: None,
        duration_ms: 900,
        error: None,
        peers: vec![addr(p1), addr(p4), addr(p4)],
    }));
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0 + 2000,
        torrent_id: a,
        source: PeerSource::TrackerUdp,
        tracker: Some("udp://127.0.0.1:2".into()),
        duration_ms: 15000,
        error: Some("timed out".into()),
        peers: vec![],
    }));
    // The HTTP tracker's schedule: the later record replaces the earlier one.
    for (at, interval, next_secs, decided_by, notes) in [
        (T0, Some(1800), 1800.0, "interval", None),
        (
            T0 + 1500,
            Some(90_000),
            86_400.0,
            "interval",
            Some("interval 90000 s: capped at 86400 s"),
        ),
    ] {
        tx.send(Record::TrackerSchedule(TrackerScheduleRecord {
            at,
            torrent_id: a,
            tracker: "http://127.0.0.1:1/announce".into(),
            interval,
            min_interval: Some(900),
            next_secs,
            decided_by,
            notes: notes.map(String::from),
        }));
    }
    let gaps = [100u32, 150, 250, 400, 900, 1200, 6100, 70_000];
    let mut gap = gaps.iter();
    let mut send = |r: Record| {
        let r = match r {
            Record::Outcome(mut o) => {
                if matches!(o.result, ProbeResult::Success(_)) {
                    o.longest_gap_ms = Some(*gap.next().unwrap());
                }
                Record::Outcome(o)
            }
            other => other,
        };
        tx.send(r);
    };
    use ProbeEvent::*;
    // p1: 50 % → 90 % → 100 %: confirmed.
    send(outcome(a, p1, FirstContact, T0 + 10_000, ok(50)));
    send(outcome(a, p1, LaterContact, T0 + 310_000, ok(90)));
    send(outcome(a, p1, LaterContact, T0 + 610_000, ok(100)));
    // p2: a seeder.
    send(outcome(a, p2, FirstContact, T0 + 10_000, ok(100)));
    send(outcome(a, p2, LaterContact, T0 + 310_000, ok(100)));
    // p3: never reached.
    send(outcome(
        a,
        p3,
        FirstContact,
        T0 + 10_000,
        ProbeResult::Failed(ErrorClass::TimedOut),
    ));
    send(outcome(
        a,
        p3,
        LaterContact,
        T0 + 310_000,
        ProbeResult::Failed(ErrorClass::Refused),
    ));
    send(outcome(
        a,
        p3,
        LaterContact,
        T0 + 610_000,
        ProbeResult::Failed(ErrorClass::TimedOut),
    ));
    // p4: 20 %, a reset, 99 %: confirmed; the failure in between changes nothing.
    send(outcome(a, p4, FirstContact, T0 + 20_000, ok(20)));
    send(outcome(
        a,
        p4,
        LaterContact,
        T0 + 320_000,
        ProbeResult::Failed(ErrorClass::Reset),
    ));
    send(outcome(a, p4, LaterContact, T0 + 620_000, ok(99)));
    // p5: connected to us, never announced.
    send(outcome(a, p5, Incoming, T0 + 700_000, ok(0)));
    // Someone connected asking for a torrent we do not scan.
    send(Record::UnmatchedIncoming {
        at: T0 + 710_000,
        error: ErrorClass::UnknownInfoHash,
    });
    // Scrapes of torrent a: tracker X grows 100 → 104, tracker Y 50 → 60.
    for (at, tracker, downloaded) in [
        (T0, "http://x", 100),
        (T0 + 5000, "http://y", 50),
        (T0 + 600_000, "http://x", 104),
        (T0 + 605_000, "http://y", 60),
    ] {
        tx.send(Record::Scrape(ScrapeRecord {
            at,
            torrent_id: a,
            tracker: tracker.into(),
            complete: 5,
            incomplete: 9,
            downloaded,
        }));
    }
    tx.send(Record::Stats(StatsRecord {
        at: T0 + 720_000,
        peers_known: 5,
        ..Default::default()
    }));
    drop(tx);
    let counts = writer.finish().unwrap();
    assert_eq!(counts.errors, 0);
    (a, b)
}

#[test]
fn report_numbers_match_a_hand_built_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scenario.sqlite");
    let (a, b) = scenario(&path);
    let store = Store::open_existing(&path).unwrap();
    let report = store.report().unwrap();

    // Window: first discovery at T0 to the stats row at T0 + 720 s = 0.2 h, one run.
    assert_eq!(report.window.start, Some(T0));
    assert_eq!(report.window.end, Some(T0 + 720_000));
    assert!((report.window.hours - 0.2).abs() < 1e-12);
    assert_eq!(report.window.runs, 1);

    // Table 5.6. Torrent a: p1..p5 seen; p1, p2, p4, p5 reached; p1 and p4 confirmed.
    let ta = &report.torrents[0];
    assert_eq!(
        (ta.id, ta.peers_seen, ta.peers_evaluated, ta.confirmed),
        (a, 5, 4, 2)
    );
    assert_eq!(ta.info_hash, "aa".repeat(20));
    // Largest tracker growth: y, 60 - 50 = 10; largest latest: x, 104.
    assert_eq!(ta.reported, Some(10));
    assert_eq!(ta.reported_total, Some(104));
    assert!((ta.ratio.unwrap() - 0.2).abs() < 1e-12);
    assert!((ta.confirmed_per_hour.unwrap() - 10.0).abs() < 1e-9);
    let tb = &report.torrents[1];
    assert_eq!(
        (
            tb.id,
            tb.peers_seen,
            tb.peers_evaluated,
            tb.confirmed,
            tb.reported,
            tb.ratio
        ),
        (b, 0, 0, 0, None, None)
    );
    assert_eq!(
        (
            report.total.peers_seen,
            report.total.confirmed,
            report.total.reported
        ),
        (5, 2, Some(10))
    );

    // Table 5.5. HTTP tracker: 3 received, 3 new, unique 3 (p1, p2, p3) → 15 per hour.
    // DHT: 3 received (p1, p4, p4), 1 new (p4), unique 2 (p1, p4) → 10 per hour.
    // UDP tracker: one failed request. Incoming: no requests, 1 unique peer (p5).
    let src = |name: &str| {
        report
            .sources
            .iter()
            .find(|s| s.source == name)
            .unwrap()
            .clone()
    };
    let http = src("tracker_http");
    assert_eq!(
        (http.requests, http.received, http.new, http.unique),
        (1, 3, 3, 3)
    );
    assert_eq!(http.share_new, Some(1.0));
    assert!((http.unique_per_hour.unwrap() - 15.0).abs() < 1e-9);
    let dht = src("dht");
    assert_eq!(
        (dht.requests, dht.received, dht.new, dht.unique),
        (1, 3, 1, 2)
    );
    assert!((dht.share_new.unwrap() - 1.0 / 3.0).abs() < 1e-12);
    let udp = src("tracker_udp");
    assert_eq!(
        (
            udp.requests,
            udp.failed_requests,
            udp.received,
            udp.unique,
            udp.share_new
        ),
        (1, 1, 0, 0, None)
    );
    let inc = src("incoming");
    assert_eq!((inc.requests, inc.unique), (0, 1));

    // Trackers: one line per URL, the latest schedule of each (none for the UDP tracker,
    // which never answered).
    assert_eq!(report.trackers.len(), 2);
    let h = &report.trackers[0];
    assert_eq!(h.tracker, "http://127.0.0.1:1/announce");
    assert_eq!(
        (h.torrents, h.announces, h.failed, h.received, h.new),
        (1, 1, 0, 3, 3)
    );
    assert_eq!(
        (h.interval_secs, h.min_interval_secs, h.effective_secs),
        (Some(90_000), Some(900), Some(86_400.0))
    );
    assert_eq!(h.decided_by.as_deref(), Some("interval"));
    assert_eq!(
        h.notes.as_deref(),
        Some("interval 90000 s: capped at 86400 s")
    );
    let u = &report.trackers[1];
    assert_eq!(u.tracker, "udp://127.0.0.1:2");
    assert_eq!((u.announces, u.failed, u.received), (1, 1, 0));
    assert_eq!(
        (u.interval_secs, u.effective_secs, u.decided_by.clone()),
        (None, None, None)
    );
    assert!(report.sources.iter().all(|s| s.source != "pex"));

    // Table 5.7. First contact: p1, p2, p4 succeed, p3 times out.
    let ev = |name: &str| {
        report
            .outcomes
            .iter()
            .find(|e| e.event == name)
            .unwrap()
            .clone()
    };
    let cells = |e: &report::EventReport| {
        e.classes
            .iter()
            .map(|c| (c.class.clone(), c.count))
            .collect::<Vec<_>>()
    };
    let first = ev("first_contact");
    assert_eq!(first.attempts, 4);
    assert_eq!(
        cells(&first),
        vec![("success".into(), 3), ("timed_out".into(), 1)]
    );
    assert_eq!(first.classes[0].share, 0.75);
    // Every attempt in the scenario took 800 ms and connected in 12 ms.
    assert_eq!(
        (
            first.classes[0].mean_duration_ms,
            first.classes[0].mean_connect_ms
        ),
        (Some(800.0), Some(12.0))
    );
    // Later: p1 ×2, p2 ×1, p4 ×1 succeed; p3 refused + timed out; p4 reset.
    let later = ev("later_contact");
    assert_eq!(later.attempts, 7);
    assert_eq!(
        cells(&later),
        vec![
            ("success".into(), 4),
            ("refused".into(), 1),
            ("reset".into(), 1),
            ("timed_out".into(), 1)
        ]
    );
    let incoming = ev("incoming");
    assert_eq!(
        cells(&incoming),
        vec![("success".into(), 1), ("unknown_info_hash".into(), 1)]
    );
    assert_eq!(incoming.classes[1].share, 0.5);

    // Figure 5.1: 8 successful contacts, buckets 100,100,200,400,900,1200,6100,60000; the
    // 4th smallest is in bucket 400..500.
    assert_eq!(report.gaps.contacts, 8);
    assert_eq!(report.gaps.p50_ms, Some(500));
    assert_eq!(report.gaps.p90_ms, Some(60_000));

    // Figure 5.4: both crossings (T0 + 550 s, T0 + 612.405 s) fall into one 10-minute bucket
    // (buckets start at multiples of 600 s since the epoch: T0 + 400 s .. T0 + 1000 s).
    let series = store.confirmed_series(600_000).unwrap();
    assert_eq!(
        series,
        vec![report::SeriesPoint {
            at: T0 + 400_000,
            key: a.to_string(),
            count: 2,
            new: 0
        }]
    );
    // Figure 5.3: per source, one bucket each (all requests within the first seconds).
    let series = store.discovery_series(600_000).unwrap();
    let by_source: Vec<(&str, i64, i64)> = series
        .iter()
        .map(|p| (p.key.as_str(), p.count, p.new))
        .collect();
    assert_eq!(
        by_source,
        vec![("tracker_http", 3, 3), ("tracker_udp", 0, 0), ("dht", 3, 1)]
    );
    assert!(series.iter().all(|p| p.at == T0 - 200_000));

    // Peer rows.
    let mut peers = Vec::new();
    store.for_each_peer(Some(a), |p| peers.push(p)).unwrap();
    assert_eq!(peers.len(), 5);
    let p1 = &peers[0];
    assert_eq!(
        (p1.ip.as_str(), p1.port, p1.confirmed),
        ("10.0.0.1", 6881, true)
    );
    // 90 % at 310 s, 100 % at 610 s: 0.98 is 8/10 of the way → 310 + 240 = 550 s.
    assert_eq!(p1.crossed_at, Some(T0 + 550_000));
    assert_eq!(
        (p1.first_progress, p1.last_progress),
        (Some(0.5), Some(1.0))
    );
    assert_eq!(p1.sources, "tracker_http+dht");
    assert_eq!(p1.first_source, "tracker_http");
    assert_eq!(p1.client.as_deref(), Some("libtorrent 2.0.11"));
    assert_eq!(p1.transport, "tcp");
    let p2 = &peers[1];
    assert!(!p2.confirmed && p2.crossed_at.is_none());
    let p3 = &peers[2];
    assert_eq!(
        (
            p3.contacts,
            p3.failures,
            p3.last_error.as_deref(),
            p3.first_progress
        ),
        (0, 3, Some("timed_out"), None)
    );
    let p4 = &peers[3];
    assert_eq!(
        (p4.ip.as_str(), p4.contacts, p4.failures, p4.confirmed),
        ("2001:db8::4", 2, 1, true)
    );
    // 20 % at 20 s, 99 % at 620 s: 600 s * (0.98 - 0.2) / (0.99 - 0.2) = 592.405 s.
    assert_eq!(p4.crossed_at, Some(T0 + 20_000 + 592_405));
    assert_eq!(p4.sources, "dht");
    let p5 = &peers[4];
    assert_eq!(
        (p5.sources.as_str(), p5.first_source.as_str(), p5.port),
        ("incoming", "incoming", 7000)
    );

    // Resume: next visits as the scan code set them; addresses come back in full mode.
    let resume = store.load_peers().unwrap();
    let r1 = resume.iter().find(|r| r.ip_key == "10.0.0.1").unwrap();
    assert_eq!(r1.next_visit_at, Some(T0 + 610_000 + 300_000));
    assert_eq!(r1.addr, Some(addr("10.0.0.1:6881")));
    assert!(r1.confirmed && r1.contacted);
    let r3 = resume.iter().find(|r| r.ip_key == "10.0.0.3").unwrap();
    assert_eq!((r3.contacted, r3.consecutive_failures), (false, 3));
}

#[test]
fn a_database_keeps_its_privacy_mode_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.sqlite");
    let hmac = Anonymizer::new(IpMode::Hmac, [5; 32]);
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let writer = Writer::start(store, hmac.clone(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    tx.send(outcome(
        tid,
        "192.0.2.1:6881",
        ProbeEvent::FirstContact,
        T0,
        ok(1),
    ));
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let mut ips = Vec::new();
    store.for_each_peer(None, |p| ips.push(p.ip)).unwrap();
    assert_eq!(
        ips,
        vec![hmac.anonymize("192.0.2.1".parse().unwrap()).shown]
    );
    assert!(!ips[0].contains("192"));
    assert_eq!(store.load_peers().unwrap()[0].addr, None);
    // Another mode, or the same mode with another key, is refused.
    let e = Writer::start(store, full(), options(10, 100, 16))
        .unwrap_err()
        .to_string();
    assert!(e.contains("privacy.ip hmac") && e.contains("full"), "{e}");
    let store = Store::open_existing(&path).unwrap();
    let e = Writer::start(
        store,
        Anonymizer::new(IpMode::Hmac, [6; 32]),
        options(10, 100, 16),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("HMAC key fingerprint"), "{e}");
    let store = Store::open_existing(&path).unwrap();
    Writer::start(store, hmac, options(10, 100, 16))
        .unwrap()
        .finish()
        .unwrap();
}

#[test]
fn restart_adds_a_run_and_keeps_confirming_across_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let writer = Writer::start(store, full(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    tx.send(outcome(
        tid,
        "10.1.1.1:1",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    tx.send(outcome(
        tid,
        "10.1.1.1:1",
        ProbeEvent::LaterContact,
        T0 + 3_600_000,
        ok(20),
    ));
    drop(tx);
    writer.finish().unwrap();
    // The scanner was down for an hour; the second run sees the peer complete.
    let store = Store::open(&path).unwrap();
    let writer = Writer::start(store, full(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    tx.send(outcome(
        tid,
        "10.1.1.1:1",
        ProbeEvent::LaterContact,
        T0 + 7_200_000,
        ok(60),
    ));
    tx.send(outcome(
        tid,
        "10.1.1.1:1",
        ProbeEvent::LaterContact,
        T0 + 9_000_000,
        ok(100),
    ));
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let report = store.report().unwrap();
    // Run 1: 1 h, run 2: 0.5 h; the hour in between does not count.
    assert_eq!(report.window.runs, 2);
    assert!((report.window.hours - 1.5).abs() < 1e-12);
    assert_eq!(report.total.confirmed, 1);
    assert!((report.total.confirmed_per_hour.unwrap() - 1.0 / 1.5).abs() < 1e-12);
}

#[test]
fn writer_registers_torrents_and_starts_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let config =
        crate::config::Config::load(None, &[format!("database={}", db.display())]).unwrap();
    let writer = crate::settings::start_writer(&config).unwrap();
    // The default mode is hmac, with a key created next to the database.
    assert_eq!(
        std::fs::read(dir.path().join("c.sqlite.key"))
            .unwrap()
            .len(),
        32
    );
    let handle = writer.handle();
    let mut magnet = torrent(3, None);
    magnet.source = TorrentSource::Magnet;
    let id = handle.register_torrent(magnet).unwrap();
    assert_eq!(handle.register_torrent(torrent(3, None)).unwrap(), id);
    // Metadata arrives through the record stream.
    let mut tx = writer.sender();
    tx.send(Record::Torrent(torrent(3, Some(77))));
    tx.send(outcome(
        id,
        "198.51.100.7:6881",
        ProbeEvent::FirstContact,
        T0,
        ok(5),
    ));
    drop(tx);
    let counts = writer.finish().unwrap();
    assert_eq!((counts.torrents, counts.outcomes, counts.errors), (3, 1, 0));
    let store = Store::open_existing(&db).unwrap();
    let rows = store.torrents().unwrap();
    assert_eq!((rows.len(), rows[0].piece_count), (1, Some(77)));
    let mut ips = Vec::new();
    store.for_each_peer(None, |p| ips.push(p.ip)).unwrap();
    assert_eq!(ips.len(), 1);
    assert_eq!(ips[0].len(), 32, "hmac hex, not the address: {}", ips[0]);
}

#[test]
fn a_version_1_database_is_migrated_and_reports_its_trackers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.sqlite");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        conn.execute_batch(
            "INSERT INTO torrents (id, info_hash_v1, source, added_at) VALUES (1, 'aa', 'hash', 0);
             INSERT INTO discovery_requests (at, torrent_id, source, tracker, received, new, duplicate, duration_ms)
             VALUES (1000, 1, 2, 'udp://t:1', 4, 4, 0, 20), (2000, 1, 2, 'udp://t:1', 4, 0, 4, 20);",
        )
        .unwrap();
    }
    let store = Store::open_existing(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let report = store.report().unwrap();
    assert_eq!(report.trackers.len(), 1);
    let t = &report.trackers[0];
    assert_eq!((t.announces, t.received, t.new), (2, 8, 4));
    assert_eq!((t.interval_secs, t.effective_secs), (None, None));
    // The text report shows the line with "-" for what the old database does not know.
    let text = crate::cli::report_cmd::render_report(&report);
    assert!(text.contains("udp://t:1"), "{text}");
}

#[test]
fn each_confirmed_crossing_says_how_it_was_seen_and_watched_records_are_not_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seen.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let writer = Writer::start(store, full(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    // Live: below on the probe, then the have that crossed on the watched connection.
    tx.send(outcome(
        tid,
        "10.0.0.1:1",
        ProbeEvent::FirstContact,
        T0,
        ok(50),
    ));
    tx.send(outcome(
        tid,
        "10.0.0.1:1",
        ProbeEvent::Watched,
        T0 + 9_000,
        ok(97),
    ));
    tx.send(outcome(
        tid,
        "10.0.0.1:1",
        ProbeEvent::Watched,
        T0 + 9_400,
        ok(98),
    ));
    tx.send(outcome(
        tid,
        "10.0.0.1:1",
        ProbeEvent::Watched,
        T0 + 9_500,
        ok(100),
    ));
    // Revisit.
    tx.send(outcome(
        tid,
        "10.0.0.2:1",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    tx.send(outcome(
        tid,
        "10.0.0.2:1",
        ProbeEvent::LaterContact,
        T0 + 60_000,
        ok(99),
    ));
    // Incoming (not watched).
    tx.send(outcome(
        tid,
        "10.0.0.3:1",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    tx.send(outcome(
        tid,
        "10.0.0.3:1",
        ProbeEvent::Incoming,
        T0 + 60_000,
        ok(100),
    ));
    // Not confirmed.
    tx.send(outcome(
        tid,
        "10.0.0.4:1",
        ProbeEvent::FirstContact,
        T0,
        ok(100),
    ));
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let mut seen = Vec::new();
    store
        .for_each_peer(None, |p| {
            seen.push((p.port, p.confirmed, p.crossing_seen, p.crossed_at))
        })
        .unwrap();
    let by_ip: Vec<(bool, Option<String>)> = seen.iter().map(|s| (s.1, s.2.clone())).collect();
    assert_eq!(
        by_ip,
        vec![
            (true, Some("live".into())),
            (true, Some("revisit".into())),
            (true, Some("incoming".into())),
            (false, None),
        ]
    );
    // The live crossing lies between the two consecutive watched messages.
    assert_eq!(seen[0].3, Some(T0 + 9_400));
    let report = store.report().unwrap();
    let c = report.total.crossings_seen;
    assert_eq!((c.live, c.revisit, c.incoming), (1, 1, 1));
    let attempts: i64 = report.outcomes.iter().map(|e| e.attempts).sum();
    assert_eq!(
        attempts, 6,
        "watched observations are not evaluation attempts"
    );
    assert_eq!(report.watched.as_ref().map(|w| w.attempts), Some(3));
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_refused_commit_is_retried_with_its_peer_rows_and_nothing_is_counted_before_it_commits() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("retry.sqlite");
    let writer = Writer::start(Store::open(&path).unwrap(), full(), options(10, 50, 1024)).unwrap();
    let tid = writer
        .handle()
        .register_torrent(torrent(7, Some(100)))
        .unwrap();
    let metrics = writer.metrics();
    metrics.inject_disk_full.store(true, Relaxed);
    let mut tx = writer.sender();
    // The discovery creates 50 peer rows that the outcomes after it update; 20 outcomes
    // create their own peer rows (unannounced peers).
    let announced: Vec<SocketAddr> = (0..50)
        .map(|i| addr(&format!("127.3.0.{}:6881", i + 1)))
        .collect();
    tx.send(Record::Discovery(DiscoveryRecord {
        at: T0,
        torrent_id: tid,
        source: PeerSource::TrackerHttp,
        tracker: Some("http://127.0.0.1:1/announce".into()),
        duration_ms: 40,
        error: None,
        peers: announced.clone(),
    }));
    for (i, a) in announced.iter().enumerate() {
        tx.send(outcome(
            tid,
            &a.to_string(),
            ProbeEvent::FirstContact,
            T0 + i as i64,
            ok(10),
        ));
    }
    for i in 0..20 {
        tx.send(outcome(
            tid,
            &format!("127.3.1.{}:6881", i + 1),
            ProbeEvent::Incoming,
            T0,
            ok(50),
        ));
    }
    wait_for("three refused commits", 20, || {
        metrics.failed_commits.load(Relaxed) >= 3
    });
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 0);
    assert_eq!(
        metrics.committed.load(Relaxed),
        0,
        "nothing committed, nothing counted"
    );
    assert_eq!(
        count(&reader, "SELECT coalesce(sum(records), 0) FROM runs"),
        0
    );
    assert_eq!(metrics.spooled.load(Relaxed), 71);
    // The disk is freed: the held records go in, parents first, in one transaction.
    metrics.inject_disk_full.store(false, Relaxed);
    writer.handle().flush().unwrap();
    assert_eq!(metrics.committed.load(Relaxed), 71);
    assert_eq!(metrics.spooled.load(Relaxed), 0);
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 70);
    assert_eq!(
        count(&reader, "SELECT count(*) FROM peers WHERE contacts = 1"),
        70
    );
    assert_eq!(count(&reader, "SELECT sum(count) FROM outcome_counts"), 70);
    assert_eq!(count(&reader, "SELECT count(*) FROM discovery_requests"), 1);
    assert_eq!(count(&reader, "SELECT sum(records) FROM runs"), 71);
    drop(tx);
    let counts = writer.finish().unwrap();
    assert_eq!(
        (counts.records, counts.outcomes, counts.errors),
        (71, 70, 0)
    );
    assert_eq!(counts.new_peers, 70);
    assert_eq!(metrics.lost.load(Relaxed), 0);
    assert!(metrics.failed_commits.load(Relaxed) >= 3);
}

#[test]
fn past_the_spool_bound_records_wait_with_their_producer_and_none_is_lost() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bound.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    // Spool bound = max(channel_capacity, batch_rows) = 8.
    let writer = Writer::start(store, full(), options(8, 20, 8)).unwrap();
    let metrics = writer.metrics();
    metrics.inject_disk_full.store(true, Relaxed);
    let mut tx = writer.sender();
    for i in 0..300u32 {
        tx.send(outcome(
            tid,
            &format!("127.4.{}.{}:6881", i / 250, i % 250 + 1),
            ProbeEvent::FirstContact,
            T0,
            ok(10),
        ));
    }
    std::thread::sleep(Duration::from_millis(400));
    // Spool (8) + channel (8) hold 16; the rest waits with the producer (back-pressure).
    assert!(tx.pump() >= 300 - 16 - 1, "pending {}", tx.pending());
    assert!(
        metrics.spooled.load(Relaxed) <= 9,
        "{}",
        metrics.spooled.load(Relaxed)
    );
    assert!(metrics.backpressure.load(Relaxed) > 0);
    metrics.inject_disk_full.store(false, Relaxed);
    wait_for("the overflow to drain", 30, || tx.pump() == 0);
    tx.close();
    let counts = writer.finish().unwrap();
    assert_eq!(counts.outcomes, 300);
    assert_eq!(metrics.lost.load(Relaxed), 0);
    let reader = Store::open_existing(&path).unwrap();
    assert_eq!(count(&reader, "SELECT count(*) FROM peers"), 300);
    assert_eq!(count(&reader, "SELECT sum(records) FROM runs"), 300);
}

#[test]
fn a_database_that_stays_unwritable_stops_the_writer_with_a_clear_error() {
    use std::sync::atomic::Ordering::Relaxed;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stuck.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let mut opts = options(10, 20, 16);
    opts.unwritable = Duration::from_millis(800);
    let writer = Writer::start(store, full(), opts).unwrap();
    let metrics = writer.metrics();
    metrics.inject_disk_full.store(true, Relaxed);
    let mut tx = writer.sender();
    for i in 0..30u32 {
        tx.send(outcome(
            tid,
            &format!("127.5.0.{}:6881", i + 1),
            ProbeEvent::FirstContact,
            T0,
            ok(10),
        ));
    }
    let started = Instant::now();
    wait_for("the writer to give up", 10, || metrics.failure().is_some());
    assert!(started.elapsed() >= Duration::from_millis(700));
    let why = metrics.failure().unwrap();
    assert!(
        why.contains("store.unwritable_secs") && why.contains("stuck.sqlite"),
        "{why}"
    );
    // Producers never block on a writer that gave up; what they send is counted as lost.
    for i in 0..50u32 {
        tx.send(outcome(
            tid,
            &format!("127.5.1.{}:6881", i + 1),
            ProbeEvent::FirstContact,
            T0,
            ok(10),
        ));
    }
    tx.close();
    assert!(writer.handle().flush().is_err());
    match writer.finish() {
        Err(StoreError::Unwritable(msg)) => {
            assert!(msg.contains("80 records not stored"), "{msg}")
        }
        other => panic!("expected Unwritable, got {other:?}"),
    }
    assert_eq!(metrics.lost.load(Relaxed), 80);
    assert_eq!(metrics.committed.load(Relaxed), 0);
}

#[test]
fn a_download_seen_on_a_portless_incoming_row_and_its_listen_address_counts_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portless.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let writer = Writer::start(store, full(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    let portless = |peer: &str, event, at, have| {
        let Record::Outcome(mut o) = outcome(tid, peer, event, at, ok(have)) else {
            unreachable!()
        };
        o.portless = true;
        Record::Outcome(o)
    };
    // Peer A at [::1]:6001 (its listen port): its crossing seen on our probes at T0+20 s, and
    // on the connection it opened to us from port 50001 (no listen port) 1 s apart; the
    // portless row crosses first.
    tx.send(portless("[::1]:50001", ProbeEvent::Incoming, T0, 40));
    tx.send(portless(
        "[::1]:50001",
        ProbeEvent::Watched,
        T0 + 19_000,
        99,
    ));
    tx.send(outcome(
        tid,
        "[::1]:6001",
        ProbeEvent::FirstContact,
        T0 + 1_000,
        ok(40),
    ));
    tx.send(outcome(
        tid,
        "[::1]:6001",
        ProbeEvent::LaterContact,
        T0 + 20_000,
        ok(99),
    ));
    // Peer B at [::1]:6002: the listen-port row crosses first, then the portless one.
    tx.send(outcome(
        tid,
        "[::1]:6002",
        ProbeEvent::FirstContact,
        T0,
        ok(10),
    ));
    tx.send(outcome(
        tid,
        "[::1]:6002",
        ProbeEvent::LaterContact,
        T0 + 60_000,
        ok(99),
    ));
    tx.send(portless(
        "[::1]:50002",
        ProbeEvent::Incoming,
        T0 + 30_000,
        50,
    ));
    tx.send(portless(
        "[::1]:50002",
        ProbeEvent::Watched,
        T0 + 61_000,
        99,
    ));
    // A portless peer whose crossing matches none: its own download.
    tx.send(portless("[::1]:50003", ProbeEvent::Incoming, T0, 10));
    tx.send(portless(
        "[::1]:50003",
        ProbeEvent::Watched,
        T0 + 200_000,
        99,
    ));
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let mut rows = Vec::new();
    store
        .for_each_peer(None, |p| {
            rows.push((p.port, p.confirmed, p.portless, p.duplicate_of_port))
        })
        .unwrap();
    rows.sort();
    assert_eq!(
        rows,
        vec![
            (6001, true, false, None),
            (6002, true, false, None),
            (50001, false, true, Some(6001)),
            (50002, false, true, Some(6002)),
            (50003, true, true, None),
        ]
    );
    assert_eq!(store.report().unwrap().total.confirmed, 3);
}

fn mmdb(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/mmdb")
        .join(name)
}

fn geo_options() -> WriterOptions {
    WriterOptions {
        geo: geo::GeoPaths {
            city_db: mmdb("GeoIP2-City-Test.mmdb"),
            asn_db: mmdb("GeoLite2-ASN-Test.mmdb"),
        },
        ..options(10, 100, 16)
    }
}

/// Peers are described from the real address although only its keyed hash (or network) is
/// stored; a miss leaves the columns empty; the report groups by country and AS and says why
/// peers have none.
#[test]
fn peers_are_described_from_the_real_address_in_every_privacy_mode() {
    for mode in [IpMode::Full, IpMode::Truncate, IpMode::Hmac] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.sqlite");
        let store = Store::open(&path).unwrap();
        let tid = store.upsert_torrent(&torrent(1, Some(10))).unwrap();
        let anonymizer = Anonymizer::new(mode, [9; 32]);
        let writer = Writer::start(store, anonymizer.clone(), geo_options()).unwrap();
        let mut tx = writer.sender();
        // London (GB) from a tracker, Telstra's network (AS1221, not in the City test
        // database) from the DHT, loopback in no database, and an incoming peer in London.
        tx.send(Record::Discovery(DiscoveryRecord {
            at: T0,
            torrent_id: tid,
            source: PeerSource::TrackerUdp,
            tracker: Some("udp://127.0.0.1:1/announce".into()),
            duration_ms: 1,
            error: None,
            peers: vec![addr("81.2.69.142:6881"), addr("1.128.0.1:6881")],
        }));
        tx.send(Record::Discovery(DiscoveryRecord {
            at: T0,
            torrent_id: tid,
            source: PeerSource::Dht,
            tracker: None,
            duration_ms: 1,
            error: None,
            peers: vec![addr("127.0.0.9:6881"), addr("81.2.69.142:6881")],
        }));
        tx.send(outcome(
            tid,
            "81.2.69.142:6881",
            ProbeEvent::FirstContact,
            T0 + 1000,
            ok(1),
        ));
        tx.send(outcome(
            tid,
            "81.2.69.142:6881",
            ProbeEvent::LaterContact,
            T0 + 2000,
            ok(100),
        ));
        tx.send(outcome(
            tid,
            "[::ffff:81.2.69.143]:7000",
            ProbeEvent::Incoming,
            T0 + 3000,
            ok(5),
        ));
        drop(tx);
        let metrics = writer.metrics();
        writer.finish().unwrap();
        // The metrics' country labels: GB twice (one confirmed), no country for the others.
        assert_eq!(
            metrics.tally.countries(),
            vec![("GB".to_string(), 2, 1), ("unknown".to_string(), 2, 0)],
            "{mode:?}"
        );

        let store = Store::open_existing(&path).unwrap();
        let mut peers = Vec::new();
        store.for_each_peer(None, |p| peers.push(p)).unwrap();
        assert_eq!(peers.len(), 4, "{mode:?}");
        let shown = |ip: &str| anonymizer.anonymize(ip.parse().unwrap()).shown;
        let find = |ip: &str| {
            peers
                .iter()
                .find(|p| p.ip == shown(ip) && p.port == 6881)
                .unwrap()
        };
        if mode != IpMode::Full {
            assert!(
                peers.iter().all(|p| !p.ip.contains("81.2.69.14")),
                "{mode:?}"
            );
        }
        let london = find("81.2.69.142");
        assert_eq!(london.country.as_deref(), Some("GB"), "{mode:?}");
        assert_eq!(london.city.as_deref(), Some("London"));
        assert_eq!(london.continent.as_deref(), Some("EU"));
        assert_eq!((london.asn, london.as_org.as_deref()), (None, None));
        assert!(london.confirmed);
        let telstra = find("1.128.0.1");
        assert_eq!(telstra.asn, Some(1221));
        assert_eq!(telstra.as_org.as_deref(), Some("Telstra Pty Ltd"));
        let loopback = find("127.0.0.9");
        assert_eq!(
            (&loopback.country, &loopback.city, loopback.asn),
            (&None, &None, None)
        );
        let incoming = peers.iter().find(|p| p.port == 7000).unwrap();
        assert_eq!(incoming.country.as_deref(), Some("GB"));
        assert!(peers.iter().all(|p| p.host_domain.is_none()));

        let geo = store.report().unwrap().geo;
        assert_eq!(geo.countries.rows.len(), 1, "{:?}", geo.countries);
        let gb = &geo.countries.rows[0];
        assert_eq!(
            (
                gb.key.as_str(),
                gb.detail.as_deref(),
                gb.peers,
                gb.evaluated,
                gb.confirmed
            ),
            ("GB", Some("EU"), 2, 2, 1)
        );
        assert_eq!(gb.peer_share, 0.5);
        assert_eq!(gb.confirmed_share, Some(1.0));
        // Telstra's network and loopback are not in the City test database.
        assert_eq!(
            (geo.countries.not_looked_up, geo.countries.no_entry),
            (0, 2)
        );
        let note = geo.countries.note.as_deref().unwrap();
        assert!(note.contains("2 of 4 peers have no country: 0 stored while geo.city_db was not set, 2 with no entry"), "{note}");
        assert_eq!(geo.asns.rows.len(), 1);
        assert_eq!(geo.asns.rows[0].key, "1221");
        assert_eq!(geo.asns.rows[0].detail.as_deref(), Some("Telstra Pty Ltd"));
        assert_eq!((geo.asns.not_looked_up, geo.asns.no_entry), (0, 3));
        assert_eq!(geo.asns.unknown_confirmed, 1);
        // London and the incoming peer were reached; they are in no ASN test network.
        assert_eq!(geo.asns.unknown_evaluated, 2);
        let source = geo.countries.source.as_ref().unwrap();
        assert_eq!(source.database_type, "GeoIP2-City");
        assert_eq!(
            geo.asns.source.as_ref().unwrap().database_type,
            "GeoLite2-ASN"
        );
    }
}

/// With geo off nothing is looked up and the report says which key was not set; a later run
/// with the databases fills a row the next time an outcome brings its address.
#[test]
fn geo_off_says_why_and_a_later_run_fills_rows_it_probes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("off.sqlite");
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(10))).unwrap();
    let hmac = Anonymizer::new(IpMode::Hmac, [3; 32]);
    let writer = Writer::start(store, hmac.clone(), options(10, 100, 16)).unwrap();
    let mut tx = writer.sender();
    for ip in ["81.2.69.142:1", "1.128.0.1:1"] {
        tx.send(outcome(tid, ip, ProbeEvent::FirstContact, T0, ok(1)));
    }
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let geo = store.report().unwrap().geo;
    assert!(geo.countries.rows.is_empty() && geo.asns.rows.is_empty());
    assert_eq!(geo.countries.not_looked_up, 2);
    assert!(geo.countries.source.is_none());
    let note = geo.countries.note.unwrap();
    assert!(note.contains("geo.city_db was not set"), "{note}");
    assert!(geo.asns.note.unwrap().contains("geo.asn_db was not set"));

    // Only the ASN database now: the London peer is probed again, the other is not.
    let writer = Writer::start(
        store,
        hmac,
        WriterOptions {
            geo: geo::GeoPaths {
                city_db: Default::default(),
                asn_db: mmdb("GeoLite2-ASN-Test.mmdb"),
            },
            ..options(10, 100, 16)
        },
    )
    .unwrap();
    let mut tx = writer.sender();
    tx.send(outcome(
        tid,
        "1.128.0.1:1",
        ProbeEvent::LaterContact,
        T0 + 1000,
        ok(2),
    ));
    drop(tx);
    writer.finish().unwrap();
    let store = Store::open_existing(&path).unwrap();
    let geo = store.report().unwrap().geo;
    assert_eq!(geo.asns.rows.len(), 1);
    assert_eq!((geo.asns.not_looked_up, geo.asns.no_entry), (1, 0));
    assert!(geo
        .asns
        .note
        .unwrap()
        .contains("1 stored while geo.asn_db was not set"));
    assert_eq!(geo.countries.not_looked_up, 2);
}

#[test]
fn a_bad_geo_database_stops_the_writer_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.sqlite");
    let e = Writer::start(
        Store::open(&path).unwrap(),
        full(),
        WriterOptions {
            geo: geo::GeoPaths {
                city_db: dir.path().join("nope.mmdb"),
                asn_db: Default::default(),
            },
            ..options(10, 100, 16)
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("geo.city_db: cannot read") && e.contains("nope.mmdb"),
        "{e}"
    );
}

/// A writer on `dir/name` that has committed 100 outcomes; `mischief` then happens to the
/// files, 50 more outcomes are sent, and the writer is finished. Returns the writer's
/// complaint (why it stopped) and the error `finish` returned.
fn writer_whose_database_moves(
    dir: &std::path::Path,
    name: &str,
    mischief: impl FnOnce(&std::path::Path),
) -> (String, String) {
    let path = dir.join(name);
    let store = Store::open(&path).unwrap();
    let tid = store.upsert_torrent(&torrent(1, Some(100))).unwrap();
    let writer = Writer::start(store, full(), options(10, 20, 64)).unwrap();
    let metrics = writer.metrics();
    let mut tx = writer.sender();
    let mut send = |range: std::ops::Range<u32>| {
        for i in range {
            tx.send(outcome(
                tid,
                &format!("127.6.{}.{}:6881", i / 200, i % 200 + 1),
                ProbeEvent::FirstContact,
                T0,
                ok(10),
            ));
        }
        tx.pump();
    };
    send(0..100);
    writer.handle().flush().unwrap();
    assert!(metrics.failure().is_none());
    mischief(&path);
    send(100..150);
    writer.handle().flush().unwrap();
    wait_for("the writer to notice", 5, || metrics.failure().is_some());
    let why = metrics.failure().unwrap();
    drop(tx);
    let ended = match writer.finish() {
        Err(StoreError::Moved(msg)) => msg,
        other => panic!("expected Moved, got {other:?}"),
    };
    (why, ended)
}

/// Outcomes, peers and the run's record count in the database at `path`, and its integrity.
fn outcomes_peers_records(path: &std::path::Path) -> (i64, i64, i64) {
    let store = Store::open_existing(path).unwrap();
    let check: String = store
        .connection()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    (
        count(&store, "SELECT coalesce(sum(count), 0) FROM outcome_counts"),
        count(&store, "SELECT count(*) FROM peers"),
        count(&store, "SELECT coalesce(sum(records), 0) FROM runs"),
    )
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_database_removed_under_the_writer_is_restored_at_its_path_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (why, ended) = writer_whose_database_moves(dir.path(), "gone.sqlite", |path| {
        std::fs::remove_file(path).unwrap();
    });
    let path = dir.path().join("gone.sqlite");
    assert!(why.contains("gone.sqlite was removed"), "{why}");
    assert!(
        ended.contains("was removed")
            && ended.contains(&format!("restored at {}", path.display()))
            && ended.ends_with("; 0 records not stored"),
        "{ended}"
    );
    // Our log and shared memory are gone from the old names; only the restored file is left.
    assert_eq!(names_in(dir.path()), ["gone.sqlite"]);
    assert_eq!(outcomes_peers_records(&path), (150, 150, 150));
}

#[test]
fn a_database_replaced_under_the_writer_is_not_written_and_ours_is_saved_next_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let (why, ended) = writer_whose_database_moves(dir.path(), "ours.sqlite", |path| {
        let other = path.with_file_name("theirs.sqlite");
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
        drop(conn);
        std::fs::rename(&other, path).unwrap();
    });
    let path = dir.path().join("ours.sqlite");
    assert!(why.contains("replaced by another file"), "{why}");
    assert!(
        ended.contains("was not touched") && ended.ends_with("; 0 records not stored"),
        "{ended}"
    );
    let names = names_in(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(names[0], "ours.sqlite");
    assert!(names[1].starts_with("ours.sqlite.saved-"), "{names:?}");
    assert!(ended.contains(&names[1]), "{ended}");
    // The other file: still only its own table and row (opened as it is, not migrated).
    let theirs = rusqlite::Connection::open(&path).unwrap();
    let tables: Vec<String> = theirs
        .prepare("SELECT name FROM sqlite_master")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(tables, ["notes"]);
    let check: String = theirs
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(theirs);
    assert_eq!(
        outcomes_peers_records(&dir.path().join(&names[1])),
        (150, 150, 150)
    );
}

#[test]
fn a_database_renamed_under_the_writer_keeps_everything_at_its_new_name() {
    let dir = tempfile::tempdir().unwrap();
    let (why, ended) = writer_whose_database_moves(dir.path(), "scan.sqlite", |path| {
        std::fs::rename(path, path.with_file_name("week1.sqlite")).unwrap();
    });
    let week1 = dir.path().join("week1.sqlite");
    assert!(
        why.contains(&format!("renamed to {}", week1.display())),
        "{why}"
    );
    assert!(
        ended.contains(&format!("is in {}", week1.display()))
            && ended.ends_with("; 0 records not stored"),
        "{ended}"
    );
    // Nothing left at the old name (a fresh start there begins a new database).
    assert_eq!(names_in(dir.path()), ["week1.sqlite"]);
    assert_eq!(outcomes_peers_records(&week1), (150, 150, 150));
}

#[test]
fn a_write_ahead_log_removed_under_the_writer_stops_it_with_everything_in_the_main_file() {
    let dir = tempfile::tempdir().unwrap();
    let (why, ended) = writer_whose_database_moves(dir.path(), "wal.sqlite", |path| {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::remove_file(wal).unwrap();
    });
    assert!(why.contains("wal.sqlite-wal was removed"), "{why}");
    assert!(ended.ends_with("; 0 records not stored"), "{ended}");
    assert_eq!(
        outcomes_peers_records(&dir.path().join("wal.sqlite")),
        (150, 150, 150)
    );
}

#[test]
fn a_database_in_place_is_not_reported_moved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("still.sqlite");
    let mut store = Store::open(&path).unwrap();
    store.upsert_torrent(&torrent(1, None)).unwrap();
    assert_eq!(store.check_place(), None);
    // A second connection opening and closing leaves the log where it was.
    drop(Store::open_existing(&path).unwrap());
    assert_eq!(store.check_place(), None);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(store.check_place(), Some(place::Moved::Removed));
}

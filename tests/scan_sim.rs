//! End to end on the built-in simulated swarm (loopback only): the real engine, trackers
//! (HTTP and UDP), store and CLI. Ground truth comes from the simulation, which knows every
//! peer's progress at every moment and logs every answer it gave.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use swarmscan::config::Config;
use swarmscan::inputs::TorrentInput;
use swarmscan::session::{run_scan, RunOptions};
use swarmscan::sim::{SimOptions, SimSwarm};
use swarmscan::store::Store;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(db: &Path, extra: &[&str]) -> Config {
    let mut set = vec![
        format!("database={:?}", db.display().to_string()),
        format!("net.listen=[\"127.0.0.1:{}\"]", free_port()),
        "engine.workers=2".into(),
        "peer.revisit_secs=2".into(),
        "peer.quiet_timeout_ms=1000".into(),
        "peer.connect_timeout_ms=1000".into(),
        "peer.retry_backoff_secs=2".into(),
        "peer.retry_backoff_max_secs=4".into(),
        "tracker.announce_secs=5".into(),
        "tracker.scrape_secs=5".into(),
        "tracker.timeout_ms=2000".into(),
        "privacy.ip=\"full\"".into(),
        "stats.interval_secs=2".into(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    Config::load(None, &set).unwrap()
}

#[test]
fn confirms_exactly_the_downloads_the_simulation_shows_and_resumes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("scan.sqlite");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 2,
        peers_per_torrent: 30,
        horizon_secs: 12.0,
        addr_octet: 91,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap();
    let cfg = config(&db, &[]);
    let inputs: Vec<TorrentInput> = sim
        .metainfo
        .iter()
        .map(|m| TorrentInput::from_metainfo(m).unwrap())
        .collect();
    let first = run_scan(
        &cfg,
        inputs,
        RunOptions {
            duration: Some(Duration::from_secs(16)),
            status_line: Some(false),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert!(first.probes > 60, "{first:?}");

    let truth = sim.observable_confirmations(cfg.peer.threshold);
    let store = Store::open_existing(&db).unwrap();
    let report = store.report().unwrap();
    let mut confirmed_total = 0;
    for (i, m) in sim.metainfo.iter().enumerate() {
        let t = report
            .torrents
            .iter()
            .find(|t| t.name.as_deref() == Some(m.name.as_str()))
            .expect("torrent in report");
        // Every peer the tracker listed was stored (refusing and silent ones too).
        assert_eq!(t.peers_seen, 30, "{}", m.name);
        assert_eq!(
            t.confirmed as usize, truth[i],
            "{}: confirmed vs. the simulation's answers below then at the threshold",
            m.name
        );
        confirmed_total += t.confirmed;
    }
    assert!(
        confirmed_total > 0,
        "the window must contain finishing peers"
    );
    // Every confirmed peer really finished in the simulation, and no seeder is confirmed.
    let mut confirmed_addrs = Vec::new();
    store
        .for_each_peer(None, |p| {
            if p.confirmed {
                confirmed_addrs.push((p.ip.clone(), p.port));
            }
        })
        .unwrap();
    assert_eq!(confirmed_addrs.len() as i64, confirmed_total);
    let elapsed = sim.peers.elapsed();
    for (ip, port) in &confirmed_addrs {
        let peer = sim
            .peers
            .peers
            .iter()
            .find(|p| p.addr.ip().to_string() == *ip && p.addr.port() == *port)
            .expect("confirmed peer exists in the simulation");
        assert!(
            peer.start_progress < cfg.peer.threshold,
            "a seeder was confirmed: {ip}"
        );
        assert!(
            peer.progress_at(elapsed) >= cfg.peer.threshold,
            "{ip} never finished"
        );
    }
    // The error classes the simulation provokes show up (table 5.7).
    let classes: Vec<String> = report
        .outcomes
        .iter()
        .flat_map(|e| e.classes.iter().map(|c| c.class.clone()))
        .collect();
    for class in ["success", "refused", "timed_out", "unknown_protocol"] {
        assert!(
            classes.iter().any(|c| c == class),
            "no {class} in {classes:?}"
        );
    }
    let probes_before: i64 = report.outcomes.iter().map(|e| e.attempts).sum();
    drop(store);

    // Restart on the same database with no torrent arguments: the torrents and peers come
    // back from the database, and probing continues.
    let second = run_scan(
        &cfg,
        Vec::new(),
        RunOptions {
            duration: Some(Duration::from_secs(4)),
            status_line: Some(false),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(second.torrents, 2);
    assert!(second.probes > 0, "{second:?}");
    let store = Store::open_existing(&db).unwrap();
    let report = store.report().unwrap();
    let probes_after: i64 = report.outcomes.iter().map(|e| e.attempts).sum();
    assert_eq!(
        probes_after,
        probes_before + second.probes as i64,
        "every probe of the second run is stored"
    );
    assert_eq!(report.window.runs, 2);
    for t in &report.torrents {
        if t.id != 0 {
            assert_eq!(t.peers_seen, 30, "restart must not duplicate peers");
        }
    }
}

#[test]
fn sigterm_stops_the_cli_flushes_everything_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cli.sqlite");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 1,
        peers_per_torrent: 20,
        horizon_secs: 30.0,
        addr_octet: 92,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap();
    let torrent = dir.path().join("t.torrent");
    std::fs::write(&torrent, &sim.torrent_files[0]).unwrap();
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let listen = free_port();
    let mut child = Command::new(bin)
        .args(["run", "--for", "60s", "--json"])
        .args(["--set", &format!("database={:?}", db.display().to_string())])
        .args(["--set", &format!("net.listen=[\"127.0.0.1:{listen}\"]")])
        .args([
            "--set",
            "peer.revisit_secs=1",
            "--set",
            "peer.quiet_timeout_ms=800",
        ])
        .args(["--set", "privacy.ip=\"truncate\""])
        .arg(&torrent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(5));
    // Safety: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "exit {status:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON summary on stdout");
    let probes = summary["probes"].as_u64().unwrap();
    assert!(probes > 10, "{summary}");
    // Every probe the scanner counted is in the database.
    let store = Store::open_existing(&db).unwrap();
    let report = store.report().unwrap();
    let stored: i64 = report.outcomes.iter().map(|e| e.attempts).sum();
    assert_eq!(stored as u64, probes);
    // The time series behind figures 5.3 and 5.4: the tracker's addresses per source.
    let series = Command::new(bin)
        .args(["series", "--bucket", "1h", "--set"])
        .arg(format!("database={:?}", db.display().to_string()))
        .output()
        .unwrap();
    assert!(series.status.success());
    let csv = String::from_utf8_lossy(&series.stdout);
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("figure,bucket_start,key,count,new"));
    let received: i64 = lines
        .filter(|l| l.starts_with("5.3_addresses,"))
        .map(|l| l.split(',').nth(3).unwrap().parse::<i64>().unwrap())
        .sum();
    let stored_received: i64 = report.sources.iter().map(|s| s.received).sum();
    assert!(received > 0);
    assert_eq!(received, stored_received, "{csv}");
    // IPs are truncated: no full address is stored.
    let mut ips = Vec::new();
    store
        .for_each_peer(None, |p| {
            ips.push(p.ip.clone());
        })
        .unwrap();
    assert!(!ips.is_empty());
    assert!(ips.iter().all(|ip| ip.ends_with(".0/24")), "{ips:?}");
}

/// The issue-6 setting: a tracker that asks for a long interval, swarmscan told to announce
/// every 2 s regardless, only `net.listen` given. The tracker must see the listen port, get an
/// announce every 2 s, and its listing of swarmscan itself must not be probed.
#[test]
fn respect_interval_false_reannounces_at_announce_secs_with_the_listen_port() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("interval.sqlite");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 1,
        peers_per_torrent: 6,
        horizon_secs: 30.0,
        addr_octet: 93,
        tracker_interval_secs: 3600,
        tracker_min_interval_secs: None,
        tracker_lists_announcer: true,
        ..SimOptions::default()
    })
    .unwrap();
    let torrent = dir.path().join("t.torrent");
    std::fs::write(&torrent, &sim.torrent_files[0]).unwrap();
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let listen = free_port();
    let db_arg = format!("database={:?}", db.display().to_string());
    let out = Command::new(bin)
        .args(["run", "--for", "9s", "--json", "--set", &db_arg])
        .args(["--set", &format!("net.listen=[\"127.0.0.1:{listen}\"]")])
        .args(["--set", "tracker.announce_secs=2"])
        .args(["--set", "tracker.respect_interval=false"])
        .args(["--set", "tracker.timeout_ms=2000"])
        .args([
            "--set",
            "engine.workers=1",
            "--set",
            "engine.pin_workers=false",
        ])
        .args([
            "--set",
            "peer.revisit_secs=2",
            "--set",
            "privacy.ip=\"full\"",
        ])
        .arg(&torrent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON summary on stdout");
    assert_eq!(
        summary["announce_port"].as_u64(),
        Some(listen as u64),
        "{summary}"
    );

    // The tracker was told the listen port, every time.
    let ports = sim.tracker.announced_ports.lock().unwrap().clone();
    assert!(!ports.is_empty());
    assert!(ports.iter().all(|&p| p == listen), "{ports:?} vs {listen}");

    // Re-announced every 2 s over 9 s (HTTP and UDP tracker: ~5 each), although the
    // tracker asked for an hour; the report shows why.
    let report = Command::new(bin)
        .args(["report", "--json", "--set", &db_arg])
        .output()
        .unwrap();
    assert!(report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let trackers = report["trackers"].as_array().unwrap();
    assert_eq!(trackers.len(), 2, "{report}");
    for t in trackers {
        assert!(t["announces"].as_i64().unwrap() >= 3, "{t}");
        assert_eq!(t["failed"].as_i64(), Some(0), "{t}");
        assert_eq!(t["interval_secs"].as_i64(), Some(3600), "{t}");
        assert_eq!(t["effective_secs"].as_f64(), Some(2.0), "{t}");
        assert_eq!(t["decided_by"].as_str(), Some("ours"), "{t}");
    }
    let total: i64 = trackers
        .iter()
        .map(|t| t["announces"].as_i64().unwrap())
        .sum();
    assert_eq!(
        total as u64,
        sim.tracker
            .announces
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let text = Command::new(bin)
        .args(["report", "--set", &db_arg])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Trackers:") && text.contains("3600"),
        "{text}"
    );

    // The tracker listed swarmscan itself (127.0.0.1, listen port) in every answer: dropped,
    // counted, never stored or probed.
    let dropped = summary["own_address_dropped"].as_u64().unwrap();
    assert!(dropped >= total as u64, "{summary}");
    let store = Store::open_existing(&db).unwrap();
    let mut ours = 0;
    store
        .for_each_peer(None, |p| {
            if p.port == listen {
                ours += 1;
            }
        })
        .unwrap();
    assert_eq!(ours, 0, "our own address was stored");
}

/// The default `respect_interval = true`: a tracker's longer interval wins, and an absurd one
/// (over a day) is capped and noted in the report.
#[test]
fn respect_interval_true_waits_the_trackers_interval_capped_at_a_day() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("respect.sqlite");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 1,
        peers_per_torrent: 4,
        horizon_secs: 30.0,
        addr_octet: 94,
        tracker_interval_secs: 200_000,
        tracker_min_interval_secs: Some(30),
        ..SimOptions::default()
    })
    .unwrap();
    let cfg = config(&db, &["tracker.announce_secs=1", "engine.workers=1"]);
    assert!(cfg.tracker.respect_interval, "the default");
    let inputs = vec![TorrentInput::from_metainfo(&sim.metainfo[0]).unwrap()];
    let summary = run_scan(
        &cfg,
        inputs,
        RunOptions {
            duration: Some(Duration::from_secs(5)),
            status_line: Some(false),
            ..RunOptions::default()
        },
    )
    .unwrap();
    assert_eq!(summary.announce_port, cfg.net.listen[0].port());
    let report = Store::open_existing(&db).unwrap().report().unwrap();
    assert_eq!(report.trackers.len(), 2);
    for t in &report.trackers {
        assert_eq!(t.announces, 1, "{t:?}");
        assert_eq!(t.interval_secs, Some(200_000));
        assert_eq!(t.effective_secs, Some(86_400.0), "{t:?}");
        assert_eq!(t.decided_by.as_deref(), Some("interval"));
        assert!(
            t.notes
                .as_deref()
                .is_some_and(|n| n.contains("capped at 86400")),
            "{t:?}"
        );
    }
    let http = report
        .trackers
        .iter()
        .find(|t| t.tracker.starts_with("http"))
        .unwrap();
    assert_eq!(http.min_interval_secs, Some(30));
}

#[test]
fn bad_input_is_a_clear_error_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_swarmscan");
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d8:announce").unwrap();
    let out = Command::new(bin)
        .args(["run", "--for", "5s", "--set"])
        .arg(format!(
            "database={:?}",
            dir.path().join("x.sqlite").display().to_string()
        ))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("bad.torrent") && err.contains("byte"), "{err}");
    let out = Command::new(bin)
        .args([
            "run",
            "--set",
            "peer.treshold=0.5",
            "0123456789abcdef0123456789abcdef01234567",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("peer.treshold"));
    let out = Command::new(bin)
        .args(["run", "--for", "soon", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn shipped_profiles_are_valid_configurations() {
    let profile = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning/1gb-vm.toml");
    let cfg = Config::load(Some(Path::new(profile)), &[]).expect("tuning/1gb-vm.toml");
    assert_eq!(cfg.engine.workers, 1);
    assert_eq!(cfg.engine.max_peers, 4_000_000);
}

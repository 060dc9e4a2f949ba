//! UDP tracker requests leave from the workers' UDP sockets on their rings, not from a
//! socket of discovery's thread pool: the simulated tracker (loopback) sees every connect,
//! announce and scrape come from the listen address at port + worker index, one worker
//! per tracker, with connection ids reused (fewer connects than announces).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Command;

use swarmscan::proto::tracker_udp::Action;
use swarmscan::sim::{SimOptions, SimSwarm};

/// A port `p` with `p` and `p + 1` free for TCP and UDP on 127.0.0.1 and ::1 (two workers).
fn free_port_pair() -> u16 {
    let free = |p: u16| {
        ["127.0.0.1", "::1"].iter().all(|ip| {
            std::net::TcpListener::bind((*ip, p)).is_ok()
                && std::net::UdpSocket::bind((*ip, p)).is_ok()
        })
    };
    for _ in 0..100 {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 65535 && free(p) && free(p + 1) {
            return p;
        }
    }
    panic!("no two free ports in a row on 127.0.0.1 and ::1");
}

#[test]
fn udp_tracker_requests_come_from_the_workers_listen_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("udp.sqlite");
    let sim = SimSwarm::start(&SimOptions {
        torrents: 3,
        peers_per_torrent: 4,
        horizon_secs: 30.0,
        addr_octet: 94,
        tracker_interval_secs: 2,
        ..SimOptions::default()
    })
    .unwrap();
    let mut torrents = Vec::new();
    for (i, bytes) in sim.torrent_files.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.torrent"));
        std::fs::write(&path, bytes).unwrap();
        torrents.push(path);
    }
    let listen = free_port_pair();
    let db_arg = format!("database={:?}", db.display().to_string());
    // Only what a user must give: database, listen address, intervals (and two workers, so
    // that "the worker's socket" is one of two).
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["run", "--for", "7s", "--json", "--set", &db_arg])
        .args(["--set", &format!("net.listen=[\"127.0.0.1:{listen}\"]")])
        .args([
            "--set",
            "tracker.announce_secs=2",
            "--set",
            "tracker.scrape_secs=2",
        ])
        .args(["--set", "engine.workers=2"])
        .args(&torrents)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let requests = sim.tracker.udp_requests.lock().unwrap().clone();
    let count = |a: Action| requests.iter().filter(|(x, _)| *x == a).count();
    let (connects, announces, scrapes) = (
        count(Action::Connect),
        count(Action::Announce),
        count(Action::Scrape),
    );
    // Three torrents announced every 2 s for 7 s; the first scrape 5 s after the start.
    assert!(announces >= 6, "{requests:?}");
    assert!(scrapes >= 1, "{requests:?}");
    // Connection ids are reused for a minute: one connect, all the rest on its id.
    assert_eq!(connects, 1, "{requests:?}");
    // Every request came from one of the workers' UDP sockets (listen port + worker index),
    // the same one each time: the tracker's worker.
    let workers: HashSet<SocketAddr> = (0..2)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], listen + i)))
        .collect();
    let sources: HashSet<SocketAddr> = requests.iter().map(|(_, from)| *from).collect();
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert!(
        sources.is_subset(&workers),
        "{sources:?} not in {workers:?}"
    );

    // The outcomes are recorded as before: announces per tracker, none failed, and the UDP
    // tracker's peers stored under the udp source.
    let report = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["report", "--json", "--set", &db_arg])
        .output()
        .unwrap();
    assert!(report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let udp = report["trackers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tracker"].as_str() == Some(sim.tracker.udp_url().as_str()))
        .unwrap_or_else(|| panic!("no UDP tracker in {report}"))
        .clone();
    assert_eq!(udp["announces"].as_u64(), Some(announces as u64), "{udp}");
    assert_eq!(udp["failed"].as_i64(), Some(0), "{udp}");
    assert_eq!(udp["interval_secs"].as_i64(), Some(2), "{udp}");
}

/// A tracker whose port is closed fails at once (the ICMP error reaches the worker's socket);
/// one that never answers gets BEP 15's retransmission (after `tracker.timeout_ms`, then
/// twice that) and fails as timed out. Both are recorded as failed announces. An IPv6
/// tracker is asked from the worker's IPv6 socket.
#[test]
fn closed_and_silent_udp_trackers_are_recorded_as_failed_announces() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dead.sqlite");
    let closed = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    }; // dropped: nothing listens there now
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    silent
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let silent6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    silent6
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let silent6_addr = silent6.local_addr().unwrap();
    let magnet = format!(
        "magnet:?xt=urn:btih:{}&tr=udp://{closed}/announce&tr=udp://{silent_addr}/announce\
         &tr=udp://{silent6_addr}/announce",
        "ab".repeat(20)
    );
    let listen = free_port_pair();
    let db_arg = format!("database={:?}", db.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_swarmscan"))
        .args(["run", "--for", "4s", "--json", "--set", &db_arg])
        .args([
            "--set",
            &format!("net.listen=[\"127.0.0.1:{listen}\", \"[::1]:{listen}\"]"),
        ])
        // The retransmission schedule, shortened: 0.5 s, then 1 s; failed 1.5 s after the start.
        .args([
            "--set",
            "tracker.timeout_ms=500",
            "--set",
            "tracker.udp_retransmits=1",
        ])
        .args(["--set", "engine.workers=1"])
        .arg(&magnet)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each silent tracker saw the connect twice (sent, then sent again), from the worker's
    // socket of its family, with the same transaction id, and nothing after the request failed.
    for (sock, worker) in [
        (&silent, SocketAddr::from(([127, 0, 0, 1], listen))),
        (&silent6, SocketAddr::new("::1".parse().unwrap(), listen)),
    ] {
        let mut seen = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let req = swarmscan::proto::tracker_udp::Request::decode(&buf[..n]).unwrap();
            seen.push((req, from));
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen.iter().all(|(r, from)| {
            matches!(r, swarmscan::proto::tracker_udp::Request::Connect { .. }) && *from == worker
        }));
        assert_eq!(seen[0].0, seen[1].0);
    }

    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows: Vec<(String, Option<String>, i64, i64)> = conn
        .prepare("SELECT tracker, error, duration_ms, received FROM discovery_requests ORDER BY at")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let of = |addr: SocketAddr| -> Vec<_> {
        let url = format!("udp://{addr}/announce");
        rows.iter().filter(|r| r.0 == url).cloned().collect()
    };
    let closed_rows = of(closed);
    assert_eq!(closed_rows.len(), 1, "{rows:?}");
    let error = closed_rows[0].1.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("unreachable: ") && error.contains("refused"),
        "{error}"
    );
    assert!(closed_rows[0].2 < 1000, "failed at once: {rows:?}");
    for addr in [silent_addr, silent6_addr] {
        let silent_rows = of(addr);
        assert_eq!(silent_rows.len(), 1, "{rows:?}");
        assert_eq!(silent_rows[0].1.as_deref(), Some("timed out"));
        assert!(silent_rows[0].2 >= 1500, "{rows:?}");
        assert_eq!(silent_rows[0].3, 0);
    }
}

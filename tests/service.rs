//! swarmscan as a service, run as a user (or systemd) would run the built binary against the
//! built-in simulated swarm on loopback: the sd_notify protocol on a datagram socket the test
//! listens on (a path and an abstract name, as systemd passes them in `NOTIFY_SOCKET`), the
//! watchdog rule (pings only while every worker loop and the writer make progress), and the
//! Prometheus endpoint checked by an independent parser (Python `prometheus_client`).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::process::free_tcp_port;
use swarmscan::sim::{SimOptions, SimSwarm};

/// A notification socket like systemd's: collects every datagram with the time it came.
struct NotifyListener {
    got: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NotifyListener {
    fn start(sock: UnixDatagram) -> NotifyListener {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, s) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    g.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifyListener {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Every `KEY=value` line received so far, with its time.
    fn lines(&self) -> Vec<(Instant, String)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(t, m)| m.lines().map(|l| (*t, l.to_string())).collect::<Vec<_>>())
            .collect()
    }

    fn wait_for(&self, line: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.lines().iter().any(|(_, l)| l == line) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Kills the child when dropped (a failing assertion must not leave a scanner running).
struct Scan(Child);

impl Drop for Scan {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Scan {
    fn signal(&self, sig: i32) {
        // Safety: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(self.0.id() as i32, sig) }, 0);
    }

    fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.0.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

fn sim(octet: u8) -> SimSwarm {
    SimSwarm::start(&SimOptions {
        torrents: 1,
        peers_per_torrent: 20,
        horizon_secs: 20.0,
        addr_octet: octet,
        tracker_interval_secs: 5,
        ..SimOptions::default()
    })
    .unwrap()
}

/// Starts `swarmscan run` on the simulated swarm's torrent, as a service manager would: the
/// given environment (NOTIFY_SOCKET, WATCHDOG_USEC, ...) and `--set` keys.
fn spawn_scan(dir: &Path, sim: &SimSwarm, env: &[(&str, String)], sets: &[String]) -> Scan {
    let torrent = dir.join("t.torrent");
    std::fs::write(&torrent, &sim.torrent_files[0]).unwrap();
    let db = dir.join("scan.sqlite");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_swarmscan"));
    cmd.args(["run", "--for", "120s"])
        .args(["--set", &format!("database={:?}", db.display().to_string())])
        .args([
            "--set",
            &format!("net.listen=[\"127.0.0.1:{}\"]", free_tcp_port("127.0.0.1")),
        ])
        .args(["--set", "engine.workers=2"])
        .args(["--set", "peer.revisit_secs=1"])
        .args(["--set", "peer.quiet_timeout_ms=800"])
        .args(["--set", "store.batch_ms=200"])
        .args(["--set", "stats.interval_secs=1"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.env("SWARMSCAN_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .arg(&torrent)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Scan(cmd.spawn().unwrap())
}

fn stderr_of(scan: &mut Scan) -> String {
    let mut s = String::new();
    if let Some(mut e) = scan.0.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// `GET path` over HTTP/1.1 on loopback: (status line, headers, body).
fn http_get(port: u16, path: &str) -> (String, String, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: test\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// The notification protocol on a socket of each kind: READY once the scan runs, STATUS
/// with the scan's numbers, WATCHDOG pings (WATCHDOG_USEC set), STOPPING on SIGTERM, exit 0.
#[test]
fn notifies_ready_status_watchdog_and_stopping_on_path_and_abstract_sockets() {
    let sim = sim(95);
    for abstract_name in [false, true] {
        let dir = common::test_dir("swarmscan-notify");
        let (sock, value) = if abstract_name {
            let name = format!("swarmscan-test-notify-{}", std::process::id());
            let addr = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
            (UnixDatagram::bind_addr(&addr).unwrap(), format!("@{name}"))
        } else {
            let path = dir.path().join("notify.sock");
            (
                UnixDatagram::bind(&path).unwrap(),
                path.display().to_string(),
            )
        };
        let listener = NotifyListener::start(sock);
        let mut scan = spawn_scan(
            dir.path(),
            &sim,
            &[
                ("NOTIFY_SOCKET", value.clone()),
                ("WATCHDOG_USEC", "2000000".into()),
            ],
            &[],
        );
        assert!(
            listener.wait_for("READY=1", Duration::from_secs(20)),
            "{value}: no READY=1: {:?}",
            listener.lines()
        );
        std::thread::sleep(Duration::from_secs(4));
        let lines = listener.lines();
        let status: Vec<&String> = lines
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.starts_with("STATUS=peers "))
            .collect();
        let last = status
            .last()
            .unwrap_or_else(|| panic!("{value}: no STATUS: {lines:?}"));
        for part in [
            "peers ",
            "in flight ",
            "watched ",
            "probes/s",
            "confirmed ",
            "writer queue ",
        ] {
            assert!(last.contains(part), "{value}: {last}");
        }
        let pings = lines.iter().filter(|(_, l)| l == "WATCHDOG=1").count();
        // 2 s timeout: a ping every 0.5 s; over 4 s at least 5 even on a slow machine.
        assert!(pings >= 5, "{value}: {pings} pings: {lines:?}");
        assert!(!lines.iter().any(|(_, l)| l == "STOPPING=1"));

        scan.signal(libc::SIGTERM);
        assert!(
            listener.wait_for("STOPPING=1", Duration::from_secs(10)),
            "{value}: no STOPPING=1 after SIGTERM: {:?}",
            listener.lines()
        );
        let status = scan
            .wait(Duration::from_secs(30))
            .expect("exits after SIGTERM");
        let err = stderr_of(&mut scan);
        assert!(status.success(), "{value}: {status:?}: {err}");
        // Not a terminal: no colour codes in the log.
        assert!(
            !err.contains('\u{1b}'),
            "ANSI escapes in a non-terminal log: {err}"
        );
        // At info: a `scan` line per statistics interval (1 s here), never a line per probe.
        let scan_lines = err
            .lines()
            .filter(|l| l.contains(" scan ") && l.contains("peers="))
            .count();
        assert!(scan_lines >= 3, "{value}: {err}");
        let probes: u64 = err
            .lines()
            .filter_map(|l| {
                l.split("probes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        // A line per probe would make at least as many lines as probes (the fixed lines of
        // the start and the summary come on top).
        assert!(
            probes > err.lines().count() as u64,
            "{value}: {probes} probes, {} log lines: {err}",
            err.lines().count()
        );
    }
}

/// WATCHDOG_PID names another process (a child that inherited the variables): no pings.
#[test]
fn no_watchdog_pings_when_watchdog_pid_is_another_process() {
    let sim = sim(96);
    let dir = common::test_dir("swarmscan-notify-pid");
    let path = dir.path().join("notify.sock");
    let listener = NotifyListener::start(UnixDatagram::bind(&path).unwrap());
    let mut scan = spawn_scan(
        dir.path(),
        &sim,
        &[
            ("NOTIFY_SOCKET", path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".into()),
            ("WATCHDOG_PID", "1".into()),
        ],
        &[],
    );
    assert!(listener.wait_for("READY=1", Duration::from_secs(20)));
    std::thread::sleep(Duration::from_secs(2));
    scan.signal(libc::SIGTERM);
    assert!(scan
        .wait(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let lines = listener.lines();
    assert!(!lines.iter().any(|(_, l)| l == "WATCHDOG=1"), "{lines:?}");
    assert!(lines.iter().any(|(_, l)| l.starts_with("STATUS=peers")));
}

/// A worker (or the writer) stuck on purpose: the process lives on, but the pings stop within
/// the stall limit (2 s at WATCHDOG_USEC = 2 s), so systemd would restart the service.
#[test]
fn a_stalled_worker_or_writer_stops_the_watchdog_pings() {
    if !cfg!(debug_assertions) {
        eprintln!("release build: the stall hook SWARMSCAN_DEBUG_STALL is compiled out; skipped");
        return;
    }
    let sim = sim(97);
    for (point, thread) in [("engine", "engine-"), ("writer", "swarmscan-writer")] {
        let dir = common::test_dir("swarmscan-stall");
        let path = dir.path().join("notify.sock");
        let listener = NotifyListener::start(UnixDatagram::bind(&path).unwrap());
        let mut scan = spawn_scan(
            dir.path(),
            &sim,
            &[
                ("NOTIFY_SOCKET", path.display().to_string()),
                ("WATCHDOG_USEC", "2000000".into()),
                ("SWARMSCAN_DEBUG_STALL", format!("{point}:3")),
            ],
            &[],
        );
        assert!(listener.wait_for("READY=1", Duration::from_secs(20)));
        let ready_at = listener
            .lines()
            .iter()
            .find(|(_, l)| l == "READY=1")
            .unwrap()
            .0;
        // Stalls 3 s after the thread started; pings stop ≤ 2 s (the stall limit) later.
        std::thread::sleep(Duration::from_secs(10));
        assert!(
            scan.0.try_wait().unwrap().is_none(),
            "{point}: the process itself lives on"
        );
        let lines = listener.lines();
        let pings: Vec<Duration> = lines
            .iter()
            .filter(|(_, l)| l == "WATCHDOG=1")
            .map(|(t, _)| t.saturating_duration_since(ready_at))
            .collect();
        assert!(
            pings.len() >= 2,
            "{point}: pinged before the stall: {lines:?}"
        );
        let last = *pings.last().unwrap();
        assert!(
            last < Duration::from_secs(6),
            "{point}: pings went on {last:?} after READY: {pings:?}"
        );
        let stalled = lines
            .iter()
            .find(|(_, l)| l.starts_with("STATUS=stalled: "))
            .unwrap_or_else(|| panic!("{point}: no stalled STATUS: {lines:?}"));
        assert!(stalled.1.contains(thread), "{point}: {}", stalled.1);
        // A stuck thread cannot be joined: systemd would kill the process; so does the test.
        scan.signal(libc::SIGKILL);
        scan.wait(Duration::from_secs(10));
        let err = stderr_of(&mut scan);
        assert!(
            err.contains("watchdog pings withheld"),
            "{point}: the log says why: {err}"
        );
    }
}

/// Runs the Python parsers over `text`: (family name → type, sample name+labels → value).
fn parse_with_prometheus_client(text: &str) -> (BTreeMap<String, String>, Vec<(String, f64)>) {
    let py = std::env::var("SWARMSCAN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
families = {}
samples = []
for f in om(text):
    families[f.name] = f.type
    for s in f.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        samples.append([f"{s.name}{{{labels}}}", s.value])
# The classic Prometheus text parser reads it too.
classic = sum(len(f.samples) for f in prom(text))
assert classic > 0
print(json.dumps({"families": families, "samples": samples}))
"#;
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{py}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client rejected the metrics (needs `{py} -c 'import prometheus_client'`: \
         scripts/test installs it into its Python venv; or set SWARMSCAN_PYTHON): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let families = v["families"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| (k.clone(), t.as_str().unwrap().to_string()))
        .collect();
    let samples = v["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_f64().unwrap()))
        .collect();
    (families, samples)
}

fn value(samples: &[(String, f64)], name_and_labels: &str) -> f64 {
    samples
        .iter()
        .filter(|(n, _)| n.starts_with(name_and_labels))
        .map(|(_, v)| v)
        .sum()
}

/// GET /metrics during a scan of the simulated swarm: the series the issue lists, accepted by
/// the OpenMetrics and the classic Prometheus parsers, and no address or info-hash anywhere.
#[test]
fn metrics_endpoint_serves_the_scan_in_a_format_prometheus_parses() {
    let sim = sim(98);
    let dir = common::test_dir("swarmscan-metrics");
    let port = free_tcp_port("127.0.0.1");
    let mut scan = spawn_scan(
        dir.path(),
        &sim,
        &[],
        &[format!("metrics.listen=\"{port}\"")],
    );
    let start = Instant::now();
    let (families, samples, text) = loop {
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            scan.0.try_wait().unwrap().is_none(),
            "the scan ended: {}",
            stderr_of(&mut scan)
        );
        let Ok(_) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            assert!(start.elapsed() < Duration::from_secs(20), "no endpoint");
            continue;
        };
        let (status, headers, body) = http_get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            headers.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
            "{headers}"
        );
        let (families, samples) = parse_with_prometheus_client(&body);
        let answered = value(&samples, "swarmscan_probes_total{") > 20.0
            && value(&samples, "swarmscan_writer_batches_total") > 0.0
            && value(&samples, "swarmscan_client_answers_total{") > 0.0
            // The first DHT lookups are due 3 s after the start.
            && value(&samples, "swarmscan_dht_lookups_no_nodes_total") > 0.0;
        if answered || start.elapsed() > Duration::from_secs(30) {
            break (families, samples, body);
        }
    };
    // Kept for a look with SWARMSCAN_KEEP_TEST_DIR=1.
    std::fs::write(dir.path().join("metrics.txt"), &text).unwrap();
    for (family, kind) in [
        ("swarmscan_probes", "counter"),
        ("swarmscan_probes_in_flight", "gauge"),
        ("swarmscan_watched_connections", "gauge"),
        ("swarmscan_peers_known", "gauge"),
        ("swarmscan_discovery_requests", "counter"),
        ("swarmscan_discovery_addresses", "counter"),
        ("swarmscan_writer_queue_records", "gauge"),
        ("swarmscan_writer_commit_seconds", "histogram"),
        ("swarmscan_writer_batch_records", "histogram"),
        ("swarmscan_confirmed_downloads", "counter"),
        ("swarmscan_client_answers", "counter"),
        ("swarmscan_peers_stored", "counter"),
        ("swarmscan_confirmed_downloads_by_country", "counter"),
        ("swarmscan_threads_stalled", "gauge"),
        ("swarmscan_build_info", "gauge"),
        // The UDP plane.
        ("swarmscan_udp_datagrams_received", "counter"),
        ("swarmscan_utp_connects_started", "counter"),
        ("swarmscan_utp_connects", "counter"),
        ("swarmscan_utp_incoming", "counter"),
        ("swarmscan_utp_connections", "gauge"),
        ("swarmscan_utp_reset_by_peer", "counter"),
        ("swarmscan_utp_resets_sent", "counter"),
        ("swarmscan_utp_resets_suppressed", "counter"),
        ("swarmscan_utp_ignored_packets", "counter"),
        ("swarmscan_dht_queries_sent", "counter"),
        ("swarmscan_dht_replies", "counter"),
        ("swarmscan_dht_query_timeouts", "counter"),
        ("swarmscan_dht_replies_unmatched", "counter"),
        ("swarmscan_dht_queries_received", "counter"),
        ("swarmscan_dht_garbage", "counter"),
        ("swarmscan_dht_datagrams", "counter"),
        ("swarmscan_dht_bytes", "counter"),
        ("swarmscan_dht_datagrams_unsent", "counter"),
        ("swarmscan_dht_lookups_started", "counter"),
        ("swarmscan_dht_lookups", "counter"),
        ("swarmscan_dht_lookups_no_nodes", "counter"),
        ("swarmscan_dht_lookups_running", "gauge"),
        ("swarmscan_dht_lookup_peers", "counter"),
        ("swarmscan_dht_announces_received", "counter"),
        ("swarmscan_dht_routing_nodes", "gauge"),
        ("swarmscan_udp_tracker_replies_dropped", "counter"),
        ("swarmscan_udp_tracker_requests_unsent", "counter"),
    ] {
        assert_eq!(
            families.get(family).map(String::as_str),
            Some(kind),
            "{family}: {families:?}"
        );
    }
    let probes_ok = value(&samples, "swarmscan_probes_total{family=\"ipv4\",kind=\"first_contact\",outcome=\"success\",transport=\"tcp\"}");
    assert!(probes_ok > 0.0, "{text}");
    // The simulation refuses and resets some connections (table 5.7 classes).
    assert!(
        samples
            .iter()
            .any(|(n, v)| n.starts_with("swarmscan_probes_total{")
                && !n.contains("success")
                && *v > 0.0),
        "{text}"
    );
    assert!(value(&samples, "swarmscan_peers_known") > 0.0);
    assert!(
        value(
            &samples,
            "swarmscan_discovery_requests_total{result=\"ok\",source=\"tracker_"
        ) > 0.0,
        "{text}"
    );
    assert!(value(&samples, "swarmscan_writer_commit_seconds_count") > 0.0);
    assert!(value(&samples, "swarmscan_writer_batch_records_count") > 0.0);
    assert!(
        value(
            &samples,
            "swarmscan_client_answers_total{client=\"qBittorrent\"}"
        ) > 0.0,
        "{text}"
    );
    assert_eq!(value(&samples, "swarmscan_threads_stalled"), 0.0);
    // No GeoIP database here: every peer under "unknown" (tests/geo_scan.rs has countries).
    assert!(
        value(
            &samples,
            "swarmscan_peers_stored_total{country=\"unknown\"}"
        ) > 0.0,
        "{text}"
    );
    // The UDP plane. Every uTP connect that is over is counted once, under one result, and
    // each outgoing uTP probe recorded had its connect counted first.
    let utp_started = value(&samples, "swarmscan_utp_connects_started_total");
    assert!(
        value(&samples, "swarmscan_utp_connects_total{") <= utp_started,
        "{text}"
    );
    let utp_probes: f64 = samples
        .iter()
        .filter(|(n, _)| {
            n.starts_with("swarmscan_probes_total{")
                && n.contains("transport=\"utp")
                && !n.contains("kind=\"incoming\"")
        })
        .map(|(_, v)| v)
        .sum();
    assert!(utp_started >= utp_probes, "{text}");
    // Loopback sockets and no bootstrap: the DHT node runs, knows nobody, and says so.
    assert!(
        samples
            .iter()
            .any(|(n, _)| n
                == "swarmscan_dht_routing_nodes{family=\"ipv4\",node=\"0\",status=\"good\"}"),
        "{text}"
    );
    assert_eq!(value(&samples, "swarmscan_dht_lookups_started_total"), 0.0);
    assert!(
        value(&samples, "swarmscan_dht_lookups_no_nodes_total") > 0.0,
        "{text}"
    );
    // The simulation's UDP tracker answered (connect, announce) on the workers' sockets, and
    // nothing it sent was taken for a forgery.
    if value(
        &samples,
        "swarmscan_discovery_requests_total{result=\"ok\",source=\"tracker_udp\"}",
    ) > 0.0
    {
        assert!(
            value(
                &samples,
                "swarmscan_udp_datagrams_received_total{kind=\"tracker\"}"
            ) >= 2.0,
            "{text}"
        );
    }
    assert_eq!(
        value(
            &samples,
            "swarmscan_udp_tracker_replies_dropped_total{reason=\"forged\"}"
        ),
        0.0
    );
    // Bounded labels only: no address, no info-hash.
    assert!(!text.contains("127."), "an address in the metrics: {text}");
    let hash = swarmscan::proto::hex::encode(&sim.metainfo[0].info_hashes.wire_ids()[0]);
    assert!(!text.to_lowercase().contains(&hash), "{text}");

    // Every series the Grafana dashboard queries is served.
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/grafana-swarmscan.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("swarmscan_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                queried.push(name);
            }
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    for name in queried {
        assert!(
            samples
                .iter()
                .any(|(n, _)| n.split('{').next() == Some(name.as_str())),
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }

    // Anything else is 404; the endpoint is GET only.
    assert_eq!(http_get(port, "/nope").0, "HTTP/1.1 404 Not Found");
    scan.signal(libc::SIGTERM);
    let status = scan
        .wait(Duration::from_secs(30))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{}", stderr_of(&mut scan));
}

/// systemd/swarmscan.service passes `systemd-analyze verify` (with ExecStart at the binary
/// just built, since verify checks it exists), and the sysusers.d and tmpfiles.d snippets make
/// the user and directories in a scratch root.
#[test]
fn the_unit_and_its_snippets_pass_systemd_own_checks() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = common::test_dir("swarmscan-unit");
    let unit = std::fs::read_to_string(repo.join("systemd/swarmscan.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/swarmscan run"));
    let unit = unit.replace("/usr/local/bin/swarmscan", env!("CARGO_BIN_EXE_swarmscan"));
    let path = dir.path().join("swarmscan.service");
    std::fs::write(&path, unit).unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (Debian: apt-get install systemd)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {:?}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let warnings = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert!(warnings.trim().is_empty(), "verify warned: {warnings}");
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "MemoryHigh=",
        "MemoryMax=",
    ] {
        assert!(
            std::fs::read_to_string(&path).unwrap().contains(key),
            "{key}"
        );
    }

    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", root.display()))
        .arg(repo.join("systemd/swarmscan.sysusers.conf")));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains("swarmscan:x:"), "{passwd}");
    // Safety: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the tmpfiles.d snippet (it chowns) is not applied; skipped");
        return;
    }
    run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", root.display()))
        .arg("--create")
        .arg(repo.join("systemd/swarmscan.tmpfiles.conf")));
    for d in ["etc/swarmscan/torrents", "var/lib/swarmscan"] {
        assert!(root.join(d).is_dir(), "{d}");
    }
}

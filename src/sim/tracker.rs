//! A simulated tracker on loopback, speaking HTTP (announce + scrape) and UDP (BEP 15), that
//! hands out the simulated peers and reports a scrape `downloaded` count. It counts announces
//! and remembers the port each one announced, so tests can check what a client told it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::proto::http::{self, ResponseLimits};
use crate::proto::tracker_http::{self, AnnounceResponse, ScrapeEntry, ScrapeResponse};
use crate::proto::tracker_udp::{self, AddressFamily, Request, Response, ScrapeStats};

/// What the tracker knows about one torrent at a moment.
pub trait SwarmView: Send + Sync + 'static {
    /// Index of the torrent with this info-hash.
    fn torrent(&self, info_hash: &[u8; 20]) -> Option<usize>;
    /// Peers announced for the torrent (up to `max`), seeders, leechers, and completed downloads.
    fn peers(&self, torrent: usize, max: usize) -> (Vec<SocketAddr>, u64, u64, u64);
}

/// How the simulated tracker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTrackerOptions {
    /// `interval` sent with every announce answer (HTTP and UDP).
    pub interval_secs: u32,
    /// `min interval` sent in HTTP answers (`None` = not sent; UDP has no such field).
    pub min_interval_secs: Option<u32>,
    /// List the announcer itself (its source IP and announced port) among the peers, as
    /// trackers that list every announcer do.
    pub list_announcer: bool,
}

impl SimTrackerOptions {
    /// `interval` as given, `min interval` half of it, the announcer not listed.
    pub fn with_interval(interval_secs: u32) -> SimTrackerOptions {
        SimTrackerOptions {
            interval_secs,
            min_interval_secs: Some(interval_secs / 2),
            list_announcer: false,
        }
    }
}

/// Running tracker: `http_url()` and `udp_url()` go into the torrents' announce lists.
pub struct SimTracker {
    pub http_addr: SocketAddr,
    pub udp_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub announces: Arc<AtomicU64>,
    pub scrapes: Arc<AtomicU64>,
    /// The port of every announce, in arrival order (HTTP `port`, UDP `port` field).
    pub announced_ports: Arc<Mutex<Vec<u16>>>,
    /// Every UDP request (connect, announce, scrape) and the address it came from.
    pub udp_requests: Arc<Mutex<Vec<(tracker_udp::Action, SocketAddr)>>>,
}

impl SimTracker {
    pub fn start(view: Arc<dyn SwarmView>, interval_secs: u32) -> std::io::Result<SimTracker> {
        SimTracker::start_with(view, SimTrackerOptions::with_interval(interval_secs))
    }

    pub fn start_with(
        view: Arc<dyn SwarmView>,
        opts: SimTrackerOptions,
    ) -> std::io::Result<SimTracker> {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        tcp.set_nonblocking(true)?;
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        udp.set_read_timeout(Some(Duration::from_millis(50)))?;
        let http_addr = tcp.local_addr()?;
        let udp_addr = udp.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let announces = Arc::new(AtomicU64::new(0));
        let scrapes = Arc::new(AtomicU64::new(0));
        let announced_ports = Arc::new(Mutex::new(Vec::new()));
        let udp_requests = Arc::new(Mutex::new(Vec::new()));
        let counters = Counters {
            udp_requests: udp_requests.clone(),
            announces: announces.clone(),
            scrapes: scrapes.clone(),
            ports: announced_ports.clone(),
        };
        let mut threads = Vec::new();
        {
            let (view, stop, counters) = (view.clone(), stop.clone(), counters.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("sim-http-tracker".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match tcp.accept() {
                                Ok((s, from)) => serve_http(&*view, s, from, &opts, &counters),
                                Err(_) => std::thread::sleep(Duration::from_millis(10)),
                            }
                        }
                    })?,
            );
        }
        {
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("sim-udp-tracker".into())
                    .spawn(move || serve_udp(&*view, &udp, &opts, &stop, &counters))?,
            );
        }
        Ok(SimTracker {
            http_addr,
            udp_addr,
            stop,
            threads,
            announces,
            scrapes,
            announced_ports,
            udp_requests,
        })
    }

    pub fn http_url(&self) -> String {
        format!("http://{}/announce", self.http_addr)
    }

    pub fn udp_url(&self) -> String {
        format!("udp://{}/announce", self.udp_addr)
    }

    /// The name of a tracker thread that ended before [`SimTracker::stop`] (it panicked).
    pub fn ended_thread(&self) -> Option<String> {
        crate::threads::first_finished(&self.threads)
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for SimTracker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the serving threads count.
#[derive(Clone)]
struct Counters {
    announces: Arc<AtomicU64>,
    scrapes: Arc<AtomicU64>,
    ports: Arc<Mutex<Vec<u16>>>,
    udp_requests: Arc<Mutex<Vec<(tracker_udp::Action, SocketAddr)>>>,
}

impl Counters {
    fn announce(&self, port: u16) {
        self.announces.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut p) = self.ports.lock() {
            p.push(port);
        }
    }
}

fn serve_http(
    view: &dyn SwarmView,
    mut s: TcpStream,
    from: SocketAddr,
    opts: &SimTrackerOptions,
    counters: &Counters,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    let head = loop {
        if Instant::now() > deadline {
            return;
        }
        match http::parse_request_head(&buf, ResponseLimits::default()) {
            Ok(Some((head, _))) => break head,
            Ok(None) => {}
            Err(_) => return,
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let (path, query) = head.target.split_once('?').unwrap_or((&head.target, ""));
    let body = if path.ends_with("/announce") {
        match tracker_http::parse_announce_query(query) {
            Ok(req) => match view.torrent(&req.params.info_hash) {
                Some(t) => {
                    counters.announce(req.params.port);
                    let want = req.params.numwant.unwrap_or(50) as usize;
                    let (mut peers, seeders, leechers, downloaded) = view.peers(t, want);
                    if opts.list_announcer {
                        peers.push(SocketAddr::new(from.ip(), req.params.port));
                    }
                    AnnounceResponse {
                        interval: Some(opts.interval_secs),
                        min_interval: opts.min_interval_secs,
                        complete: Some(seeders),
                        incomplete: Some(leechers),
                        downloaded: Some(downloaded),
                        peers,
                        ..AnnounceResponse::default()
                    }
                    .encode()
                }
                None => failure("unregistered torrent"),
            },
            Err(e) => failure(&e.to_string()),
        }
    } else if path.ends_with("/scrape") {
        counters.scrapes.fetch_add(1, Ordering::Relaxed);
        match tracker_http::parse_scrape_query(query) {
            Ok(hashes) => ScrapeResponse {
                files: hashes
                    .iter()
                    .filter_map(|h| {
                        let t = view.torrent(h)?;
                        let (_, complete, incomplete, downloaded) = view.peers(t, 0);
                        Some(ScrapeEntry {
                            info_hash: *h,
                            complete,
                            downloaded,
                            incomplete,
                            name: None,
                        })
                    })
                    .collect(),
                min_request_interval: None,
                ..ScrapeResponse::default()
            }
            .encode(),
            Err(e) => failure(&e.to_string()),
        }
    } else {
        let _ = s
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let mut resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    resp.extend_from_slice(&body);
    let _ = s.write_all(&resp);
}

fn failure(reason: &str) -> Vec<u8> {
    tracker_http::TrackerFailure {
        reason: reason.to_string(),
        retry_in_minutes: None,
        retry_never: false,
    }
    .encode()
}

fn serve_udp(
    view: &dyn SwarmView,
    sock: &UdpSocket,
    opts: &SimTrackerOptions,
    stop: &AtomicBool,
    counters: &Counters,
) {
    let mut buf = [0u8; 2048];
    // Connection ids: a keyed value per client address, as real trackers do.
    let key = 0x5eed_0000_1234_5678u64 ^ std::process::id() as u64;
    let conn_id = |a: &SocketAddr| -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (key, a).hash(&mut h);
        h.finish()
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let Ok(req) = Request::decode(&buf[..n]) else {
            continue;
        };
        if let Ok(mut r) = counters.udp_requests.lock() {
            r.push((req.action(), from));
        }
        let family = AddressFamily::of(&from);
        let resp = match req {
            Request::Connect { transaction_id } => Response::Connect {
                transaction_id,
                connection_id: conn_id(&from),
            },
            Request::Announce(a) if a.connection_id == conn_id(&from) => {
                match view.torrent(&a.info_hash) {
                    Some(t) => {
                        counters.announce(a.port);
                        let want = if a.num_want < 0 {
                            50
                        } else {
                            a.num_want as usize
                        };
                        let (mut peers, seeders, leechers, _) = view.peers(t, want);
                        if opts.list_announcer {
                            peers.push(SocketAddr::new(from.ip(), a.port));
                        }
                        Response::Announce(tracker_udp::AnnounceResponse {
                            transaction_id: a.transaction_id,
                            interval: opts.interval_secs,
                            leechers: leechers as u32,
                            seeders: seeders as u32,
                            peers: peers
                                .into_iter()
                                .filter(|p| p.is_ipv4() == from.is_ipv4())
                                .collect(),
                        })
                    }
                    None => Response::Error {
                        transaction_id: a.transaction_id,
                        message: "unregistered torrent".into(),
                    },
                }
            }
            Request::Scrape(sc) if sc.connection_id == conn_id(&from) => {
                counters.scrapes.fetch_add(1, Ordering::Relaxed);
                Response::Scrape {
                    transaction_id: sc.transaction_id,
                    stats: sc
                        .info_hashes
                        .iter()
                        .map(|h| match view.torrent(h) {
                            Some(t) => {
                                let (_, seeders, leechers, completed) = view.peers(t, 0);
                                ScrapeStats {
                                    seeders: seeders as u32,
                                    completed: completed as u32,
                                    leechers: leechers as u32,
                                }
                            }
                            None => ScrapeStats {
                                seeders: 0,
                                completed: 0,
                                leechers: 0,
                            },
                        })
                        .collect(),
                }
            }
            other => Response::Error {
                transaction_id: other.transaction_id(),
                message: "invalid connection id".into(),
            },
        };
        let _ = sock.send_to(&resp.to_bytes(family), from);
    }
}

//! Step 1: everything a scan needs, opened and checked, no thread started yet.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::engine::EngineConfig;
use crate::inputs::{now_unix_ms, TorrentInput};
use crate::proto::probe::ProbeSettings;
use crate::scan::blocklist::Blocklist;
use crate::scan::catalog::{Catalog, CatalogTorrent};
use crate::scan::own_addr::OwnAddresses;
use crate::scan::peer_ids::PeerIds;
use crate::service::notify::Notifier;
use crate::settings::ScanSettings;
use crate::store::writer::Writer;
use crate::store::Store;

/// How a scan is run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Print the live one-line status (default: when stderr is a terminal).
    pub status_line: Option<bool>,
    /// TLS configuration for https trackers, when the caller already built it from
    /// `tracker.ca_files` (`swarmscan run` does, to fail with exit code 2 before anything
    /// starts); None = built here.
    pub tracker_tls: Option<Arc<rustls::ClientConfig>>,
    /// Set by SIGUSR1 (`swarmscan add` / `remove` waking the scan): read the `torrents` table
    /// now rather than at the next poll. The caller registers the handler before it writes
    /// the pid file, so the signal never meets the default action (which ends the process).
    pub wake: Option<Arc<AtomicBool>>,
    /// SIGHUP: where to read the configuration again (see `session::reload`).
    pub reload: Option<Reload>,
}

/// How a running scan reloads its configuration on SIGHUP.
#[derive(Debug, Clone)]
pub struct Reload {
    /// Set by SIGHUP (handler registered by the caller).
    pub signal: Arc<AtomicBool>,
    /// The same `--config FILE` and `--set`s the scan was started with.
    pub config: crate::config::ConfigArgs,
}

/// A scan with its database open and its settings resolved; [`Built::start`] starts it.
pub(super) struct Built {
    pub(super) opts: RunOptions,
    /// Set by SIGINT/SIGTERM, by the monitor, or by a worker that cannot start.
    pub(super) stop: Arc<AtomicBool>,
    pub(super) started: Instant,
    /// The configuration as started (SIGHUP compares the file read again with it).
    pub(super) config: Config,
    pub(super) settings: ScanSettings,
    pub(super) blocklist: Arc<Blocklist>,
    pub(super) tracker_tls: Arc<rustls::ClientConfig>,
    pub(super) notifier: Notifier,
    pub(super) metrics_listener: Option<std::net::TcpListener>,
    /// Every torrent scanned: those given plus those already in the database.
    pub(super) inputs: Vec<TorrentInput>,
    pub(super) writer: Writer,
    pub(super) catalog: Arc<Catalog>,
    /// The engine's settings with the worker count and listen ports resolved.
    pub(super) engine: EngineConfig,
    /// Our peer-id for this run and the port announced (0 = none).
    pub(super) peer_id: [u8; 20],
    pub(super) listen_port: u16,
    pub(super) own: Arc<OwnAddresses>,
    pub(super) peer_ids: Arc<PeerIds>,
    /// Every probe's settings, with this run's peer-id.
    pub(super) probe: Arc<ProbeSettings>,
}

impl Built {
    /// Checks and opens everything: a bad blocklist, CA file or taken port is an error that
    /// touches nothing; only then the database is opened.
    pub(super) fn build(
        config: &Config,
        inputs: Vec<TorrentInput>,
        opts: RunOptions,
    ) -> Result<Built, String> {
        let stop = Arc::new(AtomicBool::new(false));
        register_signals(&stop)?;
        let started = Instant::now();
        // Every setting below comes from here: one translation of the config, tested key by key.
        let mut s = ScanSettings::from(config);
        if s.reverse_dns.on {
            // The system resolver, read now; the writer asks for lookups, worker 0 sends them.
            s.reverse_dns.resolver = Some(crate::scan::rdns::resolver(s.reverse_dns.resolver)?);
        }
        let blocklist = Arc::new(Blocklist::load(&s.blocklist_file)?);
        let tracker_tls = match opts.tracker_tls.clone() {
            Some(t) => t,
            None => {
                crate::scan::tls::client_config(&s.tracker.ca_files).map_err(|e| e.to_string())?
            }
        };
        let notifier = Notifier::from_env();
        let metrics_listener = match s.metrics_listen {
            Some(addr) => {
                if !addr.ip().is_loopback() && s.metrics_allow_remote {
                    tracing::warn!(%addr, "metrics.allow_remote: serving metrics beyond loopback");
                }
                Some(crate::service::prometheus::bind(addr)?)
            }
            None => None,
        };

        // The torrents already in the database (from `add` or an earlier run), read before the
        // writer takes it. A torrent `swarmscan remove` took out is resumed only when it is
        // given again (that adds it back). Their peers are streamed into the peer tables later
        // (`start`), once the tables exist: never all of them in one list.
        let known_torrents = {
            let store = Store::open(&s.database).map_err(|e| e.to_string())?;
            for t in &inputs {
                let id = store.upsert_torrent(&t.record).map_err(|e| e.to_string())?;
                if store.mark_added(id).map_err(|e| e.to_string())? {
                    tracing::info!(torrent = %t.name, "given again: added back to the scan");
                }
            }
            let removed: std::collections::HashSet<i64> = store
                .torrent_states()
                .map_err(|e| e.to_string())?
                .into_iter()
                .filter_map(|(id, removed_at)| removed_at.map(|_| id))
                .collect();
            let mut known = store.torrents().map_err(|e| e.to_string())?;
            known.retain(|row| !removed.contains(&row.id));
            known
        };
        let mut inputs = inputs;
        for row in known_torrents {
            let Some(t) = TorrentInput::from_row(row) else {
                continue;
            };
            let given = inputs
                .iter()
                .any(|i| i.wire_hash == t.wire_hash || i.alt_hash == Some(t.wire_hash));
            if !given {
                inputs.push(t);
            }
        }

        let writer = Writer::start_with(&s.database, s.privacy.0, &s.privacy.1, s.writer.clone())
            .map_err(|e| e.to_string())?;
        let handle = writer.handle();
        let mut torrents = Vec::new();
        for t in &inputs {
            let db_id = handle.register_torrent(t.record.clone())?;
            torrents.push(CatalogTorrent {
                db_id,
                wire_hash: t.wire_hash,
                alt_hash: t.alt_hash,
                name: t.name.clone(),
                piece_count: t.piece_count.into(),
                total_size: t.total_size,
                trackers: t.trackers.clone(),
            });
        }
        if torrents.is_empty() {
            return Err(format!(
                "nothing to scan: give .torrent files, magnet links or info-hashes (the database {} has no torrents yet)",
                s.database.display()
            ));
        }
        let catalog = Catalog::with_metadata_limits(torrents, s.metadata);

        let listen_addrs = resolve_listen_ports(&s.engine.listen)?;
        if let (true, Some(resolver)) = (s.reverse_dns.on, s.reverse_dns.resolver) {
            crate::scan::rdns::check_reachable(resolver, &listen_addrs)?;
        }
        let workers = if s.engine.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            s.engine.workers
        };
        let engine = EngineConfig {
            workers,
            listen: listen_addrs.clone(),
            // One UDP socket per listen address and worker (port + worker index): the DHT,
            // uTP and UDP trackers share it; worker 0's is on the announced port. With no
            // listener, an IPv4 socket on a port of the kernel's choosing, so that UDP
            // trackers can still be asked (as discovery's own socket did before).
            udp: if listen_addrs.is_empty() {
                vec![SocketAddr::from(([0, 0, 0, 0], 0))]
            } else {
                listen_addrs.clone()
            },
            ..s.engine.clone()
        };
        crate::engine::net::raise_nofile_limit(
            engine.descriptors_needed(),
            &format!(
                "peer.max_in_flight = {} + peer.max_watched = {} + peer.max_incoming = {}",
                engine.max_in_flight, engine.max_held, engine.max_incoming
            ),
        )?;

        // The configured prefix (also in `s.probe.peer_id`), then digits unique to this run.
        let peer_id = our_peer_id(&config.peer.peer_id_prefix);
        let listen_port = announce_port(s.probe.listen_port, &listen_addrs);
        if listen_port == 0 {
            tracing::warn!(
                "net.listen is empty and net.announce_port = 0: announcing port 0, so no peer can dial \
                 in (some HTTP trackers refuse port 0; set net.announce_port if yours does)"
            );
        } else {
            tracing::info!(
                port = listen_port,
                "announcing this TCP port to trackers and peers"
            );
        }
        let own = Arc::new(OwnAddresses::new(&listen_addrs, listen_port));
        // No `p` (listen port) in our extension handshake: Transmission and libtorrent map a
        // connection that names one to their entry for (our ip, p) and drop a new connection
        // while the old one is still registered (a second or so after we closed it), which
        // blocks the quick fresh look a peer that quits on finishing needs. Peers learn our
        // listen port from the trackers we announce it to.
        let probe = Arc::new(ProbeSettings {
            peer_id,
            listen_port: 0,
            // The DHT bit in our handshake and the `port` message name node 0 (worker 0's UDP
            // socket on the first listen address); a read-only node answers no one.
            dht_port: match listen_addrs.first() {
                Some(a) if s.dht.enabled && !s.dht.read_only => a.port(),
                _ => 0,
            },
            ..s.probe.clone()
        });
        Ok(Built {
            opts,
            stop,
            started,
            config: config.clone(),
            settings: s,
            blocklist,
            tracker_tls,
            notifier,
            metrics_listener,
            inputs,
            writer,
            catalog,
            engine,
            peer_id,
            listen_port,
            own,
            peer_ids: Arc::new(PeerIds::default()),
            probe,
        })
    }
}

/// Listen addresses with port 0 get a concrete free port, so that every worker listens on the
/// same port and that port can be announced.
fn resolve_listen_ports(listen: &[SocketAddr]) -> Result<Vec<SocketAddr>, String> {
    listen
        .iter()
        .map(|&a| {
            if a.port() != 0 {
                return Ok(a);
            }
            let probe = std::net::TcpListener::bind(a)
                .and_then(|l| l.local_addr())
                .map_err(|e| format!("net.listen: {a}: {e}"))?;
            Ok(SocketAddr::new(a.ip(), probe.port()))
        })
        .collect()
}

/// The port announced to trackers and peers: `net.announce_port`, or else the port of the first
/// listener, or 0 (nothing listens) when there is none.
pub fn announce_port(configured: u16, listen: &[SocketAddr]) -> u16 {
    if configured != 0 {
        configured
    } else {
        listen.first().map_or(0, |a| a.port())
    }
}

/// Set by SIGINT/SIGTERM.
fn register_signals(stop: &Arc<AtomicBool>) -> Result<(), String> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    Ok(())
}

/// `prefix`, then digits unique to this run, so two scanners don't share a peer-id.
fn our_peer_id(prefix: &str) -> [u8; 20] {
    let mut id = [b'0'; 20];
    let p = prefix.as_bytes();
    id[..p.len().min(20)].copy_from_slice(&p[..p.len().min(20)]);
    let mut x = now_unix_ms() as u64 ^ (std::process::id() as u64).rotate_left(32);
    for b in id.iter_mut().skip(p.len().min(20)) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = b'0' + (x % 10) as u8;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_port_follows_the_first_listener_unless_set() {
        let listen: Vec<SocketAddr> = vec![
            "127.0.0.1:7001".parse().unwrap(),
            "[::1]:7002".parse().unwrap(),
        ];
        assert_eq!(announce_port(0, &listen), 7001);
        assert_eq!(announce_port(51413, &listen), 51413);
        assert_eq!(
            announce_port(0, &[]),
            0,
            "nothing listens: nothing announced"
        );
        assert_eq!(announce_port(6881, &[]), 6881);
    }

    #[test]
    fn listen_port_zero_becomes_a_concrete_free_port() {
        let given: Vec<SocketAddr> = vec![
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:7003".parse().unwrap(),
        ];
        let resolved = resolve_listen_ports(&given).unwrap();
        assert_eq!(resolved.len(), 2);
        assert_ne!(resolved[0].port(), 0);
        assert_eq!(resolved[0].ip(), given[0].ip());
        assert_eq!(resolved[1], given[1]);
        let e = resolve_listen_ports(&["192.0.2.1:0".parse().unwrap()]).unwrap_err();
        assert!(e.contains("net.listen") && e.contains("192.0.2.1"), "{e}");
    }

    #[test]
    fn our_peer_id_keeps_the_prefix_and_fills_digits() {
        let id = our_peer_id("-SS0100-");
        assert_eq!(&id[..8], b"-SS0100-");
        assert!(id[8..].iter().all(u8::is_ascii_digit));
    }
}

//! Host domains of peers from reverse DNS (`geo.reverse_dns`), the writer's side.
//!
//! The writer decides which addresses to look up, because it is where a peer is first stored
//! with its real address and where the cache is: when a peer row without a host domain is
//! written and the `host_domains` cache has no answer for its address, the real address goes
//! to worker 0 through a bounded channel ([`HostLookups`]); worker 0 asks the resolver
//! ([`crate::scan::rdns`]) and sends the answer back as a [`HostDomainRecord`]. The answer is
//! cached under the anonymised address (`privacy.ip`: under `hmac` only the keyed hash and the
//! domain are stored, never the address or the full PTR name), and copied to every peer row of
//! that address, with the [`LOOKED_UP`] bit set in `geo_lookup`.
//!
//! A name and "no name" (NXDOMAIN, no PTR) are final: a later run does not ask again. A
//! failure (timeouts, SERVFAIL) is cached too, so that this run does not ask again, and
//! asked again by a later run.

use std::collections::HashSet;
use std::net::IpAddr;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rusqlite::{params, Connection, OptionalExtension};

use super::record::{HostAnswer, HostDomainRecord, UnixMs};

/// `geo_lookup` bit: reverse DNS gave a final answer for the peer's address (`host_domain` is
/// its registrable domain, or NULL for no name).
pub const LOOKED_UP: u8 = 4;

/// Addresses waiting for worker 0 at most: at a few queries per second this is minutes of
/// work; an address that finds the channel full is asked for when its peer is next written.
pub const LOOKUP_QUEUE: usize = 1024;

/// `host_domains.result` values.
const NAME: &str = "name";
const NO_NAME: &str = "no_name";
const FAILED: &str = "failed";

/// The writer's end of the lookup channel, with the addresses sent and not answered yet (so
/// each is asked for once; bounded by the channel plus worker 0's pending table).
pub struct HostLookups {
    tx: Sender<IpAddr>,
    requested: HashSet<IpAddr>,
    /// Failures cached before this are asked again (they are from an earlier run).
    run_started_at: UnixMs,
}

impl HostLookups {
    /// A channel of [`LOOKUP_QUEUE`] addresses; the receiver goes to worker 0.
    pub fn new(run_started_at: UnixMs) -> (HostLookups, Receiver<IpAddr>) {
        let (tx, rx) = crossbeam_channel::bounded(LOOKUP_QUEUE);
        (
            HostLookups {
                tx,
                requested: HashSet::new(),
                run_started_at,
            },
            rx,
        )
    }

    /// Peer row `id` (address `ip`, stored as `ip_key`) has no final host domain: fills it from
    /// the cache, or asks for the address.
    pub fn fill_or_request(
        &mut self,
        conn: &Connection,
        id: i64,
        ip_key: &str,
        ip: IpAddr,
    ) -> rusqlite::Result<()> {
        let cached: Option<(Option<String>, String, UnixMs)> = conn
            .prepare_cached(
                "SELECT domain, result, looked_up_at FROM host_domains WHERE ip_key = ?1",
            )?
            .query_row([ip_key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        match cached {
            Some((domain, result, _)) if result != FAILED => {
                conn.prepare_cached(
                    "UPDATE peers SET host_domain = ?2, geo_lookup = geo_lookup | ?3 WHERE id = ?1",
                )?
                .execute(params![id, domain, LOOKED_UP])?;
            }
            // Failed in this run: not again until the next.
            Some((_, _, at)) if at >= self.run_started_at => {}
            _ => {
                let ip = super::anon::canonical_ip(ip);
                if !self.requested.contains(&ip) {
                    match self.tx.try_send(ip) {
                        Ok(()) => {
                            self.requested.insert(ip);
                        }
                        // Asked for again when the peer is next written.
                        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A peer row that exists already was named again (discovery): asks for its address when
    /// no answer came for it yet (e.g. the run that stored it ended before the answer).
    pub fn known_peer(
        &mut self,
        conn: &Connection,
        torrent_id: i64,
        ip_key: &str,
        port: u16,
        ip: IpAddr,
    ) -> rusqlite::Result<()> {
        let row: Option<(i64, i64)> = conn
            .prepare_cached(
                "SELECT id, geo_lookup FROM peers WHERE torrent_id = ?1 AND ip_key = ?2 AND port = ?3",
            )?
            .query_row(params![torrent_id, ip_key, port], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        match row {
            Some((id, bits)) if bits & i64::from(LOOKED_UP) == 0 => {
                self.fill_or_request(conn, id, ip_key, ip)
            }
            _ => Ok(()),
        }
    }

    /// Stores an answer under `ip_key` (the anonymised `h.ip`) and on the address's peer rows.
    pub fn store_answer(
        &mut self,
        conn: &Connection,
        ip_key: &str,
        h: &HostDomainRecord,
    ) -> rusqlite::Result<()> {
        self.requested.remove(&super::anon::canonical_ip(h.ip));
        let (domain, result) = match &h.answer {
            HostAnswer::Domain(d) => (Some(d.as_str()), NAME),
            HostAnswer::NoName => (None, NO_NAME),
            HostAnswer::Failed => (None, FAILED),
        };
        conn.prepare_cached(
            "INSERT INTO host_domains (ip_key, domain, result, looked_up_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (ip_key) DO UPDATE SET domain = excluded.domain, result = excluded.result,
                looked_up_at = excluded.looked_up_at",
        )?
        .execute(params![ip_key, domain, result, h.at])?;
        if result != FAILED {
            // Every torrent's rows of the address, through the (torrent_id, ip_key, port) index.
            conn.prepare_cached(
                "UPDATE peers SET host_domain = ?2, geo_lookup = geo_lookup | ?3
                 WHERE torrent_id IN (SELECT id FROM torrents) AND ip_key = ?1",
            )?
            .execute(params![ip_key, domain, LOOKED_UP])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpMode;
    use crate::store::anon::Anonymizer;
    use crate::store::record::{DiscoveryRecord, PeerSource, Record, TorrentRecord, TorrentSource};
    use crate::store::writer::{Writer, WriterOptions};
    use crate::store::Store;
    use std::net::SocketAddr;
    use std::time::Duration;

    fn options() -> WriterOptions {
        WriterOptions {
            batch_rows: 10,
            batch_ms: 50,
            channel_capacity: 64,
            threshold: 0.98,
            unwritable: Duration::from_secs(60),
            geo: Default::default(),
            reverse_dns: true,
        }
    }

    fn torrent(byte: u8) -> TorrentRecord {
        TorrentRecord {
            info_hash_v1: Some([byte; 20]),
            info_hash_v2: None,
            name: Some(format!("t{byte}")),
            piece_count: Some(10),
            piece_length: Some(16_384),
            total_size: Some(163_840),
            source: TorrentSource::File,
            added_at: 1,
            trackers: vec![],
        }
    }

    fn discovered(torrent_id: i64, peers: &[&str]) -> Record {
        Record::Discovery(DiscoveryRecord {
            at: crate::inputs::now_unix_ms(),
            torrent_id,
            source: PeerSource::TrackerHttp,
            tracker: None,
            duration_ms: 1,
            error: None,
            peers: peers
                .iter()
                .map(|p| p.parse::<SocketAddr>().unwrap())
                .collect(),
        })
    }

    fn answer(ip: &str, answer: HostAnswer) -> Record {
        Record::HostDomain(HostDomainRecord {
            at: crate::inputs::now_unix_ms(),
            ip: ip.parse().unwrap(),
            answer,
        })
    }

    /// (ip, port, host_domain, geo_lookup) of every peer row.
    fn peers(path: &std::path::Path) -> Vec<(String, u16, Option<String>, u8)> {
        let store = Store::open(path).unwrap();
        let mut stmt = store
            .connection()
            .prepare("SELECT ip, port, host_domain, geo_lookup FROM peers ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn drain(rx: &Receiver<IpAddr>) -> Vec<IpAddr> {
        // The writer works on its own thread: wait for what it sends.
        let mut got = Vec::new();
        while let Ok(ip) = rx.recv_timeout(Duration::from_millis(300)) {
            got.push(ip);
        }
        got
    }

    #[test]
    fn answers_are_cached_by_anonymised_address_and_not_asked_for_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let anonymizer = Anonymizer::new(IpMode::Hmac, [3; 32]);
        let store = Store::open(&path).unwrap();
        let a = store.upsert_torrent(&torrent(1)).unwrap();
        let b = store.upsert_torrent(&torrent(2)).unwrap();

        // Run 1: three addresses (one on two ports) are asked for once each.
        let mut writer = Writer::start(store, anonymizer.clone(), options()).unwrap();
        let rx = writer.take_host_lookups().expect("reverse_dns on");
        let mut tx = writer.sender();
        tx.send(discovered(
            a,
            &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.1:2"],
        ));
        tx.send(discovered(a, &["10.0.0.1:3", "10.0.0.4:1"]));
        tx.pump();
        let ips = |s: &[&str]| {
            s.iter()
                .map(|s| s.parse().unwrap())
                .collect::<Vec<IpAddr>>()
        };
        assert_eq!(
            drain(&rx),
            ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
        );
        tx.send(answer(
            "10.0.0.1",
            HostAnswer::Domain("example-isp.co.uk".into()),
        ));
        tx.send(answer("10.0.0.2", HostAnswer::NoName));
        tx.send(answer("10.0.0.3", HostAnswer::Failed));
        // Failed in this run: not asked again in this run.
        tx.send(discovered(b, &["10.0.0.3:1"]));
        tx.pump();
        assert_eq!(drain(&rx), Vec::<IpAddr>::new());
        tx.close();
        writer.finish().unwrap();

        let rows = peers(&path);
        let hash = |ip: &str| anonymizer.anonymize(ip.parse().unwrap()).shown;
        let domain_of = |ip: &str| {
            rows.iter()
                .filter(|r| r.0 == hash(ip))
                .map(|r| (r.2.clone(), r.3 & LOOKED_UP))
                .collect::<Vec<_>>()
        };
        let named = (Some("example-isp.co.uk".to_string()), LOOKED_UP);
        assert_eq!(domain_of("10.0.0.1"), vec![named.clone(); 3]);
        assert_eq!(domain_of("10.0.0.2"), vec![(None, LOOKED_UP)]);
        assert_eq!(domain_of("10.0.0.3"), vec![(None, 0); 2]);
        // Only keyed hashes and domains in the cache: no address.
        let store = Store::open(&path).unwrap();
        let cache: Vec<(String, Option<String>, String)> = store
            .connection()
            .prepare("SELECT ip_key, domain, result FROM host_domains ORDER BY result")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(cache.len(), 3);
        assert!(cache.iter().all(|c| !c.0.contains("10.0.0")), "{cache:?}");
        assert_eq!(cache[0].2, "failed");
        assert_eq!(
            cache[1],
            (
                hash("10.0.0.1"),
                Some("example-isp.co.uk".into()),
                "name".into()
            )
        );
        assert_eq!(cache[2].2, "no_name");

        // Run 2: new rows of known addresses come from the cache; the failure is asked again,
        // and so is the address never answered (the run that stored it ended first).
        std::thread::sleep(Duration::from_millis(5));
        let mut writer = Writer::start(store, anonymizer.clone(), options()).unwrap();
        let rx = writer.take_host_lookups().unwrap();
        let mut tx = writer.sender();
        tx.send(discovered(b, &["10.0.0.1:9", "10.0.0.2:9", "10.0.0.3:9"]));
        tx.send(discovered(a, &["10.0.0.4:1", "10.0.0.1:1"]));
        tx.pump();
        assert_eq!(drain(&rx), ips(&["10.0.0.3", "10.0.0.4"]));
        tx.close();
        writer.finish().unwrap();
        let rows = peers(&path);
        let port9: Vec<_> = rows
            .iter()
            .filter(|r| r.1 == 9)
            .map(|r| r.2.clone())
            .collect();
        assert_eq!(port9, [Some("example-isp.co.uk".to_string()), None, None]);
    }

    #[test]
    fn reverse_dns_off_asks_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("o.sqlite")).unwrap();
        let mut writer = Writer::start(
            store,
            Anonymizer::new(IpMode::Full, [0; 32]),
            WriterOptions {
                reverse_dns: false,
                ..options()
            },
        )
        .unwrap();
        assert!(writer.take_host_lookups().is_none());
        writer.finish().unwrap();
    }
}

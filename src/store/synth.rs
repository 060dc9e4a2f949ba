//! A synthetic study database for benchmarks and tests of reports, plots and exports at scale
//! (`swarmscan synth-db`): labelled torrents, peers whose progress histories go through the
//! real confirmation rule ([`super::confirmation::apply_contact`]), discovery requests, scrapes,
//! outcome counts, the gap histogram and a run. Deterministic for a seed.
//!
//! With `geo_columns` it also adds and fills the peer-description columns (`country`, `city`,
//! `continent`, `asn`, `as_org`, `host_domain`) when the schema does not have them yet, so
//! the reports' GeoIP tables can be exercised before that migration exists.

use super::confirmation::{apply_contact, Contact, ProgressState};
use super::record::{PeerSource, Transport};
use super::{Store, StoreError, TorrentRecord, TorrentSource};
use rusqlite::params;

/// What to generate.
#[derive(Debug, Clone)]
pub struct SynthOptions {
    /// Peers over all torrents.
    pub peers: u64,
    /// Torrents (labelled "<1GB", "1-10GB", ">10GB" in turn).
    pub torrents: u32,
    /// Add and fill the GeoIP / host-domain columns.
    pub geo_columns: bool,
    /// PRNG seed.
    pub seed: u64,
}

/// What was generated.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SynthCounts {
    /// Peer rows.
    pub peers: u64,
    /// Confirmed downloads among them.
    pub confirmed: u64,
    /// Discovery request rows.
    pub discovery_requests: u64,
    /// Scrape rows.
    pub scrapes: u64,
}

/// splitmix64: small, fast, good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// An index into `weights`, chosen in proportion to them.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
        let mut pick = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if pick < u64::from(*w) {
                return i;
            }
            pick -= u64::from(*w);
        }
        weights.len() - 1
    }
}

/// (peer-id prefix, client name as the extension handshake would give it, weight).
const CLIENTS: &[(&str, &str, u32)] = &[
    ("-qB4630-", "qBittorrent 4.6.3", 30),
    ("-UT355S-", "µTorrent 3.5.5", 22),
    ("-TR4050-", "Transmission 4.0.5", 14),
    ("-BT7a4S-", "BitTorrent 7.10.4", 8),
    ("-DE13F0-", "Deluge 1.3.15", 6),
    ("-LT2010-", "libtorrent/2.0.10", 6),
    ("-BC0205-", "BitComet 2.05", 5),
    ("-qB4510-", "qBittorrent 4.5.1", 5),
    ("-TR3000-", "Transmission 3.00", 4),
];

/// (country, continent, city, weight).
const COUNTRIES: &[(&str, &str, &str, u32)] = &[
    ("US", "NA", "New York", 18),
    ("DE", "EU", "Berlin", 10),
    ("FR", "EU", "Paris", 8),
    ("GB", "EU", "London", 7),
    ("BR", "SA", "São Paulo", 7),
    ("IN", "AS", "Mumbai", 7),
    ("RU", "EU", "Moscow", 6),
    ("CA", "NA", "Toronto", 5),
    ("NL", "EU", "Amsterdam", 5),
    ("JP", "AS", "Tokyo", 4),
    ("PL", "EU", "Warsaw", 4),
    ("AU", "OC", "Sydney", 3),
    ("ES", "EU", "Madrid", 3),
    ("IT", "EU", "Rome", 3),
    ("KR", "AS", "Seoul", 2),
    ("ZA", "AF", "Johannesburg", 1),
];

/// (ASN, organisation, host domain) per country index, two each; seedbox hosts last.
const NETWORKS: &[(i64, &str, &str)] = &[
    (7922, "Comcast Cable", "comcast.net"),
    (701, "Verizon Business", "verizon.net"),
    (3320, "Deutsche Telekom AG", "t-ipconnect.de"),
    (3209, "Vodafone GmbH", "vodafone-ip.de"),
    (3215, "Orange S.A.", "orange.fr"),
    (12322, "Free SAS", "proxad.net"),
    (2856, "British Telecommunications", "bt.com"),
    (5089, "Virgin Media", "virginm.net"),
    (28573, "Claro NXT", "claro.net.br"),
    (18881, "Telefonica Brasil", "gvt.net.br"),
    (9829, "BSNL", "bsnl.in"),
    (55836, "Reliance Jio", "jio.com"),
    (12389, "Rostelecom", "rt.ru"),
    (8402, "Beeline", "corbina.ru"),
    (812, "Rogers", "rogers.com"),
    (577, "Bell Canada", "bell.ca"),
    (1136, "KPN", "kpn.net"),
    (33915, "Vodafone Libertel", "ziggo.nl"),
    (2516, "KDDI", "dion.ne.jp"),
    (4713, "NTT", "ocn.ne.jp"),
    (5617, "Orange Polska", "neoplus.adsl.tpnet.pl"),
    (12741, "Netia", "netia.com.pl"),
    (1221, "Telstra", "bigpond.net.au"),
    (4804, "Optus", "optusnet.com.au"),
    (3352, "Telefonica de Espana", "rima-tde.net"),
    (12479, "Orange Espagne", "orange.es"),
    (3269, "Telecom Italia", "telecomitalia.it"),
    (30722, "Vodafone Italia", "vodafone.it"),
    (4766, "Korea Telecom", "kornet.net"),
    (9318, "SK Broadband", "skbroadband.com"),
    (3741, "Internet Solutions", "is.co.za"),
    (37457, "Telkom SA", "telkom.co.za"),
];

/// Seedbox providers: a share of peers in any country sits in one of them.
const SEEDBOXES: &[(i64, &str, &str)] = &[
    (24940, "Hetzner Online GmbH", "your-server.de"),
    (16276, "OVH SAS", "ovh.net"),
    (12876, "Scaleway", "scaleway.com"),
];

const LABELS: [&str; 3] = ["<1GB", "1-10GB", ">10GB"];

/// Study length: 34 hours, as the thesis' scan.
const WINDOW_MS: i64 = 34 * 3_600_000;
const START_MS: i64 = 1_700_000_000_000;
const THRESHOLD: f64 = 0.98;

fn io_err(store: &Store) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| store.err(e)
}

/// Fills `store` (a fresh database) with a synthetic study.
pub fn fill(store: &mut Store, options: &SynthOptions) -> Result<SynthCounts, StoreError> {
    let mut rng = Rng(options.seed);
    let mut counts = SynthCounts::default();
    if options.geo_columns {
        let have = store.peer_columns()?;
        for (column, kind) in [
            ("country", "TEXT"),
            ("city", "TEXT"),
            ("continent", "TEXT"),
            ("asn", "INTEGER"),
            ("as_org", "TEXT"),
            ("host_domain", "TEXT"),
        ] {
            if !have.iter().any(|c| c == column) {
                store
                    .conn
                    .execute_batch(&format!("ALTER TABLE peers ADD COLUMN {column} {kind}"))
                    .map_err(io_err(store))?;
            }
        }
    }
    let torrents = options.torrents.max(1);
    // (id, pieces, piece length)
    let mut rows = Vec::new();
    for i in 0..torrents {
        let label = LABELS[i as usize % LABELS.len()];
        let (pieces, piece_length): (u32, u64) = match label {
            "<1GB" => (1400, 1 << 19),
            "1-10GB" => (2600, 1 << 21),
            _ => (5200, 1 << 23),
        };
        let mut hash = [0u8; 20];
        hash[..8].copy_from_slice(&rng.next().to_be_bytes());
        hash[8..16].copy_from_slice(&rng.next().to_be_bytes());
        hash[16..].copy_from_slice(&(i + 1).to_be_bytes());
        let id = store.upsert_torrent(&TorrentRecord {
            info_hash_v1: Some(hash),
            info_hash_v2: None,
            name: Some(format!("synthetic-{}-{label}", i + 1)),
            piece_count: Some(pieces),
            piece_length: Some(piece_length),
            total_size: Some(u64::from(pieces) * piece_length),
            source: TorrentSource::Hash,
            added_at: START_MS,
            trackers: vec![vec!["udp://tracker.example:1337/announce".into()]],
        })?;
        store.add_labels(id, &[label.to_string()])?;
        rows.push((id, pieces, piece_length));
    }
    let geo = options.geo_columns;
    let tx = store.conn.unchecked_transaction().map_err(io_err(store))?;
    {
        let geo_cols = if geo {
            ", country, city, continent, asn, as_org, host_domain"
        } else {
            ""
        };
        let geo_params = if geo {
            ", ?29, ?30, ?31, ?32, ?33, ?34"
        } else {
            ""
        };
        let mut insert = tx
            .prepare(&format!(
                "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, peer_id, client, sources, first_source,
                    first_seen_at, first_contact_at, first_progress, last_contact_at, last_progress, last_have,
                    below_at, below_progress, above_at, above_progress, crossed_at, confirmed, attempts, contacts,
                    failures, consecutive_failures, last_attempt_at, max_speed, transport, last_error, crossing_seen{geo_cols})
                 VALUES (?1, ?2, ?2, ?3, 0, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19,
                    ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28{geo_params})"
            ))
            .map_err(io_err(store))?;
        let sources = [
            PeerSource::TrackerUdp,
            PeerSource::Dht,
            PeerSource::Incoming,
            PeerSource::Pex,
        ];
        let errors = ["timed_out", "refused", "broken", "reset"];
        for n in 0..options.peers {
            let (torrent, pieces, piece_length) = rows[(n % u64::from(torrents)) as usize];
            let ip = format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
            let port = 1024 + (n >> 24) as u16 + (rng.below(50_000) as u16);
            let source = sources[rng.weighted(&[38, 47, 14, 1])];
            let first_seen = START_MS + rng.below(WINDOW_MS as u64) as i64;
            let attempts = 1 + rng.below(6) as i64;
            // The thesis: about one first contact in ten succeeds; we are kinder, as later
            // contacts retry.
            let contacts = if rng.unit() < 0.3 {
                1 + rng.below(attempts as u64) as i64
            } else {
                0
            };
            let mut state = ProgressState::default();
            let mut at = first_seen;
            let seed = rng.unit() < 0.25;
            let mut have: u32 = if seed {
                pieces
            } else {
                rng.below(u64::from(pieces)) as u32
            };
            // Download rate, pieces per second (a few kB/s to a few MB/s).
            let rate = (2_000.0 + rng.unit().powi(3) * 8_000_000.0) / piece_length as f64;
            for _ in 0..contacts {
                state = apply_contact(
                    &state,
                    Contact {
                        at,
                        have,
                        progress: f64::from(have) / f64::from(pieces),
                    },
                    THRESHOLD,
                );
                let wait = 300_000 + rng.below(3_600_000) as i64;
                at += wait;
                have =
                    (f64::from(have) + rate * wait as f64 / 1000.0).min(f64::from(pieces)) as u32;
            }
            let (client, peer_id) = if contacts > 0 {
                let c = &CLIENTS[rng.weighted(&CLIENTS.iter().map(|c| c.2).collect::<Vec<_>>())];
                let mut id = c.0.as_bytes().to_vec();
                id.extend((0..12).map(|_| b'a' + rng.below(26) as u8));
                (Some(c.1), Some(crate::proto::hex::encode(&id)))
            } else {
                (None, None)
            };
            let failures = attempts - contacts;
            let crossing_seen = state
                .confirmed
                .then(|| ["live", "revisit", "incoming"][rng.weighted(&[60, 35, 5])]);
            let country = rng.weighted(&COUNTRIES.iter().map(|c| c.3).collect::<Vec<_>>());
            let network = if rng.unit() < 0.06 {
                SEEDBOXES[rng.below(SEEDBOXES.len() as u64) as usize]
            } else {
                NETWORKS[country * 2 + rng.below(2) as usize]
            };
            let resolved = rng.unit() < 0.7;
            let common = params![
                torrent,
                ip,
                port,
                peer_id,
                client,
                source.bit(),
                source.bit(),
                first_seen,
                state.first_contact_at,
                state.first_progress,
                state.last_contact_at,
                state.last_progress,
                state.last_have,
                state.below_at,
                state.below_progress,
                state.above_at,
                state.above_progress,
                state.crossed_at,
                state.confirmed,
                attempts,
                contacts,
                failures,
                if contacts > 0 { 0 } else { failures },
                at,
                state.max_speed,
                if contacts > 0 { Transport::TCP.0 } else { 0 },
                (failures > 0).then(|| errors[rng.below(errors.len() as u64) as usize]),
                crossing_seen,
            ];
            if geo {
                let (cc, continent, city, _) = COUNTRIES[country];
                let host = resolved.then_some(network.2);
                let mut all: Vec<&dyn rusqlite::ToSql> = common.to_vec();
                all.extend([
                    &cc as &dyn rusqlite::ToSql,
                    &city,
                    &continent,
                    &network.0,
                    &network.1,
                    &host,
                ]);
                insert
                    .execute(rusqlite::params_from_iter(all))
                    .map_err(io_err(store))?;
            } else {
                insert.execute(common).map_err(io_err(store))?;
            }
            counts.peers += 1;
            counts.confirmed += u64::from(state.confirmed);
        }
        // Discovery: announces and lookups every 5 minutes per torrent.
        let mut discovery = tx
            .prepare(
                "INSERT INTO discovery_requests (at, torrent_id, source, tracker, received, new, duplicate, duration_ms, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(io_err(store))?;
        let rounds = WINDOW_MS / 300_000;
        let per_request = (options.peers / (u64::from(torrents) * rounds as u64 * 2)).max(1) as i64;
        for round in 0..rounds {
            let at = START_MS + round * 300_000;
            for &(torrent, _, _) in &rows {
                for (source, tracker) in [
                    (
                        PeerSource::TrackerUdp,
                        Some("udp://tracker.example:1337/announce"),
                    ),
                    (PeerSource::Dht, None),
                ] {
                    // New addresses dwindle as the swarm is known.
                    let received = per_request * 3 + rng.below(per_request as u64 + 1) as i64;
                    let share_new = 0.9 * (-(round as f64) / rounds as f64 * 2.0).exp() + 0.05;
                    let new = (received as f64 * share_new) as i64;
                    discovery
                        .execute(params![
                            at + rng.below(60_000) as i64,
                            torrent,
                            source.bit(),
                            tracker,
                            received,
                            new,
                            received - new,
                            20 + rng.below(800) as i64,
                            Option::<&str>::None
                        ])
                        .map_err(io_err(store))?;
                    counts.discovery_requests += 1;
                }
            }
        }
        // Scrapes every 15 minutes: reported downloads grow about ten times our confirmed.
        let mut scrape = tx
            .prepare(
                "INSERT INTO scrapes (at, torrent_id, tracker, complete, incomplete, downloaded)
                 VALUES (?1, ?2, 'udp://tracker.example:1337/announce', ?3, ?4, ?5)",
            )
            .map_err(io_err(store))?;
        let per_torrent_confirmed = counts.confirmed as f64 / f64::from(torrents);
        for &(torrent, _, _) in &rows {
            let mut downloaded = 50_000 + rng.below(50_000) as i64;
            let steps = WINDOW_MS / 900_000;
            for step in 0..=steps {
                scrape
                    .execute(params![
                        START_MS + step * 900_000,
                        torrent,
                        1000 + rng.below(500) as i64,
                        300 + rng.below(300) as i64,
                        downloaded
                    ])
                    .map_err(io_err(store))?;
                downloaded += (per_torrent_confirmed * 8.5 / steps as f64).round() as i64
                    + rng.below(3) as i64;
                counts.scrapes += 1;
            }
        }
        // Table 5.7 counts and the figure 5.1 histogram, in the thesis' proportions.
        let mut outcome = tx
            .prepare(
                "INSERT INTO outcome_counts (torrent_id, event, class, count, duration_ms, connects, connect_ms, messages)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(io_err(store))?;
        let per_torrent = options.peers as f64 / f64::from(torrents);
        for &(torrent, _, _) in &rows {
            for (event, scale) in [("first_contact", 1.0), ("later_contact", 2.5)] {
                for (class, share, ms) in [
                    ("success", 0.094, 2400),
                    ("timed_out", 0.61, 5000),
                    ("refused", 0.15, 40),
                    ("broken", 0.11, 300),
                    ("reset", 0.036, 80),
                ] {
                    let count = (per_torrent * scale * share) as i64;
                    outcome
                        .execute(params![
                            torrent,
                            event,
                            class,
                            count,
                            count * ms,
                            count,
                            count * 60,
                            count * 3
                        ])
                        .map_err(io_err(store))?;
                }
            }
        }
        let mut gap = tx
            .prepare("INSERT INTO gap_histogram (bucket_ms, count) VALUES (?1, ?2)")
            .map_err(io_err(store))?;
        let successes = (options.peers as f64 * 0.3) as i64;
        let mut left = successes;
        for bucket in 0..=600 {
            // Exponential-ish: most longest gaps under a few seconds (thesis: 93.9 % below 6 s).
            let from = bucket * 100;
            let share = (-(from as f64) / 2200.0).exp() * (1.0 - (-100.0 / 2200.0f64).exp());
            let count = if bucket == 600 {
                left
            } else {
                ((successes as f64 * share) as i64).min(left)
            };
            left -= count;
            if count > 0 {
                gap.execute(params![from, count]).map_err(io_err(store))?;
            }
        }
        tx.execute(
            "INSERT INTO runs (started_at, ended_at, version, records) VALUES (?1, ?2, 'synthetic', ?3)",
            params![START_MS, START_MS + WINDOW_MS, counts.peers as i64],
        )
        .map_err(io_err(store))?;
    }
    tx.commit().map_err(io_err(store))?;
    Ok(counts)
}

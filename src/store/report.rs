//! Report queries: the numbers of the thesis' tables 5.5 (peer addresses per source),
//! 5.6 (confirmed against scrape-reported downloads per torrent) and 5.7 (outcome of every
//! evaluation attempt by event and error), as serialisable structs.
//!
//! The scan window is the union of the writer runs: each run spans its earliest to its latest
//! activity record (discovery, outcome, scrape, stats), so restarts do not count the time the
//! scanner was down. Rates "per hour" divide by the summed run durations.
//!
//! Scrape-reported downloads: a tracker's `downloaded` counts every completion since the
//! torrent was registered there, so the count comparable with ours is the growth within our
//! window: latest minus first scrape of each tracker. Several trackers often serve one swarm,
//! so their counts overlap; summing would double-count, so the report takes the tracker with
//! the largest growth (and shows the largest latest value as `reported_total`).

use super::record::{PeerSource, ProbeEvent, UnixMs, SUCCESS_CLASS};
use super::writer::{GAP_BUCKET_MS, GAP_LAST_BUCKET_MS};
use super::{Store, StoreError};
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeMap;

/// The scan window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanWindow {
    /// Earliest activity.
    pub start: Option<UnixMs>,
    /// Latest activity.
    pub end: Option<UnixMs>,
    /// Summed duration of all runs, hours.
    pub hours: f64,
    /// Writer runs (scanner starts).
    pub runs: i64,
}

/// One torrent's line of table 5.6.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TorrentReport {
    /// Torrent row id (0 for the totals line).
    pub id: i64,
    /// Name, if known.
    pub name: Option<String>,
    /// Info-hash, hex (v1, else v2).
    pub info_hash: String,
    /// Peers any source reported (rows in `peers`).
    pub peers_seen: i64,
    /// Peers reached at least once.
    pub peers_evaluated: i64,
    /// Confirmed downloads.
    pub confirmed: i64,
    /// Scrape-reported downloads within the window (see the module docs); `None` without scrapes.
    pub reported: Option<i64>,
    /// Largest latest `downloaded` of any tracker; `None` without scrapes.
    pub reported_total: Option<i64>,
    /// confirmed / reported.
    pub ratio: Option<f64>,
    /// confirmed / window hours.
    pub confirmed_per_hour: Option<f64>,
    /// How the confirmed crossings were seen.
    pub crossings_seen: CrossingsSeen,
    /// When `swarmscan remove` took the torrent out of the scan (None: scanned).
    pub removed_at: Option<UnixMs>,
    /// The torrent's labels (empty for the totals line and unlabelled torrents).
    pub labels: Vec<String>,
}

/// How confirmed crossings were seen: live on a watched connection, by a revisit (a probe of
/// ours), or on a connection the peer opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CrossingsSeen {
    /// On a connection kept open to watch the peer.
    pub live: i64,
    /// By a probe of ours.
    pub revisit: i64,
    /// On a connection the peer opened (not watched).
    pub incoming: i64,
}

impl CrossingsSeen {
    fn add(&mut self, other: CrossingsSeen) {
        self.live += other.live;
        self.revisit += other.revisit;
        self.incoming += other.incoming;
    }
}

/// One source's line of table 5.5.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SourceReport {
    /// Source name.
    pub source: &'static str,
    /// Requests made (announces, lookups, PEX messages, incoming connections).
    pub requests: i64,
    /// Requests that failed.
    pub failed_requests: i64,
    /// Addresses received in total.
    pub received: i64,
    /// Addresses that were new to the database when received.
    pub new: i64,
    /// new / received.
    pub share_new: Option<f64>,
    /// Peers (torrent, address) this source reported at least once.
    pub unique: i64,
    /// unique / window hours.
    pub unique_per_hour: Option<f64>,
}

/// One tracker's line of the tracker table: its announces over all torrents and the announce
/// interval in use (from its latest successful announce).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrackerReport {
    /// Tracker URL.
    pub tracker: String,
    /// Torrents announced to it.
    pub torrents: i64,
    /// Announces made.
    pub announces: i64,
    /// Announces that failed.
    pub failed: i64,
    /// Addresses received (our own addresses already dropped).
    pub received: i64,
    /// Addresses that were new to the database when received.
    pub new: i64,
    /// The tracker's `interval` as it last sent it, seconds (`None`: not sent, or no
    /// successful announce recorded — databases before schema v2 have none).
    pub interval_secs: Option<i64>,
    /// Its `min interval` as last sent, seconds.
    pub min_interval_secs: Option<i64>,
    /// The wait used until the next announce, seconds: `tracker.announce_secs`, or the
    /// tracker's interval / min interval when that won.
    pub effective_secs: Option<f64>,
    /// What decided it: "ours", "interval" or "min_interval".
    pub decided_by: Option<String>,
    /// Tracker values that were capped or ignored.
    pub notes: Option<String>,
}

/// One cell of table 5.7.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeCount {
    /// "success" or an error class name.
    pub class: String,
    /// Attempts.
    pub count: i64,
    /// count / attempts of this event.
    pub share: f64,
    /// Mean probe duration, ms (unmatched incoming connections count as 0).
    pub mean_duration_ms: Option<f64>,
    /// Mean connect time of the attempts that measured one, ms.
    pub mean_connect_ms: Option<f64>,
}

/// One event's column of table 5.7.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventReport {
    /// first_contact | later_contact | incoming.
    pub event: &'static str,
    /// Attempts.
    pub attempts: i64,
    /// Per class, largest first.
    pub classes: Vec<OutcomeCount>,
}

/// Longest message gap per successful contact (thesis figure 5.1), from the 100 ms histogram.
/// Percentiles are bucket upper bounds ("at most"); 60000 means "60 s or more".
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapReport {
    /// Contacts with a measured gap.
    pub contacts: i64,
    /// Median, ms.
    pub p50_ms: Option<i64>,
    /// 90th percentile, ms.
    pub p90_ms: Option<i64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<i64>,
}

/// One point of a time series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Start of the time bucket.
    pub at: UnixMs,
    /// Torrent id (confirmed series) or source name (discovery series).
    pub key: String,
    /// Confirmed downloads, or addresses received, in the bucket.
    pub count: i64,
    /// Discovery series: addresses that were new (0 in the confirmed series).
    pub new: i64,
}

/// Peers and confirmed downloads of one country (or one autonomous system).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeoRow {
    /// ISO country code, or AS number as text.
    pub key: String,
    /// Continent code (countries) or organisation (autonomous systems).
    pub detail: Option<String>,
    /// Peers (rows in `peers`).
    pub peers: i64,
    /// peers / all peers.
    pub peer_share: f64,
    /// Peers reached at least once.
    pub evaluated: i64,
    /// Confirmed downloads.
    pub confirmed: i64,
    /// confirmed / all confirmed downloads (`None` without any).
    pub confirmed_share: Option<f64>,
}

/// One description table (by country, or by AS) and why peers are missing from it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeoTable {
    /// The database the values came from (`geo.city_db` or `geo.asn_db` as last used), if any.
    pub source: Option<super::geo::GeoSource>,
    /// One row per value, most peers first (ties by key).
    pub rows: Vec<GeoRow>,
    /// Peers stored while the database key was not set (never looked up).
    pub not_looked_up: i64,
    /// Peers looked up that the database had no entry for (e.g. loopback, private addresses).
    pub no_entry: i64,
    /// Peers without a value reached at least once.
    pub unknown_evaluated: i64,
    /// Confirmed downloads among the peers without a value.
    pub unknown_confirmed: i64,
    /// Why the table is empty or incomplete, in words (`None` when every peer has a value).
    pub note: Option<String>,
}

/// Peer descriptions: where the peers and the confirmed downloads are.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GeoReport {
    /// By country (`geo.city_db`).
    pub countries: GeoTable,
    /// By autonomous system (`geo.asn_db`).
    pub asns: GeoTable,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Database file.
    pub database: String,
    /// Scan window.
    pub window: ScanWindow,
    /// Table 5.6, per torrent.
    pub torrents: Vec<TorrentReport>,
    /// Table 5.6, all torrents together.
    pub total: TorrentReport,
    /// Table 5.5.
    pub sources: Vec<SourceReport>,
    /// Per tracker: announces and the interval in use.
    pub trackers: Vec<TrackerReport>,
    /// Table 5.7.
    pub outcomes: Vec<EventReport>,
    /// Live observations on watched connections (kept open after the answer), by result:
    /// not evaluation attempts, so apart from table 5.7.
    pub watched: Option<EventReport>,
    /// Figure 5.1 summary.
    pub gaps: GapReport,
    /// Peers and confirmed downloads by country and by autonomous system.
    pub geo: GeoReport,
    /// The study's planned tables, by torrent label.
    pub study: super::study::StudyTables,
    /// Our DHT lookups and BEP 33 estimates; torrents waiting for metadata.
    pub dht: super::dht_report::DhtReport,
}

fn per_hour(n: i64, hours: f64) -> Option<f64> {
    (hours > 0.0).then(|| n as f64 / hours)
}

fn ratio(a: i64, b: Option<i64>) -> Option<f64> {
    b.filter(|b| *b > 0).map(|b| a as f64 / b as f64)
}

impl Store {
    /// The scan window (see the module docs).
    pub fn scan_window(&self) -> Result<ScanWindow, StoreError> {
        self.conn
            .query_row(
                "SELECT min(started_at), max(ended_at), coalesce(sum(ended_at - started_at), 0), count(started_at) FROM runs",
                [],
                |r| Ok(ScanWindow { start: r.get(0)?, end: r.get(1)?, hours: r.get::<_, i64>(2)? as f64 / 3_600_000.0, runs: r.get(3)? }),
            )
            .map_err(|e| self.err(e))
    }

    /// Table 5.6 per torrent, and the totals line.
    pub fn torrent_reports(
        &self,
        window: &ScanWindow,
    ) -> Result<(Vec<TorrentReport>, TorrentReport), StoreError> {
        let mut scrapes: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        {
            let mut stmt = self
                .conn
                .prepare(
                    "SELECT torrent_id,
                        (SELECT downloaded FROM scrapes l WHERE l.torrent_id = s.torrent_id AND l.tracker = s.tracker
                         ORDER BY at DESC, id DESC LIMIT 1)
                      - (SELECT downloaded FROM scrapes f WHERE f.torrent_id = s.torrent_id AND f.tracker = s.tracker
                         ORDER BY at ASC, id ASC LIMIT 1),
                        (SELECT downloaded FROM scrapes l WHERE l.torrent_id = s.torrent_id AND l.tracker = s.tracker
                         ORDER BY at DESC, id DESC LIMIT 1)
                     FROM scrapes s GROUP BY torrent_id, tracker",
                )
                .map_err(|e| self.err(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
            while let Some(r) = rows.next().map_err(|e| self.err(e))? {
                let (torrent, growth, latest): (i64, i64, i64) = (
                    r.get(0).map_err(|e| self.err(e))?,
                    r.get(1).map_err(|e| self.err(e))?,
                    r.get(2).map_err(|e| self.err(e))?,
                );
                let entry = scrapes.entry(torrent).or_insert((i64::MIN, i64::MIN));
                entry.0 = entry.0.max(growth);
                entry.1 = entry.1.max(latest);
            }
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t.id, t.name, coalesce(t.info_hash_v1, t.info_hash_v2),
                        count(p.id), coalesce(sum(p.contacts > 0), 0), coalesce(sum(p.confirmed), 0),
                        coalesce(sum(p.confirmed AND p.crossing_seen = 'live'), 0),
                        coalesce(sum(p.confirmed AND p.crossing_seen = 'incoming'), 0),
                        coalesce(sum(p.confirmed AND coalesce(p.crossing_seen, 'revisit') = 'revisit'), 0),
                        t.removed_at
                 FROM torrents t LEFT JOIN peers p ON p.torrent_id = t.id
                 GROUP BY t.id ORDER BY t.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    CrossingsSeen {
                        live: r.get(6)?,
                        incoming: r.get(7)?,
                        revisit: r.get(8)?,
                    },
                    r.get::<_, Option<UnixMs>>(9)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut torrents = Vec::new();
        let mut total = TorrentReport {
            id: 0,
            name: Some("all torrents".to_string()),
            info_hash: String::new(),
            peers_seen: 0,
            peers_evaluated: 0,
            confirmed: 0,
            reported: None,
            reported_total: None,
            ratio: None,
            confirmed_per_hour: None,
            crossings_seen: CrossingsSeen::default(),
            removed_at: None,
            labels: Vec::new(),
        };
        let mut labels = self.labels()?;
        for row in rows {
            let (
                id,
                name,
                info_hash,
                peers_seen,
                peers_evaluated,
                confirmed,
                crossings_seen,
                removed_at,
            ) = row.map_err(|e| self.err(e))?;
            total.crossings_seen.add(crossings_seen);
            let (reported, reported_total) = match scrapes.get(&id) {
                Some(&(growth, latest)) => (Some(growth), Some(latest)),
                None => (None, None),
            };
            total.peers_seen += peers_seen;
            total.peers_evaluated += peers_evaluated;
            total.confirmed += confirmed;
            if let Some(r) = reported {
                total.reported = Some(total.reported.unwrap_or(0) + r);
            }
            if let Some(r) = reported_total {
                total.reported_total = Some(total.reported_total.unwrap_or(0) + r);
            }
            torrents.push(TorrentReport {
                id,
                name,
                info_hash,
                peers_seen,
                peers_evaluated,
                confirmed,
                reported,
                reported_total,
                ratio: ratio(confirmed, reported),
                confirmed_per_hour: per_hour(confirmed, window.hours),
                crossings_seen,
                removed_at,
                labels: labels.remove(&id).unwrap_or_default(),
            });
        }
        total.ratio = ratio(total.confirmed, total.reported);
        total.confirmed_per_hour = per_hour(total.confirmed, window.hours);
        Ok((torrents, total))
    }

    /// Table 5.5: one line per source that reported anything.
    pub fn source_reports(&self, window: &ScanWindow) -> Result<Vec<SourceReport>, StoreError> {
        let mut out = Vec::new();
        for source in PeerSource::ALL {
            let (requests, failed, received, new): (i64, i64, i64, i64) = self
                .conn
                .query_row(
                    "SELECT count(*), coalesce(sum(error IS NOT NULL), 0), coalesce(sum(received), 0), coalesce(sum(new), 0)
                     FROM discovery_requests WHERE source = ?1",
                    [source.bit()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(|e| self.err(e))?;
            let unique: i64 = self
                .conn
                .query_row(
                    "SELECT count(*) FROM peers WHERE sources & ?1 != 0",
                    params![source.bit()],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            if requests == 0 && unique == 0 {
                continue;
            }
            out.push(SourceReport {
                source: source.as_str(),
                requests,
                failed_requests: failed,
                received,
                new,
                share_new: (received > 0).then(|| new as f64 / received as f64),
                unique,
                unique_per_hour: per_hour(unique, window.hours),
            });
        }
        Ok(out)
    }

    /// One line per tracker that was announced to, ordered by URL.
    pub fn tracker_reports(&self) -> Result<Vec<TrackerReport>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT d.tracker, count(DISTINCT d.torrent_id), count(*), coalesce(sum(d.error IS NOT NULL), 0),
                        coalesce(sum(d.received), 0), coalesce(sum(d.new), 0),
                        s.interval_secs, s.min_interval_secs, s.next_secs, s.decided_by, s.notes
                 FROM discovery_requests d
                 LEFT JOIN (SELECT tracker, interval_secs, min_interval_secs, next_secs, decided_by, notes,
                                   row_number() OVER (PARTITION BY tracker ORDER BY updated_at DESC, torrent_id) AS latest
                            FROM tracker_state) s
                   ON s.tracker = d.tracker AND s.latest = 1
                 WHERE d.tracker IS NOT NULL AND d.source IN (?1, ?2)
                 GROUP BY d.tracker ORDER BY d.tracker",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(
                params![PeerSource::TrackerHttp.bit(), PeerSource::TrackerUdp.bit()],
                |r| {
                    Ok(TrackerReport {
                        tracker: r.get(0)?,
                        torrents: r.get(1)?,
                        announces: r.get(2)?,
                        failed: r.get(3)?,
                        received: r.get(4)?,
                        new: r.get(5)?,
                        interval_secs: r.get(6)?,
                        min_interval_secs: r.get(7)?,
                        effective_secs: r.get(8)?,
                        decided_by: r.get(9)?,
                        notes: r.get(10)?,
                    })
                },
            )
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Table 5.7: attempts per event and class, with shares within the event.
    pub fn outcome_reports(&self) -> Result<Vec<EventReport>, StoreError> {
        let mut by_event: BTreeMap<&'static str, Vec<OutcomeCount>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT event, class, sum(count), sum(duration_ms), sum(connects), sum(connect_ms)
                 FROM outcome_counts GROUP BY event, class",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (event, class, count, duration_ms, connects, connect_ms) =
                row.map_err(|e| self.err(e))?;
            let Some(event) = ProbeEvent::ALL.iter().find(|e| e.as_str() == event) else {
                continue;
            };
            by_event
                .entry(event.as_str())
                .or_default()
                .push(OutcomeCount {
                    class,
                    count,
                    share: 0.0,
                    mean_duration_ms: (count > 0).then(|| duration_ms as f64 / count as f64),
                    mean_connect_ms: (connects > 0).then(|| connect_ms as f64 / connects as f64),
                });
        }
        let mut out = Vec::new();
        for event in ProbeEvent::ALL {
            let Some(mut classes) = by_event.remove(event.as_str()) else {
                continue;
            };
            let attempts: i64 = classes.iter().map(|c| c.count).sum();
            for c in &mut classes {
                c.share = c.count as f64 / attempts as f64;
            }
            // Success first, then errors by count (ties by name, for a stable order).
            classes.sort_by(|a, b| {
                (b.class == SUCCESS_CLASS)
                    .cmp(&(a.class == SUCCESS_CLASS))
                    .then(b.count.cmp(&a.count))
                    .then(a.class.cmp(&b.class))
            });
            out.push(EventReport {
                event: event.as_str(),
                attempts,
                classes,
            });
        }
        Ok(out)
    }

    /// Percentiles of the longest-gap histogram.
    pub fn gap_report(&self) -> Result<GapReport, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT bucket_ms, count FROM gap_histogram ORDER BY bucket_ms")
            .map_err(|e| self.err(e))?;
        let buckets: Vec<(i64, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.err(e))?;
        let contacts: i64 = buckets.iter().map(|b| b.1).sum();
        let quantile = |q: f64| -> Option<i64> {
            if contacts == 0 {
                return None;
            }
            let rank = (q * contacts as f64).ceil().max(1.0) as i64;
            let mut seen = 0;
            buckets
                .iter()
                .find(|(_, c)| {
                    seen += c;
                    seen >= rank
                })
                .map(|b| (b.0 + GAP_BUCKET_MS).min(GAP_LAST_BUCKET_MS))
        };
        Ok(GapReport {
            contacts,
            p50_ms: quantile(0.5),
            p90_ms: quantile(0.9),
            p99_ms: quantile(0.99),
        })
    }

    /// Figure 5.4 data: confirmed downloads per time bucket (by crossing time), per torrent.
    pub fn confirmed_series(&self, bucket_ms: i64) -> Result<Vec<SeriesPoint>, StoreError> {
        self.series(
            "SELECT (crossed_at / ?1) * ?1 AS bucket, torrent_id, count(*), 0
             FROM peers WHERE confirmed AND crossed_at IS NOT NULL
             GROUP BY bucket, torrent_id ORDER BY bucket, torrent_id",
            bucket_ms,
            |key| key.to_string(),
        )
    }

    /// Figure 5.3 data: addresses received and new per time bucket and source.
    pub fn discovery_series(&self, bucket_ms: i64) -> Result<Vec<SeriesPoint>, StoreError> {
        self.series(
            "SELECT (at / ?1) * ?1 AS bucket, source, sum(received), sum(new)
             FROM discovery_requests GROUP BY bucket, source ORDER BY bucket, source",
            bucket_ms,
            |key| {
                PeerSource::from_bit(key)
                    .map_or("unknown", |s| s.as_str())
                    .to_string()
            },
        )
    }

    fn series(
        &self,
        sql: &str,
        bucket_ms: i64,
        name: impl Fn(i64) -> String,
    ) -> Result<Vec<SeriesPoint>, StoreError> {
        let bucket_ms = bucket_ms.max(1);
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([bucket_ms], |r| {
                Ok(SeriesPoint {
                    at: r.get(0)?,
                    key: name(r.get(1)?),
                    count: r.get(2)?,
                    new: r.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// Peers and confirmed downloads by country and by autonomous system.
    pub fn geo_report(&self) -> Result<GeoReport, StoreError> {
        use super::geo::{ASN_DB_KEY, CITY_DB_KEY, CONSULTED_ASN, CONSULTED_CITY};
        let (peers, confirmed): (i64, i64) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(confirmed), 0) FROM peers",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let countries = self.geo_table(
            "SELECT country, max(continent), count(*), coalesce(sum(contacts > 0), 0), coalesce(sum(confirmed), 0)
             FROM peers WHERE country IS NOT NULL GROUP BY country",
            "country",
            CITY_DB_KEY,
            CONSULTED_CITY,
            (peers, confirmed),
        )?;
        let asns = self.geo_table(
            "SELECT CAST(asn AS TEXT), max(as_org), count(*), coalesce(sum(contacts > 0), 0), coalesce(sum(confirmed), 0)
             FROM peers WHERE asn IS NOT NULL GROUP BY asn",
            "asn",
            ASN_DB_KEY,
            CONSULTED_ASN,
            (peers, confirmed),
        )?;
        Ok(GeoReport { countries, asns })
    }

    fn geo_table(
        &self,
        sql: &str,
        column: &str,
        key: &str,
        bit: u8,
        (peers, confirmed): (i64, i64),
    ) -> Result<GeoTable, StoreError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query_map([], |r| {
                let n: i64 = r.get(2)?;
                let c: i64 = r.get(4)?;
                Ok(GeoRow {
                    key: r.get(0)?,
                    detail: r.get(1)?,
                    peers: n,
                    peer_share: n as f64 / peers.max(1) as f64,
                    evaluated: r.get(3)?,
                    confirmed: c,
                    confirmed_share: (confirmed > 0).then(|| c as f64 / confirmed as f64),
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        rows.sort_by(|a, b| b.peers.cmp(&a.peers).then_with(|| a.key.cmp(&b.key)));
        let (not_looked_up, no_entry, unknown_evaluated, unknown_confirmed): (i64, i64, i64, i64) = self
            .conn
            .query_row(
                &format!(
                    "SELECT coalesce(sum(geo_lookup & ?1 = 0), 0), coalesce(sum(geo_lookup & ?1 != 0), 0),
                            coalesce(sum(contacts > 0), 0), coalesce(sum(confirmed), 0)
                     FROM peers WHERE {column} IS NULL"
                ),
                [bit],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .map_err(|e| self.err(e))?;
        let source: Option<super::geo::GeoSource> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map_err(|e| self.err(e))?
            .and_then(|v| serde_json::from_str(&v).ok());
        let what = if column == "country" {
            "a country"
        } else {
            "an AS number"
        };
        let note = if not_looked_up + no_entry == 0 {
            None
        } else if not_looked_up == peers {
            Some(format!(
                "no peer has {what}: {key} was not set when they were stored (set it to a MaxMind .mmdb file; \
                 stored peers are filled when a probe next reaches them)"
            ))
        } else if no_entry == peers {
            Some(format!(
                "no peer has {what}: the database ({key}) had no entry for any of the {peers} peer addresses \
                 (loopback and private addresses are in no database)"
            ))
        } else {
            Some(format!(
                "{} of {peers} peers have no {}: {not_looked_up} stored while {key} was not set, {no_entry} \
                 with no entry in the database",
                not_looked_up + no_entry,
                &what[what.find(' ').map_or(0, |i| i + 1)..]
            ))
        };
        Ok(GeoTable {
            source,
            rows,
            not_looked_up,
            no_entry,
            unknown_evaluated,
            unknown_confirmed,
            note,
        })
    }

    /// Everything `swarmscan report` shows.
    pub fn report(&self) -> Result<Report, StoreError> {
        let window = self.scan_window()?;
        let (torrents, total) = self.torrent_reports(&window)?;
        // Table 5.7 counts evaluation attempts; live observations on watched connections are
        // reported apart.
        let (watched, outcomes): (Vec<EventReport>, Vec<EventReport>) = self
            .outcome_reports()?
            .into_iter()
            .partition(|e| e.event == ProbeEvent::Watched.as_str());
        let watched = watched.into_iter().next();
        Ok(Report {
            database: self.path.display().to_string(),
            sources: self.source_reports(&window)?,
            trackers: self.tracker_reports()?,
            outcomes,
            watched,
            gaps: self.gap_report()?,
            geo: self.geo_report()?,
            study: self.study_tables(&torrents)?,
            dht: self.dht_report()?,
            torrents,
            total,
            window,
        })
    }
}

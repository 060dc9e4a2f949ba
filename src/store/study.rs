//! The tables the study planned and never finished, grouped by torrent label: torrent sets
//! (table 5.6 per label), clients, host domains, countries, ASNs, download speed by country,
//! and the threshold sensitivity; and the data of the figures (5.1, 5.3, 5.4 per label).
//!
//! Grouping: every torrent belongs to the group of each of its labels, or to
//! [`NO_LABEL`](super::NO_LABEL) when it has none; when any torrent has a label, the group
//! [`ALL_LABELS`](super::ALL_LABELS) holds every torrent once more. A torrent with two labels
//! counts in both groups, so groups are not summed.
//!
//! Peer descriptions (`peers.country`, `continent`, `asn`, `as_org`, `host_domain`) come from
//! the GeoIP / reverse-DNS columns, which every database has (opening one migrates it to the
//! current schema); peers without a value are counted apart, and an empty table carries a note
//! saying why.
//!
//! Threshold sensitivity: a peer counts as a confirmed download at threshold `t` when its first
//! known progress is below `t` and a later stored progress (the last contact below the scan's
//! threshold, the first at or above it, the latest contact) is at or above `t`. Every stored
//! later value comes after the first contact in time, so this is the confirmation rule of
//! [`super::rules`] applied to the stored contacts. At the scan's own threshold it gives
//! the confirmed count; below it, it is exact for peers whose progress only grows; above it,
//! it is a lower bound (peers are not revisited after reaching the scan's threshold with
//! `peer.stop_at_threshold`, and contacts between the stored ones are not kept).

use super::writer::{GAP_BUCKET_MS, GAP_LAST_BUCKET_MS};
use super::{Store, StoreError, TorrentId, ALL_LABELS, NO_LABEL};
use rusqlite::params;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// Rows kept per label in the client, host-domain, country and ASN tables; the rest are
/// summed into one "(other)" row.
pub const TOP_ROWS: usize = 25;

/// The thresholds of the sensitivity table: 90 % to 100 % in steps of 1 %.
pub const THRESHOLDS: [f64; 11] = [
    0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.00,
];

/// The label groups: `(torrent_id, label)` for every group a torrent is in.
const LABELLED: &str = "WITH tl(torrent_id, label) AS (
    SELECT t.id, coalesce(l.label, '(none)') FROM torrents t LEFT JOIN torrent_labels l ON l.torrent_id = t.id
    UNION ALL
    SELECT id, '(all)' FROM torrents WHERE EXISTS (SELECT 1 FROM torrent_labels))";

/// Table 5.6 for one torrent set (label).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelReport {
    /// The label.
    pub label: String,
    /// Torrents in the set.
    pub torrents: i64,
    /// Peers any source reported.
    pub peers_seen: i64,
    /// Peers reached at least once.
    pub peers_evaluated: i64,
    /// Confirmed downloads.
    pub confirmed: i64,
    /// Scrape-reported downloads within the window, summed over the set's torrents that have
    /// scrapes (see [`super::report`]).
    pub reported: Option<i64>,
    /// confirmed / reported.
    pub ratio: Option<f64>,
}

/// One line of a "count by key" table (clients, host domains, countries, ASNs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyCount {
    /// The label group.
    pub label: String,
    /// Client name, host domain, country code or "AS<number>".
    pub key: String,
    /// Client version (clients table), AS organisation (ASN table).
    pub detail: Option<String>,
    /// Peers.
    pub peers: i64,
    /// peers / peers of the label with a known key.
    pub share_peers: f64,
    /// Confirmed downloads.
    pub confirmed: i64,
    /// confirmed / confirmed downloads of the label with a known key (`None` when none).
    pub share_confirmed: Option<f64>,
}

/// A "count by key" table with what it left out.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct KeyTable {
    /// Rows: per label, the largest [`TOP_ROWS`] by peers, then "(other)".
    pub rows: Vec<KeyCount>,
    /// Peers without a known key (not contacted, not resolved, not in the GeoIP database).
    pub unknown_peers: i64,
    /// Why the table is empty or partial, when it is.
    pub note: Option<String>,
}

/// Download speed in one country: the highest speed between two contacts of each peer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpeedRow {
    /// The label group.
    pub label: String,
    /// Country code.
    pub country: String,
    /// Peers with a measured speed.
    pub peers: i64,
    /// Median, bytes per second.
    pub median_bps: f64,
    /// Mean, bytes per second.
    pub mean_bps: f64,
    /// 90th percentile, bytes per second.
    pub p90_bps: f64,
}

/// Speed by country.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SpeedTable {
    /// Rows, per label by peers (largest first), at most [`TOP_ROWS`] per label.
    pub rows: Vec<SpeedRow>,
    /// Why the table is empty, when it is.
    pub note: Option<String>,
}

/// Confirmed downloads at each threshold, for one label.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ThresholdRow {
    /// The label group.
    pub label: String,
    /// Confirmed downloads as stored (the scan's threshold).
    pub stored_confirmed: i64,
    /// (threshold, confirmed downloads) for each of [`THRESHOLDS`].
    pub points: Vec<(f64, i64)>,
}

/// One bucket of figure 5.1: contacts whose longest message gap fell in [from, from + 100 ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GapBucket {
    /// Bucket start, ms (60000 = 60 s or more).
    pub from_ms: i64,
    /// Contacts.
    pub contacts: i64,
}

/// One point of figure 5.4: confirmed and reported downloads of a label up to a time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CumulativePoint {
    /// The label group.
    pub label: String,
    /// End of the time bucket.
    pub at: i64,
    /// Confirmed downloads crossed before `at`.
    pub confirmed: i64,
    /// Scrape-reported downloads since the first scrape, as of `at` (`None` without scrapes).
    pub reported: Option<i64>,
}

/// Everything this module adds to the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyTables {
    /// Table 5.6 per torrent set.
    pub labels: Vec<LabelReport>,
    /// Clients (name and version from the peer-id).
    pub clients: KeyTable,
    /// Registrable domains of the peers' reverse DNS names.
    pub host_domains: KeyTable,
    /// Peers and confirmed downloads by country.
    pub countries: KeyTable,
    /// Peers and confirmed downloads by autonomous system.
    pub asns: KeyTable,
    /// Download speed by country.
    pub speed_by_country: SpeedTable,
    /// Confirmed downloads as a function of the threshold.
    pub threshold_sensitivity: Vec<ThresholdRow>,
}

/// The figures' data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FigureData {
    /// Figure 5.1: the longest-gap histogram.
    pub gaps: Vec<GapBucket>,
    /// Figure 5.3: addresses received and new per source and bucket.
    pub discovery: Vec<super::report::SeriesPoint>,
    /// Figure 5.4: cumulative confirmed and reported downloads per label.
    pub downloads: Vec<CumulativePoint>,
    /// Width of the time buckets, ms.
    pub bucket_ms: i64,
}

/// (label, key, detail, peers, confirmed) of a "count by key" table.
type KeyRow = (String, String, Option<String>, i64, i64);
/// The same per torrent, as the queries give it.
type TorrentKeyRow = (TorrentId, String, Option<String>, i64, i64);

fn share(n: i64, of: i64) -> f64 {
    if of > 0 {
        n as f64 / of as f64
    } else {
        0.0
    }
}

/// Keeps the largest [`TOP_ROWS`] rows of each label (rows come grouped by label) and sums
/// the rest into "(other)"; fills in the shares.
fn top_rows(rows: Vec<KeyRow>) -> Vec<KeyCount> {
    type Counts = (String, Option<String>, i64, i64);
    let mut by_label: BTreeMap<String, Vec<Counts>> = BTreeMap::new();
    for (label, key, detail, peers, confirmed) in rows {
        by_label
            .entry(label)
            .or_default()
            .push((key, detail, peers, confirmed));
    }
    let mut out = Vec::new();
    for (label, mut rows) in by_label {
        let peers: i64 = rows.iter().map(|r| r.2).sum();
        let confirmed: i64 = rows.iter().map(|r| r.3).sum();
        // Ties broken by key and detail (client version): the same bytes every run.
        rows.sort_by(|a, b| {
            b.2.cmp(&a.2)
                .then(b.3.cmp(&a.3))
                .then(a.0.cmp(&b.0))
                .then(a.1.cmp(&b.1))
        });
        let rest: Vec<_> = rows.split_off(rows.len().min(TOP_ROWS));
        if !rest.is_empty() {
            rows.push((
                format!("(other: {})", rest.len()),
                None,
                rest.iter().map(|r| r.2).sum(),
                rest.iter().map(|r| r.3).sum(),
            ));
        }
        for (key, detail, p, c) in rows {
            out.push(KeyCount {
                label: label.clone(),
                key,
                detail,
                peers: p,
                share_peers: share(p, peers),
                confirmed: c,
                share_confirmed: (confirmed > 0).then(|| share(c, confirmed)),
            });
        }
    }
    out
}

/// Label groups first by name, "(none)" and "(all)" last.
fn label_order(label: &str) -> (u8, &str) {
    match label {
        NO_LABEL => (1, label),
        ALL_LABELS => (2, label),
        _ => (0, label),
    }
}

impl Store {
    /// The `peers` columns of this database (the export's schema lists them).
    pub(crate) fn peer_columns(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('peers')")
            .map_err(|e| self.err(e))?;
        let names = stmt
            .query_map([], |r| r.get(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(names)
    }

    /// Folds (torrent, key, detail, peers, confirmed) rows into label groups; rows differing
    /// in detail (a client's version) stay apart.
    fn fold_rows(&self, rows: Vec<TorrentKeyRow>) -> Result<Vec<KeyRow>, StoreError> {
        let groups = self.label_groups()?;
        let mut folded: HashMap<(String, String, Option<String>), (i64, i64)> = HashMap::new();
        for (torrent, key, detail, peers, confirmed) in rows {
            for label in groups.get(&torrent).into_iter().flatten() {
                let e = folded
                    .entry((label.clone(), key.clone(), detail.clone()))
                    .or_insert((0, 0));
                e.0 += peers;
                e.1 += confirmed;
            }
        }
        Ok(folded
            .into_iter()
            .map(|((label, key, detail), (p, c))| (label, key, detail, p, c))
            .collect())
    }

    /// Unknown-key peers (the key expression is NULL) in all torrents.
    fn count_where(&self, condition: &str) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT count(*) FROM peers WHERE {condition}"),
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Table 5.6 per torrent set, from the per-torrent lines.
    pub fn label_reports(
        &self,
        torrents: &[super::report::TorrentReport],
    ) -> Result<Vec<LabelReport>, StoreError> {
        let labels = self.labels()?;
        let mut groups: BTreeMap<(u8, String), LabelReport> = BTreeMap::new();
        for t in torrents {
            let mut names: Vec<&str> = match labels.get(&t.id) {
                Some(l) => l.iter().map(String::as_str).collect(),
                None => vec![NO_LABEL],
            };
            if !labels.is_empty() {
                names.push(ALL_LABELS);
            }
            for name in names {
                let g = groups
                    .entry((label_order(name).0, name.to_string()))
                    .or_insert_with(|| LabelReport {
                        label: name.to_string(),
                        torrents: 0,
                        peers_seen: 0,
                        peers_evaluated: 0,
                        confirmed: 0,
                        reported: None,
                        ratio: None,
                    });
                g.torrents += 1;
                g.peers_seen += t.peers_seen;
                g.peers_evaluated += t.peers_evaluated;
                g.confirmed += t.confirmed;
                if let Some(r) = t.reported {
                    g.reported = Some(g.reported.unwrap_or(0) + r);
                }
            }
        }
        Ok(groups
            .into_values()
            .map(|mut g| {
                g.ratio = g
                    .reported
                    .filter(|r| *r > 0)
                    .map(|r| g.confirmed as f64 / r as f64);
                g
            })
            .collect())
    }

    /// The label groups of every torrent (see the module docs). Queries group by torrent,
    /// which SQLite does in one pass over `peers`, and results are folded into label groups
    /// here: a join with the groups would read every peer once per group.
    fn label_groups(&self) -> Result<HashMap<TorrentId, Vec<String>>, StoreError> {
        let labels = self.labels()?;
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM torrents")
            .map_err(|e| self.err(e))?;
        let ids = stmt
            .query_map([], |r| r.get::<_, TorrentId>(0))
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        Ok(ids
            .into_iter()
            .map(|id| {
                let mut groups = labels
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| vec![NO_LABEL.to_string()]);
                if !labels.is_empty() {
                    groups.push(ALL_LABELS.to_string());
                }
                (id, groups)
            })
            .collect())
    }

    /// Clients by name and version, decoded from the stored peer-id (the extension
    /// handshake's client name when the peer sent no peer-id we kept).
    pub fn client_table(&self) -> Result<KeyTable, StoreError> {
        // Peer-ids are per peer (random tails), so they are decoded here rather than grouped
        // in SQL; the decoded names are few, so the map stays small.
        let mut counts: HashMap<(TorrentId, String, Option<String>), (i64, i64)> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT torrent_id, peer_id, client, confirmed FROM peers
                 WHERE peer_id IS NOT NULL OR client IS NOT NULL",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let torrent: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            let peer_id: Option<String> = r.get(1).map_err(|e| self.err(e))?;
            let client: Option<String> = r.get(2).map_err(|e| self.err(e))?;
            let confirmed: bool = r.get(3).map_err(|e| self.err(e))?;
            let (name, version) = match peer_id
                .as_deref()
                .and_then(crate::proto::hex::decode_array::<20>)
            {
                Some(id) => {
                    let id = crate::proto::client_id::from_peer_id(&id);
                    match id.name() {
                        Some(name) => (name.to_string(), id.version().map(str::to_string)),
                        // The extension handshake's name, else say so.
                        None => match &client {
                            Some(c) => (c.clone(), None),
                            None => ("(unrecognised peer-id)".to_string(), None),
                        },
                    }
                }
                None => (client.clone().unwrap_or_default(), None),
            };
            let e = counts.entry((torrent, name, version)).or_default();
            e.0 += 1;
            e.1 += i64::from(confirmed);
        }
        let rows = counts
            .into_iter()
            .map(|((torrent, name, version), (p, c))| (torrent, name, version, p, c))
            .collect();
        Ok(KeyTable {
            rows: top_rows(self.fold_rows(rows)?),
            unknown_peers: self.count_where("peer_id IS NULL AND client IS NULL")?,
            note: None,
        })
    }

    /// Peers and confirmed downloads by the value of a `peers` column (with an optional
    /// detail column); an empty table says why with `unknown_note`.
    fn column_table(
        &self,
        column: &str,
        detail: Option<&str>,
        key_sql: &str,
        unknown_note: &str,
    ) -> Result<KeyTable, StoreError> {
        let detail_sql = detail.map_or("NULL".to_string(), |d| format!("p.{d}"));
        // Counted here in one sequential pass, the peers without a value too: a GROUP BY would
        // sort a million rows, and a second query would read them all again.
        let mut counts: HashMap<(TorrentId, String), (Option<String>, i64, i64)> = HashMap::new();
        let mut unknown = 0i64;
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT p.torrent_id, CASE WHEN p.{column} IS NOT NULL AND p.{column} != '' THEN {key_sql} END,
                        {detail_sql}, p.confirmed
                 FROM peers p"
            ))
            .map_err(|e| self.err(e))?;
        let mut result = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = result.next().map_err(|e| self.err(e))? {
            let torrent: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            let Some(key) = r.get::<_, Option<String>>(1).map_err(|e| self.err(e))? else {
                unknown += 1;
                continue;
            };
            let confirmed: bool = r.get(3).map_err(|e| self.err(e))?;
            let e = counts.entry((torrent, key)).or_insert((None, 0, 0));
            if e.0.is_none() {
                e.0 = r.get(2).map_err(|e| self.err(e))?;
            }
            e.1 += 1;
            e.2 += i64::from(confirmed);
        }
        let rows = self.fold_rows(
            counts
                .into_iter()
                .map(|((torrent, key), (detail, p, c))| (torrent, key, detail, p, c))
                .collect(),
        )?;
        let note = if rows.is_empty() {
            Some(unknown_note.to_string())
        } else {
            None
        };
        Ok(KeyTable {
            rows: top_rows(rows),
            unknown_peers: unknown,
            note,
        })
    }

    /// Host domains, with a note on how many peers reverse DNS answered (`geo_lookup` bit
    /// [`LOOKED_UP`](super::host_domain::LOOKED_UP)) and how many it never asked about.
    fn host_domain_table(&self) -> Result<KeyTable, StoreError> {
        let mut t = self.column_table("host_domain", None, "p.host_domain", "")?;
        let (looked_up, no_name): (i64, i64) = self
            .conn
            .query_row(
                "SELECT coalesce(sum(geo_lookup & ?1 != 0), 0),
                        coalesce(sum(geo_lookup & ?1 != 0 AND host_domain IS NULL), 0)
                 FROM peers",
                [super::host_domain::LOOKED_UP],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        let not_asked = t.unknown_peers - no_name;
        t.note = match (looked_up, t.rows.is_empty()) {
            (0, true) => Some(
                "reverse DNS off: no peer was looked up (geo.reverse_dns = true turns it on)"
                    .into(),
            ),
            (0, false) => None,
            _ => Some(format!(
                "reverse DNS answered for {looked_up} peers: {} with a name, {no_name} without one \
                 (NXDOMAIN or no PTR record); {not_asked} not looked up (reverse DNS off when they \
                 were stored, no answer yet, or the resolver failed)",
                looked_up - no_name
            )),
        };
        Ok(t)
    }

    /// Download speed by country: per peer the highest speed between two contacts
    /// (`max_speed`, pieces per second) times the torrent's piece length.
    pub fn speed_table(&self) -> Result<SpeedTable, StoreError> {
        let groups = self.label_groups()?;
        let mut speeds: HashMap<(String, String), Vec<f64>> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT p.torrent_id, p.country, p.max_speed * t.piece_length
                 FROM peers p JOIN torrents t ON t.id = p.torrent_id
                 WHERE p.max_speed IS NOT NULL AND p.max_speed > 0 AND t.piece_length IS NOT NULL
                   AND p.country IS NOT NULL AND p.country != ''",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let torrent: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            let country: String = r.get(1).map_err(|e| self.err(e))?;
            let bps: f64 = r.get(2).map_err(|e| self.err(e))?;
            for label in groups.get(&torrent).into_iter().flatten() {
                speeds
                    .entry((label.clone(), country.clone()))
                    .or_default()
                    .push(bps);
            }
        }
        let mut out: Vec<SpeedRow> = speeds
            .into_iter()
            .map(|((label, country), mut v)| {
                v.sort_by(f64::total_cmp);
                let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
                SpeedRow {
                    label,
                    country,
                    peers: v.len() as i64,
                    median_bps: at(0.5),
                    mean_bps: v.iter().sum::<f64>() / v.len() as f64,
                    p90_bps: at(0.9),
                }
            })
            .collect();
        out.sort_by(|a, b| {
            label_order(&a.label)
                .cmp(&label_order(&b.label))
                .then(b.peers.cmp(&a.peers))
                .then(a.country.cmp(&b.country))
        });
        let mut kept: HashMap<String, usize> = HashMap::new();
        out.retain(|r| {
            let n = kept.entry(r.label.clone()).or_default();
            *n += 1;
            *n <= TOP_ROWS
        });
        let note = out.is_empty().then(|| {
            "no peer with both a country and a measured speed (speed needs two contacts with growing progress)".to_string()
        });
        Ok(SpeedTable { rows: out, note })
    }

    /// Confirmed downloads at each of [`THRESHOLDS`], per label (see the module docs).
    pub fn threshold_sensitivity(&self) -> Result<Vec<ThresholdRow>, StoreError> {
        // Summed here in one sequential pass (NOT INDEXED): the index on torrent_id would
        // visit a million rows in random order, and a GROUP BY would sort them.
        let mut per_torrent: HashMap<TorrentId, (i64, Vec<i64>)> = HashMap::new();
        let mut stmt = self
            .conn
            .prepare(
                "SELECT torrent_id, confirmed, first_progress,
                        max(coalesce(below_progress, 0), coalesce(above_progress, 0), coalesce(last_progress, 0))
                 FROM peers NOT INDEXED
                 WHERE first_progress IS NOT NULL AND duplicate_of IS NULL",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let torrent: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            let confirmed: bool = r.get(1).map_err(|e| self.err(e))?;
            let first: f64 = r.get(2).map_err(|e| self.err(e))?;
            let later: f64 = r.get(3).map_err(|e| self.err(e))?;
            let e = per_torrent
                .entry(torrent)
                .or_insert_with(|| (0, vec![0; THRESHOLDS.len()]));
            e.0 += i64::from(confirmed);
            for (n, t) in e.1.iter_mut().zip(THRESHOLDS) {
                *n += i64::from(first < t && later >= t);
            }
        }
        let groups = self.label_groups()?;
        let mut by_label: BTreeMap<(u8, String), ThresholdRow> = BTreeMap::new();
        let mut per_torrent: Vec<_> = per_torrent.into_iter().collect();
        per_torrent.sort_by_key(|(torrent, _)| *torrent);
        for (torrent, (stored, counts)) in per_torrent {
            for label in groups.get(&torrent).into_iter().flatten() {
                let row = by_label
                    .entry((label_order(label).0, label.clone()))
                    .or_insert_with(|| ThresholdRow {
                        label: label.clone(),
                        stored_confirmed: 0,
                        points: THRESHOLDS.iter().map(|t| (*t, 0)).collect(),
                    });
                row.stored_confirmed += stored;
                for (point, n) in row.points.iter_mut().zip(&counts) {
                    point.1 += n;
                }
            }
        }
        Ok(by_label.into_values().collect())
    }

    /// The study's planned tables (see the module docs).
    pub fn study_tables(
        &self,
        torrents: &[super::report::TorrentReport],
    ) -> Result<StudyTables, StoreError> {
        let sort = |mut t: KeyTable| {
            // top_rows groups by label name; put "(none)" and "(all)" last.
            t.rows
                .sort_by(|a, b| label_order(&a.label).cmp(&label_order(&b.label)));
            t
        };
        Ok(StudyTables {
            labels: self.label_reports(torrents)?,
            clients: sort(self.client_table()?),
            host_domains: sort(self.host_domain_table()?),
            countries: sort(self.column_table(
                "country",
                Some("continent"),
                "p.country",
                "no peer has a country (no GeoIP database configured, or no address in it)",
            )?),
            asns: sort(self.column_table(
                "asn",
                Some("as_org"),
                "'AS' || p.asn",
                "no peer has an ASN (no ASN database configured, or no address in it)",
            )?),
            speed_by_country: self.speed_table()?,
            threshold_sensitivity: self.threshold_sensitivity()?,
        })
    }

    /// The figures' data, in `buckets` time buckets over the scan window (at least 1 s each).
    pub fn figure_data(&self, buckets: i64) -> Result<FigureData, StoreError> {
        let window = self.scan_window()?;
        let (start, end) = (window.start.unwrap_or(0), window.end.unwrap_or(0));
        let bucket_ms = ((end - start) / buckets.max(1) + 1).max(1000);
        let mut stmt = self
            .conn
            .prepare("SELECT bucket_ms, count FROM gap_histogram ORDER BY bucket_ms")
            .map_err(|e| self.err(e))?;
        let gaps = stmt
            .query_map([], |r| {
                Ok(GapBucket {
                    from_ms: r.get::<_, i64>(0)?.min(GAP_LAST_BUCKET_MS) / GAP_BUCKET_MS
                        * GAP_BUCKET_MS,
                    contacts: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?;
        let discovery = self.discovery_series(bucket_ms)?;
        Ok(FigureData {
            gaps,
            discovery,
            downloads: self.cumulative_downloads(start, bucket_ms)?,
            bucket_ms,
        })
    }

    /// Figure 5.4 per label: confirmed downloads by crossing time, and the scrape-reported
    /// growth as of each bucket end (per torrent the tracker with the largest growth, as in
    /// table 5.6), both cumulative.
    fn cumulative_downloads(
        &self,
        start: i64,
        bucket_ms: i64,
    ) -> Result<Vec<CumulativePoint>, StoreError> {
        // (label, bucket) -> confirmed in the bucket.
        let mut confirmed: BTreeMap<(String, i64), i64> = BTreeMap::new();
        let groups = self.label_groups()?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT torrent_id, (crossed_at - ?1) / ?2, count(*) FROM peers
                 WHERE confirmed AND crossed_at IS NOT NULL GROUP BY 1, 2",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![start, bucket_ms])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let torrent: TorrentId = r.get(0).map_err(|e| self.err(e))?;
            let bucket = r.get::<_, i64>(1).map_err(|e| self.err(e))?.max(0);
            let n: i64 = r.get(2).map_err(|e| self.err(e))?;
            for label in groups.get(&torrent).into_iter().flatten() {
                *confirmed.entry((label.clone(), bucket)).or_default() += n;
            }
        }
        // Scrapes: per (label, torrent, tracker) the growth since its first scrape, by bucket.
        let mut growth: BTreeMap<(String, i64, String), Vec<(i64, i64)>> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare(&format!(
                "{LABELLED} SELECT tl.label, s.torrent_id, s.tracker, (s.at - ?1) / ?2, s.downloaded
                 FROM scrapes s JOIN tl ON tl.torrent_id = s.torrent_id ORDER BY s.at, s.id"
            ))
            .map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(params![start, bucket_ms])
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let get = |i| r.get::<_, i64>(i);
            let key = (
                r.get::<_, String>(0).map_err(|e| self.err(e))?,
                get(1).map_err(|e| self.err(e))?,
                r.get::<_, String>(2).map_err(|e| self.err(e))?,
            );
            growth.entry(key).or_default().push((
                get(3).map_err(|e| self.err(e))?.max(0),
                get(4).map_err(|e| self.err(e))?,
            ));
        }
        let last_bucket = confirmed
            .keys()
            .map(|k| k.1)
            .chain(growth.values().flat_map(|v| v.iter().map(|p| p.0)))
            .max()
            .unwrap_or(0);
        let mut labels: Vec<String> = confirmed
            .keys()
            .map(|k| k.0.clone())
            .chain(growth.keys().map(|k| k.0.clone()))
            .collect();
        labels.sort_by(|a, b| label_order(a).cmp(&label_order(b)));
        labels.dedup();
        let mut out = Vec::new();
        for label in labels {
            let mut total = 0;
            for bucket in 0..=last_bucket {
                total += confirmed
                    .get(&(label.clone(), bucket))
                    .copied()
                    .unwrap_or(0);
                // Per torrent: the largest growth of its trackers as of this bucket.
                let mut per_torrent: BTreeMap<i64, i64> = BTreeMap::new();
                for ((l, torrent, _), points) in &growth {
                    if *l != label {
                        continue;
                    }
                    let first = points[0].1;
                    if let Some(latest) = points.iter().take_while(|p| p.0 <= bucket).last() {
                        let g = per_torrent.entry(*torrent).or_insert(i64::MIN);
                        *g = (*g).max(latest.1 - first);
                    }
                }
                out.push(CumulativePoint {
                    label: label.clone(),
                    at: start + (bucket + 1) * bucket_ms,
                    confirmed: total,
                    reported: (!per_torrent.is_empty()).then(|| per_torrent.values().sum()),
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{TorrentRecord, TorrentSource};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        (dir, store)
    }

    fn torrent(store: &Store, byte: u8) -> i64 {
        store
            .upsert_torrent(&TorrentRecord {
                info_hash_v1: Some([byte; 20]),
                info_hash_v2: None,
                name: None,
                piece_count: Some(100),
                piece_length: Some(1 << 20),
                total_size: None,
                source: TorrentSource::Hash,
                added_at: 0,
                trackers: vec![],
            })
            .unwrap()
    }

    /// A peer with (first, below, above, last) progress; `confirmed` as the scan stored it.
    #[allow(clippy::too_many_arguments)]
    fn peer(
        store: &Store,
        torrent: i64,
        port: u16,
        first: Option<f64>,
        below: Option<f64>,
        above: Option<f64>,
        last: Option<f64>,
        confirmed: bool,
        duplicate_of: Option<i64>,
    ) {
        store
            .conn
            .execute(
                "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source, first_seen_at,
                    first_contact_at, first_progress, below_progress, above_progress, last_progress, confirmed, duplicate_of)
                 VALUES (?1, '10.0.0.1', '10.0.0.1', ?2, 0, 1, 1, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    torrent,
                    port,
                    first.map(|_| 1000),
                    first,
                    below,
                    above,
                    last,
                    confirmed,
                    duplicate_of
                ],
            )
            .unwrap();
    }

    #[test]
    fn threshold_sensitivity_applies_the_rule_to_stored_contacts() {
        let (_dir, store) = store();
        let t = torrent(&store, 1);
        store.add_labels(t, &["set".to_string()]).unwrap();
        // Seen at 50 %, 95 %, then 99 %: confirmed at every threshold up to 99 %.
        peer(
            &store,
            t,
            1,
            Some(0.5),
            Some(0.95),
            Some(0.99),
            Some(0.99),
            true,
            None,
        );
        // First seen at 99 %, later complete: only a 100 % threshold confirms it.
        peer(
            &store,
            t,
            2,
            Some(0.99),
            None,
            Some(0.99),
            Some(1.0),
            false,
            None,
        );
        // 20 % → 93 %, never crossed 98 %: confirmed up to 93 %.
        peer(
            &store,
            t,
            3,
            Some(0.2),
            Some(0.93),
            None,
            Some(0.93),
            false,
            None,
        );
        // A duplicate row (its download counted on another row) and a peer never reached.
        peer(
            &store,
            t,
            4,
            Some(0.1),
            Some(0.1),
            Some(1.0),
            Some(1.0),
            false,
            Some(1),
        );
        peer(&store, t, 5, None, None, None, None, false, None);
        let rows = store.threshold_sensitivity().unwrap();
        let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["set", ALL_LABELS]);
        for row in &rows {
            assert_eq!(row.stored_confirmed, 1);
            let counts: Vec<i64> = row.points.iter().map(|p| p.1).collect();
            //                   90 91 92 93 94 95 96 97 98 99 100
            assert_eq!(counts, [2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1], "{row:?}");
            // At 100 % only the second peer: the first never reached 100 %.
            assert_eq!(row.points[10], (1.0, 1));
        }
    }

    #[test]
    fn unlabelled_torrents_are_their_own_group_and_all_appears_with_labels() {
        let (_dir, store) = store();
        let a = torrent(&store, 1);
        let b = torrent(&store, 2);
        peer(
            &store,
            a,
            1,
            Some(0.5),
            Some(0.5),
            Some(1.0),
            Some(1.0),
            true,
            None,
        );
        peer(
            &store,
            b,
            1,
            Some(0.5),
            Some(0.5),
            None,
            Some(0.5),
            false,
            None,
        );
        let groups = |store: &Store| -> Vec<(String, i64)> {
            store
                .threshold_sensitivity()
                .unwrap()
                .into_iter()
                .map(|r| (r.label, r.stored_confirmed))
                .collect()
        };
        assert_eq!(groups(&store), [(NO_LABEL.to_string(), 1)]);
        store
            .add_labels(a, &["big".to_string(), "films".to_string()])
            .unwrap();
        assert_eq!(
            groups(&store),
            [
                ("big".to_string(), 1),
                ("films".to_string(), 1),
                (NO_LABEL.to_string(), 0),
                (ALL_LABELS.to_string(), 1)
            ]
        );
        let err = store
            .add_labels(a, &["ok".into(), " x".into()])
            .unwrap_err();
        assert_eq!(err.to_string(), "label \" x\" starts or ends with a space");
        assert_eq!(store.labels().unwrap()[&a], ["big", "films"]);
    }

    #[test]
    fn clients_come_from_the_peer_id_and_geo_tables_say_why_they_are_empty() {
        let (_dir, store) = store();
        let t = torrent(&store, 1);
        for (port, peer_id, client, confirmed) in [
            (
                1,
                Some("-qB4630-abcdefghijkl"),
                Some("qBittorrent/4.6.3"),
                1,
            ),
            (2, Some("-qB4630-mnopqrstuvwx"), None, 0),
            (3, None, Some("Foo 1.0"), 0),
            (4, Some("\u{1}\u{2}garbage-peer-id-xx"), Some("Bar 2"), 0),
            (5, Some("-qB4510-abcdefghijkl"), None, 0),
        ] {
            store
                .conn
                .execute(
                    "INSERT INTO peers (torrent_id, ip_key, ip, port, ipv6, sources, first_source, first_seen_at,
                        peer_id, client, confirmed) VALUES (?1, 'k', 'k', ?2, 0, 1, 1, 0, ?3, ?4, ?5)",
                    params![
                        t,
                        port,
                        peer_id.map(|p: &str| crate::proto::hex::encode(p.as_bytes())),
                        client,
                        confirmed
                    ],
                )
                .unwrap();
        }
        let clients = store.client_table().unwrap();
        let rows: Vec<(&str, Option<&str>, i64, i64)> = clients
            .rows
            .iter()
            .map(|r| (r.key.as_str(), r.detail.as_deref(), r.peers, r.confirmed))
            .collect();
        assert_eq!(
            rows,
            [
                ("qBittorrent", Some("4.6.3"), 2, 1),
                ("Bar 2", None, 1, 0),
                ("Foo 1.0", None, 1, 0),
                ("qBittorrent", Some("4.5.1"), 1, 0)
            ]
        );
        assert_eq!(clients.rows[0].share_peers, 0.4);
        assert_eq!(clients.rows[0].share_confirmed, Some(1.0));

        // No GeoIP values yet: empty tables whose note says why.
        let tables = store.study_tables(&[]).unwrap();
        assert!(tables.countries.rows.is_empty());
        assert_eq!(
            tables.countries.note.as_deref(),
            Some("no peer has a country (no GeoIP database configured, or no address in it)")
        );
        assert_eq!(tables.countries.unknown_peers, 5);
        assert!(tables
            .host_domains
            .note
            .as_deref()
            .unwrap()
            .contains("reverse DNS off"));
        assert!(store.speed_table().unwrap().note.is_some());

        // Once the columns hold values (the writer's GeoIP lookups), the same queries fill the
        // tables.
        store
            .conn
            .execute_batch(
                "UPDATE peers SET country = 'DE', continent = 'EU', asn = 3320, as_org = 'DTAG' WHERE port <= 2;
                 UPDATE peers SET max_speed = 2.0 WHERE port = 1;",
            )
            .unwrap();
        let tables = store.study_tables(&[]).unwrap();
        let de = &tables.countries.rows[0];
        assert_eq!(
            (
                de.key.as_str(),
                de.detail.as_deref(),
                de.peers,
                de.confirmed
            ),
            ("DE", Some("EU"), 2, 1)
        );
        assert!(tables.countries.note.is_none());
        assert_eq!(tables.countries.unknown_peers, 3);
        let asn = &tables.asns.rows[0];
        assert_eq!(
            (asn.key.as_str(), asn.detail.as_deref()),
            ("AS3320", Some("DTAG"))
        );
        // 2 pieces/s of 1 MiB.
        let speed = &tables.speed_by_country.rows[0];
        assert_eq!(
            (speed.country.as_str(), speed.median_bps),
            ("DE", 2.0 * 1048576.0)
        );
        assert!(tables
            .host_domains
            .note
            .as_deref()
            .unwrap()
            .contains("reverse DNS off"));
        // Reverse DNS answers: a domain for two peers, no name for one.
        store
            .conn
            .execute_batch(
                "UPDATE peers SET host_domain = 'example-isp.co.uk', geo_lookup = geo_lookup | 4 WHERE port <= 2;
                 UPDATE peers SET geo_lookup = geo_lookup | 4 WHERE port = 3;",
            )
            .unwrap();
        let hosts = store.study_tables(&[]).unwrap().host_domains;
        let isp = &hosts.rows[0];
        assert_eq!(
            (isp.key.as_str(), isp.peers, isp.confirmed),
            ("example-isp.co.uk", 2, 1)
        );
        assert_eq!(hosts.unknown_peers, 3);
        assert_eq!(
            hosts.note.as_deref(),
            Some(
                "reverse DNS answered for 3 peers: 2 with a name, 1 without one (NXDOMAIN or no \
                 PTR record); 2 not looked up (reverse DNS off when they were stored, no answer \
                 yet, or the resolver failed)"
            )
        );
    }
}

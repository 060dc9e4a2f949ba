//! Row streams for `swarmscan export`: peers, contacts and discovery requests, one row at a
//! time from SQLite (nothing is collected in memory), with a fixed schema per table.
//!
//! * `peers`: one row per `peers` row, with its torrent's info-hash and labels, and the
//!   GeoIP / host-domain columns when the database has them.
//! * `contacts`: the database keeps no row per contact; per peer it keeps the first contact,
//!   the last contact below the threshold before crossing, the first contact at or above it,
//!   the latest contact, and the estimated crossing time. `contacts` unpivots those into one
//!   row each (`kind` = first | below | above | last | crossing), with time and progress
//!   (`crossing` has no progress: it is interpolated). Contacts between them are not stored.
//! * `discovery`: one row per `discovery_requests` row (announce, lookup, PEX message,
//!   incoming connection) with the source's name and the torrent's info-hash.

use super::record::{PeerSource, Transport};
use super::{Store, StoreError};

/// Which table to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportTable {
    /// One row per peer.
    Peers,
    /// One row per stored contact observation of a peer.
    Contacts,
    /// One row per discovery request.
    Discovery,
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit integer (times are Unix milliseconds).
    Int,
    /// Double.
    Float,
    /// UTF-8 text.
    Text,
    /// Boolean.
    Bool,
}

/// One cell.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// No value.
    Null,
    /// Integer or boolean (0/1).
    Int(i64),
    /// Double.
    Float(f64),
    /// Text.
    Text(String),
}

/// The columns of an export.
pub type Schema = Vec<(String, ColumnType)>;

const PEER_COLUMNS: &[(&str, ColumnType, &str)] = &[
    ("peer_row", ColumnType::Int, "p.id"),
    (
        "info_hash",
        ColumnType::Text,
        "coalesce(t.info_hash_v1, t.info_hash_v2)",
    ),
    ("labels", ColumnType::Text, LABELS_SQL),
    ("ip", ColumnType::Text, "p.ip"),
    ("port", ColumnType::Int, "p.port"),
    ("ipv6", ColumnType::Bool, "p.ipv6"),
    ("peer_id", ColumnType::Text, "p.peer_id"),
    ("client", ColumnType::Text, "p.client"),
    ("sources", ColumnType::Text, "p.sources"),
    ("first_source", ColumnType::Text, "p.first_source"),
    ("first_seen_at", ColumnType::Int, "p.first_seen_at"),
    ("first_contact_at", ColumnType::Int, "p.first_contact_at"),
    ("first_progress", ColumnType::Float, "p.first_progress"),
    ("last_contact_at", ColumnType::Int, "p.last_contact_at"),
    ("last_progress", ColumnType::Float, "p.last_progress"),
    ("below_at", ColumnType::Int, "p.below_at"),
    ("below_progress", ColumnType::Float, "p.below_progress"),
    ("above_at", ColumnType::Int, "p.above_at"),
    ("above_progress", ColumnType::Float, "p.above_progress"),
    ("crossed_at", ColumnType::Int, "p.crossed_at"),
    ("confirmed", ColumnType::Bool, "p.confirmed"),
    ("crossing_seen", ColumnType::Text, "p.crossing_seen"),
    ("attempts", ColumnType::Int, "p.attempts"),
    ("contacts", ColumnType::Int, "p.contacts"),
    ("failures", ColumnType::Int, "p.failures"),
    ("max_speed", ColumnType::Float, "p.max_speed"),
    ("transport", ColumnType::Text, "p.transport"),
    ("last_error", ColumnType::Text, "p.last_error"),
    ("portless", ColumnType::Bool, "p.portless"),
    ("duplicate_of", ColumnType::Int, "p.duplicate_of"),
];

/// Peer-description columns exported when the database has them.
const GEO_COLUMNS: &[(&str, ColumnType)] = &[
    ("country", ColumnType::Text),
    ("city", ColumnType::Text),
    ("continent", ColumnType::Text),
    ("asn", ColumnType::Int),
    ("as_org", ColumnType::Text),
    ("host_domain", ColumnType::Text),
];

/// A torrent's labels, ";"-joined in name order (NULL without labels).
const LABELS_SQL: &str =
    "(SELECT group_concat(label, ';') FROM (SELECT label FROM torrent_labels l WHERE l.torrent_id = t.id ORDER BY label))";

const CONTACT_KINDS: [&str; 5] = ["first", "below", "above", "last", "crossing"];

impl Store {
    /// Rows the export of `table` will have (for a progress bar).
    pub fn export_rows(&self, table: ExportTable) -> Result<u64, StoreError> {
        let sql = match table {
            ExportTable::Peers => "SELECT count(*) FROM peers",
            ExportTable::Contacts => {
                "SELECT coalesce(sum((first_contact_at IS NOT NULL) + (below_at IS NOT NULL) + (above_at IS NOT NULL)
                        + (last_contact_at IS NOT NULL) + (crossed_at IS NOT NULL)), 0) FROM peers"
            }
            ExportTable::Discovery => "SELECT count(*) FROM discovery_requests",
        };
        self.conn
            .query_row(sql, [], |r| r.get::<_, i64>(0))
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// The columns of an export of `table`.
    pub fn export_schema(&self, table: ExportTable) -> Result<Schema, StoreError> {
        let cols = |list: &[(&str, ColumnType)]| {
            list.iter()
                .map(|(n, t)| (n.to_string(), *t))
                .collect::<Schema>()
        };
        Ok(match table {
            ExportTable::Peers => {
                let mut schema: Schema = PEER_COLUMNS
                    .iter()
                    .map(|(n, t, _)| (n.to_string(), *t))
                    .collect();
                let present = self.peer_columns()?;
                schema.extend(
                    cols(GEO_COLUMNS)
                        .into_iter()
                        .filter(|(n, _)| present.contains(n)),
                );
                schema
            }
            ExportTable::Contacts => cols(&[
                ("peer_row", ColumnType::Int),
                ("info_hash", ColumnType::Text),
                ("labels", ColumnType::Text),
                ("kind", ColumnType::Text),
                ("at", ColumnType::Int),
                ("progress", ColumnType::Float),
            ]),
            ExportTable::Discovery => cols(&[
                ("at", ColumnType::Int),
                ("info_hash", ColumnType::Text),
                ("labels", ColumnType::Text),
                ("source", ColumnType::Text),
                ("tracker", ColumnType::Text),
                ("received", ColumnType::Int),
                ("new", ColumnType::Int),
                ("duplicate", ColumnType::Int),
                ("duration_ms", ColumnType::Int),
                ("error", ColumnType::Text),
            ]),
        })
    }

    /// Calls `f` with each row of the export of `table`, in row order; stops early (without
    /// an error) when `f` returns `false`.
    pub fn for_each_export_row(
        &self,
        table: ExportTable,
        mut f: impl FnMut(&[Value]) -> bool,
    ) -> Result<(), StoreError> {
        let schema = self.export_schema(table)?;
        let sql = match table {
            ExportTable::Peers => {
                let mut exprs: Vec<String> =
                    PEER_COLUMNS.iter().map(|(_, _, e)| e.to_string()).collect();
                exprs.extend(schema[PEER_COLUMNS.len()..].iter().map(|(n, _)| format!("p.{n}")));
                format!(
                    "SELECT {} FROM peers p JOIN torrents t ON t.id = p.torrent_id ORDER BY p.id",
                    exprs.join(", ")
                )
            }
            ExportTable::Contacts => format!(
                "SELECT p.id, coalesce(t.info_hash_v1, t.info_hash_v2), {LABELS_SQL},
                        p.first_contact_at, p.first_progress, p.below_at, p.below_progress, p.above_at, p.above_progress,
                        p.last_contact_at, p.last_progress, p.crossed_at
                 FROM peers p JOIN torrents t ON t.id = p.torrent_id
                 WHERE coalesce(p.first_contact_at, p.below_at, p.above_at, p.last_contact_at, p.crossed_at) IS NOT NULL
                 ORDER BY p.id"
            ),
            ExportTable::Discovery => format!(
                "SELECT d.at, coalesce(t.info_hash_v1, t.info_hash_v2), {LABELS_SQL}, d.source, d.tracker, d.received,
                        d.new, d.duplicate, d.duration_ms, d.error
                 FROM discovery_requests d JOIN torrents t ON t.id = d.torrent_id ORDER BY d.id"
            ),
        };
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut row: Vec<Value> = Vec::with_capacity(schema.len());
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            match table {
                ExportTable::Peers => {
                    row.clear();
                    for (i, (name, kind)) in schema.iter().enumerate() {
                        // Bit sets as names ("tracker_udp+dht", "tcp+mse").
                        let bits = || r.get::<_, i64>(i).map_err(|e| self.err(e));
                        let v = match name.as_str() {
                            "sources" => Value::Text(PeerSource::mask_names(bits()?)),
                            "first_source" => Value::Text(
                                PeerSource::from_bit(bits()?)
                                    .map_or("unknown", |s| s.as_str())
                                    .to_string(),
                            ),
                            "transport" => Value::Text(Transport(bits()? as u8).names()),
                            _ => read_value(r, i, *kind).map_err(|e| self.err(e))?,
                        };
                        row.push(v);
                    }
                    if !f(&row) {
                        return Ok(());
                    }
                }
                ExportTable::Contacts => {
                    let head: [Value; 3] = [
                        read_value(r, 0, ColumnType::Int).map_err(|e| self.err(e))?,
                        read_value(r, 1, ColumnType::Text).map_err(|e| self.err(e))?,
                        read_value(r, 2, ColumnType::Text).map_err(|e| self.err(e))?,
                    ];
                    for (k, kind) in CONTACT_KINDS.iter().enumerate() {
                        let at =
                            read_value(r, 3 + 2 * k, ColumnType::Int).map_err(|e| self.err(e))?;
                        if at == Value::Null {
                            continue;
                        }
                        let progress = if *kind == "crossing" {
                            Value::Null
                        } else {
                            read_value(r, 4 + 2 * k, ColumnType::Float).map_err(|e| self.err(e))?
                        };
                        row.clear();
                        row.extend(head.iter().cloned());
                        row.extend([Value::Text(kind.to_string()), at, progress]);
                        if !f(&row) {
                            return Ok(());
                        }
                    }
                }
                ExportTable::Discovery => {
                    row.clear();
                    for (i, (_, kind)) in schema.iter().enumerate() {
                        let v = if i == 3 {
                            let bit: i64 = r.get(3).map_err(|e| self.err(e))?;
                            Value::Text(
                                PeerSource::from_bit(bit)
                                    .map_or("unknown", |s| s.as_str())
                                    .to_string(),
                            )
                        } else {
                            read_value(r, i, *kind).map_err(|e| self.err(e))?
                        };
                        row.push(v);
                    }
                    if !f(&row) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads column `i` as `kind`; a value of another storage class is converted the way
/// SQLite would show it, never an error.
fn read_value(r: &rusqlite::Row<'_>, i: usize, kind: ColumnType) -> rusqlite::Result<Value> {
    use rusqlite::types::ValueRef;
    Ok(match (r.get_ref(i)?, kind) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(v), ColumnType::Int | ColumnType::Bool) => Value::Int(v),
        (ValueRef::Integer(v), ColumnType::Float) => Value::Float(v as f64),
        (ValueRef::Real(v), ColumnType::Float) => Value::Float(v),
        (ValueRef::Real(v), ColumnType::Int | ColumnType::Bool) => Value::Int(v as i64),
        (ValueRef::Text(t), ColumnType::Text) => {
            Value::Text(String::from_utf8_lossy(t).into_owned())
        }
        (ValueRef::Integer(v), ColumnType::Text) => Value::Text(v.to_string()),
        (ValueRef::Real(v), ColumnType::Text) => Value::Text(v.to_string()),
        (ValueRef::Text(t), _) => {
            let t = String::from_utf8_lossy(t);
            match kind {
                ColumnType::Float => t.parse().map_or(Value::Null, Value::Float),
                _ => t.parse().map_or(Value::Null, Value::Int),
            }
        }
        (ValueRef::Blob(b), _) => Value::Text(crate::proto::hex::encode(b)),
    })
}

//! Torrents added to and removed from a running scan: `swarmscan add` and `swarmscan remove`
//! write the `torrents` table (their only channel to the scan is the database, so they work
//! the same whether a scan runs or not); the monitor reads the table every
//! [`POLL_EVERY`], or at once when SIGUSR1 wakes it (`add` and `remove` send it to the pid in
//! `<database>.pid`, see [`crate::service::instance`]).
//!
//! An added torrent goes into a new catalog snapshot (old indices kept, see
//! [`Catalog::with_added`]) sent to every worker first, then to discovery, which announces it
//! at once; its peers are probed as discovery hands them over. A removed one is flagged in the
//! catalog (shared by every snapshot): workers drop its peers from their queues as they come
//! up, probes in flight finish, incoming peers for it are turned away, and discovery sends one
//! `stopped` announce to each of its trackers and then leaves it alone. Adding it again clears
//! the flag: announces resume at once (a `started` one), the peers the workers put aside
//! are due again within a second.
//!
//! [`Catalog::with_added`]: crate::scan::catalog::Catalog::with_added

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::start::Running;
use crate::inputs::TorrentInput;
use crate::scan::catalog::CatalogTorrent;
use crate::scan::discovery::DiscoveryMsg;
use crate::scan::driver::WorkerMsg;
use crate::store::Store;

/// How often the `torrents` table is read without a wake-up.
pub(super) const POLL_EVERY: Duration = Duration::from_secs(2);

/// The monitor's view of the `torrents` table.
pub(super) struct LiveTorrents {
    /// A read connection of its own (the writer thread has the other); None when it could not
    /// be opened (logged once; the scan goes on with the torrents it has).
    store: Option<Store>,
    /// Catalog index of each torrent row scanned.
    by_db_id: HashMap<i64, u32>,
    next_poll: Instant,
    /// The last read failed: logged once until one succeeds.
    failing: bool,
}

impl LiveTorrents {
    pub(super) fn new(running: &Running) -> LiveTorrents {
        let database = &running.config.database;
        let store = match Store::open_existing(database) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(
                    "torrents added or removed while the scan runs will not be seen: {e}"
                );
                None
            }
        };
        LiveTorrents {
            store,
            by_db_id: running
                .catalog
                .iter()
                .enumerate()
                .map(|(i, t)| (t.db_id, i as u32))
                .collect(),
            next_poll: Instant::now() + POLL_EVERY,
            failing: false,
        }
    }

    /// Reads the table when it is time or when woken, and brings the scan in line with it.
    pub(super) fn poll(&mut self, running: &mut Running) {
        let woken = running
            .opts
            .wake
            .as_ref()
            .is_some_and(|w| w.swap(false, Ordering::Relaxed));
        if !woken && Instant::now() < self.next_poll {
            return;
        }
        self.next_poll = Instant::now() + POLL_EVERY;
        let Some(store) = &self.store else {
            return;
        };
        let states = match store.torrent_states() {
            Ok(s) => {
                self.failing = false;
                s
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!("reading the torrents table for added or removed torrents: {e}");
                }
                return;
            }
        };
        let mut new_ids = Vec::new();
        for (id, removed_at) in states {
            match self.by_db_id.get(&id) {
                Some(&idx) => {
                    let removed = removed_at.is_some();
                    if running.catalog.set_removed(idx, removed) {
                        let name = &running.catalog.get(idx).name;
                        if removed {
                            tracing::info!(torrent = %name, "removed: no more probes or announces");
                        } else {
                            tracing::info!(torrent = %name, "added back to the scan");
                        }
                    }
                }
                None if removed_at.is_none() => new_ids.push(id),
                None => {}
            }
        }
        if new_ids.is_empty() {
            running.count_scanned();
            return;
        }
        let rows = match store.torrents() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("reading added torrents: {e}");
                return;
            }
        };
        let mut added = Vec::new();
        for row in rows.into_iter().filter(|r| new_ids.contains(&r.id)) {
            let db_id = row.id;
            let Some(t) = TorrentInput::from_row(row) else {
                continue;
            };
            if running.catalog.index_of(&t.wire_hash).is_some() {
                continue;
            }
            self.by_db_id
                .insert(db_id, (running.catalog.len() + added.len()) as u32);
            added.push(CatalogTorrent {
                db_id,
                wire_hash: t.wire_hash,
                alt_hash: t.alt_hash,
                name: t.name,
                piece_count: t.piece_count.into(),
                total_size: t.total_size,
                trackers: t.trackers,
            });
        }
        if added.is_empty() {
            running.count_scanned();
            return;
        }
        let names: Vec<String> = added.iter().map(|t| t.name.clone()).collect();
        let catalog = running.catalog.with_added(added);
        // Every worker first, then discovery: no peer of a new torrent reaches a worker
        // before the catalog that names it.
        for inbox in &running.worker_inboxes {
            let _ = inbox.send(WorkerMsg::Catalog(catalog.clone()));
        }
        running
            .discovery
            .tell(DiscoveryMsg::Catalog(catalog.clone()));
        running.catalog = catalog;
        tracing::info!(
            torrents = running.catalog.len(),
            "scanning {} torrent(s) added while running: {}",
            names.len(),
            names.join(", ")
        );
        running.count_scanned();
    }
}

impl Running {
    /// Publishes how many torrents are scanned now (not removed).
    fn count_scanned(&self) {
        let n = (0..self.catalog.len() as u32)
            .filter(|&i| !self.catalog.is_removed(i))
            .count();
        self.scanned_torrents.store(n as u64, Ordering::Relaxed);
    }
}

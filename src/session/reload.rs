//! SIGHUP: the configuration read again (the same `--config FILE` and `--set`s as at start),
//! checked like at start, and the keys that can change under a running scan applied
//! ([`crate::config::LIVE_KEYS`]: the revisit policy, the tracker intervals, the statistics
//! interval). Keys that changed but are read only at start (sockets, budgets, the database,
//! ...) keep their old values and are listed in one log line: they need a restart. A file
//! that does not load (missing, bad TOML, a bad value) is logged with the key at fault and
//! changes nothing; the scan goes on.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::start::Running;
use crate::config::{Config, ConfigError, LIVE_KEYS};
use crate::scan::discovery::DiscoveryMsg;
use crate::scan::driver::WorkerMsg;
use crate::scan::revisit::RevisitPolicy;
use crate::settings::TrackerSettings;

/// The configuration in effect: live keys as last reloaded, the others as started.
pub(super) struct Reloader {
    applied: Config,
}

impl Reloader {
    pub(super) fn new(running: &Running) -> Reloader {
        Reloader {
            applied: running.config.clone(),
        }
    }

    /// Reloads when SIGHUP came since the last call.
    pub(super) fn poll(&mut self, running: &mut Running) {
        let Some(reload) = &running.opts.reload else {
            return;
        };
        if !reload.signal.swap(false, Ordering::Relaxed) {
            return;
        }
        let new = match reload.config.load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(
                    "SIGHUP: configuration not reloaded, the settings in use stay: {e}"
                );
                return;
            }
        };
        let plan = match plan(&running.config, &self.applied, &new) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "SIGHUP: configuration not reloaded, the settings in use stay: {e}"
                );
                return;
            }
        };
        let old_policy = RevisitPolicy::from(&self.applied);
        let policy = RevisitPolicy::from(&plan.applied);
        if policy != old_policy {
            for inbox in &running.worker_inboxes {
                let _ = inbox.send(WorkerMsg::Policy(policy));
            }
        }
        let tracker = TrackerSettings::from(&plan.applied);
        if tracker != TrackerSettings::from(&self.applied) {
            running.discovery.tell(DiscoveryMsg::Intervals {
                announce_secs: tracker.announce_secs,
                scrape_secs: tracker.scrape_secs,
            });
        }
        running.stats_interval = crate::settings::ScanSettings::from(&plan.applied).stats_interval;
        self.applied = plan.applied;
        if plan.live.is_empty() && plan.restart.is_empty() {
            tracing::info!("SIGHUP: configuration reloaded, nothing changed");
        }
        if !plan.live.is_empty() {
            tracing::info!(
                "SIGHUP: configuration reloaded, applied: {}",
                plan.live.join(", ")
            );
        }
        if !plan.restart.is_empty() {
            tracing::warn!(
                "SIGHUP: changed but read only at start, not applied (restart needed): {}",
                plan.restart.join(", ")
            );
        }
    }
}

/// What a reload does.
#[derive(Debug)]
struct Plan {
    /// `new` with every key that is not live kept as started.
    applied: Config,
    /// Live keys that changed since the last reload.
    live: Vec<String>,
    /// Other keys that differ from the started configuration.
    restart: Vec<String>,
}

fn plan(started: &Config, applied: &Config, new: &Config) -> Result<Plan, ConfigError> {
    let (started_t, new_t) = (table(started)?, table(new)?);
    let (started_l, applied_l, new_l) =
        (leaves(&started_t), leaves(&table(applied)?), leaves(&new_t));
    let live: Vec<String> = changed(&applied_l, &new_l)
        .into_iter()
        .filter(|k| LIVE_KEYS.contains(&k.as_str()))
        .collect();
    let restart: Vec<String> = changed(&started_l, &new_l)
        .into_iter()
        .filter(|k| !LIVE_KEYS.contains(&k.as_str()))
        .collect();
    // The live keys of `new` over the started configuration.
    let mut merged = started_t;
    for key in LIVE_KEYS {
        match new_l.get(*key) {
            Some(v) => set_dotted(&mut merged, key, v.clone()),
            None => remove_dotted(&mut merged, key),
        }
    }
    Ok(Plan {
        applied: Config::from_table(merged)?,
        live,
        restart,
    })
}

fn table(config: &Config) -> Result<toml::Table, ConfigError> {
    toml::Table::try_from(config).map_err(|e| ConfigError::Invalid {
        key: "(configuration)".into(),
        message: e.to_string(),
    })
}

/// Every leaf value by its dotted key.
fn leaves(table: &toml::Table) -> BTreeMap<String, toml::Value> {
    fn walk(t: &toml::Table, prefix: &str, out: &mut BTreeMap<String, toml::Value>) {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(inner) => walk(inner, &key, out),
                _ => {
                    out.insert(key, v.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(table, "", &mut out);
    out
}

/// Keys whose value differs (or that only one side has), in key order.
fn changed(a: &BTreeMap<String, toml::Value>, b: &BTreeMap<String, toml::Value>) -> Vec<String> {
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

fn set_dotted(table: &mut toml::Table, key: &str, value: toml::Value) {
    match key.split_once('.') {
        None => {
            table.insert(key.to_string(), value);
        }
        Some((section, rest)) => {
            let entry = table
                .entry(section.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                set_dotted(inner, rest, value);
            }
        }
    }
}

fn remove_dotted(table: &mut toml::Table, key: &str) {
    match key.split_once('.') {
        None => {
            table.remove(key);
        }
        Some((section, rest)) => {
            if let Some(toml::Value::Table(inner)) = table.get_mut(section) {
                remove_dotted(inner, rest);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(sets: &[&str]) -> Config {
        Config::load(
            None,
            &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    #[test]
    fn live_keys_are_applied_and_the_others_kept_and_listed() {
        let started = config(&["peer.revisit_secs=300", "peer.max_in_flight=100"]);
        let new = config(&[
            "peer.revisit_secs=60",
            "tracker.announce_secs=120",
            "peer.max_in_flight=200",
            "peer.threshold=0.9",
        ]);
        let p = plan(&started, &started, &new).unwrap();
        assert_eq!(p.live, ["peer.revisit_secs", "tracker.announce_secs"]);
        assert_eq!(p.restart, ["peer.max_in_flight", "peer.threshold"]);
        assert_eq!(p.applied.peer.revisit_secs, 60.0);
        assert_eq!(p.applied.tracker.announce_secs, 120.0);
        assert_eq!(
            p.applied.peer.max_in_flight, 100,
            "restart-only: as started"
        );
        assert_eq!(p.applied.peer.threshold, started.peer.threshold);
        let policy = RevisitPolicy::from(&p.applied);
        assert_eq!(policy.revisit_secs, 60.0);
        assert_eq!(
            policy.threshold, started.peer.threshold,
            "the policy keeps the threshold the scan started with"
        );
        // A second reload of the same file: nothing live changed since, the restart list stays.
        let again = plan(&started, &p.applied, &new).unwrap();
        assert!(again.live.is_empty(), "{:?}", again.live);
        assert_eq!(again.restart, ["peer.max_in_flight", "peer.threshold"]);
        // Back to the start: the restart-only change is gone from the list.
        let back = plan(&started, &p.applied, &started).unwrap();
        assert_eq!(back.live, ["peer.revisit_secs", "tracker.announce_secs"]);
        assert!(back.restart.is_empty());
    }

    #[test]
    fn every_live_key_is_a_documented_key() {
        for key in LIVE_KEYS {
            assert!(
                crate::config::KEY_DOCS.iter().any(|(k, _)| k == key),
                "{key}"
            );
        }
    }
}

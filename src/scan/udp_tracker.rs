//! UDP tracker requests on the workers' rings: the app-side adapter of the sans-IO
//! [`Client`] (BEP 15: connection ids, retransmission, keyed transaction ids).
//!
//! Discovery decides what to ask and when, and resolves the tracker's host name on its own
//! threads; it hands each request ([`UdpTrackerJob`]) to the worker the tracker's address
//! hashes to ([`tracker_worker`]), through [`UdpTrackerRoute`]. That worker owns the
//! tracker's connection id and sends from its own UDP socket of the tracker's address family
//! (the listen address, at port + worker index): one tracker always sees one source address,
//! which BEP 15 trackers tie connection ids to. Replies come back to that socket, sorted out
//! by `scan::udp_demux`, and reach [`UdpTrackers::on_datagram`]; the answer goes back
//! through the job's [`Reply`], called on the worker thread (it only queues a message).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::driver::WorkerCounters;
use super::udp_counters::bump;
use crate::engine::{DatagramQueue, Millis};
use crate::proto::tracker_udp::client::{
    Answer, Client, ClientSettings, Dropped, Query, RequestId,
};

/// Where a request's outcome goes: the answer, or the error text recorded for it.
pub type Reply = Box<dyn FnOnce(Result<Answer, String>) + Send>;

/// One request for a worker: ask `tracker` `query`, then call `reply` once.
pub struct UdpTrackerJob {
    pub tracker: SocketAddr,
    pub query: Query,
    pub reply: Reply,
}

/// Which of `workers` runs the requests to `tracker` (a fixed-key hash of its address, so
/// the same tracker stays on the same worker and socket for the whole run).
pub fn tracker_worker(tracker: SocketAddr, workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tracker.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// Discovery's side: a job channel to every worker.
#[derive(Clone)]
pub struct UdpTrackerRoute {
    workers: Vec<Sender<UdpTrackerJob>>,
}

impl UdpTrackerRoute {
    /// Hands `job` to the worker of its tracker; Err (the job's reply back) when that worker
    /// is gone.
    pub fn send(&self, job: UdpTrackerJob) -> Result<(), Reply> {
        let w = tracker_worker(job.tracker, self.workers.len());
        self.workers[w].send(job).map_err(|e| e.into_inner().reply)
    }
}

/// The route and one [`UdpTrackers`] per worker; each worker's transaction ids are keyed
/// with its own secret from `secret`.
pub fn channels(
    workers: usize,
    settings: ClientSettings,
    mut secret: impl FnMut() -> [u8; 32],
) -> (UdpTrackerRoute, Vec<UdpTrackers>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..workers.max(1))
        .map(|_| crossbeam_channel::unbounded())
        .unzip();
    let per_worker = rxs
        .into_iter()
        .map(|jobs| UdpTrackers {
            client: Client::new(secret(), settings),
            jobs,
            replies: HashMap::new(),
            counters: Arc::default(),
        })
        .collect();
    (UdpTrackerRoute { workers: txs }, per_worker)
}

/// Jobs taken from the channel per poll, so a burst of announces can't stall the loop.
const JOBS_PER_POLL: usize = 1024;

/// One worker's UDP tracker requests.
pub struct UdpTrackers {
    client: Client,
    jobs: Receiver<UdpTrackerJob>,
    replies: HashMap<RequestId, Reply>,
    /// The worker's counters (its own until [`UdpTrackers::with_counters`]).
    counters: Arc<WorkerCounters>,
}

impl UdpTrackers {
    /// Count into the worker's counters (`udp_trackers`).
    pub fn with_counters(mut self, counters: Arc<WorkerCounters>) -> UdpTrackers {
        self.counters = counters;
        self
    }

    /// A tracker reply (or anything that looks like one) from `from`.
    pub fn on_datagram(
        &mut self,
        now: Millis,
        from: SocketAddr,
        bytes: &[u8],
        out: &mut DatagramQueue,
    ) {
        if let Err(why) = self.client.handle_datagram(now, from, bytes) {
            tracing::trace!(%from, ?why, "UDP tracker datagram dropped");
            let c = &self.counters.udp_trackers;
            bump(match why {
                Dropped::Forged => &c.replies_forged,
                Dropped::NotPending => &c.replies_late,
                Dropped::TooShort => &c.replies_short,
            });
        }
        self.flush(out);
    }

    /// A datagram to `to` failed with `errno` (an ICMP error, usually port unreachable):
    /// requests to `to`, if it is a tracker of ours, fail with the error's text.
    pub fn on_error(&mut self, to: SocketAddr, errno: i32, out: &mut DatagramQueue) {
        let why = std::io::Error::from_raw_os_error(errno).to_string();
        self.client.handle_unreachable(to, &why);
        self.flush(out);
    }

    /// New jobs, retransmissions and timeouts due at `now`; every loop iteration.
    pub fn poll(&mut self, now: Millis, out: &mut DatagramQueue) {
        for job in self.jobs.try_iter().take(JOBS_PER_POLL) {
            if out.local_for(&job.tracker).is_none() {
                let family = if job.tracker.is_ipv4() {
                    "IPv4"
                } else {
                    "IPv6"
                };
                (job.reply)(Err(format!(
                    "no UDP socket for {} (no {family} address in net.listen)",
                    job.tracker
                )));
                continue;
            }
            let id = self.client.request(now, job.tracker, job.query);
            self.replies.insert(id, job.reply);
        }
        self.client.handle_timeout(now);
        self.flush(out);
    }

    /// Sends what the client wants sent and hands out finished requests.
    fn flush(&mut self, out: &mut DatagramQueue) {
        while let Some((to, bytes)) = self.client.poll_transmit() {
            let sent = out
                .local_for(&to)
                .ok_or(crate::engine::SendRefused::NoSocket)
                .and_then(|local| out.push(local, to, &bytes));
            if let Err(e) = sent {
                bump(&self.counters.udp_trackers.requests_unsent);
                // Like a datagram lost on the way: the retransmission sends it again.
                tracing::debug!(tracker = %to, "UDP tracker request not sent: {e}");
            }
        }
        while let Some((id, result)) = self.client.poll_event() {
            if let Some(reply) = self.replies.remove(&id) {
                reply(result.map_err(|e| e.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracker_stays_on_one_worker_and_trackers_spread_over_all() {
        let addrs: Vec<SocketAddr> = (1..=64)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 6969)))
            .collect();
        let mut used = std::collections::HashSet::new();
        for a in &addrs {
            let w = tracker_worker(*a, 4);
            assert!(w < 4);
            assert_eq!(w, tracker_worker(*a, 4), "stable");
            used.insert(w);
        }
        assert_eq!(used.len(), 4, "64 trackers use every worker");
        assert_eq!(tracker_worker(addrs[0], 1), 0);
    }

    #[test]
    fn replies_dropped_are_counted_by_why() {
        use crate::proto::tracker_udp::{AddressFamily, Request, Response};
        use std::sync::atomic::Ordering;
        let (route, mut workers) = channels(1, ClientSettings::default(), || [1; 32]);
        let mut worker = workers.remove(0);
        let local: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let tracker = SocketAddr::from(([127, 0, 0, 9], 1337));
        let mut out = DatagramQueue::unbound(16, 2048, vec![local]);
        let job = UdpTrackerJob {
            tracker,
            query: Query::Scrape(vec![[0; 20]]),
            reply: Box::new(|_| {}),
        };
        assert!(route.send(job).is_ok());
        worker.poll(0, &mut out);
        let sent = out.take_queued();
        let [(_, to, connect)] = &sent[..] else {
            panic!("one connect: {sent:?}")
        };
        assert_eq!(*to, tracker);
        let Ok(Request::Connect { transaction_id }) = Request::decode(connect) else {
            panic!("a connect request")
        };
        let reply = |transaction_id| {
            Response::Connect {
                transaction_id,
                connection_id: 7,
            }
            .to_bytes(AddressFamily::V4)
        };
        let counted = |w: &UdpTrackers| {
            let c = &w.counters.udp_trackers;
            [&c.replies_forged, &c.replies_late, &c.replies_short]
                .map(|a| a.load(Ordering::Relaxed))
        };
        // A transaction id we never gave, and ours from another address: forged.
        worker.on_datagram(1, tracker, &reply(transaction_id ^ 1), &mut out);
        let elsewhere = SocketAddr::from(([127, 0, 0, 10], 1337));
        worker.on_datagram(2, elsewhere, &reply(transaction_id), &mut out);
        assert_eq!(counted(&worker), [2, 0, 0]);
        assert!(out.take_queued().is_empty(), "nothing sent for a forgery");
        // The real reply moves the request on (the scrape goes out); said again, it is late.
        worker.on_datagram(3, tracker, &reply(transaction_id), &mut out);
        assert_eq!(out.take_queued().len(), 1, "the scrape");
        worker.on_datagram(4, tracker, &reply(transaction_id), &mut out);
        worker.on_datagram(5, tracker, &[0, 0, 0, 0], &mut out);
        assert_eq!(counted(&worker), [2, 1, 1]);
    }

    #[test]
    fn a_job_reaches_its_trackers_worker_and_is_answered_there() {
        let (route, mut workers) = channels(3, ClientSettings::default(), || [1; 32]);
        let tracker = SocketAddr::from(([127, 0, 0, 9], 1337));
        let (tx, rx) = crossbeam_channel::unbounded();
        let job = UdpTrackerJob {
            tracker,
            query: Query::Scrape(vec![[0; 20]]),
            reply: Box::new(move |r| tx.send(r).unwrap()),
        };
        assert!(route.send(job).is_ok());
        let w = tracker_worker(tracker, 3);
        for (i, worker) in workers.iter().enumerate() {
            assert_eq!(worker.jobs.len(), usize::from(i == w));
        }
        // A worker that has ended gives the reply back, so the caller can record why.
        drop(workers.remove(w));
        let job = UdpTrackerJob {
            tracker,
            query: Query::Scrape(vec![[0; 20]]),
            reply: Box::new(|_| {}),
        };
        assert!(route.send(job).is_err());
        assert!(rx.try_recv().is_err(), "nothing answered without a worker");
    }
}

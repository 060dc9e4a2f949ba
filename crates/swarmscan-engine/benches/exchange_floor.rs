//! The engine against the kernel floor, with the trivial conversation ([`Exchange`]): what the
//! engine's own machinery (slots, generations, wheel, buffer ring, driver calls) costs, with
//! no protocol in the way. Both dial the same server, itself an engine worker answering every
//! accepted connection; engine and floor rounds alternate, and the ratio comes from the same
//! run (machines here are shared and noisy). Prints one JSON object.
//!
//! `cargo bench -p swarmscan-engine --bench exchange_floor` (3 s per side);
//! `cargo test` runs it for a fraction of a second as a smoke test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use swarmscan_engine::exchange::{Exchange, ExchangeOutcome};
use swarmscan_engine::{
    floor, Ending, EngineConfig, Millis, ProbeDone, ProbeRequest, Worker, WorkerDriver,
};

/// Linux's ECANCELED: the engine stopped with the exchange still in flight.
const ECANCELED: i32 = 125;
const REQUEST_LEN: usize = 68;
const REPLY_LEN: usize = 80;
const IN_FLIGHT: usize = 256;

/// Answers every accepted connection: reads the request, sends the reply, closes.
struct Server {
    reply: Arc<[u8]>,
    next_token: u64,
    answered: Arc<AtomicU64>,
}

impl WorkerDriver for Server {
    type Conv = Exchange;
    fn next_probe(&mut self, _now: Millis) -> Option<ProbeRequest<Exchange>> {
        None
    }
    fn probe_done(&mut self, _now: Millis, done: ProbeDone<Exchange>) {
        if done.conv.outcome == Some(ExchangeOutcome::Replied) {
            self.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn incoming(
        &mut self,
        now: Millis,
        _remote: SocketAddr,
        _local: SocketAddr,
    ) -> Option<(u64, Exchange)> {
        self.next_token += 1;
        Some((
            self.next_token,
            Exchange::answer(self.reply.clone(), REQUEST_LEN, 5000, now),
        ))
    }
}

/// Dials the server again and again.
struct Dialer {
    server: SocketAddr,
    request: Arc<[u8]>,
    next_token: u64,
    replied: u64,
    failed: u64,
}

impl WorkerDriver for Dialer {
    type Conv = Exchange;
    fn next_probe(&mut self, _now: Millis) -> Option<ProbeRequest<Exchange>> {
        self.next_token += 1;
        Some(ProbeRequest {
            addr: self.server,
            token: self.next_token,
            conv: Exchange::dial(self.request.clone(), REPLY_LEN, 5000),
        })
    }
    fn probe_done(&mut self, _now: Millis, done: ProbeDone<Exchange>) {
        match (done.conv.outcome, done.ending) {
            (Some(ExchangeOutcome::Replied), _) => self.replied += 1,
            // Still in flight when the round stopped: neither success nor failure.
            (_, Ending::Closed(Some(errno))) if errno == ECANCELED => {}
            _ => self.failed += 1,
        }
    }
    fn incoming(&mut self, _: Millis, _: SocketAddr, _: SocketAddr) -> Option<(u64, Exchange)> {
        None
    }
}

fn config(listen: Vec<SocketAddr>) -> EngineConfig {
    EngineConfig {
        workers: 1,
        max_in_flight: IN_FLIGHT,
        max_incoming: 4 * IN_FLIGHT,
        listen,
        ..EngineConfig::default()
    }
}

/// Engine exchanges per second over `secs`, and failures.
fn engine_round(server: SocketAddr, request: &Arc<[u8]>, secs: f64) -> (f64, u64) {
    let stop = AtomicBool::new(false);
    let mut dialer = Dialer {
        server,
        request: request.clone(),
        next_token: 0,
        replied: 0,
        failed: 0,
    };
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::SeqCst);
        });
        let mut worker = Worker::<Exchange>::new(config(Vec::new()).worker(0), Instant::now())
            .expect("dialling worker");
        worker
            .run(&mut dialer, &stop)
            .expect("dialling worker runs");
    });
    let elapsed = started.elapsed().as_secs_f64();
    (dialer.replied as f64 / elapsed, dialer.failed)
}

/// Floor exchanges per second over `secs`, and failures.
fn floor_round(server: SocketAddr, request: &[u8], secs: f64) -> (f64, u64) {
    let (stop, done, errors) = (AtomicBool::new(false), AtomicU64::new(0), AtomicU64::new(0));
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs_f64(secs));
            stop.store(true, Ordering::SeqCst);
        });
        floor::run(
            IN_FLIGHT,
            request,
            REPLY_LEN,
            &|_| server,
            0,
            &stop,
            &done,
            &errors,
        )
        .expect("floor runs");
    });
    let elapsed = started.elapsed().as_secs_f64();
    (
        done.load(Ordering::Relaxed) as f64 / elapsed,
        errors.load(Ordering::Relaxed),
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test` runs benches without it: a short smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (secs_per_side, rounds) = if full { (3.0, 3) } else { (0.3, 1) };
    let request: Arc<[u8]> = Arc::from(vec![b'q'; REQUEST_LEN]);
    let reply: Arc<[u8]> = Arc::from(vec![b'r'; REPLY_LEN]);

    let server_stop = AtomicBool::new(false);
    let answered = Arc::new(AtomicU64::new(0));
    let mut engine_rates = Vec::new();
    let mut floor_rates = Vec::new();
    let mut failures = (0, 0);
    std::thread::scope(|scope| {
        let answered = answered.clone();
        let server_stop = &server_stop;
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        // The worker is not Send (its ring belongs to one thread): built where it runs.
        let handle = scope.spawn(move || {
            let mut worker = Worker::<Exchange>::new(
                config(vec!["127.0.0.1:0".parse().unwrap()]).worker(0),
                Instant::now(),
            )?;
            let _ = addr_tx.send(worker.listen_addrs()[0]);
            let mut driver = Server {
                reply,
                next_token: 0,
                answered,
            };
            worker.run(&mut driver, server_stop)
        });
        let server = addr_rx.recv().expect("server worker started");
        let per_round = secs_per_side / rounds as f64;
        for _ in 0..rounds {
            let (rate, failed) = engine_round(server, &request, per_round);
            engine_rates.push(rate);
            failures.0 += failed;
            let (rate, failed) = floor_round(server, &request, per_round);
            floor_rates.push(rate);
            failures.1 += failed;
        }
        server_stop.store(true, Ordering::SeqCst);
        handle.join().expect("server thread").expect("server runs");
    });
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (engine, floor) = (mean(&engine_rates), mean(&floor_rates));
    assert!(
        engine > 0.0 && floor > 0.0,
        "no exchange completed: engine {engine}/s, floor {floor}/s"
    );
    println!(
        "{{\"bench\":\"exchange_floor\",\"seconds_per_side\":{secs_per_side},\"rounds\":{rounds},\"in_flight\":{IN_FLIGHT},\"request_bytes\":{REQUEST_LEN},\"reply_bytes\":{REPLY_LEN},\"engine_per_sec\":{engine:.1},\"floor_per_sec\":{floor:.1},\"ratio\":{:.3},\"engine_failures\":{},\"floor_failures\":{},\"server_answered\":{}}}",
        engine / floor,
        failures.0,
        failures.1,
        answered.load(Ordering::Relaxed)
    );
}

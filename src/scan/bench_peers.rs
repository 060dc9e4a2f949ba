//! `swarmscan bench peers`: engine memory per known peer, measured.
//!
//! Builds the real per-worker structures (peer table + revisit wheel, every peer scheduled)
//! for N peers spread over T torrents and W workers, routed by the real hash, and reports the
//! resident-memory growth per peer (measured first, on a fresh heap) and the heap the
//! structures hold, next to a baseline built in the same run: the same peers as a plain,
//! exactly sized array of 16-byte (IPv6-capable) address + port + torrent, the least any
//! scanner must hold.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use super::peer_table::{owner_worker, Inserted, PeerTable};
use super::revisit::RevisitWheel;
use crate::store::record::PeerSource;

#[derive(clap::Args, Debug, Clone)]
pub struct PeersBenchArgs {
    /// Known peers in total.
    #[arg(long, default_value_t = 10_000_000, value_parser = crate::limits::count::<u64>(1, 1_000_000_000))]
    pub peers: u64,
    /// Torrents the peers are spread over.
    #[arg(long, default_value_t = 10_000, value_parser = crate::limits::count::<u32>(1, 100_000_000))]
    pub torrents: u32,
    /// Workers (shards).
    #[arg(long, default_value_t = 2, value_parser = crate::limits::count::<usize>(1, crate::limits::MAX_THREADS))]
    pub workers: usize,
    /// Share of IPv6 peers, in percent.
    #[arg(long, default_value_t = 10, value_parser = crate::limits::count::<u32>(0, 100))]
    pub ipv6_percent: u32,
    /// Print JSON (always JSON; kept for symmetry with `bench probes`).
    #[arg(long)]
    pub json: bool,
}

fn peer_addr(i: u64, ipv6_percent: u32) -> SocketAddr {
    // A multiplicative hash spreads addresses like real ones (no locality to exploit).
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let port = 1024 + (h >> 48) as u16 % 60000;
    if (h % 100) < ipv6_percent as u64 {
        let mut o = [0u8; 16];
        o[0] = 0x20;
        o[1] = 0x01;
        o[8..].copy_from_slice(&h.to_be_bytes());
        SocketAddr::new(IpAddr::from(o), port)
    } else {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from((h >> 16) as u32 | 0x0100_0000)),
            port,
        )
    }
}

pub fn run(args: &PeersBenchArgs) -> i32 {
    let n = args.peers;
    let workers = args.workers.max(1);
    let torrents = args.torrents.max(1);

    // The engine's structures.
    let before = crate::metrics::rss_bytes();
    let t0 = Instant::now();
    let per_worker_cap = (n / workers as u64 + n / 100 + 1024).min(u32::MAX as u64) as u32;
    let mut tables: Vec<PeerTable> = (0..workers)
        .map(|_| PeerTable::new(per_worker_cap))
        .collect();
    let mut wheels: Vec<RevisitWheel> = (0..workers).map(|_| RevisitWheel::new(0)).collect();
    let mut duplicates = 0u64;
    for i in 0..n {
        let a = peer_addr(i, args.ipv6_percent);
        let torrent = (i % torrents as u64) as u32;
        let w = owner_worker(torrent, a, workers);
        // Due times spread over a 300 s revisit interval, as in a running scan.
        let due = (i % 300) as u32;
        match tables[w].insert(torrent, a, PeerSource::TrackerUdp.mask(), due) {
            Inserted::New(idx) => wheels[w].schedule(idx, due),
            Inserted::Existing(_) => duplicates += 1,
            Inserted::Full => {}
        }
    }
    let build_secs = t0.elapsed().as_secs_f64();
    let engine_bytes = crate::metrics::rss_bytes().saturating_sub(before);
    let heap: usize = tables.iter().map(|t| t.heap_bytes()).sum::<usize>()
        + wheels.iter().map(|w| w.heap_bytes()).sum::<usize>();
    let known: usize = tables.iter().map(|t| t.len()).sum();

    // Lookups per second on the built tables (discovery's duplicate check).
    let t0 = Instant::now();
    let probes = 1_000_000u64.min(n);
    let mut found = 0u64;
    for i in 0..probes {
        let a = peer_addr(i * 7 % n.max(1), args.ipv6_percent);
        let torrent = ((i * 7 % n.max(1)) % torrents as u64) as u32;
        let w = owner_worker(torrent, a, workers);
        found += tables[w].find(torrent, a).is_some() as u64;
    }
    let lookup_secs = t0.elapsed().as_secs_f64();

    drop(tables);
    drop(wheels);

    // Baseline: the bare minimum any scanner must hold per peer (IPv6-capable address, port,
    // torrent) in one exactly sized array. Built after the engine's structures were measured
    // on a fresh heap; its size is exact, so it is computed rather than read from RSS (the
    // allocator keeps freed memory, which would hide it).
    let t0 = Instant::now();
    let mut base: Vec<([u8; 16], u16, u32)> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let a = peer_addr(i, args.ipv6_percent);
        base.push((
            super::peer_table::ip_bytes(a.ip()),
            a.port(),
            (i % torrents as u64) as u32,
        ));
    }
    let base_secs = t0.elapsed().as_secs_f64();
    let base_bytes = (base.capacity() * std::mem::size_of::<([u8; 16], u16, u32)>()) as u64;
    let checksum: u64 = base.iter().map(|e| e.1 as u64).sum();
    drop(base);

    let per_peer = engine_bytes as f64 / known.max(1) as f64;
    let json = serde_json::json!({
        "peers": n,
        "known_peers": known,
        "duplicates": duplicates,
        "torrents": torrents,
        "workers": workers,
        "ipv6_percent": args.ipv6_percent,
        "rss_bytes_engine": engine_bytes,
        "bytes_per_peer": per_peer,
        "heap_bytes_per_peer": heap as f64 / known.max(1) as f64,
        "baseline_rss_bytes": base_bytes,
        "baseline_bytes_per_peer": base_bytes as f64 / n.max(1) as f64,
        "ratio_to_baseline": per_peer / (base_bytes as f64 / n.max(1) as f64).max(1e-9),
        "build_secs": build_secs,
        "baseline_build_secs": base_secs,
        "inserts_per_sec": n as f64 / build_secs.max(1e-9),
        "lookups_per_sec": probes as f64 / lookup_secs.max(1e-9),
        "lookups_found": found,
        "target_bytes_per_peer": 64,
        "checksum": checksum,
    });
    println!("{json}");
    0
}

#!/usr/bin/env python3
"""A small real BitTorrent swarm on loopback for tests/real_swarm.rs (libtorrent 2.1.1).

One seeder and several leechers, each in its own libtorrent session on its own 127.0.0.x
address, all announcing to the UDP tracker given with --tracker (DHT, LSD, UPnP and NAT-PMP
off). Leechers start one after another and are download-rate limited, so they finish one after
another; finished leechers keep running (seeding) until the end so that a scanner can see them
after they finished. One extra leecher is so slow that it never finishes during the test.

Ground truth goes to stdout as JSON lines (times are Unix milliseconds):
  {"event": "torrent", "path": ..., "info_hash": ..., "pieces": ..., "piece_length": ...}
  {"event": "client", "name": ..., "role": "seeder"|"leecher", "ip": ..., "port": ...,
   "rate_limit": ..., "started_at": ...}
  {"event": "finished", "name": ..., "ip": ..., "port": ..., "at": ...}
  {"event": "progress", "at": ..., "name": ..., "ip": ..., "progress": ..., "pieces": ...,
   "state": ..., "peers": ...}   (every client, once a second)
  {"event": "end", "at": ...}
The driver ends by itself after --max-secs, or earlier when stdin reaches end of file or reads
a line "stop" (the Rust test closes stdin when it is done).

Every client runs in its own process (`real_swarm.py client ...`): libtorrent keeps the UDP
tracker connection ids in a process-wide cache keyed by tracker address, so sessions on
different source addresses in one process would reuse each other's connection ids, which a
tracker that binds them to the source address (aquatic_udp does) silently drops. A client
process ends when its stdin (a pipe from the driver) closes, so none outlives the driver.

With env REAL_SWARM_DEBUG=1 the clients log their peer connections and disconnections (with
libtorrent's reason) to stderr.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import threading
import time

import libtorrent as lt


def now_ms():
    return int(time.time() * 1000)


EMIT_LOCK = threading.Lock()


def emit(obj):
    emit_line(json.dumps(obj, sort_keys=True))


def emit_line(line):
    with EMIT_LOCK:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def stop_on_stdin(stop):
    """Sets `stop` when stdin ends or says "stop"."""
    def watch():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch, daemon=True).start()


def make_torrent(workdir, size, piece_length, tracker, seed):
    """Random content of `size` bytes in workdir/seed/; returns (torrent path, info-hash, torrent_info)."""
    seed_dir = os.path.join(workdir, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    name = "real-swarm.bin"
    rng = random.Random(seed)
    with open(os.path.join(seed_dir, name), "wb") as f:
        f.write(rng.randbytes(size))
    files = lt.list_files(os.path.join(seed_dir, name))
    # v1 only: a hybrid torrent would make peers speak about v2 hashes too.
    ct = lt.create_torrent(files, piece_length, flags=lt.create_torrent.v1_only)
    ct.add_tracker(tracker)
    ct.set_creator("swarmscan tests/py/real_swarm.py")
    lt.set_piece_hashes(ct, seed_dir)
    data = lt.bencode(ct.generate())
    path = os.path.join(workdir, "real-swarm.torrent")
    with open(path, "wb") as f:
        f.write(data)
    info = lt.torrent_info(path)
    return path, str(info.info_hashes().v1), info, seed_dir


def make_session(ip, port, rate_limit):
    settings = {
        "listen_interfaces": f"{ip}:{port}",
        # Outgoing connections from the client's own address too: a client that reaches
        # itself (its address comes back through PEX) bans the source address of that
        # connection, which would otherwise be 127.0.0.1, swarmscan's address.
        "outgoing_interfaces": ip,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | (lt.alert_category.peer | lt.alert_category.connect
           if os.environ.get("REAL_SWARM_DEBUG") else 0),
        "download_rate_limit": rate_limit,
        "user_agent": "swarmscan-real-swarm-test",
    }
    s = lt.session(settings)
    # libtorrent exempts local peers from rate limits (they are in the local peer class only);
    # putting loopback into the global class makes download_rate_limit apply to them.
    f = lt.ip_filter()
    f.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    s.set_peer_class_filter(f)
    return s


def run_client(argv):
    """One libtorrent session with one torrent; reports on stdout until stdin closes."""
    ap = argparse.ArgumentParser(prog="real_swarm.py client")
    ap.add_argument("--name", required=True)
    ap.add_argument("--role", required=True)
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save", required=True)
    ap.add_argument("--max-secs", type=float, required=True)
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.max_secs
    stop = threading.Event()
    stop_on_stdin(stop)

    os.makedirs(args.save, exist_ok=True)
    s = make_session(args.ip, args.port, args.rate)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    h = s.add_torrent(params)
    ident = {"name": args.name, "ip": args.ip, "port": args.port}
    emit(dict(ident, event="client", role=args.role, rate_limit=args.rate,
              started_at=now_ms()))
    finished = False
    last_snapshot = 0.0
    while not stop.is_set() and time.monotonic() < deadline:
        for a in s.pop_alerts():
            if isinstance(a, lt.torrent_finished_alert) and args.role == "leecher" \
                    and not finished:
                finished = True
                emit(dict(ident, event="finished", at=now_ms()))
            elif os.environ.get("REAL_SWARM_DEBUG") and isinstance(
                    a, (lt.peer_disconnected_alert, lt.peer_blocked_alert, lt.peer_error_alert,
                        lt.incoming_connection_alert)):
                sys.stderr.write(f"real_swarm.py: {args.name}: {a.message()}\n")
            elif isinstance(a, (lt.listen_failed_alert, lt.tracker_error_alert)):
                sys.stderr.write(f"real_swarm.py: {args.name}: {a.message()}\n")
        if time.monotonic() - last_snapshot >= 1.0:
            last_snapshot = time.monotonic()
            st = h.status()
            emit(dict(ident, event="progress", at=now_ms(), progress=st.progress,
                      pieces=st.num_pieces, state=str(st.state), peers=st.num_peers))
        time.sleep(0.05)
    s.pause()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        run_client(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracker", required=True, help="udp://127.0.0.1:PORT/announce")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--size", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--piece-length", type=int, default=16 * 1024)
    ap.add_argument("--leechers", type=int, default=5)
    ap.add_argument("--first-start-secs", type=float, default=3.0)
    ap.add_argument("--stagger-secs", type=float, default=7.0)
    ap.add_argument("--rate", type=int, default=96 * 1024, help="bytes/s of a finishing leecher")
    ap.add_argument("--slow-rate", type=int, default=8 * 1024,
                    help="bytes/s of the leecher that never finishes")
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--max-secs", type=float, default=150.0)
    args = ap.parse_args()

    t0 = time.monotonic()
    deadline = t0 + args.max_secs
    stop = threading.Event()
    stop_on_stdin(stop)

    path, info_hash, info, seed_dir = make_torrent(
        args.workdir, args.size, args.piece_length, args.tracker, seed=1234)
    emit({"event": "torrent", "path": path, "info_hash": info_hash,
          "pieces": info.num_pieces(), "piece_length": info.piece_length()})

    # name, role, ip, port, rate limit, start offset (s), save path
    plan = [("seeder", "seeder", "127.0.0.2", args.base_port, 0, 0.0, seed_dir)]
    for i in range(args.leechers):
        plan.append((f"leecher{i}", "leecher", f"127.0.0.{3 + i}", args.base_port + 1 + i,
                     args.rate, args.first_start_secs + i * args.stagger_secs,
                     os.path.join(args.workdir, f"leecher{i}")))
    i = args.leechers
    plan.append(("slow", "leecher", f"127.0.0.{3 + i}", args.base_port + 1 + i,
                 args.slow_rate, args.first_start_secs, os.path.join(args.workdir, "slow")))

    children = []

    def forward(proc):
        for line in proc.stdout:
            emit_line(line.rstrip("\n"))

    pending = sorted(plan, key=lambda p: p[5])
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            elapsed = time.monotonic() - t0
            while pending and pending[0][5] <= elapsed:
                name, role, ip, port, rate, _, save = pending.pop(0)
                left = max(1.0, deadline - time.monotonic())
                proc = subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "client", "--name", name,
                     "--role", role, "--ip", ip, "--port", str(port), "--rate", str(rate),
                     "--torrent", path, "--save", save, "--max-secs", str(left)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                t = threading.Thread(target=forward, args=(proc,), daemon=True)
                t.start()
                children.append((proc, t))
            time.sleep(0.05)
    finally:
        for proc, _ in children:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc, t in children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            t.join(timeout=2)
        emit({"event": "end", "at": now_ms()})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A trackerless swarm on loopback for tests/dht_libtorrent.rs (libtorrent 2.1.1, DHT only).

One seeder and several rate-limited leechers, each a libtorrent session (in this one process)
on its own 127.0.0.x address with the DHT on and tuned for loopback (routing and search IP
restrictions off, dark-internet filter off, unverified node ids accepted), LSD, UPnP and
NAT-PMP off, no tracker and no public bootstrap router: the sessions bootstrap from each
other, and leechers also from --our-node (the scanner's DHT node). Torrents are announced to
the DHT every few seconds, so the leechers find the seeder and a scanner finds them all.

Ground truth goes to stdout as JSON lines (times are Unix milliseconds):
  {"event": "torrent", "info_hash": ..., "magnet": ..., "pieces": ..., "name": ...}
  {"event": "client", "name": ..., "role": "seeder"|"leecher", "ip": ..., "port": ...,
   "started_at": ...}
  {"event": "finished", "name": ..., "ip": ..., "port": ..., "at": ...}
  {"event": "dht_nodes", "name": ..., "nodes": [{"id": hex, "ip": ..., "port": ...}, ...]}
     (each session's live DHT nodes, after stdin reads a line "nodes")
  {"event": "nodes_done"}
  {"event": "end", "at": ...}
The driver ends by itself after --max-secs, or earlier when stdin ends or reads "stop".
"""

import argparse
import json
import os
import queue
import random
import sys
import threading
import time

import libtorrent as lt


def now_ms():
    return int(time.time() * 1000)


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def stdin_lines():
    """Lines of stdin on a queue; None at end of file."""
    q = queue.Queue()

    def read():
        for line in sys.stdin:
            q.put(line.strip())
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def make_torrent(workdir, size, piece_length):
    seed_dir = os.path.join(workdir, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    name = "dht-swarm.bin"
    with open(os.path.join(seed_dir, name), "wb") as f:
        f.write(random.Random(99).randbytes(size))
    ct = lt.create_torrent(lt.list_files(os.path.join(seed_dir, name)), piece_length,
                           flags=lt.create_torrent.v1_only)
    ct.set_creator("swarmscan tests/py/dht_swarm.py")
    lt.set_piece_hashes(ct, seed_dir)
    info = lt.torrent_info(lt.bencode(ct.generate()))
    return info, seed_dir


def make_session(ip, port, rate_limit):
    s = lt.session({
        "listen_interfaces": f"{ip}:{port}",
        "outgoing_interfaces": ip,
        "enable_dht": True,
        # No public router: these nodes know only each other and the scanner's node.
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "dht_announce_interval": 3,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "download_rate_limit": rate_limit,
        "alert_mask": lt.alert_category.status | lt.alert_category.error | lt.alert_category.dht,
        "user_agent": "swarmscan-dht-swarm-test",
    })
    # Loopback peers into the global peer class, so the rate limit applies to them.
    f = lt.ip_filter()
    f.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    s.set_peer_class_filter(f)
    return s


def node_id_of(s):
    state = lt.bdecode(lt.write_session_params_buf(s.session_state(),
                                                    lt.save_state_flags_t.save_dht_state))
    ids = (state or {}).get(b"dht state", {}).get(b"node-id", [])
    return ids[0][:20] if ids else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--leechers", type=int, default=3)
    ap.add_argument("--size", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--piece-length", type=int, default=16 * 1024)
    ap.add_argument("--rate", type=int, default=128 * 1024)
    ap.add_argument("--first-start-secs", type=float, default=8.0)
    ap.add_argument("--stagger-secs", type=float, default=6.0)
    ap.add_argument("--our-node", default="", help="ip:port of the scanner's DHT node")
    ap.add_argument("--max-secs", type=float, default=150.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.max_secs
    commands = stdin_lines()

    info, seed_dir = make_torrent(args.workdir, args.size, args.piece_length)
    info_hash = str(info.info_hashes().v1)
    emit({"event": "torrent", "info_hash": info_hash, "name": info.name(),
          "pieces": info.num_pieces(),
          "magnet": f"magnet:?xt=urn:btih:{info_hash}"})

    plan = [("seeder", "seeder", "127.0.0.2", args.base_port, 0, 0.0, seed_dir)]
    for i in range(args.leechers):
        plan.append((f"leecher{i}", "leecher", f"127.0.0.{3 + i}", args.base_port + 1 + i,
                     args.rate, args.first_start_secs + i * args.stagger_secs,
                     os.path.join(args.workdir, f"leecher{i}")))
    pending = sorted(plan, key=lambda p: p[5])
    clients = []  # (name, role, ip, port, session, handle)
    finished = set()
    try:
        while time.monotonic() < deadline:
            elapsed = time.monotonic() - t0
            while pending and pending[0][5] <= elapsed:
                name, role, ip, port, rate, _, save = pending.pop(0)
                s = make_session(ip, port, rate)
                params = lt.add_torrent_params()
                params.ti = info
                params.save_path = save
                if role == "seeder":
                    params.flags |= lt.torrent_flags.seed_mode
                h = s.add_torrent(params)
                # Bootstrap from the others (and they from the newcomer), and from our node.
                for (_, _, oip, oport, other, _) in clients:
                    s.add_dht_node((oip, oport))
                    other.add_dht_node((ip, port))
                if args.our_node and role == "leecher":
                    oip, oport = args.our_node.rsplit(":", 1)
                    s.add_dht_node((oip, int(oport)))
                clients.append((name, role, ip, port, s, h))
                emit({"event": "client", "name": name, "role": role, "ip": ip, "port": port,
                      "started_at": now_ms()})
            for (name, role, ip, port, s, h) in clients:
                for a in s.pop_alerts():
                    if isinstance(a, lt.torrent_finished_alert) and role == "leecher" \
                            and name not in finished:
                        finished.add(name)
                        emit({"event": "finished", "name": name, "ip": ip, "port": port,
                              "at": now_ms()})
                    elif isinstance(a, lt.listen_failed_alert):
                        sys.stderr.write(f"dht_swarm.py: {name}: {a.message()}\n")
            try:
                cmd = commands.get(timeout=0.05)
            except queue.Empty:
                continue
            if cmd is None or cmd == "stop":
                break
            if cmd == "nodes":
                for (name, _, _, _, s, _) in clients:
                    nid = node_id_of(s)
                    nodes = []
                    if nid is not None:
                        s.dht_live_nodes(lt.sha1_hash(nid))
                        limit = time.monotonic() + 3.0
                        got = None
                        while got is None and time.monotonic() < limit:
                            for a in s.pop_alerts():
                                if isinstance(a, lt.dht_live_nodes_alert):
                                    got = a
                            time.sleep(0.05)
                        if got is not None:
                            nodes = [{"id": str(n["nid"]), "ip": n["endpoint"][0],
                                      "port": n["endpoint"][1]} for n in got.nodes]
                    emit({"event": "dht_nodes", "name": name, "nodes": nodes})
                emit({"event": "nodes_done"})
    finally:
        for (_, _, _, _, s, _) in clients:
            s.pause()
        emit({"event": "end", "at": now_ms()})


if __name__ == "__main__":
    main()

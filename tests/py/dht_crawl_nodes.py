#!/usr/bin/env python3
"""DHT nodes holding known info-hashes, for tests/dht_crawl.rs (libtorrent 2.1.1).

--nodes libtorrent sessions (in this one process), each on its own 127.0.0.x address with the
DHT on and tuned for loopback (routing and search IP restrictions off, dark-internet filter
off, unverified node ids accepted), LSD, UPnP and NAT-PMP off, no public bootstrap router: the
sessions bootstrap from each other. Once their routing tables hold each other, the last
session announces --hashes random info-hashes to the DHT (`dht_announce`, i.e. get_peers and
announce_peer to the closest nodes, which store them), again every few seconds.

Ground truth on stdout, as JSON lines:
  {"event": "node", "ip": ..., "port": ...}            (one per session)
  {"event": "announced", "info_hashes": [hex, ...]}   (after the first announce round)
  {"event": "end"}
Ends by itself after --max-secs, or earlier when stdin ends or reads "stop".
"""

import argparse
import json
import queue
import random
import sys
import threading
import time

import libtorrent as lt


def emit(obj):
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def stdin_lines():
    q = queue.Queue()

    def read():
        for line in sys.stdin:
            q.put(line.strip())
        q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def make_session(ip, port):
    return lt.session({
        "listen_interfaces": f"{ip}:{port}",
        "outgoing_interfaces": ip,
        "enable_dht": True,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_ignore_dark_internet": False,
        "dht_prefer_verified_node_ids": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert_category.error | lt.alert_category.dht,
        "user_agent": "swarmscan-dht-crawl-test",
    })


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-port", type=int, required=True)
    ap.add_argument("--nodes", type=int, default=6)
    ap.add_argument("--hashes", type=int, default=5)
    ap.add_argument("--warmup-secs", type=float, default=4.0)
    ap.add_argument("--max-secs", type=float, default=120.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    deadline = t0 + args.max_secs
    commands = stdin_lines()

    sessions = []
    for i in range(args.nodes):
        ip, port = f"127.0.0.{2 + i}", args.base_port
        s = make_session(ip, port)
        for (oip, oport, other) in sessions:
            s.add_dht_node((oip, oport))
            other.add_dht_node((ip, port))
        sessions.append((ip, port, s))
        emit({"event": "node", "ip": ip, "port": port})

    rng = random.Random(51)
    hashes = [bytes(rng.getrandbits(8) for _ in range(20)) for _ in range(args.hashes)]
    announcer = sessions[-1][2]
    announced = False
    next_announce = t0 + args.warmup_secs
    try:
        while time.monotonic() < deadline:
            if time.monotonic() >= next_announce:
                for h in hashes:
                    announcer.dht_announce(lt.sha1_hash(h), 6881, 0)
                next_announce = time.monotonic() + 5.0
                if not announced:
                    announced = True
                    emit({"event": "announced", "info_hashes": [h.hex() for h in hashes]})
            for (_, _, s) in sessions:
                for a in s.pop_alerts():
                    if isinstance(a, lt.listen_failed_alert):
                        sys.stderr.write(f"dht_crawl_nodes.py: {a.message()}\n")
            try:
                cmd = commands.get(timeout=0.1)
            except queue.Empty:
                continue
            if cmd is None or cmd == "stop":
                break
    finally:
        for (_, _, s) in sessions:
            s.pause()
        emit({"event": "end"})


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Records real KRPC (BEP 5) traffic from libtorrent 2.1.1 on loopback, once.

Two directions are captured into tests/data/dht/:
  lt_query_*.bin     queries libtorrent's DHT sends to our fake nodes (its bootstrap node is a
                     tiny UDP recorder on 127.0.0.1; we answer get_peers with values + token and
                     more fake nodes, so it goes on to announce_peer; dht_sample_infohashes
                     makes it send sample_infohashes). libtorrent 2.x bootstraps, refreshes and
                     even "pings" nodes given to add_dht_node with get_peers, so no ping or
                     find_node query is recorded; its *responses* to both are (below).
  lt_response_*.bin  libtorrent's replies to queries we send to its DHT port
  lt_error_*.bin     libtorrent's error replies to bad queries we send it
Only 127.0.0.1 is used; every loop is bounded by a deadline. Run:
  python3 tests/data/record_dht.py [outdir]
"""
import hashlib
import os
import select
import socket
import sys
import tempfile
import time

import libtorrent as lt

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "dht")
HOST = "127.0.0.1"
INFO_HASH = hashlib.sha1(b"swarmscan dht recording").digest()


# --- minimal bencode (just enough for KRPC) ---------------------------------------------
def benc(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(benc(k) + benc(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def bdec(b, i=0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c == b"l":
        i += 1
        out = []
        while b[i:i + 1] != b"e":
            v, i = bdec(b, i)
            out.append(v)
        return out, i + 1
    if c == b"d":
        i += 1
        out = {}
        while b[i:i + 1] != b"e":
            k, i = bdec(b, i)
            v, i = bdec(b, i)
            out[k] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    return b[j + 1:j + 1 + n], j + 1 + n


def decode(b):
    return bdec(b)[0]


def compact(ip, port):
    return socket.inet_aton(ip) + port.to_bytes(2, "big")


saved = {}


def save(name, data):
    # Keep the first message of each kind: stable files across re-recordings of the same run.
    if name in saved:
        return
    saved[name] = data
    with open(os.path.join(OUT, name + ".bin"), "wb") as f:
        f.write(data)
    print("saved", name, len(data), "bytes")


def main():
    os.makedirs(OUT, exist_ok=True)
    # Fake DHT nodes: the bootstrap node, two more it hands out in replies, and one it only
    # learns of through add_dht_node.
    nodes = []
    for i in range(4):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        node_id = hashlib.sha1(b"fake node %d" % i).digest()
        nodes.append((s, node_id))
    boot_port = nodes[0][0].getsockname()[1]

    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": True,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "%s:%d" % (HOST, boot_port),
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        "dht_prefer_verified_node_ids": False,
        "dht_enforce_node_id": False,
        "dht_ignore_dark_internet": False,
        "alert_mask": lt.alert.category_t.dht_notification | lt.alert.category_t.status_notification,
    }
    ses = lt.session(settings)
    deadline = time.time() + 20
    lt_port = 0
    while time.time() < deadline and not lt_port:
        lt_port = ses.listen_port()
        if not lt_port:
            time.sleep(0.1)
    print("libtorrent DHT on", lt_port)

    # Phase 1: let libtorrent bootstrap against us; ask it to announce and sample.
    token = b"tok\x01"
    announced = sampled = pinged = False
    start = time.time()
    deadline = start + 25
    while time.time() < deadline:
        if not announced and time.time() > start + 3:
            ses.dht_announce(lt.sha1_hash(INFO_HASH), 6881, 0)
            announced = True
        if not sampled and time.time() > start + 4:
            ses.dht_sample_infohashes((HOST, nodes[1][0].getsockname()[1]), lt.sha1_hash(INFO_HASH))
            sampled = True
        if not pinged and time.time() > start + 5:
            # A node libtorrent is told about gets contacted (with get_peers in 2.1.1).
            ses.add_dht_node((HOST, nodes[3][0].getsockname()[1]))
            pinged = True
        ready, _, _ = select.select([s for s, _ in nodes], [], [], 0.2)
        for s in ready:
            data, addr = s.recvfrom(65535)
            my_id = dict((x.fileno(), i) for x, i in nodes)[s.fileno()]
            try:
                msg = decode(data)
            except Exception:
                continue
            if msg.get(b"y") != b"q":
                continue
            q = msg[b"q"].decode()
            save("lt_query_" + q, data)
            r = {"id": my_id}
            others = b"".join(i + compact(HOST, x.getsockname()[1]) for x, i in nodes[:3] if i != my_id)
            if q == "find_node":
                r["nodes"] = others
            elif q == "get_peers":
                r["token"] = token
                r["values"] = [compact("127.0.0.2", 6881), compact("127.0.0.3", 51413)]
                r["nodes"] = others
            elif q == "sample_infohashes":
                r["samples"] = INFO_HASH
                r["num"] = 1
                r["interval"] = 60
                r["nodes"] = others
            reply = {"t": msg[b"t"], "y": "r", "r": r, "ip": compact(addr[0], addr[1])}
            s.sendto(benc(reply), addr)
        if all(("lt_query_" + k) in saved for k in ("get_peers", "announce_peer", "sample_infohashes")):
            break

    # Phase 2: query libtorrent ourselves and record its replies.
    me, my_id = nodes[2]
    target = (HOST, lt_port)

    def ask(name, query, args, extra=None):
        tid = name[:2].encode() + b"\x00\x01"
        msg = {"t": tid, "y": "q", "q": query, "a": dict(args, id=my_id)}
        if extra:
            msg.update(extra)
        me.sendto(benc(msg), target)
        end = time.time() + 5
        while time.time() < end:
            ready, _, _ = select.select([me], [], [], 0.2)
            if not ready:
                continue
            data, addr = me.recvfrom(65535)
            reply = decode(data)
            if reply.get(b"t") != tid:
                continue  # a query from libtorrent, or a stale reply
            kind = "error" if reply.get(b"y") == b"e" else "response"
            save("lt_%s_%s" % (kind, name), data)
            return reply
        print("no reply to", name)
        return None

    ask("ping", "ping", {})
    ask("find_node", "find_node", {"target": INFO_HASH, "want": ["n4", "n6"]})
    gp = ask("get_peers", "get_peers", {"info_hash": INFO_HASH})
    if gp and b"r" in gp and b"token" in gp[b"r"]:
        ask("announce_peer", "announce_peer",
            {"info_hash": INFO_HASH, "port": 6881, "token": gp[b"r"][b"token"], "implied_port": 0})
        ask("get_peers_values", "get_peers", {"info_hash": INFO_HASH})
        ask("get_peers_scrape", "get_peers", {"info_hash": INFO_HASH, "scrape": 1})
    ask("sample_infohashes", "sample_infohashes", {"target": INFO_HASH})
    ask("bad_token", "announce_peer", {"info_hash": INFO_HASH, "port": 6881, "token": b"nope"})
    ask("unknown_method", "swarmscan_unknown", {"target": INFO_HASH})
    ask("missing_info_hash", "get_peers", {})

    with open(os.path.join(OUT, "peer_id_prefix.txt"), "w") as f:
        f.write(lt.default_settings()["peer_fingerprint"] + "\n")
    with open(os.path.join(OUT, "ext_handshake_v.txt"), "w") as f:
        f.write(lt.default_settings()["user_agent"] + "\n")
    del ses
    for s, _ in nodes:
        s.close()
    print("recorded", sorted(saved))


if __name__ == "__main__":
    main()

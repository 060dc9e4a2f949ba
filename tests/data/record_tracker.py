#!/usr/bin/env python3
"""Records the tracker requests a real client (libtorrent 2.1.1, Python bindings) sends.

A tiny loopback tracker listens on one port number for both TCP (HTTP) and UDP. A libtorrent
session gets a torrent whose trackers are http://127.0.0.1:PORT/announce?x=1 and
udp://127.0.0.1:PORT/announce. The recorder answers well enough for libtorrent to go on
(connect -> announce, scrape, and the "stopped" announce when the torrent is removed) and
writes every request it receives, byte for byte, under tests/data/tracker/:

  libtorrent_http_announce_<event>.txt   HTTP request line + headers (the request has no body)
  libtorrent_http_scrape.txt
  libtorrent_udp_connect.bin             BEP 15 packets as received
  libtorrent_udp_announce_<event>.bin
  libtorrent_udp_scrape.bin
  libtorrent_meta.txt                    key=value facts the tests check the bytes against

Everything binds 127.0.0.1 only and stops by itself (bounded waits). Run once:
  python3 tests/data/record_tracker.py
"""
import os
import socket
import struct
import sys
import tempfile
import threading
import time

import libtorrent as lt

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tracker")
PROTOCOL_ID = 0x41727101980
CONNECTION_ID = 0x1122334455667788
EVENTS = {0: "none", 1: "completed", 2: "started", 3: "stopped"}

recorded = {}
lock = threading.Lock()


def save(name, data):
    with lock:
        if name in recorded:
            return
        recorded[name] = data
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print("recorded", name, len(data), "bytes", file=sys.stderr)


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(bencode(k) + bencode(v[k]) for k in sorted(v)) + b"e"
    raise TypeError(v)


def bind_pair():
    """A TCP and a UDP socket on the same loopback port number."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.bind(("127.0.0.1", 0))
        port = tcp.getsockname()[1]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            tcp.close()
            udp.close()
            continue
        return tcp, udp, port
    raise SystemExit("no free port pair")


def serve_http(tcp, stop):
    tcp.listen(8)
    tcp.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = tcp.accept()
        except socket.timeout:
            continue
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        head = data.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
        target = head.split(b" ")[1] if b" " in head else b""
        if target.startswith(b"/scrape"):
            save("libtorrent_http_scrape.txt", head)
            body = bencode({b"files": {}})
        else:
            event = b"none"
            for part in target.split(b"?", 1)[-1].split(b"&"):
                if part.startswith(b"event="):
                    event = part[6:]
            save("libtorrent_http_announce_%s.txt" % event.decode(), head)
            body = bencode({b"interval": 1800, b"peers": socket.inet_aton("127.0.0.2") + struct.pack(">H", 6881)})
        resp = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        try:
            conn.sendall(resp)
        except OSError:
            pass
        conn.close()


def serve_udp(udp, stop):
    udp.settimeout(0.2)
    while not stop.is_set():
        try:
            pkt, addr = udp.recvfrom(2048)
        except socket.timeout:
            continue
        if len(pkt) < 16:
            continue
        conn_id, action, tid = struct.unpack(">QII", pkt[:16])
        if action == 0 and conn_id == PROTOCOL_ID:
            save("libtorrent_udp_connect.bin", pkt)
            udp.sendto(struct.pack(">IIQ", 0, tid, CONNECTION_ID), addr)
        elif action == 1 and len(pkt) >= 98:
            event = struct.unpack(">I", pkt[80:84])[0]
            save("libtorrent_udp_announce_%s.bin" % EVENTS.get(event, "unknown"), pkt)
            peers = socket.inet_aton("127.0.0.3") + struct.pack(">H", 6882)
            udp.sendto(struct.pack(">IIIII", 1, tid, 1800, 0, 1) + peers, addr)
        elif action == 2:
            save("libtorrent_udp_scrape.bin", pkt)
            n = (len(pkt) - 16) // 20
            udp.sendto(struct.pack(">II", 2, tid) + struct.pack(">III", 1, 7, 2) * n, addr)


def wait_for(names, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        with lock:
            if all(n in recorded for n in names):
                return True
        time.sleep(0.1)
    return False


def main():
    os.makedirs(OUT, exist_ok=True)
    tcp, udp, port = bind_pair()
    stop = threading.Event()
    threads = [threading.Thread(target=serve_http, args=(tcp, stop)),
               threading.Thread(target=serve_udp, args=(udp, stop))]
    for t in threads:
        t.start()
    try:
        record(port)
    finally:
        stop.set()
        for t in threads:
            t.join(5)


def record(port):
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "announce_to_all_trackers": True, "announce_to_all_tiers": True,
        "alert_mask": lt.alert.category_t.all_categories,
    })
    fs = lt.file_storage()
    total_size = 4 * 16384
    fs.add_file("swarmscan-golden/a.bin", total_size)
    ct = lt.create_torrent(fs, 16384, flags=lt.create_torrent.v1_only)
    for i in range(4):
        ct.set_hash(i, bytes([i + 1]) * 20)
    ct.add_tracker("http://127.0.0.1:%d/announce?x=1" % port, 0)
    ct.add_tracker("udp://127.0.0.1:%d/announce" % port, 1)
    ti = lt.torrent_info(lt.bencode(ct.generate()))
    with tempfile.TemporaryDirectory() as save_path:
        h = ses.add_torrent({"ti": ti, "save_path": save_path})
        ok = wait_for(["libtorrent_http_announce_started.txt", "libtorrent_udp_connect.bin",
                       "libtorrent_udp_announce_started.bin"], 30)
        if not ok:
            raise SystemExit("libtorrent did not announce in time; recorded: %s" % sorted(recorded))
        h.scrape_tracker(0)
        h.scrape_tracker(1)
        wait_for(["libtorrent_http_scrape.txt", "libtorrent_udp_scrape.bin"], 15)
        listen_port = ses.listen_port()
        peer_id = bytes(ses.get_settings().get("peer_fingerprint", ""), "latin1")
        ses.remove_torrent(h)
        wait_for(["libtorrent_http_announce_stopped.txt", "libtorrent_udp_announce_stopped.bin"], 15)
    with open(os.path.join(OUT, "libtorrent_meta.txt"), "w") as f:
        f.write("libtorrent_version=%s\n" % lt.__version__)
        f.write("info_hash=%s\n" % str(ti.info_hashes().v1))
        f.write("tracker_port=%d\n" % port)
        f.write("listen_port=%d\n" % listen_port)
        f.write("total_size=%d\n" % total_size)
        f.write("peer_id_prefix=%s\n" % peer_id.decode("latin1"))
    print("recorded:", sorted(recorded), file=sys.stderr)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Traffic of many kinds aimed at a `swarmscan sink` for tests/sink.rs (libtorrent 2.1.1).

    sink_clients.py HOST PORT [--seconds S]

Sends to HOST:PORT (the sink's TCP and UDP address), each from its own client:
  bittorrent   a libtorrent session (TCP only, encryption off) dialling the sink as a peer
               of a magnet torrent (torrent_handle.connect_peer)
  mse          the same with encryption forced (out_enc_policy = forced)
  utp          a libtorrent session with TCP disabled dialling the sink over uTP
  krpc         a libtorrent DHT node bootstrapping from the sink (dht_bootstrap_nodes)
  udp_tracker  a libtorrent session announcing to udp://HOST:PORT/announce
  http         Python urllib GET with a Host header
  tls          Python ssl ClientHello with SNI sink.example.org
  gnutella     a recorded Gnutella 0.6 connect (LimeWire)
  edonkey      a recorded eMule hello (OP_HELLO with name and version tags)
  other        a few bytes of nothing known
The sink answers nothing, so every client gives up by itself; libtorrent sessions are kept for
--seconds (default 6) so they retry a few times. Prints one JSON line at the end:
  {"info_hash": HEX, "peer_id_prefix": "-SK0001-", "sni": ..., "http_host": ...}
"""

import argparse
import json
import socket
import ssl
import struct
import threading
import time
import urllib.request

import libtorrent as lt

INFO_HASH = "5ac55ac55ac55ac55ac55ac55ac55ac55ac55ac5"
FINGERPRINT = "-SK0001-"
SNI = "sink.example.org"
HTTP_HOST = "tracker.sink.test:6969"

# Gnutella 0.6 handshake as LimeWire 4.12 sent it.
GNUTELLA = (
    b"GNUTELLA CONNECT/0.6\r\n"
    b"User-Agent: LimeWire/4.12.6\r\n"
    b"X-Ultrapeer: False\r\n"
    b"X-Query-Routing: 0.1\r\n"
    b"Accept-Encoding: deflate\r\n\r\n"
)


def emule_hello():
    """An eMule OP_HELLO: marker 0xE3, LE length, opcode 0x01, hash size 16, user hash,
    client id, port, tag count, tags (name, version), server ip and port."""
    body = bytes([0x01, 0x10]) + bytes.fromhex("8c1f3a02d10e4b6f9a55cd0e6fb7136f")
    body += struct.pack("<IH", 0x0100007F, 4662)
    name = b"http://emule-project.net"
    tags = [
        bytes([0x02, 0x01, 0x00, 0x01]) + struct.pack("<H", len(name)) + name,
        bytes([0x03, 0x01, 0x00, 0x11]) + struct.pack("<I", 0x3C),
    ]
    body += struct.pack("<I", len(tags)) + b"".join(tags)
    body += struct.pack("<IH", 0, 0)
    return bytes([0xE3]) + struct.pack("<I", len(body)) + body


def session(extra):
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "peer_fingerprint": FINGERPRINT,
        "alert_mask": 0,
    }
    settings.update(extra)
    return lt.session(settings)


def add_magnet(ses, host, port, tracker=False, connect=True):
    uri = "magnet:?xt=urn:btih:" + INFO_HASH
    if tracker:
        uri += "&tr=udp://%s:%d/announce" % (host, port)
    atp = lt.parse_magnet_uri(uri)
    atp.save_path = "/tmp"
    h = ses.add_torrent(atp)
    if connect:
        h.connect_peer((host, port))
    return h


def raw_tcp(host, port, payload):
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(payload)
            time.sleep(0.2)
    except OSError:
        pass


def http_get(host, port):
    req = urllib.request.Request(
        "http://%s:%d/announce?info_hash=%%5a%%c5&port=6881" % (host, port),
        headers={"Host": HTTP_HOST},
    )
    try:
        urllib.request.urlopen(req, timeout=1)
    except Exception:
        pass  # the sink never answers


def tls_hello(host, port):
    ctx = ssl.create_default_context()
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            ctx.wrap_socket(s, server_hostname=SNI)
    except Exception:
        pass  # no ServerHello ever comes


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--seconds", type=float, default=6.0)
    a = ap.parse_args()
    host, port = a.host, a.port
    tcp_only = {
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
    }
    sessions = []
    plain = session(dict(tcp_only, out_enc_policy=lt.enc_policy.disabled))
    sessions.append((plain, add_magnet(plain, host, port)))
    enc = session(
        dict(
            tcp_only,
            out_enc_policy=lt.enc_policy.forced,
            allowed_enc_level=lt.enc_level.both,
        )
    )
    sessions.append((enc, add_magnet(enc, host, port)))
    utp = session(
        {
            "enable_outgoing_tcp": False,
            "enable_incoming_tcp": False,
            "enable_outgoing_utp": True,
        }
    )
    sessions.append((utp, add_magnet(utp, host, port)))
    dht = session(
        {
            "enable_dht": True,
            "dht_bootstrap_nodes": "%s:%d" % (host, port),
        }
    )
    dht.add_dht_node((host, port))
    sessions.append((dht, None))
    tracker = session(dict(tcp_only))
    sessions.append((tracker, add_magnet(tracker, host, port, tracker=True, connect=False)))

    threads = [
        threading.Thread(target=http_get, args=(host, port)),
        threading.Thread(target=tls_hello, args=(host, port)),
        threading.Thread(target=raw_tcp, args=(host, port, GNUTELLA)),
        threading.Thread(target=raw_tcp, args=(host, port, emule_hello())),
        threading.Thread(target=raw_tcp, args=(host, port, b"\x00\x07hello, is anyone there?\n")),
    ]
    for t in threads:
        t.start()
    deadline = time.time() + a.seconds
    while time.time() < deadline:
        # Keep asking: libtorrent drops a peer that never answers and may not retry at once.
        for ses, h in sessions:
            if h is not None and h.is_valid():
                h.connect_peer((host, port))
        time.sleep(1.0)
    for t in threads:
        t.join(timeout=5)
    print(
        json.dumps(
            {
                "info_hash": INFO_HASH,
                "peer_id_prefix": FINGERPRINT,
                "sni": SNI,
                "http_host": HTTP_HOST,
            }
        ),
        flush=True,
    )
    del sessions


if __name__ == "__main__":
    main()

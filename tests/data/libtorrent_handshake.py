#!/usr/bin/env python3
"""Prints, as JSON, what a real libtorrent 2.1.1 peer tells a connecting peer about itself:
its 20-byte peer-id (BitTorrent handshake) and the `v` of its extension handshake (BEP 10).
Used by tests/client_id_libtorrent.rs. Loopback only; bounded by timeouts."""
import hashlib
import json
import socket
import struct
import sys
import tempfile
import time

import libtorrent as lt

INFO_HASH = hashlib.sha1(b"swarmscan client_id check").digest()


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return buf


def main():
    ses = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
    })
    params = lt.add_torrent_params()
    params.info_hashes = lt.info_hash_t(lt.sha1_hash(INFO_HASH))
    params.save_path = tempfile.mkdtemp()
    ses.add_torrent(params)
    deadline = time.time() + 10
    port = 0
    while not port and time.time() < deadline:
        port = ses.listen_port()
        time.sleep(0.05)
    time.sleep(0.5)  # let the torrent start before connecting

    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    reserved = bytearray(8)
    reserved[5] |= 0x10  # extension protocol (BEP 10)
    sock.sendall(b"\x13BitTorrent protocol" + bytes(reserved) + INFO_HASH + b"-SS0001-swarmscan!!!")
    handshake = read_exact(sock, 68)
    peer_id = handshake[48:68]
    v = None
    end = time.time() + 5
    while time.time() < end and v is None:
        (length,) = struct.unpack(">I", read_exact(sock, 4))
        body = read_exact(sock, length) if length else b""
        if body[:2] == b"\x14\x00":  # extended message 0: the extension handshake
            v = lt.bdecode(body[2:]).get(b"v")
    sock.close()
    print(json.dumps({
        "peer_id_hex": peer_id.hex(),
        "ext_v": v.decode("utf-8", "replace") if isinstance(v, bytes) else v,
        "fingerprint": lt.default_settings()["peer_fingerprint"],
    }))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A libtorrent 2.1.1 seeder that speaks uTP only, for tests/utp_libtorrent.rs.

  lt_utp_peer.py [PIECES]
      seeds a fresh torrent of PIECES 16 KiB pieces on 127.0.0.1 with TCP disabled both ways
      (enable_incoming_tcp / enable_outgoing_tcp off, uTP on), prints
      {"port": P, "info_hash": hex, "num_pieces": N} on one line, then reads commands from
      stdin: "connect PORT" makes it dial 127.0.0.1:PORT (over uTP, TCP being off).

It runs until stdin closes or 60 s pass. Everything stays on loopback.
"""

import json
import os
import select
import sys
import tempfile
import time

import libtorrent as lt

pieces = int(sys.argv[1]) if len(sys.argv) > 1 else 40
work = tempfile.mkdtemp(prefix="swarmscan-utp-")
path = os.path.join(work, "utp.bin")
with open(path, "wb") as f:
    f.write(os.urandom(pieces * 16384 - 100))
fs = lt.file_storage()
fs.add_file("utp.bin", os.path.getsize(path))
ct = lt.create_torrent(fs, 16384, flags=lt.create_torrent.v1_only)
lt.set_piece_hashes(ct, work)
ti = lt.torrent_info(lt.bencode(ct.generate()))
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    "enable_incoming_tcp": False, "enable_outgoing_tcp": False,
    "enable_incoming_utp": True, "enable_outgoing_utp": True,
    "allow_multiple_connections_per_ip": True,
    # pe_settings: 2 = disabled, so the exchange is plaintext BitTorrent over uTP.
    "in_enc_policy": 2, "out_enc_policy": 2,
})
h = ses.add_torrent({"ti": ti, "save_path": work})
deadline = time.time() + 30
while not h.status().is_seeding and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({
    "info_hash": str(ti.info_hashes().v1),
    "num_pieces": ti.num_pieces(),
    "port": ses.listen_port(),
    "seeding": h.status().is_seeding,
}), flush=True)
end = time.time() + 60
while time.time() < end:
    r, _, _ = select.select([sys.stdin], [], [], 0.2)
    if not r:
        continue
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    if len(words) == 2 and words[0] == "connect":
        h.connect_peer(("127.0.0.1", int(words[1])))

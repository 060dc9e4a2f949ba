#!/usr/bin/env python3
"""A libtorrent 2.1.1 peer that insists on MSE/PE encryption, for tests/mse_libtorrent.rs.

  lt_mse_peer.py seed  --level rc4|plaintext|both
      starts a seeder on 127.0.0.1 with in_enc_policy = pe_forced (0) and the given
      allowed_enc_level; prints {"port": P, "info_hash": hex} on one line.
  lt_mse_peer.py leech --level ... --connect PORT
      starts a leecher with out_enc_policy = pe_forced and connects it to 127.0.0.1:PORT;
      prints {"info_hash": hex} on one line.

Either way it then runs until stdin closes or 60 s pass (the test closes stdin / kills it).
Everything stays on loopback; the torrent is made fresh in a temp directory.
"""

import argparse
import hashlib
import json
import os
import select
import sys
import tempfile
import time

import libtorrent as lt

PIECE_LEN = 16384
FILE_LEN = 5 * PIECE_LEN + 123
LEVELS = {"plaintext": 1, "rc4": 2, "both": 3}  # lt.enc_level: pe_plaintext, pe_rc4, pe_both
PE_FORCED, PE_ENABLED = 0, 1  # lt.enc_policy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["seed", "leech"])
    ap.add_argument("--level", choices=sorted(LEVELS), default="rc4")
    ap.add_argument("--connect", type=int)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    assert int(lt.enc_policy.pe_forced) == PE_FORCED
    assert int(lt.enc_level.pe_rc4) == LEVELS["rc4"]

    work = tempfile.mkdtemp(prefix="swarmscan-mse-")
    content = bytes((i * 13 + (i >> 9)) & 0xFF for i in range(FILE_LEN))
    with open(os.path.join(work, "mse.bin"), "wb") as f:
        f.write(content)
    fs = lt.file_storage()
    lt.add_files(fs, os.path.join(work, "mse.bin"))
    ct = lt.create_torrent(fs, PIECE_LEN, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, work)
    torrent = ct.generate()
    info_hash = hashlib.sha1(lt.bencode(torrent[b"info"])).digest()

    s = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": 0,
        "in_enc_policy": PE_FORCED if args.mode == "seed" else PE_ENABLED,
        "out_enc_policy": PE_FORCED,
        "allowed_enc_level": LEVELS[args.level],
        "prefer_rc4": args.level != "plaintext",
    })
    if args.mode == "seed":
        h = s.add_torrent({"ti": lt.torrent_info(torrent), "save_path": work})
        deadline = time.time() + 20
        while not h.status().is_seeding:
            if time.time() > deadline:
                sys.exit("lt_mse_peer: seeder did not finish checking")
            time.sleep(0.05)
        print(json.dumps({"port": s.listen_port(), "info_hash": info_hash.hex()}), flush=True)
    else:
        leech_dir = tempfile.mkdtemp(prefix="swarmscan-mse-leech-")
        h = s.add_torrent({"ti": lt.torrent_info(torrent), "save_path": leech_dir})
        deadline = time.time() + 20
        while h.status().state == lt.torrent_status.checking_files:
            if time.time() > deadline:
                sys.exit("lt_mse_peer: leecher did not finish checking")
            time.sleep(0.05)
        print(json.dumps({"info_hash": info_hash.hex()}), flush=True)
        h.connect_peer(("127.0.0.1", args.connect))

    end = time.time() + args.timeout
    while time.time() < end:
        ready, _, _ = select.select([sys.stdin], [], [], 0.2)
        if ready and not sys.stdin.buffer.read1(4096):
            break


if __name__ == "__main__":
    main()

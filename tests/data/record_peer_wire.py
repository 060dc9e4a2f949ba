#!/usr/bin/env python3
"""Record what a real BitTorrent client (libtorrent 2.1.1, Python bindings) puts on the wire.

Writes golden files for the peer wire tests into tests/data/peer_wire/ (next to this script):

  seeder_fast.bin      everything a libtorrent seeder sent to a plain socket that announced the
                       extension protocol + fast extension (handshake, ext handshake, have_all,
                       then the ut_metadata data message answering our request for piece 0,
                       and ut_pex if libtorrent sent one while we waited)
  seeder_plain.bin     the same, but we announced only the extension protocol (-> bitfield)
  leecher_out.bin      what a libtorrent leecher that *connects to us* sends (its own outgoing
                       handshake, extension handshake, have_none/bitfield, ...)
  magnet_out.bin       what a libtorrent magnet-link leecher (no metadata yet) sends after our
                       handshake advertised ut_metadata: includes a ut_metadata request
  meta.json            facts the tests check against (info-hash, piece count, ports, ids)

All traffic stays on 127.0.0.1; every wait is bounded. Run from anywhere:
  python3 tests/data/record_peer_wire.py                 # refresh the committed golden files
  python3 tests/data/record_peer_wire.py --out DIR --pex-wait 0   # quick fresh recording
"""

import argparse
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile
import time

import libtorrent as lt

HERE = os.path.dirname(os.path.abspath(__file__))
PIECE_LEN = 16384
FILE_LEN = 10 * PIECE_LEN + 1000  # 11 pieces, the last one short: spare bits in the bitfield
OUR_PEER_ID = b"-SS0001-recorder0001"
OUR_UT_METADATA = 3  # ids we advertise; libtorrent must use these when it talks to us
OUR_UT_PEX = 4


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(bencode(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(v)


def handshake(info_hash, reserved, peer_id=OUR_PEER_ID):
    return bytes([19]) + b"BitTorrent protocol" + reserved + info_hash + peer_id


def msg(msg_id, payload=b""):
    return struct.pack(">IB", 1 + len(payload), msg_id) + payload


def ext_msg(ext_id, payload):
    return msg(20, bytes([ext_id]) + payload)


def our_ext_handshake(listen_port, metadata_size=None):
    d = {"m": {"ut_metadata": OUR_UT_METADATA, "ut_pex": OUR_UT_PEX}, "v": "swarmscan-recorder",
         "p": listen_port, "reqq": 16}
    if metadata_size is not None:
        d["metadata_size"] = metadata_size
    return ext_msg(0, bencode(d))


def session(plaintext_out=False):
    # Default user agent on purpose: the tests check libtorrent's own `v`.
    s = lt.session({
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": 0,
        "in_enc_policy": 1,  # pe_enabled: accept plaintext
        # libtorrent's outgoing connections start with MSE by default; a leecher recording
        # must be plaintext (2 = pe_disabled) to be readable by the peer wire tests.
        "out_enc_policy": 2 if plaintext_out else 1,
        "prefer_rc4": False,
    })
    return s


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return
        time.sleep(0.05)
    sys.exit("record_peer_wire: timed out waiting for " + what)


def read_frames(sock, deadline, stop=None):
    """Read until the deadline (or stop(buffer) is true); returns all bytes received."""
    data = b""
    while time.time() < deadline:
        sock.settimeout(max(0.01, min(0.2, deadline - time.time())))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            chunk = None
        if chunk == b"":
            break
        if chunk:
            data += chunk
        if stop and stop(data):
            break
    return data


def frames(data):
    """Split a recorded stream (handshake first) into (id, payload) frames; None id = keep-alive."""
    out = []
    pos = 68
    while pos + 4 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        if pos + 4 + n > len(data):
            break
        body = data[pos + 4:pos + 4 + n]
        out.append((body[0] if body else None, body[1:]))
        pos += 4 + n
    return out


def peer_ext_ids(data):
    """The extension ids libtorrent advertised in its ext handshake (crude, enough for a recorder)."""
    for mid, payload in frames(data):
        if mid == 20 and payload[:1] == b"\x00":
            ids = {}
            for name in (b"ut_metadata", b"ut_pex"):
                i = payload.find(b"%d:%si" % (len(name), name))
                if i >= 0:
                    j = i + len(name) + len(str(len(name))) + 2
                    ids[name.decode()] = int(payload[j:payload.index(b"e", j)])
            return ids
    return {}


def has_ext_message(data, ext_id):
    return any(mid == 20 and p[:1] == bytes([ext_id]) for mid, p in frames(data))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "peer_wire"))
    ap.add_argument("--pex-wait", type=float, default=75.0,
                    help="seconds to wait for libtorrent's first ut_pex message")
    args = ap.parse_args()
    out_dir = args.out
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="swarmscan-record-")
    content = bytes((i * 7 + (i >> 8)) & 0xFF for i in range(FILE_LEN))
    with open(os.path.join(work, "golden.bin"), "wb") as f:
        f.write(content)

    fs = lt.file_storage()
    lt.add_files(fs, os.path.join(work, "golden.bin"))
    ct = lt.create_torrent(fs, PIECE_LEN, flags=lt.create_torrent.v1_only)
    lt.set_piece_hashes(ct, work)
    torrent = ct.generate()
    info_bytes = lt.bencode(torrent[b"info"])
    info_hash = hashlib.sha1(info_bytes).digest()
    ti = lt.torrent_info(torrent)
    num_pieces = ti.num_pieces()

    seeder = session()
    seed_handle = seeder.add_torrent({"ti": ti, "save_path": work})
    wait_for(lambda: seed_handle.status().is_seeding, 20, "seeder to check its data")
    seed_port = seeder.listen_port()

    meta = {
        "info_hash": info_hash.hex(),
        "num_pieces": num_pieces,
        "piece_length": PIECE_LEN,
        "total_length": FILE_LEN,
        "metadata_size": len(info_bytes),
        "our_peer_id": OUR_PEER_ID.decode(),
        "our_ut_metadata": OUR_UT_METADATA,
        "our_ut_pex": OUR_UT_PEX,
        "libtorrent": lt.__version__,
    }

    # 1. Plain socket -> seeder, extension protocol only: expect a bitfield.
    reserved_ext = bytes([0, 0, 0, 0, 0, 0x10, 0, 0])
    reserved_ext_fast = bytes([0, 0, 0, 0, 0, 0x10, 0, 0x04])
    with socket.create_connection(("127.0.0.1", seed_port), timeout=5) as s:
        s.sendall(handshake(info_hash, reserved_ext) + our_ext_handshake(50001))
        data = read_frames(s, time.time() + 2.0)
    with open(os.path.join(out_dir, "seeder_plain.bin"), "wb") as f:
        f.write(data)

    # 2. Two sockets with the fast extension; the second one asks for metadata piece 0 and
    # waits for a pex message that should mention the first one's listen port.
    other = socket.create_connection(("127.0.0.1", seed_port), timeout=5)
    # A distinct peer-id: libtorrent drops a second connection with the same one.
    other.sendall(handshake(info_hash, reserved_ext_fast, b"-SS0001-recorder0002")
                  + our_ext_handshake(50002))
    with socket.create_connection(("127.0.0.1", seed_port), timeout=5) as s:
        s.sendall(handshake(info_hash, reserved_ext_fast) + our_ext_handshake(50003))
        data = read_frames(s, time.time() + 1.5)
        ids = peer_ext_ids(data)
        if "ut_metadata" in ids:
            req = bencode({"msg_type": 0, "piece": 0})
            s.sendall(ext_msg(ids["ut_metadata"], req))
        # libtorrent sends pex at most once a minute; its first one comes within a few ticks.
        data += read_frames(s, time.time() + args.pex_wait,
                            stop=lambda d: has_ext_message(data + d, OUR_UT_PEX))
        data += read_frames(s, time.time() + 0.5)
    other.close()
    meta["pex_recorded"] = has_ext_message(data, OUR_UT_PEX)
    meta["pex_expected_port"] = 50002
    with open(os.path.join(out_dir, "seeder_fast.bin"), "wb") as f:
        f.write(data)

    # 3. libtorrent leecher connects to our listener: its own outgoing handshake.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(10)
    our_port = listener.getsockname()[1]
    meta["listener_port"] = our_port

    leecher = session(plaintext_out=True)
    leech_dir = os.path.join(work, "leech")
    os.makedirs(leech_dir)
    leech_handle = leecher.add_torrent({"ti": lt.torrent_info(torrent), "save_path": leech_dir})
    wait_for(lambda: leech_handle.status().state != lt.torrent_status.checking_files, 20,
             "leecher to check files")
    leech_handle.connect_peer(("127.0.0.1", our_port))
    conn, _ = listener.accept()
    with conn:
        first = read_frames(conn, time.time() + 2.0, stop=lambda d: len(d) >= 68)
        conn.sendall(handshake(info_hash, reserved_ext_fast) + our_ext_handshake(our_port))
        rest = read_frames(conn, time.time() + 2.0)
    with open(os.path.join(out_dir, "leecher_out.bin"), "wb") as f:
        f.write(first + rest)
    meta["leecher_listen_port"] = leecher.listen_port()
    leecher.remove_torrent(leech_handle)

    # 4. Magnet leecher (no metadata): it should ask us for metadata piece 0.
    magnet = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + info_hash.hex())
    magnet.save_path = leech_dir
    mag_handle = leecher.add_torrent(magnet)
    time.sleep(0.3)
    mag_handle.connect_peer(("127.0.0.1", our_port))
    conn, _ = listener.accept()
    with conn:
        first = read_frames(conn, time.time() + 2.0, stop=lambda d: len(d) >= 68)
        conn.sendall(handshake(info_hash, reserved_ext_fast)
                     + our_ext_handshake(our_port, metadata_size=len(info_bytes))
                     + msg(0x0E))  # have_all
        rest = read_frames(conn, time.time() + 3.0,
                           stop=lambda d: has_ext_message(first + d, OUR_UT_METADATA))
    with open(os.path.join(out_dir, "magnet_out.bin"), "wb") as f:
        f.write(first + rest)
    listener.close()

    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    for name in sorted(os.listdir(out_dir)):
        print(name, os.path.getsize(os.path.join(out_dir, name)))
    print(json.dumps(meta, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Records replies of a real UDP tracker (aquatic_udp, crates.io) on loopback.

Install the tracker first (not committed; built into target/):
  cargo install aquatic_udp --root target/tools
then run once:
  python3 tests/data/record_aquatic_udp.py [path/to/aquatic_udp]

Starts aquatic_udp bound to 127.0.0.1 (and a second instance on [::1] if the host has IPv6
loopback), plays two peers of one torrent through connect / announce / completed / scrape,
and writes each reply byte for byte under tests/data/tracker/:

  aquatic_udp_connect.bin             connect reply (transaction id 0x01020304)
  aquatic_udp_announce_first.bin      first peer's announce (alone: no peers)
  aquatic_udp_announce_second.bin     second peer's announce (gets the first: 127.0.0.1:6881)
  aquatic_udp_scrape.bin              scrape of [INFO_HASH, UNKNOWN_HASH] after the second
                                      peer announced "completed"
  aquatic_udp_announce_v6.bin         announce reply over IPv6 (18-byte peers), if available
  aquatic_udp_meta.txt                the values used, for the tests

The requests are built here by hand from the BEP 15 layout (not by swarmscan), so the test
compares two independent implementations. Everything stops by itself.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tracker")
ROOT = os.path.dirname(os.path.dirname(HERE))
PROTOCOL_ID = 0x41727101980
INFO_HASH = bytes(range(1, 21))
UNKNOWN_HASH = b"\xee" * 20
PEER_A = b"-SW0100-AAAAAAAAAAAA"
PEER_B = b"-SW0100-BBBBBBBBBBBB"


def free_port(family, host):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, address, workdir, name):
    cfg = os.path.join(workdir, name + ".toml")
    with open(cfg, "w") as f:
        f.write('log_level = "error"\nsocket_workers = 1\n')
        f.write('[network]\naddress = "%s"\nsocket_recv_buffer_size = 0\n' % address)
        f.write('only_ipv6 = %s\n' % ("true" if address.startswith("[") else "false"))
        f.write('[statistics]\ninterval = 0\n')
    proc = subprocess.Popen([binary, "-c", cfg], cwd=workdir)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit("aquatic_udp exited with %s" % proc.returncode)
    return proc


def exchange(sock, addr, packet):
    for _ in range(5):
        sock.sendto(packet, addr)
        try:
            data, _ = sock.recvfrom(65536)
            return data
        except socket.timeout:
            continue
    raise SystemExit("no reply from %s" % (addr,))


def connect(sock, addr, tid):
    reply = exchange(sock, addr, struct.pack(">QII", PROTOCOL_ID, 0, tid))
    action, rtid, cid = struct.unpack(">IIQ", reply[:16])
    assert action == 0 and rtid == tid, reply
    return reply, cid


def announce(sock, addr, cid, tid, peer_id, left, event, port):
    pkt = struct.pack(">QII20s20sQQQIIIiH", cid, 1, tid, INFO_HASH, peer_id,
                      0, left, 0, event, 0, 0x5157, -1, port)
    return exchange(sock, addr, pkt)


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print("recorded", name, len(data), "bytes", file=sys.stderr)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/tools/bin/aquatic_udp")
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            port = free_port(socket.AF_INET, "127.0.0.1")
            procs.append(start(binary, "127.0.0.1:%d" % port, workdir, "v4"))
            addr = ("127.0.0.1", port)
            a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for s in (a, b):
                s.bind(("127.0.0.1", 0))
                s.settimeout(1.0)
            reply, cid_a = connect(a, addr, 0x01020304)
            save("aquatic_udp_connect.bin", reply)
            save("aquatic_udp_announce_first.bin",
                 announce(a, addr, cid_a, 0x0A0A0A0A, PEER_A, 0, 2, 6881))
            _, cid_b = connect(b, addr, 0x02020202)
            save("aquatic_udp_announce_second.bin",
                 announce(b, addr, cid_b, 0x0B0B0B0B, PEER_B, 1000, 2, 6882))
            announce(b, addr, cid_b, 0x0C0C0C0C, PEER_B, 0, 1, 6882)
            scrape = struct.pack(">QII", cid_b, 2, 0x0D0D0D0D) + INFO_HASH + UNKNOWN_HASH
            save("aquatic_udp_scrape.bin", exchange(b, addr, scrape))
            v6 = False
            try:
                port6 = free_port(socket.AF_INET6, "::1")
                procs.append(start(binary, "[::1]:%d" % port6, workdir, "v6"))
                c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                d = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                for s in (c, d):
                    s.bind(("::1", 0))
                    s.settimeout(1.0)
                addr6 = ("::1", port6)
                _, cid_c = connect(c, addr6, 0x03030303)
                announce(c, addr6, cid_c, 0x0E0E0E0E, PEER_A, 0, 2, 6881)
                _, cid_d = connect(d, addr6, 0x04040404)
                save("aquatic_udp_announce_v6.bin",
                     announce(d, addr6, cid_d, 0x0F0F0F0F, PEER_B, 1000, 2, 6882))
                v6 = True
            except OSError as e:
                print("no IPv6 loopback, skipping:", e, file=sys.stderr)
            with open(os.path.join(OUT, "aquatic_udp_meta.txt"), "w") as f:
                version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.strip()
                f.write("aquatic_version=%s\n" % (version or "aquatic_udp 0.9.0"))
                f.write("info_hash=%s\n" % INFO_HASH.hex())
                f.write("ipv6_recorded=%s\n" % v6)
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()

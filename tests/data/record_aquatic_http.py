#!/usr/bin/env python3
"""Records raw HTTP responses (head and body) of aquatic_http (crates.io) on loopback.

Install the tracker first (not committed; built into target/):
  cargo install aquatic_http --root target/tools
then run once:
  python3 tests/data/record_aquatic_http.py [path/to/aquatic_http]

Plain HTTP (enable_tls = false), bound to 127.0.0.1 and, if available, a second instance on
[::1]. Peer A (seeder, port 6881) and peer B (leecher, port 6882) announce for one hash; B
completes; then a scrape. Requests are written here by hand (not by swarmscan). Writes under
tests/data/tracker/:

  aquatic_http_announce_first.bin     A alone
  aquatic_http_announce_second.bin    B, gets A (compact)
  aquatic_http_scrape.bin             scrape of [INFO_HASH, UNKNOWN_HASH] after B "completed"
  aquatic_http_failure.bin            announce with a 3-byte info_hash (only if it answers;
                                      0.9.0 just closes the connection)
  aquatic_http_announce_v6.bin        B over [::1] after A: peers6
  aquatic_http_meta.txt
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tracker")
ROOT = os.path.dirname(os.path.dirname(HERE))
INFO_HASH = bytes(range(1, 21))
UNKNOWN_HASH = b"\xee" * 20
PEER_A = b"-SW0100-AAAAAAAAAAAA"
PEER_B = b"-SW0100-BBBBBBBBBBBB"


def enc(b):
    return "".join("%%%02X" % x for x in b)


def free_port(family, host):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(binary, address, workdir, name):
    cfg = os.path.join(workdir, name + ".toml")
    with open(cfg, "w") as f:
        f.write('log_level = "error"\nsocket_workers = 1\nswarm_workers = 1\n')
        f.write('[network]\naddress = "%s"\nenable_tls = false\nkeep_alive = false\n' % address)
        f.write("only_ipv6 = %s\n" % ("true" if address.startswith("[") else "false"))
    proc = subprocess.Popen([binary, "-c", cfg], cwd=workdir)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise SystemExit("aquatic_http exited with %s" % proc.returncode)
    return proc


def get(family, host, port, target):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((host, port))
    h = "[%s]" % host if ":" in host else host
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: swarmscan-recorder\r\n"
               "Accept-Encoding: identity\r\nConnection: close\r\n\r\n" % (target, h, port)).encode())
    data = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length" and len(body) >= int(value):
                        s.close()
                        return data
    except socket.timeout:
        pass
    s.close()
    if not data:
        raise SystemExit("no response for %s" % target)
    return data


def announce(family, host, port, peer_id, peer_port, left, event, info_hash=INFO_HASH):
    q = "info_hash=%s&peer_id=%s&port=%d&uploaded=0&downloaded=0&left=%d&compact=1&numwant=50" % (
        enc(info_hash), enc(peer_id), peer_port, left)
    if event:
        q += "&event=" + event
    return get(family, host, port, "/announce?" + q)


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
    print("recorded", name, len(data), "bytes", file=sys.stderr)


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/tools/bin/aquatic_http")
    procs = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            v4 = socket.AF_INET
            port = free_port(v4, "127.0.0.1")
            procs.append(start(binary, "127.0.0.1:%d" % port, workdir, "v4"))
            save("aquatic_http_announce_first.bin", announce(v4, "127.0.0.1", port, PEER_A, 6881, 0, "started"))
            save("aquatic_http_announce_second.bin", announce(v4, "127.0.0.1", port, PEER_B, 6882, 1000, "started"))
            announce(v4, "127.0.0.1", port, PEER_B, 6882, 0, "completed")
            save("aquatic_http_scrape.bin", get(v4, "127.0.0.1", port, "/scrape?info_hash=%s&info_hash=%s" % (
                enc(INFO_HASH), enc(UNKNOWN_HASH))))
            # aquatic_http answers a malformed announce by closing the connection without a
            # response; recorded as a fact in the meta file rather than as a file.
            try:
                bad = announce(v4, "127.0.0.1", port, PEER_A, 6881, 0, "started", info_hash=b"abc")
                save("aquatic_http_failure.bin", bad)
                bad_response = "recorded"
            except SystemExit:
                bad_response = "none (connection closed)"
            v6 = False
            try:
                f6 = socket.AF_INET6
                port6 = free_port(f6, "::1")
                procs.append(start(binary, "[::1]:%d" % port6, workdir, "v6"))
                announce(f6, "::1", port6, PEER_A, 6881, 0, "started")
                save("aquatic_http_announce_v6.bin", announce(f6, "::1", port6, PEER_B, 6882, 1000, "started"))
                v6 = True
            except OSError as e:
                print("no IPv6 loopback, skipping:", e, file=sys.stderr)
            with open(os.path.join(OUT, "aquatic_http_meta.txt"), "w") as f:
                f.write("aquatic_version=0.9.0\ninfo_hash=%s\nipv6_recorded=%s\n" % (INFO_HASH.hex(), v6))
                f.write("short_info_hash_response=%s\n" % bad_response)
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A swarm of real clients of four kinds on loopback for tests/swarm_defaults.rs (libtorrent 2.1.1).

One seeder and --leechers leechers (default 9), each a libtorrent session in its own process on
its own address, announcing to the trackers given with --tracker (npm bittorrent-tracker in the
test). DHT, LSD, UPnP and NAT-PMP are off (there is no network but loopback); everything else,
in particular the clients' reconnect timing, is libtorrent's default. Leechers start
--stagger-secs apart and are download-rate limited, so each download takes tens of seconds.

Kinds, taken in turn (so that every kind is spread over the whole run):
  plain    127.0.0.x, dials out from its own address.
  nat      127.0.0.x; the test rejects inbound SYNs to its port with iptables (it is told the
           address in the plan and must install the rule before it says "go"); incoming uTP is
           off, so nobody can reach it at all: it is seen only through the connections it
           opens itself.
  enc      127.0.0.x, encryption forced both ways (libtorrent's out/in_enc_policy = forced).
  v6       IPv6 only: listens on and dials out from ::1 (the only IPv6 loopback address, so the
           v6 leechers differ by port; they and the seeder allow several connections from one
           address, since every IPv6 peer here has the same one).
  utp      127.0.0.x, TCP off both ways (enable_incoming_tcp / enable_outgoing_tcp false): it
           talks uTP only (tests/utp_swarm.rs; not among the default kinds).
  utpenc   as utp, with encryption forced both ways.
  utpin    as utp, and it opens no connection itself (enable_outgoing_utp false): reachable only
           by peers that dial it over uTP (swarmscan, the seeder, later leechers). The seeder
           then re-announces every 5 s so that it learns of such leechers.
  utpinenc as utpin, with encryption forced both ways.
--kinds picks the kinds (comma-separated, taken in turn; default plain,nat,enc,v6).
The seeder listens on 127.0.0.x and on ::1. In every kind, every second leecher (from the first)
quits the moment it finishes (on libtorrent's torrent_finished_alert it exits the way
libtorrent clients do: see quit_like_a_client); the others keep seeding until the end.

Protocol on stdout, JSON lines (times are Unix milliseconds):
  {"event": "torrent", "path", "info_hash", "pieces", "piece_length", "size"}
  {"event": "plan", "name", "kind", "quits", "ip", "port", "start_secs"}   (one per client
                                                  address: the seeder has two, v4 and ::1)
  {"event": "planned"}                                   then the driver waits for "go" on stdin
  {"event": "client", "name", "kind", "ip", "port", "started_at"}
  {"event": "crossed", "name", "at", "pieces"}   the client's own crossing of --threshold (pieces
                                                  it has / pieces, the fraction peers are told)
  {"event": "finished", "name", "at"}
  {"event": "quit", "name", "at"}                just before a quitting leecher exits
  {"event": "progress", "name", "at", "pieces", "peers"}   every client, once a second
  {"event": "swarmscan_conn", "name", "at", "peer", "what"}   a connection with swarmscan
                                                  (peer-id prefix -SW) ended, and why
  {"event": "end", "at"}
The driver ends after --max-secs, or earlier when stdin ends or says "stop"; each client process
ends when its stdin (a pipe from the driver) closes, so none outlives the driver.

Crossing times are taken from piece_finished_alert, which libtorrent posts when a piece passed
its hash check, the moment it sends `have` to its peers; the client waits on alerts (at most
20 ms asleep), so the recorded time is within a few ms of the `have`.

With env SWARM_KINDS_DEBUG=1 the clients log peer connections and why they ended to stderr.
"""

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_swarm import emit, emit_line, now_ms, stop_on_stdin  # noqa: E402

KINDS = ("plain", "nat", "enc", "v6")
DEBUG = bool(os.environ.get("SWARM_KINDS_DEBUG"))
# swarmscan's peer-id prefix (peer.peer_id_prefix's default).
SWARMSCAN_PEER_ID = b"-SW"


def free_port(family, host):
    """A port free for TCP and UDP on `host` (libtorrent listens on both with one number).

    Taken below the kernel's ephemeral range (32768 and up by default): a client may start
    a minute after the plan is made, and an ephemeral port could be in use by then."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32768)
        try:
            with socket.socket(family, socket.SOCK_STREAM) as t, \
                    socket.socket(family, socket.SOCK_DGRAM) as u:
                t.bind((host, port))
                u.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port on {host}")


def make_torrent(workdir, size, piece_length, trackers):
    """Random content in workdir/seed/; returns (torrent path, info-hash, torrent_info, seed dir)."""
    seed_dir = os.path.join(workdir, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    name = "swarm-kinds.bin"
    with open(os.path.join(seed_dir, name), "wb") as f:
        f.write(random.Random(4321).randbytes(size))
    files = lt.list_files(os.path.join(seed_dir, name))
    # v1 only: a hybrid torrent would make peers speak about v2 hashes too.
    ct = lt.create_torrent(files, piece_length, flags=lt.create_torrent.v1_only)
    # One tracker per tier, as a user's torrent with several trackers usually has them.
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    ct.set_creator("swarmscan tests/py/swarm_kinds.py")
    lt.set_piece_hashes(ct, seed_dir)
    path = os.path.join(workdir, "swarm-kinds.torrent")
    with open(path, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    info = lt.torrent_info(path)
    return path, str(info.info_hashes().v1), info, seed_dir


def session_settings(kind, listen, outgoing, rate):
    settings = {
        "listen_interfaces": listen,
        # Outgoing connections from the client's own address too (else they would come from
        # 127.0.0.1, swarmscan's address).
        "outgoing_interfaces": outgoing,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | lt.alert_category.piece_progress | lt.alert_category.peer
        | lt.alert_category.connect,
        "download_rate_limit": rate,
        "user_agent": "swarmscan-swarm-kinds-test",
    }
    if kind == "nat":
        # Unreachable from outside: inbound TCP SYNs are rejected by the test's iptables rule;
        # inbound uTP is refused here (rejecting UDP to the port would drop tracker replies).
        settings["enable_incoming_utp"] = False
    if kind in ("utp", "utpenc", "utpin", "utpinenc"):
        settings["enable_incoming_tcp"] = False
        settings["enable_outgoing_tcp"] = False
    if kind in ("utpin", "utpinenc"):
        settings["enable_outgoing_utp"] = False
    if kind in ("enc", "utpenc", "utpinenc"):
        settings["out_enc_policy"] = int(lt.enc_policy.forced)
        settings["in_enc_policy"] = int(lt.enc_policy.forced)
    if kind in ("v6", "seeder"):
        # Every IPv6 peer here is ::1 (the only IPv6 loopback address); libtorrent would keep
        # one connection per address and drop the rest as duplicates.
        settings["allow_multiple_connections_per_ip"] = True
    return settings


def quit_like_a_client(s, h, limit_secs=2.0):
    """Quits as soon as the download finished, the way libtorrent clients exit (qBittorrent
    and Deluge alike): a second later, pause the session, save resume data, then destroy the
    session (its destructor tells the trackers it stopped, waiting at most
    stop_tracker_timeout, 5 s).

    Pausing first closes the peer connections while the network still runs. That matters over
    uTP: libtorrent holds a small write back for one round trip while an earlier one is unacked
    (Nagle), so the last `have`s of a burst of finished pieces wait for the peer's ack; on a
    paused connection they are flushed before its FIN. Destroying the session at once instead
    closes the UDP socket with them inside, so no peer ever sees those pieces (seen in a capture:
    the crossing `have` never left the client). Not os._exit() at once either: that is a crash,
    and loses queued `have`s over TCP too.
    """
    # A moment first (qBittorrent's "exit when downloads complete" even counts down before
    # it exits): libtorrent writes the `have`s of the last pieces at the end of its network
    # loop, and over uTP a close drops what is not in a packet yet (seen: the crossing `have`
    # of a burst lost although the session was paused, not destroyed, right after finishing).
    linger = time.monotonic() + 1.0
    while time.monotonic() < linger:
        s.wait_for_alert(50)
        s.pop_alerts()
    s.pause()
    h.save_resume_data()
    deadline = time.monotonic() + limit_secs
    while time.monotonic() < deadline:
        s.wait_for_alert(50)
        if any(isinstance(a, (lt.save_resume_data_alert, lt.save_resume_data_failed_alert))
               for a in s.pop_alerts()):
            return


def run_client(argv):
    """One libtorrent session with one torrent; reports on stdout until stdin closes."""
    ap = argparse.ArgumentParser(prog="swarm_kinds.py client")
    ap.add_argument("--name", required=True)
    ap.add_argument("--kind", required=True)
    ap.add_argument("--quits", action="store_true")
    ap.add_argument("--ip", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--outgoing", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--threshold", type=float, required=True)
    ap.add_argument("--torrent", required=True)
    ap.add_argument("--save", required=True)
    ap.add_argument("--max-secs", type=float, required=True)
    ap.add_argument("--reannounce-secs", type=float, default=0.0)
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.max_secs
    stop = threading.Event()
    stop_on_stdin(stop)

    os.makedirs(args.save, exist_ok=True)
    s = lt.session(session_settings(args.kind, args.listen, args.outgoing, args.rate))
    # libtorrent exempts local peers from rate limits (they are in the local peer class only);
    # putting loopback into the global class makes download_rate_limit apply to them.
    f = lt.ip_filter()
    f.add_rule("127.0.0.0", "127.255.255.255", 1 << lt.session.global_peer_class_id)
    f.add_rule("::1", "::1", 1 << lt.session.global_peer_class_id)
    s.set_peer_class_filter(f)
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(args.torrent)
    params.save_path = args.save
    h = s.add_torrent(params)
    total = params.ti.num_pieces()
    name = args.name
    emit({"event": "client", "name": name, "kind": args.kind, "ip": args.ip,
          "port": args.port, "started_at": now_ms()})
    have = set()
    crossed = args.kind == "seeder"
    finished = args.kind == "seeder"
    last_snapshot = 0.0
    last_announce = time.monotonic()
    while not stop.is_set() and time.monotonic() < deadline:
        if args.reannounce_secs and time.monotonic() - last_announce >= args.reannounce_secs:
            last_announce = time.monotonic()
            h.force_reannounce()
        s.wait_for_alert(20)
        for a in s.pop_alerts():
            if isinstance(a, lt.piece_finished_alert):
                have.add(a.piece_index)
                if not crossed and len(have) / total >= args.threshold:
                    crossed = True
                    emit({"event": "crossed", "name": name, "at": now_ms(),
                          "pieces": len(have)})
            elif isinstance(a, lt.torrent_finished_alert) and not finished:
                finished = True
                at = now_ms()
                emit({"event": "finished", "name": name, "at": at})
                if args.quits:
                    emit({"event": "quit", "name": name, "at": now_ms()})
                    quit_like_a_client(s, h)
                    del h, a
                    del s
                    sys.stdout.flush()
                    os._exit(0)
            elif isinstance(a, lt.peer_disconnected_alert) \
                    and a.pid.to_bytes().startswith(SWARMSCAN_PEER_ID):
                # The client's view of its connections with swarmscan, for the failure report.
                emit({"event": "swarmscan_conn", "name": name, "at": now_ms(),
                      "peer": "%s:%s" % tuple(a.endpoint), "what": a.message()})
                if DEBUG:
                    sys.stderr.write(f"swarm_kinds.py: {name}: {a.message()}\n")
            elif isinstance(a, (lt.listen_failed_alert, lt.tracker_error_alert)) or (
                    DEBUG and isinstance(a, (lt.peer_connect_alert, lt.peer_disconnected_alert,
                                             lt.peer_blocked_alert, lt.peer_error_alert,
                                             lt.incoming_connection_alert,
                                             lt.tracker_reply_alert))):
                sys.stderr.write(f"swarm_kinds.py: {name}: {a.message()}\n")
        if time.monotonic() - last_snapshot >= 1.0:
            last_snapshot = time.monotonic()
            st = h.status()
            emit({"event": "progress", "name": name, "at": now_ms(),
                  "pieces": st.num_pieces, "peers": st.num_peers})
    s.pause()


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        run_client(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracker", action="append", required=True,
                    help="announce URL (repeat: one tier each, in order)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--size", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--piece-length", type=int, default=16 * 1024)
    ap.add_argument("--leechers", type=int, default=9)
    ap.add_argument("--first-start-secs", type=float, default=2.0)
    ap.add_argument("--stagger-secs", type=float, default=8.0)
    ap.add_argument("--rate", type=int, default=80 * 1024, help="bytes/s a leecher downloads")
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--first-octet", type=int, default=20,
                    help="the seeder is 127.0.0.N, the IPv4 leechers follow")
    ap.add_argument("--max-secs", type=float, default=150.0)
    ap.add_argument("--kinds", default=",".join(KINDS),
                    help="leecher kinds, comma-separated, taken in turn")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    for k in kinds:
        if k not in KINDS + ("utp", "utpenc", "utpin", "utpinenc"):
            ap.error(f"unknown kind {k!r}")

    stop = threading.Event()
    path, info_hash, info, seed_dir = make_torrent(
        args.workdir, args.size, args.piece_length, args.tracker)
    emit({"event": "torrent", "path": path, "info_hash": info_hash,
          "pieces": info.num_pieces(), "piece_length": info.piece_length(), "size": args.size})

    # name, kind, quits, ip, port, listen, outgoing, start offset, rate, save path
    octet = args.first_octet
    seed_ip = f"127.0.0.{octet}"
    seed_port = free_port(socket.AF_INET, seed_ip)
    seed_port6 = free_port(socket.AF_INET6, "::1")
    plan = [("seeder", "seeder", False, seed_ip, seed_port,
             f"{seed_ip}:{seed_port},[::1]:{seed_port6}", f"{seed_ip},::1", 0.0, 0, seed_dir)]
    counts = {k: 0 for k in kinds}
    for i in range(args.leechers):
        kind = kinds[i % len(kinds)]
        quits = counts[kind] % 2 == 0
        counts[kind] += 1
        if kind == "v6":
            ip = "::1"
            port = free_port(socket.AF_INET6, ip)
            listen, outgoing = f"[::1]:{port}", "::1"
        else:
            octet += 1
            ip = f"127.0.0.{octet}"
            port = free_port(socket.AF_INET, ip)
            listen, outgoing = f"{ip}:{port}", ip
        plan.append((f"{kind}{counts[kind]}", kind, quits, ip, port, listen, outgoing,
                     args.first_start_secs + i * args.stagger_secs, args.rate,
                     os.path.join(args.workdir, f"{kind}{counts[kind]}")))
    for name, kind, quits, ip, port, _, _, start, *_ in plan:
        emit({"event": "plan", "name": name, "kind": kind, "quits": quits, "ip": ip,
              "port": port, "start_secs": start})
    # The seeder's IPv6 address too, so that the test knows every address it has.
    emit({"event": "plan", "name": "seeder", "kind": "seeder", "quits": False, "ip": "::1",
          "port": seed_port6, "start_secs": 0.0})
    emit({"event": "planned"})

    # Wait for "go": the test installs its iptables rules and starts swarmscan first.
    if sys.stdin.readline().strip() != "go":
        emit({"event": "end", "at": now_ms()})
        return
    stop_on_stdin(stop)

    t0 = time.monotonic()
    deadline = t0 + args.max_secs
    children = []

    def forward(proc):
        for out in proc.stdout:
            emit_line(out.rstrip("\n"))

    pending = sorted(plan, key=lambda p: p[7])
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            while pending and pending[0][7] <= time.monotonic() - t0:
                name, kind, quits, ip, port, listen, outgoing, _, rate, save = pending.pop(0)
                left = max(1.0, deadline - time.monotonic())
                cmd = [sys.executable, os.path.abspath(__file__), "client", "--name", name,
                       "--kind", kind, "--ip", ip, "--port", str(port), "--listen", listen,
                       "--outgoing", outgoing, "--rate", str(rate),
                       "--threshold", str(args.threshold), "--torrent", path, "--save", save,
                       "--max-secs", str(left)]
                if quits:
                    cmd.append("--quits")
                if kind == "seeder" and ("utpin" in kinds or "utpinenc" in kinds):
                    cmd += ["--reannounce-secs", "5"]
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
                t = threading.Thread(target=forward, args=(proc,), daemon=True)
                t.start()
                children.append((proc, t))
            time.sleep(0.05)
    finally:
        for proc, _ in children:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc, t in children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            t.join(timeout=2)
        emit({"event": "end", "at": now_ms()})


if __name__ == "__main__":
    main()

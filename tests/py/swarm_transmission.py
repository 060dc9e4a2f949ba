#!/usr/bin/env python3
"""A swarm of Transmission leechers on loopback for tests/swarm_transmission.rs.

One libtorrent 2.1.1 seeder (in this process) and several Transmission 3.00 leechers, each a
`transmission-daemon -f` of its own (own --config-dir, own 127.0.0.x address, own peer port, RPC
on its own port bound to 127.0.0.1), all announcing to the tracker given with --tracker.
Leechers start one after another and are download-rate limited (`speed-limit-down`, which
Transmission 3.00 applies to local peers too), so they finish one after another. Some quit the
moment they finish (Transmission's own `script-torrent-done` hook sends the daemon SIGTERM);
the others keep seeding. One leecher is so slow that it never finishes during the test.

Why the seeder is libtorrent and dials everybody: Transmission 3.00 ignores 127.0.0.0/8 peers
that a tracker (or PEX) hands out, so on loopback no Transmission peer ever dials out; it only
answers. The libtorrent seeder learns the leechers from the tracker and dials each of them from
its own address (`outgoing_interfaces`). The tracker (npm bittorrent-tracker on its defaults)
asks for announces every 10 minutes, so whenever a leecher is running that the seeder is not
connected to, the seeder re-announces (`force_reannounce`), at most every 2 s.

Ground truth: every running daemon is polled through its JSON RPC (`torrent-get`) ten times a
second; its verified pieces (the `pieces` bitfield, what it advertises to peers) give the time
it crossed the completion threshold (last poll below, first poll at or above) and the time it
finished. (`percentDone` counts received blocks, verified or not; with 16 KiB pieces, one block
each, the two agree but for the instant between a block's arrival and its piece's check; it is
in the progress lines too.) A quitter's done script writes the time it ran before it kills its
daemon.

Ground truth goes to stdout as JSON lines (times are Unix milliseconds):
  {"event": "torrent", "path", "info_hash", "pieces", "piece_length"}
  {"event": "client", "name", "kind": "libtorrent"|"transmission", "role": "seeder"|"leecher",
   "ip", "port", "rate_limit_kBps", "quits", "encryption", "started_at"}
  {"event": "progress", "name", "ip", "at", "pieces", "progress", "percent_done", "peers"}
   (on change, and
   at least once a second)
  {"event": "crossed", "name", "ip", "below_at", "above_at"}   (the two polls around the crossing)
  {"event": "finished", "name", "ip", "at"}
  {"event": "quit", "name", "ip", "at"}   (daemon gone after its done script ran)
  {"event": "error", "name", "message"}
  {"event": "end", "at"}
The driver ends after --max-secs, or earlier when stdin reaches end of file or reads "stop".
Every daemon is started through `setpriv --pdeathsig KILL`, so it dies with this process even
when the test kills it with SIGKILL, and is stopped (SIGTERM, then SIGKILL) on every way out.

With env REAL_SWARM_DEBUG=1 the peer lists of every daemon (address, client, flags, incoming,
encrypted, uTP) and the seeder's connections are logged to stderr once a second.
"""

import argparse
import base64
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import libtorrent as lt

DEBUG = bool(os.environ.get("REAL_SWARM_DEBUG"))
EMIT_LOCK = threading.Lock()


def now_ms():
    return int(time.time() * 1000)


def emit(obj):
    with EMIT_LOCK:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def log(msg):
    sys.stderr.write(f"{time.strftime('%H:%M:%S')}.{now_ms() % 1000:03d} swarm_transmission.py: {msg}\n")
    sys.stderr.flush()


def stop_on_stdin(stop):
    def watch():
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        stop.set()

    threading.Thread(target=watch, daemon=True).start()


def make_torrent(workdir, size, piece_length, tracker):
    seed_dir = os.path.join(workdir, "seed")
    os.makedirs(seed_dir, exist_ok=True)
    name = "transmission-swarm.bin"
    with open(os.path.join(seed_dir, name), "wb") as f:
        f.write(random.Random(4321).randbytes(size))
    ct = lt.create_torrent(lt.list_files(os.path.join(seed_dir, name)), piece_length,
                           flags=lt.create_torrent.v1_only)
    ct.add_tracker(tracker)
    ct.set_creator("swarmscan tests/py/swarm_transmission.py")
    lt.set_piece_hashes(ct, seed_dir)
    path = os.path.join(workdir, "transmission-swarm.torrent")
    with open(path, "wb") as f:
        f.write(lt.bencode(ct.generate()))
    return path, lt.torrent_info(path), seed_dir


class RpcError(Exception):
    pass


class Rpc:
    """Transmission's JSON RPC: POST /transmission/rpc; the first answer is 409 with the
    X-Transmission-Session-Id header to repeat (CSRF protection)."""

    def __init__(self, port):
        self.port = port
        self.session_id = ""

    def call(self, method, arguments=None, timeout=2.0):
        body = json.dumps({"method": method, "arguments": arguments or {}})
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
            try:
                conn.request("POST", "/transmission/rpc", body,
                             {"X-Transmission-Session-Id": self.session_id,
                              "Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                # Not up yet, or (briefly) something else on the port: the caller retries.
                raise RpcError(f"{method}: {e!r}") from e
            finally:
                conn.close()
            if resp.status == 409:
                self.session_id = resp.getheader("X-Transmission-Session-Id", "")
                continue
            if resp.status != 200:
                raise RpcError(f"{method}: HTTP {resp.status} {data[:200]!r}")
            answer = json.loads(data)
            if answer.get("result") != "success":
                raise RpcError(f"{method}: {answer.get('result')}")
            return answer.get("arguments", {})
        raise RpcError(f"{method}: no session id accepted")


def count_bits(b64):
    return sum(bin(b).count("1") for b in base64.b64decode(b64))


class Leecher:
    def __init__(self, name, ip, port, rpc_port, rate_kbps, quits, encryption, start_secs,
                 workdir):
        self.name, self.ip, self.port, self.rpc_port = name, ip, port, rpc_port
        self.rate_kbps, self.quits, self.encryption = rate_kbps, quits, encryption
        self.start_secs = start_secs
        self.dir = os.path.join(workdir, name)
        self.config_dir = os.path.join(self.dir, "config")
        self.download_dir = os.path.join(self.dir, "download")
        self.done_marker = os.path.join(self.dir, "done-script-ran")
        self.pid_file = os.path.join(self.dir, "daemon.pid")
        self.rpc = Rpc(rpc_port)
        self.proc = None
        self.log_file = None
        self.state = "pending"  # running, quitting, gone
        self.torrent_id = None
        self.last_below = None  # (at, pieces)
        self.crossed = False
        self.finished = False
        self.last_pieces = None
        self.last_emit = 0.0
        self.quit_requested_at = None
        self.rpc_failures = 0

    def ident(self):
        return {"name": self.name, "ip": self.ip, "port": self.port}

    def settings(self):
        # transmission-daemon 3.00 settings; everything not listed keeps Transmission's default.
        return {
            # Its own address for listening, outgoing peer connections (TCP and uTP) and
            # tracker requests: on loopback every client needs one, or all look like 127.0.0.1.
            "bind-address-ipv4": self.ip,
            "bind-address-ipv6": "::1",
            "peer-port": self.port,
            "peer-port-random-on-start": False,
            # No traffic off loopback: the DHT would bootstrap from public routers, local peer
            # discovery multicasts, UPnP/NAT-PMP talks to the gateway.
            "dht-enabled": False,
            "lpd-enabled": False,
            "port-forwarding-enabled": False,
            # Defaults, spelled out because they are the point of this swarm: PEX and uTP on,
            # encryption preferred (1) unless this leecher requires it (2).
            "pex-enabled": True,
            "utp-enabled": True,
            "encryption": self.encryption,
            "speed-limit-down-enabled": True,
            "speed-limit-down": self.rate_kbps,
            "speed-limit-up-enabled": False,
            "alt-speed-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "blocklist-enabled": False,
            "download-dir": self.download_dir,
            "incomplete-dir-enabled": False,
            "watch-dir-enabled": False,
            "start-added-torrents": True,
            "script-torrent-done-enabled": self.quits,
            "script-torrent-done-filename": os.path.join(self.dir, "done.sh") if self.quits else "",
            "rpc-enabled": True,
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": self.rpc_port,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": True,
            "rpc-whitelist": "127.0.0.1",
            "rpc-host-whitelist-enabled": False,
            "message-level": 2,
        }

    def start(self, torrent_path):
        os.makedirs(self.config_dir, exist_ok=True)
        os.makedirs(self.download_dir, exist_ok=True)
        with open(os.path.join(self.config_dir, "settings.json"), "w") as f:
            json.dump(self.settings(), f, indent=1)
        if self.quits:
            # Transmission runs this the moment the torrent is complete: note the time, quit.
            script = os.path.join(self.dir, "done.sh")
            with open(script, "w") as f:
                f.write("#!/bin/sh\n"
                        f"date +%s%3N > '{self.done_marker}.tmp' && mv '{self.done_marker}.tmp' '{self.done_marker}'\n"
                        f"kill -TERM \"$(cat '{self.pid_file}')\"\n")
            os.chmod(script, 0o755)
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        self.log_file = open(os.path.join(self.dir, "daemon.log"), "w")
        self.proc = subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "transmission-daemon", "-f",
             "--config-dir", self.config_dir, "--pid-file", self.pid_file],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.state = "running"
        # A loaded machine (CI shares its cores) can take a while to start a daemon.
        deadline = time.monotonic() + 30
        while True:
            try:
                self.rpc.call("session-get", {"fields": ["version"]}, timeout=1.0)
                break
            except RpcError as e:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.log_file.flush()
                    with open(os.path.join(self.dir, "daemon.log"), errors="replace") as f:
                        tail = f.read()[-2000:]
                    state = ("exited " + str(self.proc.returncode)
                             if self.proc.poll() is not None else "running")
                    raise RuntimeError(f"{self.name}: transmission-daemon RPC on port "
                                       f"{self.rpc.port} not up ({state}): {e}; its log:\n{tail}")
                time.sleep(0.05)
        with open(torrent_path, "rb") as f:
            meta = base64.b64encode(f.read()).decode()
        added = self.rpc.call("torrent-add", {"metainfo": meta, "download-dir": self.download_dir})
        self.torrent_id = (added.get("torrent-added") or added.get("torrent-duplicate"))["id"]
        emit(dict(self.ident(), event="client", kind="transmission", role="leecher",
                  rate_limit_kBps=self.rate_kbps, quits=self.quits, encryption=self.encryption,
                  started_at=now_ms()))

    def poll(self, threshold, num_pieces):
        """One ground-truth poll; returns the peers list (for debugging) or None."""
        if self.state != "running":
            return None
        at = now_ms()
        try:
            t = self.rpc.call("torrent-get", {
                "ids": [self.torrent_id],
                "fields": ["pieces", "percentDone", "status", "error", "errorString",
                           "peersConnected", "peers"]}, timeout=1.0)["torrents"][0]
        except (RpcError, IndexError, KeyError) as e:
            self.rpc_failures += 1
            if os.path.exists(self.done_marker) or self.proc.poll() is not None:
                self.gone()
            elif self.rpc_failures >= 20:
                emit({"event": "error", "name": self.name, "message": f"RPC fails: {e}"})
                self.state = "gone"
            return None
        self.rpc_failures = 0
        pieces = count_bits(t["pieces"])
        progress = pieces / num_pieces
        if t.get("error"):
            emit({"event": "error", "name": self.name, "message": t.get("errorString")})
        if progress < threshold:
            self.last_below = (at, pieces)
        elif not self.crossed:
            self.crossed = True
            emit(dict(self.ident(), event="crossed",
                      below_at=self.last_below[0] if self.last_below else None, above_at=at))
        if pieces != self.last_pieces or time.monotonic() - self.last_emit >= 1.0:
            self.last_pieces = pieces
            self.last_emit = time.monotonic()
            emit(dict(self.ident(), event="progress", at=at, pieces=pieces, progress=progress,
                      percent_done=t["percentDone"], peers=t["peersConnected"]))
        if pieces == num_pieces and not self.finished:
            self.finish(at)
        return t["peers"]

    def finish(self, at):
        self.finished = True
        if os.path.exists(self.done_marker):
            at = min(at, self.done_time())
        emit(dict(self.ident(), event="finished", at=at))

    def done_time(self):
        with open(self.done_marker) as f:
            return int(f.read().strip())

    def gone(self):
        """The daemon stopped answering: a quitter whose done script ran."""
        if os.path.exists(self.done_marker):
            done_at = self.done_time()
            if not self.finished:
                self.finished = True
                emit(dict(self.ident(), event="finished", at=done_at))
            emit(dict(self.ident(), event="quit", at=now_ms(), done_script_at=done_at))
        else:
            emit({"event": "error", "name": self.name,
                  "message": f"daemon died (exit {self.proc.poll()})"})
        self.state = "quitting"
        self.quit_requested_at = time.monotonic()

    def reap(self, force_after=5.0):
        """Reaps a quitting daemon; SIGKILL when it takes longer than `force_after` s."""
        if self.state == "quitting" and self.proc.poll() is not None:
            self.state = "gone"
        elif self.state == "quitting" and time.monotonic() - self.quit_requested_at > force_after:
            self.proc.kill()
            self.proc.wait()
            self.state = "gone"

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.state = "gone"
        if self.log_file:
            self.log_file.close()


def make_seeder(ip, port):
    s = lt.session({
        "listen_interfaces": f"{ip}:{port}",
        # Dial out from its own address: Transmission would otherwise see 127.0.0.1.
        "outgoing_interfaces": ip,
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "alert_mask": lt.alert_category.status | lt.alert_category.error
        | (lt.alert_category.peer | lt.alert_category.connect if DEBUG else 0),
        "user_agent": "swarmscan-transmission-swarm-test",
        # Encrypted connections only. With libtorrent's default ("enabled") it dials a new
        # peer over uTP in plaintext first; a Transmission leecher that requires encryption
        # hangs up, and libtorrent tries again only after min_reconnect_time (60 s).
        "out_enc_policy": lt.enc_policy.forced,
    })
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tracker", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--base-port", type=int, required=True,
                    help="seeder's peer port; leecher i uses base+1+i")
    ap.add_argument("--rpc-base-port", type=int, required=True,
                    help="RPC port of leecher i is rpc-base+i (127.0.0.1)")
    ap.add_argument("--size", type=int, default=3 * 1024 * 1024)
    ap.add_argument("--piece-length", type=int, default=16 * 1024)
    ap.add_argument("--threshold", type=float, default=0.98)
    ap.add_argument("--plan", required=True,
                    help="leechers, ';'-separated: name,start_secs,rate_kBps,quits(0|1),encryption(0|1|2)")
    ap.add_argument("--max-secs", type=float, default=150.0)
    args = ap.parse_args()

    t0 = time.monotonic()
    deadline = t0 + args.max_secs
    stop = threading.Event()
    stop_on_stdin(stop)

    path, info, seed_dir = make_torrent(args.workdir, args.size, args.piece_length, args.tracker)
    num_pieces = info.num_pieces()
    emit({"event": "torrent", "path": path, "info_hash": str(info.info_hashes().v1),
          "pieces": num_pieces, "piece_length": info.piece_length()})

    leechers = []
    for i, spec in enumerate(s for s in args.plan.split(";") if s):
        name, start, rate, quits, enc = spec.split(",")
        leechers.append(Leecher(name, f"127.0.0.{3 + i}", args.base_port + 1 + i,
                                args.rpc_base_port + i, int(rate), quits == "1", int(enc),
                                float(start), args.workdir))

    seeder_ip = "127.0.0.2"
    session = make_seeder(seeder_ip, args.base_port)
    params = lt.add_torrent_params()
    params.ti = info
    params.save_path = seed_dir
    seeder = session.add_torrent(params)
    emit({"event": "client", "name": "seeder", "kind": "libtorrent", "role": "seeder",
          "ip": seeder_ip, "port": args.base_port, "started_at": now_ms(), "quits": False})

    last_reannounce = 0.0
    last_debug = 0.0
    try:
        while not stop.is_set() and time.monotonic() < deadline:
            elapsed = time.monotonic() - t0
            for l in leechers:
                if l.state == "pending" and l.start_secs <= elapsed:
                    l.start(path)
            debug_now = DEBUG and time.monotonic() - last_debug >= 1.0
            if debug_now:
                last_debug = time.monotonic()
            for l in leechers:
                peers = l.poll(args.threshold, num_pieces)
                l.reap()
                if debug_now and peers is not None:
                    log(f"{l.name} ({l.ip}) {l.last_pieces}/{num_pieces} peers: " + ", ".join(
                        f"{p['address']}:{p['port']} {p['clientName']!r} {p['flagStr']}"
                        f"{' in' if p['isIncoming'] else ' out'}{' enc' if p['isEncrypted'] else ''}"
                        f"{' utp' if p['isUTP'] else ''} {p['progress']:.2f}" for p in peers))
            # The seeder dials every leecher it learns from the tracker; re-announce while one
            # is running that it is not connected to.
            connected = {p.ip[0] for p in seeder.get_peer_info()}
            missing = [l.name for l in leechers if l.state == "running" and l.ip not in connected]
            if missing and time.monotonic() - last_reannounce >= 2.0:
                last_reannounce = time.monotonic()
                seeder.force_reannounce(0, -1, lt.torrent_handle.ignore_min_interval)
            for a in session.pop_alerts():
                if isinstance(a, (lt.listen_failed_alert, lt.tracker_error_alert)) or (
                        DEBUG and isinstance(a, (lt.peer_disconnected_alert, lt.peer_connect_alert,
                                                 lt.peer_error_alert, lt.tracker_reply_alert))):
                    log(f"seeder: {a.message()}")
            # Ten polls a second (each poll of a daemon takes about a millisecond).
            time.sleep(max(0.0, 0.1 - (time.monotonic() - t0 - elapsed)))
    except Exception as e:  # noqa: BLE001 - reported, then everything is stopped
        emit({"event": "error", "name": "driver", "message": repr(e)})
        raise
    finally:
        for l in leechers:
            l.stop()
        session.pause()
        emit({"event": "end", "at": now_ms()})


if __name__ == "__main__":
    main()

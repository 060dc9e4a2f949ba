"""A libtorrent 2.1.1 seeder on 127.0.0.1 for `swarmscan probe` tests.

  lt_probe_target.py [PIECES [ENCRYPTION [MISSING [TRANSPORTS]]]]

ENCRYPTION: "plain" (default: refuses MSE/PE), "forced" (refuses plaintext connections) or
"forced-rc4" (also refuses MSE's plaintext stream: RC4 only). MISSING (default 0): pieces it
lacks (the first ones), so it is a partial peer that sends a bitfield, not a seeder.
TRANSPORTS: "both" (default: TCP and uTP), "tcp" (uTP off both ways) or "utp" (TCP off both
ways: enable_incoming_tcp / enable_outgoing_tcp false; what a uTP-only peer is).

Prints one JSON line (info-hash, piece count, pieces it has, port, seeding), then runs until
its standard input closes or 60 s pass.
"""
import json, os, select, sys, tempfile, time
import libtorrent as lt

pieces = int(sys.argv[1]) if len(sys.argv) > 1 else 300
# "plain" (default) or "forced": libtorrent then refuses any unencrypted connection.
encryption = sys.argv[2] if len(sys.argv) > 2 else "plain"
missing = int(sys.argv[3]) if len(sys.argv) > 3 else 0
transports = sys.argv[4] if len(sys.argv) > 4 else "both"
assert transports in ("both", "tcp", "utp"), transports
d = tempfile.mkdtemp(prefix="swarmscan-probe-")
path = os.path.join(d, "content.bin")
with open(path, "wb") as f:
    f.write(os.urandom(pieces * 16384 - 1000))
fs = lt.file_storage()
fs.add_file("content.bin", os.path.getsize(path))
ct = lt.create_torrent(fs, 16384)
lt.set_piece_hashes(ct, d)
ti = lt.torrent_info(lt.bencode(ct.generate()))
if missing:
    # Overwrite the first pieces: the check at add_torrent finds them bad.
    with open(path, "r+b") as f:
        f.write(b"\0" * (missing * 16384))
forced = encryption.startswith("forced")
ses = lt.session({
    "listen_interfaces": "127.0.0.1:0",
    "enable_dht": False, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
    # pe_settings: 0 = forced, 2 = disabled.
    "in_enc_policy": 0 if forced else 2,
    "out_enc_policy": 0 if forced else 2,
    # enc_level: 1 = plaintext, 2 = rc4, 3 = both.
    "allowed_enc_level": 2 if encryption == "forced-rc4" else 3,
    "enable_incoming_tcp": transports != "utp", "enable_outgoing_tcp": transports != "utp",
    "enable_incoming_utp": transports != "tcp", "enable_outgoing_utp": transports != "tcp",
})
h = ses.add_torrent({"ti": ti, "save_path": d})
deadline = time.time() + 30
def checked(st):
    return st.is_seeding or (missing and st.state == lt.torrent_status.downloading)
while not checked(h.status()) and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({
    "info_hash": str(ti.info_hashes().v1),
    "num_pieces": ti.num_pieces(),
    "pieces_have": h.status().num_pieces,
    "port": ses.listen_port(),
    "seeding": h.status().is_seeding,
}), flush=True)
end = time.time() + 60
while time.time() < end:
    r, _, _ = select.select([sys.stdin], [], [], 0.2)
    if r and not sys.stdin.read(1):
        break

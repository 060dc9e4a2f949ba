#!/usr/bin/env python3
"""Makes .torrent files with libtorrent (a real client) plus a JSON sidecar of what
libtorrent itself reads back from each one. swarmscan's metainfo parser is tested against
these sidecars.

Usage:
  make_torrents.py golden [OUTDIR]      deterministic set, committed under tests/data/torrents/
  make_torrents.py random OUTDIR SEED   random sizes/names (used by tests/inspect_real_client.rs);
                                        prints a JSON list of the cases on stdout
  make_torrents.py parse-magnets FILE   parses each line with lt.parse_magnet_uri and prints
                                        a JSON list of what libtorrent understood

Needs libtorrent 2.1.x Python bindings (PyPI `libtorrent`; scripts/test installs them).
"""

import json
import os
import random
import shutil
import sys
import tempfile
import warnings

# torrent_info.trackers() has no non-deprecated replacement in the 2.1 bindings.
warnings.simplefilter("ignore", DeprecationWarning)

import libtorrent as lt  # noqa: E402

MODES = {
    "v1": lt.create_torrent.v1_only,
    "v2": lt.create_torrent.v2_only,
    "hybrid": 0,
    # v1 with BEP 47 pad files between files.
    "v1pad": lt.create_torrent.v1_only | lt.create_torrent.canonical_files,
}


def write_content(root, files, rng):
    """files: list of (relative path, size). Content is pseudo-random from rng."""
    for rel, size in files:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(rng.randbytes(size))


def libtorrent_view(data):
    """What libtorrent reads from a torrent file's bytes."""
    ti = lt.torrent_info(lt.bdecode(data))
    ih = ti.info_hashes()
    layout = ti.layout()
    files = []
    for i in range(layout.num_files()):
        pad = bool(layout.file_flags(i) & lt.file_storage.flag_pad_file)
        files.append({"path": layout.file_path(i), "size": layout.file_size(i), "pad": pad})
    tiers = {}
    for t in ti.trackers():
        tiers.setdefault(t.tier, []).append(t.url)
    return {
        "info_hash_v1": str(ih.v1) if ih.has_v1() else None,
        "info_hash_v2": str(ih.v2) if ih.has_v2() else None,
        "name": ti.name(),
        "piece_length": ti.piece_length(),
        "num_pieces": ti.num_pieces(),
        # libtorrent's total_size counts pad files; content_size does not.
        "total_size": ti.total_size(),
        "content_size": sum(f["size"] for f in files if not f["pad"]),
        "files": files,
        "trackers": [tiers[k] for k in sorted(tiers)],
        "web_seeds": [w["url"] for w in ti.web_seeds()],
        "private": ti.priv(),
        "creation_date": ti.creation_date(),
        "creator": ti.creator(),
        "comment": ti.comment(),
        "metadata_size": ti.metadata_size(),
        "magnet": lt.make_magnet_uri(ti),
    }


def make_torrent(content_root, target, mode, piece_length, trackers, web_seeds, private,
                 creation_date=None, comment=None):
    """target: path relative to content_root (a file or a directory)."""
    entries = lt.list_files(os.path.join(content_root, target))
    ct = lt.create_torrent(entries, piece_length, MODES[mode])
    for tier, urls in enumerate(trackers):
        for url in urls:
            ct.add_tracker(url, tier)
    for url in web_seeds:
        ct.add_url_seed(url)
    ct.set_priv(private)
    ct.set_creator("swarmscan tests/data/make_torrents.py (libtorrent %s)" % lt.__version__)
    if creation_date is not None:
        ct.set_creation_date(creation_date)
    if comment is not None:
        ct.set_comment(comment)
    lt.set_piece_hashes(ct, content_root)
    return lt.bencode(ct.generate())


def save_case(outdir, name, data):
    path = os.path.join(outdir, name + ".torrent")
    with open(path, "wb") as f:
        f.write(data)
    view = libtorrent_view(data)
    with open(os.path.join(outdir, name + ".json"), "w") as f:
        json.dump(view, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    return path, view


def golden(outdir):
    rng = random.Random(20151)
    os.makedirs(outdir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="swarmscan-golden-")
    try:
        write_content(tmp, [("single.bin", 40000)], rng)
        write_content(tmp, [("multi/a.bin", 40000), ("multi/sub/b.bin", 5000),
                            ("multi/c.txt", 1), ("multi/empty", 0)], rng)
        tiers = [["http://127.0.0.1:6969/announce", "udp://127.0.0.1:6969"],
                 ["http://[::1]:6969/announce"]]
        seeds = ["http://127.0.0.1:8080/files/"]
        for mode in ["v1", "v2", "hybrid", "v1pad"]:
            for shape, target in [("single", "single.bin"), ("multi", "multi")]:
                private = mode in ("v2", "v1pad")
                data = make_torrent(tmp, target, mode, 16384, tiers if shape == "multi" else tiers[:1],
                                    seeds if mode != "v1" else [], private,
                                    creation_date=1700000000, comment="swarmscan golden %s %s" % (mode, shape))
                save_case(outdir, "%s-%s" % (mode, shape), data)
    finally:
        shutil.rmtree(tmp)


def random_cases(outdir, seed):
    rng = random.Random(seed)
    os.makedirs(outdir, exist_ok=True)
    content = os.path.join(outdir, "content")
    cases = []
    names = ["data", "Ünïcødé dir", "with space", "x"]
    for mode in ["v1", "v2", "hybrid", "v1pad"]:
        for shape in ["single", "multi"]:
            case = "%s-%s" % (mode, shape)
            root = os.path.join(content, case)
            top = rng.choice(names)
            if shape == "single":
                files = [(top + ".bin", rng.randint(1, 150000))]
            else:
                files = [(os.path.join(top, "f%d-%d.dat" % (i, rng.randint(0, 99))),
                          rng.choice([0, 1, rng.randint(1, 70000)]))
                         for i in range(rng.randint(2, 6))]
                files.append((os.path.join(top, "sub", "deeper", "z.bin"), rng.randint(1, 40000)))
            write_content(root, files, rng)
            target = files[0][0] if shape == "single" else top
            tiers = [["http://127.0.0.1:%d/announce" % rng.randint(1024, 65535)] for _ in range(rng.randint(0, 3))]
            seeds = ["http://127.0.0.1:%d/ws/" % rng.randint(1024, 65535)] if rng.random() < 0.5 else []
            data = make_torrent(root, target, mode, rng.choice([16384, 32768, 65536]),
                                tiers, seeds, rng.random() < 0.5)
            path, view = save_case(outdir, case, data)
            view["torrent_path"] = path
            view["case"] = case
            cases.append(view)
    json.dump(cases, sys.stdout, ensure_ascii=False)


def parse_magnets(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            atp = lt.parse_magnet_uri(line)
            ih = atp.info_hashes
            out.append({
                "uri": line,
                "info_hash_v1": str(ih.v1) if ih.has_v1() else None,
                "info_hash_v2": str(ih.v2) if ih.has_v2() else None,
                "name": atp.name,
                "trackers": list(atp.trackers),
                "web_seeds": list(atp.url_seeds),
                "peers": ["%s:%d" % (ip, port) if ":" not in ip else "[%s]:%d" % (ip, port)
                          for ip, port in atp.peers],
            })
    json.dump(out, sys.stdout, ensure_ascii=False)


def main(argv):
    if len(argv) >= 2 and argv[1] == "golden":
        here = os.path.dirname(os.path.abspath(__file__))
        golden(argv[2] if len(argv) > 2 else os.path.join(here, "torrents"))
    elif len(argv) == 4 and argv[1] == "random":
        random_cases(argv[2], int(argv[3]))
    elif len(argv) == 3 and argv[1] == "parse-magnets":
        parse_magnets(argv[2])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

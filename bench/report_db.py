#!/usr/bin/env python3
"""Reports, plots and exports of a synthetic study database of N peers: wall time and peak
memory (max RSS of the swarmscan process, from wait4) of each step, and the exports read
back by pyarrow (Parquet, CSV) and Python's json (JSON lines) with their row counts.

Usage: bench/report_db.py [--peers 1000000] [--swarmscan target/release/swarmscan] [--dir DIR]
Prints one JSON object. Needs pyarrow (scripts/test installs it into ~/.cache/swarmscan/pyenv).
"""
import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--peers", type=int, default=1_000_000)
parser.add_argument("--swarmscan", default="target/release/swarmscan")
parser.add_argument("--dir", default=None, help="keep the files here (default: a temporary directory)")
args = parser.parse_args()
if not 1 <= args.peers <= 100_000_000:
    sys.exit("--peers: 1 to 100000000")

work = args.dir or tempfile.mkdtemp(prefix="swarmscan-report-bench-")
os.makedirs(work, exist_ok=True)
database = os.path.join(work, "synth.sqlite")
if os.path.exists(database):
    os.remove(database)
steps = []


def measured(name, argv, out_file=None):
    """Runs argv, returns (seconds, max RSS bytes) from wait4."""
    out = open(out_file, "wb") if out_file else subprocess.DEVNULL
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        if out_file:
            os.dup2(out.fileno(), 1)
        else:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
        os.execv(argv[0], argv)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - start
    if out_file:
        out.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{name}: {argv} failed ({status})")
    step = {"step": name, "seconds": round(elapsed, 2), "max_rss_mib": round(usage.ru_maxrss / 1024, 1)}
    steps.append(step)
    return step


swarmscan = os.path.abspath(args.swarmscan)
db_set = ["--set", f"database={database}"]
measured("synth-db", [swarmscan, "synth-db", "--database", database, "--peers", str(args.peers), "--geo-columns"])
db_bytes = os.path.getsize(database)
measured("report (text)", [swarmscan, "report", *db_set])
measured("report --json", [swarmscan, "report", "--json", *db_set], os.path.join(work, "report.json"))
measured("report --plots", [swarmscan, "report", "--plots", os.path.join(work, "plots"), *db_set])

conn = sqlite3.connect(database)
expected = {
    "peers": conn.execute("SELECT count(*) FROM peers").fetchone()[0],
    "contacts": conn.execute(
        "SELECT sum((first_contact_at IS NOT NULL) + (below_at IS NOT NULL) + (above_at IS NOT NULL)"
        " + (last_contact_at IS NOT NULL) + (crossed_at IS NOT NULL)) FROM peers").fetchone()[0],
    "discovery": conn.execute("SELECT count(*) FROM discovery_requests").fetchone()[0],
}
conn.close()

exports = []
reader = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "py", "read_exports.py")
for table in ["peers", "contacts", "discovery"]:
    for fmt in ["csv", "jsonl", "parquet"]:
        path = os.path.join(work, f"{table}.{fmt}")
        step = measured(f"export {table} {fmt}", [swarmscan, "export", table, "--format", fmt, "--out", path, *db_set])
        start = time.monotonic()
        read = subprocess.run([sys.executable, reader, path], capture_output=True, check=True)
        summary = json.loads(read.stdout)
        exports.append({
            "table": table,
            "format": fmt,
            "bytes": os.path.getsize(path),
            "rows_database": expected[table],
            "rows_read_back": summary["rows"],
            "match": summary["rows"] == expected[table],
            "read_back_seconds": round(time.monotonic() - start, 2),
        })
        if not args.dir:
            os.remove(path)

print(json.dumps({
    "peers": args.peers,
    "database_bytes": db_bytes,
    "steps": steps,
    "exports": exports,
    "all_exports_match": all(e["match"] for e in exports),
    "dir": work if args.dir else None,
}, indent=1))
if not args.dir:
    shutil.rmtree(work)

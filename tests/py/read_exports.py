"""Reads `swarmscan export` files back with readers that share no code with swarmscan:
pyarrow for Parquet and CSV, Python's json module for JSON lines.

Usage: read_exports.py FILE... ; prints one JSON object per file:
{"file": ..., "rows": N, "columns": [...], "sums": {column: sum of numeric/bool values}}
"""
import json
import sys

import pyarrow.compute as pc
import pyarrow.csv
import pyarrow.parquet


def summarise_table(path, table):
    sums = {}
    for name in table.column_names:
        column = table.column(name)
        if pyarrow.types.is_boolean(column.type):
            column = pc.cast(column, pyarrow.int64())
        if pyarrow.types.is_integer(column.type) or pyarrow.types.is_floating(column.type):
            value = pc.sum(column).as_py()
            sums[name] = value if value is not None else 0
    return {"file": path, "rows": table.num_rows, "columns": table.column_names, "sums": sums}


def summarise_jsonl(path):
    rows = 0
    columns = None
    sums = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if columns is None:
                columns = list(record.keys())
            elif list(record.keys()) != columns:
                raise SystemExit(f"{path}:{rows + 1}: keys differ from the first line")
            for key, value in record.items():
                if isinstance(value, bool):
                    value = int(value)
                if isinstance(value, (int, float)):
                    sums[key] = sums.get(key, 0) + value
            rows += 1
    return {"file": path, "rows": rows, "columns": columns or [], "sums": sums}


for path in sys.argv[1:]:
    if path.endswith(".parquet"):
        out = summarise_table(path, pyarrow.parquet.read_table(path))
    elif path.endswith(".csv"):
        # Every column as text first would lose the sums; let pyarrow infer, as a user would.
        out = summarise_table(path, pyarrow.csv.read_csv(path))
    elif path.endswith(".jsonl"):
        out = summarise_jsonl(path)
    else:
        raise SystemExit(f"{path}: unknown extension")
    print(json.dumps(out))

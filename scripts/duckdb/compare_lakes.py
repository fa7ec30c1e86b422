"""Compares two of pageflow's curated lakes row by row with DuckDB.

Usage: compare_lakes.py EXPECTED_DIR ACTUAL_DIR

Prints one JSON object: per table, {"expected": rows, "actual": rows, "missing": rows of EXPECTED
not in ACTUAL, "extra": rows of ACTUAL not in EXPECTED} (as multisets: a row twice in ACTUAL and
once in EXPECTED is one extra). The test decides; this script only reads.
"""

import json
import sys

import duckdb

TABLES = ["pageviews", "sessions", "popular", "trending", "related"]


def main():
    expected_root, actual_root = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    report = {}
    for table in TABLES:
        def rel(root):
            return f"read_parquet('{root}/{table}/*/*/*.parquet', hive_partitioning = false)"

        expected, actual = rel(expected_root), rel(actual_root)
        report[table] = {
            "expected": con.execute(f"SELECT count(*) FROM {expected}").fetchone()[0],
            "actual": con.execute(f"SELECT count(*) FROM {actual}").fetchone()[0],
            "missing": con.execute(
                f"SELECT count(*) FROM (SELECT * FROM {expected} EXCEPT ALL SELECT * FROM {actual})"
            ).fetchone()[0],
            "extra": con.execute(
                f"SELECT count(*) FROM (SELECT * FROM {actual} EXCEPT ALL SELECT * FROM {expected})"
            ).fetchone()[0],
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

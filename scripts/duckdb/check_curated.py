"""Reads pageflow's curated lake with DuckDB and reports what the end-to-end test checks.

Usage: check_curated.py CURATED_DIR TOP_N SLIDE_MS TRENDING_WINDOW_MS

Prints one JSON object:
- "schemas": per table, [column, DuckDB type] in file order (from the Parquet files, with
  hive_partitioning off so only the files' own columns show);
- "timestamps": per table, the Parquet logical type of each timestamp column;
- "versions": the distinct values of the files' `pageflow.schema_version` metadata;
- "rows": per table, the row count;
- "popular_windows": the job's popular windows, and "pageview_windows": the windows in which the
  pageviews have at least one event (per portal, up to the end of the replay);
- "popular_mismatches": rows of the job's popular table and of the popular recomputed by SQL over
  pageviews that are not in the other (at most 10 each), and "popular_compared": rows compared.
The test decides; this script only reads.
"""

import json
import sys

import duckdb

TABLES = ["pageviews", "sessions", "popular", "trending", "related"]


def main():
    root, top_n, slide, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    report = {"schemas": {}, "timestamps": {}, "rows": {}, "versions": []}
    versions = set()
    for table in TABLES:
        files = f"{root}/{table}/*/*/*.parquet"
        rel = f"read_parquet('{files}', hive_partitioning = false)"
        report["schemas"][table] = [
            [name, kind] for name, kind, *_ in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()
        ]
        report["rows"][table] = con.execute(f"SELECT count(*) FROM {rel}").fetchone()[0]
        report["timestamps"][table] = {
            name: str(logical)
            for name, logical in con.execute(
                f"SELECT DISTINCT name, logical_type FROM parquet_schema('{files}') "
                "WHERE logical_type LIKE '%Timestamp%'"
            ).fetchall()
        }
        for (value,) in con.execute(
            f"SELECT DISTINCT decode(value) FROM parquet_kv_metadata('{files}') "
            "WHERE decode(key) = 'pageflow.schema_version'"
        ).fetchall():
            versions.add(value)
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {rel}")
    report["versions"] = sorted(versions)

    # Popular, recomputed from the pageviews for every window the job emitted: views and engaged
    # views per article, the top N by views descending, ties by article_id ascending.
    recomputed = f"""
        WITH windows AS (SELECT DISTINCT portal, window_start, window_end FROM popular),
        counts AS (
            SELECT w.portal, w.window_end, p.article_id,
                   count(*) AS views, count(*) FILTER (WHERE p.engaged) AS engaged_views
            FROM windows w JOIN pageviews p
              ON p.portal = w.portal AND p.ts >= w.window_start AND p.ts < w.window_end
            GROUP BY ALL),
        ranked AS (
            SELECT *, row_number() OVER (
                PARTITION BY portal, window_end ORDER BY views DESC, article_id ASC) AS rank
            FROM counts)
        SELECT portal, window_end, rank, article_id, views, engaged_views
        FROM ranked WHERE rank <= {top_n}"""
    job = "SELECT portal, window_end, rank, article_id, views, engaged_views FROM popular"
    missing = con.execute(f"({job}) EXCEPT ALL ({recomputed}) LIMIT 10").fetchall()
    extra = con.execute(f"({recomputed}) EXCEPT ALL ({job}) LIMIT 10").fetchall()
    report["popular_mismatches"] = [[str(v) for v in row] for row in missing + extra]
    report["popular_compared"] = con.execute(f"SELECT count(*) FROM ({recomputed})").fetchone()[0]

    report["popular_windows"] = con.execute(
        "SELECT count(*) FROM (SELECT DISTINCT portal, window_end FROM popular)"
    ).fetchone()[0]
    # Every window end k*slide up to the one after the last event (SEMANTICS, "End of a replay"),
    # with an event of the portal in [k*slide - window, k*slide).
    report["pageview_windows"] = con.execute(
        f"""
        WITH bounds AS (
            SELECT (epoch_ms(min(ts)) // {slide}) * {slide} + {slide} AS first_end,
                   (epoch_ms(max(ts)) // {slide}) * {slide} + {slide} AS last_end
            FROM pageviews),
        ends AS (SELECT unnest(range(first_end, last_end + 1, {slide})) AS window_end FROM bounds)
        SELECT count(*) FROM (
            SELECT DISTINCT p.portal, e.window_end FROM ends e JOIN pageviews p
              ON epoch_ms(p.ts) >= e.window_end - {window} AND epoch_ms(p.ts) < e.window_end)
        """
    ).fetchone()[0]
    print(json.dumps(report))


if __name__ == "__main__":
    main()

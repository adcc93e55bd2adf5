"""Why a method did (not) beat random in a ``dsel compare`` study: per selection its task mix
and query similarity; for LESS, how its scores rank the pool's tasks for each target (the share
of the target's own task among the top-k and the mean score per pool task), and the warmup it
came from. Reads a state home; prints tables.

Usage: python benchmarks/study_diagnostics.py --home DIR [--budget 5pct]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--home", required=True)
    p.add_argument("--budget", default="5pct")
    args = p.parse_args()

    import duckdb
    import polars as pl

    from dsel_assets.app.cli.common import format_table
    from dsel_assets.store.sql import frame

    with duckdb.connect(str(Path(args.home) / "dsel.duckdb"), read_only=True) as conn:
        report = frame(
            conn,
            "SELECT method, budget, size, task_entropy, query_similarity, task_counts FROM selection_report "
            "WHERE budget = ? ORDER BY method",
            [args.budget],
        )
        pool_tasks = dict(
            conn.execute("SELECT task, count(*) FROM examples WHERE split = 'pool' GROUP BY task").fetchall()
        )
        total = sum(pool_tasks.values())
        print(
            f"pool task shares (n={total}): " + ", ".join(f"{t} {n / total:.3f}" for t, n in sorted(pool_tasks.items()))
        )
        rows = []
        for r in report.iter_rows(named=True):
            counts = json.loads(r["task_counts"])
            size = sum(counts.values()) or 1
            mix = ", ".join(f"{t} {n / size:.2f}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
            rows.append((r["method"], r["size"], r["task_entropy"], r["query_similarity"], mix))
        print("\nselections (replicates of random pooled)")
        print(format_table(["method", "size", "task entropy", "query similarity", "task mix"], rows))

        less = frame(
            conn,
            "SELECT l.task AS target, e.task AS pool_task, l.score FROM less_scores l JOIN examples e USING (pool_id) "
            "WHERE e.split = 'pool'",
        )
        k = int(report.filter(report["method"] == "less")["size"][0]) if "less" in report["method"] else 100
        print(f"\nLESS scores per target: mean score by pool task, and the top-{k}'s task mix")
        out = []
        for target in sorted(set(less["target"].to_list())):
            part = less.filter(less["target"] == target)
            means = part.group_by("pool_task").agg(pl.col("score").mean().alias("mean")).sort("mean", descending=True)
            top = part.sort("score", descending=True).head(k)["pool_task"].value_counts().sort("count", descending=True)
            out.append(
                (
                    target,
                    ", ".join(f"{t} {m:+.4f}" for t, m in means.iter_rows()),
                    ", ".join(f"{t} {n}" for t, n in top.iter_rows()),
                )
            )
        print(format_table(["target", "mean LESS score by pool task", f"top-{k} task counts"], out))
        warmup = conn.execute(
            "SELECT warmup, config, created_at FROM warmups ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
        if warmup:
            print(f"\nwarmup {warmup[0]}: {warmup[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

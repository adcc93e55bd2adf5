"""Real-data study: the whole chain on ../shared/data, one run.

A stratified subsample of the pool (each pool file contributes its share; default 6,000
examples), three targets with query and eval sets drawn from held-out files: GSM8K
(gsm8k_test: 8 query, 200 eval), DialogSum (dialogsum_test: 8 query, 200 eval) and general
instruction following (the Nuggets k-means anchors: 8 query, the other 92 eval). Each
subsample keeps its file's name and layout, so ingestion labels it exactly as the full file.
Then, in a fresh state home, through the Dagster assets: ingestion with quarantine ->
representations each method needs -> selections at the budget -> LoRA fine-tune per
selection -> eval per task (+ the untouched base model) -> the comparison report, printed.

Usage: python benchmarks/real_pool.py [--pool-size 6000] [--eval-size 200] [--budget 5%]
       [--methods random less ...] [--model smollm2] [--home DIR] [--max-new-tokens 160]
Everything is configurable because the defaults take hours on 2 CPU cores; the note of a
run states the settings it used. Exits 0 with a message when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
METHODS = ["random", "less", "bids", "round_robin", "kmeans_centroids", "facility_location", "cherry_ifd"]
#: held-out file -> the task label of its query and eval sets
TARGETS = {
    "gsm8k_test.jsonl": "math",
    "dialogsum_test.json": "summarization",
    "alpaca_gpt4_kmeans_100.json": "general",
}


def read_records(path: Path) -> list:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def write_records(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def stratified_pool(size: int, out: Path, seed: int) -> dict[str, int]:
    """Each pool file's share of ``size`` (proportional, at least 1), same name and layout."""
    files = sorted((SHARED / "pool").iterdir())
    records = {f: read_records(f) for f in files}
    total = sum(len(r) for r in records.values())
    rng = np.random.default_rng(seed)
    counts = {}
    for path, rows in records.items():
        k = max(1, round(size * len(rows) / total))
        chosen = sorted(rng.permutation(len(rows))[:k].tolist())
        write_records(out / "pool" / path.name, [rows[i] for i in chosen])
        counts[path.name] = k
    return counts


def target_sets(out: Path, n_query: int, n_eval: int, seed: int) -> list[tuple[Path, str, str]]:
    """(file, task, split): per target a query file and an eval file, disjoint."""
    sets = []
    for name, task in TARGETS.items():
        rows = read_records(SHARED / "eval" / name)
        order = np.random.default_rng(seed).permutation(len(rows)).tolist()
        query = [rows[i] for i in order[:n_query]]
        evals = [rows[i] for i in order[n_query : n_query + n_eval]]
        suffix = Path(name).suffix
        sets.append((write_records(out / "query" / f"{Path(name).stem}_query{suffix}", query), task, "query"))
        sets.append((write_records(out / "eval" / name, evals), task, "eval"))
    return sets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool-size", type=int, default=6000)
    p.add_argument("--query-size", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=200, help="eval examples per target (anchors: at most 92)")
    p.add_argument("--budget", default="5%")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--less-target", default="math", help="the target task LESS ranks for")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--device", default="auto")
    p.add_argument("--grad-dim", type=int, default=8192)
    p.add_argument("--max-length", type=int, default=512, help="tokens per example (warmup, fine-tune, eval)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    p.add_argument("--max-new-tokens", type=int, default=160, help="generation cap (GSM8K needs ~150)")
    p.add_argument("--eval-per-task", type=int, default=0, help="score a seeded sample of each eval set (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", help="state home (default: a fresh temporary directory)")
    args = p.parse_args()
    if not (SHARED / "pool").is_dir():
        print(f"real_pool: {SHARED} not found; nothing to run")
        return 0
    started = time.perf_counter()
    home_dir = Path(args.home or tempfile.mkdtemp(prefix="dsel-real-pool-"))
    os.environ["DSEL_HOME"] = str(home_dir)

    import duckdb
    from dagster import AssetKey, DagsterInstance

    from dsel_assets import tables
    from dsel_assets.cli import print_comparison
    from dsel_assets.code_location import build_definitions
    from dsel_assets.core.data.catalog import labels_for
    from dsel_assets.pool import pool_batches
    from dsel_assets.runs import materialize_closure
    from resources.home import DselHome

    home = DselHome.from_env().ensure()
    home.use_as_dagster_home()
    data = home.confine("data/real_pool")
    counts = stratified_pool(args.pool_size, data, args.seed)
    print(f"pool subsample: {sum(counts.values())} records {counts}")
    # query and eval sets first, so a pool row equal to one of theirs is the one quarantined
    files = target_sets(data, args.query_size, args.eval_size, args.seed)
    files += [(path, None, "pool") for path in sorted((data / "pool").iterdir())]
    batches = []
    with duckdb.connect(str(home.duckdb)) as conn:
        for path, task, split in files:
            labels = labels_for(path, None, task, split)
            manifest, _ = tables.register_batch(
                conn, path, home.raw, source=labels.source, task=labels.task, split=split
            )
            batches.append(manifest.batch)
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions(pool_batches.name, batches)
    defs = build_definitions(home, model=args.model, device=args.device, grad_dim=args.grad_dim)

    budgets = {"budgets": [args.budget]}
    ops = {f"selection_{m}": {"config": budgets} for m in args.methods}
    if "less" in args.methods:  # LESS ranks for one target; round-robin and BIDS serve all three
        ops["selection_less"] = {"config": {**budgets, "params": {"task": args.less_target}}}
    ops["warmup_checkpoint"] = {"config": {"max_length": args.max_length}}
    finetune = {"epochs": args.epochs, "max_length": args.max_length}
    evaluate = {
        "max_per_task": args.eval_per_task,
        "max_new_tokens": args.max_new_tokens,
        "max_length": args.max_length,
    }
    for name in [*args.methods]:
        ops[f"finetuned_{name}"] = {"config": finetune}
        ops[f"eval_{name}"] = {"config": evaluate}
    ops["eval_base"] = {"config": evaluate}
    targets = [AssetKey(f"eval_{m}") for m in args.methods] + [AssetKey("eval_base")]
    materialize_closure(defs, instance, targets, {"ops": ops})
    reports = [AssetKey("selection_report"), AssetKey("comparison_report")]
    defs.resolve_job_def("curation_job").execute_in_process(instance=instance, asset_selection=reports)
    print(
        f"\nsettings: pool {sum(counts.values())}, query {args.query_size}/target, eval {args.eval_size}/target, "
        f"budget {args.budget}, LESS target {args.less_target}, model {args.model}, d={args.grad_dim}, "
        f"max length {args.max_length}, "
        f"fine-tune epochs {args.epochs}, max new tokens {args.max_new_tokens}, "
        f"scored per eval set {args.eval_per_task or 'all'}\n"
    )
    print_comparison(home)
    print(f"\nwall time: {time.perf_counter() - started:.0f}s; state home: {home.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

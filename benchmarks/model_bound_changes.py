"""The fidelity changes that need a model, measured on the real pool: how far each moves the
selected set at the budget (overlap |A & B| / k of the sets before and after the change).

Three parts, each as far as two CPU cores allow in one run (../shared/data; the machine's load
is printed at start and end):

1. Whole shared pool, no model pass (the changes touch only what these counts name):
   - Nuggets anchors (golden score): the default anchors (the pool rows nearest 100 k-means
     centroids of the MiniLM vectors, seed 0) and the shared anchor file, rendered with
     SmolLM2's template: how many have more than one answer (scored on the last answer now, on
     every token from the first answer before) and how many exceed half of ``max_length`` (left
     out now). None of either: every golden score, and so the selection, is unchanged.
   - Cherry's pre-experience sample: a cluster smaller than ``per_cluster`` is now taken whole
     (before: its 25th-75th perplexity band only). The old sample is a subset of the new, so
     the overlap is |old| / |new|, which depends only on the cluster sizes. Counted on k-means
     (K = 100) of the MiniLM vectors, a stand-in for SmolLM2's embeddings of the whole pool
     (30,201 forwards, hours on CPU).
2. A seeded sample of the pool (``--pool-size``) ingested with the three query tasks of
   ``shared_pool.py`` and selected through ``dsel select`` as a user runs it (SmolLM2-135M,
   LESS warmup and gradient features at dsel's defaults):
   - BIDS on LESS influence: Algorithm 1 (``rule=columns``, now the default) against the old
     default (``rule=tasks``, max) and ``rule=tasks``, mean;
   - ClusterUCB: the per-epoch loop (``cluster_ucb_epochs``) against the static default, and the
     static one with another seed (how far the bandit's own draws move it).
3. DiverseEvol's k-center on raw mean-pooled embeddings against unit rows, on the same sample
   embedded by the base model (the reference embeds with the model trained in the round; one
   round's k-center step from the same random start is what changed).

Usage: python benchmarks/model_bound_changes.py [--pool-size 1000] [--budget 0.05] [--home DIR]
       [--cache DIR] [--parts anchors cherry select diverse_evol]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from shared_pool import SHARED, minilm, pool_or_skip, query_sets, records, seeded_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ANCHOR_FILE = "eval/alpaca_gpt4_kmeans_100.json"


def overlap(a: list, b: list) -> float:
    return len(set(a) & set(b)) / max(len(a), 1)


def dsel(home: Path, *args: str) -> None:
    """One ``dsel`` command as a user runs it (quiet: results and errors only)."""
    command = [sys.executable, "-m", "dsel_assets.app.cli", "--home", str(home), "-q", *args]
    print("$ dsel " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def selected(home: Path, method: str, budget: str, seed: int) -> list[str]:
    """The pool ids of a stored selection replicate, read back through ``dsel export``'s manifest."""
    out = home / "exports" / f"{method}.jsonl"
    options = ("--budget", budget, "--seed", str(seed), "--format", "messages", "--out", str(out), "--force")
    dsel(home, "export", "--method", method, *options)
    manifest = json.loads(out.with_name(out.stem + ".manifest.json").read_text("utf-8"))
    return [row["pool_id"] for row in manifest["rows"]]


def anchors(pool: list[list[dict]], vectors: np.ndarray, max_length: int) -> None:
    from dsel_assets.core.models.loading import load_tokenizer, resolve
    from dsel_assets.core.models.sft import encode_conversation
    from dsel_assets.core.select import build_config, get

    tokenizer = load_tokenizer(resolve("smollm2"))
    ids = np.array([f"p{i:05d}" for i in range(len(pool))])
    n = max(1, min(100, len(ids) // 5))
    chosen = get("kmeans_centroids").select(
        ids, n, build_config("kmeans_centroids", {"seed": 0}), sentence_embeddings=vectors
    )
    sets = {
        "k-means anchors (default)": [pool[int(i[1:])] for i in chosen.ids],
        "anchor file": records(SHARED / ANCHOR_FILE),
        "whole pool (any k-means draw)": pool,
    }
    print(f"\n## Nuggets anchors (max_length {max_length}; SmolLM2 template)")
    print("| anchors | n | more than one answer | longer than max_length / 2 | cut inside the answer |")
    print("|---|---|---|---|---|")
    for label, conversations in sets.items():
        multi = sum(sum(m["role"] == "assistant" for m in c) > 1 for c in conversations)
        long = cut = 0
        for c in conversations:
            enc = encode_conversation(tokenizer, c, max_length)
            cut += enc is None or enc.labels[-1] == -100
            long += enc is not None and len(enc.input_ids) > max_length // 2
        print(f"| {label} | {len(conversations)} | {multi} | {long} | {cut} |")


def band_size(m: int) -> int:
    """Members of an m-member cluster inside its interpolated 25th-75th percentile band (distinct
    values: the count depends on m only), as the old rule took; a band of none gave one member."""
    values = np.arange(m, dtype=np.float64)
    low, high = np.percentile(values, [25, 75])
    return max(1, int(((values >= low) & (values <= high)).sum()))


def cherry(vectors: np.ndarray, n_clusters: int = 100, per_cluster: int = 10) -> None:
    from dsel_assets.core.clustering import kmeans

    _, assignment = kmeans(vectors, n_clusters, 0)
    sizes = np.bincount(assignment, minlength=n_clusters)
    large = sum(min(per_cluster, band_size(m)) for m in sizes if m >= per_cluster)  # the same rule before and after
    small = sizes[(sizes > 0) & (sizes < per_cluster)]
    new, old = large + int(small.sum()), large + sum(band_size(m) for m in small)
    print(f"\n## Cherry pre-experience sample (K={n_clusters}, per_cluster={per_cluster}, MiniLM stand-in)")
    print(
        f"clusters smaller than {per_cluster}: {len(small)} ({int(small.sum())} rows; sizes {sorted(small.tolist())}); "
        f"sample {old} rows before, {new} after; overlap {old / new:.3f}; cluster sizes min {sizes.min()} "
        f"median {int(np.median(sizes))} max {sizes.max()}"
    )


def write_jsonl(path: Path, conversations: list[list[dict]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n" for m in conversations), "utf-8")
    return path


def select_part(home: Path, sample: list[list[dict]], budget: float, draw_batch: int) -> None:
    queries, tasks = query_sets(1)
    for task in dict.fromkeys(tasks):
        rows = [q for q, t in zip(queries, tasks, strict=True) if t == task]
        dsel(
            home,
            "ingest",
            str(write_jsonl(home / "data" / f"query_{task}.jsonl", rows)),
            "--split",
            "query",
            "--task",
            task,
        )
    dsel(home, "ingest", str(write_jsonl(home / "data" / "pool.jsonl", sample)))
    label = f"{budget:.0%}"
    bandit = ["task=gsm8k", f"draw_batch={draw_batch}"]  # ClusterUCB's reward: GSM8K's (4 query rows)
    runs = {  # label: (method, parameters)
        "bids, rule=columns (Algorithm 1)": ("bids", []),
        "bids, rule=tasks, max (old default)": ("bids", ["rule=tasks", "aggregate=max"]),
        "bids, rule=tasks, mean": ("bids", ["rule=tasks", "aggregate=mean"]),
        "cluster_ucb (static, seed 0)": ("cluster_ucb", bandit),
        "cluster_ucb (static, seed 1)": ("cluster_ucb", [*bandit, "seed=1"]),
        "cluster_ucb_epochs (per-epoch loop)": ("cluster_ucb_epochs", bandit),
    }
    picks, seconds = {}, {}
    for name, (method, params) in runs.items():
        started = time.perf_counter()
        dsel(home, "select", "--method", method, "--budget", label, *[a for p in params for a in ("--param", p)])
        seconds[name] = time.perf_counter() - started
        seed = int(dict(p.split("=", 1) for p in params).get("seed", 0))
        picks[name] = selected(home, method, label, seed)
    base = {"bids": "bids, rule=columns (Algorithm 1)", "cluster_ucb": "cluster_ucb (static, seed 0)"}
    print(f"\n## Selections on a {len(sample)}-example sample, budget {label} (k = {len(picks[base['bids']])})")
    print("| selection | against | overlap | seconds (first includes what it needs) |")
    print("|---|---|---|---|")
    for name in runs:
        against = base["bids"] if name.startswith("bids") else base["cluster_ucb"]
        print(f"| {name} | {against} | {overlap(picks[against], picks[name]):.3f} | {seconds[name]:.0f} |")


def diverse_evol_part(sample: list[list[dict]], budget: float, rounds: int = 3) -> None:
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.models.model_embeddings import model_embeddings
    from dsel_assets.core.select.iterative import round_sizes
    from dsel_assets.core.select.kcenter_greedy import kcenter_extend

    spec = resolve("smollm2")
    tokenizer, model = load_tokenizer(spec), load_causal_lm(spec, device="cpu")
    started = time.perf_counter()
    raw = model_embeddings(model, tokenizer, sample, "mean", 512, normalise=False)
    embedded = time.perf_counter() - started
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    k = round(budget * len(sample))
    sizes = round_sizes(k, rounds)
    norms = np.linalg.norm(raw, axis=1)
    print(f"\n## DiverseEvol: one round's k-center step, base-model embeddings ({embedded:.0f} s to embed)")
    print(f"norms of the raw embeddings: min {norms.min():.1f} median {np.median(norms):.1f} max {norms.max():.1f}")
    print("| seed of the random start | picks | overlap raw vs unit | raw: overlap with the next seed's |")
    print("|---|---|---|---|")
    picks = {}
    for seed in range(6):
        start = np.random.default_rng(seed).permutation(len(sample))[: sizes[0]].tolist()
        picks[seed] = kcenter_extend(raw, start, sizes[1])[0], kcenter_extend(unit, start, sizes[1])[0]
    for seed in range(5):
        (a, b), (c, _) = picks[seed], picks[seed + 1]
        print(f"| {seed} | {sizes[1]} | {overlap(a, b):.3f} | {overlap(a, c):.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-size", type=int, default=1000, help="examples of the seeded sample (parts 2, 3)")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--home", type=Path, default=None, help="state home of part 2 (default: a temporary one)")
    parser.add_argument(
        "--cache", type=Path, default=None, help="folder with the pool's MiniLM vectors (conversation.npy)"
    )
    parser.add_argument("--parts", nargs="+", default=["anchors", "cherry", "select", "diverse_evol"])
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample")
    parser.add_argument(
        "--draw-batch",
        type=int,
        default=1,
        help="ClusterUCB's draw_batch (1, the default, scores one row per draw: the per-epoch loop then "
        "pays a full gradient projection per draw, ~30 min per reselection on 1,000 examples and 2 cores)",
    )
    args = parser.parse_args()
    pool = pool_or_skip()
    if pool is None:
        return 0
    from dsel_assets.core.data.schema import example_text

    sample = seeded_sample(pool, args.pool_size, args.seed)
    if {"anchors", "cherry"} & set(args.parts):
        cached = args.cache / "conversation.npy" if args.cache else None
        vectors, _ = minilm([example_text(m)[:2000] for m in pool], cached)
        if "anchors" in args.parts:
            anchors(pool, vectors, 2048)
        if "cherry" in args.parts:
            cherry(vectors)
    if "select" in args.parts:
        os.environ.setdefault("DSEL_MAX_CONCURRENT", "1")  # two cores: one model step at a time
        home = Path(args.home or tempfile.mkdtemp(prefix="dsel-model-bound-")).resolve()
        select_part(home, sample, args.budget, args.draw_batch)
    if "diverse_evol" in args.parts:
        diverse_evol_part(sample, args.budget)
    print(f"\nload average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

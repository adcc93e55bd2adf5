"""Diversify-and-Conquer's first round on the real pool: what the reference's settings change.

The whole shared pool (../shared/data/pool) is embedded twice with all-MiniLM-L6-v2, as the
``sentence_embeddings`` asset does: whole conversations (``sentence_text=conversation``, dsel's
default) and system + user turns only (``instruction``, what the reference embeds). The first
round of a three-round run at the budget (5% by default) is then taken under four settings:

- dsel: conversation text, K = 100 clusters, 20 k-means iterations, 1 fit, ``round0=equal``;
- instruction text, the rest as dsel;
- the reference's clustering (K = 512, 300 iterations, 5 fits, ``round0=floor``) on conversations;
- the reference: instruction text and its clustering.

Texts are cut at 2,000 characters before tokenizing: MiniLM reads at most 256 word pieces
(about 1,000-1,300 characters of English prose), so the cut changes a vector only where 256
pieces span more than 2,000 characters, and spares tokenizing the longest conversations whole.
The first round is what the first training round sees: the selector runs with a trainer that
records the rows it is asked to train on and stops the run. Printed: the machine's load, the
time spent embedding, each setting's first-round size, and the overlap |A & B| / |A| of each
setting's rows with dsel's (A = dsel's); a second seed of dsel's setting gives the overlap two
draws of the same setting reach. The first round draws at random within clusters, so overlap
sits near chance (|B| / N) for any two settings; what a setting changes shows instead in the
partition (adjusted mutual information of the k-means clusterings, 1 = the same partition)
and in the mix of source files the first round takes, printed beside the pool's.

Usage: python benchmarks/sentence_text.py [--budget 0.05] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from shared_pool import SHARED, minilm, pool_files

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
REFERENCE = {"n_clusters": 512, "kmeans_iterations": 300, "kmeans_restarts": 5, "round0": "floor"}


class FirstRound(Exception):
    """Raised by the recording trainer: the first round's rows, the selector stopped there."""

    def __init__(self, rows: list[int]):
        super().__init__(len(rows))
        self.rows = rows


class RecordingTrainer:
    def train_and_score(self, selected: list[int], round_index: int):
        raise FirstRound(list(selected))

    train_and_embed = train_and_score


def first_round(x: np.ndarray, k: int, params: dict) -> list[int]:
    from dsel_assets.core.select import build_config, get

    ids = np.array([f"p{i:05d}" for i in range(len(x))])
    config = build_config("diversify_conquer", {"rounds": 3, **params})
    try:
        get("diversify_conquer").select(ids, k, config, sentence_embeddings=x, trainer=RecordingTrainer())
    except FirstRound as stop:
        return stop.rows
    raise RuntimeError("the selector finished without training a round")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--cache", type=Path, default=None, help="folder to keep the embeddings in between runs")
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent")
        return 0
    from dsel_assets.core.data.schema import example_text

    print(f"load average at start: {os.getloadavg()}, cores: {os.cpu_count()}")
    files = pool_files()
    pool = [m for _, m in files]
    source = np.array([name for name, _ in files])
    k = round(args.budget * len(pool))
    vectors = {}
    for text in ("conversation", "instruction"):
        cached = args.cache / f"{text}.npy" if args.cache else None
        vectors[text], seconds = minilm([example_text(m, text)[:2000] for m in pool], cached)
        print(f"{text}: {len(pool):,} examples embedded in {seconds:.0f} s")
    settings = {
        "dsel (conversation, K=100)": ("conversation", {}),
        "dsel, seed 1": ("conversation", {"seed": 1}),
        "instruction text, K=100": ("instruction", {}),
        "reference clustering, conversation": ("conversation", REFERENCE),
        "reference (instruction, K=512, floor)": ("instruction", REFERENCE),
    }
    rounds = {}
    for label, (text, params) in settings.items():
        started = time.perf_counter()
        rounds[label] = first_round(vectors[text], k, params)
        print(f"{label}: first round {len(rounds[label])} rows ({time.perf_counter() - started:.0f} s)")
    base = set(rounds["dsel (conversation, K=100)"])
    print(f"\nbudget {args.budget:.0%} = {k:,} of {len(pool):,}; first-round overlap with dsel's rows (|A & B| / |A|):")
    for label, rows in rounds.items():
        print(f"  {label:40s} {len(base & set(rows)) / max(len(base), 1):.3f}  ({len(rows)} rows)")
    reference = set(rounds["reference (instruction, K=512, floor)"])
    instruction = set(rounds["instruction text, K=100"])
    print(f"  instruction K=100 vs reference: {len(instruction & reference) / max(len(instruction), 1):.3f}")
    print(
        f"  chance: {len(base) / len(pool):.3f} for {len(base)} rows, {2 * len(base) / len(pool):.3f} for twice as many"
    )

    from sklearn.metrics import adjusted_mutual_info_score

    from dsel_assets.core.clustering import kmeans

    partitions = {
        "conversation, K=100": kmeans(vectors["conversation"], 100, 0)[1],
        "instruction, K=100": kmeans(vectors["instruction"], 100, 0)[1],
        "instruction, K=512, 300 it, 5 fits": kmeans(vectors["instruction"], 512, 0, 300, 5)[1],
    }
    names = list(partitions)
    print("\nadjusted mutual information between the clusterings:")
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            print(f"  {a} vs {b}: {adjusted_mutual_info_score(partitions[a], partitions[b]):.3f}")
    print("\nsource mix (share of rows per source file):")
    files_order = sorted(set(source.tolist()))
    print(f"  {'setting':40s} " + " ".join(f"{f[:14]:>14s}" for f in files_order))
    mixes = {"pool": np.arange(len(pool)), **{label: np.array(rows) for label, rows in rounds.items()}}
    for label, rows in mixes.items():
        shares = [np.mean(source[rows] == f) for f in files_order]
        print(f"  {label[:40]:40s} " + " ".join(f"{share:14.3f}" for share in shares))
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

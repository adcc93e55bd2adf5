"""Data Whisperer on the real pool: what the reference's settings change in the selected set.

A seeded sample of the shared pool (../shared/data/pool) is scored with SmolLM2-135M (eager
attention, CPU) against GSM8K query rows (../shared/data/eval/gsm8k_test.jsonl, the target
task), 5 demonstrations and 3 queries per prompt, under:

- dsel: the middle layer (15 of 30), answers capped at 32 new tokens;
- dsel with another seed (another demonstration partition and other query draws): how far two
  draws of the same setting already disagree, the floor the others are read against;
- the reference's layer (its per-model table gives 11 to any model outside it), 32 tokens;
- with ``--caps 128,512``, the reference's layer with answers capped there instead: how far the
  cap alone moves the selection as it grows towards the reference's uncapped answers, and how
  many answers each cap cuts (an answer that ends within the cap is what uncapped generation
  gives); ``--caps-only`` runs these against the reference's layer at 32 tokens, nothing else;
- with ``--uncapped``, the reference: its layer and uncapped answers (to the end of turn, or
  8,192 tokens of prompt and answer). Slow on a CPU: SmolLM2's greedy answers often do not end,
  and 4 prompts took over 7 minutes on 2 cores.

Printed: the machine's load, the seconds each setting took, the overlap |A & B| / k of each
setting's top-k (the ``data_whisperer`` selection at the budget) with dsel's, and the Spearman
correlation of the scores.

Usage: python benchmarks/whisperer_settings.py [--sample 200] [--queries 20] [--budget 0.05]
       [--caps 128,512] [--caps-only] [--uncapped]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from shared_pool import SHARED, pool_or_skip, records, seeded_sample

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, kind="stable"), kind="stable") for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=int, default=200, help="pool examples scored (seeded sample)")
    parser.add_argument("--queries", type=int, default=20, help="GSM8K query rows")
    parser.add_argument("--budget", type=float, default=0.05)
    parser.add_argument("--caps", default="", help="more answer caps at the reference's layer, e.g. 128,512")
    parser.add_argument("--caps-only", action="store_true", help="only the caps, against the reference layer at 32")
    parser.add_argument("--uncapped", action="store_true", help="also the reference's uncapped answers (slow)")
    args = parser.parse_args()
    pool = pool_or_skip()
    if pool is None:
        return 0
    from dsel_assets.core.models.data_whisperer import reference_layer, whisperer_scores
    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve
    from dsel_assets.core.select import build_config, get

    sample = seeded_sample(pool, args.sample, 0)
    rows = records(SHARED / "eval" / "gsm8k_test.jsonl")
    queries = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))[: args.queries]]
    spec = resolve("smollm2")
    tokenizer = load_tokenizer(spec)
    model = load_causal_lm(spec, device="cpu")
    model.set_attn_implementation("eager")
    n_layers = model.config.num_hidden_layers
    layers = {"middle": n_layers // 2, "reference": reference_layer("smollm2", n_layers)}
    settings = {
        f"dsel (layer {layers['middle']}, 32 tokens)": (layers["middle"], 32, 0),
        "dsel, seed 1": (layers["middle"], 32, 1),
        f"reference layer {layers['reference']}, 32 tokens": (layers["reference"], 32, 0),
    }
    if args.caps_only:
        settings = {label: setting for label, setting in settings.items() if label.startswith("reference layer")}
    for cap in (int(c) for c in args.caps.split(",") if c.strip()):
        settings[f"reference layer {layers['reference']}, {cap} tokens"] = (layers["reference"], cap, 0)
    if args.uncapped:
        settings[f"reference (layer {layers['reference']}, uncapped)"] = (layers["reference"], 0, 0)
    ids = np.array([f"s{i:05d}" for i in range(len(sample))])
    k = round(args.budget * len(sample))
    scores, picks = {}, {}
    for label, (layer, cap, seed) in settings.items():
        started = time.perf_counter()
        answers: list[tuple[int, bool]] = []
        scores[label] = whisperer_scores(
            model,
            tokenizer,
            sample,
            queries,
            5,
            3,
            layer,
            cap,
            seed,
            on_answer=lambda n, end, told=answers: told.append((n, end)),
        )
        config = build_config("data_whisperer", {})
        picks[label] = get("data_whisperer").select(ids, k, config, whisperer_score=scores[label]).ids
        base = next(iter(settings))  # each setting against dsel's as soon as it is scored
        common = len(set(picks[base]) & set(picks[label])) / max(k, 1)
        print(
            f"{label:40s} scored in {time.perf_counter() - started:5.0f} s; against {base} at "
            f"{args.budget:.0%} = {k} of {len(sample)}: overlap {common:.3f}, "
            f"Spearman {spearman(scores[base], scores[label]):.3f}; {sum(not end for _, end in answers)} of "
            f"{len(answers)} answers cut, mean {np.mean([n for n, _ in answers]):.0f} tokens",
            flush=True,
        )
    print(f"load average at end: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real-data study: which selection method should SmolLM2-135M be fine-tuned on, with seeds and
confidence intervals, through ``dsel ingest`` and ``dsel compare`` as a user runs them.

Data (from ../shared/data, never copied into the repository):
- targets: math = GSM8K (query and eval rows from gsm8k_test), summarization = DialogSum (from
  dialogsum_test), code = a held-out slice carved from the CodeAlpaca pool files (their rows are
  training data, not an eval set): those rows, and every pool row whose normalised instruction
  + input or instruction alone equals one of theirs, are kept out of the pool (decontamination);
- pool: a stratified subsample of the remaining pool files (each file its share, seeded).
Then ``dsel compare`` materializes representations, selection replicates (several selection
seeds; one LESS warmup per seed for the gradient methods), fine-tunes, the base model and
held-out evaluation (loss, and generation: GSM8K exact match, DialogSum ROUGE-L), and prints
the report (docs/STATISTICS.md says how its verdicts are made).

Usage: python benchmarks/real_pool.py [--pool-size 1000] [--eval-size 40] [--query-size 8]
       [--home DIR] [--selection-seeds 3] [--random-seeds 5] [--seeds 1] [--metric both] ...
Exits 0 with a message when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
METHODS = ["random", "less", "bids", "round_robin", "random_in_task", "facility_location"]
#: facility location's default lazy greedy is deterministic; the stochastic optimizer has a seed to replicate
PARAMS = ["facility_location.optimizer=stochastic"]
#: eval file -> task label (the file names are the catalog's, so ingestion labels them itself)
EVAL_FILES = {"gsm8k_test.jsonl": "math", "dialogsum_test.json": "summarization"}
CODE_FILES = ("codealpaca_4k5.json", "codealpaca_2k.json")
CODE_HELD_OUT = "code_heldout.json"


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


def normalised(text: object) -> str:
    return re.sub(r"\s+", " ", str(text or "")).strip().lower()


def prompt_keys(record: dict) -> set[str]:
    """Keys under which two records ask the same thing: instruction + input, and instruction."""
    instruction = normalised(record.get("instruction") or record.get("question") or record.get("dialogue"))
    return {f"{instruction} || {normalised(record.get('input'))}", instruction} - {"", " || "}


def carve_code_target(n: int, seed: int) -> tuple[list[dict], set[str]]:
    """``n`` CodeAlpaca rows with distinct prompts (instruction, input, output), and the prompt
    keys the pool must not contain."""
    rows = [r for name in CODE_FILES for r in read_records(SHARED / "pool" / name)]
    order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    chosen, keys = [], set()
    for i in order:
        record = rows[i]
        answer = record.get("output") or record.get("response")
        mine = prompt_keys(record)
        if not answer or mine & keys:
            continue
        chosen.append({"instruction": record["instruction"], "input": record.get("input", ""), "output": answer})
        keys |= mine
        if len(chosen) == n:
            break
    return chosen, keys


def stratified_pool(size: int, out: Path, seed: int, banned: set[str]) -> tuple[dict[str, int], int]:
    """Each pool file's share of ``size`` (proportional, at least 1) among its rows whose prompt
    is not banned, same file name and layout; returns the counts and how many rows were banned."""
    files = sorted((SHARED / "pool").iterdir())
    records = {f: [r for r in read_records(f) if not prompt_keys(r) & banned] for f in files}
    removed = sum(len(read_records(f)) for f in files) - sum(len(r) for r in records.values())
    total = sum(len(r) for r in records.values())
    rng = np.random.default_rng(seed)
    counts = {}
    for path, rows in records.items():
        k = max(1, round(size * len(rows) / total))
        chosen = sorted(rng.permutation(len(rows))[:k].tolist())
        write_records(out / "pool" / path.name, [rows[i] for i in chosen])
        counts[path.name] = k
    return counts, removed


def target_files(out: Path, n_query: int, n_eval: int, seed: int) -> tuple[list[tuple[Path, str, str]], set[str]]:
    """(file, task, split) for a query file and a disjoint eval file per target, and the
    prompt keys of the code target that the pool must not contain."""
    files = []
    code, banned = carve_code_target(n_query + n_eval, seed)
    sets = {name: read_records(SHARED / "eval" / name) for name in EVAL_FILES}
    sets[CODE_HELD_OUT] = code
    for name, rows in sets.items():
        order = np.random.default_rng(seed).permutation(len(rows)).tolist()
        task = EVAL_FILES.get(name, "code")
        suffix, stem = Path(name).suffix, Path(name).stem
        query = write_records(out / "query" / f"{stem}_query{suffix}", [rows[i] for i in order[:n_query]])
        evals = write_records(out / "eval" / name, [rows[i] for i in order[n_query : n_query + n_eval]])
        files += [(query, task, "query"), (evals, task, "eval")]
    return files, banned


def dsel(home: Path, *args: str) -> None:
    """One ``dsel`` command, as a user runs it (its output streams through)."""
    command = [sys.executable, "-m", "dsel_assets.app.cli", "--home", str(home), *args]
    print("$ dsel " + " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pool-size", type=int, default=1000)
    p.add_argument("--query-size", type=int, default=8)
    p.add_argument("--eval-size", type=int, default=40, help="eval examples per target")
    p.add_argument("--budget", default="10%")
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--param", action="append", default=None, help=f"method parameter (default: {' '.join(PARAMS)})")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--seeds", type=int, default=1, help="training seeds per selection")
    p.add_argument("--selection-seeds", type=int, default=3, help="selection replicates per seeded method")
    p.add_argument("--random-seeds", type=int, default=5, help="selection seeds of random")
    p.add_argument("--metric", default="both", choices=["loss", "generation", "both"])
    p.add_argument("--max-new-tokens", type=int, default=128, help="generation cap")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs (1 fits the budget on 2 cores)")
    p.add_argument("--no-base", action="store_true", help="skip the untouched model's evaluation")
    p.add_argument("--max-length", type=int, default=256, help="tokens per training example (warmup, fine-tune)")
    p.add_argument("--eval-max-length", type=int, default=512, help="tokens per eval example")
    p.add_argument("--warmup-epochs", type=int, default=1, help="LESS warmup epochs (one checkpoint each)")
    p.add_argument(
        "--grad-compute-dtype",
        default="bfloat16",
        help="forward/backward precision of the LESS gradient features (bfloat16: LESS's own; auto: dsel's default)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--home", help="state home (default: a fresh temporary directory)")
    args = p.parse_args()
    if not (SHARED / "pool").is_dir():
        print(f"real_pool: {SHARED} not found; nothing to run")
        return 0
    started = time.perf_counter()
    home = Path(args.home or tempfile.mkdtemp(prefix="dsel-real-pool-")).resolve()
    data = home / "data" / "real_pool"
    files, banned = target_files(data, args.query_size, args.eval_size, args.seed)
    counts, removed = stratified_pool(args.pool_size, data, args.seed, banned)
    print(f"pool subsample: {sum(counts.values())} records {counts}; {removed} pool rows share a code target prompt")
    os.environ.setdefault("DSEL_MAX_CONCURRENT", "1")  # two cores: one model step at a time
    os.environ["DSEL_GRAD_COMPUTE_DTYPE"] = args.grad_compute_dtype
    for path, task, split in files:  # query and eval sets first: a pool copy of one of theirs is quarantined
        dsel(home, "ingest", str(path), "--split", split, "--task", task, "--model", args.model)
    dsel(home, "ingest", str(data / "pool"), "--model", args.model)
    budget = args.budget
    targets = [arg for task in ("math", "summarization", "code") for arg in ("--target", task)]
    dsel(
        home,
        "compare",
        "--methods",
        *args.methods,
        "--budget",
        budget,
        *targets,
        "--seeds",
        str(args.seeds),
        "--selection-seeds",
        str(args.selection_seeds),
        "--random-seeds",
        str(args.random_seeds),
        "--metric",
        args.metric,
        "--max-new-tokens",
        str(args.max_new_tokens),
        *[arg for param in (args.param or PARAMS) for arg in ("--param", param)],
        "--eval-per-task",
        str(args.eval_size),
        "--epochs",
        str(args.epochs),
        "--max-length",
        str(args.max_length),
        "--eval-max-length",
        str(args.eval_max_length),
        "--config",
        f"warmup_checkpoint.epochs={args.warmup_epochs}",
        "--config",
        f"warmup_checkpoint.max_length={args.max_length}",
        "--model",
        args.model,
        *(["--no-base"] if args.no_base else []),
    )
    print(
        f"\nsettings: pool {sum(counts.values())}, query {args.query_size}/target, eval {args.eval_size}/target, "
        f"budget {budget}, methods {' '.join(args.methods)} ({' '.join(args.param or PARAMS)}), selection "
        f"seeds {args.selection_seeds} (random {args.random_seeds}), training seeds {args.seeds}, metric "
        f"{args.metric} (max {args.max_new_tokens} new tokens), base model {not args.no_base}, model {args.model}, "
        f"fine-tune epochs {args.epochs}, max length {args.max_length} "
        f"(eval {args.eval_max_length}), warmup epochs {args.warmup_epochs}, gradient precision "
        f"{args.grad_compute_dtype}"
    )
    print(f"wall time: {time.perf_counter() - started:.0f}s; state home: {home}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Host memory of a ``dsel compare`` run in one process, as the CLI runs it: RSS sampled every
0.2 s beside the run, and per Dagster step the peak RSS while it ran and what it left held
after it ended (the growth a later step starts from).

Data (from ../shared/data, never copied into the repository): the pool is a seeded sample of
Alpaca-GPT4 and GSM8K-train rows, the math target's query and eval rows come from GSM8K-test.

Usage: python benchmarks/compare_memory.py [--pool-size 1000] [--methods random less ...]
       [--model smollm2] [--grad-dim 8192] [--max-batch-tokens N] [--no-gradient-checkpointing]
       [--home DIR]
Prints the machine's load, the per-step table (largest peak first) and the run's peak RSS.
Exits 0 with a message when ../shared/data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Sampler(threading.Thread):
    """(time, RSS MB) every ``every`` seconds until stopped."""

    def __init__(self, every: float = 0.2):
        super().__init__(daemon=True)
        self.every, self.samples, self.done = every, [], threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.time(), rss_mb()))
            self.done.wait(self.every)

    def peak(self, start: float, end: float) -> float:
        inside = [m for t, m in self.samples if start <= t <= end]
        return max(inside) if inside else float("nan")

    def at(self, when: float) -> float:
        after = [m for t, m in self.samples if t >= when]
        return after[0] if after else float("nan")


def as_messages(record: dict) -> dict:
    """An Alpaca (instruction / input / output) or GSM8K (question / answer) record as one chat
    turn: one pool file of one layout, so every row is accepted (a file mixing both layouts
    quarantines the half that does not match the detected one)."""
    if "question" in record:
        prompt, response = record["question"], record["answer"]
    else:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        response = record["output"]
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}


def write_data(folder: Path, pool_size: int, seed: int) -> dict[str, Path]:
    rng = random.Random(seed)
    alpaca = json.loads((SHARED / "pool" / "alpaca_gpt4_9k.json").read_text(encoding="utf-8"))
    gsm_train = [json.loads(x) for x in (SHARED / "pool" / "gsm8k_train.jsonl").read_text().splitlines() if x.strip()]
    gsm_test = [json.loads(x) for x in (SHARED / "eval" / "gsm8k_test.jsonl").read_text().splitlines() if x.strip()]
    pool = rng.sample(alpaca, pool_size // 2) + rng.sample(gsm_train, pool_size - pool_size // 2)
    rng.shuffle(pool)
    held = rng.sample(gsm_test, 48)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"pool": folder / "pool.jsonl", "query": folder / "query.jsonl", "eval": folder / "eval.jsonl"}
    files["pool"].write_text("".join(json.dumps(as_messages(r)) + "\n" for r in pool), encoding="utf-8")
    files["query"].write_text("".join(json.dumps(r) + "\n" for r in held[:8]), encoding="utf-8")
    files["eval"].write_text("".join(json.dumps(r) + "\n" for r in held[8:]), encoding="utf-8")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--methods", nargs="+", default=["random", "less", "bids", "round_robin", "facility_location"])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--home", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grad-dim", type=int, default=8192, help="gradient feature dimension (dsel's default)")
    parser.add_argument("--max-batch-tokens", type=int, default=None, help="dsel compare --max-batch-tokens")
    parser.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="dsel compare --no-gradient-checkpointing"
    )
    args = parser.parse_args()
    if not SHARED.is_dir():
        print(f"compare_memory: {SHARED} is absent; nothing to measure")
        return 0
    home = args.home or Path(tempfile.mkdtemp(prefix="dsel-memory-"))
    os.environ["DSEL_HOME"] = str(home)
    files = write_data(home.parent / f"{home.name}-data", args.pool_size, args.seed)
    print(f"load average before: {os.getloadavg()}; cores: {os.cpu_count()}; home: {home}", flush=True)

    import dagster as dg

    from dsel_assets.app.cli import main as dsel

    for split, task in (("query", "math"), ("eval", "math"), ("pool", None)):
        flags = ["--split", split] + (["--task", task] if task else ["--task", "general"])
        if dsel(["ingest", str(files[split]), "--model", args.model, *flags]) != 0:
            return 1
    sampler = Sampler()
    sampler.start()
    started, before = time.time(), rss_mb()
    command = ["compare", "--methods", *args.methods, "--target", "math", "--budget", "5%", "--seeds", "1"]
    command += ["--selection-seeds", "1", "--random-seeds", "2", "--eval-per-task", "40", "--epochs", "1"]
    if args.max_batch_tokens:
        command += ["--max-batch-tokens", str(args.max_batch_tokens)]
    if args.no_gradient_checkpointing:
        command += ["--no-gradient-checkpointing"]
    code = dsel(command + ["--grad-dim", str(args.grad_dim), "--yes"])
    sampler.done.set()
    sampler.join()
    instance = dg.DagsterInstance.get()
    rows = []
    for record in instance.get_run_records():
        if record.start_time is None or record.start_time < started:
            continue
        for step in instance.get_run_step_stats(record.dagster_run.run_id):
            if step.start_time is None or step.end_time is None:
                continue
            partition = record.dagster_run.tags.get("dagster/partition", "")
            name = step.step_key + (f"[{partition[:16]}]" if partition else "")
            rows.append((sampler.peak(step.start_time, step.end_time), sampler.at(step.end_time), name))
    rows.sort(
        key=lambda row: -row[0] if row[0] == row[0] else 0.0
    )  # largest peak first, steps too short to sample last
    print(f"\ndsel compare exit {code}; {time.time() - started:.0f} s; RSS before {before:.0f} MB")
    print(f"load average after: {os.getloadavg()}")
    print("| step | peak RSS during (MB) | RSS after (MB) |\n|---|---|---|")
    for peak, after, name in rows[:25]:
        print(f"| {name} | {peak:.0f} | {after:.0f} |")
    print(f"\npeak RSS of the whole compare: {max(m for _, m in sampler.samples):.0f} MB")
    return code


if __name__ == "__main__":
    sys.exit(main())

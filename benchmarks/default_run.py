"""The default run (``dsel run``) alone and beside a CPU-bound neighbour, one run each.

Each run gets a fresh state home; the dequantized model cache (``DSEL_MODEL_CACHE``) is filled
before the first run, so both start alike. The neighbour is benchmarks/grad_features.py's
contender: torch matmuls at torch's default thread count and OpenMP settings (none of dsel's),
as an uncoordinated second process would be. Printed: each run's wall time and its own stage
table, and the contended run's speed as a share of the idle one, with the load average at the
start of each run.

Usage: python benchmarks/default_run.py [--modes idle contended] [--workdir DIR] [-- dsel run args]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def stage_table(output: str) -> str:
    """The stage table ``dsel run`` prints at its end."""
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("stage ")), None)
    if start is None:
        return "(no stage table)"
    end = next((i for i in range(start + 2, len(lines)) if not lines[i].strip()), len(lines))
    return "\n".join(lines[start:end])


def run_once(workdir: Path, mode: str, extra: list[str]) -> tuple[float, str, str]:
    from grad_features import contender

    home = workdir / f"home-{mode}"
    shutil.rmtree(home, ignore_errors=True)
    load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    neighbour = contender() if mode == "contended" else None
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dsel_assets.app.cli", "--home", str(home), "run", *extra],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"dsel run ({mode}) failed with exit code {done.returncode}")
    return seconds, load, stage_table(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", choices=["idle", "contended"], default=["idle", "contended"])
    parser.add_argument("--workdir", type=Path, default=None, help="where the state homes go (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="arguments for dsel run (after --)")
    args = parser.parse_args()

    from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve

    spec = resolve("smollm2")
    load_tokenizer(spec), load_causal_lm(spec, "cpu")  # fills the model cache once
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dsel-default-run-"))
    results = {}
    for mode in args.modes:
        seconds, load, stages = run_once(workdir, mode, args.extra)
        results[mode] = seconds
        print(f"## dsel run, {mode}: {seconds:.0f} s (load average at the start {load})\n\n{stages}\n", flush=True)
    if {"idle", "contended"} <= results.keys():
        share = results["idle"] / results["contended"]
        print(f"beside a CPU-bound process the default run goes at {share:.0%} of its idle speed")


if __name__ == "__main__":
    main()

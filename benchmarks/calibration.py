"""How often does a comparison call a method that is secretly random "better" or "worse"?

Simulated nulls with known variance components: each eval row's loss for one model is
    item difficulty (per eval group, plus per row within it)
  + selection effect c_s ~ N(0, sd_sel)  + selection x group effect ~ N(0, sd_sel_item)
  + training-seed effect ~ N(0, sd_train) + per-row noise ~ N(0, sd_noise),
and the "method" is one more random selection (or, for a deterministic method, a fixed selection
whose expected loss equals random's). Each trial builds the (method, random) panels and asks
three engines for a verdict at 5%:
  flat        the previous engine: every (selection seed, training seed) model one exchangeable
              row, eval rows (not groups) resampled, paired percentile bootstrap;
  hier-boot   the hierarchical bootstrap of the difference: selections, then training seeds
              within each, then eval groups shared by both arms (dsel_assets.core.stats weights);
  t (dsel)    dsel's verdict: Welch's t on replicate means (dsel_assets.core.stats.difference).
A calibrated engine says better/worse in 5% +- 2% of null trials. A last block reports power
against a true shift. Usage:
    python benchmarks/calibration.py [--trials 1000] [--n-boot 1000] [--seed 0] [--quick]
Prints a markdown table (and the machine's load); about 10 minutes on 2 cores at the defaults.

Real check: ``--real HOME`` reads a state home where ``dsel compare --methods random
--random-seeds K --seeds T`` ran (``benchmarks/real_pool.py --methods random ...``) and, for
``--splits`` random splits of random's K selections into a pretend method (3) and the baseline (5),
runs dsel's comparison table on the real eval losses: how often is random called better or worse
than random, per task row and after Holm over the table?"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsel_assets.core.stats import (  # noqa: E402
    DETERMINISTIC,
    SAMPLED,
    difference,
    replicates,
    row_weights,
    unit_weights,
)
from resources import store as state_db


@dataclass(frozen=True)
class Setting:
    """One simulated design and its variance components (nats)."""

    sd_sel: float = 0.02
    sd_sel_item: float = 0.05
    sd_train: float = 0.01
    sd_noise: float = 0.2
    sd_item: float = 1.0
    groups: int = 200
    rows_per_group: int = 1
    method_selections: int = 3
    random_selections: int = 5
    seeds: int = 2
    method_randomness: str = SAMPLED  # SAMPLED, DETERMINISTIC, or unsampled ("warmup": one selection)
    shift: float = 0.0  # the method's true effect (negative: lower loss, better)

    def label(self) -> str:
        arms = f"{self.method_selections}x{self.seeds} vs {self.random_selections}x{self.seeds}"
        rows = f"{self.groups}x{self.rows_per_group}"
        return (
            f"sel {self.sd_sel:g}, sel*item {self.sd_sel_item:g}, train {self.sd_train:g}, "
            f"noise {self.sd_noise:g}; {arms} ({self.method_randomness}); rows {rows}"
        )


@dataclass(frozen=True)
class Trial:
    """One simulated comparison: [units, rows] losses per arm, each unit's selection, row groups."""

    method: np.ndarray
    method_selections: np.ndarray
    baseline: np.ndarray
    baseline_selections: np.ndarray
    groups: np.ndarray


def simulate(setting: Setting, rng: np.random.Generator) -> Trial:
    """Draw one comparison under ``setting``."""
    g, per = setting.groups, setting.rows_per_group
    groups = np.repeat(np.arange(g), per)
    item = np.repeat(rng.normal(0.0, setting.sd_item, g), per) + rng.normal(0.0, setting.sd_item / 4, g * per)

    def arm(selections: int, fixed: bool) -> tuple[np.ndarray, np.ndarray]:
        values, labels = [], []
        for s in range(selections):
            if fixed:  # a deterministic selection whose expected loss equals random's
                effect = np.zeros(g * per)
            else:
                effect = rng.normal(0.0, setting.sd_sel) + np.repeat(rng.normal(0.0, setting.sd_sel_item, g), per)
            for _ in range(setting.seeds):
                noise = rng.normal(0.0, setting.sd_noise, g * per)
                values.append(item + effect + rng.normal(0.0, setting.sd_train) + noise)
                labels.append(s)
        return np.array(values), np.array(labels)

    fixed = setting.method_randomness == DETERMINISTIC
    method, method_labels = arm(setting.method_selections, fixed)
    baseline, baseline_labels = arm(setting.random_selections, False)
    return Trial(method + setting.shift, method_labels, baseline, baseline_labels, groups)


def flat_bootstrap_p(trial: Trial, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """The previous engine: models resampled as exchangeable rows per arm, eval rows (one shared
    draw) resampled; (delta, two-sided bootstrap p)."""
    m, b, n = len(trial.method), len(trial.baseline), trial.method.shape[1]
    rows_m = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(n_boot)]) / m
    rows_b = np.stack([np.bincount(rng.integers(0, b, b), minlength=b) for _ in range(n_boot)]) / b
    cols = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)]) / n
    reps = ((rows_m @ trial.method) * cols).sum(1) - ((rows_b @ trial.baseline) * cols).sum(1)
    return float(trial.method.mean() - trial.baseline.mean()), _bootstrap_p(reps)


def _bootstrap_p(reps: np.ndarray) -> float:
    below = (1 + np.sum(reps <= 0)) / (len(reps) + 1)
    above = (1 + np.sum(reps >= 0)) / (len(reps) + 1)
    return float(min(1.0, 2 * min(below, above)))


def hierarchical_bootstrap_p(trial: Trial, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """Selections, then training seeds within each (per arm), then eval groups shared by both
    arms; (delta, two-sided bootstrap p)."""
    w_m = unit_weights(rng, trial.method_selections, n_boot)
    w_b = unit_weights(rng, trial.baseline_selections, n_boot)
    cols = row_weights(rng, trial.groups, n_boot)
    cols /= cols.sum(axis=1, keepdims=True)
    reps = ((w_m @ trial.method) * cols).sum(1) - ((w_b @ trial.baseline) * cols).sum(1)
    delta = _arm_mean(trial.method, trial.method_selections) - _arm_mean(trial.baseline, trial.baseline_selections)
    return delta, _bootstrap_p(reps)


def _arm_mean(values: np.ndarray, selections: np.ndarray) -> float:
    return float(np.mean([values[selections == s].mean() for s in np.unique(selections)]))


def t_p(trial: Trial, randomness: str) -> tuple[float, float]:
    """dsel's engine: Welch's t on replicate means; (delta, p)."""
    ours = replicates(trial.method.mean(axis=1), trial.method_selections, randomness)
    theirs = replicates(trial.baseline.mean(axis=1), trial.baseline_selections, SAMPLED)
    diff = difference(ours, theirs)
    return diff.delta, diff.p_value


ENGINES = ("flat", "hier-boot", "t (dsel)")


def rates(setting: Setting, trials: int, n_boot: int, seed: int) -> dict[str, tuple[float, float]]:
    """Per engine: (share of trials called better, share called worse) at 5%."""
    rng = np.random.default_rng(seed)
    calls = {engine: [0, 0] for engine in ENGINES}
    for _ in range(trials):
        trial = simulate(setting, rng)
        results = {
            "flat": flat_bootstrap_p(trial, n_boot, rng),
            "hier-boot": hierarchical_bootstrap_p(trial, n_boot, rng),
            "t (dsel)": t_p(trial, setting.method_randomness),
        }
        for engine, (delta, p) in results.items():
            if p < 0.05:
                calls[engine][0 if delta < 0 else 1] += 1
    return {engine: (better / trials, worse / trials) for engine, (better, worse) in calls.items()}


NULLS = [
    Setting(sd_sel=0.0, sd_sel_item=0.0),
    Setting(sd_sel=0.02, sd_sel_item=0.02),
    Setting(sd_sel=0.05, sd_sel_item=0.05),
    Setting(sd_sel=0.05, sd_sel_item=0.05, groups=67, rows_per_group=3),
    Setting(sd_sel=0.05, sd_sel_item=0.05, method_selections=2, random_selections=3),
    Setting(sd_sel=0.02, sd_sel_item=0.05, sd_train=0.03, sd_noise=0.5),
    Setting(sd_sel=0.05, sd_sel_item=0.05, method_selections=1, method_randomness="warmup"),
    Setting(sd_sel=0.05, sd_sel_item=0.05, method_selections=1, seeds=3, method_randomness=DETERMINISTIC),
]
POWER = [replace(NULLS[2], shift=-0.05), replace(NULLS[2], shift=-0.1), replace(NULLS[1], shift=-0.05)]


def real_check(home: Path, splits: int, seed: int, method_size: int = 3, baseline_size: int = 5) -> None:
    """Random against random on a real comparison's stored eval losses (see the module docstring)."""
    from dsel_assets.core.stats import comparison_table
    from dsel_assets.pipeline.assets.reporting.reports import comparison_rows

    with state_db.open_state(home / "dsel.duckdb", read_only=True) as db:
        rows = comparison_rows(db, [], ["random"], None).filter(pl.col("method") == "random")
    selection_seeds = sorted(set(rows["selection_seed"].to_list()))
    if len(selection_seeds) < method_size + baseline_size:
        raise SystemExit(f"--real: need {method_size + baseline_size} random selections, found {len(selection_seeds)}")
    rng, boot_rng = np.random.default_rng(seed), np.random.default_rng(seed + 1)  # splits apart from resampling
    calls = {"task rows called better/worse (raw p < 0.05)": 0, "task rows called better/worse (Holm)": 0}
    tests = 0
    flat_calls = 0
    for _ in range(splits):
        order = rng.permutation(selection_seeds)
        ours, theirs = set(order[:method_size].tolist()), set(order[method_size : method_size + baseline_size].tolist())
        frame = rows.filter(pl.col("selection_seed").is_in(list(ours | theirs))).with_columns(
            pl.when(pl.col("selection_seed").is_in(list(ours)))
            .then(pl.lit("random_twin"))
            .otherwise(pl.lit("random"))
            .alias("method")
        )
        table = comparison_table(frame, n_boot=50, seed=seed, randomness={"random_twin": SAMPLED})
        tested = table.filter((pl.col("method") == "random_twin") & (pl.col("task") != "(all tasks)"))
        tested = tested.filter(pl.col("p_value").is_not_null())
        tests += tested.height
        calls["task rows called better/worse (raw p < 0.05)"] += int((tested["p_value"] < 0.05).sum())
        calls["task rows called better/worse (Holm)"] += int(tested["verdict"].is_in(["better", "worse"]).sum())
        for _, group in frame.filter(pl.col("task").is_in(tested["task"].to_list())).group_by("task"):
            trial = _trial(group)
            flat_calls += flat_bootstrap_p(trial, 300, boot_rng)[1] < 0.05
    units = rows.select("selection_seed", "seed").unique().height
    tasks = ", ".join(sorted(set(rows["task"].to_list())))
    print(f"\n# Real check: {home}: {len(selection_seeds)} random selections, {units} models, tasks {tasks}")
    print(f"{splits} splits into {method_size} (pretend method) vs {baseline_size} (random); {tests} task-row tests\n")
    print("| engine | false better/worse |\n|---|---|")
    for name, count in calls.items():
        print(f"| dsel, {name} | {100 * count / max(tests, 1):.1f}% ({count} of {tests}) |")
    print(f"| flat bootstrap (previous engine) | {100 * flat_calls / max(tests, 1):.1f}% ({flat_calls} of {tests}) |")


def _trial(group: pl.DataFrame) -> Trial:
    """One task's real rows as a Trial (units by selection and training seed; the eval rows every
    model has a loss for, as dsel's table uses)."""
    pivot = group.pivot(on="pool_id", index=["method", "selection_seed", "seed"], values="loss")
    losses = pivot.drop("method", "selection_seed", "seed")
    values = losses.select(c for c in losses.columns if losses[c].null_count() == 0).to_numpy()
    is_method = (pivot["method"] == "random_twin").to_numpy()
    selections = pivot["selection_seed"].to_numpy()
    return Trial(values[is_method], selections[is_method], values[~is_method], selections[~is_method], np.arange(0))


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="200 trials, 300 bootstrap replicates")
    parser.add_argument("--real", type=Path, help="state home of a random-only dsel compare (see above)")
    parser.add_argument("--splits", type=int, default=300, help="--real: random splits of the selections")
    args = parser.parse_args()
    if args.real:
        real_check(args.real, args.splits, args.seed)
        return 0
    trials, n_boot = (200, 300) if args.quick else (args.trials, args.n_boot)
    started = time.perf_counter()
    print(f"# Calibration: {trials} trials per setting, {n_boot} bootstrap replicates; {_load()}\n")
    print("Null (the method is one more random selection): share of trials called better / worse at 5%.\n")
    print("| setting | " + " | ".join(ENGINES) + " |")
    print("|---|" + "---|" * len(ENGINES))
    for number, setting in enumerate(NULLS):
        found = rates(setting, trials, n_boot, args.seed + number)
        cells = [f"{100 * (b + w):.1f}% ({100 * b:.1f} / {100 * w:.1f})" for b, w in found.values()]
        print(f"| {setting.label()} | " + " | ".join(cells) + " |", flush=True)
    print("\nPower: a true shift of the method's loss; share of trials called better (should be high).\n")
    print("| setting | shift | " + " | ".join(ENGINES) + " |")
    print("|---|---|" + "---|" * len(ENGINES))
    for number, setting in enumerate(POWER):
        found = rates(setting, trials, n_boot, args.seed + 100 + number)
        cells = [f"{100 * b:.1f}%" for b, _ in found.values()]
        print(f"| {setting.label()} | {setting.shift:g} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n{time.perf_counter() - started:.0f} s; {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

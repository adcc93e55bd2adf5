"""``dsel compare``: which selection method should I fine-tune on for my target? Materializes
what is missing for each method (representations, selections with their seeds, one fine-tune
per training seed, evaluation on the target's eval rows) through the assets, stage by stage
with progress and ETA, then the comparison report with confidence intervals. Every model and
eval is keyed by its inputs, so a rerun after a kill resumes where it stopped."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from dsel_assets.core.select import Budget, build_config, get
from dsel_assets.evaluation import BASE, eval_asset_name
from dsel_assets.finetune import finetuned_asset_name
from dsel_assets.runs import materialize_closure, materialize_only
from dsel_assets.selections import available, seed_replicates, selection_asset_name, typed_params
from dsel_assets.store import queries

METRICS = ("loss", "generation", "both")
BASELINE = "random"


@dataclass(frozen=True)
class ComparePlan:
    """What one ``dsel compare`` asks for (validated before any work)."""

    methods: list[str]
    budgets: list[str]
    targets: list[str]
    seeds: int = 2
    random_seeds: int = 3
    eval_per_task: int = 200
    metric: str = "loss"
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 8
    max_length: int = 512
    eval_max_length: int = 512
    max_new_tokens: int = 128
    include_base: bool = True
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    asset_config: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: name at least one method (see dsel methods)")
        if not self.targets:
            raise ValueError("target: name at least one target task (an eval task label)")
        if self.metric not in METRICS:
            raise ValueError(f"metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        for name in (
            "seeds",
            "random_seeds",
            "epochs",
            "batch_size",
            "max_length",
            "eval_max_length",
            "max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.eval_per_task < 0:
            raise ValueError(f"eval_per_task: must be >= 0 (0 = every eval row), got {self.eval_per_task}")
        for budget in self.budgets:
            Budget.parse(budget)
        unknown = sorted(set(self.params) - set(self.methods))
        if unknown:
            raise ValueError(f"param: {unknown} are not among --methods {self.methods}")

    def method_params(self, method: str) -> dict[str, str]:
        """The method's parameters: targeted methods aim at the target (with several targets,
        those that can serve every query task do; the others aim at the first target), then
        the user's ``--param METHOD.KEY=VALUE`` on top."""
        spec = get(method)
        fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
        params: dict[str, str] = {}
        if "task" in fields:
            serves_all = "''" in fields["task"].metadata.get("help", "")
            params["task"] = self.targets[0] if len(self.targets) == 1 or not serves_all else ""
        params |= self.params.get(method, {})
        build_config(method, params)  # a wrong parameter fails here, before any work
        return params

    def selection_seeds(self, method: str) -> list[int]:
        """Selection replicates: several seeds for the random baseline, one otherwise."""
        return list(range(self.random_seeds)) if method == BASELINE else []

    def run_config(self) -> dict:
        """Run config of every selection, model and eval asset of the comparison."""
        ops: dict[str, dict] = {}
        finetune = {
            "budgets": [Budget.parse(b).label for b in self.budgets],
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "seeds": list(range(self.seeds)),
        }
        evaluate = {
            "tasks": self.targets,
            "max_per_task": self.eval_per_task,
            "max_new_tokens": self.max_new_tokens,
            "max_length": self.eval_max_length,
            "generate": self.metric != "loss",
        }
        for method in self.methods:
            ops[selection_asset_name(method)] = {
                "config": {
                    "budgets": self.budgets,
                    "params": typed_params(method, self.method_params(method)),
                    "seeds": self.selection_seeds(method),
                }
            }
            ops[finetuned_asset_name(method)] = {"config": finetune}
            ops[eval_asset_name(method)] = {"config": evaluate}
        if self.include_base:
            ops[eval_asset_name(BASE)] = {"config": evaluate}
        ops["comparison_report"] = {"config": {"tasks": self.targets, "methods": self.methods}}
        for asset, values in self.asset_config.items():  # e.g. warmup_checkpoint.epochs=1
            ops.setdefault(asset, {"config": {}})["config"].update(values)
        return {"ops": ops}

    def models_per_method(self, method: str) -> int:
        return len(self.budgets) * max(1, len(self.selection_seeds(method))) * self.seeds


def check_plan(plan: ComparePlan, conn) -> list[str]:
    """Problems that stop a comparison before any work, each with what to do."""
    problems = []
    for method in plan.methods:
        spec = get(method)  # unknown name: KeyError with the known ones
        if not available(spec):
            problems.append(f"methods: {method} needs {list(spec.needs)}; not all have an asset yet")
        config = build_config(method, plan.method_params(method))
        if plan.selection_seeds(method):
            seed_replicates(config, plan.selection_seeds(method))
    if BASELINE not in plan.methods:
        problems.append(f"methods: add {BASELINE}: every method is compared with it")
    counts = {f"{split}/{task}": n for (split, task), n in queries.split_task_counts(conn).items()}
    targeted = [m for m in plan.methods if "task" in plan.method_params(m)]
    for target in plan.targets:
        if not counts.get(f"eval/{target}"):
            problems.append(
                f"target: {target!r} has no eval rows; ingest some: dsel ingest FILE --split eval --task {target}"
            )
        if targeted and not counts.get(f"query/{target}"):
            problems.append(
                f"target: {target!r} has no query rows, which {', '.join(targeted)} select for; "
                f"ingest a few: dsel ingest FILE --split query --task {target}"
            )
    if not any(n for key, n in counts.items() if key.startswith("pool/")):
        problems.append("pool: no examples yet; ingest data first: dsel ingest FILE")
    return problems


class Progress:
    """Per-stage and overall progress lines with an ETA from the measured seconds per unit."""

    def __init__(self, plan: ComparePlan, log: Callable[[str], None]) -> None:
        self.log = log
        self.started = time.perf_counter()
        self.units = {
            "fine-tunes": sum(plan.models_per_method(m) for m in plan.methods),
            "evals": sum(plan.models_per_method(m) for m in plan.methods) + int(plan.include_base),
        }
        self.done = dict.fromkeys(self.units, 0)
        self.seconds = dict.fromkeys(self.units, 0.0)

    def advance(self, stage: str, units: int, seconds: float) -> None:
        self.done[stage] += units
        self.seconds[stage] += seconds
        rate = {s: self.seconds[s] / self.done[s] for s in self.units if self.done[s]}
        fallback = max(rate.values(), default=0.0)  # a stage not measured yet: assume the slowest seen
        left = {s: (self.units[s] - self.done[s]) * rate.get(s, fallback) for s in self.units}
        elapsed, total_left = time.perf_counter() - self.started, sum(left.values())
        self.log(
            f"[compare] {stage}: {self.done[stage]}/{self.units[stage]} models, stage ETA {_minutes(left[stage])}; "
            f"overall: {_minutes(elapsed)} elapsed, ETA {_minutes(total_left)}"
        )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_comparison(
    defs: dg.Definitions, instance: dg.DagsterInstance, plan: ComparePlan, log: Callable[[str], None] = print
) -> None:
    """Selections (with what they need), then per method its fine-tunes and evals, then the report."""
    config = plan.run_config()
    progress = Progress(plan, log)
    selections = [dg.AssetKey(selection_asset_name(m)) for m in plan.methods]
    log(f"[compare] stage 1/4: representations and selections of {', '.join(plan.methods)}")
    materialize_closure(defs, instance, selections, config, log=log)
    stages = [("fine-tunes", finetuned_asset_name), ("evals", eval_asset_name)]
    for number, (stage, asset_name) in enumerate(stages, start=2):
        log(f"[compare] stage {number}/4: {stage} ({progress.units[stage]} models; stored ones are reused)")
        methods = [*plan.methods, *([BASE] if stage == "evals" and plan.include_base else [])]
        for method in methods:
            started = time.perf_counter()
            materialize_closure(defs, instance, [dg.AssetKey(asset_name(method))], config, log=log)
            units = 1 if method == BASE else plan.models_per_method(method)
            progress.advance(stage, units, time.perf_counter() - started)
    log("[compare] stage 4/4: comparison report")
    reports = [dg.AssetKey("selection_report"), dg.AssetKey("comparison_report")]
    materialize_only(defs, instance, reports, config, log=log)

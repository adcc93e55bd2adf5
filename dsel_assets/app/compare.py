"""``dsel compare``: which selection method should I fine-tune on for my target? Materializes
what is missing for each method (representations, selections with their seeds, one fine-tune
per training seed, evaluation on the target's eval rows) through the assets, stage by stage
with progress and ETA, then the comparison report with confidence intervals. Every model and
eval is keyed by its inputs, so a rerun after a kill resumes where it stopped."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from dsel_assets.app.runs import materialize_closure, materialize_only
from dsel_assets.core.data.schema import content_hashes
from dsel_assets.core.harness import check_tasks
from dsel_assets.core.select import Budget, build_config, get
from dsel_assets.core.select.base import method_target
from dsel_assets.core.select.registry import has_seed
from dsel_assets.core.select.targeted import LESS
from dsel_assets.core.stats import MIN_GROUPS
from dsel_assets.pipeline.assets.reporting.evaluation import EvalRunConfig, load_eval_set
from dsel_assets.pipeline.assets.representations.gradients import WarmupRunConfig
from dsel_assets.pipeline.assets.selection.selections import seed_replicates, typed_params
from dsel_assets.pipeline.catalog import (
    available,
    entry_key,
    parse_entry,
    randomness_sources,
    selection_randomness,
    warmup_sampled,
)
from dsel_assets.pipeline.names import (
    BASE,
    COMPARISON_REPORT,
    SELECTION_REPORT,
    SELECTIONS,
    eval_asset_name,
    finetuned_asset_name,
    selection_asset_name,
)
from dsel_assets.pipeline.registry import WARMUP

METRICS = ("loss", "generation", "both")
#: the representation of pool rows' task labels: a method that needs only it reads no query rows
TASK_LABELS = "pool_tasks"
BASELINE = "random"
#: More models than this need ``--yes``: a mistyped seed count should not start days of work.
MAX_UNCONFIRMED_MODELS = 1000
#: What the plan says about a selection whose randomness it cannot sample with selection seeds.
NOT_SAMPLED = {
    "warmup": "one warmup checkpoint; --selection-seeds N >= 2 trains one warmup per seed",
    "upstream": "fixed by the seed of {assets}",
}


@dataclass(frozen=True)
class ComparePlan:
    """What one ``dsel compare`` asks for (validated before any work). ``methods``: entries,
    ``METHOD`` or ``METHOD@REPRESENTATION``; ``selection_seed_count``: selections per method whose
    randomness has a seed (seeds 0..N-1) or the LESS warmup (warmup seeds 0..N-1, one warmup each,
    when N >= 2); ``random_seeds``: those of the random baseline (None: the same N); ``params``: per
    method (every entry of it) or per entry (``round_robin@rds``; wins); ``asset_config``: config of
    upstream assets (``warmup_checkpoint``'s ``seed`` is the first warmup seed)."""

    methods: list[str]
    budgets: list[str]
    targets: list[str]
    seeds: int = 2
    random_seeds: int | None = None
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
    selection_seed_count: int = 3
    confirmed: bool = False
    #: the eval sample's version, frozen by ``check_plan``: every eval and the report use that sample
    eval_version: str = ""
    #: lm-evaluation-harness tasks every model is also scored on (installed, or local YAMLs)
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_limit: int = 0

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("methods: name at least one method (see dsel methods)")
        if not self.targets:
            raise ValueError("target: name at least one target task (an eval task label)")
        if self.metric not in METRICS:
            raise ValueError(f"metric: {self.metric!r} is not one of {', '.join(METRICS)}")
        for name in (
            "seeds",
            "selection_seed_count",
            "random_seeds",
            "epochs",
            "batch_size",
            "max_length",
            "eval_max_length",
            "max_new_tokens",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                label = "selection_seeds" if name == "selection_seed_count" else name  # as the CLI spells it
                raise ValueError(f"{label}: must be >= 1, got {value}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be a finite number > 0, got {self.lr}")
        if self.eval_per_task < 0:
            raise ValueError(f"eval_per_task: must be >= 0 (0 = every eval row), got {self.eval_per_task}")
        for budget in self.budgets:
            Budget.parse(budget)
        seen: dict[str, str] = {}
        for entry in self.methods:  # a wrong name or representation: before any work
            key = entry_key(entry)
            if key in seen:
                raise ValueError(f"methods: {seen[key]!r} and {entry!r} are the same selection ({key}); name it once")
            seen[key] = entry
        scopes = {*self.methods, *(parse_entry(e)[0] for e in self.methods)}
        unknown = sorted(set(self.params) - scopes)
        if unknown:
            raise ValueError(f"param: {unknown} are not among --methods {self.methods}")
        for entry in self.methods:
            self.method_params(entry)  # a wrong parameter or value: before any work
        self.warmup_seeds()  # a wrong warmup seed: before any work

    def selection_keys(self) -> list[str]:
        """The selection key of every entry, in order (the ``method`` column of the tables)."""
        return [entry_key(entry) for entry in self.methods]

    def method_params(self, method: str) -> dict[str, str]:
        """The parameters of an entry: targeted methods aim at the target (with several targets,
        those that can serve every query task do; the others aim at the first target), then the
        user's ``--param METHOD.KEY=VALUE`` (every entry of the method), then ``--param
        METHOD@REPRESENTATION.KEY=VALUE`` (that entry), and the entry's representation."""
        name, representation = parse_entry(method)
        spec = get(name)
        target = method_target(spec.config_cls)
        params: dict[str, str] = {}
        if target is not None:
            params["task"] = self.targets[0] if len(self.targets) == 1 or target.required else ""
        params |= self.params.get(name, {})
        if method != name:
            params |= self.params.get(method, {})
        if "representation" in params:
            raise ValueError(
                f"param: {name}.representation: name the representation in the entry instead, "
                f"e.g. --methods {name}@{params['representation']}"
            )
        if representation is not None:
            params["representation"] = representation
        build_config(name, params)  # a wrong parameter fails here, before any work
        return params

    def _config(self, method: str):
        return build_config(parse_entry(method)[0], self.method_params(method))

    def sources(self, method: str) -> dict[str, list[str]]:
        """``selections.randomness_sources`` of an entry under its parameters here."""
        name, representation = parse_entry(method)
        return randomness_sources(get(name), representation or LESS, self._config(method))

    def randomness(self, method: str) -> str:
        """``selections.selection_randomness`` of an entry under its parameters here."""
        name, representation = parse_entry(method)
        return selection_randomness(get(name), representation or LESS, self._config(method))

    def randomness_by_key(self) -> dict[str, str]:
        """Selection key -> its randomness kind, for every entry, as the report will read it: an
        entry whose warmup the comparison samples counts it as sampled (``less`` -> ``seed``)."""
        return {
            entry_key(entry): warmup_sampled(kind) if self.samples_warmup(entry) else kind
            for entry in self.methods
            for kind in [self.randomness(entry)]
        }

    def warmup_seeds(self) -> list[int]:
        """The warmup seeds the comparison trains a warmup for: S..S+N-1 (S: ``--config
        warmup_checkpoint.seed``, default 0; N: ``selection_seed_count``) when N >= 2 and some
        entry's randomness includes the warmup; otherwise none (the current warmup serves)."""
        if self.selection_seed_count < 2 or not any("warmup" in self.sources(e) for e in self.methods):
            return []
        value = self.asset_config.get(WARMUP, {}).get("seed", 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config: {WARMUP}.seed must be an integer, got {value!r}")
        return list(range(value, value + self.selection_seed_count))

    def samples_warmup(self, method: str) -> bool:
        """Whether an entry gets one selection per warmup seed (its randomness includes the warmup)."""
        return bool(self.warmup_seeds()) and "warmup" in self.sources(method)

    def method_seeds(self, method: str) -> list[int]:
        """The method's own seeds: when a seed drives its selection, S..S+N-1 (S: its ``seed``
        parameter, default 0; N: ``random_seeds`` for the baseline, else ``selection_seed_count``);
        otherwise none."""
        if "seed" not in self.sources(method):
            return []
        count = self.random_seeds if method == BASELINE and self.random_seeds is not None else self.selection_seed_count
        first = int(self._config(method).seed)
        return list(range(first, first + count))

    def selection_seeds(self, method: str) -> list[int]:
        """Selection replicates of an entry (their ``selection_seed``): one per warmup seed when the
        comparison samples its warmup (``warmup_seeds``; a ``seed+warmup`` method's replicate i also
        draws with its i-th method seed), else one per method seed (``method_seeds``); otherwise none
        (one selection; nothing a seed could sample)."""
        return self.warmup_seeds() if self.samples_warmup(method) else self.method_seeds(method)

    def selection_config(self, method: str, warmup_seed: int | None = None) -> dict:
        """Run config of an entry's selection asset; for an entry whose warmup is sampled, the
        replicate of ``warmup_seed`` (default: the first warmup seed)."""
        name = parse_entry(method)[0]
        config = {
            "budgets": self.budgets,
            "params": typed_params(name, self.method_params(method)),
            "seeds": self.method_seeds(method),
        }
        if self.samples_warmup(method):
            warmups = self.warmup_seeds()
            seed = warmups[0] if warmup_seed is None else warmup_seed
            if seed not in warmups:
                raise ValueError(f"warmup_seed: {seed} is not one of the warmup seeds {warmups}")
            own = self.method_seeds(method)
            config |= {
                "seeds": [own[warmups.index(seed)]] if own else [],
                "warmup_seed": seed,
                "warmup_replicates": warmups,
            }
        return config

    def warmup_cost(self) -> str | None:
        """One line on what the warmup seeds cost (None when there are none)."""
        seeds = self.warmup_seeds()
        if not seeds:
            return None
        settings = WarmupRunConfig(**self.asset_config.get(WARMUP, {}))
        users = [entry for entry in self.methods if self.samples_warmup(entry)]
        return (
            f"warmup seeds {seeds[0]}-{seeds[-1]}: {len(seeds)} warmups ({len(seeds) - 1} more than without warmup "
            f"replicates), each a LoRA warmup fine-tune on {settings.fraction:.0%} of the pool ({settings.epochs} "
            f"epoch(s)) and the gradient features of the whole pool and the query sets at each of its "
            f"{settings.epochs} checkpoint(s) - the expensive part - then its influence and LESS scores; shared by "
            f"{', '.join(users)}; warmups and features already stored are reused"
        )

    def sampling(self, method: str) -> str:
        """One line on what the selection replicates of an entry sample and what they do not."""
        name = parse_entry(method)[0]
        sources = self.sources(method)
        seeds = self.selection_seeds(method)
        sampled = {"seed", *(["warmup"] if self.samples_warmup(method) else [])}
        if self.samples_warmup(method):
            own = self.method_seeds(method)
            if own:
                said = (
                    f"{len(seeds)} selections (seeds {own[0]}-{own[-1]} with warmup seeds {seeds[0]}-{seeds[-1]}) "
                    "sample its seed and warmup"
                )
            else:
                said = f"{len(seeds)} selections (warmup seeds {seeds[0]}-{seeds[-1]}) sample its warmup"
        elif len(seeds) > 1:
            said = f"{len(seeds)} selections (seeds {seeds[0]}-{seeds[-1]}) sample its seed"
        elif seeds:
            said = f"1 selection (seed {seeds[0]}): its seed is not sampled"
        else:
            said = "1 selection"
        unsampled = [
            f"{source} ({NOT_SAMPLED[source].format(assets=', '.join(assets))})"
            for source, assets in sources.items()
            if source not in sampled
        ]
        if unsampled:
            said += "; selection variance not sampled: " + ", ".join(unsampled)
        elif not sources:
            unused = " (its seed is unused with these parameters)" if has_seed(get(name)) else ""
            said += f"; deterministic given its inputs{unused}: no selection variance to sample"
        return f"{method}: {said}"

    def run_config(self, warmup_seed: int | None = None) -> dict:
        """Run config of every selection, model and eval asset of the comparison; with warmup seeds,
        of the warmup and the warmup-sampled selections of ``warmup_seed`` (default: the first)."""
        ops: dict[str, dict] = {}
        finetune = {
            "budgets": [Budget.parse(b).label for b in self.budgets],
            "epochs": self.epochs,
            "lr": self.lr,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "seeds": list(range(self.seeds)),
        }
        evaluate = {**self.eval_settings(), "eval_version": self.eval_version}
        for entry in self.methods:
            key = entry_key(entry)
            ops[selection_asset_name(key)] = {"config": self.selection_config(entry, warmup_seed)}
            ops[finetuned_asset_name(key)] = {"config": finetune}
            ops[eval_asset_name(key)] = {"config": evaluate}
        if self.include_base:
            ops[eval_asset_name(BASE)] = {"config": evaluate}
        report = {
            "tasks": [*self.targets, *self.lm_eval_tasks],
            "methods": self.selection_keys(),
            "eval_version": self.eval_version,
        }
        ops["comparison_report"] = {"config": report}
        for asset, values in self.asset_config.items():  # e.g. warmup_checkpoint.epochs=1
            ops.setdefault(asset, {"config": {}})["config"].update(values)
        warmups = self.warmup_seeds()
        if warmups:  # this replicate's warmup; the user's other warmup settings stay
            seed = warmups[0] if warmup_seed is None else warmup_seed
            ops.setdefault(WARMUP, {"config": {}})["config"]["seed"] = seed
        return {"ops": ops}

    def eval_settings(self) -> dict:
        """The eval assets' config (without the frozen version)."""
        return {
            "tasks": self.targets,
            "max_per_task": self.eval_per_task,
            "max_new_tokens": self.max_new_tokens,
            "max_length": self.eval_max_length,
            "generate": self.metric != "loss",
            "lm_eval_tasks": self.lm_eval_tasks,
            "lm_eval_limit": self.lm_eval_limit,
        }

    def models_per_method(self, method: str) -> int:
        """Models an entry trains: budgets x selections x training seeds."""
        return len(self.budgets) * max(1, len(self.selection_seeds(method))) * self.seeds


def check_plan(
    plan: ComparePlan, db, warn: Callable[[str], None] | None = None, harness_folder: Path | None = None
) -> tuple[list[str], ComparePlan]:
    """Problems that stop a comparison before any work, each with what to do, and the plan with
    its eval set frozen (its sample's version: every eval and the report use that sample, and an
    eval set that changes during the comparison is refused rather than silently intersected).
    ``warn`` hears what only weakens it (fewer eval rows than a verdict needs); ``harness_folder``
    holds the local lm-eval task YAMLs."""
    problems = []
    if plan.lm_eval_tasks:
        try:
            check_tasks(plan.lm_eval_tasks, harness_folder)
        except ValueError as exc:  # unknown tasks, or lm-eval not installed
            problems.append(str(exc))
        clash = sorted(set(plan.lm_eval_tasks) & set(plan.targets))
        if clash:
            problems.append(f"lm_eval_tasks: {clash} are also eval-set targets; rename the lm-eval task")
    models = sum(plan.models_per_method(m) for m in plan.methods)
    if models > MAX_UNCONFIRMED_MODELS and not plan.confirmed:
        problems.append(
            f"plan: {models} fine-tunes (budgets x selections x training seeds per method); "
            f"more than {MAX_UNCONFIRMED_MODELS} need --yes"
        )
    for method in plan.methods:
        name, representation = parse_entry(method)
        spec = get(name)
        if not available(spec, representation):
            problems.append(f"methods: {method} needs {list(spec.needs)}; not all have an asset yet")
        config = build_config(name, plan.method_params(method))
        if plan.method_seeds(method):
            seed_replicates(config, plan.method_seeds(method))
    if BASELINE not in plan.selection_keys():
        problems.append(f"methods: add {BASELINE}: every method is compared with it")
    counts = {f"{split}/{task}": n for (split, task), n in db.split_task_counts().items()}
    aimed = [m for m in plan.methods if "task" in plan.method_params(m)]
    by_label = [m for m in aimed if set(get(parse_entry(m)[0]).needs) <= {TASK_LABELS}]  # no query rows read
    targeted = [m for m in aimed if m not in by_label]
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
        if by_label and target == plan.targets[0] and not counts.get(f"pool/{target}"):
            pool_tasks = sorted(key.split("/", 1)[1] for key, n in counts.items() if key.startswith("pool/") and n)
            problems.append(
                f"target: {target!r} labels no pool rows, which {', '.join(by_label)} sample from; "
                f"pool task labels: {pool_tasks}"
            )
    pool_rows = sum(n for key, n in counts.items() if key.startswith("pool/"))
    if not pool_rows:
        problems.append("pool: no examples yet; ingest data first: dsel ingest FILE")
    for budget in plan.budgets:
        if pool_rows and Budget.parse(budget).count(pool_rows) < 1:
            problems.append(f"budget: {budget} of {pool_rows} pool rows selects no example; ask for at least 1")
    tasks = {key.split("/", 1)[1] for key, n in counts.items() if n and key.startswith(("query/", "pool/"))}
    for method in plan.methods:  # a task the user named (targets are checked above)
        task = {**plan.params.get(parse_entry(method)[0], {}), **plan.params.get(method, {})}.get("task")
        if task and task not in tasks:
            problems.append(f"param: {method}.task={task!r} is not a task of the pool or query rows: {sorted(tasks)}")
    if all(counts.get(f"eval/{target}") for target in plan.targets):
        sample = _eval_sample(plan, db)  # read once: it hashes every pool prompt (decontamination)
        problems += _eval_rows_problems(plan, sample, warn)
        plan = dataclasses.replace(plan, eval_version=sample[1])
    return problems, plan


def _eval_sample(plan: ComparePlan, db):
    """The eval sample every eval asset of the plan computes: (examples, version, left out)."""
    settings = {k: v for k, v in plan.eval_settings().items() if k != "tasks"}
    return load_eval_set(db, plan.targets, EvalRunConfig(**settings).to_core())


def _eval_rows_problems(plan: ComparePlan, eval_set: tuple, warn: Callable[[str], None] | None) -> list[str]:
    """Eval rows left per target after decontamination (a prompt also in the pool or a query
    set is left out): none is a problem, fewer groups than a verdict needs a warning."""
    sample, _, contaminated = eval_set
    problems = []
    for target in plan.targets:
        rows = [e for e in sample if e.task == target]
        if not rows:
            problems.append(
                f"target: every eval row of {target!r} shares its prompt with a pool or query row "
                f"({contaminated} left out in all); ingest eval rows the pool does not contain"
            )
        groups = len({content_hashes(e.messages)[1] for e in rows})  # a prompt's references count once
        if rows and groups < MIN_GROUPS and warn is not None:
            warn(f"[compare] target {target!r}: {groups} eval groups, fewer than the {MIN_GROUPS} a verdict needs")
    return problems


#: What each progress stage counts.
UNIT_NAMES = {"warmups": "warmup seeds", "fine-tunes": "models", "evals": "models"}


class Progress:
    """Per-stage and overall progress lines with an ETA from the measured seconds per unit: the
    warmup seeds (each a warmup fine-tune, the pool's gradient features and the selections on
    them), the fine-tunes and the evals."""

    def __init__(self, plan: ComparePlan, log: Callable[[str], None]) -> None:
        self.log = log
        self.started = time.perf_counter()
        self.units = {
            **({"warmups": len(plan.warmup_seeds())} if plan.warmup_seeds() else {}),
            "fine-tunes": sum(plan.models_per_method(m) for m in plan.methods),
            "evals": sum(plan.models_per_method(m) for m in plan.methods) + int(plan.include_base),
        }
        self.done = dict.fromkeys(self.units, 0)
        self.seconds = dict.fromkeys(self.units, 0.0)

    def advance(self, stage: str, units: int, seconds: float) -> None:
        self.done[stage] += units
        self.seconds[stage] += seconds
        rate = {s: self.seconds[s] / self.done[s] for s in self.units if self.done[s]}
        left: dict[str, float] = {}
        for s in self.units:
            # a stage not measured yet: the slowest seen of the same unit (a model; a warmup seed costs more)
            same = [r for o, r in rate.items() if UNIT_NAMES[o] == UNIT_NAMES[s]]
            if s in rate or same:
                left[s] = (self.units[s] - self.done[s]) * rate.get(s, max(same, default=0.0))
        unknown = [s for s in self.units if s not in left and self.done[s] < self.units[s]]
        elapsed, total_left = time.perf_counter() - self.started, sum(left.values())
        self.log(
            f"[compare] {stage}: {self.done[stage]}/{self.units[stage]} {UNIT_NAMES[stage]}, "
            f"stage ETA {_minutes(left[stage])}; overall: {_minutes(elapsed)} elapsed, ETA {_minutes(total_left)}"
            + (f" + the {' and '.join(unknown)} (not measured yet)" if unknown else "")
        )


def warmup_targets(defs: dg.Definitions, selections: list[dg.AssetKey]) -> list[dg.AssetKey]:
    """What one warmup seed materializes for ``selections`` (those whose warmup a comparison
    samples): the warmup, every asset between it and them (pool and query gradient features,
    influence; each reuses what its warmup already stored), and the selections. Targets always run
    in ``materialize_closure``, whereas upstream assets already materialized would be skipped."""
    if not selections:
        return []
    graph = defs.resolve_asset_graph()
    between = dg.AssetSelection.assets(*selections).upstream() & dg.AssetSelection.assets(WARMUP).downstream()
    return [key for key in graph.toposorted_asset_keys if key in between.resolve(graph)]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_comparison(
    defs: dg.Definitions, instance: dg.DagsterInstance, plan: ComparePlan, log: Callable[[str], None] = print
) -> None:
    """Selections (with what they need; per warmup seed the warmup, its gradient assets and the
    selections on them), then per method its fine-tunes and evals, then the report."""
    config = plan.run_config()
    progress = Progress(plan, log)
    for method in plan.methods:  # what the selection replicates sample, and what they cannot
        log(f"[compare] {plan.sampling(method)}")
    if plan.warmup_cost():
        log(f"[compare] {plan.warmup_cost()}")
    selections = [dg.AssetKey(selection_asset_name(key)) for key in plan.selection_keys()]
    log(f"[compare] stage 1/4: representations and selections of {', '.join(plan.methods)}")
    warmups = plan.warmup_seeds()
    on_warmup = [dg.AssetKey(selection_asset_name(entry_key(e))) for e in plan.methods if plan.samples_warmup(e)]
    targets = warmup_targets(defs, on_warmup)
    # the first (configured) warmup seed last: it stays the current warmup, with its influence and
    # LESS scores, for what runs next (a later dsel select --method less reads it)
    for number, seed in enumerate([*warmups[1:], *warmups[:1]], start=1):
        log(
            f"[compare] warmup seed {seed} ({number}/{len(warmups)}): warmup, gradient features, influence and the "
            f"selections of {', '.join(e for e in plan.methods if plan.samples_warmup(e))}"
        )
        started = time.perf_counter()
        materialize_closure(defs, instance, targets, plan.run_config(warmup_seed=seed), log=log)
        progress.advance("warmups", 1, time.perf_counter() - started)
    rest = [key for key in selections if key not in on_warmup]
    # and what the reports read besides the selections (sentence embeddings of a batch ingested
    # without --embed), so stage 4 cannot fail after every fine-tune
    graph = defs.resolve_asset_graph()
    report_inputs = {
        key for key in graph.get(dg.AssetKey(SELECTION_REPORT)).parent_keys if graph.get(key).group_name != SELECTIONS
    }
    materialize_closure(defs, instance, rest, config, log=log, needs=report_inputs)
    stages = [("fine-tunes", finetuned_asset_name), ("evals", eval_asset_name)]
    for number, (stage, asset_name) in enumerate(stages, start=2):
        log(f"[compare] stage {number}/4: {stage} ({progress.units[stage]} models; stored ones are reused)")
        entries = [*plan.methods, *([BASE] if stage == "evals" and plan.include_base else [])]
        for entry in entries:
            started = time.perf_counter()
            key = BASE if entry == BASE else entry_key(entry)
            materialize_closure(defs, instance, [dg.AssetKey(asset_name(key))], config, log=log)
            units = 1 if entry == BASE else plan.models_per_method(entry)
            progress.advance(stage, units, time.perf_counter() - started)
    log("[compare] stage 4/4: comparison report")
    reports = [dg.AssetKey(SELECTION_REPORT), dg.AssetKey(COMPARISON_REPORT)]
    materialize_only(defs, instance, reports, config, log=log)

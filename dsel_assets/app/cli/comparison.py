"""``dsel run``, ``dsel compare`` and ``dsel report``: the default job on synthetic data, and the
comparison of methods by fine-tuning and evaluation."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from dsel_assets.app.cli.common import (
    CHANGE_HELP,
    MODEL_HELP,
    PROJECTION_HELP,
    definitions_for,
    format_table,
    model_options,
    open_home,
    positive_int,
    register_file,
    scoped_params,
    to_stderr,
)
from dsel_assets.core.models.projection import PROJECTIONS
from resources import store as state_db
from resources.home import DselHome


def selection_run_config(budgets: list[str], target: str, in_job: set[str]) -> dict:
    """Run config of the job's selection assets: the budgets, and the target of targeted methods."""
    import dataclasses

    from dsel_assets.core.select import methods
    from dsel_assets.pipeline.catalog import available
    from dsel_assets.pipeline.names import selection_asset_name

    config = {}
    for name, spec in methods().items():
        if available(spec) and selection_asset_name(name) in in_job:
            fields = {f.name for f in dataclasses.fields(spec.config_cls)}
            params = {"task": target} if "task" in fields else {}
            config[selection_asset_name(name)] = {"config": {"budgets": budgets, "params": params}}
    return config


def comparison_run_config(in_job: set[str], epochs: int, eval_per_task: int) -> dict:
    """Short fine-tuning and evaluation settings for the job's model and eval assets (the
    default run; longer settings are the same config with other values)."""
    finetune = {"epochs": epochs, "max_length": 256, "lr": 1e-3, "batch_size": 8}
    evaluate = {"max_per_task": eval_per_task, "max_new_tokens": 32, "max_length": 256, "batch_size": 48}
    config = {name: {"config": finetune} for name in in_job if name.startswith("finetuned_")}
    return config | {name: {"config": evaluate} for name in in_job if name.startswith("eval_")}


def print_comparison(home: DselHome, full: bool = True) -> int:
    """Print the comparison report: the summary lines, then (``full``) per method, budget and task
    the mean with its 95% CI, the difference to random with its CI, raw and Holm p-values, and the
    verdict."""
    from dsel_assets.core.stats import format_verdict_cell
    from dsel_assets.pipeline.names import COMPARISON_REPORT
    from dsel_assets.pipeline.report_html import summary_lines

    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        columns = db.columns(COMPARISON_REPORT)
        if "verdict" not in columns:
            print("[dsel] no comparison report yet: run `dsel compare` or `dsel run`", file=sys.stderr)
            return 1
        if "baseline" not in columns:
            print(
                "[dsel] the stored comparison report predates the current statistics; rebuild it: "
                "dsel compare with the same arguments (stored models and evals are reused)",
                file=sys.stderr,
            )
            return 1
        table = db.report(COMPARISON_REPORT)
    rows = [
        (
            r["method"],
            r["budget"],
            r["train_size"],
            r["task"],
            r["measure"],
            r["models"],
            r["selection_variance"],
            f"{r['examples']} ({r['eval_groups']})",
            "-" if r["mean"] is None else f"{r['mean']:.4g} [{r['ci_low']:.4g}, {r['ci_high']:.4g}]",
            r["baseline"] or "-",
            format_verdict_cell(r),
        )
        for r in table.iter_rows(named=True)
    ]
    header = ["method", "budget", "n", "task", "measure", "models", "selection variance", "eval rows (groups)"]
    if "model" in columns and table.height:
        print(f"model: {table['model'][0]}; eval sample {table['eval_version'][0]}")
    print("summary (loss):")
    for line in summary_lines(table):
        print(f"  {line}")
    if not full:
        print(f"full table ({len(rows)} rows): dsel report")
        return 0
    print(
        "\nmean [95% CI]: hierarchical bootstrap (selections, training seeds, eval groups); difference to the "
        "baseline in 'vs': [95% t interval], p and Holm-adjusted p (verdicts use the Holm p; docs/STATISTICS.md)"
    )
    print(format_table([*header, "mean [95% CI]", "vs", "difference"], rows))
    print(f"\nreport: {home.artifacts.uri('reports/comparison_report.html')} (plots: comparison_*.png beside it)")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    return print_comparison(open_home(args))


#: ``dsel run``'s budgets when none is given
DEFAULT_RUN_BUDGETS = ["5%", "10%"]


#: ``dsel run``'s gradient dimension on a new state home (short default run; others pin 8192).
SHORT_GRAD_DIM = 1024


def cmd_run(args: argparse.Namespace) -> int:
    """Generate the synthetic default, ingest it, embed, select, report."""
    import dagster as dg

    from dsel_assets.app import output
    from dsel_assets.app.runs import run_batches
    from dsel_assets.core.data.synthetic import generate
    from dsel_assets.pipeline.names import COMPARISON_REPORT, SELECTION_REPORT, WARMUP
    from dsel_assets.pipeline.progress import stage_of

    started = time.perf_counter()
    home = open_home(args)
    data_dir = home.confine(f"data/synthetic-seed{args.seed}")
    paths = generate(seed=args.seed, per_capability=args.per_capability).write(data_dir)
    splits = {"queries": "query", "eval": "eval", "pool": "pool"}
    batches = {
        name: register_file(home, path, source=f"synthetic_{name}", task="auto", split=splits[name])[0]
        for name, path in paths.items()
    }
    defs = definitions_for(home, args, first_use={"grad_dim": SHORT_GRAD_DIM})
    steps: dict[str, float] = {}
    if run_batches(defs, [batches["queries"], batches["eval"]], "batch_job", step_seconds=steps):
        return 1
    job = defs.resolve_job_def("default_job")
    job_nodes = {node.name for node in job.graph.nodes}
    run_config = {"ops": selection_run_config(args.budgets or DEFAULT_RUN_BUDGETS, args.target, job_nodes)}
    run_config["ops"][WARMUP] = {"config": {"epochs": args.warmup_epochs, "max_length": 256}}
    run_config["ops"] |= comparison_run_config(job_nodes, args.finetune_epochs, args.eval_per_task)
    # the selections first (their table is printed as soon as they exist), then the closed loop
    keys = set(job.asset_layer.executable_asset_keys)
    loop = {k for k in keys if stage_of(k.to_user_string()) in ("fine-tuning", "evaluation")}
    loop |= {dg.AssetKey(COMPARISON_REPORT)} & keys
    selections = sorted(keys - loop, key=dg.AssetKey.to_user_string)
    if run_batches(defs, [batches["pool"]], "default_job", run_config, selections, steps):
        return 1
    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        report = db.report(SELECTION_REPORT)
    full = output.verbosity() >= output.VERBOSE  # a newcomer's run fits a screen; -v prints every table
    if full:
        print("\n" + format_table(report.columns, report.rows()), flush=True)
    else:
        where = home.artifacts.uri("reports/selection_report.md")
        print(f"[dsel] {report.height} selections ({report['method'].n_unique()} methods x budgets): {where}")
    output.progress(f"[dsel] selections done in {time.perf_counter() - started:.0f}s; fine-tuning and evaluating ...")
    if run_batches(defs, [batches["pool"]], "default_job", run_config, sorted(loop, key=str), steps):
        return 1
    print()
    print_comparison(home, full=full)
    total = time.perf_counter() - started
    stages: dict[str, float] = {}
    for step, seconds in steps.items():
        stages[stage_of(step)] = stages.get(stage_of(step), 0.0) + seconds
    stages["other (setup, data, scheduling)"] = total - sum(stages.values())
    print("\n" + format_table(["stage", "seconds"], [(k, f"{v:.0f}") for k, v in stages.items()]))
    print(f"\n[dsel] default job done in {total:.0f}s; state in {home.root}")
    output.progress("[dsel] browse it: dsel ui   (Dagster UI with every materialization and its metadata)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Fine-tune on each method's selection with several seeds, evaluate on the targets, and
    report every method against random with confidence intervals."""
    from dagster import DagsterInstance

    from dsel_assets.app.compare import ComparePlan, check_plan, parse_entry, run_comparison
    from dsel_assets.pipeline.assets.representations.similarity import check_rds_pooling

    plan = ComparePlan(
        methods=list(dict.fromkeys(args.methods)),
        budgets=args.budget or ["5%"],
        targets=list(dict.fromkeys(args.target)),
        seeds=args.seeds,
        selection_seed_count=args.selection_seeds,
        random_seeds=args.random_seeds,
        eval_per_task=args.eval_per_task,
        metric=args.metric,
        epochs=args.epochs,
        lr=args.lr,
        max_length=args.max_length,
        eval_max_length=args.eval_max_length,
        max_new_tokens=args.max_new_tokens,
        include_base=not args.no_base,
        lm_eval_tasks=list(dict.fromkeys(args.lm_eval_task or [])),
        lm_eval_limit=args.lm_eval_limit,
        params=scoped_params(args.param, "param"),
        asset_config=scoped_params(args.config, "config"),
        confirmed=args.yes,
    )
    home = open_home(args)
    with state_db.open_state(home.duckdb, log=to_stderr) as db:
        db.ensure_schema()
        problems, plan = check_plan(plan, db, warn=to_stderr, harness_folder=home.lm_eval_tasks)
    if problems:
        for problem in problems:
            print(f"dsel: error: {problem}", file=sys.stderr)
        return 2
    defs = definitions_for(home, args)
    if any(parse_entry(entry)[1] == "rds" for entry in plan.methods):  # before the pool is embedded otherwise
        check_rds_pooling(defs.resources["model_embedding_settings"])
    run_comparison(defs, DagsterInstance.get(), plan, log=to_stderr)
    return print_comparison(home)


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add this group's subcommands through ``command(name, help=...)``."""
    run = command("run", help="run the default job on the embedded synthetic pool")
    run.add_argument("--model", default=None, help=MODEL_HELP)
    model_options(run)
    run.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    run.add_argument("--per-capability", type=positive_int, default=100, help="pool examples per capability")
    run.add_argument(
        "--budget",
        "--budgets",
        dest="budgets",
        nargs="+",
        action="extend",
        help="budget: 5%%, 0.05 or 500 (repeatable, or several after one flag; default 5%% 10%%)",
    )
    run.add_argument(
        "--grad-dim",
        type=positive_int,
        default=None,
        help="gradient feature dimension d (default: the home's, else 1024 here)",
    )
    run.add_argument(
        "--warmup-epochs", type=positive_int, default=1, help="warmup epochs (one checkpoint each; 1 here)"
    )
    run.add_argument("--target", default="arithmetic", help="target task of the targeted methods (LESS)")
    run.add_argument("--finetune-epochs", type=positive_int, default=2, help="epochs of each selection's fine-tune")
    run.add_argument("--eval-per-task", type=int, default=6, help="eval examples per task (0 = all)")
    run.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    run.set_defaults(func=cmd_run)

    report = command("report", help="print the comparison report (eval scores per method, budget, task)")
    report.set_defaults(func=cmd_report)

    compare = command("compare", help="fine-tune and evaluate methods on the ingested data; table with CIs vs random")
    compare.add_argument(
        "--methods",
        nargs="+",
        required=True,
        metavar="METHOD[@REPR]",
        help="methods to compare (random is the baseline); a targeted method at another representation is its own "
        "entry: round_robin@rds, knn_kde@embed (less, rds or embed; plain = less)",
    )
    compare.add_argument("--budget", action="append", help="budget: 5%%, 0.05 or 500 (repeatable; default 5%%)")
    compare.add_argument("--target", action="append", required=True, help="target task: eval task label (repeatable)")
    compare.add_argument("--seeds", type=positive_int, default=2, help="training seeds per selection (default 2)")
    compare.add_argument(
        "--selection-seeds",
        type=positive_int,
        default=3,
        metavar="N",
        help="selections per method whose randomness has a seed (seeds 0..N-1, each its own replicate; default 3); "
        "methods on LESS warmup gradients get one per warmup seed 0..N-1 (N >= 2: N warmups, each with the pool's "
        "gradient features); methods on upstream seeds get one, reported as not sampled; deterministic ones one",
    )
    compare.add_argument(
        "--random-seeds",
        type=positive_int,
        default=None,
        metavar="N",
        help="selection seeds of random (default: --selection-seeds)",
    )
    compare.add_argument("--eval-per-task", type=int, default=200, help="eval examples per target (0 = all)")
    compare.add_argument("--metric", choices=["loss", "generation", "both"], default="loss", help="what to score")
    compare.add_argument(
        "--lm-eval-task",
        action="append",
        help="also score every model on this lm-evaluation-harness task (repeatable; installed, or a YAML in "
        "<home>/lm_eval_tasks; needs pip install 'dsel[lm-eval]')",
    )
    compare.add_argument("--lm-eval-limit", type=int, default=0, help="documents per lm-eval task (default 0: all)")
    compare.add_argument("--epochs", type=positive_int, default=2, help="fine-tuning epochs (default 2)")
    compare.add_argument("--lr", type=float, default=1e-3, help="fine-tuning peak learning rate (LoRA)")
    compare.add_argument("--max-length", type=positive_int, default=512, help="tokens per training example")
    compare.add_argument(
        "--eval-max-length", type=positive_int, default=512, help="tokens per eval example (prompt + reference)"
    )
    compare.add_argument(
        "--max-new-tokens", type=positive_int, default=128, help="generation cap (--metric generation)"
    )
    compare.add_argument("--no-base", action="store_true", help="skip the untouched model's evaluation")
    compare.add_argument(
        "--param",
        action="append",
        help="method parameter METHOD.KEY=VALUE (every entry of the method) or METHOD@REPR.KEY=VALUE (that entry; "
        "wins), e.g. round_robin@rds.task=code (repeatable)",
    )
    compare.add_argument(
        "--config", action="append", help="asset config ASSET.KEY=VALUE, e.g. warmup_checkpoint.epochs=1"
    )
    compare.add_argument("--model", default=None, help=MODEL_HELP)
    model_options(compare)
    compare.add_argument("--grad-dim", type=positive_int, default=None, help="gradient feature dimension d")
    compare.add_argument("--projection", choices=PROJECTIONS, default=None, help=PROJECTION_HELP)
    compare.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    compare.add_argument("--yes", action="store_true", help="start even when the plan trains more than 1,000 models")
    compare.set_defaults(func=cmd_compare)

"""``dsel``: run the default pipeline, ingest files, inspect state, list methods, open the UI."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from dsel_assets.core.models.projection import PROJECTIONS
from resources.home import DselHome
from resources.settings import MODEL_SETTINGS, RUNTIME_ENVIRONMENT


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain aligned text table."""

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out)


def _home(args: argparse.Namespace) -> DselHome:
    if args.home:
        os.environ["DSEL_HOME"] = str(Path(args.home).resolve())
    home = DselHome.from_env().ensure()
    home.use_as_dagster_home()
    return home


def _definitions(
    home: DselHome, args: argparse.Namespace, pin: bool | Collection[str] = True, first_use: dict | None = None
):
    """The code location for this command. Representation settings come from the state home
    (a conflicting ``--model`` / ``--grad-dim`` / ``--pooling`` is an error unless
    ``--change-settings``); ``pin`` names the settings the command computes with, stored on
    first use (read-only commands pin nothing)."""
    return _definitions_maker(home, args, pin, first_use)()


def _definitions_maker(
    home: DselHome, args: argparse.Namespace, pin: bool | Collection[str] = True, first_use: dict | None = None
):
    """What :func:`_definitions` builds, as a picklable maker (worker processes build their own)."""
    import functools

    from dsel_assets.core.models.loading import check_model_options, pick_device, resolve
    from dsel_assets.pipeline.code_location import build_definitions
    from resources.settings import runtime_options

    for requested in (
        getattr(args, "model", None) or os.environ.get("DSEL_MODEL"),
        getattr(args, "proxy_model", None) or os.environ.get("DSEL_PROXY_MODEL"),
    ):
        if requested:
            resolve(requested)  # a mistyped name fails here, before anything is stored or pinned
    runtime = runtime_options({name: getattr(args, name, None) for name in RUNTIME_ENVIRONMENT})
    check_model_options(  # what this machine cannot run fails before anything is pinned
        pick_device(getattr(args, "device", None) or os.environ.get("DSEL_DEVICE", "auto")),
        getattr(args, "dtype", None) or os.environ.get("DSEL_DTYPE") or "auto",
        runtime.get("attention", "sdpa"),
        getattr(args, "load_in", None) or os.environ.get("DSEL_LOAD_IN") or "none",
    )
    _announce_changed_settings(home, args)
    return functools.partial(
        build_definitions,
        home,
        model=getattr(args, "model", None),
        device=getattr(args, "device", None),
        runtime=runtime,
        dtype=getattr(args, "dtype", None),
        load_in=getattr(args, "load_in", None),
        grad_dim=getattr(args, "grad_dim", None),
        projection=getattr(args, "projection", None),
        pooling=getattr(args, "pooling", None),
        proxy_model=getattr(args, "proxy_model", None),
        first_use=first_use,
        change_settings=getattr(args, "change_settings", False),
        strict=True,
        pin=pin,
    )


def _settled(make):
    """``make`` for a worker process: the settings are pinned (or changed) by this command already."""
    import functools

    return functools.partial(make.func, *make.args, **{**make.keywords, "pin": False, "change_settings": False})


def _announce_changed_settings(home: DselHome, args: argparse.Namespace) -> None:
    """Say which settings this command switches (``--change-settings``), before any work; what
    depends on them is stale from then on (their code versions include them)."""
    from resources.settings import FLAGS, resolve_settings

    requested = {name: getattr(args, name, None) for name in FLAGS}
    _, changed = resolve_settings(home, requested, change=getattr(args, "change_settings", False), pin=False)
    if changed:
        print(
            f"[dsel] changing {', '.join(changed)}: what was computed with it is stale; "
            "commands recompute it for the whole pool"
        )


def _register(home: DselHome, path: Path, **labels) -> tuple[str, bool]:
    from dsel_assets.store import tables

    with tables.open_state(home.duckdb, log=_stderr) as conn:
        manifest, created = tables.register_batch(conn, path, home.raw, **labels)
        validated = tables.is_validated(conn, manifest.batch)
    return manifest.batch, created or not validated


def _stderr(message: str) -> None:
    from dsel_assets.app import output

    output.progress(message, sys.stderr)


def _print_ingest_summary(home: DselHome, batches: list[str]) -> None:
    from dsel_assets.store import queries, tables

    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        rows = []
        for batch in batches:
            accepted, reasons, error = queries.batch_counts(conn, batch)
            quarantined = sum(n for _, n in reasons)
            detail = ", ".join(f"{r}={n}" for r, n in reasons) or "-"
            rows.append((batch, accepted + quarantined, accepted, quarantined, f"FAILED: {error}" if error else detail))
    print(format_table(["batch", "read", "accepted", "quarantined", "reasons"], rows))


def selection_run_config(budgets: list[str], target: str, in_job: set[str]) -> dict:
    """Run config of the job's selection assets: the budgets, and the target of targeted methods."""
    import dataclasses

    from dsel_assets.core.select import methods
    from dsel_assets.pipeline.assets.selection.selections import available

    config = {}
    for name, spec in methods().items():
        if available(spec) and f"selection_{name}" in in_job:
            fields = {f.name for f in dataclasses.fields(spec.config_cls)}
            params = {"task": target} if "task" in fields else {}
            config[f"selection_{name}"] = {"config": {"budgets": budgets, "params": params}}
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
    from dsel_assets.pipeline.assets.reporting.report_html import summary_lines
    from dsel_assets.store import queries, schema, tables

    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        columns = schema.columns(conn, "comparison_report")
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
        table = queries.report(conn, "comparison_report")
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
    return print_comparison(_home(args))


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
    from dsel_assets.pipeline.progress import stage_of
    from dsel_assets.store import queries, tables

    started = time.perf_counter()
    home = _home(args)
    data_dir = home.confine(f"data/synthetic-seed{args.seed}")
    paths = generate(seed=args.seed, per_capability=args.per_capability).write(data_dir)
    splits = {"queries": "query", "eval": "eval", "pool": "pool"}
    batches = {
        name: _register(home, path, source=f"synthetic_{name}", task="auto", split=splits[name])[0]
        for name, path in paths.items()
    }
    defs = _definitions(home, args, first_use={"grad_dim": SHORT_GRAD_DIM})
    steps: dict[str, float] = {}
    if run_batches(defs, [batches["queries"], batches["eval"]], "batch_job", step_seconds=steps):
        return 1
    job = defs.resolve_job_def("default_job")
    job_nodes = {node.name for node in job.graph.nodes}
    run_config = {"ops": selection_run_config(args.budgets or DEFAULT_RUN_BUDGETS, args.target, job_nodes)}
    run_config["ops"]["warmup_checkpoint"] = {"config": {"epochs": args.warmup_epochs, "max_length": 256}}
    run_config["ops"] |= comparison_run_config(job_nodes, args.finetune_epochs, args.eval_per_task)
    # the selections first (their table is printed as soon as they exist), then the closed loop
    keys = set(job.asset_layer.executable_asset_keys)
    loop = {k for k in keys if stage_of(k.to_user_string()) in ("fine-tuning", "evaluation")}
    loop |= {dg.AssetKey("comparison_report")} & keys
    selections = sorted(keys - loop, key=dg.AssetKey.to_user_string)
    if run_batches(defs, [batches["pool"]], "default_job", run_config, selections, steps):
        return 1
    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        report = queries.report(conn, "selection_report")
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


def _check_reading_options(args: argparse.Namespace) -> None:
    """``--layout`` and ``--mapping``, checked before any file is stored or registered."""
    from dsel_assets.core.data.readers import LAYOUTS, FieldMapping

    if args.layout is not None and args.layout not in LAYOUTS:
        raise ValueError(f"layout: {args.layout!r} is not one of {', '.join(LAYOUTS)}")
    FieldMapping.parse(args.mapping)
    if args.layout == "mapped" and args.mapping is None:
        raise ValueError("mapping: --layout mapped needs --mapping prompt=COL,response=COL[,input=COL]")
    if args.mapping is not None and args.layout not in (None, "mapped"):
        raise ValueError(f"mapping: --mapping reads the 'mapped' layout, not {args.layout!r}")


def cmd_ingest(args: argparse.Namespace) -> int:
    from dsel_assets.core.data.catalog import expand_paths, labels_for

    _check_reading_options(args)
    files = expand_paths(args.paths)
    if not files:
        print("[dsel] no data files found", file=sys.stderr)
        return 2
    home = _home(args)
    make = _definitions_maker(home, args, pin=set(MODEL_SETTINGS))  # the model is checked before anything is stored
    defs = make()
    # Query and eval sets first: a pool row equal to one of theirs is then the row that is
    # quarantined as a duplicate, which keeps evaluation data out of the pool.
    labelled = sorted(
        ((path, labels_for(path, args.source, args.task, args.split)) for path in files),
        key=lambda item: item[1].split == "pool",
    )
    if args.shard_rows:  # each shard a batch, labelled as its file
        from dsel_assets.core.data.shards import shard_folder, split_lines

        labelled = [
            (shard, labels)
            for path, labels in labelled
            for shard in split_lines(path, args.shard_rows, shard_folder(home.shards, path))
        ]
    batches = []
    for path, labels in labelled:
        try:
            batch, pending = _register(
                home,
                path,
                source=labels.source,
                task=labels.task,
                split=labels.split,
                fmt=args.format,
                layout=args.layout,
                mapping=args.mapping,
                update=args.force,
            )
        except OSError as exc:  # a full disk, say: which file, and that a rerun resumes
            done = f"{len(batches)} earlier file(s) stored, not yet validated" if batches else "nothing stored yet"
            message = f"{exc.strerror or exc} ({done}; the same command again resumes)"
            raise OSError(exc.errno, message, str(path)) from exc
        if not pending and not args.force:
            print(f"[dsel] {path} is already batch {batch} (same sha256); --force re-validates it")
            continue
        batches.append(batch)
    failed = 0
    if batches:
        from dagster import AssetKey

        from dsel_assets.app.runs import run_batches

        keys = [AssetKey("pool_batch"), AssetKey("pool")]
        if args.embed:
            keys.append(AssetKey("sentence_embeddings"))
        failed = len(run_batches(defs, batches, "batch_job", asset_selection=keys, build=_settled(make)))
        _print_ingest_summary(home, batches)
    return 1 if failed else 0


def cmd_grads(args: argparse.Namespace) -> int:
    """The pool_grad_features asset for the chosen batches, from the command line."""
    from dagster import AssetKey

    from dsel_assets.app.runs import run_batches
    from dsel_assets.store import queries, tables

    home = _home(args)
    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        pool_batches = queries.batch_names(conn, "pool")
    batches = args.batch or pool_batches
    unknown = sorted(set(batches) - set(pool_batches))
    if unknown:
        raise ValueError(f"batch: {unknown} are not pool batches; known: {pool_batches}")
    config = {"ops": {"pool_grad_features": {"config": {"checkpoints": args.checkpoint or []}}}}
    make = _definitions_maker(home, args, pin={*MODEL_SETTINGS, "grad_dim"})
    defs = make()
    if run_batches(defs, batches, "batch_job", config, [AssetKey("pool_grad_features")], build=_settled(make)):
        return 1
    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        latest = queries.latest_warmup(conn)
    print(f"[dsel] done; features from warmup {latest[0] if latest else '-'}")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _parse_params(pairs: list[str] | None) -> dict[str, str]:
    params = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"param: expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        params[key.strip()] = value.strip()
    return params


def cmd_select(args: argparse.Namespace) -> int:
    """Materialize what a method needs (only what is missing) and its selection."""
    import dataclasses

    from dagster import AssetKey, DagsterInstance

    from dsel_assets.app.runs import materialize_closure
    from dsel_assets.core.select import build_config, get
    from dsel_assets.pipeline.assets.representations.similarity import check_rds_pooling
    from dsel_assets.pipeline.assets.selection.selections import (
        available,
        selection_asset_name,
        selection_key,
        typed_params,
    )
    from dsel_assets.store import queries, tables

    spec = get(args.method)
    # KEY=VALUE, or METHOD.KEY=VALUE as dsel compare spells it
    params = {k.removeprefix(f"{args.method}."): v for k, v in _parse_params(args.param).items()}
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    if args.target is not None:
        if "task" not in fields:
            raise ValueError(f"target: {args.method} is not a targeted method (no 'task' parameter)")
        params["task"] = args.target
    representation = vars(build_config(args.method, params)).get("representation")  # validate before any work
    if not available(spec, representation):
        raise ValueError(f"method: {args.method} needs {list(spec.needs)}; not all of them have an asset yet")
    key = selection_key(args.method, representation)  # e.g. round_robin_rds: its own asset and stored rows
    home = _home(args)
    make = _definitions_maker(home, args)
    defs = make()
    if representation == "rds":  # before the pool is embedded with another pooling
        check_rds_pooling(defs.resources["model_embedding_settings"])
    target = AssetKey(selection_asset_name(key))
    config = {"budgets": args.budget, "params": typed_params(args.method, params)}
    run_config = {"ops": {target.to_user_string(): {"config": config}}}
    materialize_closure(defs, DagsterInstance.get(), [target], run_config, build=_settled(make))
    with tables.open_state(home.duckdb, read_only=True, log=_stderr) as conn:
        summary = queries.selection_summary(conn, key)
    print(format_table(summary.columns, summary.rows()))
    return 0


def _scoped(pairs: list[str] | None, what: str) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` pairs -> {NAME: {KEY: VALUE}} (values parsed as JSON when they are)."""
    out: dict[str, dict] = {}
    for key, value in _parse_params(pairs).items():
        name, dot, field = key.partition(".")
        if not dot or not name or not field:
            raise ValueError(f"{what}: expected {what.upper()}.KEY=VALUE, got {key}={value}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[field] = parsed if what == "config" else value
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    """Fine-tune on each method's selection with several seeds, evaluate on the targets, and
    report every method against random with confidence intervals."""
    from dagster import DagsterInstance

    from dsel_assets.app.compare import ComparePlan, check_plan, parse_entry, run_comparison
    from dsel_assets.pipeline.assets.representations.similarity import check_rds_pooling
    from dsel_assets.store import tables

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
        params=_scoped(args.param, "param"),
        asset_config=_scoped(args.config, "config"),
        confirmed=args.yes,
    )
    home = _home(args)
    with tables.open_state(home.duckdb, log=_stderr) as conn:
        tables.ensure_schema(conn)
        problems, plan = check_plan(plan, conn, warn=_stderr, harness_folder=home.lm_eval_tasks)
    if problems:
        for problem in problems:
            print(f"dsel: error: {problem}", file=sys.stderr)
        return 2
    defs = _definitions(home, args)
    if any(parse_entry(entry)[1] == "rds" for entry in plan.methods):  # before the pool is embedded otherwise
        check_rds_pooling(defs.resources["model_embedding_settings"])
    run_comparison(defs, DagsterInstance.get(), plan, log=_stderr)
    return print_comparison(home)


def cmd_score(args: argparse.Namespace) -> int:
    """Materialize one representation for the current pool (per-batch ones for every pool
    batch, resuming where a run stopped), and whatever it needs that is still missing."""
    from dagster import AssetKey, DagsterInstance

    from dsel_assets.app.runs import materialize_closure
    from dsel_assets.pipeline.assets.representations.registry import score_kinds

    kind = score_kinds()[args.kind]
    asset = kind.asset
    params = {}
    for key, value in _parse_params(args.param).items():
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    home = _home(args)
    make = _definitions_maker(home, args, pin={*MODEL_SETTINGS, *kind.pinned})
    defs = make()
    instance = DagsterInstance.get()
    run_config = {"ops": {kind.configured_by or asset: {"config": params}}} if params else None
    materialize_closure(defs, instance, [AssetKey(asset)], run_config, build=_settled(make))
    event = instance.get_latest_materialization_event(AssetKey(asset))
    metadata = event.asset_materialization.metadata if event else {}
    shown = [
        (k, v.value) for k, v in metadata.items() if isinstance(v.value, (int, float, str)) and "\n" not in str(v.value)
    ]
    print(format_table(["field", "value"], shown))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from dsel_assets.pipeline.assets.ingest.pool import pool_batches
    from dsel_assets.pipeline.staleness import describe, stale_resolver
    from dsel_assets.store import queries, tables

    home = _home(args)
    with tables.open_state(home.duckdb, log=_stderr) as conn:
        tables.ensure_schema(conn)
        comp = queries.composition(conn).rows()
        reasons = queries.quarantine_reasons(conn).rows()
        version, batches = tables.pool_version(conn)
        failed = queries.batches_without_rows(conn)
    print(f"state home: {home.root}\npool version: {version} ({len(batches)} pool batches)\n")
    print(format_table(["split", "source", "task", "examples"], comp) if comp else "no examples yet")
    print()
    print(format_table(["quarantine reason", "rows"], reasons) if reasons else "quarantine: empty")
    if failed:
        print()
        print(format_table(["batch with no accepted rows", "split", "read", "failure"], failed))
    defs = _definitions(home, args, pin=False)
    instance = DagsterInstance.get()
    graph = defs.resolve_asset_graph()
    resolver = stale_resolver(instance, graph)
    batches = sorted(instance.get_dynamic_partitions(pool_batches.name))
    rows = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        event = instance.get_latest_materialization_event(key)
        if event is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(event.timestamp))
            partition = event.asset_materialization.partition or "-"
            state = describe(resolver, graph, graph.get(key), batches)
            rows.append((key.to_user_string(), partition, when, event.run_id[:8], state))
    print()
    header = ["asset", "partition", "last materialized", "run", "state (what the next command needing it reruns)"]
    print(format_table(header, rows) if rows else "no materializations yet")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The chain behind an asset's latest materialization (or a run), from Dagster and MLflow."""
    from dagster import DagsterInstance

    from dsel_assets.app.lineage import format_lineage, lineage

    home = _home(args)
    graph = _definitions(home, args, pin=False).resolve_asset_graph()
    report = lineage(DagsterInstance.get(), graph, str(home.duckdb), args.target)
    print(json.dumps(report, indent=2, default=str) if args.json else format_lineage(report))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    """An example's raw record, its scores and its rank in a selection."""
    from dsel_assets.app.lineage import format_why, why

    report = why(str(_home(args).duckdb), args.pool_id, args.selection)
    print(json.dumps(report, indent=2, default=str) if args.json else format_why(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One stored selection as a training file in rank order, with its lineage manifest beside
    it (and, for sharegpt / alpaca, its LLaMA-Factory dataset_info.json entry)."""
    from dsel_assets.pipeline.assets.reporting.export import command_line, export_selection, manifest_path

    home = _home(args)
    command = command_line(
        args.home, args.method, args.budget, args.seed, args.target, args.format, args.out, args.force
    )
    manifest = export_selection(
        home,
        args.method,
        args.budget,
        args.format,
        args.out,
        seed=args.seed,
        target=args.target,
        force=args.force,
        command=command,
        tracking_uri=os.environ.get("DSEL_MLFLOW_URI") or home.mlflow_uri,
        log=_stderr,
    )
    out = Path(manifest["path"])
    what = f"{manifest['method']} @ {manifest['budget']} (selection seed {manifest['selection_seed']})"
    print(f"[dsel] {what}: {manifest['counts']['rows']} rows -> {out} ({args.format})")
    print(f"[dsel] manifest: {manifest_path(out)}")
    if manifest["dataset_info"]:
        print(f"[dsel] LLaMA-Factory: entry {manifest['dataset_info']['name']!r} in {out.parent / 'dataset_info.json'}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """The registry; ``randomness``: where each selection's randomness comes from (seed, warmup,
    upstream, none: ``selections.selection_randomness``)."""
    from dsel_assets.core.select import methods
    from dsel_assets.pipeline.assets.selection.selections import randomness_by_representation, randomness_summary

    specs = methods().values()
    if args.json:
        rows = [
            {
                "name": spec.name,
                "family": spec.family,
                "needs": ", ".join(spec.needs) or "-",
                "params": " ".join(f"{n}={d}" for n, _, d, _ in spec.parameters()),
                "description": spec.description,
                "randomness": randomness_by_representation(spec),  # selection key -> kind
                "randomness_at_defaults": randomness_by_representation(spec, defaults=True),
            }
            for spec in specs
        ]
        print(json.dumps(rows, indent=2))
        return 0
    rows = [
        (
            spec.name,
            spec.family,
            ", ".join(spec.needs) or "-",
            randomness_summary(spec),
            " ".join(f"{n}={d}" for n, _, d, _ in spec.parameters()),
            spec.description,
        )
        for spec in specs
    ]
    print(format_table(["method", "family", "needs", "randomness", "parameters", "description"], rows))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = _home(args)
    print(f"[dsel] DAGSTER_HOME={home.dagster}")
    dagster_bin = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster_bin), [str(dagster_bin), "dev", "-m", "dsel_assets.definitions", *args.extra])
    return 0  # not reached


MODEL_HELP = (
    "smollm2 | tiny | local folder or .gguf (hub ids need DSEL_ALLOW_HUB=1); default: the state home's, else smollm2"
)
CHANGE_HELP = "switch the state home's model / gradient dim / pooling / proxy model and recompute what depends on it"
PROXY_HELP = (
    "small proxy model of superfiltering(_d) / small2large (DSEL_PROXY_MODEL), as for --model; "
    "default: the state home's, else the selection model"
)


def score_kinds_help() -> str:
    """``dsel score``'s kinds, each with the asset it computes where that is another name, and
    the representations of that asset where it serves others too."""
    from dsel_assets.pipeline.assets.representations.registry import score_kinds, served_by

    labels = []
    for kind, spec in sorted(score_kinds().items()):
        served = served_by(spec.asset)
        details = ([spec.asset] if spec.asset != kind else []) + (
            [", ".join(served)] if set(served) - {kind, spec.asset} else []
        )
        labels.append(f"{kind} ({': '.join(details)})" if details else kind)
    return f"the representation to compute: {', '.join(labels)}"


HOME_HELP = "state directory (default: $DSEL_HOME or ./.dsel)"


PROJECTION_HELP = (
    "gradient projection: rademacher (default) | gaussian (exact per-example gradients, LESS) | factorised "
    "(LoGra style inside the hooks: no per-example gradient is formed; for 1B+ models; approximate Adam)"
)
DEVICE_HELP = "auto (default: CUDA when present, else CPU) | cpu | cuda | cuda:N (the N-th GPU)"


def model_options(command: argparse.ArgumentParser) -> None:
    """How the models of a command load and run: the device and runtime options (this command
    only), the dtype and quantisation (pinned in the state home: they change what a model computes)."""
    from dsel_assets.core.models.loading import ATTENTIONS, LOAD_IN, MODEL_DTYPES

    command.add_argument("--device", default=None, help=DEVICE_HELP)
    command.add_argument(
        "--dtype", choices=MODEL_DTYPES, default=None, help="weights' dtype (pinned; auto: bf16 on CUDA, else fp32)"
    )
    command.add_argument(
        "--load-in", choices=LOAD_IN, default=None, help="quantise the frozen weights with bitsandbytes (CUDA; pinned)"
    )
    command.add_argument(
        "--attention", choices=ATTENTIONS, default=None, help="attention kernel (default sdpa; $DSEL_ATTENTION)"
    )
    command.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        default=None,
        help="padded tokens per batch in every model pass ($DSEL_MAX_BATCH_TOKENS; default: no cap)",
    )
    command.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        default=None,
        help="recompute activations when training (warmup, fine-tuning): less memory, ~30%% more time",
    )


def parser() -> argparse.ArgumentParser:
    from dsel_assets.pipeline.assets.representations.registry import score_kinds

    p = argparse.ArgumentParser(prog="dsel", description=__doc__)

    def global_options(parsed: argparse.ArgumentParser, after_command: bool) -> None:
        """``--home``, ``-v`` and ``-q``: before the subcommand or after it (the latter wins, so
        there they default to unset)."""
        unset = argparse.SUPPRESS if after_command else None
        parsed.add_argument("--home", default=unset, help=HOME_HELP)
        verbosity = parsed.add_mutually_exclusive_group()
        for flags, help_text in (
            (
                ("-v", "--verbose"),
                "show Dagster's and the libraries' logs and warnings live (default: in <home>/logs/dsel.log)",
            ),
            (("-q", "--quiet"), "results and errors only (progress lines go to the log file too)"),
        ):
            verbosity.add_argument(*flags, action="store_true", default=unset or False, help=help_text)

    global_options(p, after_command=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand that also takes the global options after its name (``dsel status --home X -v``)."""
        parsed = sub.add_parser(name, **kwargs)
        global_options(parsed, after_command=True)
        return parsed

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

    ingest = command("ingest", help="ingest files or folders as new pool batches")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--source", help="source name (default: known file name, else file stem)")
    ingest.add_argument("--task", help="task label; 'auto' reads each record's 'task' field")
    ingest.add_argument("--split", choices=["pool", "query", "eval"], help="default: pool (eval for known eval files)")
    ingest.add_argument("--format", choices=["json", "jsonl", "parquet", "arrow"], help="default: detected")
    ingest.add_argument(
        "--layout",
        help="record layout (default: detected): messages, conversations, "
        "dialogsum, qa, alpaca, alpaca_response, mapped",
    )
    ingest.add_argument("--mapping", help="field mapping for other layouts: prompt=COL,response=COL[,input=COL]")
    ingest.add_argument("--embed", action="store_true", help="also compute sentence embeddings of each batch")
    ingest.add_argument(
        "--shard-rows",
        type=positive_int,
        default=None,
        help="cut JSON-lines files into batches of N lines (under <home>/shards): per-batch steps run per "
        "shard, side by side on several devices (DSEL_DEVICES)",
    )
    ingest.add_argument("--force", action="store_true", help="re-validate files already ingested")
    ingest.add_argument("--model", default=None, help="tokenizer for the token limit; " + MODEL_HELP)
    ingest.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    ingest.set_defaults(func=cmd_ingest)

    grads = command("grads", help="compute pool gradient features (resumes where a previous run stopped)")
    grads.add_argument("--batch", action="append", help="pool batch (repeatable; default: every pool batch)")
    grads.add_argument("--checkpoint", type=int, action="append", help="warmup epoch (repeatable; default: all)")
    grads.add_argument(
        "--grad-dim", type=positive_int, default=None, help="feature dimension d (default $DSEL_GRAD_DIM or 8192)"
    )
    grads.add_argument("--projection", choices=PROJECTIONS, default=None, help=PROJECTION_HELP)
    grads.add_argument("--model", default=None, help=MODEL_HELP)
    model_options(grads)
    grads.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    grads.set_defaults(func=cmd_grads)

    select = command("select", help="materialize a method's inputs (only what is missing) and its selection")
    select.add_argument("--method", required=True, help="a method name (see dsel methods)")
    select.add_argument("--budget", action="append", required=True, help="budget: 5%%, 0.05 or 500 (repeatable)")
    select.add_argument("--target", help="target task of a targeted method")
    select.add_argument("--param", action="append", help="method parameter key=value (repeatable)")
    select.add_argument("--model", default=None, help=MODEL_HELP)
    model_options(select)
    select.add_argument("--grad-dim", type=positive_int, default=None, help="gradient feature dimension d")
    select.add_argument("--projection", choices=PROJECTIONS, default=None, help=PROJECTION_HELP)
    select.add_argument("--proxy-model", default=None, help=PROXY_HELP)
    select.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    select.set_defaults(func=cmd_select)

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

    score = command("score", help="compute one representation for the current pool (resumable)")
    score.add_argument("kind", choices=sorted(score_kinds()), metavar="KIND", help=score_kinds_help())
    score.add_argument("--param", action="append", help="asset config key=value, e.g. epochs=1 (repeatable)")
    score.add_argument("--pooling", choices=["mean", "position_weighted", "last_token"], help="model embeddings")
    score.add_argument("--model", default=None, help=MODEL_HELP)
    score.add_argument("--proxy-model", default=None, help=PROXY_HELP)
    model_options(score)
    score.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    score.set_defaults(func=cmd_score)

    status = command("status", help="pool size, quarantine reasons, last materializations")
    status.set_defaults(func=cmd_status)

    lin = command("lineage", help="the chain behind an asset or run: event log, MLflow runs, raw files")
    lin.add_argument("target", help="an asset key (e.g. selection_random) or a Dagster run id (or unique prefix)")
    lin.add_argument("--json", action="store_true")
    lin.set_defaults(func=cmd_lineage)

    why_ = command("why", help="an example's raw record, its scores and its rank in a selection")
    why_.add_argument("pool_id")
    why_.add_argument("--selection", required=True, help="method or selection asset name (random, selection_less)")
    why_.add_argument("--json", action="store_true")
    why_.set_defaults(func=cmd_why)

    from dsel_assets.core.data.writers import FORMATS

    exp = command(
        "export", help="write a stored selection as a training file (JSONL, Parquet, datasets) with its lineage"
    )
    exp.add_argument(
        "--method",
        required=True,
        help="selection key as stored (less, round_robin_rds) or METHOD@REPR (round_robin@rds)",
    )
    exp.add_argument("--budget", required=True, help="a stored budget: 5%%, 0.05, 500 or its label (5pct)")
    exp.add_argument("--seed", type=int, help="selection seed of the replicate (default: the only one stored)")
    exp.add_argument("--target", help="refuse unless the stored selection was made for this target task")
    exp.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="original (records as read), messages (TRL / axolotl / torchtune), sharegpt and alpaca "
        "(LLaMA-Factory, with dataset_info.json), parquet (messages + lineage columns), hf (datasets folder)",
    )
    exp.add_argument(
        "--out", required=True, help="file to write (a folder for hf); NAME.manifest.json is written beside it"
    )
    exp.add_argument("--force", action="store_true", help="replace what an earlier export left at --out")
    exp.set_defaults(func=cmd_export)

    meth = command("methods", help="the selection-method registry")
    meth.add_argument("--json", action="store_true")
    meth.set_defaults(func=cmd_methods)

    ui = command(
        "ui",
        help="open the Dagster UI (dagster dev) on the state home; other arguments (e.g. -p 3000) go to dagster dev",
    )
    ui.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args, extra = cli.parse_known_args(argv)
    if extra and args.command != "ui":
        cli.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    from dsel_assets.app import output
    from dsel_assets.pipeline.liveness import reap_for_cli

    if args.verbose and args.quiet:
        cli.error("-v and -q cannot be combined")
    root = Path(args.home).expanduser().resolve() if args.home else DselHome.from_env().root
    output.configure(root / "logs" / "dsel.log", VERBOSITY[(args.verbose, args.quiet)])

    try:
        reap_for_cli(args.home)  # runs a killed dsel left STARTED: mark failed, free their pool slots
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # the user's input, if it names the field
        if os.environ.get("DSEL_DEBUG") == "1":
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if not USER_ERROR.match(message):  # a bug wearing the same type: say so
            print(
                f"dsel: internal error: {type(exc).__name__}: {message} (a bug: please report it; "
                "DSEL_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            return 1
        print(f"dsel: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsel: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the state database, a failed run, the OS: one line and what to do
        if os.environ.get("DSEL_DEBUG") == "1":
            raise
        print(f"dsel: error: {_describe(exc)}{_full_disk_hint()} (DSEL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        output.restore()


#: A user error names what it is about first (``budget: ...``, ``config: warmup_checkpoint: ...``):
#: the convention of every message dsel raises for bad input; any other ValueError / KeyError /
#: FileNotFoundError is an internal error and is reported as one.
USER_ERROR = re.compile(r"[\w@.\-\[\]' ]{1,80}: ")
#: (-v, -q) -> how much a command prints (dsel_assets.app.output)
VERBOSITY = {(True, False): 2, (False, False): 1, (False, True): 0}


#: Free bytes below which a failure is blamed on the state home's disk (libraries report a full
#: disk in their own words, e.g. SQLite's "disk I/O error" once its file could not grow).
LOW_DISK_BYTES = 64 << 20


def _full_disk_hint() -> str:
    """What to do when the state home's file system is (nearly) full, else ""."""
    root = DselHome.from_env().root
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return ""
    if free >= LOW_DISK_BYTES:
        return ""
    where = f"{free / 2**20:.1f} MiB free at {root}"
    return f"; the state home's disk is full ({where}): free space, then run the same command again (it resumes)"


def _describe(exc: Exception) -> str:
    """One line for an error that is not the user's input."""
    import duckdb

    if isinstance(exc, duckdb.Error):
        return f"the state database refused the operation ({type(exc).__name__}: {exc}); check `dsel status`"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'file system'}: {exc.strerror or exc}; check the path, permissions and free space"
    from dsel_assets.app.runs import RunFailed
    from dsel_assets.store.tables import StateDatabaseError

    first_line = (str(exc).strip().splitlines() or [""])[0]
    return first_line if isinstance(exc, (RunFailed, StateDatabaseError)) else f"{type(exc).__name__}: {first_line}"


if __name__ == "__main__":
    sys.exit(main())

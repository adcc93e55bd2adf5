"""``dsel grads``, ``select``, ``score`` and ``methods``: representations and selections of the
current pool, and the method registry."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from dsel_assets.app.cli.common import (
    CHANGE_HELP,
    MODEL_HELP,
    PROJECTION_HELP,
    PROXY_HELP,
    definitions_maker,
    format_table,
    model_options,
    open_home,
    parse_params,
    positive_int,
    score_kinds_help,
    settled,
    to_stderr,
)
from dsel_assets.core.data.schema import SENTENCE_TEXTS
from dsel_assets.core.models.projection import PROJECTIONS
from resources import store as state_db
from resources.settings import MODEL_SETTINGS


def cmd_grads(args: argparse.Namespace) -> int:
    """The pool_grad_features asset for the chosen batches, from the command line."""
    from dagster import AssetKey

    from dsel_assets.app.runs import run_batches
    from dsel_assets.pipeline.names import POOL_GRAD_FEATURES

    home = open_home(args)
    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        pool_batches = db.batch_names("pool")
    batches = args.batch or pool_batches
    unknown = sorted(set(batches) - set(pool_batches))
    if unknown:
        raise ValueError(f"batch: {unknown} are not pool batches; known: {pool_batches}")
    config = {"ops": {POOL_GRAD_FEATURES: {"config": {"checkpoints": args.checkpoint or []}}}}
    make = definitions_maker(home, args, pin={*MODEL_SETTINGS, "grad_dim"})
    defs = make()
    if run_batches(defs, batches, "batch_job", config, [AssetKey(POOL_GRAD_FEATURES)], build=settled(make)):
        return 1
    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        latest = db.latest_warmup()
    print(f"[dsel] done; features from warmup {latest[0] if latest else '-'}")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    """Materialize what a method needs (only what is missing) and its selection."""
    import dataclasses

    from dagster import AssetKey, DagsterInstance

    from dsel_assets.app.runs import materialize_closure
    from dsel_assets.core.select import build_config, get
    from dsel_assets.pipeline.assets.representations.similarity import check_rds_pooling
    from dsel_assets.pipeline.assets.selection.selections import typed_params
    from dsel_assets.pipeline.catalog import available
    from dsel_assets.pipeline.names import selection_asset_name, selection_key

    spec = get(args.method)
    # KEY=VALUE, or METHOD.KEY=VALUE as dsel compare spells it
    params = {k.removeprefix(f"{args.method}."): v for k, v in parse_params(args.param).items()}
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    if args.target is not None:
        if "task" not in fields:
            raise ValueError(f"target: {args.method} is not a targeted method (no 'task' parameter)")
        params["task"] = args.target
    representation = vars(build_config(args.method, params)).get("representation")  # validate before any work
    if not available(spec, representation):
        raise ValueError(f"method: {args.method} needs {list(spec.needs)}; not all of them have an asset yet")
    key = selection_key(args.method, representation)  # e.g. round_robin_rds: its own asset and stored rows
    home = open_home(args)
    check_target(home, args.method, params.get("task", ""))
    make = definitions_maker(home, args)
    defs = make()
    if representation == "rds":  # before the pool is embedded with another pooling
        check_rds_pooling(defs.resources["model_embedding_settings"])
    target = AssetKey(selection_asset_name(key))
    config = {"budgets": args.budget, "params": typed_params(args.method, params)}
    run_config = {"ops": {target.to_user_string(): {"config": config}}}
    materialize_closure(defs, DagsterInstance.get(), [target], run_config, build=settled(make))
    with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
        summary = db.selection_summary(key)
    print(format_table(summary.columns, summary.rows()))
    return 0


def check_target(home, method: str, task: str) -> None:
    """Refuse, before any work, a target task the method cannot use: none where it needs one, or
    a label its split (query set or pool) does not hold; the error names the stored labels."""
    from dsel_assets.core.select import get
    from dsel_assets.core.select.base import method_target
    from dsel_assets.core.select.registry import target_problem

    target = method_target(get(method).config_cls)
    if target is None:
        return
    labels = set()
    if home.duckdb.exists():
        with state_db.open_state(home.duckdb, read_only=True, log=to_stderr) as db:
            labels = {t for (split, t) in db.split_task_counts() if split == target.split}
    problem = target_problem(method, task, labels)
    if problem:
        ingest = " (dsel ingest FILE --split query --task TASK)" if target.split == "query" and not labels else ""
        raise ValueError(f"target: {method}.task: {problem}{ingest}; name it with --target TASK")


def cmd_score(args: argparse.Namespace) -> int:
    """Materialize one representation for the current pool (per-batch ones for every pool
    batch, resuming where a run stopped), and whatever it needs that is still missing."""
    from dagster import AssetKey, DagsterInstance

    from dsel_assets.app.runs import materialize_closure
    from dsel_assets.pipeline.registry import score_kinds

    kind = score_kinds()[args.kind]
    asset = kind.asset
    params = {}
    for key, value in parse_params(args.param).items():
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    home = open_home(args)
    make = definitions_maker(home, args, pin={*MODEL_SETTINGS, *kind.pinned})
    defs = make()
    instance = DagsterInstance.get()
    run_config = {"ops": {kind.configured_by or asset: {"config": params}}} if params else None
    materialize_closure(defs, instance, [AssetKey(asset)], run_config, build=settled(make))
    event = instance.get_latest_materialization_event(AssetKey(asset))
    metadata = event.asset_materialization.metadata if event else {}
    shown = [
        (k, v.value) for k, v in metadata.items() if isinstance(v.value, (int, float, str)) and "\n" not in str(v.value)
    ]
    print(format_table(["field", "value"], shown))
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    """The registry; ``randomness``: where each selection's randomness comes from (seed, warmup,
    upstream, none: ``selections.selection_randomness``)."""
    from dsel_assets.core.select import methods
    from dsel_assets.core.select.base import method_target
    from dsel_assets.pipeline.catalog import randomness_by_representation, randomness_summary

    specs = methods().values()

    def parameters(spec) -> str:  # a required target shows as task=<query-task> or task=<pool-task>
        target = method_target(spec.config_cls)
        shown = {"task": f"<{target.split}-task>"} if target and target.required else {}
        return " ".join(f"{n}={shown.get(n, d)}" for n, _, d, _ in spec.parameters())

    if args.json:
        rows = [
            {
                "name": spec.name,
                "family": spec.family,
                "needs": ", ".join(spec.needs) or "-",
                "params": parameters(spec),
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
            parameters(spec),
            spec.description,
        )
        for spec in specs
    ]
    print(format_table(["method", "family", "needs", "randomness", "parameters", "description"], rows))
    return 0


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add this group's subcommands through ``command(name, help=...)``."""
    from dsel_assets.pipeline.registry import score_kinds

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

    score = command("score", help="compute one representation for the current pool (resumable)")
    score.add_argument("kind", choices=sorted(score_kinds()), metavar="KIND", help=score_kinds_help())
    score.add_argument("--param", action="append", help="asset config key=value, e.g. epochs=1 (repeatable)")
    score.add_argument("--pooling", choices=["mean", "position_weighted", "last_token"], help="model embeddings")
    score.add_argument(
        "--embed-max-length", type=positive_int, help="model embeddings: tokens per example (default 2048)"
    )
    score.add_argument(
        "--embed-bos", type=int, choices=[0, 1], help="model embeddings: start each example with BOS (default 1)"
    )
    score.add_argument(
        "--sentence-text",
        choices=SENTENCE_TEXTS,
        help="sentence embeddings: conversation (every turn but the system prompt; default) | instruction "
        "(system and user turns only, as Diversify-and-Conquer's reference embeds)",
    )
    score.add_argument("--model", default=None, help=MODEL_HELP)
    score.add_argument("--proxy-model", default=None, help=PROXY_HELP)
    model_options(score)
    score.add_argument("--change-settings", action="store_true", help=CHANGE_HELP)
    score.set_defaults(func=cmd_score)

    meth = command("methods", help="the selection-method registry")
    meth.add_argument("--json", action="store_true")
    meth.set_defaults(func=cmd_methods)

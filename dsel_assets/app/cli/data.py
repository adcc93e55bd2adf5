"""``dsel ingest``, ``status``, ``lineage``, ``why``, ``export`` and ``ui``: data in, state and lineage
out, the chosen subset to a trainer, and the Dagster UI."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from dsel_assets.app.cli.common import (
    CHANGE_HELP,
    MODEL_HELP,
    check_reading_options,
    definitions_for,
    definitions_maker,
    format_table,
    open_home,
    positive_int,
    print_ingest_summary,
    register_file,
    settled,
    to_stderr,
)
from dsel_assets.core.models.loading import ALLOW_HUB_ENV
from resources import store as state_db
from resources.settings import MODEL_SETTINGS
from resources.tracking import tracking_uri


def cmd_ingest(args: argparse.Namespace) -> int:
    from dsel_assets.core.data.catalog import expand_paths, labels_for

    check_reading_options(args)
    files = expand_paths(args.paths, allow_hub=os.environ.get(ALLOW_HUB_ENV) == "1")
    if not files:
        print("[dsel] no data files found", file=sys.stderr)
        return 2
    home = open_home(args)
    make = definitions_maker(home, args, pin=set(MODEL_SETTINGS))  # the model is checked before anything is stored
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
            batch, pending = register_file(
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
        from dsel_assets.pipeline.names import POOL, POOL_BATCH, SENTENCE_EMBEDDINGS

        keys = [AssetKey(POOL_BATCH), AssetKey(POOL)]
        if args.embed:
            keys.append(AssetKey(SENTENCE_EMBEDDINGS))
        failed = len(run_batches(defs, batches, "batch_job", asset_selection=keys, build=settled(make)))
        print_ingest_summary(home, batches)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from dagster import DagsterInstance

    from dsel_assets.pipeline.names import pool_batches
    from dsel_assets.pipeline.staleness import describe, stale_resolver

    home = open_home(args)
    with state_db.open_state(home.duckdb, log=to_stderr) as db:
        db.ensure_schema()
        comp = db.composition().rows()
        reasons = db.quarantine_reasons().rows()
        version, batches = db.pool_version()
        failed = db.batches_without_rows()
    print(f"state home: {home.root}\npool version: {version} ({len(batches)} pool batches)\n")
    print(format_table(["split", "source", "task", "examples"], comp) if comp else "no examples yet")
    print()
    print(format_table(["quarantine reason", "rows"], reasons) if reasons else "quarantine: empty")
    if failed:
        print()
        print(format_table(["batch with no accepted rows", "split", "read", "failure"], failed))
    defs = definitions_for(home, args, pin=False)
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

    home = open_home(args)
    graph = definitions_for(home, args, pin=False).resolve_asset_graph()
    report = lineage(DagsterInstance.get(), graph, str(home.duckdb), args.target)
    print(json.dumps(report, indent=2, default=str) if args.json else format_lineage(report))
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    """An example's raw record, its scores and its rank in a selection."""
    from dsel_assets.app.lineage import format_why, why

    report = why(str(open_home(args).duckdb), args.pool_id, args.selection)
    print(json.dumps(report, indent=2, default=str) if args.json else format_why(report))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """One stored selection as a training file in rank order, with its lineage manifest beside
    it (and, for sharegpt / alpaca, its LLaMA-Factory dataset_info.json entry)."""
    from dsel_assets.pipeline.export import command_line, export_selection, manifest_path

    home = open_home(args)
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
        tracking_uri=tracking_uri(home),
        log=to_stderr,
    )
    out = Path(manifest["path"])
    what = f"{manifest['method']} @ {manifest['budget']} (selection seed {manifest['selection_seed']})"
    print(f"[dsel] {what}: {manifest['counts']['rows']} rows -> {out} ({args.format})")
    print(f"[dsel] manifest: {manifest_path(out)}")
    if manifest["dataset_info"]:
        print(f"[dsel] LLaMA-Factory: entry {manifest['dataset_info']['name']!r} in {out.parent / 'dataset_info.json'}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    home = open_home(args)
    print(f"[dsel] DAGSTER_HOME={home.dagster}")
    dagster_bin = Path(sys.executable).with_name("dagster")
    os.execv(str(dagster_bin), [str(dagster_bin), "dev", "-m", "dsel_assets.definitions", *args.extra])
    return 0  # not reached


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add this group's subcommands through ``command(name, help=...)``."""
    from dsel_assets.core.data.writers import FORMATS

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

    ui = command(
        "ui",
        help="open the Dagster UI (dagster dev) on the state home; other arguments (e.g. -p 3000) go to dagster dev",
    )
    ui.set_defaults(func=cmd_ui)

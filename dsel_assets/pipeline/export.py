"""A stored selection leaves dsel: its rows in rank order, in a layout a fine-tuning framework
reads (:mod:`dsel_assets.core.data.writers`), with a manifest of its lineage beside the file.

Everything is read from the state database (the selection, each example's canonical
conversation and its record as read, the raw file it came from), the state home's
``settings.json`` and the selection's MLflow run; nothing outside the state home. ``dsel export``
(:func:`export_selection`) writes one selection to the user's path; the ``selection_export`` asset
(:mod:`dsel_assets.pipeline.assets.reporting.exports`) writes every stored selection through the artifact store.

The manifest (``<name>.manifest.json`` beside the file: ``selected.jsonl`` ->
``selected.manifest.json``) holds: the selection key, the method and representation, its
parameters (the stored config), budget, k, selection seed, target task, pool version, the
selection's MLflow run id and its inputs, the representation settings pinned in the home and the
model (and hash) the representation was computed with where the records say so (null
otherwise), counts, the source files, every row's lineage, the command, dsel's version and the
export time.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from dsel_assets.core.data import writers
from dsel_assets.core.data.writers import ExportRow
from dsel_assets.pipeline.catalog import entry_key, key_method
from resources import store as state_db

MANIFEST_VERSION = 1
#: file name suffix of each format's data (``hf`` is a folder)
SUFFIXES = {
    "original": ".jsonl",
    "messages": ".jsonl",
    "sharegpt": ".jsonl",
    "alpaca": ".jsonl",
    "parquet": ".parquet",
    "hf": "",
}
DATASET_INFO = "dataset_info.json"
#: what ``position`` counts, by the format the batch was read as
POSITION_NOTE = "1-based line of a JSON-lines file; 0-based element of a JSON array; 0-based row of a Parquet file"
#: Lance datasets whose name ends with the hash of the model that computed them
_HASHED_DATASET = re.compile(r"^(?:model_embeddings_[a-z_]+|rds_similarity|rds_queries)_([0-9a-f]{16})$")
#: inputs that come from the latest LESS warmup (its model is the representation's)
_WARMUP_INPUTS = ("influence_", "pool_grad_features_", "query_grad_features_", "less_scorer")
_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


@dataclass(frozen=True)
class Replicate:
    """One stored selection replicate: selection key, budget label, selection seed, and its
    ``stored_selections`` row."""

    key: str
    budget: str
    seed: int
    row: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.row.get("config") or "{}")

    @property
    def label(self) -> str:
        return f"{self.key} @ {self.budget} (selection seed {self.seed})"


def selection_key_of(method: str) -> str:
    """The stored selection key of ``method``: itself, or for ``METHOD@REPRESENTATION`` the key
    ``dsel compare`` gives it (``round_robin@rds`` -> ``round_robin_rds``)."""
    if "@" not in method:
        return method
    return entry_key(method)


def _budget_label(budget: str, stored: Sequence[str]) -> str | None:
    """``budget`` as stored: the label itself (``5pct``) or what it parses to (``5%`` -> ``5pct``)."""
    if budget in stored:
        return budget
    from dsel_assets.core.select import Budget

    try:
        return Budget.parse(budget).label
    except ValueError:
        return None


def resolve(
    stored: pl.DataFrame, method: str, budget: str, seed: int | None = None, target: str | None = None
) -> tuple[Replicate, list[str]]:
    """The stored replicate that ``method``, ``budget`` and ``seed`` name, and warnings; a name
    that matches nothing is a ValueError naming it and the stored choices. ``seed`` None: the only
    replicate (an error listing them when there are several). ``target``: an error when the stored
    selection was made for another task."""
    if stored.height == 0:
        raise ValueError("method: no stored selections yet; make one first: dsel select --method M --budget B")
    keys = list(dict.fromkeys(stored["method"].to_list()))
    try:
        key = selection_key_of(method)
    except ValueError as exc:
        raise ValueError(f"{exc}; stored selections: {keys}") from None
    if key not in keys:
        named = f"{method!r} ({key})" if key != method else repr(method)
        raise ValueError(f"method: {named} has no stored selection; stored: {keys}")
    mine = stored.filter(pl.col("method") == key)
    budgets = list(dict.fromkeys(mine["budget"].to_list()))
    label = _budget_label(budget, budgets)
    if label not in budgets:
        raise ValueError(f"budget: {budget!r} is not a stored budget of {key}; stored: {budgets}")
    replicates = mine.filter(pl.col("budget") == label)
    seeds = [int(s) for s in replicates["selection_seed"].to_list()]
    if seed is None:
        if len(seeds) > 1:
            raise ValueError(
                f"seed: {key} @ {label} has {len(seeds)} selection replicates; pick one with --seed: {seeds}"
            )
        seed = seeds[0]
    elif seed not in seeds:
        raise ValueError(f"seed: {seed} is not a stored selection seed of {key} @ {label}; stored: {seeds}")
    replicate = Replicate(key, label, seed, replicates.filter(pl.col("selection_seed") == seed).row(0, named=True))
    warnings = []
    if target is not None:
        task = replicate.config.get("task")
        if task is None:
            warnings.append(f"target: {key} has no target task; --target {target} ignored")
        elif task != target:
            shown = f"{task!r}" + (" (every query task)" if task == "" else "")
            raise ValueError(f"target: the stored selection {key} @ {label} was made for task {shown}, not {target!r}")
    return replicate, warnings


def choose(stored: pl.DataFrame, methods: Sequence[str] = (), budgets: Sequence[str] = ()) -> list[Replicate]:
    """Every stored replicate, or those of ``methods`` (selection keys or ``METHOD@REPR``) and
    ``budgets``; a name that matches nothing is a ValueError naming the stored choices."""
    keys = list(dict.fromkeys(stored["method"].to_list()))
    wanted = [selection_key_of(m) for m in methods]
    unknown = [m for m, k in zip(methods, wanted, strict=True) if k not in keys]
    if unknown:
        raise ValueError(f"methods: {unknown} have no stored selection; stored: {keys}")
    if wanted:
        stored = stored.filter(pl.col("method").is_in(wanted))
    if budgets:
        known = list(dict.fromkeys(stored["budget"].to_list()))
        labels = [_budget_label(b, known) for b in budgets]
        missing = [b for b, label in zip(budgets, labels, strict=True) if label not in known]
        if missing:
            raise ValueError(f"budgets: {missing} are not stored budgets; stored: {known}")
        stored = stored.filter(pl.col("budget").is_in(labels))
    return [Replicate(r["method"], r["budget"], int(r["selection_seed"]), r) for r in stored.iter_rows(named=True)]


def _score(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def gather(db, replicate: Replicate) -> list[ExportRow]:
    """The replicate's rows in rank order with their examples; an id the pool no longer holds
    is an error (re-run the selection)."""
    found = db.selection_export_rows(replicate.key, replicate.budget, replicate.seed)
    missing = found.filter(pl.col("raw").is_null())["pool_id"].to_list()
    if missing:
        raise RuntimeError(
            f"selection: {len(missing)} pool ids of {replicate.label} are no longer in the pool (e.g. {missing[0]}); "
            f"re-run it: dsel select --method {replicate.key} --budget {replicate.budget}"
        )
    rows = []
    for r in found.iter_rows(named=True):
        lineage = {
            "method": replicate.key,
            "budget": replicate.budget,
            "selection_seed": replicate.seed,
            "rank": r["rank"],
            "pool_id": r["pool_id"],
            "score": _score(r["score"]),
            "task": r["task"],
            "source": r["source"],
            "batch": r["batch"],
            "source_file": r["source_file"],
            "stored_file": r["stored_file"],
            "file_sha256": r["file_sha256"],
            "position": r["position"],
            "fmt": r["fmt"],
        }
        messages = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
        rows.append(ExportRow(messages, r["raw"], lineage))
    return rows


def selection_run(tracking_uri: str | None, run_id: str | None) -> dict[str, Any] | None:
    """The selection's MLflow run: status, params and input datasets (name, digest, source), or
    ``{"error": ...}`` when it cannot be read; None without a run id or a tracking store."""
    if not run_id or not tracking_uri:
        return None
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None  # never create a tracking store just to read from it
    try:
        from mlflow.tracking import MlflowClient

        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except Exception as exc:  # an MLflow server down, a run deleted: the export goes on without it
        return {"error": f"{type(exc).__name__}: {exc}"}
    inputs = [
        {"name": d.dataset.name, "digest": d.dataset.digest, "source": _source_uri(d.dataset.source)}
        for d in (run.inputs.dataset_inputs if run.inputs else [])
        if next((t.value for t in d.tags if t.key == "mlflow.data.context"), "input") == "input"
    ]
    return {"status": run.info.status, "params": dict(run.data.params), "inputs": inputs}


def _source_uri(source: str | None) -> str | None:
    """The URI of an MLflow dataset source (a JSON object with ``uri``, or the text itself)."""
    try:
        parsed = json.loads(source or "null")
    except json.JSONDecodeError:
        return source
    return parsed.get("uri", source) if isinstance(parsed, dict) else source


def model_identity(
    db, inputs: Sequence[dict[str, Any]], created_at: Any = None, warmup: str | None = None
) -> dict[str, Any]:
    """The model (and hash) the selection's representation was computed with, from its recorded
    inputs: the selection model itself, a Lance dataset named after the model hash, the LESS
    warmup (``warmup``: the key its diagnostics record; else by the LESS scores' key, else the
    latest recorded before the selection) or a score table's rows; nulls when the records say
    nothing (a model-free representation)."""
    for ref in inputs:
        if ref["name"] == "selection_model" and ref.get("digest"):
            return {"model": None, "model_hash": ref["digest"], "from": "input selection_model"}
        found = _HASHED_DATASET.match(ref["name"])
        if found:
            return {"model": None, "model_hash": found[1], "from": f"input {ref['name']}"}
    recorded = db.warmup_identity(key=warmup) if warmup else None
    if recorded:
        return {**{k: recorded[k] for k in ("model", "model_hash")}, "from": f"warmup {recorded['warmup']}"}
    for ref in inputs:
        if ref["name"] == "less_scores" and ref.get("digest"):
            warmup = db.warmup_identity(key=ref["digest"])
        elif ref["name"].startswith(_WARMUP_INPUTS):
            warmup = db.warmup_identity(before=created_at)
        else:
            continue
        if warmup:
            return {**{k: warmup[k] for k in ("model", "model_hash")}, "from": f"warmup {warmup['warmup']}"}
    for ref in inputs:
        table = ref.get("digest") or ""
        if _TABLE_NAME.match(table) and "model_hash" in db.columns(table):
            pairs = db.score_models(table)
            if len(pairs) == 1:
                return {"model": pairs[0][0], "model_hash": pairs[0][1], "from": f"table {table}"}
    return {"model": None, "model_hash": None, "from": None}


def _format_of(path: str) -> str | None:
    """The format a file's name declares (what ingestion detects first), or None."""
    suffix = Path(path).suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet"}.get(suffix)


def _sources(rows: Sequence[ExportRow]) -> list[dict[str, Any]]:
    """The raw files the rows come from, with how many rows each gave, in first-use order."""
    by_batch: dict[str, dict[str, Any]] = {}
    for row in rows:
        lin = row.lineage
        entry = by_batch.setdefault(
            lin["batch"],
            {
                "batch": lin["batch"],
                "source": lin["source"],
                "source_file": lin["source_file"],
                "stored_file": lin["stored_file"],
                "file_sha256": lin["file_sha256"],
                "format": lin["fmt"] or _format_of(lin["source_file"] or lin["stored_file"] or ""),
                "rows": 0,
            },
        )
        entry["rows"] += 1
    return list(by_batch.values())


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def describe(
    db,
    replicate: Replicate,
    rows: Sequence[ExportRow],
    settings: dict[str, Any] | None,
    tracking_uri: str | None,
) -> dict[str, Any]:
    """The manifest's lineage part for one replicate (no format, counts or command yet)."""
    from dsel_assets.core.select.targeted import representation_needs, representations

    try:
        spec, representation = key_method(replicate.key)
    except KeyError:  # stored by a method this version no longer has
        method, representation, needs = None, None, None
    else:
        method, needs = spec.name, list(dict.fromkeys(representation_needs(spec.needs, representation).values()))
        if len(representations(spec.config_cls)) == 1:
            representation = None  # not a targeted method: no representation to choose
    row = replicate.row
    run = selection_run(tracking_uri, row.get("mlflow_run_id"))
    inputs = (run or {}).get("inputs") or []
    diagnostics = json.loads(row["diagnostics"]) if row.get("diagnostics") else None
    warmup = (diagnostics or {}).get("warmup")
    warmup_key = warmup.get("key") if isinstance(warmup, dict) else None
    identity = model_identity(db, inputs, row.get("created_at"), warmup_key)
    if identity["model"] is None and identity["model_hash"] is not None and settings:
        identity["model"] = settings.get("model")
    current, _ = db.pool_version()
    config = replicate.config
    return {
        "method": replicate.key,
        "method_name": method,
        "representation": representation,
        "needs": needs,
        "parameters": config,
        "budget": replicate.budget,
        "k": row.get("k"),
        "eligible": row.get("eligible"),
        "selection_seed": replicate.seed,
        "target": config.get("task"),
        "pool_version": row.get("pool_version"),
        "current_pool_version": current,
        "selection_run_id": row.get("mlflow_run_id"),
        "selection_created_at": _plain(row.get("created_at")),
        "diagnostics": diagnostics,
        "representation_settings": settings or None,
        "model": identity["model"],
        "model_hash": identity["model_hash"],
        "model_from": identity["from"],
        "selection_run": run,
        "sources": _sources(rows),
        "position": POSITION_NOTE,
    }


def manifest_path(out: Path) -> Path:
    """The manifest beside ``out``: its name without the suffix, then ``.manifest.json``."""
    stem = out.name[: -len(out.suffix)] if out.suffix else out.name
    return out.with_name(f"{stem}.manifest.json")


def entry_name(out: Path) -> str:
    """The LLaMA-Factory dataset name of ``out``: its name without the suffix."""
    return out.name[: -len(out.suffix)] if out.suffix else out.name


def dsel_version() -> str | None:
    try:
        return metadata.version("dsel")
    except metadata.PackageNotFoundError:
        return None


def _is_export_folder(path: Path) -> bool:
    """Whether ``path`` is a ``datasets`` save_to_disk folder (one ``--force`` may replace)."""
    return (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def check_target(fmt: str, out: Path, force: bool) -> None:
    """Refuse, before any work, to write over anything at ``out`` (the data, its manifest, its
    LLaMA-Factory entry) unless ``force``; never over a folder that is not an ``hf`` export."""
    if out.is_dir() and (fmt != "hf" or not _is_export_folder(out)):
        what = "a folder that is not a datasets export" if fmt == "hf" else "a folder"
        raise ValueError(f"out: {out} is {what}; give a new path (a file name for --format {fmt})")
    taken = [p for p in (out, manifest_path(out)) if p.exists()]
    info = out.parent / DATASET_INFO
    if fmt in writers.LLAMA_FACTORY_FORMATS and info.exists():
        entries = _read_dataset_info(info)
        if entry_name(out) in entries:
            taken.append(Path(f"{info} (entry {entry_name(out)!r})"))
    if taken and not force:
        raise ValueError(f"out: {', '.join(map(str, taken))} already exist(s); pass --force to replace")


def _read_dataset_info(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"out: {path} is not a readable dataset_info.json ({exc}); move it aside") from None
    if not isinstance(entries, dict):
        raise ValueError(f"out: {path} is not a dataset_info.json (a JSON object of datasets); move it aside")
    return entries


def write_export(
    fmt: str,
    rows: Sequence[ExportRow],
    lineage: dict[str, Any],
    out: Path,
    command: str | None,
    merge_dataset_info: bool = True,
    location: str | None = None,
) -> dict[str, Any]:
    """Write ``rows`` at ``out`` in ``fmt``, the LLaMA-Factory entry (sharegpt / alpaca) into
    ``dataset_info.json`` beside it (merged into an existing one when ``merge_dataset_info``),
    and the manifest last; returns the manifest. ``location``: where the data will live when
    ``out`` is a staging copy (an artifact URI)."""
    writers.check_format(fmt)
    head = {
        "dsel_export": MANIFEST_VERSION,
        "format": fmt,
        "file": out.name,
        "path": location or str(out),
        **lineage,
        "command": command,
        "dsel_version": dsel_version(),
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    embedded = {k: v for k, v in head.items() if k != "selection_run"}  # Parquet / datasets metadata
    written = writers.write(fmt, rows, out, embedded)
    info_path = None
    if written.dataset_info is not None:
        info_path = out.parent / DATASET_INFO
        entries = _read_dataset_info(info_path) if merge_dataset_info and info_path.exists() else {}
        entries[entry_name(out)] = written.dataset_info
        info_path.write_text(json.dumps(entries, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    manifest = {
        **head,
        "counts": written.counts,
        "dataset_info": {"file": DATASET_INFO, "name": entry_name(out), "entry": written.dataset_info}
        if written.dataset_info
        else None,
        "rows": [
            {k: v for k, v in row.lineage.items() if k not in ("method", "budget", "selection_seed", "fmt")}
            for row in rows
        ],
    }
    manifest_path(out).write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", "utf-8")
    return manifest


def command_line(
    home: str | None,
    method: str,
    budget: str,
    seed: int | None,
    target: str | None,
    fmt: str,
    out: str,
    force: bool,
) -> str:
    """The ``dsel export`` command that reproduces an export."""
    argv = ["dsel", *(["--home", home] if home else []), "export", "--method", method, "--budget", budget]
    argv += ["--seed", str(seed)] if seed is not None else []
    argv += ["--target", target] if target is not None else []
    argv += ["--format", fmt, "--out", out] + (["--force"] if force else [])
    return shlex.join(argv)


def export_selection(
    home,
    method: str,
    budget: str,
    fmt: str,
    out: str | Path,
    *,
    seed: int | None = None,
    target: str | None = None,
    force: bool = False,
    command: str | None = None,
    tracking_uri: str | None = None,
    log=print,
) -> dict[str, Any]:
    """``dsel export``: one stored selection of the state home ``home`` (a DselHome) written at
    ``out``; returns the manifest. Bad names are ValueErrors naming the stored choices."""
    from resources.settings import stored_settings

    writers.check_format(fmt)
    out = Path(out).expanduser().absolute()
    if state_db.database_url() is None and not Path(home.duckdb).is_file():
        raise ValueError(
            f"method: no stored selections yet in {home.root}; make one first: dsel select --method M --budget B"
        )
    with state_db.open_state(home.duckdb, read_only=True) as db:
        if not db.table_exists("selections"):
            raise ValueError("method: no stored selections yet; make one first: dsel select --method M --budget B")
        replicate, warnings = resolve(db.stored_selections(), method, budget, seed, target)
        check_target(fmt, out, force)
        rows = gather(db, replicate)
        lineage = describe(db, replicate, rows, stored_settings(home), tracking_uri)
    for warning in warnings:
        log(f"[dsel] warning: {warning}")
    manifest = write_export(fmt, rows, lineage, out, command)
    if manifest["counts"].get("system_turns_dropped"):
        log(
            f"[dsel] warning: {fmt} has no place for system turns; {manifest['counts']['system_turns_dropped']} dropped"
        )
    return manifest

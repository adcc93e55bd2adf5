"""Exports: every stored selection (or those the config names) written in a training layout
through the artifact store (the state home, or ``DSEL_ARTIFACTS_URI`` on S3), each with its
manifest; the logic is :mod:`dsel_assets.pipeline.export`."""

import json

import dagster as dg
from pydantic import Field

from dsel_assets.core.data.writers import FORMATS, check_format
from dsel_assets.pipeline import export
from dsel_assets.pipeline.catalog import selection_keys
from dsel_assets.pipeline.metadata import markdown_table
from dsel_assets.pipeline.names import EXPORTS, selection_asset_name
from dsel_assets.store import artifacts
from resources.home import StateHome
from resources.settings import stored_settings
from resources.store import StateStore
from resources.tracking import DatasetRef, MlflowTracker


class ExportConfig(dg.Config):
    """Which stored selections to export, and in which layout."""

    format: str = Field(default="messages", description=f"Layout: one of {', '.join(FORMATS)}")
    methods: list[str] = Field(
        default=[], description="Selection keys (less, round_robin_rds or round_robin@rds); empty = every stored one"
    )
    budgets: list[str] = Field(default=[], description="Budgets (5%, 5pct, 500); empty = every stored budget")


def export_key(replicate: export.Replicate, fmt: str) -> tuple[str, str]:
    """(folder under ``exports/<format>/``, data name) of one replicate's export."""
    folder = f"{replicate.key}/{replicate.budget}/seed{replicate.seed}"
    return folder, f"{replicate.key}_{replicate.budget}_seed{replicate.seed}{export.SUFFIXES[fmt]}"


@dg.asset(
    deps=[*map(selection_asset_name, selection_keys())],
    group_name=EXPORTS,
    code_version="selection_export-1",
    kinds={"duckdb"},
    description="Every stored selection (or those the config names) as a training file in the configured layout "
    "(original, messages, sharegpt, alpaca, parquet or a datasets folder), in rank order, with a manifest of its "
    "lineage and, for sharegpt / alpaca, a LLaMA-Factory dataset_info.json; under exports/<format>/ in the "
    "artifact store.",
)
def selection_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    store: StateStore,
    tracker: MlflowTracker,
    home: StateHome,
) -> dg.MaterializeResult:
    fmt = config.format
    check_format(fmt)
    with store.session() as db:
        db.ensure_schema()
        version, _ = db.pool_version()
        chosen = export.choose(db.stored_selections(), config.methods, config.budgets)
    if not chosen:
        raise RuntimeError("selection_export: no stored selections yet; materialize a selection_<method> asset first")
    settings = stored_settings(home.paths)
    root = home.paths.artifacts.uri(f"exports/{fmt}")
    done = []
    params = {"format": fmt, "pool_version": version, "selections": len(chosen)}
    with (
        tracker.run(context, params=params, inputs=[DatasetRef("selections", store.location, version)]) as run,
        home.paths.artifacts.objects.writing(root) as out,
    ):
        for replicate in chosen:
            with store.session() as db:
                rows = export.gather(db, replicate)
                lineage = export.describe(db, replicate, rows, settings, tracker.tracking_uri)
            folder, name = export_key(replicate, fmt)
            target = out.joinpath(*folder.split("/"))
            target.mkdir(parents=True, exist_ok=True)
            command = f"materialize {context.asset_key.to_user_string()} (run {context.run_id})"
            location = artifacts.join(root, *folder.split("/"), name)
            manifest = export.write_export(fmt, rows, lineage, target / name, command, False, location)
            counts = manifest["counts"]
            run.log_metrics({f"{replicate.key}.{replicate.budget}.seed{replicate.seed}.rows": counts["rows"]})
            done.append((replicate.key, replicate.budget, replicate.seed, counts["rows"], f"{folder}/{name}"))
            context.log.info(f"{replicate.label}: {counts['rows']} rows -> {manifest['path']}")
        index = out / "index.json"
        listed = [dict(zip(("method", "budget", "selection_seed", "rows", "path"), d, strict=True)) for d in done]
        index.write_text(json.dumps({"format": fmt, "exports": listed}, indent=2) + "\n", encoding="utf-8")
        run.log_artifact(str(index))
    return dg.MaterializeResult(
        metadata={
            "format": fmt,
            "path": dg.MetadataValue.path(root),
            "exports": dg.MetadataValue.md(
                markdown_table(["method", "budget", "seed", "rows", "path"], done, limit=500)
            ),
            "selections": len(done),
            "rows": sum(d[3] for d in done),
            "pool_version": version,
            **run.metadata(),
        },
    )

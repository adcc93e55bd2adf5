"""Asset checks: each passes on good data and fails on deliberately corrupted data; a failing
blocking check stops the run before downstream assets read the bad result."""

import dataclasses
import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from dsel_assets.core.data.validate import validate_file
from dsel_assets.core.select.knn_tsds import CheckpointFeatures
from dsel_assets.pipeline.assets.selection.selections import coverage
from dsel_assets.pipeline.checks import (
    batch_check,
    build_checks,
    content_overlap,
    disjointness_result,
    score_problems,
    selection_problems,
    vector_problems,
)
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.names import pool_batches
from dsel_assets.store import tables
from resources.store import DuckDBStateStore, open_state

from ..helpers import write_jsonl

IDS = [f"id{i}" for i in range(5)]


def selection_rows(ids, k=3, eligible=5, diagnostics="{}", version="v1") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "budget": "3",
            "k": k,
            "eligible": eligible,
            "rank": list(range(len(ids))),
            "pool_id": ids,
            "pool_version": version,
            "diagnostics": diagnostics,
        }
    )


def test_selection_coverage_is_judged_per_pool_batch():
    """A representation missing a whole pool batch (never computed) fails the selection; rows it
    excluded one by one with a reason (truncation) do not, and an old count-only record asks
    for a re-materialization."""
    pool = {"v1": set(IDS)}
    excluded_rows = {"less_scores": {"rows": 4, "batches_without_rows": []}}
    assert selection_problems(selection_rows(IDS[:3], diagnostics=json.dumps({"coverage": excluded_rows})), pool) == []
    missing = {"influence": {"rows": 3, "batches_without_rows": ["new-pool-abc"]}}
    problems = selection_problems(selection_rows(IDS[:3], diagnostics=json.dumps({"coverage": missing})), pool)
    assert len(problems) == 1 and "influence has no row for pool batch(es) ['new-pool-abc']" in problems[0]
    old = selection_problems(selection_rows(IDS[:3], diagnostics=json.dumps({"coverage": {"influence": 5}})), pool)
    assert old and "older format" in old[0]


def test_coverage_names_the_batches_without_rows():
    scores = np.array([[0.1, np.nan], [np.nan, np.nan], [np.nan, np.nan], [0.3, 0.2]])
    assert coverage(scores, ["a", "a", "b", "c"]) == {"rows": 2, "batches_without_rows": ["b"]}
    assert coverage({"math": np.full(2, np.nan)}, ["a", "b"]) == {"rows": 0, "batches_without_rows": ["a", "b"]}
    # every checkpoint must have the row: checkpoint 2 lacks row 3, so batch c has none
    checkpoints = CheckpointFeatures((scores, scores * np.array([[1.0], [1.0], [1.0], [np.nan]])), (0.5, 0.5))
    assert coverage(checkpoints, ["a", "a", "b", "c"]) == {"rows": 1, "batches_without_rows": ["b", "c"]}


def test_selection_problems():
    pool = {"v1": set(IDS)}
    assert selection_problems(selection_rows(IDS[:3]), pool) == []
    # under-filled with a stated reason, or limited by the eligible count: fine
    assert selection_problems(selection_rows(IDS[:2], diagnostics=json.dumps({"under_fill": 1})), pool) == []
    assert selection_problems(selection_rows(IDS[:2], eligible=2), pool) == []
    assert "expected" in selection_problems(selection_rows(IDS[:2]), pool)[0]  # short without a reason
    assert any("repeated" in p for p in selection_problems(selection_rows(["id0", "id0", "id1"]), pool))
    assert any("not in pool version" in p for p in selection_problems(selection_rows(["id0", "id1", "zz"]), pool))
    assert any("not recorded" in p for p in selection_problems(selection_rows(IDS[:3], version="v2"), pool))
    bad_ranks = selection_rows(IDS[:3]).with_columns(pl.lit(0).alias("rank"))
    assert any("ranks" in p for p in selection_problems(bad_ranks, pool))


def test_vector_problems():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(5, 8))
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    good = matrix.astype(np.float16)
    assert vector_problems(IDS, IDS, good, unit_norm=True) == []
    nan, inf, scaled = good.copy(), good.copy(), good.copy()
    nan[1, 3], inf[2, 0] = np.nan, np.inf
    scaled[4] *= 2
    assert any("NaN or inf" in p for p in vector_problems(IDS, IDS, nan, unit_norm=True))
    assert any("NaN or inf" in p for p in vector_problems(IDS, IDS, inf, unit_norm=False))
    assert any("not unit norm" in p for p in vector_problems(IDS, IDS, scaled, unit_norm=True))
    assert vector_problems(IDS, IDS, scaled, unit_norm=False) == []
    assert any("without a row" in p for p in vector_problems(IDS, IDS[:4], good[:4], unit_norm=True))
    assert vector_problems(IDS, IDS[:4], good[:4], unit_norm=True, allowed_missing=1) == []
    assert any("outside the batch" in p for p in vector_problems(IDS[:4], IDS, good, unit_norm=True))
    assert any("repeated" in p for p in vector_problems(IDS, [*IDS[:4], "id0"], good, unit_norm=True))


def test_score_problems():
    rows = pl.DataFrame({"pool_id": IDS, "reason": ["", "", "", "", "no_response_tokens"], "loss": [1.0] * 4 + [None]})
    assert score_problems(IDS, rows, ["loss"]) == []
    broken = rows.with_columns(
        pl.when(pl.col("pool_id") == "id1").then(float("inf")).otherwise(pl.col("loss")).alias("loss")
    )
    assert any("not finite" in p for p in score_problems(IDS, broken, ["loss"]))
    assert any("without a row" in p for p in score_problems(IDS, rows.head(3), ["loss"]))


def test_eval_disjointness_by_content(home, tmp_path):
    def chat(q: str, a: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})

    files = {
        "eval": [chat("What is 2+2?", "4"), chat("Capital of France?", "Paris")],
        "query": [chat("Name a colour.", "Red")],
        "pool": [chat("What is 2+2?  ", "Four."), chat("Name a fruit.", "Apple")],  # same prompt, other answer
    }
    with open_state(home.duckdb) as db:
        for split, lines in files.items():
            path = write_jsonl(tmp_path / f"{split}.jsonl", lines)
            manifest, _ = db.register_batch(path, home.raw, source=split, task="t", split=split)
            result = validate_file(path)
            db.replace_batch(
                manifest,
                tables.accepted_frame(manifest, result.accepted),
                tables.quarantine_frame(manifest, result.quarantined),
            )
        ids = {split: db.split_rows(split, ["pool_id"], order=("position",))["pool_id"].to_list() for split in files}
        assert content_overlap(db, ids["eval"], ids["query"]) == []
        assert disjointness_result(db, ids["eval"], {"query set": ids["query"]}).passed
        result = disjointness_result(db, ids["eval"], {"query set": ids["query"], "training selection": ids["pool"]})
        assert not result.passed and "prompt" in result.description
        # the first pool row (same prompt as an eval row) selected
        selected = {"method": ["random"], "budget": ["1"], "rank": [0], "pool_id": [ids["pool"][0]]}
        db.write_selection("random", "1", pl.DataFrame(selected, schema_overrides={"rank": pl.Int32}))
        # what the eval assets scored: every eval row, as if none had been left out before scoring
        db.ensure_schema()  # the eval tables
        for method in ("base", "random"):
            scored = pl.DataFrame({"method": method, "pool_id": ids["eval"]})
            db.replace_rows("eval_examples", {"method": method}, scored)
    # the blocking check of the evaluation assets, on the same store
    checks = {c.node_def.name: c for c in build_checks() if "eval_set_is_disjoint" in c.node_def.name}
    resources = {"store": DuckDBStateStore(database=str(home.duckdb))}
    assert checks["eval_base_eval_set_is_disjoint"](**resources).passed
    leaked = checks["eval_random_eval_set_is_disjoint"](**resources)
    assert not leaked.passed and "training selection" in leaked.description


def test_checks_run_with_the_assets_and_a_failing_one_blocks_downstream(home, tmp_path):
    """Good data: every check of the run passes. A selection claiming a pool version nobody
    recorded (a batch validated, the pool not re-materialized) fails its blocking check, and the
    report that would read it does not run."""
    defs = build_definitions(home, model="tiny", device="cpu")
    instance = dg.DagsterInstance.ephemeral()
    rows = [json.dumps({"question": f"What is {i} times 3?", "answer": f"{3 * i}"}) for i in range(8)]
    batches = []
    with open_state(home.duckdb) as db:
        for name, part in (("one", rows[:5]), ("two", rows[5:])):
            manifest, _ = db.register_batch(
                write_jsonl(tmp_path / f"{name}.jsonl", part), home.raw, source=name, task="math"
            )
            batches.append(manifest.batch)
    instance.add_dynamic_partitions(pool_batches.name, batches)
    batch_job = defs.resolve_job_def("batch_job")
    keys = [dg.AssetKey(k) for k in ("pool_batch", "pool", "sentence_embeddings", "loss_scores")]
    result = batch_job.execute_in_process(instance=instance, partition_key=batches[0], asset_selection=keys)
    evaluations = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"one_unit_vector_per_example": True, "one_score_row_per_example": True}

    curation = defs.resolve_job_def("curation_job")
    config = {"ops": {"selection_random": {"config": {"budgets": ["2"]}}}}
    targets = [dg.AssetKey("selection_random"), dg.AssetKey("selection_report")]
    good = curation.execute_in_process(instance=instance, asset_selection=targets, run_config=config)
    assert [e.passed for e in good.get_asset_check_evaluations()] == [True]

    batch_job.execute_in_process(instance=instance, partition_key=batches[1], asset_selection=keys[:1])
    bad = curation.execute_in_process(
        instance=instance, asset_selection=targets, run_config=config, raise_on_error=False
    )
    (evaluation,) = bad.get_asset_check_evaluations()
    assert not evaluation.passed and "not recorded" in evaluation.description
    assert not bad.success
    materialized = [e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()]
    assert materialized == ["selection_random"]  # the report never read the bad selection


def test_a_per_batch_score_check_is_generated_from_the_registry_declarations():
    """A per-batch score asset's check holds finite the columns its representations declare
    (``checked_columns``: loss_scores serves IFD and uncertainty, and holds both finite); a
    per-batch asset with neither declared columns nor a vector check is refused, naming both ways
    to give it one; pool-wide representations declare no checked columns."""
    from dsel_assets.pipeline import registry

    def required(asset: str) -> str:
        return next(iter(batch_check(asset).check_specs)).description

    assert required("loss_scores").startswith("One row per pool example of the batch; loss_conditioned, ")
    assert "ifd_loss_ratio, min_margin, mean_margin, mean_entropy, least_confidence" in required("loss_scores")
    assert "ifd_loss_ratio" in required("proxy_loss_scores") and "min_margin" not in required("proxy_loss_scores")
    assert "min_margin, mean_margin, mean_entropy, least_confidence" in required("greedy_scores")
    vectors = registry.lance_vectors(lambda ctx: "x")
    probe = registry.declare("probe", "probe_scores", vectors, "probe", registry.Value.VECTORS, per_batch=True)
    try:
        with pytest.raises(RuntimeError, match="checked_columns.*VECTOR_CHECKS"):
            batch_check("probe_scores")
        registry.REPRESENTATION_SPECS["probe"] = dataclasses.replace(probe, checked_columns=("length",))
        assert "length finite" in required("probe_scores")
        with pytest.raises(ValueError, match="per_batch"):
            registry.declare("pool_probe", "pool_probe", probe.load, "probe", probe.value, checked_columns=("x",))
    finally:
        registry.REPRESENTATION_SPECS.pop("probe")


def test_every_per_batch_representation_has_a_check_and_model_embeddings_and_greedy_scores_are_checked(home, tmp_path):
    """The per-batch representation assets of the registry each carry a check (model embeddings and
    greedy scores had none); both pass on what their assets wrote, and the embeddings' check fails
    on a corrupted row that the asset, resuming, keeps."""
    from dsel_assets.pipeline.registry import per_batch_assets
    from dsel_assets.pipeline.stored import vector_table
    from resources import build_resources

    defs = build_definitions(home, model="tiny", device="cpu")
    checked = {spec.asset_key.to_user_string() for check in build_checks() for spec in check.check_specs}
    assert set(per_batch_assets()) <= checked and {"model_embeddings", "greedy_scores"} <= checked

    instance = dg.DagsterInstance.ephemeral()
    rows = [json.dumps({"question": f"What is {i} times 3?", "answer": f"{3 * i}"}) for i in range(4)]
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(write_jsonl(tmp_path / "p.jsonl", rows), home.raw, source="p", task="math")
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    batch_job = defs.resolve_job_def("batch_job")
    keys = [dg.AssetKey(k) for k in ("pool_batch", "pool", "model_embeddings", "greedy_scores")]
    result = batch_job.execute_in_process(instance=instance, partition_key=manifest.batch, asset_selection=keys)
    evaluations = {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"model_embeddings": True, "greedy_scores": True}

    resources = build_resources(home, model="tiny", device="cpu")
    dataset = resources["model_embedding_settings"].dataset(resources["selection_model"].identity()["model_hash"])
    lance = resources["lance"]
    stored = lance.read(dataset, ["pool_id", "vector"], equal={"batch": manifest.batch})
    first = stored.column("pool_id").to_pylist()[0]
    width = len(stored.column("vector")[0])
    lance.upsert(dataset, vector_table([first], manifest.batch, np.full((1, width), np.nan), "tiny"), ["pool_id"])
    again = batch_job.execute_in_process(
        instance=instance, partition_key=manifest.batch, asset_selection=keys[:3], raise_on_error=False
    )
    (evaluation,) = again.get_asset_check_evaluations()
    assert not evaluation.passed and f"1 rows with NaN or inf (e.g. {first})" in evaluation.description

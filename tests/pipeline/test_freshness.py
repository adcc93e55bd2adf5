"""Freshness: every command computes what is missing or stale (Dagster's staleness: code versions
that include the settings, data versions from the pool up) and nothing mixes two models, two
settings or two pool versions. Each test is a sequence a user ran that failed before (tiny model)."""

from __future__ import annotations

import json

import dagster as dg
import lance
import pytest

from dsel_assets.app.cli import main
from dsel_assets.app.runs import materialize_closure
from dsel_assets.pipeline.code_location import build_definitions
from resources.store import open_state

from ..helpers import write_jsonl


@pytest.fixture()
def cli_home(home, monkeypatch):
    for name in ("DSEL_MODEL", "DSEL_GRAD_DIM", "DSEL_POOLING", "DSEL_PROXY_MODEL", "DSEL_TARGET_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    return home


def qa(path, rows: range, text: str = "What is {i} times 3?") -> str:
    records = [json.dumps({"question": text.format(i=i), "answer": f"It is {3 * i}."}) for i in rows]
    return str(write_jsonl(path, records))


def materializations(key: str) -> int:
    records = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey(key), limit=100).records
    return len(records)


def test_a_new_batch_after_less_recomputes_influence_not_the_warmup(cli_home, tmp_path, capsys):
    """Before: `less_scores covers 150 of 180`, then `selection_is_valid failed` (rc 1): influence
    was materialized once and never recomputed for the new batch."""
    query = qa(tmp_path / "q.jsonl", range(6), "What is {i} plus 4?")
    assert main(["ingest", query, "--split", "query", "--task", "math", "--model", "tiny"]) == 0
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(150)), "--task", "math"]) == 0
    select = ["select", "--method", "less", "--budget", "20%", "--target", "math", "--grad-dim", "128"]
    assert main(select) == 0
    assert main(["ingest", qa(tmp_path / "b.jsonl", range(150, 180), "Name colour {i}"), "--task", "general"]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    status = capsys.readouterr().out
    assert "influence" in status and "pool_grad_features missing in 1 of 3 batches" in status
    assert "kept (pool has a new data version" in status  # the warmup is not retrained for a grown pool
    assert main(select) == 0
    with open_state(cli_home.duckdb, read_only=True) as db:
        less = db.method_selections("less", ["k", "diagnostics"])
    selected = (less.height, less["k"].drop_nulls().first())
    covered = less["diagnostics"][0]
    assert selected == (36, 36)  # 20% of 180, not of the first 150
    assert all(c["rows"] == 180 for c in json.loads(covered)["coverage"].values())
    assert materializations("warmup_checkpoint") == 1 and materializations("influence") == 2
    capsys.readouterr()
    assert main(select) == 0  # nothing stale now: only the selection itself runs again
    assert materializations("influence") == 2 and "materializing selection_less ..." in capsys.readouterr().out


def save_other_tiny_model(folder) -> str:
    """A second tiny Llama (other weights: another model hash) saved in ``folder``."""
    from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama

    tokenizer = load_tokenizer(resolve("tiny"))
    tiny_llama(tokenizer, seed=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_ingest_change_settings_recomputes_scores_with_the_new_model_for_the_whole_pool(cli_home, tmp_path):
    """Before: `ingest --change-settings --model other`, then `select --method cherry_ifd` ranked
    loss scores of two models (the new batch with one, the old ones with the other)."""
    from dsel_assets.core.models.loading import model_hash, resolve

    other = save_other_tiny_model(tmp_path / "other-model")
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(40)), "--task", "math", "--model", "tiny"]) == 0
    assert main(["select", "--method", "uncertainty", "--budget", "10"]) == 0
    b = qa(tmp_path / "b.jsonl", range(40, 50), "Name colour {i}")
    assert main(["ingest", b, "--task", "general", "--change-settings", "--model", str(other)]) == 0
    assert main(["select", "--method", "uncertainty", "--budget", "10"]) == 0
    new = model_hash(resolve(str(other)))
    with open_state(cli_home.duckdb, read_only=True) as db:
        pool = db.split_rows("pool", ["pool_id"]).height
        scored = db.rows_matching("loss_scores", ["pool_id"], {"model_hash": new})["pool_id"]
    assert pool == 50 and scored.drop_nulls().n_unique() == 50  # every batch rescored with the new model


def test_compare_change_settings_builds_the_new_features_and_hostile_labels_pass(cli_home, tmp_path, capsys):
    """Before: `compare --change-settings --grad-dim 64` pinned 64 and re-selected from the d128
    features; a task named `c++` failed in MLflow after the fine-tunes, one named `$\\foo$` in
    matplotlib's mathtext."""
    code, tex = "c++", "$\\foo$"
    query = qa(tmp_path / "q.jsonl", range(4), "Print {i}")
    assert main(["ingest", query, "--split", "query", "--task", code, "--model", "tiny"]) == 0
    assert (
        main(
            ["ingest", qa(tmp_path / "e.jsonl", range(100, 106), "Print {i} twice"), "--split", "eval", "--task", code]
        )
        == 0
    )
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(40)), "--task", tex]) == 0
    assert main(["ingest", qa(tmp_path / "b.jsonl", range(40, 60), "Print {i} now"), "--task", code]) == 0
    assert main(["select", "--method", "less", "--budget", "10%", "--target", code, "--grad-dim", "128"]) == 0
    compare = ["compare", "--methods", "random", "less", "--budget", "10%", "--target", code, "--seeds", "1"]
    compare += ["--selection-seeds", "1", "--random-seeds", "2", "--epochs", "1", "--max-length", "64"]
    compare += ["--eval-max-length", "96", "--config", "warmup_checkpoint.epochs=1"]
    capsys.readouterr()
    assert main([*compare, "--change-settings", "--grad-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "changing grad_dim" in out and code in out
    assert "model: tiny (weights " in out  # the report says what its numbers are of
    with open_state(cli_home.duckdb, read_only=True) as db:
        less = [json.loads(r) for r in db.method_selections("less", ["settings"])["settings"].unique()]
        report = db.report("comparison_report")["task"].unique().to_list()
    # the selection read the new d=64 features, and they cover the whole pool (60 rows)
    (settings,) = less
    assert settings["grad_dim"] == 64 and settings["model"] == "tiny"
    assert (cli_home.lance / "influence_d64_rademacher0.lance").is_dir()
    pool_features = [p for p in cli_home.lance.iterdir() if p.name.startswith("pool_grad") and "d64_" in p.name]
    (pool_features,) = pool_features
    assert len(set(lance.dataset(str(pool_features)).to_table(columns=["pool_id"])["pool_id"].to_pylist())) == 60
    assert code in set(report)


def test_compare_embeds_a_batch_ingested_without_embed_before_the_fine_tunes(cli_home, tmp_path, capsys):
    """Before: stage 4 failed (`selection_report ... pool ids have no row`) after every fine-tune
    and eval, because one batch had been ingested without --embed."""
    task = "math"
    evals = qa(tmp_path / "e.jsonl", range(100, 104), "Add {i}")
    assert main(["ingest", evals, "--split", "eval", "--task", task, "--model", "tiny"]) == 0
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(30)), "--task", task, "--embed"]) == 0
    assert main(["ingest", qa(tmp_path / "b.jsonl", range(30, 40), "Name colour {i}"), "--task", "general"]) == 0
    compare = ["compare", "--methods", "random", "--budget", "5", "--target", task, "--seeds", "1"]
    compare += ["--random-seeds", "2", "--epochs", "1", "--max-length", "48", "--eval-max-length", "64", "--no-base"]
    capsys.readouterr()
    assert main(compare) == 0
    out = capsys.readouterr()
    stage_1 = (out.out + out.err).split("stage 2/4")[0]
    assert "materializing sentence_embeddings for batch b-pool" in stage_1


def test_a_config_asked_for_reruns_the_asset_an_unchanged_or_unspecified_one_does_not(cli_home, tmp_path):
    """Before: a changed setting of an upstream asset (``--config loss_scores.template=alpaca``) was
    ignored once the asset had been materialized: its code and data had not changed."""
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(12)), "--task", "math", "--model", "tiny"]) == 0
    defs, instance = build_definitions(cli_home, model="tiny"), dg.DagsterInstance.get()
    select = {"selection_uncertainty": {"config": {"budgets": ["5"]}}}

    def scored_with(scores: dict | None) -> int:
        ops = {**select, **({"loss_scores": {"config": scores}} if scores is not None else {})}
        materialize_closure(defs, instance, [dg.AssetKey("selection_uncertainty")], {"ops": ops}, log=lambda _: None)
        return materializations("loss_scores")

    assert scored_with(None) == 1
    assert scored_with({"template": "alpaca"}) == 2  # asked for another template: scored again
    assert scored_with({"template": "alpaca"}) == 2  # the same: kept
    assert scored_with(None) == 2  # not asked: what is stored is kept
    assert scored_with({"template": "chat"}) == 3  # the default, asked for, differs from the stored alpaca
    assert scored_with({}) == 3  # defaults filled in: {} is template=chat


def test_a_filter_that_leaves_no_row_fails_the_selection_and_stores_nothing(cli_home, tmp_path, capsys):
    """Before: cherry_ifd on a model under which no example had IFD <= 1 exited through a failed
    check ("no stored rows") after storing an empty selection."""
    assert main(["ingest", qa(tmp_path / "a.jsonl", range(12)), "--task", "math", "--model", "tiny"]) == 0
    capsys.readouterr()
    assert main(["select", "--method", "cherry_ifd", "--budget", "5", "--param", "max_ifd=0"]) == 1
    err = capsys.readouterr().err
    assert "cherry_ifd @ 5: selected 0 of 12 pool rows: none is eligible under {'max_ifd': 0.0" in err
    with open_state(cli_home.duckdb, read_only=True) as db:
        assert db.method_selections("cherry_ifd", ["pool_id"]).height == 0


HOSTILE_LABELS = ["c++", "$\\foo$", "a/b", "_x", "résumé 数学", "t" * 200]


def test_hostile_task_labels_pass_a_whole_comparison_and_a_model_switch(cli_home, tmp_path, capsys):
    """Labels are data: every hostile label is a pool task, an eval target, an MLflow metric key, a
    matplotlib title, a report row and a file name in one tiny comparison. Before: after a model
    switch the report failed on every rerun (`more than one row per (method, ...)`): eval rows of
    both models met in it."""
    for n, label in enumerate(HOSTILE_LABELS):
        rows = range(100 * n, 100 * n + 6)
        pool = qa(tmp_path / f"p{n}.jsonl", rows, f"Task {n}: {{i}}?")
        assert main(["ingest", pool, "--task", label, "--model", "tiny"]) == 0
        evals = qa(tmp_path / f"e{n}.jsonl", range(4), f"Eval {n}: {{i}} again?")
        assert main(["ingest", evals, "--split", "eval", "--task", label]) == 0
    compare = ["compare", "--methods", "random", "--budget", "12", "--seeds", "1", "--random-seeds", "2"]
    compare += ["--epochs", "1", "--max-length", "48", "--eval-max-length", "64", "--eval-per-task", "2"]
    capsys.readouterr()
    assert main([*compare, *(arg for label in HOSTILE_LABELS for arg in ("--target", label))]) == 0
    out = capsys.readouterr().out
    with open_state(cli_home.duckdb, read_only=True) as db:
        reported = set(db.report("comparison_report")["task"])
        evaluated = set(db.rows_matching("eval_scores", ["task"], {})["task"])
    assert set(HOSTILE_LABELS) <= reported and set(HOSTILE_LABELS) <= evaluated
    assert all(label in out for label in HOSTILE_LABELS)

    other = save_other_tiny_model(tmp_path / "other-model")
    targets = [arg for label in HOSTILE_LABELS[:2] for arg in ("--target", label)]
    assert main([*compare, *targets, "--change-settings", "--model", other]) == 0
    assert f"model: {other} (weights " in capsys.readouterr().out  # the report names the new model
    with open_state(cli_home.duckdb, read_only=True) as db:
        models = db.rows_matching("finetuned_models", ["base_model"], {})["base_model"].unique()
    assert len(models) == 2  # the old model's results stay queryable beside the new ones


def test_an_eval_set_that_changes_during_a_comparison_is_refused_not_intersected(cli_home, tmp_path):
    """Before: eval rows ingested while a comparison ran were silently intersected (20 of 40)."""
    from dsel_assets.app.compare import ComparePlan, check_plan
    from dsel_assets.app.runs import RunFailed

    assert main(["ingest", qa(tmp_path / "a.jsonl", range(20)), "--task", "math", "--model", "tiny"]) == 0
    assert main(["ingest", qa(tmp_path / "e.jsonl", range(4), "Add {i}"), "--split", "eval", "--task", "math"]) == 0
    plan = ComparePlan(methods=["random"], budgets=["5"], targets=["math"], eval_max_length=64, metric="loss")
    with open_state(cli_home.duckdb, read_only=True) as db:
        problems, plan = check_plan(plan, db)
    assert problems == [] and plan.eval_version
    grown = qa(tmp_path / "e2.jsonl", range(4, 8), "Add {i}")  # more eval rows arrive mid-comparison
    assert main(["ingest", grown, "--split", "eval", "--task", "math"]) == 0
    defs, instance = build_definitions(cli_home, model="tiny"), dg.DagsterInstance.get()
    with pytest.raises(RunFailed, match="the eval set changed during the comparison"):
        materialize_closure(defs, instance, [dg.AssetKey("eval_base")], plan.run_config(), log=lambda _: None)

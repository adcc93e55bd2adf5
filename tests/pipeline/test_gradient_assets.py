"""Gradient assets on the tiny model: warmup -> pool and query features -> influence, and
resume after an interruption."""

import numpy as np
import polars as pl
import pytest

from dsel_assets.core.models.features import FeatureConfig
from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
from dsel_assets.core.models.sft import encode_conversation
from dsel_assets.core.models.warmup import WarmupConfig, train_warmup
from dsel_assets.pipeline.assets.representations.gradients import write_pool_features
from resources.lance_store import LanceStore
from resources.store import open_state


class Interrupted(RuntimeError):
    pass


@pytest.fixture(scope="module")
def warmed(tmp_path_factory):
    from dsel_assets.core.data.schema import example_id
    from dsel_assets.core.data.synthetic import generate

    tokenizer = load_tokenizer(resolve("tiny"))
    items = [(example_id(r["messages"]), r["messages"]) for r in generate(seed=2, per_capability=4).pool]
    encoded = [encode_conversation(tokenizer, m, 128) for _, m in items[:8]]
    out = tmp_path_factory.mktemp("warmup")
    checkpoints = train_warmup(
        tiny_llama(tokenizer),
        encoded,
        WarmupConfig(epochs=2, batch_size=4, lr=1e-3),
        out,
        tokenizer.pad_token_id,
        log=lambda _: None,
    )
    return tokenizer, items, [(c.epoch, c.path) for c in checkpoints]


def features(store, name):
    table = store.read(name, ["pool_id", "checkpoint", "vector"]).to_pylist()
    return {(r["pool_id"], r["checkpoint"]): np.asarray(r["vector"], dtype=np.float32) for r in table}


def test_interrupted_run_resumes_to_identical_features(warmed, tmp_path):
    tokenizer, items, checkpoints = warmed
    config = FeatureConfig(dim=64, chunk=5, batch_size=3, max_length=128)
    base = tiny_llama(tokenizer)
    fresh = LanceStore(root=str(tmp_path / "fresh"))
    write_pool_features(fresh, "f", "b1", items, "w1", checkpoints, base, tokenizer, config, log=lambda _: None)

    resumed = LanceStore(root=str(tmp_path / "resumed"))
    calls = {"n": 0}

    def crash_after_two_chunks(done, total):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        write_pool_features(
            resumed,
            "f",
            "b1",
            items,
            "w1",
            checkpoints,
            base,
            tokenizer,
            config,
            log=lambda _: None,
            on_chunk=crash_after_two_chunks,
        )
    assert resumed.read("f").num_rows == 5  # the first chunk was written; the second was lost
    stats = write_pool_features(
        resumed, "f", "b1", items, "w1", checkpoints, base, tokenizer, config, log=lambda _: None
    )
    assert stats["reused"] == 5 and stats["computed"] == 2 * len(items) - 5
    a, b = features(fresh, "f"), features(resumed, "f")
    assert a.keys() == b.keys() and len(a) == 2 * len(items)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=2e-3)
        assert abs(np.linalg.norm(a[key]) - 1) < 2e-3
    # a third run has nothing to do; a new warmup replaces the batch's stale rows
    assert (
        write_pool_features(resumed, "f", "b1", items, "w1", checkpoints, base, tokenizer, config, log=lambda _: None)[
            "computed"
        ]
        == 0
    )
    # another warmup of the same pool (dsel compare's warmup seeds) is written beside it when kept:
    # the key includes the warmup, so w1's rows are neither overwritten nor deleted, and not recomputed
    write_pool_features(
        resumed, "f", "b1", items, "w2", checkpoints[:1], base, tokenizer, config, log=lambda _: None, keep=["w1"]
    )
    assert resumed.read("f").num_rows == 3 * len(items)
    again = write_pool_features(
        resumed, "f", "b1", items, "w1", checkpoints, base, tokenizer, config, log=lambda _: None, keep=["w2"]
    )
    assert again["computed"] == 0 and again["reused"] == 2 * len(items)
    assert features(resumed, "f").keys() == b.keys()  # (pool_id, checkpoint) of w1 and w2 overlap
    w1 = {(r["pool_id"], r["checkpoint"]) for r in resumed.read("f").to_pylist() if r["warmup"] == "w1"}
    assert w1 == b.keys()
    # a warmup that keeps no other (another pool version or model): the batch's stale rows go
    write_pool_features(
        resumed, "f", "b1", items[:3], "w3", checkpoints[:1], base, tokenizer, config, log=lambda _: None
    )
    assert resumed.read("f").num_rows == 3


def test_gradient_chain_in_the_default_job(home, capsys):
    from dsel_assets.app.cli import main

    assert (
        main(
            [
                "run",
                "--model",
                "tiny",
                "--per-capability",
                "10",
                "--budgets",
                "10%",
                "--grad-dim",
                "64",
                "--warmup-epochs",
                "2",
            ]
        )
        == 0
    )
    with open_state(home.duckdb, read_only=True) as db:
        n_pool = db.split_rows("pool", ["pool_id"]).height
        n_query = db.split_rows("query", ["pool_id"]).height
        columns = db.rows_matching("influence_columns", ["task"], {}).group_by("task").len().rows()
        less_scores = db.less_scores().group_by("task")
        less = less_scores.agg(pl.len(), pl.col("score").min().alias("lo"), pl.col("score").max().alias("hi")).rows()
        warmup = db.rows_matching("warmups", ["warmup", "path"], {}).rows()
    assert len(warmup) == 1 and sum(n for _, n in columns) == n_query
    assert len(less) == 6 and all(n == n_pool and -1 <= lo <= hi <= 1 for _, n, lo, hi in less)
    store = LanceStore(root=str(home.lance))
    pool_feats = store.read("pool_grad_features_d64_rademacher0")
    assert pool_feats.num_rows == 2 * n_pool  # two checkpoints
    vectors = np.asarray(pool_feats.column("vector").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)
    matrix = store.read("influence_d64_rademacher0")
    scores = np.asarray(matrix.column("scores").to_pylist())
    assert scores.shape == (n_pool, n_query) and np.abs(scores).max() <= 1 + 1e-5
    # the manifest links the warmup to its base model, pool version and config
    import json
    from pathlib import Path

    manifest = json.loads((Path(warmup[0][1]) / "manifest.json").read_text())
    assert manifest["base_model"]["model"] == "tiny" and len(manifest["checkpoints"]) == 2
    assert manifest["pool_version"] and manifest["code_version"] == "warmup_checkpoint-1"


def test_dsel_select_materializes_only_what_is_missing(home, capsys):
    from dsel_assets.app.cli import main

    assert (
        main(
            [
                "run",
                "--model",
                "tiny",
                "--per-capability",
                "6",
                "--budgets",
                "5",
                "--grad-dim",
                "64",
                "--warmup-epochs",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(["select", "--method", "bids", "--budget", "8", "--budget", "4", "--model", "tiny", "--grad-dim", "64"])
        == 0
    )
    out = capsys.readouterr().out
    assert "selection_bids" in out and "warmup_checkpoint" not in out  # representations reused
    assert (
        main(
            [
                "select",
                "--method",
                "round_robin",
                "--budget",
                "6",
                "--target",
                "arithmetic",
                "--model",
                "tiny",
                "--grad-dim",
                "64",
            ]
        )
        == 0
    )
    with open_state(home.duckdb, read_only=True) as db:
        selections = db.rows_matching("selections", ["method", "budget"], {})
    sizes = dict(selections.group_by(pl.concat_str("method", pl.lit("@"), "budget")).len().rows())
    assert sizes["bids@8"] == 8 and sizes["bids@4"] == 4 and sizes["round_robin@6"] == 6
    assert main(["select", "--method", "mig", "--budget", "5", "--model", "tiny", "--grad-dim", "64"]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        assert db.rows_matching("selections", ["pool_id"], {"method": "mig"}).height == 5
        assert db.rows_matching("label_vocab", ["how"], {})["how"].drop_nulls().n_unique() == 1
    capsys.readouterr()
    assert main(["select", "--method", "nuggets", "--budget", "5", "--model", "tiny", "--grad-dim", "64"]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        golden = db.rows_matching("golden_score", ["golden_score", "anchors"], {})
    gs, anchors = golden["golden_score"].to_list(), golden["anchors"].drop_nulls().first()
    assert all(abs(g * anchors - round(g * anchors)) < 1e-9 for g in gs)  # GS is a multiple of 1/|A|
    capsys.readouterr()
    # an iterative method: LoRA training between rounds, each round a nested MLflow run
    assert (
        main(
            [
                "select",
                "--method",
                "diversify_conquer",
                "--budget",
                "9",
                "--model",
                "tiny",
                "--grad-dim",
                "64",
                "--param",
                "n_clusters=3",
            ]
        )
        == 0
    )
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home.mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("dsel").experiment_id], max_results=1000)
    rounds = [r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("diversify_conquer@9 round")]
    parents = {r.info.run_id for r in runs if r.data.tags.get("dagster.asset_key") == "selection_diversify_conquer"}
    assert len(rounds) == 2 and all(r.data.tags["mlflow.parentRunId"] in parents for r in rounds)
    capsys.readouterr()
    assert main(["select", "--method", "no_such_method", "--budget", "5"]) == 2
    assert "is not one of" in capsys.readouterr().err
    assert main(["select", "--method", "bids", "--budget", "5", "--target", "x"]) == 2  # not targeted by task
    assert main(["select", "--method", "round_robin", "--budget", "5", "--param", "nope=1"]) == 2
    assert "valid: representation (one of less|rds|embed, default 'less')" in capsys.readouterr().err

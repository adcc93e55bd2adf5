"""Targeted selectors over the study's representations (LESS gradients, RDS+ model embeddings,
sentence embeddings): the streamed similarity assets, the (method, representation) selection
assets and `dsel select --param representation=...`, on a pool whose nearest neighbours of the
query rows are known by construction."""

import json

import dagster as dg
import numpy as np
import polars as pl
import pytest

from dsel_assets.core.data.schema import example_id, example_text
from dsel_assets.core.influence import less_task_scores
from dsel_assets.core.models.templates import render_chat
from dsel_assets.core.select import build_config, get, methods
from dsel_assets.core.select.targeted import Influence, cosine_scores, representation_needs, representations
from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.reporting.reports import selection_report_frame
from dsel_assets.pipeline.assets.representations.embeddings import model_embeddings, sentence_embeddings
from dsel_assets.pipeline.assets.representations.similarity import embed_similarity, rds_similarity
from dsel_assets.pipeline.assets.selection.selections import (
    build_selection_asset,
    load_representation,
    selection_assets,
)
from dsel_assets.pipeline.checks import build_selection_check
from dsel_assets.pipeline.names import EMBED_SIMILARITY, RDS_SIMILARITY, pool_batches, selection_asset_name
from resources.gradient_settings import GradientSettings
from resources.models import ModelEmbeddingSettings
from resources.store import open_state

from ..helpers import write_jsonl

#: SmolLM2's chat template adds this system turn when a conversation has none, and sentence
#: encoders never see system turns: a query with it prepended is another example (another id)
#: whose rendered conversation and encoder text are the query's own.
TEMPLATE_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUERIES = [
    ("geography", "Which river flows through the city of Cairo?", "The Nile flows through Cairo."),
    ("cooking", "How long should I boil an egg for a soft yolk?", "About six minutes for a soft yolk."),
    ("astronomy", "Why does the Moon show phases during the month?", "Sunlight hits it from changing angles."),
]
UNRELATED = [
    ("Convert 12 kilometres to metres.", "12 kilometres are 12000 metres."),
    ("Reverse the string 'planet'.", "Reading it backwards gives tenalp."),
    ("Name a prime number larger than 20.", "23 is a prime number."),
    ("Write a haiku about autumn leaves.", "Red leaves drift slowly, the wind hums, the branches rest."),
    ("What is the plural of 'mouse'?", "The plural is 'mice'."),
    ("Sort the numbers 5, 2, 9 in ascending order.", "2, 5, 9."),
    ("Give a synonym for 'happy'.", "Joyful."),
    ("How many legs does a spider have?", "A spider has eight legs."),
]
TARGETED = sorted(name for name, spec in methods().items() if len(representations(spec.config_cls)) > 1)


def chat(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def copies() -> list[list[dict]]:
    return [[{"role": "system", "content": TEMPLATE_SYSTEM}, *chat(q, a)] for _, q, a in QUERIES]


def write_sets(tmp_path):
    """(queries file, pool file, ids of the pool copies of the query rows in query order)."""
    queries = [json.dumps({"messages": chat(q, a), "task": task}) for task, q, a in QUERIES]
    pool_rows = [json.dumps({"messages": m, "task": "copy"}) for m in copies()]
    pool_rows += [json.dumps({"messages": chat(q, a), "task": "other"}) for q, a in UNRELATED]
    return (
        write_jsonl(tmp_path / "queries.jsonl", queries),
        write_jsonl(tmp_path / "pool.jsonl", pool_rows),
        [example_id(m) for m in copies()],
    )


def test_every_targeted_selector_takes_a_representation_and_gets_one_asset_per_representation():
    assert {"round_robin", "doubly_greedy", "uot", "knn_uniform", "knn_kde", "bids", "less", "g2is"} <= set(TARGETED)
    assert representations(get("cluster_ucb").config_cls) == ("less",)  # gradients by definition
    assert build_config("round_robin", {"representation": "rds"}).representation == "rds"
    assert build_config("bids").representation == "less"
    with pytest.raises(ValueError, match="round_robin.representation"):
        build_config("round_robin", {"representation": "tfidf"})
    assert representation_needs(("influence", "pool_gradients"), "less") == {
        "influence": "influence",
        "pool_gradients": "pool_gradients",
    }
    assert representation_needs(("pool_gradients", "query_gradients"), "embed") == {
        "pool_gradients": "sentence_embeddings",
        "query_gradients": "embed_queries",
    }
    keys = {a.key.to_user_string(): a for a in selection_assets}
    for name in TARGETED:
        for suffix in ("", "_rds", "_embed"):
            asset = keys[selection_asset_name(name + suffix)]
            assert asset.metadata_by_key[asset.key]["method"] == name + suffix  # what is stored and checked
    assert "selection_cluster_ucb_rds" not in keys
    assert dg.AssetKey(RDS_SIMILARITY) in keys["selection_round_robin_rds"].dependency_keys
    assert dg.AssetKey(EMBED_SIMILARITY) in keys["selection_g2is_embed"].dependency_keys


def test_cosine_scores_stream_to_the_same_matrix_in_any_chunking():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(50, 16)).astype(np.float32)
    queries = rng.normal(size=(4, 16)).astype(np.float32)
    ids = [f"p{i:02d}" for i in range(50)]
    pool_ids = ids[:45] + ["never_embedded"]  # five stored rows are not in the pool; one pool id has no row
    whole = cosine_scores(pool_ids, queries, [(ids, vectors)])
    chunked = cosine_scores(pool_ids, queries, [(ids[i : i + 7], vectors[i : i + 7]) for i in range(0, 50, 7)])
    assert whole[0] == chunked[0] == ids[:45]
    np.testing.assert_array_equal(whole[1], chunked[1])
    unit = vectors[:45] / np.linalg.norm(vectors[:45], axis=1, keepdims=True)
    expected = unit @ (queries / np.linalg.norm(queries, axis=1, keepdims=True)).T
    np.testing.assert_allclose(whole[1], expected, atol=1e-6)
    with pytest.raises(ValueError, match="p03 has more than one row"):
        cosine_scores(pool_ids, queries, [(ids[:5], vectors[:5]), (ids[3:4], vectors[3:4])])


def test_task_scores_are_the_less_aggregation_of_the_columns():
    rng = np.random.default_rng(1)
    scores = rng.uniform(-1, 1, (20, 5)).astype(np.float32)
    scores[3] = np.nan
    similarity = Influence(scores, ("a", "a", "a", "b", "b"), ("x", "y", "y", "", ""))
    got = similarity.task_scores()
    np.testing.assert_array_equal(got["a"], less_task_scores(scores[:, :3], ["x", "y", "y"]))
    np.testing.assert_array_equal(got["b"], scores[:, 3:].mean(axis=1))
    assert np.isnan(got["a"][3]) and np.isnan(got["b"][3])


def load(name, resources, pool_ids):
    return load_representation(
        name,
        resources["lance"],
        resources["store"],
        pool_ids,
        GradientSettings(),
        resources["selection_model"],
        embedding_settings=resources["model_embedding_settings"],
        sentence_settings=resources["sentence_embedding_settings"],
    )[0]


def test_each_representation_ranks_identical_copies_of_the_queries_first(home, local_resources, tmp_path, tokenizer):
    for (_, q, a), copy in zip(QUERIES, copies(), strict=True):  # the construction holds
        assert render_chat(tokenizer, copy) == render_chat(tokenizer, chat(q, a))
        assert example_text(copy) == example_text(chat(q, a))
    resources = {**local_resources, "model_embedding_settings": ModelEmbeddingSettings(pooling="position_weighted")}
    query_file, pool_file, copy_ids = write_sets(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    with open_state(home.duckdb) as db:
        batches = [
            db.register_batch(path, home.raw, source=path.stem, task="auto", split=split)[0].batch
            for path, split in ((query_file, "query"), (pool_file, "pool"))
        ]
    instance.add_dynamic_partitions(pool_batches.name, batches)
    for batch in batches:
        per_batch = [pool_batch, pool, sentence_embeddings, model_embeddings]
        assert dg.materialize(per_batch, partition_key=batch, resources=resources, instance=instance).success
    with open_state(home.duckdb, read_only=True) as db:
        pool_ids = db.split_rows("pool", ["pool_id"])["pool_id"]
    pool_ids = pool_ids.to_list()
    assert set(copy_ids) < set(pool_ids) and len(pool_ids) == len(QUERIES) + len(UNRELATED)

    for asset, name in ((rds_similarity, RDS_SIMILARITY), (embed_similarity, EMBED_SIMILARITY)):
        matrices = []
        for chunk in (2, 4096):  # streamed in chunks smaller than the pool: the same matrix
            config = {"ops": {name: {"config": {"chunk": chunk}}}}
            assert dg.materialize([asset], resources=resources, instance=instance, run_config=config).success
            matrices.append(load(name, resources, pool_ids))
        similarity = matrices[0]
        np.testing.assert_array_equal(similarity.scores, matrices[1].scores)
        assert similarity.scores.shape == (len(pool_ids), len(QUERIES))
        assert similarity.tasks == tuple(sorted(task for task, _, _ in QUERIES))  # columns in (task, id) order
        by_task = {task: copy_id for (task, _, _), copy_id in zip(QUERIES, copy_ids, strict=True)}
        for column, task in enumerate(similarity.tasks):  # each query row's nearest pool row is its copy
            ranked = np.argsort(-similarity.scores[:, column], kind="stable")
            assert pool_ids[ranked[0]] == by_task[task], name
            assert similarity.scores[ranked[0], column] == pytest.approx(1.0, abs=1e-3)
            assert similarity.scores[ranked[1], column] < 1 - 1e-3
        task_scores = load(name.replace("similarity", "task_scores"), resources, pool_ids)
        assert set(task_scores) == set(similarity.tasks)

        # round-robin over the representation takes the copies first, one per query row
        selection = build_selection_asset(get("round_robin"), name.split("_")[0])
        run_config = {"ops": {selection.key.to_user_string(): {"config": {"budgets": [str(len(QUERIES))]}}}}
        method = selection.metadata_by_key[selection.key]["method"]
        check = build_selection_check(method)  # the blocking check finds the rows by the stored method key
        result = dg.materialize([selection, check], resources=resources, instance=instance, run_config=run_config)
        assert all(e.passed for e in result.get_asset_check_evaluations())
        with open_state(home.duckdb, read_only=True) as db:
            rows = db.method_selections(method, ["pool_id", "diagnostics", "config"])
        assert set(rows["pool_id"]) == set(copy_ids), method
        coverage = json.loads(rows["diagnostics"][0])["coverage"]  # checked like influence
        assert coverage == {name: {"rows": len(pool_ids), "batches_without_rows": []}}
        assert json.loads(rows["config"][0])["representation"] == name.split("_")[0]
    with open_state(home.duckdb) as db:  # the report shows each (method, representation) apart
        report = selection_report_frame(db, resources["lance"])
    assert report["method"].to_list() == ["round_robin_embed", "round_robin_rds"]
    assert report["query_similarity"].is_not_null().all()


def test_instruction_sentence_text_finds_a_query_asked_again_whatever_the_answer(home, tmp_path):
    from resources import build_resources

    resources = build_resources(home, model="tiny", device="cpu", sentence_text="instruction")
    queries = [json.dumps({"messages": chat(q, a), "task": task}) for task, q, a in QUERIES]
    asked_again = [chat(q, "I would rather talk about something else today.") for _, q, _ in QUERIES]
    pool_rows = [json.dumps({"messages": m, "task": "copy"}) for m in asked_again]
    pool_rows += [json.dumps({"messages": chat(q, a), "task": "other"}) for q, a in UNRELATED]
    instance = dg.DagsterInstance.ephemeral()
    with open_state(home.duckdb) as db:
        batches = [
            db.register_batch(path, home.raw, source=path.stem, task="auto", split=split)[0].batch
            for path, split in (
                (write_jsonl(tmp_path / "queries.jsonl", queries), "query"),
                (write_jsonl(tmp_path / "pool.jsonl", pool_rows), "pool"),
            )
        ]
    instance.add_dynamic_partitions(pool_batches.name, batches)
    for batch in batches:
        per_batch = [pool_batch, pool, sentence_embeddings]
        assert dg.materialize(per_batch, partition_key=batch, resources=resources, instance=instance).success
    assert dg.materialize([embed_similarity], resources=resources, instance=instance).success
    lance = resources["lance"]
    assert lance.exists("sentence_embeddings_instruction") and lance.exists("embed_similarity_instruction")
    assert not lance.exists("sentence_embeddings") and not lance.exists("embed_similarity")
    with open_state(home.duckdb, read_only=True) as db:
        pool_ids = db.split_rows("pool", ["pool_id"])["pool_id"].to_list()
    similarity = load(EMBED_SIMILARITY, resources, pool_ids)
    again = {example_id(m) for m in asked_again}
    for column in range(len(QUERIES)):  # the question asked again is each query row's nearest, at cosine 1
        ranked = np.argsort(-similarity.scores[:, column], kind="stable")
        assert pool_ids[ranked[0]] in again
        assert similarity.scores[ranked[0], column] == pytest.approx(1.0, abs=1e-3)
    # what the whole conversations would have given: the other answer moves the copy away
    embedder = resources["embedder"]
    conversation = embedder.encode([example_text(chat(q, a)) for _, q, a in QUERIES])
    other = embedder.encode([example_text(m) for m in asked_again])
    assert (np.sum(conversation * other, axis=1) < 0.95).all()


def test_dsel_select_routes_each_representation_to_its_own_selection(home, tmp_path, capsys, monkeypatch):
    from dsel_assets.app.cli import main

    monkeypatch.setenv("DSEL_MODEL", "tiny")
    monkeypatch.delenv("DSEL_POOLING", raising=False)
    query_file, pool_file, copy_ids = write_sets(tmp_path)
    assert main(["ingest", str(query_file), "--split", "query", "--task", "auto"]) == 0
    assert main(["ingest", str(pool_file), "--task", "auto"]) == 0
    budget = ["--budget", str(len(QUERIES))]
    assert main(["select", "--method", "round_robin", "--param", "representation=embed", *budget]) == 0
    assert "selection_round_robin_embed" in capsys.readouterr().out
    assert main(["select", "--method", "round_robin", "--param", "representation=rds", *budget]) == 2
    captured = capsys.readouterr()  # RDS+ is defined on position-weighted pooling: refused before any work
    assert "position_weighted" in captured.err and "materializing" not in captured.out
    assert main(["score", "model_embeddings", "--pooling", "position_weighted", "--change-settings"]) == 0
    assert main(["select", "--method", "round_robin", "--param", "representation=rds", *budget]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        selections = db.rows_matching("selections", ["method", "pool_id"], {})
    stored = selections.group_by("method").agg(pl.col("pool_id")).rows()
    assert {method: set(ids) for method, ids in stored} == {
        "round_robin_embed": set(copy_ids),
        "round_robin_rds": set(copy_ids),
    }
    capsys.readouterr()
    assert main(["select", "--method", "random", "--param", "representation=rds", *budget]) == 2
    assert "unknown parameter" in capsys.readouterr().err
    assert main(["select", "--method", "bids", "--param", "representation=tfidf", *budget]) == 2
    assert "bids.representation" in capsys.readouterr().err

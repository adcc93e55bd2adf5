"""Model-based representation assets materialized through Dagster on the tiny model."""

import json

import dagster as dg
import numpy as np
import polars as pl

from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.representations.embeddings import model_embeddings
from dsel_assets.pipeline.assets.representations.scores import (
    golden_score,
    greedy_scores,
    learning_percentage,
    whisperer_score,
)
from dsel_assets.pipeline.assets.selection.selections import load_representation
from dsel_assets.pipeline.names import pool_batches
from dsel_assets.pipeline.registry import UNCERTAINTY_COLUMNS
from dsel_assets.pipeline.scoring import GREEDY_MAX_NEW_TOKENS
from resources.gradient_settings import GradientSettings
from resources.models import ModelEmbeddingSettings
from resources.store import open_state

from ..helpers import write_jsonl


def stored(home, table: str, columns: list[str], order: tuple[str, ...] = ("pool_id",)) -> pl.DataFrame:
    """``columns`` of every row of ``table`` in the state database, sorted by ``order``."""
    with open_state(home.duckdb, read_only=True) as db:
        rows = db.rows_matching(table, columns, {})
    return rows.sort(list(order)) if order else rows


def pool_ids_of(home) -> list[str]:
    """Every stored example's id, sorted."""
    return stored(home, "examples", ["pool_id"])["pool_id"].to_list()


def ingest(home, tmp_path, resources, n: int = 9) -> tuple[str, dg.DagsterInstance]:
    rows = [json.dumps({"question": f"What is {i} times {i + 1}?", "answer": f"{i * (i + 1)}"}) for i in range(n)]
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(write_jsonl(tmp_path / "qa.jsonl", rows), home.raw, source="qa", task="math")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    assert dg.materialize([pool_batch, pool], partition_key=manifest.batch, resources=resources, instance=instance)
    return manifest.batch, instance


def test_model_embeddings_asset_names_its_pooling_and_model_and_resumes(home, local_resources, tmp_path):
    resources = {**local_resources, "model_embedding_settings": ModelEmbeddingSettings(pooling="last_token")}
    batch, instance = ingest(home, tmp_path, resources)
    result = dg.materialize([model_embeddings], partition_key=batch, resources=resources, instance=instance)
    meta = result.asset_materializations_for_node("model_embeddings")[0].metadata
    name = meta["lance_dataset"].value
    assert name == f"model_embeddings_last_token_2048_bos_{meta['model_hash'].value}"
    assert meta["pooling"].value == "last_token"
    assert (meta["rows"].value, meta["computed"].value) == (9, 9)
    lance = resources["lance"]
    table = lance.read(name)
    vectors = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    assert vectors.shape == (9, 64) and set(table.column("model").to_pylist()) == {"tiny"}
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=2e-3)

    # an interrupted batch: only the missing rows are computed again, to the same vectors
    lost = table.column("pool_id").to_pylist()[:4]
    lance.delete(name, {"batch": batch}, not_in=("pool_id", table.column("pool_id").to_pylist()[4:]))
    again = dg.materialize([model_embeddings], partition_key=batch, resources=resources, instance=instance)
    meta = again.asset_materializations_for_node("model_embeddings")[0].metadata
    assert (meta["computed"].value, meta["reused_after_resume"].value) == (4, 5)
    pool_ids = pool_ids_of(home)
    loaded, ref = load_representation(
        "model_embeddings",
        lance,
        resources["store"],
        pool_ids,
        GradientSettings(),
        resources["selection_model"],
        embedding_settings=resources["model_embedding_settings"],
    )
    assert ref.name == name and loaded.shape == (9, 64)
    by_id = dict(zip(table.column("pool_id").to_pylist(), vectors, strict=True))
    for pid in lost:
        np.testing.assert_allclose(loaded[pool_ids.index(pid)], by_id[pid], atol=2e-3)


def test_greedy_uncertainty_asset_scores_the_models_own_answers(home, local_resources, tmp_path):
    batch, instance = ingest(home, tmp_path, local_resources, n=5)
    result = dg.materialize([greedy_scores], partition_key=batch, resources=local_resources, instance=instance)
    assert result.asset_materializations_for_node("greedy_scores")[0].metadata["rows"].value == 5
    columns = ["model", "template", "code_version", "response_tokens", "least_confidence", "loss_conditioned"]
    scores = stored(home, "greedy_scores", [*columns, "reason", "pool_id"])
    loss_sum = (pl.col("loss_conditioned") * pl.col("response_tokens")).alias("loss_sum")
    rows = scores.select(*columns[:5], loss_sum, "reason", "pool_id").rows()
    assert {r[:3] for r in rows} == {("tiny", rows[0][1], "greedy_scores-1")}
    for *_, tokens, least_confidence, loss_sum, reason, _ in rows:  # greedy tokens are each the top-1 choice
        assert (reason == "" and 0 < tokens <= GREEDY_MAX_NEW_TOKENS) or (tokens == 0 and "greedy" in reason)
        assert reason or abs(least_confidence - loss_sum) <= 1e-3 * abs(loss_sum)
    # the declared representation of these scores loads them for a selection
    pool_ids = [r[-1] for r in rows]
    loaded, ref = load_representation(
        "uncertainty_greedy", local_resources["lance"], local_resources["store"], pool_ids, GradientSettings()
    )
    assert sorted(loaded) == sorted(UNCERTAINTY_COLUMNS)
    assert (ref.name, ref.digest) == ("uncertainty_greedy", "greedy_scores")
    np.testing.assert_allclose(loaded["least_confidence"], [np.nan if r[4] is None else r[4] for r in rows])


def test_golden_score_resumes_and_keeps_its_anchor_set(home, local_resources, tmp_path):
    batch, instance = ingest(home, tmp_path, local_resources, n=6)
    config = {"ops": {"golden_score": {"config": {"anchors": "source:qa", "batch_size": 4}}}}

    def run():
        result = dg.materialize([golden_score], resources=local_resources, instance=instance, run_config=config)
        return result.asset_materializations_for_node("golden_score")[0].metadata

    first = run()
    assert (first["rows"].value, first["computed"].value, first["anchors"].value) == (6, 6, 6)
    columns = ["pool_id", "golden_score", "reason", "model", "template", "code_version"]
    stored_before = stored(home, "golden_score", columns)
    before = stored_before.rows()
    with open_state(home.duckdb) as db:  # two rows lost
        for pool_id in stored_before["pool_id"].head(2):
            db.replace_rows("golden_score", {"pool_id": pool_id}, stored_before.clear())
    assert all(abs(g * 6 - round(g * 6)) < 1e-9 and r == "" and m == "tiny" and t for _, g, r, m, t, _ in before)
    again = run()  # an interrupted run: only the missing candidates are scored again
    assert (again["computed"].value, again["reused_after_resume"].value) == (2, 4)
    assert stored(home, "golden_score", columns).rows() == before


def test_learning_percentage_is_reused_and_whisperer_rows_carry_their_provenance(home, local_resources, tmp_path):
    batch, instance = ingest(home, tmp_path, local_resources, n=6)
    query_lines = [json.dumps({"question": f"What is {i} plus 1?", "answer": f"{i + 1}"}) for i in range(3)]
    with open_state(home.duckdb) as db:
        manifest, _ = db.register_batch(
            write_jsonl(tmp_path / "q.jsonl", query_lines), home.raw, source="q", task="math", split="query"
        )
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    dg.materialize([pool_batch, pool], partition_key=manifest.batch, resources=local_resources, instance=instance)
    config = {
        "ops": {
            "learning_percentage": {"config": {"epochs": 1, "batch_size": 3, "max_length": 64}},
            "whisperer_score": {"config": {"n_demos": 2, "n_queries": 1, "max_new_tokens": 2}},
        }
    }

    def run(assets):
        ops = {a.key.to_user_string(): config["ops"][a.key.to_user_string()] for a in assets}
        return dg.materialize(assets, resources=local_resources, instance=instance, run_config={"ops": ops})

    result = run([learning_percentage, whisperer_score])
    first = result.asset_materializations_for_node("learning_percentage")
    # 6 examples in rounds of 2 demonstrations, 1 query each: 3 answers, of at most 2 tokens; a
    # cut one (no end of turn within 2) is said in the run's log
    told = result.asset_materializations_for_node("whisperer_score")[0].metadata
    answers, cut = told["answers"].value, told["answers_cut"].value
    assert answers == 3 and 0 <= cut <= 3 and told["mean_answer_tokens"].value <= 2
    warned = [e.user_message for e in instance.all_logs(result.run_id) if "answers reached" in e.user_message]
    assert len(warned) == bool(cut)
    assert all(f"{cut} of 3 answers reached max_new_tokens=2 before their end" in w for w in warned)
    again = run([learning_percentage]).asset_materializations_for_node("learning_percentage")
    assert first[0].metadata["reused"].value is False and again[0].metadata["reused"].value is True
    lp = stored(home, "learning_percentage", ["pool_id", "template", "code_version"])
    code_version = lp["code_version"].drop_nulls().first()
    assert (lp.height, lp["template"].drop_nulls().n_unique(), code_version) == (6, 1, "learning_percentage-1")
    whisperer = stored(home, "whisperer_score", ["pool_id", "reason", "model", "template"])
    defined = whisperer.filter(pl.col("reason") == "").height
    assert (whisperer.height, defined, whisperer["model"].drop_nulls().first()) == (6, 6, "tiny")
    assert whisperer["template"].drop_nulls().first()


def test_cherry_pre_experience_trains_on_the_sample_and_scores_the_pool_with_it(home, local_resources, tmp_path):
    from dsel_assets.pipeline.assets.representations.pre_experience import (
        cherry_pre_experienced_model,
        cherry_pre_experienced_scores,
    )
    from dsel_assets.pipeline.assets.representations.scores import loss_scores

    batch, instance = ingest(home, tmp_path, local_resources, n=12)
    dg.materialize([model_embeddings, loss_scores], partition_key=batch, resources=local_resources, instance=instance)
    config = {"n_clusters": 2, "per_cluster": 3, "batch_size": 4, "max_length": 64}

    def run():
        result = dg.materialize(
            [cherry_pre_experienced_model, cherry_pre_experienced_scores],
            resources=local_resources,
            instance=instance,
            run_config={"ops": {"cherry_pre_experienced_model": {"config": config}}},
        )
        return {
            node: result.asset_materializations_for_node(node)[0].metadata
            for node in ("cherry_pre_experienced_model", "cherry_pre_experienced_scores")
        }

    first = run()
    model, scores = first["cherry_pre_experienced_model"], first["cherry_pre_experienced_scores"]
    assert model["reused"].value is False and 2 <= model["sample"].value <= 6 and model["clusters"].value == 2
    assert (home.root / "models" / "pre_experience" / model["adapter"].value / "adapter").is_dir()
    assert (scores["rows"].value, scores["computed"].value) == (12, 12)
    sample = stored(home, "pre_experience_sample", ["cluster"], order=())
    assert (sample.height, sample["cluster"].drop_nulls().n_unique()) == (model["sample"].value, 2)
    # the adapter moved the scores: IFD under the pre-experienced model differs from the base model's
    pre = stored(home, "cherry_pre_experienced_scores", ["pool_id", "loss_conditioned", "adapter"])
    base = stored(home, "loss_scores", ["pool_id", "loss_conditioned"])
    moved = pre.join(base, on="pool_id", suffix="_base")
    largest = (moved["loss_conditioned"] - moved["loss_conditioned_base"]).abs().max()
    assert largest > 1e-4 and moved.height == 12 and moved["adapter"].drop_nulls().first() == model["adapter"].value
    again = run()  # nothing changed: the adapter and every score are reused
    assert again["cherry_pre_experienced_model"]["reused"].value is True
    assert again["cherry_pre_experienced_scores"]["computed"].value == 0
    pool_ids = pool_ids_of(home)
    ifd, _ = load_representation(
        "pre_experienced_ifd", local_resources["lance"], local_resources["store"], pool_ids, GradientSettings()
    )
    assert ifd.shape == (12,) and np.isfinite(ifd).sum() >= 10


def test_a_proxy_that_is_the_selection_model_copies_the_loss_rows_instead_of_scoring_again(
    home, local_resources, tmp_path
):
    """Same weights, template and scoring code: the proxy's rows are the selection model's rows
    (copied under the proxy's code version); nothing is computed twice."""
    from dsel_assets.pipeline.assets.representations.scores import loss_scores, proxy_loss_scores
    from dsel_assets.pipeline.scoring import score_code_version

    resources = {**local_resources, "proxy_model": local_resources["selection_model"]}
    batch, instance = ingest(home, tmp_path, resources, n=5)
    first = dg.materialize([loss_scores], partition_key=batch, resources=resources, instance=instance)
    assert first.asset_materializations_for_node("loss_scores")[0].metadata["computed"].value == 5
    second = dg.materialize([proxy_loss_scores], partition_key=batch, resources=resources, instance=instance)
    meta = second.asset_materializations_for_node("proxy_loss_scores")[0].metadata
    assert (meta["computed"].value, meta["copied_from_sibling"].value, meta["rows"].value) == (0, 5, 5)
    columns = ["pool_id", "model_hash", "loss_conditioned", "loss_unconditioned", "ifd_ppl_ratio", "mean_entropy"]
    selection = stored(home, "loss_scores", [*columns, "reason"]).rows()
    proxy_rows = stored(home, "proxy_loss_scores", [*columns, "reason", "code_version"])
    versions = proxy_rows["code_version"].unique().to_list()
    assert proxy_rows.drop("code_version").rows() == selection
    assert versions == [score_code_version("proxy_loss_scores")]
    again = dg.materialize([loss_scores], partition_key=batch, resources=resources, instance=instance)
    meta = again.asset_materializations_for_node("loss_scores")[0].metadata
    assert (meta["computed"].value, meta["copied_from_sibling"].value) == (0, 0)  # its own rows are kept


def test_proxy_scores_come_from_the_proxy_and_alpaca_scores_keep_to_their_own_table(home, local_resources, tmp_path):
    """A proxy other than the selection model: its rows name it and its weights hash, and their
    scores differ from the selection model's (nothing is copied across). Alpaca-template scores
    land in their own table, each row saying so, and the selections read that table only when asked."""
    from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
    from dsel_assets.pipeline.assets.representations.scores import loss_scores, proxy_loss_scores
    from dsel_assets.pipeline.checks import batch_check
    from dsel_assets.pipeline.names import score_table
    from resources.models import SelectionModel

    tokenizer = load_tokenizer(resolve("tiny"))
    proxy_dir = tmp_path / "proxy"
    tiny_llama(tokenizer, seed=1).save_pretrained(proxy_dir)
    tokenizer.save_pretrained(proxy_dir)
    proxy = SelectionModel(model=str(proxy_dir), device="cpu")
    resources = {**local_resources, "proxy_model": proxy}
    batch, instance = ingest(home, tmp_path, resources, n=5)
    assets = [loss_scores, proxy_loss_scores, batch_check("loss_scores")]
    assert dg.materialize(assets, partition_key=batch, resources=resources, instance=instance).success

    def compare(proxy_table: str, selection_table: str) -> tuple:
        """The proxy's model, its hash, the selection model's hash, the largest difference of their
        conditioned losses, the rows they share, and the proxy's prompt template."""
        p = stored(home, proxy_table, ["pool_id", "model", "model_hash", "loss_conditioned", "prompt_template"])
        selected = stored(home, selection_table, ["pool_id", "model_hash", "loss_conditioned"])
        joined = p.join(selected, on="pool_id", suffix="_l")
        return (
            joined.group_by("model", "model_hash", "model_hash_l", maintain_order=True)
            .agg(
                (pl.col("loss_conditioned") - pl.col("loss_conditioned_l")).abs().max(),
                pl.len(),
                pl.col("prompt_template").drop_nulls().first(),
            )
            .row(0)
        )

    chat = stored(home, "loss_scores", ["pool_id", "ifd_loss_ratio"]).rows()
    row = compare("proxy_loss_scores", "loss_scores")
    assert row[:2] == (str(proxy_dir), proxy.identity()["model_hash"]) and row[1] != row[2]
    assert row[3] > 1e-3 and row[4:] == (5, "chat")

    config = {"ops": {name: {"config": {"template": "alpaca"}} for name in ("loss_scores", "proxy_loss_scores")}}
    result = dg.materialize(assets, partition_key=batch, resources=resources, instance=instance, run_config=config)
    assert result.success and all(e.passed for e in result.get_asset_check_evaluations())
    meta = result.asset_materializations_for_node("loss_scores")[0].metadata
    assert (meta["template"].value, meta["table"].value, meta["computed"].value) == ("alpaca", "loss_scores_alpaca", 5)
    assert stored(home, "loss_scores", ["pool_id", "ifd_loss_ratio"]).rows() == chat
    alpaca = stored(home, "loss_scores_alpaca", ["pool_id", "ifd_loss_ratio", "prompt_template", "template"]).rows()
    templates = set(stored(home, "loss_scores", ["template"], order=())["template"])
    row = compare("proxy_loss_scores_alpaca", "loss_scores_alpaca")
    assert {r[2] for r in alpaca} == {"alpaca"} and {r[3] for r in alpaca}.isdisjoint(templates)
    assert all(abs(a[1] - c[1]) > 1e-6 for a, c in zip(alpaca, chat, strict=True))
    assert row[:2] == (str(proxy_dir), proxy.identity()["model_hash"]) and row[4:] == (5, "alpaca")
    pool_ids = [r[0] for r in chat]
    for template, expected in (("chat", chat), ("alpaca", alpaca)):
        ifd, ref = load_representation(
            "ifd", resources["lance"], resources["store"], pool_ids, GradientSettings(), template=template
        )
        np.testing.assert_allclose(ifd, [r[1] for r in expected])
        assert ref.digest == score_table("loss_scores", template)  # lineage names the table read

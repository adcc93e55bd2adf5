"""Closing the loop: LoRA fine-tuning on a selection, evaluation metrics, and the comparison
report, on the tiny model."""

import math

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats as scipy_stats

from dsel_assets.core.data.schema import example_id
from dsel_assets.core.data.synthetic import generate
from dsel_assets.core.evaluation import (
    EXACT_MATCH,
    GSM8K_MATCH,
    ROUGE_L,
    EvalConfig,
    EvalExample,
    balance,
    eval_sample,
    evaluate,
    exact_match,
    gsm8k_number,
    metric_of,
    response_losses,
    rouge_l,
    summarize,
)
from dsel_assets.core.models.finetune import FinetuneConfig, finetune, load_finetuned, read_finetuned
from dsel_assets.core.models.loading import load_tokenizer, resolve, tiny_llama
from dsel_assets.core.models.lora import LoraSettings
from dsel_assets.core.models.sft import IGNORE, encode_conversation
from dsel_assets.pipeline.assets.ingest.pool import pool, pool_batch
from dsel_assets.pipeline.assets.reporting.evaluation import eval_assets
from dsel_assets.pipeline.assets.reporting.reports import comparison_report, selection_report
from dsel_assets.pipeline.assets.selection.selections import selection_assets
from dsel_assets.pipeline.assets.training.finetune import finetuned_assets
from dsel_assets.pipeline.names import pool_batches
from resources.store import open_state

from ..pipeline.test_assets import register


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return load_tokenizer(resolve("tiny"))


def test_gsm8k_answer_extraction():
    assert gsm8k_number("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72") == "72"
    assert gsm8k_number("so the total is 1,000.") == "1000"
    assert gsm8k_number("#### 1,234.0") == "1234"
    assert gsm8k_number("no number here") is None
    assert exact_match(GSM8K_MATCH, "She has 3 + 4 = 7 apples.\n#### 7", "7")
    assert exact_match(GSM8K_MATCH, "The answer: 12 apples, then 7 remain", "7")  # last number
    assert not exact_match(GSM8K_MATCH, "#### 8", "7")


def test_exact_match_on_the_synthetic_answer_format():
    assert exact_match(EXACT_MATCH, "40 + 2 = 42. The answer is 42.", "42")
    assert exact_match(EXACT_MATCH, "In order they are 1, 2. The answer is 1,  2.", "1, 2")
    assert not exact_match(EXACT_MATCH, "The answer is 41.", "42")
    assert not exact_match(EXACT_MATCH, "42", "42")  # no final-answer statement


def test_metric_follows_the_eval_set():
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "work\n#### 18"}]
    assert metric_of(EvalExample("a", "math", chat, {})) == (GSM8K_MATCH, "18")
    assert metric_of(EvalExample("b", "arithmetic", chat, {"answer": "5"})) == (EXACT_MATCH, "5")
    summary = [{"role": "user", "content": "Summarize"}, {"role": "assistant", "content": "A meets B."}]
    assert metric_of(EvalExample("c", "summarization", summary, {})) == (ROUGE_L, "A meets B.")
    assert metric_of(EvalExample("d", "general", summary, {})) == (None, None)


def test_rouge_l_matches_the_lcs_definition():
    # LCS("the cat on the mat", "the cat sat on the mat") = 5 tokens: P = 5/5, R = 5/6
    precision, recall = 1.0, 5 / 6
    expected = 2 * precision * recall / (precision + recall)
    assert rouge_l(["the cat on the mat"], ["the cat sat on the mat"]) == pytest.approx([expected])
    assert rouge_l(["completely different"], ["the cat sat"]) == [0.0]


def test_response_loss_masks_everything_but_assistant_tokens(tiny_tokenizer):
    model = tiny_llama(tiny_tokenizer)
    chat = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "It is 4."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."},
    ]
    (loss,) = response_losses(model, tiny_tokenizer, [chat], max_length=256, batch_size=4)
    encoded = encode_conversation(tiny_tokenizer, chat, 256)
    ids = torch.tensor([encoded.input_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1]
    labels = torch.tensor(encoded.labels[1:])
    mask = labels != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[mask], labels[mask]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    # both replies are labelled, the user turns are not
    labelled = tiny_tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels, strict=True) if lab != IGNORE]
    )
    assert "It is 4." in labelled and "It is 6." in labelled and "2+2" not in labelled


def test_eval_sample_is_per_task_and_seeded():
    examples = [EvalExample(f"{t}{i:02d}", t, [], {}) for t in ("a", "b") for i in range(30)]
    first = eval_sample(examples, 5, seed=0)
    assert [e.task for e in first].count("a") == 5 and len(first) == 10
    assert first == eval_sample(list(reversed(examples)), 5, seed=0)
    assert eval_sample(examples, 0, seed=0) == sorted(examples, key=lambda e: e.pool_id)


def test_summary_and_balance():
    from dsel_assets.core.evaluation import EvalRow

    rows = [
        EvalRow("1", "x", EXACT_MATCH, 1.0, 0.5, "p"),
        EvalRow("2", "x", EXACT_MATCH, 0.0, 1.5, "p"),
        EvalRow("3", "y", ROUGE_L, 0.25, 2.0, "p"),
        EvalRow("4", "z", None, None, 3.0, None),
    ]
    per_task = summarize(rows)
    assert [(t["task"], t["score"], t["loss"]) for t in per_task] == [
        ("x", 0.5, 1.0),
        ("y", 0.25, 2.0),
        ("z", None, 3.0),
    ]
    assert balance(per_task) == {"min": 0.25, "mean": 0.375, "max": 0.5, "worst": "y"}


def test_finetuning_lowers_loss_and_changes_only_the_adapter(tiny_tokenizer, tmp_path):
    records = generate(seed=3, per_capability=4, noise_rate=0).pool
    encoded = [encode_conversation(tiny_tokenizer, r["messages"], 128) for r in records]
    model = tiny_llama(tiny_tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneConfig(epochs=4, lr=3e-3, batch_size=4, max_length=128, lora=LoraSettings(r=4, alpha=8))
    manifest = finetune(
        model, encoded, config, tmp_path / "m", tiny_tokenizer.pad_token_id, {"selection_version": "v1"}
    )
    losses = [p["loss"] for p in manifest["curve"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    # the adapter is unloaded: the base model is exactly the base model again
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert read_finetuned(tmp_path / "m")["selection_version"] == "v1"
    tuned = load_finetuned(model, tmp_path / "m")
    adapters = {n for n, _ in tuned.named_parameters() if "lora_" in n}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    chat = records[0]["messages"]
    tuned_loss = response_losses(tuned, tiny_tokenizer, [chat], 128, 1)[0]
    base_loss = response_losses(tuned.unload(), tiny_tokenizer, [chat], 128, 1)[0]
    assert tuned_loss < base_loss


def test_evaluate_scores_every_example(tiny_tokenizer):
    records = generate(seed=4, per_capability=2, eval_per_capability=2).evals
    examples = [
        EvalExample(example_id(r["messages"]), r["task"], r["messages"], {"answer": r["answer"]}) for r in records
    ]
    rows = evaluate(tiny_llama(tiny_tokenizer), tiny_tokenizer, examples, EvalConfig(max_new_tokens=4), lambda _: None)
    assert len(rows) == len(examples)
    assert all(r.metric == EXACT_MATCH and r.score in (0.0, 1.0) and r.loss > 0 for r in rows)
    assert all(isinstance(r.prediction, str) for r in rows)


@pytest.fixture()
def synthetic_home(home, local_resources, tmp_path):
    paths = generate(seed=5, per_capability=6, eval_per_capability=3).write(tmp_path / "data")
    instance = dg.DagsterInstance.ephemeral()
    keys = []
    for name, split in (("queries", "query"), ("eval", "eval"), ("pool", "pool")):
        manifest = register(home, paths[name], source=f"synthetic_{name}", task="auto", split=split)
        instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
        keys.append(manifest.batch)
    for key in keys:
        dg.materialize([pool_batch, pool], partition_key=key, resources=local_resources, instance=instance)
    return instance


def _asset(assets, name):
    return next(a for a in assets if a.key.path[-1] == name)


def test_selection_to_report_through_dagster(home, local_resources, synthetic_home):
    instance = synthetic_home
    finetune_config = {"epochs": 1, "max_length": 128, "batch_size": 4, "lr": 1e-3}
    eval_config = {"max_per_task": 2, "max_new_tokens": 4, "max_length": 128}
    chain = [
        _asset(selection_assets, "selection_random"),
        _asset(finetuned_assets, "finetuned_random"),
        _asset(eval_assets, "eval_random"),
        _asset(eval_assets, "eval_base"),
    ]
    run_config = {
        "ops": {
            "selection_random": {"config": {"budgets": ["10", "20"]}},
            "finetuned_random": {"config": finetune_config},
            "eval_random": {"config": eval_config},
            "eval_base": {"config": eval_config},
        }
    }
    first = dg.materialize(chain, resources=local_resources, instance=instance, run_config=run_config)
    assert first.success
    with open_state(home.duckdb) as db:
        columns = ["model_key", "budget", "examples", "selection_version", "pool_version"]
        models = db.rows_matching("finetuned_models", columns, {}).sort("examples")
        assert models["budget"].to_list() == ["10", "20"] and models["examples"].to_list() == [10, 20]
        for row in models.iter_rows(named=True):
            manifest = read_finetuned((home.root / "models") / "finetuned" / row["model_key"])
            selected = db.rows_matching(
                "selections", ["pool_id", "rank"], {"method": "random", "budget": row["budget"]}
            )
            ids = selected.sort("rank")["pool_id"].to_list()
            from dsel_assets.core.models.finetune import selection_version

            assert manifest["selection_version"] == row["selection_version"]
            assert manifest["selection_version"] == selection_version("random", row["budget"], ids, row["pool_version"])
        scores = db.rows_matching("eval_scores", ["method", "budget", "task", "n"], {})
        assert scores.height == 3 * 6 and set(scores["n"].to_list()) == {2}
        # eval examples are disjoint from the training selections
        evaluated = db.rows_matching("eval_examples", ["pool_id"], {})
        selected = db.rows_matching("selections", ["pool_id"], {})
        assert evaluated.join(selected, on="pool_id", how="inner").height == 0
    meta = first.asset_materializations_for_node("finetuned_random")[0].metadata
    assert "| no |" in meta["models"].value

    # unchanged inputs: the models and eval results are reused, not recomputed
    ops = {k: v for k, v in run_config["ops"].items() if k in ("finetuned_random", "eval_random")}
    again = dg.materialize(chain[1:3], resources=local_resources, instance=instance, run_config={"ops": ops})
    assert "| yes |" in again.asset_materializations_for_node("finetuned_random")[0].metadata["models"].value


def test_comparison_report_states_a_known_difference_with_its_ci(home, local_resources):
    """less's loss is random's minus 0.5 on arithmetic (equal on dates), 24 eval rows per task;
    random's 3 selections sit 0, 0.02 and 0.04 above their base value, training seeds 0.01 apart.
    less has one selection of unsampled (warmup) randomness: random's selection spread stands in
    for it. By hand: delta = -0.5 - 0.02 = -0.52, SE = sqrt(0.0004 * (1 + 1/3)) on 2 degrees of
    freedom; dates: delta -0.02, no detectable difference."""
    from dsel_assets.core.models.loading import model_hash, resolve

    models, examples = [], []
    base = model_hash(resolve("tiny"))  # the resources' target model: the report reads its fine-tunes only
    for method, selection_seeds in (("random", (0, 1, 2)), ("less", (0,))):
        for selection_seed in selection_seeds:
            for seed in (0, 1):
                key = f"{method}-{selection_seed}-{seed}"
                models.append(
                    {
                        "model_key": key,
                        "method": method,
                        "budget": "5pct",
                        "selection_seed": selection_seed,
                        "seed": seed,
                        "base_model_hash": base,
                    }
                )
                offset = 0.01 * seed + (0.02 * selection_seed if method == "random" else 0.0)
                for i in range(24):
                    for task, shift in (("arithmetic", 0.5), ("dates", 0.0)):
                        loss = 2.0 + 0.1 * i + offset + (0 if method == "random" else -shift)
                        examples.append(
                            {"model_key": key, "method": method, "budget": "5pct", "pool_id": f"{task}{i}"}
                            | {"task": task, "metric": None, "score": None, "loss": loss}
                        )
    with open_state(home.duckdb) as db:
        db.ensure_schema()
        models = pl.DataFrame(models, schema_overrides={"selection_seed": pl.Int32, "seed": pl.Int32})
        db.replace_rows("finetuned_models", {"base_model_hash": base}, models)
        rows = pl.DataFrame(examples, schema_overrides={"metric": pl.String, "score": pl.Float64})
        db.replace_rows("eval_examples", {"budget": "5pct"}, rows)
    result = dg.materialize([comparison_report], resources=local_resources)
    assert result.success
    meta = result.asset_materializations_for_node("comparison_report")[0].metadata
    with open_state(home.duckdb, read_only=True) as db:
        table = db.report("comparison_report")
    table = table.filter((pl.col("method") == "less") & (pl.col("measure") == "loss"))
    by_task = {r["task"]: r for r in table.iter_rows(named=True)}
    arithmetic = by_task["arithmetic"]
    half = scipy_stats.t.ppf(0.975, 2) * math.sqrt(0.0004 * (1 + 1 / 3))
    assert arithmetic["delta"] == pytest.approx(-0.52)
    assert (arithmetic["delta_low"], arithmetic["delta_high"]) == pytest.approx((-0.52 - half, -0.52 + half))
    assert arithmetic["selection_variance"] == "not sampled (warmup)"
    assert arithmetic["verdict"] == "better" and arithmetic["p_value"] <= arithmetic["p_holm"] < 0.05
    assert by_task["dates"]["delta"] == pytest.approx(-0.02)
    assert by_task["dates"]["verdict"] == "no detectable difference"
    # hand computation: mean over the 24 rows (2 + 0.1 * 11.5 = 3.15) + mean seed offset (0.005) - 0.5
    assert arithmetic["mean"] == pytest.approx(2.655)
    assert arithmetic["models"] == 2 and arithmetic["examples"] == 24 and arithmetic["eval_groups"] == 24
    for name in ("comparison_budget_curves.png", "comparison_task_deltas.png", "comparison_report.html"):
        assert ((home.root / "reports") / name).stat().st_size > 1000
    assert "**better**" in meta["report"].value
    assert meta["plot_0"].value.startswith("![comparison_budget_curves](data:image/png;base64,")
    assert meta["models"].value == 8
    assert selection_report.key in comparison_report.dependency_keys


def test_eval_rows_sharing_a_prompt_with_pool_or_query_are_left_out(tmp_path):
    from dsel_assets.pipeline.assets.reporting.evaluation import load_eval_set

    def chat(prompt, answer):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]

    rows = [
        ("p1", "pool", chat("Summarize: A meets B.", "They meet.")),
        ("q1", "query", chat("Summarize: C calls D.", "A call.")),
        ("e1", "eval", chat("Summarize: A meets B.", "A and B meet.")),  # same dialogue as p1
        ("e2", "eval", chat(" Summarize: C calls D. ", "C phones D.")),  # same as q1 after stripping
        ("e3", "eval", chat("Summarize: E leaves.", "E goes.")),
    ]
    frame = pl.DataFrame(
        [{"pool_id": i, "split": s, "task": "summarization", "messages": m, "meta": "{}"} for i, s, m in rows]
    )
    with open_state(tmp_path / "state.duckdb") as db:
        db.ensure_schema()
        db.upsert_by_id("examples", frame)
        sample, version, left_out = load_eval_set(db, [], EvalConfig())
    assert [e.pool_id for e in sample] == ["e3"] and left_out == 2 and version


def test_fine_tune_budgets_are_read_as_selections_store_them():
    from dsel_assets.pipeline.assets.training.finetune import _budget_label

    assert [_budget_label(b) for b in ("20%", "0.05", "500", "5pct")] == ["20pct", "5pct", "500", "5pct"]

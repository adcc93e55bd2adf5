"""lm-evaluation-harness on a task defined by a YAML in the state home over a local JSON file
(offline), with the tiny model: per-sample accuracy checked against log-likelihoods computed
here by hand, and the harness rows of the base and fine-tuned models stored as eval rows that the
comparison table turns into a score measure."""

from __future__ import annotations

import json
import math

import dagster as dg
import pytest
import torch

pytest.importorskip("lm_eval")

from dsel_assets.core.harness import harness_rows  # noqa: E402
from dsel_assets.core.models.loading import load_causal_lm, load_tokenizer, resolve  # noqa: E402
from dsel_assets.core.stats import comparison_table  # noqa: E402
from dsel_assets.pipeline.assets.reporting.evaluation import eval_assets  # noqa: E402
from dsel_assets.pipeline.assets.selection.selections import selection_assets  # noqa: E402
from dsel_assets.pipeline.assets.training.finetune import finetuned_assets  # noqa: E402
from resources.store import open_state  # noqa: E402
from tests.core.test_finetune_eval import synthetic_home  # noqa: E402,F401

TASK = "dsel_local_sums"
DOCS = [
    {"question": f"What is {a} plus {b}?", "choices": [str(a + b), str(a + b + 3)], "label": (a + b) % 2}
    for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]
]


def write_task(folder, data_dir) -> None:
    """A multiple-choice task on a local JSON-lines file, as a user would define it."""
    data = data_dir / "sums.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS), encoding="utf-8")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Question: {{question}}\\nAnswer:"\n'
        'doc_to_choice: "{{choices}}"\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n",
        encoding="utf-8",
    )


def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log p(continuation | context) summed over its tokens, split as the harness splits them
    (the whole string encoded, the context's tokens cut off)."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(sum(logp[i - 1, whole[i]] for i in range(len(context_ids), len(whole))))


def test_harness_accuracy_matches_log_likelihoods_by_hand(tmp_path):
    folder = tmp_path / "lm_eval_tasks"
    write_task(folder, tmp_path)
    spec = resolve("tiny")
    model, tokenizer = load_causal_lm(spec, "cpu"), load_tokenizer(spec)
    rows = harness_rows(model, tokenizer, [TASK], folder)
    assert [r.pool_id for r in rows] == [f"lm_eval:{TASK}:{i}" for i in range(len(DOCS))]
    assert {(r.task, r.metric, r.loss) for r in rows} == {(TASK, "acc", None)}
    checked = 0
    for row, doc in zip(rows, DOCS, strict=True):
        context = f"Question: {doc['question']}\nAnswer:"
        scores = [continuation_logprob(model, tokenizer, context, f" {c}") for c in doc["choices"]]
        if abs(scores[0] - scores[1]) < 1e-3:
            continue  # a near tie: batching noise may decide it
        assert row.score == float(max(range(2), key=scores.__getitem__) == doc["label"])
        checked += 1
    assert checked >= len(DOCS) // 2
    with pytest.raises(ValueError, match=r"lm_eval_tasks: \['no_such_task'\] are not lm-eval tasks"):
        harness_rows(model, tokenizer, ["no_such_task"], folder)


def test_harness_rows_feed_the_comparison(home, local_resources, synthetic_home, tmp_path):  # noqa: F811
    write_task(home.lm_eval_tasks, tmp_path)
    eval_config = {"max_per_task": 2, "max_new_tokens": 4, "max_length": 128, "generate": False}
    eval_config |= {"lm_eval_tasks": [TASK]}
    run_config = {
        "ops": {
            "selection_random": {"config": {"budgets": ["10"], "seeds": [0, 1]}},
            "finetuned_random": {"config": {"epochs": 1, "max_length": 128, "batch_size": 4, "lr": 1e-3}},
            "eval_random": {"config": eval_config},
            "eval_base": {"config": eval_config},
        }
    }
    chain = [
        next(a for a in group if a.key.path[-1] == name)
        for group, name in (
            (selection_assets, "selection_random"),
            (finetuned_assets, "finetuned_random"),
            (eval_assets, "eval_random"),
            (eval_assets, "eval_base"),
        )
    ]
    result = dg.materialize(chain, resources=local_resources, instance=synthetic_home, run_config=run_config)
    assert result.success
    with open_state(home.duckdb, read_only=True) as db:
        rows = db.eval_rows_with_models("base", None)
    harness = rows.filter(rows["task"] == TASK)
    # every model (the base and one per selection seed) scored every document
    assert harness.group_by("method", "selection_seed").len()["len"].to_list() == [len(DOCS)] * 3
    assert set(harness["metric"].to_list()) == {"acc"} and harness["loss"].null_count() == harness.height
    table = comparison_table(rows, baseline="random", n_boot=200)
    measures = set(table.filter(table["task"] == TASK)["measure"].to_list())
    if harness["score"].sum() > 0:  # a metric every model scores 0 on gets no measure
        assert measures == {"score:acc"}
    assert not any(math.isnan(v) for v in table.filter(table["task"] == TASK)["mean"].drop_nulls().to_list())


def test_compare_refuses_an_unknown_lm_eval_task_before_any_work(home, capsys):
    from dsel_assets.app.cli import main

    code = main(["compare", "--methods", "random", "--target", "math", "--lm-eval-task", "no_such_task"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "lm_eval_tasks: ['no_such_task'] are not lm-eval tasks" in err

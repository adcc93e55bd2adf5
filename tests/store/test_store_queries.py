"""The store's questions (dsel_assets/store/queries.py) give the same answers on DuckDB and on a
real PostgreSQL server, for rows written by hand here."""

from __future__ import annotations

import math
from datetime import datetime

import pytest

from dsel_assets.store import schema

MESSAGES = {
    "p1": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    "p2": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
    "q1": [{"role": "user", "content": "x+1=3"}, {"role": "assistant", "content": "x=2"}],
    "q2": [{"role": "user", "content": "3*3"}, {"role": "assistant", "content": "9"}],
    "q3": [{"role": "user", "content": "print 1"}, {"role": "assistant", "content": "print(1)"}],
}
ROWS = [  # pool_id, batch, split, task, meta (inserted out of order on purpose)
    ("p2", "b2", "pool", "chat", '{"tags": ["greeting"]}'),
    ("p1", "b1", "pool", "math", '{"tags": ["arithmetic", "easy"]}'),
    ("q3", "bq", "query", "code", '{"subtask": 7}'),
    ("q2", "bq", "query", "math", None),
    ("q1", "bq", "query", "math", '{"subtask": "algebra"}'),
]


@pytest.fixture
def db(backend):
    with backend.state() as db:
        db.migrate()
        for pool_id, batch, split, task, meta in ROWS:
            messages = MESSAGES[pool_id]
            if backend.dialect == "postgres":
                from psycopg.types.json import Jsonb

                messages = Jsonb(messages)
            backend.rows(
                db.conn,
                "INSERT INTO examples (pool_id, batch, split, task, messages, meta) VALUES (?, ?, ?, ?, ?, ?)",
                [pool_id, batch, split, task, messages, meta],
            )
        yield db


def test_split_rows_in_the_asked_order(db):
    pool = db.split_rows("pool")
    assert pool["pool_id"].to_list() == ["p1", "p2"]
    assert [list(map(dict, m)) for m in pool["messages"].to_list()] == [MESSAGES["p1"], MESSAGES["p2"]]
    by_task = db.split_rows("query", ("pool_id", "task"), order=("task", "pool_id"))
    assert by_task.rows() == [("q3", "code"), ("q1", "math"), ("q2", "math")]
    assert db.split_rows("pool", ("pool_id",), batch="b2")["pool_id"].to_list() == ["p2"]
    assert db.split_rows("eval", ("pool_id",)).height == 0
    with pytest.raises(ValueError, match="not in examples"):
        db.split_rows("pool", ("pool_id", "messages; DROP TABLE examples"))


def test_meta_fields_and_subtasks(db):
    assert db.meta_field("pool", "tags") == {"p1": ["arithmetic", "easy"], "p2": ["greeting"]}
    assert db.query_subtasks() == {"q1": "algebra", "q2": None, "q3": "7"}


def test_messages_of_the_ids_that_exist(db):
    found = db.messages_of(["p2", "q1", "missing"])
    assert {k: list(map(dict, v)) for k, v in found.items()} == {"p2": MESSAGES["p2"], "q1": MESSAGES["q1"]}


def test_the_latest_warmup_is_the_last_recorded(db):
    assert db.latest_warmup() is None
    db.record_warmup("w1", "models/warmup/w1", "v1", "smollm2", "h", {"epochs": 1})
    db.record_warmup("w2", "models/warmup/w2", "v1", "smollm2", "h", {"epochs": 2})
    assert db.latest_warmup() == ("w2", "models/warmup/w2")
    db.record_warmup("w1", "models/warmup/w1", "v2", "smollm2", "h", {"epochs": 1})
    assert db.latest_warmup() == ("w1", "models/warmup/w1")
    rows = schema._Sql(db.conn).run("SELECT warmup, pool_version FROM warmups ORDER BY warmup")
    assert rows == [("w1", "v2"), ("w2", "v1")]  # re-recording replaces, never duplicates
    # the warmups whose features stay beside a warmup's: the same pool version and model
    db.record_warmup("w3", "models/warmup/w3", "v2", "smollm2", "h", {"seed": 1})
    db.record_warmup("w4", "models/warmup/w4", "v2", "other", "h2", {"seed": 1})
    assert db.sibling_warmups("w3") == ["w1", "w3"]
    assert db.sibling_warmups("w4") == ["w4"] and db.sibling_warmups("none") == []


def test_method_selections_in_rank_order(db):
    sql = schema._Sql(db.conn)
    for budget, seed, rank, pool_id in [("10pct", 1, 0, "p2"), ("10pct", 0, 1, "p2"), ("10pct", 0, 0, "p1")]:
        sql.run(
            "INSERT INTO selections (method, budget, selection_seed, rank, pool_id, pool_version) "
            "VALUES ('random', ?, ?, ?, ?, 'v1')",
            [budget, seed, rank, pool_id],
        )
    rows = db.method_selections("random")
    assert rows.rows() == [("10pct", 0, "p1", "v1"), ("10pct", 0, "p2", "v1"), ("10pct", 1, "p2", "v1")]
    assert db.method_selections("less").height == 0


def test_counts_and_leak_checks(db):
    assert db.split_task_counts() == {
        ("pool", "chat"): 1,
        ("pool", "math"): 1,
        ("query", "code"): 1,
        ("query", "math"): 2,
    }
    assert db.count_outside_split(["q1", "p1", "missing"], "query") == 1  # p1 is a pool row
    assert db.count_outside_split([], "query") == 0
    both = db.split_rows(("pool", "query"), ("pool_id",))
    assert both["pool_id"].to_list() == ["p1", "p2", "q1", "q2", "q3"]


def test_models_and_their_evaluations(db):
    sql = schema._Sql(db.conn)
    for key, budget, examples, selection_seed, seed in [
        ("m3", "10pct", 20, 1, 0),
        ("m2", "5pct", 10, 0, 1),
        ("m1", "5pct", 10, 0, 0),
    ]:
        sql.run(
            "INSERT INTO finetuned_models (model_key, method, budget, path, examples, selection_seed, seed, "
            "base_model_hash) VALUES (?, 'less', ?, ?, ?, ?, ?, 'h1')",
            [key, budget, f"models/{key}", examples, selection_seed, seed],
        )
    sql.run(  # a fine-tune of another base model is not one of this model's
        "INSERT INTO finetuned_models (model_key, method, budget, path, examples, base_model_hash) "
        "VALUES ('other', 'less', '5pct', 'models/other', 10, 'h2')"
    )
    models = db.finetuned_models_of("less", "h1")
    assert models["model_key"].to_list() == ["m1", "m2", "m3"]  # smallest set first, then the seeds
    assert models.row(0) == ("m1", "5pct", "models/m1", 10, 0, 0)
    assert db.finetuned_models_of("less", "h2")["model_key"].to_list() == ["other"]
    assert db.finetuned_models_of("random", "h1").height == 0

    assert db.eval_keys() == set()
    for task, loss in (("math", 1.5), ("code", 0.5)):
        sql.run(
            "INSERT INTO eval_scores (eval_key, model_key, task, n, metric, score, loss) VALUES ('e1', 'm1', ?, 3, "
            "'exact_match', NULL, ?)",
            [task, loss],
        )
    assert db.eval_keys() == {"e1"}
    scores = sorted(db.eval_task_scores("e1"), key=lambda r: r["task"])
    assert scores == [
        {"task": "code", "n": 3, "metric": "exact_match", "score": None, "loss": 0.5},
        {"task": "math", "n": 3, "metric": "exact_match", "score": None, "loss": 1.5},
    ]
    # eval rows of two base models (the model was changed): a comparison reads one model's rows only
    for model_key, method in (("m1", "less"), ("other", "less"), ("base-h1", "base"), ("base-h2", "base")):
        sql.run(
            "INSERT INTO eval_examples (model_key, method, budget, pool_id, task, loss) VALUES (?, ?, '5pct', 'e', "
            "'math', 1.0)",
            [model_key, method],
        )
    rows = db.eval_rows_with_models("base", "h1")
    assert sorted(rows["method"].to_list()) == ["base", "less"]
    assert db.eval_rows_with_models("base", None).height == 4
    # two eval samples (the eval set grew): a comparison reads the sample it froze
    for eval_key, version, pool_id in (("k1", "v1", "x1"), ("k2", "v2", "x2")):
        sql.run("INSERT INTO eval_scores (eval_key, model_key, eval_version) VALUES (?, 'm1', ?)", [eval_key, version])
        sql.run(
            "INSERT INTO eval_examples (eval_key, model_key, method, budget, pool_id, task, loss) "
            "VALUES (?, 'm1', 'less', '5pct', ?, 'math', 1.0)",
            [eval_key, pool_id],
        )
    assert db.eval_rows_with_models("base", "h1", "v2")["pool_id"].to_list() == ["x2"]


def test_batches_composition_and_pool_versions(db):
    assert db.batch_rows("bq", ("pool_id",))["pool_id"].to_list() == ["q1", "q2", "q3"]
    assert db.split_rows("pool", ("pool_id",), batch="b1")["pool_id"].to_list() == ["p1"]
    assert db.composition().rows() == [
        ("pool", None, "chat", 1),
        ("pool", None, "math", 1),
        ("query", None, "code", 1),
        ("query", None, "math", 2),
    ]
    sql = schema._Sql(db.conn)
    for reason in ("bad_json", "empty", "bad_json"):
        sql.run("INSERT INTO quarantine (batch, reason) VALUES ('b1', ?)", [reason])
    assert db.quarantine_reasons().rows() == [("bad_json", 2), ("empty", 1)]
    db.record_pool_version("v1", ["b1", "b2"], 2)
    assert sql.run("SELECT pool_version, batches, n_examples FROM pool_versions") == [("v1", ["b1", "b2"], 2)]


def test_similarity_columns_take_only_plain_table_names(db):
    with pytest.raises(ValueError, match="not a plain identifier"):
        db.similarity_columns("influence_columns; DROP TABLE examples")


def test_selection_ids_versions_and_score_rows(db):
    sql = schema._Sql(db.conn)
    for budget, rank, pool_id in [("5pct", 0, "p2"), ("10pct", 0, "p2"), ("10pct", 1, "p1")]:
        sql.run(
            "INSERT INTO selections (method, budget, rank, pool_id, k) VALUES ('less', ?, ?, ?, 2)",
            [budget, rank, pool_id],
        )
    assert db.selected_ids("less") == ["p1", "p2"]
    assert db.method_selections("less", ("budget", "rank", "k")).rows() == [
        ("10pct", 0, 2),
        ("10pct", 1, 2),
        ("5pct", 0, 2),
    ]
    with pytest.raises(ValueError, match="not in selections"):
        db.method_selections("less", ("budget", "1; DROP TABLE selections"))
    sql.run("INSERT INTO eval_examples (method, pool_id) VALUES ('less', 'e2'), ('less', 'e1'), ('less', 'e1')")
    assert db.evaluated_ids("less") == ["e1", "e2"]

    db.record_pool_version("v1", ["b1"], 1)
    assert db.pool_ids_of_version("v1") == {"p1"}
    assert db.pool_ids_of_version("unknown") is None

    db.ensure_score_table("loss_scores")
    sql.run("INSERT INTO loss_scores (pool_id, batch, reason, ifd_loss_ratio) VALUES ('p1', 'b1', '', 0.5)")
    rows = db.rows_matching("loss_scores", ["pool_id", "reason", "ifd_loss_ratio"], {"batch": "b1"})
    assert rows.rows() == [("p1", "", 0.5)]
    assert db.rows_matching("loss_scores", ["pool_id"], {"batch": "b2"}).height == 0
    with pytest.raises(ValueError, match="not a plain identifier"):
        db.rows_matching("loss_scores", ["pool_id, messages FROM examples --"], {"batch": "b1"})


def test_batch_states_origins_and_ranks(db):
    sql = schema._Sql(db.conn)
    for batch, split, when, validated, error in [
        ("b1", "pool", "2026-01-01 00:00:01", "2026-01-01 00:00:02", None),
        ("b2", "pool", "2026-01-01 00:00:03", "2026-01-01 00:00:04", None),
        ("bq", "query", "2026-01-01 00:00:05", "2026-01-01 00:00:06", None),
        ("bad", "pool", "2026-01-01 00:00:07", "2026-01-01 00:00:08", None),
        ("new", "pool", "2026-01-01 00:00:09", None, None),
        ("broken", "eval", "2026-01-01 00:00:10", None, "not UTF-8"),
    ]:
        sql.run(
            "INSERT INTO batches (batch, split, original_path, sha256, registered_at, validated_at, error) "
            "VALUES (?, ?, ?, ?, CAST(? AS TIMESTAMP), CAST(? AS TIMESTAMP), ?)",
            [batch, split, f"/data/{batch}.json", f"sha-{batch}", when, validated, error],
        )
    for reason in ("bad_json", "empty", "bad_json"):
        sql.run("INSERT INTO quarantine (batch, reason) VALUES ('bad', ?)", [reason])
    assert db.batch_counts("bad") == (0, [("bad_json", 2), ("empty", 1)], None)
    assert db.batch_counts("b1") == (1, [], None)
    assert db.batch_counts("broken") == (0, [], "not UTF-8")
    assert db.batch_names("pool") == ["b1", "b2", "bad", "new"]
    assert db.batches_without_rows() == [
        ("bad", "pool", 3, "every record quarantined"),
        ("new", "pool", 0, "not validated yet"),
        ("broken", "eval", 0, "not UTF-8"),
    ]
    origin = db.example_origin("p1")
    assert (origin["batch"], origin["original_path"], origin["sha256"], origin["task"]) == (
        "b1",
        "/data/b1.json",
        "sha-b1",
        "math",
    )
    assert db.example_origin("nope") is None
    assert [r["split"] for r in db.rows_of_id("examples", "q1")] == ["query"]

    for budget, k, rank, pool_id, score in [
        ("5pct", 1, 0, "p2", 0.9),
        ("10pct", 2, 0, "p1", 0.8),
        ("10pct", 2, 1, "p2", 0.7),
    ]:
        sql.run(
            "INSERT INTO selections (method, budget, k, rank, pool_id, score, pool_version) "
            "VALUES ('less', ?, ?, ?, ?, ?, 'v1')",
            [budget, k, rank, pool_id, score],
        )
    ranks = db.selection_ranks("less", "p1")
    assert ranks.select("budget", "k", "selected", "rank", "score").rows() == [
        ("10pct", 2, 2, 0, 0.8),
        ("5pct", 1, 1, None, None),
    ]
    for seed, pool_id in ((0, "p1"), (1, "p2")):  # two selection replicates: each rank names its seed
        sql.run(
            "INSERT INTO selections (method, budget, k, rank, pool_id, pool_version, selection_seed) "
            "VALUES ('random', '5pct', 1, 0, ?, 'v1', ?)",
            [pool_id, seed],
        )
    ranks = db.selection_ranks("random", "p1")
    assert ranks.select("budget", "selection_seed", "selected", "rank").rows() == [
        ("5pct", 0, 1, 0),
        ("5pct", 1, 1, None),
    ]
    summary = db.selection_summary("less")
    assert summary.select("budget", "selected", "min_score", "max_score").rows() == [
        ("5pct", 1, 0.9, 0.9),
        ("10pct", 2, 0.7, 0.8),
    ]
    assert sorted(summary["tasks"][1].split(", ")) == ["chat", "math"]
    with pytest.raises(ValueError, match="is not selection_report"):
        db.report("examples")


def test_score_rows_reuse_cleanup_and_summary(db):
    db.ensure_score_table("loss_scores")
    sql = schema._Sql(db.conn)
    for pool_id, batch, model_hash, reason, ifd in [
        ("p1", "b1", "new", "", 0.4),
        ("p1", "b1", "old", "", 0.9),  # another model: stale
        ("gone", "b1", "new", "", 0.1),  # no longer in its batch: stale
        ("p2", "b2", "old", "", 0.5),  # another batch: untouched by a per-batch cleanup of b1
        ("q1", "bq", "new", "no response tokens", float("nan")),
    ]:
        sql.run(
            "INSERT INTO loss_scores (pool_id, batch, model_hash, code_version, prompt_template, reason, "
            "ifd_loss_ratio) VALUES (?, ?, ?, 'v1', 'chat', ?, ?)",
            [pool_id, batch, model_hash, reason, ifd],
        )
    keep = {"model_hash": "new", "code_version": "v1", "prompt_template": "chat"}
    reused = db.rows_matching("loss_scores", ["pool_id"], {"batch": "b1", **keep})
    assert sorted(reused["pool_id"]) == ["gone", "p1"]
    db.delete_stale("loss_scores", keep, batch="b1")
    remaining = sql.run("SELECT pool_id, batch, model_hash FROM loss_scores ORDER BY batch, pool_id")
    assert remaining == [("p1", "b1", "new"), ("p2", "b2", "old"), ("q1", "bq", "new")]

    summary = db.score_summary("loss_scores", "ifd_loss_ratio")
    assert (summary.rows, summary.undefined, summary.reasons) == (3, 1, [("no response tokens", 1)])
    assert summary.mean == pytest.approx(0.45)  # over the defined rows (0.4, 0.5); the NaN row has a reason
    one = db.score_summary("loss_scores", "ifd_loss_ratio", batch="bq")
    assert (one.rows, one.undefined) == (1, 1) and math.isnan(one.mean)

    db.delete_stale("loss_scores", {"model_hash": "new"})  # pool-wide: q1 is not a pool row
    assert sql.run("SELECT pool_id FROM loss_scores") == [("p1",)]
    with pytest.raises(ValueError, match="plain identifier"):
        db.rows_matching("loss_scores", ["pool_id"], {"batch = batch OR 1": 1})


def test_source_rows(db):
    sql = schema._Sql(db.conn)
    sql.run("UPDATE examples SET source = 'anchors' WHERE pool_id IN ('q2', 'p2')")
    assert db.source_rows("anchors", ("pool_id",))["pool_id"].to_list() == ["p2", "q2"]


def test_stored_selections_and_their_export_rows(db):
    sql = schema._Sql(db.conn)
    sql.run(
        "INSERT INTO batches (batch, split, original_path, sha256, fmt, layout) "
        "VALUES ('b1', 'pool', '/data/b1.jsonl', 'sha-b1', 'jsonl', 'qa')"
    )
    sql.run("UPDATE examples SET raw = '{\"q\": 1}', position = 3, file_path = 'raw/b1.jsonl' WHERE pool_id = 'p1'")
    sql.run("UPDATE examples SET raw = '{\"q\": 2}', position = 1 WHERE pool_id = 'p2'")
    for budget, seed, rank, pool_id, score, run in [
        ("5", 1, 1, "p1", None, "r2"),
        ("5", 1, 0, "p2", None, "r2"),
        ("5", 0, 0, "p1", None, "r1"),
        ("10pct", 0, 0, "p2", 0.5, "r3"),
        ("10pct", 0, 1, "gone", 0.25, "r3"),
    ]:
        sql.run(
            "INSERT INTO selections (method, budget, selection_seed, k, rank, pool_id, score, pool_version, config, "
            "mlflow_run_id) VALUES ('less', ?, ?, 2, ?, ?, ?, 'v1', '{\"task\": \"math\"}', ?)",
            [budget, seed, rank, pool_id, score, run],
        )
    found = db.stored_selections()
    assert found.select("method", "budget", "selection_seed", "n_rows", "k", "mlflow_run_id").rows() == [
        ("less", "10pct", 0, 2, 2, "r3"),
        ("less", "5", 0, 1, 2, "r1"),
        ("less", "5", 1, 2, 2, "r2"),
    ]
    rows = db.selection_export_rows("less", "5", 1)
    assert rows.select("rank", "pool_id", "task", "position", "source_file", "fmt").rows() == [
        (0, "p2", "chat", 1, None, None),  # b2 is not a registered batch here
        (1, "p1", "math", 3, "/data/b1.jsonl", "jsonl"),
    ]
    assert rows["raw"].to_list() == ['{"q": 2}', '{"q": 1}']
    assert [list(map(dict, m)) for m in rows["messages"].to_list()] == [MESSAGES["p2"], MESSAGES["p1"]]
    with_gone = db.selection_export_rows("less", "10pct", 0)
    assert with_gone["pool_id"].to_list() == ["p2", "gone"] and with_gone["raw"].to_list() == ['{"q": 2}', None]
    assert with_gone["score"].to_list() == [0.5, 0.25]
    assert db.selection_export_rows("less", "5", 7).height == 0


def test_warmup_identity_and_score_models(db):
    assert db.warmup_identity() is None
    db.record_warmup("w1", "models/warmup/w1", "v1", "smollm2", "h1", {})
    db.record_warmup("w2", "models/warmup/w2", "v1", "tiny", "h2", {})
    assert db.warmup_identity(key="w1") == {"warmup": "w1", "model": "smollm2", "model_hash": "h1"}
    assert db.warmup_identity()["warmup"] == "w2"
    assert db.warmup_identity(key="nope") is None
    assert db.warmup_identity(before=datetime(2000, 1, 1)) is None
    assert db.warmup_identity(before=datetime(2999, 1, 1))["warmup"] == "w2"
    db.ensure_score_table("loss_scores")
    sql = schema._Sql(db.conn)
    for pool_id, model_hash in (("p1", "h1"), ("p2", "h1")):
        sql.run("INSERT INTO loss_scores (pool_id, model, model_hash) VALUES (?, 'smollm2', ?)", [pool_id, model_hash])
    assert db.score_models("loss_scores") == [("smollm2", "h1")]
    with pytest.raises(ValueError, match="plain identifier"):
        db.score_models("loss_scores; DROP TABLE examples")

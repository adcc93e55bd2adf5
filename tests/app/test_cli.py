"""The ``dsel`` command: ingest, status, methods, and clear errors."""

import json

import pytest

from dsel_assets.app.cli import main
from resources.store import open_state

from ..helpers import write_jsonl


def test_ingest_status_and_idempotence(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    folder = tmp_path / "incoming"
    folder.mkdir()
    write_jsonl(
        folder / "chat.jsonl",
        [
            json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}),
            json.dumps({"messages": [{"role": "user", "content": "Only a question"}]}),
        ],
    )
    (folder / "alpaca.json").write_text(
        json.dumps(
            [
                {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
                {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
            ]
        )
    )
    assert main(["ingest", str(folder), "--task", "general", "--source", "mine"]) == 0
    out = capsys.readouterr().out
    assert "not_ending_on_assistant=1" in out and "duplicate=1" in out
    with open_state(home.duckdb, read_only=True) as db:
        examples = db.rows_matching("examples", ["source"], {})
        assert examples.height == 2
        assert db.rows_matching("quarantine", ["batch"], {}).height == 2
        assert examples["source"].unique().to_list() == ["mine"]

    assert main(["ingest", str(folder / "chat.jsonl")]) == 0
    assert "already batch" in capsys.readouterr().out

    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "mine" in out and "not_ending_on_assistant" in out and "pool_batch" in out

    # --home before or after the subcommand; after it wins
    monkeypatch.setenv("DSEL_HOME", str(tmp_path / "elsewhere"))
    for argv in (["status", "--home", str(home.root)], ["--home", "/nowhere", "status", "--home", str(home.root)]):
        assert main(argv) == 0
        assert f"state home: {home.root}" in capsys.readouterr().out


def test_methods_lists_the_registry(capsys):
    assert main(["methods", "--json"]) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert {"random", "kmeans_centroids", "kmeans_random"} <= set(listed)
    assert listed["kmeans_random"]["needs"] == "sentence_embeddings"
    # a required target is shown as such; an optional one keeps its default '' (every task)
    assert (
        "task=<query-task>" in listed["cluster_ucb"]["params"]
        and "task=<pool-task>" in listed["random_in_task"]["params"]
    )
    assert "task= " in listed["round_robin"]["params"] + " "
    assert main(["methods"]) == 0
    assert "diversity" in capsys.readouterr().out


def test_missing_path_is_a_clear_error(home, capsys):
    assert main(["ingest", "/no/such/file.jsonl"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_bad_mapping_is_a_clear_error(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    path = write_jsonl(tmp_path / "x.jsonl", [json.dumps({"a": "b"})])
    assert main(["ingest", str(path), "--mapping", "prompt=a"]) == 2
    assert "mapping" in capsys.readouterr().err


def test_score_computes_one_representation_for_the_pool(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DSEL_MODEL", "tiny")
    monkeypatch.delenv("DSEL_POOLING", raising=False)
    rows = [json.dumps({"instruction": f"Add {i} and {i}.", "input": "", "output": f"{2 * i}"}) for i in range(6)]
    (tmp_path / "alpaca.json").write_text("[" + ",".join(rows) + "]")
    assert main(["ingest", str(tmp_path / "alpaca.json"), "--task", "math"]) == 0
    capsys.readouterr()
    assert main(["score", "model_embeddings", "--model", "tiny", "--pooling", "position_weighted"]) == 0
    out = capsys.readouterr().out
    assert "model_embeddings_position_weighted_" in out and "materializing model_embeddings" in out
    assert main(["score", "loss", "--model", "tiny"]) == 0
    with open_state(home.duckdb, read_only=True) as db:
        models = db.score_columns("loss_scores", ["model"])["model"]
    assert (models.len(), models.drop_nulls().n_unique()) == (6, 1)
    with pytest.raises(SystemExit):
        main(["score", "no_such_kind"])


def test_run_takes_budget_like_select_and_compare_and_keeps_budgets():
    from dsel_assets.app.cli import parser
    from dsel_assets.app.cli.comparison import DEFAULT_RUN_BUDGETS

    assert parser().parse_args(["run", "--budget", "5%", "--budget", "20"]).budgets == ["5%", "20"]
    assert parser().parse_args(["run", "--budgets", "10%", "20"]).budgets == ["10%", "20"]  # the old spelling
    assert parser().parse_args(["run"]).budgets is None and DEFAULT_RUN_BUDGETS == ["5%", "10%"]


def test_debug_shows_the_traceback_of_a_value_error_too(home, capsys, monkeypatch):
    """A ValueError may be an internal bug: with DSEL_DEBUG=1 it is raised, not printed as a user error."""
    assert main(["ingest", "/no/such/file.jsonl"]) == 2 and "does not exist" in capsys.readouterr().err
    monkeypatch.setenv("DSEL_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["ingest", "/no/such/file.jsonl"])


def test_verbosity_options_go_before_or_after_the_subcommand(home, tmp_path, capsys, monkeypatch):
    from dsel_assets.app.cli import parser

    assert parser().parse_args(["-v", "status"]).verbose and parser().parse_args(["status", "-q"]).quiet
    args = parser().parse_args(["status", "--home", "h", "--verbose"])
    assert (args.home, args.verbose, args.quiet) == ("h", True, False)
    with pytest.raises(SystemExit):
        main(["-v", "status", "-q"])
    assert "-v and -q cannot be combined" in capsys.readouterr().err

    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps({"question": "1+1?", "answer": "2"})])
    assert main(["ingest", str(path), "--model", "tiny"]) == 0
    out = capsys.readouterr()
    log = home.root / "logs" / "dsel.log"
    # by default Dagster's INFO lines go to the log file, whose path is printed once
    assert "validating" not in out.err and f"[dsel] details: {log}" in out.err
    # and a bar line per stage of work, here the file's validation
    assert "[dsel] ingestion       [####################]  1 records in " in out.err
    assert "pool_batch: validating" in log.read_text()
    assert main(["-q", "ingest", str(path), "--force"]) == 0
    quiet = capsys.readouterr()
    assert "[dsel]" not in quiet.out + quiet.err and "accepted" in quiet.out  # the result table only
    assert main(["ingest", str(path), "--force", "-v"]) == 0
    assert "validating" in capsys.readouterr().err  # live again


def test_internal_errors_say_so_and_user_errors_name_the_field(home, capsys, monkeypatch):
    from dsel_assets.app.cli import data as cli

    def broken(args):
        return {}["model_hash"]  # a bug, not the user's input

    monkeypatch.setattr(cli, "cmd_status", broken)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "dsel: internal error: KeyError: model_hash (a bug: please report it" in err
    assert main(["ingest", "/no/such/file.jsonl"]) == 2  # the user's: names the field, no "internal"
    err = capsys.readouterr().err
    assert err.startswith("dsel: error: path: ") and "internal" not in err


def test_method_parameters_are_checked_in_either_spelling(home, capsys):
    """``select`` takes KEY=VALUE or compare's METHOD.KEY=VALUE; a wrong type or key is named, with
    the valid keys, their types and defaults, before any work."""
    budget = ["--budget", "5%", "--model", "tiny"]
    assert main(["select", "--method", "kmeans_random", "--param", "kmeans_random.n_clusters=abc", *budget]) == 2
    assert "dsel: error: kmeans_random.n_clusters: expected int, got 'abc'" in capsys.readouterr().err
    assert main(["select", "--method", "kmeans_random", "--param", "n_cluster=4", *budget]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter(s) n_cluster='4'; valid: " in err and "n_clusters (int, default " in err
    assert not home.duckdb.exists()  # refused before anything was stored


def test_a_target_task_is_checked_before_any_work(home, tmp_path, capsys, monkeypatch):
    """A method that needs a target task refuses to start without one, and any targeted method
    refuses a label its split does not hold, naming the stored labels (cluster_ucb failed inside
    its run after the pool was materialized)."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    budget = ["--budget", "5%", "--model", "tiny"]
    assert main(["select", "--method", "less", *budget]) == 2
    assert "target: less.task: a target task is required; the query set holds no examples yet (dsel ingest" in (
        capsys.readouterr().err
    )
    rows = [json.dumps({"question": f"What is {i} plus 1?", "answer": f"{i + 1}"}) for i in range(4)]
    pool = write_jsonl(tmp_path / "pool.jsonl", rows)
    query = write_jsonl(tmp_path / "query.jsonl", rows[:2])
    assert main(["ingest", str(query), "--split", "query", "--task", "gsm8k", "--model", "tiny"]) == 0
    assert main(["ingest", str(pool), "--task", "math", "--model", "tiny", "--force"]) == 0
    capsys.readouterr()
    runs_before = len(list(home.dagster.rglob("*"))) if home.dagster.exists() else 0
    assert main(["select", "--method", "cluster_ucb", *budget]) == 2
    needs = "cluster_ucb.task: a target task is required; tasks of the query set: gsm8k; name it with --target"
    assert needs in capsys.readouterr().err
    assert main(["select", "--method", "round_robin", "--target", "math", *budget]) == 2
    unknown = "target: round_robin.task: 'math' is not a task of the query set; tasks of the query set: gsm8k"
    assert unknown in capsys.readouterr().err
    assert main(["select", "--method", "random_in_task", "--param", "task=gsm8k", *budget]) == 2
    unknown = "target: random_in_task.task: 'gsm8k' is not a task of the pool; tasks of the pool: math"
    assert unknown in capsys.readouterr().err
    assert (len(list(home.dagster.rglob("*"))) if home.dagster.exists() else 0) == runs_before  # no run started


def test_a_step_that_fails_is_one_error_line_and_its_trace_is_in_the_log(home, tmp_path, capsys, monkeypatch):
    """A user error raised inside a run's step reaches the console as dsel's one error line:
    Dagster's failure lines and their stack trace go to the log file, not the terminal."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    rows = [json.dumps({"question": f"What is {i} plus 1?", "answer": f"{i + 1}"}) for i in range(5)]
    assert main(["ingest", str(write_jsonl(tmp_path / "pool.jsonl", rows)), "--model", "tiny"]) == 0
    capsys.readouterr()
    code = main(["score", "golden", "--param", "anchors=source:nosuch", "--model", "tiny"])
    err = capsys.readouterr().err
    assert code != 0 and "dsel: error: " in err and "no examples from 'source:nosuch'" in err
    assert "Stack Trace" not in err and "dagster - ERROR" not in err and "Traceback" not in err
    log = (home.root / "logs" / "dsel.log").read_text()
    assert 'Execution of step "golden_score" failed' in log and "no examples from 'source:nosuch'" in log
    assert "File " in log.split('Execution of step "golden_score" failed', 1)[1]  # the stack trace


def test_a_run_warning_is_one_dsel_line_and_provided_scores_keep_their_scale(home, tmp_path, capsys, monkeypatch):
    """Scores on DEITA's 1-6 scale are the quality as given (not clamped to 1); beside rows that
    fall back to the model likelihood, the run warns once on the terminal, as a dsel line."""
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    scored = [{"instruction": f"Add {i} and 1.", "output": f"{i + 1}", "score": s} for i, s in enumerate((2.5, 5.5, 4))]
    plain = [{"question": "What is 2 times 3?", "answer": "6"}]
    for name, rows in (("deita", scored), ("plain", plain)):
        path = write_jsonl(tmp_path / f"{name}.jsonl", [json.dumps(r) for r in rows])
        assert main(["ingest", str(path), "--source", name, "--model", "tiny"]) == 0
    capsys.readouterr()
    assert main(["score", "quality", "--model", "tiny"]) == 0
    err = capsys.readouterr().err
    assert "[dsel] warning: quality: 3 provided scores span [2.5, 5.5] while 1 rows without one" in err
    assert "dagster - WARNING" not in err
    with open_state(home.duckdb, read_only=True) as db:
        stored = db.rows_matching("quality", ["quality", "how"], {})
    assert sorted(stored.filter(stored["how"] == "column_score")["quality"].to_list()) == [2.5, 4.0, 5.5]

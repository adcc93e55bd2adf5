"""``dsel compare``: refusals before any work, selection and training seeds, progress, the
table with CIs, and resuming after a kill (tiny model, synthetic data)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from dsel_assets.checks import selection_problems
from dsel_assets.cli import main
from dsel_assets.compare import ComparePlan
from dsel_assets.core.data.synthetic import generate
from dsel_assets.pool import pool, pool_batch, pool_batches
from dsel_assets.selections import selection_assets
from dsel_assets.store.queries import frame

from .test_assets import register

ROOT = Path(__file__).resolve().parents[1]


def _ingest(tmp_path, splits=("queries", "eval", "pool")) -> None:
    paths = generate(seed=2, per_capability=8, eval_per_capability=4).write(tmp_path / "data")
    split_of = {"queries": "query", "eval": "eval", "pool": "pool"}
    for name in splits:
        argv = ["ingest", str(paths[name]), "--split", split_of[name], "--task", "auto", "--source", f"syn_{name}"]
        assert main([*argv, "--model", "tiny"]) == 0


COMPARE = [
    "compare",
    "--methods",
    "random",
    "less",
    "--budget",
    "10%",
    "--target",
    "arithmetic",
    "--seeds",
    "2",
    "--random-seeds",
    "2",
    "--eval-per-task",
    "4",
    "--epochs",
    "1",
    "--max-length",
    "96",
    "--eval-max-length",
    "160",
    "--metric",
    "both",
    "--max-new-tokens",
    "6",
    "--config",
    "warmup_checkpoint.epochs=1",
    "--model",
    "tiny",
    "--grad-dim",
    "128",
]


def test_refuses_a_target_without_eval_or_query_rows(home, tmp_path, capsys):
    _ingest(tmp_path, splits=("pool",))
    assert main(COMPARE) == 2
    err = capsys.readouterr().err
    assert "'arithmetic' has no eval rows" in err and "--split eval --task arithmetic" in err
    assert "no query rows, which less select for" in err
    assert not ((home.root / "models") / "finetuned").exists()  # nothing was trained


def test_refuses_bad_settings_by_name(home, tmp_path, capsys):
    _ingest(tmp_path)
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        main([*COMPARE, "--metric", "bleu"])
    assert "invalid choice: 'bleu'" in capsys.readouterr().err
    assert main([a if a != "less" else "no_such_method" for a in COMPARE]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert main([*COMPARE, "--param", "kmeans_centroids.k=3"]) == 2
    assert "param: ['kmeans_centroids'] are not among --methods" in capsys.readouterr().err
    with pytest.raises(ValueError, match="seeds: must be >= 1"):
        ComparePlan(methods=["random"], budgets=["5%"], targets=["math"], seeds=0)


def test_plan_aims_single_task_methods_at_the_first_target():
    plan = ComparePlan(methods=["random", "less", "round_robin"], budgets=["5%"], targets=["math", "code"])
    assert plan.method_params("less") == {"task": "math"}  # LESS ranks for one task
    assert plan.method_params("round_robin") == {"task": ""}  # serves every query task
    assert plan.method_params("random") == {}
    ops = plan.run_config()["ops"]
    assert ops["selection_random"]["config"]["seeds"] == [0, 1, 2]
    assert ops["selection_less"]["config"]["seeds"] == []
    assert ops["finetuned_less"]["config"]["seeds"] == [0, 1]
    assert ops["eval_less"]["config"]["tasks"] == ["math", "code"]
    assert plan.models_per_method("random") == 3 * 2 and plan.models_per_method("less") == 2


def test_selection_seeds_store_checked_replicates(home, local_resources):
    paths = generate(seed=3, per_capability=6).write(home.root / "syn")
    instance = dg.DagsterInstance.ephemeral()
    manifest = register(home, paths["pool"], source="syn", task="auto", split="pool")
    instance.add_dynamic_partitions(pool_batches.name, [manifest.batch])
    dg.materialize([pool_batch, pool], partition_key=manifest.batch, resources=local_resources, instance=instance)
    random = next(a for a in selection_assets if a.key.path[-1] == "selection_random")
    config = {"ops": {"selection_random": {"config": {"budgets": ["5"], "seeds": [0, 1, 2]}}}}
    assert dg.materialize([random], resources=local_resources, instance=instance, run_config=config).success
    with duckdb.connect(str(home.duckdb), read_only=True) as conn:
        rows = frame(conn, "SELECT * FROM selections WHERE method = 'random'")
        known = {v: set(frame(conn, "SELECT pool_id FROM examples")["pool_id"]) for v in rows["pool_version"].unique()}
    replicates = {s: set(g["pool_id"]) for (s,), g in rows.group_by(["selection_seed"])}
    assert sorted(replicates) == [0, 1, 2] and all(len(ids) == 5 for ids in replicates.values())
    assert len({frozenset(ids) for ids in replicates.values()}) == 3  # different draws
    assert selection_problems(rows, known) == []
    # a duplicated id inside one replicate is still caught, with its seed named
    broken = rows.filter(rows["selection_seed"] != 1).vstack(rows.filter(rows["selection_seed"] == 1).head(4))
    broken = broken.vstack(rows.filter(rows["selection_seed"] == 1).head(1))
    assert any("(seed 1)" in p and "repeated" in p for p in selection_problems(broken, known))
    bids = next(a for a in selection_assets if a.key.path[-1] == "selection_bids")  # deterministic: no seed
    bad = {"ops": {"selection_bids": {"config": {"budgets": ["5"], "seeds": [0, 1]}}}}
    with pytest.raises(ValueError, match="seeds: .* has no 'seed' parameter"):
        dg.materialize([bids], resources=local_resources, instance=instance, run_config=bad)


def _dsel(home, *args) -> subprocess.Popen:
    env = {**os.environ, "DSEL_HOME": str(home.root), "DSEL_MAX_CONCURRENT": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dsel_assets.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_compare_end_to_end_resumes_after_a_kill(home, tmp_path):
    _ingest(tmp_path)
    finetuned = (home.root / "models") / "finetuned"
    first = _dsel(home, *COMPARE)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(finetuned.glob("*/manifest.json"))) < 1:
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # mid fine-tuning: some models stored, the rest not
    first.wait()
    before = {p.parent.name: p.stat().st_mtime_ns for p in finetuned.glob("*/manifest.json")}
    assert 1 <= len(before) < 6

    second = _dsel(home, *COMPARE)
    out = second.communicate(timeout=900)[0]
    assert second.returncode == 0, out[-3000:]
    # progress per stage and overall, with ETA
    assert "[compare] stage 2/4: fine-tunes (6 models" in out and "[compare] stage 3/4: evals (7 models" in out
    assert "fine-tunes: 6/6 models" in out and "overall:" in out and "ETA" in out
    after = {p.parent.name: p.stat().st_mtime_ns for p in finetuned.glob("*/manifest.json")}
    assert len(after) == 6  # random: 2 selection seeds x 2 training seeds; less: 1 x 2
    assert all(after[key] == mtime for key, mtime in before.items())  # stored models reused, not retrained
    with duckdb.connect(str(home.duckdb), read_only=True) as conn:
        models = frame(conn, "SELECT method, selection_seed, seed FROM finetuned_models ORDER BY ALL")
        assert models.rows() == [
            ("less", 0, 0),
            ("less", 0, 1),
            ("random", 0, 0),
            ("random", 0, 1),
            ("random", 1, 0),
            ("random", 1, 1),
        ]
        per_model = frame(conn, "SELECT model_key, count(*) AS n FROM eval_examples GROUP BY ALL")
        assert per_model.height == 7 and set(per_model["n"]) == {4}  # 6 models + base, 4 arithmetic rows
        table = frame(conn, "SELECT * FROM comparison_report WHERE task = 'arithmetic' AND measure = 'loss'")
    verdicts = dict(zip(table["method"], table["verdict"], strict=True))
    assert verdicts["random"] == "baseline" and verdicts["base"] == "no baseline"
    assert verdicts["less"] in ("better", "worse", "no detectable difference")
    assert dict(zip(table["method"], table["models"], strict=True)) == {"random": 4, "less": 2, "base": 1}
    assert "vs random" in out and "mean [95% CI]" in out
    with duckdb.connect(str(home.duckdb), read_only=True) as conn:  # --metric both: graded generations too
        measures = set(frame(conn, "SELECT DISTINCT measure FROM comparison_report")["measure"])
    assert {"loss", "score:exact_match", "loss:mean", "loss:worst", "loss:spread"} <= measures
    html = (home.root / "reports") / "comparison_report.html"
    assert html.exists() and "data:image/png;base64," in html.read_text(encoding="utf-8")

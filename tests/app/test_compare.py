"""``dsel compare``: refusals before any work, selection and training seeds, progress, the
table with CIs, and resuming after a kill (tiny model, synthetic data)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import lance
import polars as pl
import pytest
from polars import from_arrow as frame_of

from dsel_assets.app.cli import main
from dsel_assets.app.compare import ComparePlan, Progress, check_plan
from dsel_assets.core.data.synthetic import generate
from dsel_assets.pipeline.assets.reporting.evaluation import EvalRunConfig, load_eval_set
from dsel_assets.pipeline.assets.selection.selections import selection_assets
from dsel_assets.pipeline.catalog import entry_key, parse_entry
from dsel_assets.pipeline.checks import pool_ids_by_version, selection_problems
from resources.store import open_state

from ..helpers import synthetic_pool_instance

ROOT = Path(__file__).resolve().parents[2]


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


def test_task_matched_random_needs_pool_rows_of_the_target_not_query_rows(home, tmp_path):
    _ingest(tmp_path, splits=("eval", "pool"))  # no query rows: random_in_task reads none

    def problems(target):
        plan = ComparePlan(methods=["random", "random_in_task"], budgets=["10%"], targets=[target])
        with open_state(home.duckdb, read_only=True) as db:
            return check_plan(plan, db)[0]

    assert problems("arithmetic") == []
    (missing_eval, no_pool_rows) = problems("nosuchtask")
    assert "'nosuchtask' has no eval rows" in missing_eval
    assert "'nosuchtask' labels no pool rows, which random_in_task sample from" in no_pool_rows
    assert "'arithmetic'" in no_pool_rows  # the pool's labels, to choose from


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
    with pytest.raises(ValueError, match="selection_seeds: must be >= 1, got 0"):
        ComparePlan(methods=["random"], budgets=["5%"], targets=["math"], selection_seed_count=0)


#: Each was accepted up front and then failed inside a step, or started days of work, or was ignored.
BAD_VALUES = [
    (["--budget", "nan%"], "budget: must be a positive count"),
    (["--lr", "nan"], "lr: must be a finite number > 0, got nan"),
    (["--lr", "-1"], "lr: must be a finite number > 0"),
    (["--budget", "0.001"], "budget: 0.001 of 48 pool rows selects no example"),
    (["--seeds", "1000000"], "plan: 2000000 fine-tunes"),
    (
        ["--methods", "random", "random_in_task", "--param", "random_in_task.task=../../etc"],
        "param: random_in_task.task='../../etc' is not a task of the pool or query rows",
    ),
    (["--config", "nosuchasset.x=1"], "config: 'nosuchasset' is not an asset that takes config"),
    (["--config", "warmup_checkpoint.epochz=1"], "config: warmup_checkpoint: unknown key 'epochz' (value 1); valid"),
]


def test_refuses_bad_values_before_any_work(home, tmp_path, capsys):
    _ingest(tmp_path)
    for extra, message in BAD_VALUES:
        capsys.readouterr()
        assert main([*[a for a in COMPARE if a != "less"], *extra]) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not (home.root / "models").exists()  # nothing was trained


def test_warns_when_a_target_has_fewer_eval_groups_than_a_verdict_needs(home, tmp_path):
    _ingest(tmp_path)
    warnings: list[str] = []
    plan = ComparePlan(methods=["random"], budgets=["10%"], targets=["arithmetic"], eval_per_task=4)
    with open_state(home.duckdb, read_only=True) as db:
        problems, plan = check_plan(plan, db, warn=warnings.append)
        assert problems == []
        sample, version, _ = load_eval_set(db, ["arithmetic"], EvalRunConfig(max_per_task=4, generate=False).to_core())
    assert warnings == ["[compare] target 'arithmetic': 4 eval groups, fewer than the 20 a verdict needs"]
    # the plan froze the sample every eval asset will compute from the same config
    assert len(sample) == 4 and plan.eval_version == version
    config = plan.run_config()["ops"]
    assert (
        config["eval_random"]["config"]["eval_version"]
        == version
        == config["comparison_report"]["config"]["eval_version"]
    )


def test_plan_aims_single_task_methods_at_the_first_target():
    plan = ComparePlan(methods=["random", "less", "round_robin"], budgets=["5%"], targets=["math", "code"])
    assert plan.method_params("less") == {"task": "math"}  # LESS ranks for one task
    assert plan.method_params("round_robin") == {"task": ""}  # serves every query task
    assert plan.method_params("random") == {}
    ops = plan.run_config()["ops"]
    assert ops["selection_random"]["config"]["seeds"] == [0, 1, 2]
    # less: one selection per warmup seed, each its own run (the first here)
    assert ops["selection_less"]["config"] == {
        "budgets": ["5%"],
        "params": {"task": "math"},
        "seeds": [],
        "warmup_seed": 0,
        "warmup_replicates": [0, 1, 2],
    }
    assert ops["warmup_checkpoint"]["config"] == {"seed": 0}
    assert ops["finetuned_less"]["config"]["seeds"] == [0, 1]
    assert ops["eval_less"]["config"]["tasks"] == ["math", "code"]
    assert plan.models_per_method("random") == 3 * 2 and plan.models_per_method("less") == 3 * 2
    one = ComparePlan(methods=["random", "less"], budgets=["5%"], targets=["math"], selection_seed_count=1)
    assert one.warmup_seeds() == [] and one.models_per_method("less") == 2  # N = 1: one warmup, as before
    assert one.run_config()["ops"]["selection_less"]["config"]["seeds"] == []
    assert "warmup_seed" not in one.run_config()["ops"]["selection_less"]["config"]
    assert "warmup_checkpoint" not in one.run_config()["ops"]
    assert "less: 1 selection; selection variance not sampled: warmup (one warmup checkpoint" in one.sampling("less")
    assert one.randomness_by_key()["less"] == "warmup" and one.warmup_cost() is None


def test_plan_replicates_each_method_through_its_randomness():
    entries = ["random", "kmeans_random", "less", "cluster_ucb", "round_robin@rds", "facility_location", "nuggets"]
    plan = ComparePlan(methods=entries, budgets=["5%", "10%"], targets=["math"], selection_seed_count=3)
    ops = plan.run_config()["ops"]
    seeds = {name.removeprefix("selection_"): op["config"]["seeds"] for name, op in ops.items() if "selection_" in name}
    assert seeds == {
        "random": [0, 1, 2],  # seed
        "kmeans_random": [0, 1, 2],  # seed
        "less": [],  # warmup: one selection per warmup seed, each run with its warmup
        "cluster_ucb": [0],  # seed+warmup: the method seed that goes with the (first) warmup seed
        "round_robin_rds": [],  # deterministic on RDS+
        "facility_location": [],  # lazy greedy by default: its seed is unused
        "nuggets": [],  # upstream: golden_score's k-means anchors
    }
    assert plan.warmup_seeds() == [0, 1, 2]
    assert {e: plan.selection_seeds(e) for e in entries if plan.samples_warmup(e)} == {
        "less": [0, 1, 2],
        "cluster_ucb": [0, 1, 2],
    }
    assert plan.selection_config("cluster_ucb", warmup_seed=2) | {"params": None} == {
        "budgets": ["5%", "10%"],
        "params": None,
        "seeds": [2],  # replicate 2: warmup seed 2 and method seed 2
        "warmup_seed": 2,
        "warmup_replicates": [0, 1, 2],
    }
    assert plan.run_config(warmup_seed=1)["ops"]["warmup_checkpoint"]["config"] == {"seed": 1}
    with pytest.raises(ValueError, match="warmup_seed: 5 is not one of the warmup seeds"):
        plan.selection_config("less", warmup_seed=5)
    # budgets (2) x selections x training seeds (2)
    assert {m: plan.models_per_method(m) for m in entries} == {
        "random": 12,
        "kmeans_random": 12,
        "less": 12,
        "cluster_ucb": 12,
        "round_robin@rds": 4,
        "facility_location": 4,
        "nuggets": 4,
    }
    assert Progress(plan, lambda _: None).units == {"warmups": 3, "fine-tunes": 60, "evals": 61}  # + the base model
    assert plan.randomness_by_key() == {
        "random": "seed",
        "kmeans_random": "seed",
        "less": "seed",  # its warmup sampled: fully sampled, as the report will read it
        "cluster_ucb": "seed",
        "round_robin_rds": "none",
        "facility_location": "none",
        "nuggets": "upstream",
    }
    assert plan.randomness("less") == "warmup"  # what it declares
    assert plan.sampling("kmeans_random") == "kmeans_random: 3 selections (seeds 0-2) sample its seed"
    assert plan.sampling("less") == "less: 3 selections (warmup seeds 0-2) sample its warmup"
    assert plan.sampling("cluster_ucb") == (
        "cluster_ucb: 3 selections (seeds 0-2 with warmup seeds 0-2) sample its seed and warmup"
    )
    cost = plan.warmup_cost()
    assert cost.startswith("warmup seeds 0-2: 3 warmups (2 more than without warmup replicates), each a LoRA warmup")
    assert "gradient features of the whole pool" in cost and "shared by less, cluster_ucb" in cost
    # the warmup seeds start at the configured one; the other warmup settings stay
    moved = ComparePlan(
        ["random", "less"], ["5%"], ["math"], selection_seed_count=2, asset_config={"warmup_checkpoint": {"seed": 4}}
    )
    assert moved.warmup_seeds() == [4, 5] and moved.selection_seeds("less") == [4, 5]
    with pytest.raises(ValueError, match="warmup_checkpoint.seed must be an integer"):
        ComparePlan(["random", "less"], ["5%"], ["math"], asset_config={"warmup_checkpoint": {"seed": "x"}})
    assert "not sampled: upstream (fixed by the seed of golden_score)" in plan.sampling("nuggets")
    assert "no selection variance to sample" in plan.sampling("round_robin@rds")
    # the baseline's own count; a seed parameter moves the seeds; the stochastic greedy is seeded
    other = ComparePlan(
        ["random", "kmeans_random", "facility_location"],
        ["5%"],
        ["math"],
        selection_seed_count=2,
        random_seeds=4,
        params={"kmeans_random": {"seed": "10"}, "facility_location": {"optimizer": "stochastic"}},
    )
    assert other.selection_seeds("random") == [0, 1, 2, 3] and other.selection_seeds("kmeans_random") == [10, 11]
    assert other.selection_seeds("facility_location") == [0, 1] and other.models_per_method("random") == 4 * 2
    assert ComparePlan(["random"], ["5%"], ["math"], selection_seed_count=1).selection_seeds("random") == [0]


def test_progress_counts_warmup_seeds_apart_from_models():
    plan = ComparePlan(methods=["random", "less"], budgets=["5%"], targets=["math"], selection_seed_count=2)
    lines: list[str] = []
    progress = Progress(plan, lines.append)
    assert progress.units == {"warmups": 2, "fine-tunes": 8, "evals": 9}  # less: 2 warmup seeds x 2 training seeds
    progress.advance("warmups", 1, 60.0)
    progress.advance("fine-tunes", 2, 12.0)
    # a warmup seed's rate is no guess for a model's; once a model is measured, the evals take its rate
    assert lines[0].startswith("[compare] warmups: 1/2 warmup seeds, stage ETA 1.0 min;")
    assert lines[0].endswith("ETA 1.0 min + the fine-tunes and evals (not measured yet)")
    assert lines[1].endswith("ETA 2.5 min")  # 1 warmup x 60 s + 6 fine-tunes x 6 s + 9 evals x 6 s


def test_method_at_representation_is_its_own_entry():
    plan = ComparePlan(
        methods=["random", "round_robin", "round_robin@rds", "round_robin@embed", "knn_kde@rds"],
        budgets=["5%"],
        targets=["math", "code"],
        params={"round_robin": {"task": "math"}, "round_robin@rds": {"task": "code"}},
    )
    keys = ["random", "round_robin", "round_robin_rds", "round_robin_embed", "knn_kde_rds"]
    assert plan.selection_keys() == keys
    assert plan.method_params("round_robin") == {"task": "math"}  # METHOD.KEY: every entry of the method
    assert plan.method_params("round_robin@rds") == {"task": "code", "representation": "rds"}  # the entry's wins
    assert plan.method_params("round_robin@embed") == {"task": "math", "representation": "embed"}
    assert plan.method_params("knn_kde@rds") == {"task": "", "representation": "rds"}  # serves every target
    ops = plan.run_config()["ops"]
    assert all(f"{kind}_{key}" in ops for key in keys for kind in ("selection", "finetuned", "eval"))
    assert ops["selection_round_robin_rds"]["config"]["params"] == {"task": "code", "representation": "rds"}
    assert ops["comparison_report"]["config"]["methods"] == keys
    assert parse_entry("round_robin@less") == ("round_robin", "less") and entry_key("round_robin@less") == "round_robin"
    assert entry_key("knn_kde@embed") == "knn_kde_embed" and parse_entry("random") == ("random", None)


@pytest.mark.parametrize(
    ("methods", "params", "message"),
    [
        (
            ["random", "round_robin@nope"],
            {},
            "'round_robin@nope': 'nope' is not a representation of round_robin; one of ['less', 'rds', 'embed']",
        ),
        (["random", "random@rds"], {}, "'random@rds': random has no representations to choose from (only bids, "),
        (["random", "nope@rds"], {}, "'nope@rds': 'nope' is not a method; one of ['bids', "),
        (["random", "round_robin@"], {}, "'round_robin@': '' is not a representation of round_robin"),
        (["random", "less", "less@less"], {}, "'less' and 'less@less' are the same selection (less)"),
        (["random", "round_robin@rds"], {"round_robin@embed": {"task": "x"}}, "param: ['round_robin@embed'] are not"),
        (["random", "round_robin"], {"round_robin": {"representation": "rds"}}, "e.g. --methods round_robin@rds"),
    ],
)
def test_bad_entries_are_refused_naming_the_value_and_the_choices(methods, params, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ComparePlan(methods=methods, budgets=["5%"], targets=["math"], params=params)


def test_cli_refuses_a_bad_entry_before_any_work(home, capsys):
    argv = ["compare", "--methods", "random", "round_robin@nope", "--target", "math", "--model", "tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "dsel: error: methods: 'round_robin@nope'" in err and "['less', 'rds', 'embed']" in err
    assert "Traceback" not in err and not (home.root / "models").exists()
    argv = ["compare", "--methods", "random", "round_robin@rds", "--target", "math", "--param", "round_robin@rds.k=3"]
    assert main(argv) == 2
    assert "round_robin: unknown parameter(s) k='3'; valid: " in capsys.readouterr().err


def test_selection_seeds_store_checked_replicates(home, local_resources):
    instance = synthetic_pool_instance(home, local_resources)
    random = next(a for a in selection_assets if a.key.path[-1] == "selection_random")
    config = {"ops": {"selection_random": {"config": {"budgets": ["5"], "seeds": [0, 1, 2]}}}}
    assert dg.materialize([random], resources=local_resources, instance=instance, run_config=config).success
    with open_state(home.duckdb, read_only=True) as db:
        rows = db.rows_matching("selections", db.columns("selections"), {"method": "random"})
        ids = set(db.rows_matching("examples", ["pool_id"], {})["pool_id"])
        known = {v: ids for v in rows["pool_version"].unique()}
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
        [sys.executable, "-m", "dsel_assets.app.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


#: COMPARE with a seeded method besides random (2 selection replicates, as random's: --selection-seeds
#: sets both; less gets one per warmup seed, 0 and 1) and a targeted method on another representation,
#: its own entry.
END_TO_END = [
    *COMPARE[:4],
    "kmeans_random",
    "round_robin@embed",
    *(a if a != "--random-seeds" else "--selection-seeds" for a in COMPARE[4:]),
]


def _warmups(home) -> dict[int, dict]:
    """Warmup seed -> {key, sample, mtime} of every recorded warmup (its manifest)."""
    with open_state(home.duckdb, read_only=True) as db:
        rows = db.rows_matching("warmups", ["warmup", "path", "config"], {}).rows()
    out = {}
    for key, path, config in rows:
        manifest = Path(path) / "manifest.json"
        sample = json.loads(manifest.read_text(encoding="utf-8"))["sample"]
        out[json.loads(config)["seed"]] = {"key": key, "sample": sample, "mtime": manifest.stat().st_mtime_ns}
    return out


def test_compare_end_to_end_resumes_after_a_kill(home, tmp_path):
    _ingest(tmp_path)
    finetuned = (home.root / "models") / "finetuned"
    first = _dsel(home, *END_TO_END)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and len(list(finetuned.glob("*/manifest.json"))) < 1:
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # mid fine-tuning: some models stored, the rest not
    first.wait()
    before = {p.parent.name: p.stat().st_mtime_ns for p in finetuned.glob("*/manifest.json")}
    assert 1 <= len(before) < 14
    # stage 1 is done: a warmup per warmup seed, each with its own sample (and LoRA init)
    warmups = _warmups(home)
    assert sorted(warmups) == [0, 1] and warmups[0]["sample"] != warmups[1]["sample"]
    with open_state(home.duckdb, read_only=True) as db:
        n_pool = db.split_rows("pool", ["pool_id"]).height
    features = lance.dataset(str(home.lance / "pool_grad_features_d128_rademacher0.lance"))
    per_warmup = frame_of(features.to_table(columns=["warmup", "pool_id"])).group_by("warmup").len()
    assert dict(per_warmup.rows()) == {w["key"]: n_pool for w in warmups.values()}  # both kept, 1 checkpoint

    second = _dsel(home, *END_TO_END, "-v")  # -v: Dagster's INFO lines (what was reused) live
    out = second.communicate(timeout=900)[0]
    assert second.returncode == 0, out[-3000:]
    # what the selection replicates sample, and what the warmup seeds cost
    assert "[compare] kmeans_random: 2 selections (seeds 0-1) sample its seed" in out
    assert "[compare] less: 2 selections (warmup seeds 0-1) sample its warmup" in out
    assert "[compare] warmup seeds 0-1: 2 warmups (1 more than without warmup replicates)" in out
    assert "[compare] round_robin@embed: 1 selection; deterministic given its inputs" in out
    # a rerun reuses the stored warmups and their gradient features (none recomputed)
    assert _warmups(home) == warmups and out.count("stored, reused (not retrained)") == 2
    assert not re.search(r"pool_grad_features\[\S+\] checkpoint \d+: \d+/\d+ examples", out)  # no feature computed
    assert features.checkout_version(features.latest_version).count_rows() == 2 * n_pool
    # progress per stage and overall, with ETA
    assert "[compare] warmups: 2/2 warmup seeds" in out
    assert "[compare] stage 2/4: fine-tunes (14 models" in out and "[compare] stage 3/4: evals (15 models" in out
    assert "fine-tunes: 14/14 models" in out and "overall:" in out and "ETA" in out
    after = {p.parent.name: p.stat().st_mtime_ns for p in finetuned.glob("*/manifest.json")}
    # random, kmeans_random, less: 2 selection replicates x 2 training seeds; round_robin@embed: 1 x 2
    assert len(after) == 14
    assert all(after[key] == mtime for key, mtime in before.items())  # stored models reused, not retrained
    with open_state(home.duckdb, read_only=True) as db:
        columns = ["method", "selection_seed", "seed"]
        models = db.rows_matching("finetuned_models", columns, {}).sort(columns, nulls_last=True)
        replicated = [(m, s, t) for m in ("kmeans_random", "less", "random") for s in (0, 1) for t in (0, 1)]
        assert models.rows() == [*replicated, ("round_robin_embed", 0, 0), ("round_robin_embed", 0, 1)]
        per_model = db.rows_matching("eval_examples", ["model_key"], {}).group_by("model_key").len("n")
        assert per_model.height == 15 and set(per_model["n"]) == {4}  # 14 models + base, 4 arithmetic rows
        report = db.report("comparison_report")
        table = report.filter((pl.col("task") == "arithmetic") & (pl.col("measure") == "loss"))
        less = db.rows_matching("selections", db.columns("selections"), {"method": "less"})
        less = less.sort(["selection_seed", "rank"], nulls_last=True)
        assert selection_problems(less, pool_ids_by_version(db, less["pool_version"].unique().to_list())) == []
    # less: one replicate per warmup seed, each read from its warmup, not the same draw
    by_seed = {s: g for (s,), g in less.group_by(["selection_seed"])}
    assert sorted(by_seed) == [0, 1] and all(g.height == g["k"][0] for g in by_seed.values())
    read = {s: json.loads(g["diagnostics"][0])["warmup"] for s, g in by_seed.items()}
    assert read == {s: {"key": warmups[s]["key"], "seed": s} for s in (0, 1)}
    assert by_seed[0]["pool_id"].to_list() != by_seed[1]["pool_id"].to_list()
    verdicts = dict(zip(table["method"], table["verdict"], strict=True))
    assert verdicts["random"] == "baseline" and verdicts["base"] == "no baseline"
    assert verdicts["less"] == "too few eval groups for a verdict"  # 4 eval rows: the estimate, no verdict
    assert dict(zip(table["method"], table["selection_variance"], strict=True)) == {
        "random": "sampled",
        "less": "sampled",  # warmup seeds 0 and 1
        "kmeans_random": "sampled",
        "round_robin_embed": "none (deterministic)",
        "base": "none (deterministic)",
    }
    assert dict(zip(table["method"], table["models"], strict=True)) == {
        "random": 4,
        "less": 4,
        "kmeans_random": 4,
        "round_robin_embed": 2,
        "base": 1,
    }
    # (was "vs random", which no output line holds since the 'vs' column names the baseline)
    assert "baseline in 'vs'" in out and "mean [95% CI]" in out and "summary (loss):" in out
    summary = next(line.strip() for line in out.splitlines() if line.strip().startswith("less @ 10pct ("))
    assert "(selection variance: sampled): arithmetic " in summary
    assert summary.endswith("too few eval groups for a verdict")
    # afterwards the configured warmup (seed 0) is the current one again: a plain selection reads it
    with open_state(home.duckdb, read_only=True) as db:
        assert db.latest_warmup()[0] == warmups[0]["key"]
    with open_state(home.duckdb, read_only=True) as db:  # --metric both: graded generations too
        graded = db.rows_matching("eval_examples", ["score"], {"metric": "exact_match"})["score"].max()
        measures = set(db.report("comparison_report")["measure"])
    # one target: no balance rows; exact match only where some model scored above 0
    assert measures == ({"loss", "score:exact_match"} if graded > 0 else {"loss"})
    html = (home.root / "reports") / "comparison_report.html"
    assert html.exists() and "data:image/png;base64," in html.read_text(encoding="utf-8")

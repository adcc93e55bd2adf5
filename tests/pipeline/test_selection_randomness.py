"""Where each selection's randomness comes from (``selections.selection_randomness``): the kinds
of known methods, as read in their code; the representations' ``seeded_by`` against the asset
graph; the fine-tune and eval assets of every selection key; ``randomness_by_key`` for the report."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import dagster as dg
import polars as pl
import pytest

from dsel_assets.core.select import build_config, get
from dsel_assets.pipeline.assets.reporting.evaluation import eval_assets
from dsel_assets.pipeline.assets.selection.selections import selection_assets
from dsel_assets.pipeline.assets.training.finetune import finetuned_assets
from dsel_assets.pipeline.catalog import (
    randomness_by_key,
    randomness_summary,
    selection_keys,
    selection_randomness,
    warmup_sampled,
)
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.registry import REPRESENTATION_SPECS, WARMUP
from resources import store as state_db

#: Read in each method's module: a ``seed`` field it draws on, inputs from the warmup checkpoint
#: (LESS gradients / influence / LESS scores / the on-demand LESS scorer) or another seeded asset.
EXPECTED = {
    ("random", "less"): "seed",  # a seeded shuffle
    ("kmeans_random", "less"): "seed",  # k-means + seeded draws on sentence embeddings
    ("diverse_evol", "less"): "seed",  # seeded initial set; its round trainer is fixed-seed, not the warmup
    ("less", "less"): "warmup",  # LESS scores of the warmup's gradients
    ("less", "rds"): "none",  # the same ranking on RDS+ cosine: fixed model embeddings
    ("round_robin", "less"): "warmup",
    ("round_robin", "rds"): "none",
    ("round_robin", "embed"): "none",
    ("knn_kde", "less"): "warmup",  # influence + pool gradients
    ("knn_kde", "embed"): "none",
    ("cluster_ucb", "less"): "seed+warmup",  # seeded k-means and draws over the warmup's gradients
    ("cherry_ifd", "less"): "none",  # ranks IFD of the selection model
    ("cherry_ifd_pre_experienced", "less"): "upstream",  # IFD after a seeded pre-experience fine-tune
    ("small2large", "less"): "seed+upstream",  # seeded k-means over a seeded training's learning percentage
    ("mig", "less"): "upstream",  # label clusters: seeded k-means when the data has no tags
    ("qdit", "less"): "none",
}


@pytest.mark.parametrize(("method", "representation"), sorted(EXPECTED))
def test_known_methods_have_the_kind_their_code_implies(method, representation):
    assert selection_randomness(get(method), representation) == EXPECTED[method, representation]


def test_parameters_that_leave_the_seed_unused_make_it_deterministic():
    facility = get("facility_location")
    assert selection_randomness(facility) == "seed"  # stochastic greedy can draw on it
    assert selection_randomness(facility, config=build_config("facility_location")) == "none"  # lazy greedy
    stochastic = build_config("facility_location", {"optimizer": "stochastic"})
    assert selection_randomness(facility, config=stochastic) == "seed"
    kcenter = get("kcenter_greedy")
    assert selection_randomness(kcenter, config=build_config("kcenter_greedy")) == "seed"  # seeded first pick
    assert selection_randomness(kcenter, config=build_config("kcenter_greedy", {"first": 3})) == "none"
    assert randomness_summary(facility) == "seed (default parameters: none)"
    assert randomness_summary(get("round_robin")) == "warmup; rds, embed: none"


def _seeded_assets(graph) -> set[str]:
    """Assets whose config has a ``seed`` field (the selection, fine-tune and eval assets aside)."""
    seeded = set()
    for key in graph.get_all_asset_keys():
        schema = graph.get(key).assets_def.op.config_schema
        fields = getattr(schema.config_type, "fields", {}) if schema is not None else {}
        if "seed" in fields and not key.to_user_string().startswith(("selection_", "finetuned_", "eval_")):
            seeded.add(key.to_user_string())
    return seeded


def test_seeded_by_is_what_the_asset_graph_says(home):
    """A representation is ``seeded_by`` the seeded asset at or upstream of its asset (so a new
    representation built on the warmup cannot be declared deterministic by mistake)."""
    graph = build_definitions(home, model="tiny").resolve_asset_graph()
    seeded = _seeded_assets(graph)
    assert WARMUP in seeded
    for spec in REPRESENTATION_SPECS.values():
        upstream = dg.AssetSelection.assets(dg.AssetKey(spec.asset)).upstream().resolve(graph)
        found = {key.to_user_string() for key in upstream} & seeded
        assert found == ({spec.seeded_by} if spec.seeded_by else set()), spec.name


def test_every_selection_key_has_its_finetune_and_eval_assets():
    keys = selection_keys()
    assert {"random", "round_robin", "round_robin_rds", "round_robin_embed", "knn_kde_embed"} <= set(keys)
    assert {a.key.path[-1] for a in selection_assets} == {f"selection_{k}" for k in keys}
    assert {f"finetuned_{k}" for k in keys} <= {a.key.path[-1] for a in finetuned_assets}
    assert {f"eval_{k}" for k in keys} <= {a.key.path[-1] for a in eval_assets}
    rds = next(a for a in finetuned_assets if a.key.path[-1] == "finetuned_round_robin_rds")
    assert dg.AssetKey("selection_round_robin_rds") in rds.dependency_keys


def test_randomness_by_key_reads_keys_and_stored_parameters(home):
    keys = ["random", "round_robin_rds", "less", "cluster_ucb", "facility_location", "base", "full_pool"]
    assert randomness_by_key(keys) == {
        "random": "seed",
        "round_robin_rds": "none",
        "less": "warmup",
        "cluster_ucb": "seed+warmup",
        "facility_location": "none",  # default parameters: lazy greedy
        "base": "none",
        "full_pool": "none",
    }
    with pytest.raises(KeyError, match="'nope' is not one of"):
        randomness_by_key(["nope"])
    stochastic = vars(build_config("facility_location", {"optimizer": "stochastic"}))
    row = {
        "method": "facility_location",
        "budget": "5",
        "k": 5,
        "eligible": 10,
        "rank": 0,
        "pool_id": "p0",
        "score": None,
        "pool_version": "v",
        "config": json.dumps(stochastic),
        "diagnostics": "{}",
        "mlflow_run_id": "",
        "created_at": datetime.now(timezone.utc),
        "selection_seed": 0,
    }
    with state_db.open_state(home.duckdb) as db:
        db.ensure_schema()
        ints = {"k": pl.Int32, "eligible": pl.Int32, "rank": pl.Int32, "selection_seed": pl.Int32}
        db.write_selection("facility_location", "5", pl.DataFrame([row], schema_overrides=ints | {"score": pl.Float64}))
        stored = randomness_by_key(["facility_location", "random"], db)
    assert stored == {"facility_location": "seed", "random": "seed"}  # it ran with the stochastic greedy

    # dsel compare's warmup seeds: each replicate of a budget read another warmup -> its warmup is sampled
    def replicates(method, warmups, budget="5"):
        frames = [
            pl.DataFrame(
                [
                    row
                    | {"method": method, "budget": budget, "selection_seed": s, "config": "{}"}
                    | {"diagnostics": json.dumps({"warmup": {"key": w, "seed": s}} if w else {})}
                ],
                schema_overrides=ints | {"score": pl.Float64},
            )
            for s, w in enumerate(warmups)
        ]
        with state_db.open_state(home.duckdb) as db:
            db.write_selection(method, budget, pl.concat(frames))

    def kinds():
        with state_db.open_state(home.duckdb) as db:
            return randomness_by_key(["less", "cluster_ucb", "round_robin"], db)

    replicates("less", ["w0", "w1"])
    replicates("cluster_ucb", ["w0", "w1"])
    replicates("round_robin", ["w0"])  # one selection: its warmup is not sampled
    assert kinds() == {"less": "seed", "cluster_ucb": "seed", "round_robin": "warmup"}
    replicates("less", ["w0", "w1"], budget="10")
    replicates("cluster_ucb", ["w0", "w0"], budget="10")  # method seeds over one warmup: only the seed sampled
    replicates("round_robin", ["w0", None])  # no warmup recorded: not known to be sampled
    assert kinds() == {"less": "seed", "cluster_ucb": "seed+warmup", "round_robin": "warmup"}
    assert [warmup_sampled(k) for k in ("warmup", "seed+warmup", "warmup+upstream", "upstream", "none")] == [
        "seed",
        "seed",
        "seed+upstream",
        "upstream",
        "none",
    ]

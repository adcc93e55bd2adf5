"""The representation registry is the one place a representation is named: every method's need
is declared, every method module is registered, every declared asset exists, the ``dsel score``
kinds and the per-batch jobs derived from it are what they were when they were hand-written."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from dsel_assets.core.select import methods
from dsel_assets.core.select import registry as method_registry
from dsel_assets.core.select.random_sampling import RandomConfig
from dsel_assets.core.select.registry import MethodSpec
from dsel_assets.core.select.targeted import representation_needs, representations
from dsel_assets.pipeline import registry
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.registry import (
    REPRESENTATION_SPECS,
    LoadContext,
    Value,
    declare,
    per_batch_assets,
    representation,
    score_kinds,
)
from resources.gradient_settings import GradientSettings

from ..representation_fixtures import MAKERS, synthetic_inputs

SELECT_PACKAGE = Path(method_registry.__file__).parent


def undeclared_needs(specs: dict[str, MethodSpec]) -> list[str]:
    """'method (representation): need' for every need no representation declares."""
    return [
        f"{name} ({variant}): {need!r} is not declared"
        for name, spec in specs.items()
        for variant in representations(spec.config_cls)
        for need in representation_needs(spec.needs, variant).values()
        if need not in REPRESENTATION_SPECS
    ]


def test_every_need_of_every_method_is_declared():
    assert undeclared_needs(methods()) == []


def test_an_undeclared_need_is_reported_with_its_method(monkeypatch):
    fake = MethodSpec("fake_method", "diversity", ("no_such_rep",), RandomConfig, lambda *a: None, "fake", "none")
    monkeypatch.setitem(method_registry._REGISTRY, "fake_method", fake)
    assert undeclared_needs(methods()) == ["fake_method (less): 'no_such_rep' is not declared"]


def registering_modules(package: Path) -> set[str]:
    """Modules of ``package`` with a function decorated ``@register(...)``, as module names."""
    found = set()
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            decorators = getattr(node, "decorator_list", []) if isinstance(node, ast.FunctionDef) else []
            calls = [d.func for d in decorators if isinstance(d, ast.Call)]
            if any(getattr(f, "id", getattr(f, "attr", None)) == "register" for f in calls):
                found.add(f"dsel_assets.core.select.{path.stem}")
    return found


def test_every_method_module_registers_itself():
    """The package imports every module of its own (no list to keep), so each module with a
    ``@register`` function has its methods in the registry."""
    decorated = registering_modules(SELECT_PACKAGE)
    assert decorated, "no @register(...) found: the scan is broken"
    assert decorated == {spec.select.__module__ for spec in methods().values()}


def test_the_module_scan_finds_a_method_file(tmp_path):
    (tmp_path / "new_method.py").write_text(
        "from .registry import register\n\n\n@register('new', family='diversity', config=C, description='', "
        "reference='')\ndef select(ids, k, config):\n    return ids[:k]\n"
    )
    (tmp_path / "helper.py").write_text("def register_me():\n    pass\n")
    assert registering_modules(tmp_path) == {"dsel_assets.core.select.new_method"}


@pytest.fixture()
def asset_graph(home):
    return build_definitions(home, model="tiny").resolve_asset_graph()


def test_declared_assets_exist_and_are_partitioned_as_declared(asset_graph):
    keys = {key.to_user_string() for key in asset_graph.get_all_asset_keys()}
    missing = {spec.name: spec.asset for spec in REPRESENTATION_SPECS.values() if spec.asset not in keys}
    assert missing == {}
    for spec in REPRESENTATION_SPECS.values():
        partitioned = asset_graph.get(dg.AssetKey(spec.asset)).partitions_def is not None
        assert partitioned == spec.per_batch, f"{spec.name}: per_batch={spec.per_batch}, asset {spec.asset}"


#: ``dsel score`` as it was written by hand (with the settings pinned since): kind -> (asset,
#: settings it pins, asset --param configures).
SCORE_KINDS_BEFORE = {
    "sentence_embeddings": ("sentence_embeddings", ("sentence_text",), "sentence_embeddings"),
    "model_embeddings": ("model_embeddings", ("pooling", "embed_max_length", "embed_bos"), "model_embeddings"),
    "loss": ("loss_scores", (), "loss_scores"),
    "uncertainty": ("loss_scores", (), "loss_scores"),
    "uncertainty_greedy": ("greedy_scores", (), "greedy_scores"),
    "proxy_loss": ("proxy_loss_scores", ("proxy_model",), "proxy_loss_scores"),
    "quality": ("quality", (), "quality"),
    "labels": ("labels", (), "labels"),
    "learning_percentage": ("learning_percentage", ("proxy_model",), "learning_percentage"),
    "golden": ("golden_score", (), "golden_score"),
    "whisperer": ("whisperer_score", (), "whisperer_score"),
    "pre_experienced_ifd": ("cherry_pre_experienced_scores", (), "cherry_pre_experienced_model"),
}


def test_cli_kinds_map_to_declared_assets(asset_graph):
    from dsel_assets.app.cli import parser
    from resources.settings import FLAGS

    kinds = score_kinds()
    derived = {kind: (s.asset, s.pinned, s.configured_by or s.asset) for kind, s in kinds.items()}
    assert {kind: derived.get(kind) for kind in SCORE_KINDS_BEFORE} == SCORE_KINDS_BEFORE  # new kinds may join
    keys = {key.to_user_string() for key in asset_graph.get_all_asset_keys()}
    assert {s.configured_by for s in kinds.values() if s.configured_by} <= keys
    assert {setting for s in kinds.values() for setting in s.pinned} <= set(FLAGS)
    score = parser()._subparsers._group_actions[0].choices["score"]
    choices = next(action.choices for action in score._actions if action.dest == "kind")
    assert sorted(choices) == sorted(kinds)


#: The per-batch assets that batch_job selected and curation_job left out when they were listed by hand.
PER_BATCH_BEFORE = [
    "sentence_embeddings",
    "model_embeddings",
    "pool_grad_features",
    "loss_scores",
    "proxy_loss_scores",
    "greedy_scores",
]


def test_jobs_split_the_assets_into_per_batch_and_pool_wide(asset_graph):
    """batch_job runs the pool group and every per-batch representation (those it ran when they
    were listed by hand among them), curation_job everything else: together all assets, once."""
    from dsel_assets.pipeline.names import POOL
    from jobs import batch_job, curation_job

    assert set(PER_BATCH_BEFORE) <= set(per_batch_assets())
    per_batch = {dg.AssetKey(name) for name in per_batch_assets()}
    assert all(asset_graph.get(key).partitions_def is not None for key in per_batch)
    batch = batch_job.selection.resolve(asset_graph)
    curation = curation_job.selection.resolve(asset_graph)
    assert batch == dg.AssetSelection.groups(POOL).resolve(asset_graph) | per_batch
    assert batch | curation == asset_graph.get_all_asset_keys() and curation & batch == {dg.AssetKey(POOL)}


def test_unknown_representation_names_the_known_ones():
    with pytest.raises(KeyError, match="no_such_rep.*sentence_embeddings"):
        representation("no_such_rep")


def test_declare_refuses_conflicting_declarations(monkeypatch):
    monkeypatch.setattr(registry, "REPRESENTATION_SPECS", dict(REPRESENTATION_SPECS))
    quality = representation("quality")
    with pytest.raises(ValueError, match="already declared"):
        declare("quality", "quality", quality.load, "again", quality.value)
    with pytest.raises(ValueError, match="cli_kind 'quality' is already quality's"):
        declare("quality_again", "quality", quality.load, "again", quality.value, cli_kind="quality")
    with pytest.raises(ValueError, match="only apply to a cli_kind"):
        declare("pinned_alone", "quality", quality.load, "pins", quality.value, pinned=("pooling",))
    with pytest.raises(ValueError, match="per_batch=True"):
        declare("pool_wide_loss", "loss_scores", quality.load, "loss scores pool-wide", quality.value)


def test_only_templated_representations_load_under_the_methods_template(monkeypatch):
    seen = {}

    def recording(name):
        def load(ctx):
            seen[name] = ctx.template
            return np.zeros(0), None

        return load

    for name in ("ifd", "quality"):
        monkeypatch.setitem(REPRESENTATION_SPECS, name, dataclasses.replace(representation(name), load=recording(name)))
    context = LoadContext(None, None, [], GradientSettings(), template="alpaca")
    for name in ("ifd", "quality"):
        registry.load(name, context)
    assert seen == {"ifd": "alpaca", "quality": "chat"}
    assert {s.name for s in REPRESENTATION_SPECS.values() if s.templated} == {"ifd", "superfiltering_ifd"}


def test_every_value_kind_has_a_maker_and_every_synthetic_value_conforms():
    assert set(MAKERS) == set(Value)
    ids, values = synthetic_inputs(REPRESENTATION_SPECS, n=30)
    for name, value in values.items():
        assert representation(name).value.problem(value, len(ids)) is None, name


@pytest.mark.parametrize(
    ("kind", "wrong"),
    [
        (Value.SCALAR, np.zeros((3, 2))),
        (Value.SCALAR, np.zeros(4)),
        (Value.VECTORS, {"t0": np.zeros(3)}),
        (Value.TASK_SCORES, {"t0": np.zeros(3), "t1": np.zeros(2)}),
        (Value.QUERY_VECTORS, (np.zeros((2, 4)), ["t0"])),
        (Value.SCORER, np.zeros(3)),
        (Value.TRAINER, object()),
    ],
)
def test_a_loader_that_returns_another_kind_is_an_internal_error(monkeypatch, kind, wrong):
    spec = dataclasses.replace(representation("quality"), value=kind, load=lambda ctx: (wrong, None))
    monkeypatch.setitem(REPRESENTATION_SPECS, "quality", spec)
    with pytest.raises(RuntimeError, match="internal error: representation quality loaded .*" + re.escape(kind.value)):
        registry.load("quality", LoadContext(None, None, ["a", "b", "c"], GradientSettings()))


def test_a_pool_gradient_matrix_that_memory_cannot_hold_is_refused_with_what_it_needs(monkeypatch):
    import psutil

    from dsel_assets.pipeline.registry import fits_in_memory

    class Memory:
        available = 8 * 2**30

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory())
    fits_in_memory(100_000, 8192)  # 4.6 GiB: fits
    with pytest.raises(MemoryError, match=r"1,000,000 x 8192 features need 45.8 GiB in memory, 8.0 GiB"):
        fits_in_memory(1_000_000, 8192)


def test_fill_rows_writes_each_chunk_where_its_rows_go():
    """Chunk by chunk into a preallocated float32 matrix: rows placed by ``rows`` (ids the pool
    does not have, -1, are skipped; pool rows without a vector keep NaN), float16 cast exactly."""
    import pyarrow as pa

    from dsel_assets.pipeline.stored import fill_rows, vector_matrix

    vectors = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float16)
    arrays = [pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 3) for v in (vectors[:4], vectors[4:])]
    column = pa.chunked_array(arrays)
    assert column.num_chunks == 2
    np.testing.assert_array_equal(fill_rows(column, np.empty((7, 3), np.float32)), vectors.astype(np.float32))
    rows = np.array([5, -1, 0, 2, 7, -1, 1])
    out = fill_rows(column, np.full((8, 3), np.nan, np.float32), rows)
    for source, target in enumerate(rows):
        if target >= 0:
            np.testing.assert_array_equal(out[target], vectors[source].astype(np.float32))
    assert np.isnan(out[[3, 4, 6]]).all()
    np.testing.assert_array_equal(vector_matrix(column), vectors)

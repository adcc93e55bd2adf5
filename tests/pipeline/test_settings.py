"""Representation settings pinned in the state home: every entry point computes with the same
gradient dimension, model and pooling, and a targeted selection covers the whole pool."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from dsel_assets.app.cli import main
from dsel_assets.pipeline.code_location import build_definitions
from dsel_assets.pipeline.sensors import recuration_request
from resources import build_resources
from resources.settings import SettingsConflict, resolve_settings, stored_settings
from resources.store import open_state

from ..helpers import qa_lines, write_jsonl

NO_ENV: dict[str, str] = {}


def test_first_use_pins_and_later_requests_must_agree(home):
    settings, changed = resolve_settings(home, {"grad_dim": 1024, "model": "tiny"}, environ=NO_ENV)
    assert (settings.grad_dim, settings.model, settings.pooling, changed) == (1024, "tiny", "mean", [])
    # the proxy model pins as "" (the selection model) unless one is named
    pinned = {"grad_dim": 1024, "model": "tiny", "pooling": "mean", "proxy_model": "", "projection": "rademacher"}
    pinned |= {"dtype": "auto", "load_in": "none", "embed_max_length": 2048, "embed_bos": True}
    pinned |= {"sentence_text": "conversation"}
    assert stored_settings(home) == pinned
    # nothing requested (the UI, the daemon): the stored values, not the defaults
    assert resolve_settings(home, {}, environ=NO_ENV)[0].grad_dim == 1024
    # the environment is a request too
    with pytest.raises(SettingsConflict, match="grad_dim.*1024.*8192.*--change-settings"):
        resolve_settings(home, {}, environ={"DSEL_GRAD_DIM": "8192"})
    with pytest.raises(SettingsConflict, match="model"):
        resolve_settings(home, {"model": "smollm2"}, environ=NO_ENV)
    # not strict (a code location must keep loading): the stored value wins
    assert resolve_settings(home, {"grad_dim": 8192}, strict=False, environ=NO_ENV)[0].grad_dim == 1024
    assert stored_settings(home)["grad_dim"] == 1024
    # an explicit change switches and reports it
    settings, changed = resolve_settings(home, {"grad_dim": 8192}, change=True, environ=NO_ENV)
    assert settings.grad_dim == 8192 and changed == ["grad_dim"] and stored_settings(home)["grad_dim"] == 8192
    # the projection is pinned like the dimension: the factorised features are another representation
    with pytest.raises(SettingsConflict, match="projection.*'rademacher'.*'factorised'.*--projection"):
        resolve_settings(home, {}, environ={"DSEL_PROJECTION": "factorised"})
    settings, changed = resolve_settings(home, {"projection": "factorised"}, change=True, environ=NO_ENV)
    assert (
        changed == ["projection"]
        and build_resources(home, projection=settings.projection)["grad_settings"].suffix() == "d8192_factorised0_k16"
    )


def test_model_embedding_length_and_bos_are_pinned_and_their_variables_are_checked(home):
    settings, _ = resolve_settings(home, {}, environ={"DSEL_EMBED_MAX_LENGTH": "512", "DSEL_EMBED_BOS": "0"})
    assert (settings.embed_max_length, settings.embed_bos) == (512, False)
    assert {k: stored_settings(home)[k] for k in ("embed_max_length", "embed_bos")} == {
        "embed_max_length": 512,
        "embed_bos": False,
    }
    with pytest.raises(SettingsConflict, match="embed_max_length.*512.*2048.*--embed-max-length"):
        resolve_settings(home, {"embed_max_length": 2048}, environ=NO_ENV)
    for variable, bad, why in (
        ("DSEL_EMBED_MAX_LENGTH", "0", "not a positive integer"),
        ("DSEL_EMBED_MAX_LENGTH", "long", "not a positive integer"),
        ("DSEL_EMBED_BOS", "yes", r"not one of \['0', '1'\]"),
    ):
        with pytest.raises(ValueError, match=f"{variable}: '{bad}' is {why}"):
            resolve_settings(home, {}, environ={variable: bad})
    resources = build_resources(home, embed_max_length=settings.embed_max_length, embed_bos=settings.embed_bos)
    embedding = resources["model_embedding_settings"]
    assert embedding.dataset("abc") == "model_embeddings_mean_512_abc"
    assert embedding.model_copy(update={"bos": True}).dataset("abc") == "model_embeddings_mean_512_bos_abc"


def test_sentence_text_is_pinned_refused_unless_known_and_names_its_datasets(home):
    with pytest.raises(ValueError, match=r"sentence_text: 'prompt' is not one of \['conversation', 'instruction'\]"):
        resolve_settings(home, {}, environ={"DSEL_SENTENCE_TEXT": "prompt"})
    with pytest.raises(ValueError, match=r"pooling: 'max' is not one of .*--pooling / DSEL_POOLING"):
        resolve_settings(home, {"pooling": "max"}, environ=NO_ENV)
    assert stored_settings(home) == {}  # nothing pinned by a refused request
    settings, _ = resolve_settings(home, {}, environ={"DSEL_SENTENCE_TEXT": "instruction"})
    assert settings.sentence_text == stored_settings(home)["sentence_text"] == "instruction"
    with pytest.raises(SettingsConflict, match="sentence_text.*'instruction'.*'conversation'.*--sentence-text"):
        resolve_settings(home, {"sentence_text": "conversation"}, environ=NO_ENV)
    sentences = build_resources(home, sentence_text=settings.sentence_text)["sentence_embedding_settings"]
    assert (sentences.dataset, sentences.similarity_dataset) == (
        "sentence_embeddings_instruction",
        "embed_similarity_instruction",
    )
    default = build_resources(home)["sentence_embedding_settings"]  # the names homes had before the choice
    assert (default.dataset, default.similarity_dataset) == ("sentence_embeddings", "embed_similarity")


def test_only_named_settings_are_pinned(home):
    resolve_settings(home, {"model": "tiny"}, pin={"model"}, environ=NO_ENV)
    assert stored_settings(home) == {"model": "tiny"}
    # pooling is still free: a later command may choose it
    settings, _ = resolve_settings(home, {"pooling": "position_weighted"}, pin={"pooling"}, environ=NO_ENV)
    assert (settings.model, settings.pooling) == ("tiny", "position_weighted")
    resolve_settings(home, {}, pin=False, environ=NO_ENV)
    assert stored_settings(home) == {"model": "tiny", "pooling": "position_weighted"}


def test_cli_refuses_a_conflicting_flag(home, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DSEL_MODEL", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    path = write_jsonl(tmp_path / "qa.jsonl", [json.dumps({"question": "1+1?", "answer": "2"})])
    assert main(["ingest", str(path), "--model", "tiny"]) == 0
    capsys.readouterr()
    assert main(["grads", "--model", "smollm2"]) == 2
    err = capsys.readouterr().err
    assert "model='tiny'" in err and "--change-settings" in err and "Traceback" not in err


def test_inbox_batch_after_dsel_run_keeps_targeted_selections_whole(home, monkeypatch, capsys):
    """The reported sequence: `dsel run` (d=1024), then the UI/daemon's definitions (no flags)
    ingest a 20-row inbox file through the sensor and re-curate. Before, the daemon used
    d=8192, wrote features for the 20 new rows only, and LESS / BIDS / round-robin selected
    from those 20 rows of a 600-row pool."""
    for name in ("DSEL_MODEL", "DSEL_GRAD_DIM", "DSEL_POOLING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(home.dagster))
    run = ["run", "--model", "tiny", "--per-capability", "5", "--finetune-epochs", "1", "--eval-per-task", "1"]
    assert main(run) == 0
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).splitlines()
    assert len(lines) < 60, "\n".join(lines)  # a newcomer's run fits a screen (244 lines before); -v prints it all
    assert "summary (loss):" in printed.out and "full table" in printed.out
    assert stored_settings(home)["grad_dim"] == 1024

    defs = build_definitions(home)  # what `dagster dev -m dsel_assets.definitions` builds: no flags
    assert defs.resources["grad_settings"].dim == 1024 and defs.resources["selection_model"].model == "tiny"
    instance = dg.DagsterInstance.get()
    write_jsonl(home.inbox / "new.jsonl", qa_lines(0, 20))
    sensor = defs.resolve_sensor_def("inbox_sensor")
    cursor = None
    for _ in range(2):
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs, resources=defs.resources
        ) as context:  # closed in order: see tests/pipeline/test_sensors.py
            result = sensor(context)
        cursor = result.cursor
    (request,) = result.run_requests
    assert "pool_grad_features" in {k.to_user_string() for k in request.asset_selection}
    for partitions in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys))
    batch_job = defs.resolve_job_def("batch_job")
    assert batch_job.execute_in_process(
        instance=instance, partition_key=request.partition_key, asset_selection=request.asset_selection
    ).success

    recurate = recuration_request(instance, defs.resolve_asset_graph())
    assert isinstance(recurate, dg.RunRequest), recurate
    names = {k.to_user_string() for k in recurate.asset_selection}
    targeted = {"selection_less", "selection_bids", "selection_round_robin"}
    assert targeted <= names
    outcome = defs.resolve_job_def("curation_job").execute_in_process(
        instance=instance, asset_selection=recurate.asset_selection, run_config=recurate.run_config
    )
    assert outcome.success
    assert all(c.passed for c in outcome.get_asset_check_evaluations())
    with open_state(home.duckdb, read_only=True) as db:
        pool_size = db.split_rows("pool", ["pool_id"]).height
        columns = ["method", "budget", "k", "eligible", "diagnostics"]
        selections = db.rows_matching("selections", columns, {})
        new_rows = db.source_rows("new", ["pool_id"]).height
    rows = (
        selections.filter(pl.col("method").is_in(["less", "bids", "round_robin"]))
        .group_by("method", "budget", "k", "eligible")
        .agg(pl.len(), pl.col("diagnostics").drop_nulls().first())
        .rows()
    )
    assert new_rows == 20
    assert {r[0] for r in rows} == {"less", "bids", "round_robin"}
    for method, budget, k, eligible, selected, diagnostics in rows:
        coverage = json.loads(diagnostics)["coverage"]
        assert all(c == {"rows": pool_size, "batches_without_rows": []} for c in coverage.values()), coverage
        assert selected == k, (method, budget, k, eligible, selected)

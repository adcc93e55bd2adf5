"""Hugging Face ``datasets`` in: a ``save_to_disk`` folder (Dataset and DatasetDict), a bare Arrow
file and ``hf://NAME[:SPLIT]`` from the local hub cache give the same accepted and quarantined
counts as the same rows as JSONL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dsel_assets.app.cli import main
from resources.store import open_state

from ..helpers import write_jsonl

datasets = pytest.importorskip("datasets")

#: 12 rows: 9 good, an empty answer, a duplicate of row 0 and a prompt-less row (3 quarantined)
ROWS = [{"question": f"What is {i} plus 1?", "answer": f"{i + 1}"} for i in range(9)]
ROWS += [{"question": "Say nothing", "answer": ""}, dict(ROWS[0]), {"question": "", "answer": "orphan"}]


def counts(home: Path) -> tuple[int, list[tuple[str, int]]]:
    with open_state(home / "dsel.duckdb", read_only=True) as db:
        accepted = db.rows_matching("examples", ["pool_id"], {}).height
        reasons = sorted(db.quarantine_reasons().rows())  # by reason
    return accepted, reasons


def ingest(tmp_path: Path, name: str, *paths: str) -> tuple[int, list[tuple[str, int]]]:
    home = tmp_path / name
    assert main(["--home", str(home), "ingest", *paths, "--model", "tiny", "--task", "math"]) == 0
    return counts(home)


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A dataset ``owner/toy`` (split train) in a local hub cache, laid out as ``datasets``
    stores a downloaded one, made offline from ROWS."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    built = tmp_path / "built"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(built))
    folder = cache / "owner___toy" / "default" / "0.0.0" / "0123abcd"
    folder.mkdir(parents=True)
    shutil.copy(next(built.glob("*.arrow")), folder / "toy-train.arrow")
    info = datasets.DatasetInfo(features=datasets.Dataset.from_list(ROWS).features, config_name="default")
    info.dataset_name = "toy"
    info.splits = {"train": datasets.SplitInfo(name="train", num_examples=len(ROWS), dataset_name="toy")}
    info.write_to_directory(str(folder))
    return cache


def test_save_to_disk_arrow_and_hub_cache_ingest_like_jsonl(home, tmp_path, hub_cache, monkeypatch, capsys):
    monkeypatch.delenv("DSEL_MODEL", raising=False)
    jsonl = write_jsonl(tmp_path / "toy.jsonl", [json.dumps(r) for r in ROWS])
    expected = ingest(tmp_path, "from-jsonl", str(jsonl))
    assert expected == (9, [("duplicate", 1), ("empty_field", 2)])  # by hand: 12 rows, 3 bad

    saved = tmp_path / "toy-saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    assert ingest(tmp_path, "from-folder", str(saved)) == expected
    with open_state(tmp_path / "from-folder" / "dsel.duckdb", read_only=True) as db:
        assert db.rows_matching("examples", ["source"], {})["source"].unique().to_list() == ["toy-saved"]

    (arrow,) = saved.glob("*.arrow")  # a bare Arrow file (the stream format datasets writes)
    assert ingest(tmp_path, "from-arrow", str(arrow)) == expected

    split = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS[:6]), "test": datasets.Dataset.from_list(ROWS[6:])}
    )
    split.save_to_disk(str(tmp_path / "toy-dict"))
    assert ingest(tmp_path, "from-dict", str(tmp_path / "toy-dict")) == expected
    with open_state(tmp_path / "from-dict" / "dsel.duckdb", read_only=True) as db:
        sources = db.rows_matching("examples", ["source"], {})["source"].unique().sort().to_list()
    assert sources == ["toy-dict_test", "toy-dict_train"]

    assert ingest(tmp_path, "from-hub", "hf://owner/toy:train") == expected
    capsys.readouterr()
    assert main(["--home", str(tmp_path / "missing"), "ingest", "hf://nobody/nothing", "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "hf://nobody/nothing: not found in the local Hugging Face cache" in err and "Traceback" not in err

"""Shared fixtures: a state home under tmp_path, local resources on the tiny model, the
SmolLM2 tokenizer, and the shared real data (tests needing it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# No test may reach a model hub: everything loads from installed packages.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "pool").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tokenizer():
    from dsel_assets.core.models.loading import load_tokenizer, resolve

    return load_tokenizer(resolve("smollm2"))


@pytest.fixture()
def home(tmp_path, monkeypatch):
    from resources.home import DselHome

    home = DselHome(tmp_path / "home").ensure()
    monkeypatch.setenv("DSEL_HOME", str(home.root))
    return home


@pytest.fixture()
def local_resources(home):
    from resources import build_resources

    return build_resources(home, model="tiny", device="cpu")

"""Wiring of the method-fidelity options: the proxy model is a pinned setting (DSEL_PROXY_MODEL,
--proxy-model) that defaults to the selection model and reaches the ``proxy_model`` resource;
the Cherry / Superfiltering methods take the scoring template of the IFD they read."""

import argparse

import pytest

from dsel_assets.core.select import build_config
from dsel_assets.pipeline.code_location import build_definitions
from resources.settings import SettingsConflict, stored_settings


def test_proxy_model_defaults_to_the_selection_model_and_is_pinned(home, monkeypatch):
    monkeypatch.delenv("DSEL_PROXY_MODEL", raising=False)
    defs = build_definitions(home, model="tiny")
    assert defs.resources["proxy_model"].model == "tiny" and stored_settings(home)["proxy_model"] == ""
    monkeypatch.setenv("DSEL_PROXY_MODEL", "smollm2")
    with pytest.raises(SettingsConflict, match="--proxy-model / DSEL_PROXY_MODEL"):
        build_definitions(home, strict=True)
    defs = build_definitions(home, change_settings=True)
    assert (defs.resources["proxy_model"].model, defs.resources["selection_model"].model) == ("smollm2", "tiny")
    assert stored_settings(home)["proxy_model"] == "smollm2"


def test_cli_takes_a_proxy_model_for_score_and_select(home, monkeypatch):
    from dsel_assets.app.cli import parser
    from dsel_assets.app.cli.common import definitions_for

    monkeypatch.delenv("DSEL_PROXY_MODEL", raising=False)
    args = parser().parse_args(["score", "proxy_loss", "--model", "tiny", "--proxy-model", "smollm2"])
    assert args.proxy_model == "smollm2"
    select = parser().parse_args(["select", "--method", "superfiltering", "--budget", "2", "--proxy-model", "tiny"])
    assert select.proxy_model == "tiny"
    assert definitions_for(home, args).resources["proxy_model"].model == "smollm2"
    typo = argparse.Namespace(model=None, proxy_model="smolm2")
    with pytest.raises(ValueError, match="smolm2"):
        definitions_for(home, typo)  # rejected before anything is pinned
    assert stored_settings(home)["proxy_model"] == "smollm2"


@pytest.mark.parametrize("method", ["cherry_ifd", "superfiltering", "superfiltering_d"])
def test_ifd_methods_name_the_scoring_template_they_read(method):
    assert build_config(method).template == "chat"
    assert build_config(method, {"template": "alpaca"}).template == "alpaca"
    with pytest.raises(ValueError, match="template"):
        build_config(method, {"template": "vicuna"})

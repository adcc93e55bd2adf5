"""The comparison report as people read it: plots with CI error bars, the markdown verdict table and
the self-contained HTML file (escaped, no external resources, renders in a headless browser)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest

from dsel_assets.app.webserver import BROWSERS, find_browser, screenshot
from dsel_assets.core.stats import TABLE_SCHEMA
from dsel_assets.pipeline.report_html import (
    _curve_series,
    html_report,
    plot_budget_curves,
    plot_task_deltas,
    plot_task_mix,
    summary_lines,
    verdict_markdown,
    write_html_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODELS = [("base", "0", 0), ("random", "100", 100), ("random", "400", 400), ("less", "100", 100), ("less", "400", 400)]
# (all tasks) loss:mean per model: (mean, ci_low, ci_high), checked by hand in test_curve_series
LOSS_MEAN = {
    ("base", "0"): (2.5, 2.45, 2.56),
    ("random", "100"): (2.2, 2.1, 2.25),
    ("random", "400"): (2.0, 1.95, 2.08),
    ("less", "100"): (2.1, 2.0, 2.2),
    ("less", "400"): (1.9, 1.85, 1.93),
}
# the one per-task row checked literally in test_verdict_markdown
KNOWN = {
    "method": "less",
    "budget": "100",
    "train_size": 100,
    "task": "gsm8k",
    "measure": "loss",
    "baseline": "random",
    "lower_is_better": True,
    "models": 3,
    "selections": 3,
    "selection_variance": "sampled",
    "examples": 200,
    "eval_groups": 180,
    "mean": 1.23456,
    "ci_low": 1.2,
    "ci_high": 1.27,
    "delta": -0.0512345,
    "delta_low": -0.08,
    "delta_high": -0.02,
    "p_value": 0.0123,
    "p_holm": 0.0369,
    "verdict": "better",
}


def _row(method, budget, size, task, measure, mean, low, high, delta=None, verdict=None) -> dict:
    lower = not measure.startswith("score")
    if method == "base":
        verdict, delta = "no baseline", None
    elif method == "random":
        verdict, delta = "baseline", None
    elif verdict is None:
        verdict = "no detectable difference"
    return {
        "method": method,
        "budget": budget,
        "train_size": size,
        "task": task,
        "measure": measure,
        "baseline": None if delta is None else "random",
        "lower_is_better": lower,
        "models": 1 if method == "base" else 3,
        "selections": 1 if method == "base" else 3,
        "selection_variance": "none (deterministic)" if method == "base" else "sampled",
        "examples": 200 if task != "(all tasks)" else 400,
        "eval_groups": 200 if task != "(all tasks)" else 400,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "delta": delta,
        "delta_low": None if delta is None else delta - 0.05,
        "delta_high": None if delta is None else delta + 0.04,
        "p_value": None if delta is None else 0.3,
        "p_holm": None if delta is None else 0.9,
        "verdict": verdict,
    }


def synthetic_table(method_name: str = "less") -> pl.DataFrame:
    """3 methods (base, random, ``method_name``), 2 budgets for random and the method, 2 tasks,
    the (all tasks) aggregates, and a ROUGE-L score on dolly."""
    rows = []
    for method, budget, size in MODELS:
        mean, low, high = LOSS_MEAN[(method, budget)]
        rows.append(_row(method, budget, size, "(all tasks)", "loss:mean", mean, low, high, delta=-0.1))
        rows.append(_row(method, budget, size, "(all tasks)", "loss:worst", mean + 0.4, mean + 0.3, mean + 0.5, 0.01))
        rows.append(_row(method, budget, size, "(all tasks)", "loss:spread", 0.6, 0.5, 0.7, delta=0.02))
        if (method, budget) == ("less", "100"):
            rows.append(dict(KNOWN))
        else:
            rows.append(_row(method, budget, size, "gsm8k", "loss", mean - 0.3, mean - 0.35, mean - 0.25, 0.01))
        worse = (method, budget) == ("less", "400")
        rows.append(
            _row(
                method,
                budget,
                size,
                "dolly",
                "loss",
                mean + 0.3,
                mean + 0.2,
                mean + 0.4,
                0.2,
                "worse" if worse else None,
            )
        )
        rows.append(_row(method, budget, size, "dolly", "score:rouge_l", 0.3, 0.25, 0.35, delta=0.02))
    table = pl.DataFrame(rows, schema=TABLE_SCHEMA)
    return table.with_columns(pl.col("method").replace("less", method_name))


def task_mix_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "method": ["random", "random", "less", "less"],
            "budget": ["100", "400", "100", "400"],
            "task_counts": [
                json.dumps({"gsm8k": 50, "dolly": 50}),
                json.dumps({"gsm8k": 190, "dolly": 210}),
                json.dumps({"gsm8k": 80, "dolly": 20}),
                json.dumps({"gsm8k": 300, "dolly": 90, "alpaca": 10}),
            ],
        }
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("plots")
    table = synthetic_table()
    return {
        "Mean loss over all tasks vs budget": plot_budget_curves(table, folder / "curves.png"),
        "Delta vs random per task": plot_task_deltas(table, folder / "deltas.png"),
        "Task mix per selection": plot_task_mix(task_mix_frame(), folder / "mix.png"),
    }


def _assert_png(path: Path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert len(data) > min_bytes, (path, len(data))


def test_plots_write_pngs(images):
    assert len(images) == 3
    for path in images.values():
        _assert_png(path)


def test_budget_curves_single_budget_method_and_other_measure(tmp_path):
    """A method with one budget (points) and a measure without the base model still draw."""
    table = synthetic_table()
    extra = table.filter((pl.col("method") == "less") & (pl.col("budget") == "400")).with_columns(
        pl.lit("one").alias("method")
    )
    table = pl.concat([table, extra])
    _assert_png(plot_budget_curves(table, tmp_path / "one.png"))
    _assert_png(plot_budget_curves(table.filter(pl.col("method") != "base"), tmp_path / "worst.png", "loss:worst"))
    assert _curve_series(table, "loss:mean")["one"][0] == [400]


def test_curve_series_matches_table():
    """The values the budget curves draw: x sorted, y = mean, error bars = distance to the CI ends."""
    series = _curve_series(synthetic_table().reverse(), "loss:mean")
    assert set(series) == {"base", "random", "less"}
    x, y, below, above = series["less"]
    assert x == [100, 400]
    assert y == pytest.approx([2.1, 1.9])
    assert below == pytest.approx([2.1 - 2.0, 1.9 - 1.85])
    assert above == pytest.approx([2.2 - 2.1, 1.93 - 1.9])
    x, y, below, above = series["random"]
    assert (x, y) == ([100, 400], pytest.approx([2.2, 2.0]))
    assert below == pytest.approx([0.1, 0.05]) and above == pytest.approx([0.05, 0.08])
    x, y, below, above = series["base"]
    assert (x, y) == ([0], [2.5])
    assert below == pytest.approx([0.05]) and above == pytest.approx([0.06])


def test_verdict_markdown():
    table = synthetic_table()
    text = verdict_markdown(table)
    lines = text.splitlines()
    summary = summary_lines(table)
    assert lines[: len(summary)] == [f"- {line}" for line in summary] and lines[len(summary)] == ""
    lines = lines[len(summary) + 1 :]
    assert lines[0] == (
        "| method | budget | n | task | measure | models | selection variance | eval rows (groups) | mean [95% CI] "
        "| vs | delta [95% CI] | p | p (Holm) | verdict |"
    )
    assert lines[1] == "|" + "---|" * 14
    known = (
        "| less | 100 | 100 | gsm8k | loss | 3 | sampled | 200 (180) | 1.235 [1.2, 1.27] | random "
        "| -0.05123 [-0.08, -0.02] | 0.0123 | 0.0369 |"
    )
    assert f"{known} **better** |" in lines
    base = "| base | 0 | 0 | (all tasks) | loss:mean | 1 | none (deterministic) | 400 (400) | 2.5 [2.45, 2.56] "
    assert f"{base}| - | - | - | - | no baseline |" in lines
    assert any(line.endswith("| **worse** |") for line in lines)
    assert len(lines) == 2 + table.height
    assert lines[2].split(" | ")[3] == "(all tasks)"  # the aggregates come first


def test_summary_lines_by_hand():
    """Random's and the untrained model's losses, then per method @ budget its target verdict and
    the task where its loss rose most elsewhere (dolly: +0.2 against gsm8k's -0.05)."""
    table = synthetic_table().with_columns((pl.col("task") == "gsm8k").alias("target"))
    lines = summary_lines(table)
    assert lines[0] == "random @ 100 (3 models): loss dolly 2.5 [2.4, 2.6]; gsm8k 1.9 [1.85, 1.95]"
    assert lines[2] == "untrained model (1 models): loss dolly 2.8 [2.7, 2.9]; gsm8k 2.2 [2.15, 2.25]"
    assert lines[3] == (
        "less @ 100 (selection variance: sampled): gsm8k -0.05123 [-0.08, -0.02] better (Holm p 0.0369); "
        "costs most elsewhere on dolly +0.2 [0.15, 0.24] no detectable difference (Holm p 0.9)"
    )
    assert len(lines) == 5
    # without a target column every task is a target and nothing is "elsewhere"
    assert "elsewhere" not in " ".join(summary_lines(synthetic_table()))


class _Checker(HTMLParser):
    """Records every tag and fails on an unbalanced close (HTMLParser itself is lenient)."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.classes: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src") or "")
        if attrs.get("class"):
            self.classes.add(attrs["class"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-5:])
        self.stack.pop()


def test_html_report_self_contained_and_escaped(images):
    evil = "<script>alert(1)</script>"
    text = html_report(
        synthetic_table(evil),
        images,
        title="Comparison <b>report</b> \u0394",
        settings={"seeds": 3, "bootstrap": 1000, "eval set": "<dev & test>"},
        notes=["trained on the tiny model", "a note with <i>markup</i>"],
    )
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert checker.stack == []
    assert text.startswith("<!DOCTYPE html>")
    for needle in ('src="http', 'href="http', "src='http", "<script", "<link", "url(", "@import"):
        assert needle not in text.lower(), needle
    assert len(checker.images) == 3
    assert all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;dev &amp; test&gt;" in text and "&lt;i&gt;markup&lt;/i&gt;" in text
    assert "<b>report</b>" not in text
    assert {"better", "worse", "none"} <= checker.classes
    assert '<td class="better">better</td>' in text and '<td class="worse">worse</td>' in text
    assert "How to read this" in text and "Holm-adjusted p" in text
    assert text.index("<h2>Summary</h2>") < text.index("<h2>Settings</h2>") < text.index("<h2>Verdicts</h2>")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; @ 100 (selection variance: sampled)" in text  # the summary, escaped
    assert "tr" in checker.tags and "style" in checker.tags and "figcaption" in checker.tags
    for caption in images:
        assert caption in text


def test_write_html_report_atomic_utf8(images, tmp_path):
    table = synthetic_table()
    path = write_html_report(table, images, "Report \u0394", {"seeds": 3}, tmp_path / "out" / "report.html", ["n"])
    assert path == tmp_path / "out" / "report.html"
    assert path.read_text(encoding="utf-8") == html_report(table, images, "Report \u0394", {"seeds": 3}, ["n"])
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temp file left behind
    write_html_report(table, {}, "again", {}, path)  # replaces the old one
    assert "<h1>again</h1>" in path.read_text(encoding="utf-8")


def test_html_renders_in_headless_chromium(images, tmp_path):
    browser = find_browser()
    if browser is None:
        pytest.skip(f"no headless browser found on PATH (looked for {', '.join(BROWSERS)}); apt-get install chromium")
    from matplotlib.image import imread

    report = write_html_report(synthetic_table(), images, "Screenshot check", {"seeds": 3}, tmp_path / "report.html")
    shot = screenshot(browser, f"file://{report.resolve()}", tmp_path / "shot.png", size="1280,2000", wait_ms=2000)
    assert shot.read_bytes().startswith(PNG_SIGNATURE)
    pixels = imread(shot)
    assert pixels.std() > 0.02, "the screenshot is blank"

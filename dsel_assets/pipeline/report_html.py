"""The comparison report as people read it: plots with 95% confidence intervals, a verdict table
(markdown for the Dagster UI and the CLI) and one self-contained HTML file that opens anywhere,
offline, with nothing beside it (images inline as data URIs, inline CSS, no scripts).

Input is the comparison ``table``: one row per (method, budget, task, measure) with the mean over
seed units, its bootstrap CI, the difference to random (delta, its CI, p) and a verdict."""

from __future__ import annotations

import base64
import html
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

ALL_TASKS = "(all tasks)"
BASELINE = "random"
UNTRAINED = "base"
VERDICT_COLOURS = {"better": "#2e7d32", "worse": "#c62828", "no detectable difference": "#9e9e9e"}
VERDICT_CLASSES = {"better": "better", "worse": "worse"}  # every other verdict gets "none"
TABLE_HEADER = [
    "method",
    "budget",
    "n",
    "task",
    "measure",
    "models",
    "selection variance",
    "eval rows (groups)",
    "mean [95% CI]",
    "vs",
    "delta [95% CI]",
    "p",
    "p (Holm)",
    "verdict",
]
NUMERIC_COLUMNS = {"n", "models", "eval rows (groups)", "mean [95% CI]", "delta [95% CI]", "p", "p (Holm)"}
HOW_TO_READ = (
    "A method's models come from selection replicates (one selection per seed of the method's randomness) and "
    "training seeds within each; all are evaluated on the same eval rows, grouped by source item (rows with the "
    "same prompt, e.g. the reference summaries of one dialogue). Each mean's 95% interval is a percentile "
    "bootstrap that resamples selections, then training seeds within them, then eval groups. Delta is the method "
    "minus random on the same eval rows (for a loss a negative delta is an improvement, for a score a positive "
    "one); its interval and p come from Welch's t on the selection replicates' means (training seeds' for a "
    "method with one selection), which is calibrated where a bootstrap of 2-5 replicates is not "
    "(docs/STATISTICS.md). A method whose one selection stands for randomness that was not sampled (\u201cnot "
    "sampled\u201d, e.g. its warmup) is judged against random's selection-to-selection spread. The verdict uses "
    "the Holm-adjusted p over every row that gets one (the report's family): \u201cbetter\u201d or "
    "\u201cworse\u201d when it is below 0.05, else \u201cno detectable difference\u201d, which is not evidence "
    "that the methods are equal. No verdict is given with fewer than 2 replicates on a side (random needs 2 "
    "selections) or fewer than 20 eval groups; the estimate is still shown."
)


# --------------------------------------------------------------------------------------- plots


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (reports are drawn headless), with
    mathtext off: task and method labels are data, and ``$`` in one must not be parsed as TeX."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    """Write the figure as PNG (creating the folder) and free it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _errors(mean: float, low: float | None, high: float | None) -> tuple[float, float]:
    """Asymmetric error-bar lengths (below, above) of a CI around ``mean``; 0 where the CI is absent."""
    below = 0.0 if _missing(low) else max(mean - low, 0.0)
    above = 0.0 if _missing(high) else max(high - mean, 0.0)
    return below, above


#: rows against random (or with no difference): one per method, budget, task and measure; the
#: others compare a targeted method with a second baseline (random_in_task)
AGAINST_RANDOM = pl.col("baseline").is_null() | (pl.col("baseline") == BASELINE)


def _curve_rows(table: pl.DataFrame, measure: str) -> pl.DataFrame:
    """The "(all tasks)" rows of ``measure``; with a single task (no balance rows) its own rows of
    the measure's kind ("loss:mean" -> the task's "loss"); rows against a second baseline left out."""
    table = table.filter(AGAINST_RANDOM)
    rows = table.filter((pl.col("task") == ALL_TASKS) & (pl.col("measure") == measure))
    tasks = set(table["task"].to_list()) - {ALL_TASKS}
    if rows.height or len(tasks) != 1:
        return rows
    return table.filter(pl.col("measure") == measure.split(":")[0])


def _curve_series(table: pl.DataFrame, measure: str) -> dict[str, tuple[list, list, list, list]]:
    """Per method, the rows of ``_curve_rows`` sorted by train size, as (train sizes, means, error
    below, error above): what the budget-curve plot draws."""
    rows = _curve_rows(table, measure).sort(["method", "train_size"])
    series: dict[str, tuple[list, list, list, list]] = {}
    for method, size, mean, low, high in rows.select("method", "train_size", "mean", "ci_low", "ci_high").rows():
        if _missing(mean):
            continue
        x, y, below, above = series.setdefault(method, ([], [], [], []))
        err = _errors(mean, low, high)
        x.append(size)
        y.append(mean)
        below.append(err[0])
        above.append(err[1])
    return series


def _direction(rows: pl.DataFrame) -> str:
    """'(lower is better)' / '(higher is better)' from the rows' lower_is_better flag."""
    if rows.height == 0 or "lower_is_better" not in rows.columns:
        return ""
    return "(lower is better)" if rows["lower_is_better"][0] else "(higher is better)"


def plot_budget_curves(table: pl.DataFrame, path: Path, measure: str = "loss:mean") -> Path:
    """``measure`` over all tasks against the training budget, one line per method with 95% CI error bars
    (a method with a single budget is drawn as points, the untrained base model as a dashed line), so the
    reader sees whether a method's advantage holds across budgets and exceeds the uncertainty."""
    plt = pyplot()
    rows = _curve_rows(table, measure)
    series = _curve_series(table, measure)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    trained = {m: s for m, s in series.items() if not (m == UNTRAINED and all(x == 0 for x in s[0]))}
    sizes = sorted({x for s in trained.values() for x in s[0]})
    # nudge the methods apart along x so error bars at the same budget do not hide each other
    step = 0.012 * (max(sizes) - min(sizes) if len(sizes) > 1 else max(max(sizes, default=1), 1))
    for i, (method, (x, y, below, above)) in enumerate(trained.items()):
        shift = step * (i - (len(trained) - 1) / 2)
        style = "o" if len(x) == 1 else "o-"
        ax.errorbar(
            [v + shift for v in x],
            y,
            yerr=[below, above],
            fmt=style,
            capsize=4,
            elinewidth=1,
            markersize=5,
            label=method,
        )
    if UNTRAINED in series and all(s == 0 for s in series[UNTRAINED][0]):
        _, y, below, above = series[UNTRAINED]
        ax.axhline(y[0], color="black", linestyle="--", linewidth=1, label=f"{UNTRAINED} (untrained)")
        ax.axhspan(y[0] - below[0], y[0] + above[0], color="black", alpha=0.08, linewidth=0)
    if sizes:
        ax.set_xticks(sizes)
    else:
        ax.text(0.5, 0.5, f"no '{ALL_TASKS}' rows for {measure}", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training examples (selection size)")
    ax.set_ylabel(f"{measure} (mean over seeds, 95% CI)")
    ax.set_title(f"{measure} over all tasks vs budget {_direction(rows)}".strip())
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="best")
    return _save(plt, fig, path)


def _delta_panels(table: pl.DataFrame) -> list[tuple[str, str, pl.DataFrame]]:
    """(task, measure, rows with a delta) for every per-task panel: loss first, then each score measure."""
    rows = table.filter(
        (pl.col("task") != ALL_TASKS)
        & AGAINST_RANDOM
        & ((pl.col("measure") == "loss") | pl.col("measure").str.starts_with("score:"))
        & pl.col("delta").cast(pl.Float64).is_not_null()
        & pl.col("delta").cast(pl.Float64).is_not_nan()
    )
    keys = sorted(set(rows.select("task", "measure").rows()), key=lambda k: (k[1] != "loss", k[1], k[0]))
    return [
        (task, measure, rows.filter((pl.col("task") == task) & (pl.col("measure") == measure)))
        for task, measure in keys
    ]


def plot_task_deltas(table: pl.DataFrame, path: Path) -> Path:
    """Per (task, measure) panel: horizontal bars of delta vs random for every method @ budget with 95% CI
    error bars, a line at 0 and colours by verdict, so the reader sees on which tasks a method helps or hurts
    and whether the interval crosses 0."""
    from matplotlib.patches import Patch

    plt = pyplot()
    panels = _delta_panels(table)
    ncols = 1 if len(panels) <= 1 else 2
    nrows = max(1, math.ceil(len(panels) / ncols))
    tallest = max((p[2].height for p in panels), default=1)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, nrows * (1.2 + 0.35 * tallest)), squeeze=False)
    for ax, (task, measure, rows) in zip(axes.flat, panels, strict=False):
        rows = rows.sort(["train_size", "method"])
        labels = [f"{m}@{b}" for m, b in rows.select("method", "budget").rows()]
        deltas = rows["delta"].to_list()
        errs = [_errors(d, lo, hi) for d, lo, hi in rows.select("delta", "delta_low", "delta_high").rows()]
        colours = [VERDICT_COLOURS.get(v, VERDICT_COLOURS["no detectable difference"]) for v in rows["verdict"]]
        y = np.arange(len(labels))
        ax.barh(y, deltas, xerr=np.array(errs).T, color=colours, capsize=3, error_kw={"elinewidth": 1})
        ax.axvline(0, color="black", linewidth=1)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"delta vs random (95% CI) {_direction(rows)}".strip(), fontsize=9)
        ax.set_title(f"{task} \u2014 {measure}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if panels:
        handles = [Patch(color=c, label=v) for v, c in VERDICT_COLOURS.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.05 if nrows == 1 else 0.03, 1, 1))
    else:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no per-task rows with a delta vs random", ha="center", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _counts(value: object) -> dict[str, float]:
    """task -> count from the JSON string (or an already decoded mapping)."""
    if _missing(value):
        return {}
    counts = value if isinstance(value, Mapping) else json.loads(str(value))
    return {str(k): float(v) for k, v in counts.items()}


def plot_task_mix(task_mix: pl.DataFrame, path: Path) -> Path:
    """Stacked horizontal bars of the task shares of every selection (method @ budget), so a gain on one
    task can be read against how much of that task the method selected."""
    plt = pyplot()
    counts = [_counts(c) for c in task_mix["task_counts"].to_list()]
    tasks = sorted({t for c in counts for t in c})
    labels = [f"{m}@{b}" for m, b in task_mix.select("method", "budget").rows()]
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.3 * len(labels) + 1.5)))
    left = np.zeros(len(labels))
    for task in tasks:
        share = np.array([c.get(task, 0.0) / max(sum(c.values()), 1.0) for c in counts])
        ax.barh(labels, share, left=left, label=task)
        left += share
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the selection")
    ax.set_title("Task mix per selection")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    if tasks:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0)
    return _save(plt, fig, path)


# ------------------------------------------------------------------------------ verdict table


def _num(value: object, signed: bool = False) -> str:
    """4 significant digits; '-' for a missing value."""
    if _missing(value):
        return "-"
    if isinstance(value, float):
        return f"{value:+.4g}" if signed else f"{value:.4g}"
    return str(value)


def _with_ci(value: object, low: object, high: object, signed: bool = False) -> str:
    """'value [lo, hi]' (the CI left off when absent)."""
    if _missing(value):
        return "-"
    if _missing(low) or _missing(high):
        return _num(value, signed)
    return f"{_num(value, signed)} [{_num(low)}, {_num(high)}]"


def _verdict_rows(table: pl.DataFrame) -> list[tuple[list[str], str]]:
    """(the cells of TABLE_HEADER as text, verdict) per row: all-task rows first, then task by task, each
    block by measure and budget (random first), so methods at the same budget stand next to their baseline."""
    rows = table.with_columns(
        (pl.col("task") != ALL_TASKS).alias("_per_task"), (pl.col("method") != BASELINE).alias("_not_baseline")
    ).sort(["_per_task", "task", "measure", "train_size", "_not_baseline", "method", "budget"])
    out = []
    for r in rows.iter_rows(named=True):
        cells = [
            str(r["method"]),
            str(r["budget"]),
            _num(r["train_size"]),
            str(r["task"]),
            str(r["measure"]),
            _num(r["models"]),
            str(r["selection_variance"]),
            f"{_num(r['examples'])} ({_num(r['eval_groups'])})",
            _with_ci(r["mean"], r["ci_low"], r["ci_high"]),
            str(r["baseline"] or "-"),
            _with_ci(r["delta"], r["delta_low"], r["delta_high"], signed=True),
            _num(r["p_value"]),
            _num(r["p_holm"]),
            str(r["verdict"]),
        ]
        out.append((cells, str(r["verdict"])))
    return out


def _delta_text(row: Mapping) -> str:
    """'task: +0.012 [-0.01, 0.03] verdict (Holm p 0.2)' for a summary line."""
    text = f"{row['task']} {_with_ci(row['delta'], row['delta_low'], row['delta_high'], signed=True)} {row['verdict']}"
    return text + (f" (Holm p {_num(row['p_holm'])})" if not _missing(row["p_holm"]) else "")


def summary_lines(table: pl.DataFrame) -> list[str]:
    """The ten-second read of a comparison, one line per method @ budget on the loss: its verdict on
    each target task (the ``target`` column; every task when there is none) against random, and
    against any second baseline it was compared with (``random_in_task``), then what it costs
    elsewhere (the other task where its loss rose most against random); first random's and the
    untrained model's mean losses for scale."""
    rows = table.filter((pl.col("task") != ALL_TASKS) & (pl.col("measure") == "loss"))
    if "target" in rows.columns and rows["target"].any():
        targets = set(rows.filter(pl.col("target"))["task"].to_list())
    else:
        targets = set(rows["task"].to_list())
    lines = []
    for reference in (BASELINE, UNTRAINED):
        for (budget,), group in rows.filter(pl.col("method") == reference).group_by(["budget"], maintain_order=True):
            means = "; ".join(
                f"{r['task']} {_with_ci(r['mean'], r['ci_low'], r['ci_high'])}"
                for r in group.sort("task").iter_rows(named=True)
            )
            label = "untrained model" if reference == UNTRAINED else f"{reference} @ {budget}"
            lines.append(f"{label} ({group['models'][0]} models): loss {means}")
    methods = rows.filter(~pl.col("method").is_in([BASELINE, UNTRAINED])).sort("train_size", "method", "budget")
    for (method, budget), group in methods.group_by(["method", "budget"], maintain_order=True):
        main = group.filter(AGAINST_RANDOM).sort("task")
        on_target = [_delta_text(r) for r in main.iter_rows(named=True) if r["task"] in targets]
        line = f"{method} @ {budget} (selection variance: {group['selection_variance'][0]}): " + "; ".join(on_target)
        others = group.filter(~AGAINST_RANDOM).sort("task")
        for r in others.iter_rows(named=True):
            if r["task"] in targets:
                line += f"; vs {r['baseline']}: {_delta_text(r)}"
        elsewhere = main.filter(~pl.col("task").is_in(list(targets)) & pl.col("delta").is_not_null())
        if elsewhere.height:
            line += "; costs most elsewhere on " + _delta_text(
                elsewhere.sort("delta", descending=True).row(0, named=True)
            )
        lines.append(line)
    return lines


def verdict_markdown(table: pl.DataFrame) -> str:
    """The summary lines as a list, then the whole verdict table as one markdown table (Dagster UI
    metadata, the report's .md); "better"/"worse" in bold so they stand out."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [*(f"- {line}" for line in summary_lines(table)), ""]
    lines += ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    for cells, verdict in _verdict_rows(table):
        cells = [cell(c) for c in cells]
        if verdict in VERDICT_CLASSES:
            cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- HTML

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1.5rem; color: #1f2328; line-height: 1.5;
       background: #fff; }
h1 { font-size: 1.7rem; margin-bottom: 0.3rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #d0d7de; padding-bottom: 0.3rem; }
p.how { max-width: 60rem; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1rem; }
th, td { padding: 0.3rem 0.6rem; border-bottom: 1px solid #e1e4e8; text-align: left; vertical-align: top; }
th { background: #f0f3f6; position: sticky; top: 0; z-index: 1; white-space: nowrap; }
tbody tr:nth-child(even) { background: #f8f9fb; }
tbody tr:hover { background: #eef4ff; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.summary td { font-weight: 600; }
td.better { color: #1a7f37; background: #e6f4ea; font-weight: 700; }
td.worse { color: #b42318; background: #fdecea; font-weight: 700; }
td.none { color: #57606a; }
table.settings th { position: static; text-align: left; }
figure { margin: 1.5rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4e8; }
figcaption { color: #57606a; font-size: 0.9rem; margin-top: 0.3rem; }
ul.notes li { margin: 0.2rem 0; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _verdict_table_html(table: pl.DataFrame) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in TABLE_HEADER)
    body = []
    task_index = TABLE_HEADER.index("task")
    for cells, verdict in _verdict_rows(table):
        tds = []
        for name, text in zip(TABLE_HEADER[:-1], cells[:-1], strict=True):
            cls = ' class="num"' if name in NUMERIC_COLUMNS else ""
            tds.append(f"<td{cls}>{_e(text)}</td>")
        tds.append(f'<td class="{VERDICT_CLASSES.get(verdict, "none")}">{_e(cells[-1])}</td>')
        row_cls = ' class="summary"' if cells[task_index] == ALL_TASKS else ""
        body.append(f"<tr{row_cls}>{''.join(tds)}</tr>")
    return (
        f'<table class="verdicts">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(body)
        + "\n</tbody>\n</table>"
    )


def html_report(
    table: pl.DataFrame,
    images: Mapping[str, Path],
    title: str,
    settings: Mapping[str, object],
    notes: Sequence[str] = (),
) -> str:
    """One self-contained HTML5 page (inline CSS, PNGs as base64 data URIs, no scripts or external links):
    title, settings, how to read the numbers, the verdict table, the plots with captions and the notes.
    Every text is escaped, so method or task names cannot inject markup."""
    settings_rows = "\n".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in settings.items())
    figures = "\n".join(
        f'<figure><img src="{_data_uri(p)}" alt="{_e(caption)}"><figcaption>{_e(caption)}</figcaption></figure>'
        for caption, p in images.items()
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Summary</h2>",
        '<ul class="summary">',
        *(f"<li>{_e(line)}</li>" for line in summary_lines(table)),
        "</ul>",
        "<h2>Settings</h2>",
        f'<table class="settings">\n<tbody>\n{settings_rows}\n</tbody>\n</table>',
        "<h2>How to read this</h2>",
        f'<p class="how">{_e(HOW_TO_READ)}</p>',
        "<h2>Verdicts</h2>",
        _verdict_table_html(table),
    ]
    if images:
        parts += ["<h2>Plots</h2>", figures]
    if notes:
        parts += ["<h2>Notes</h2>", '<ul class="notes">', *(f"<li>{_e(n)}</li>" for n in notes), "</ul>"]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_html_report(
    table: pl.DataFrame,
    images: Mapping[str, Path],
    title: str,
    settings: Mapping[str, object],
    path: Path,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``html_report`` to ``path`` as UTF-8, atomically (temp file in the same folder, then
    os.replace), so a reader never sees a half-written report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = html_report(table, images, title, settings, notes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

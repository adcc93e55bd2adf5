"""What a ``dsel`` command prints. By default: its own progress lines (``[dsel]`` / ``[compare]``),
a progress bar per stage of work (units done / total, rate, ETA; on stderr), warnings and
errors, and the final tables. Dagster's INFO event stream and the libraries' logs,
warnings and progress bars go to ``logs/dsel.log`` under the state home (its path is printed
once per command); ``-v`` shows them live as before, ``-q`` also moves the progress lines to the
log file and leaves results and errors."""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

from dsel_assets.pipeline import progress as meters

QUIET, NORMAL, VERBOSE = 0, 1, 2
#: Loggers of libraries whose INFO lines and warnings are details, not progress.
LIBRARY_LOGGERS = ("py.warnings", "mlflow", "alembic", "transformers", "sentence_transformers", "httpx", "urllib3")

_state: dict = {"verbosity": VERBOSE, "log_file": None, "announced": False, "bars": None}
_listening = ExitStack()
#: Width of a bar in characters, and seconds between two printed lines of a stage when stderr is
#: not a terminal (a terminal redraws one line in place).
BAR_WIDTH, PLAIN_INTERVAL = 20, 60.0


def bar_line(stage: str, done: float, total: float, tail: str) -> str:
    filled = BAR_WIDTH if total <= 0 else min(BAR_WIDTH, int(BAR_WIDTH * done / total))
    return f"[dsel] {stage:<15} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]  {tail}"


def _count(n: float) -> str:
    return f"{n:,.0f}"


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def _rate(per_second: float) -> str:
    return f"{per_second:.1f}/s" if per_second >= 1 else f"{per_second * 60:.1f}/min"


class StageBars:
    """The progress listener of a command: one line per stage (dsel_assets.pipeline.progress.stage_of),
    redrawn in place on a terminal with the current step's units done / total, rate and ETA,
    and closed with what the stage did when the next stage starts or the command ends. Off a
    terminal, a stage prints a line at most every ``interval`` seconds, then its closing line."""

    def __init__(self, stream, terminal: bool, clock=time.perf_counter, interval: float = PLAIN_INTERVAL):
        self.stream, self.terminal, self.clock, self.interval = stream, terminal, clock, interval
        self.stage: str | None = None
        self.started = self.ended = self.printed = 0.0  # the stage's first step's start, its last tick
        self.last: dict[str, meters.Tick] = {}  # step -> its latest tick in this stage
        self.drawn = ""

    def __call__(self, tick: meters.Tick) -> None:
        stage, now = meters.stage_of(tick.step), self.clock()
        if stage != self.stage:
            self.close()
            self.stage, self.last = stage, {}
            self.started = self.printed = now - tick.elapsed
        self.last[tick.step], self.ended = tick, now
        eta = "" if tick.eta is None else f"  ETA {_duration(tick.eta)}"
        line = bar_line(
            stage,
            tick.done,
            tick.total,
            f"{_count(tick.done)}/{_count(tick.total)} {tick.unit}  {_rate(tick.rate)}{eta}  {tick.step}",
        )
        if self.terminal:
            self._draw(line)
        elif now - self.printed >= self.interval:
            self.printed = now
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """End the current stage's line with its totals per unit."""
        if self.stage is None:
            return
        units: dict[str, int] = {}
        for tick in self.last.values():
            units[tick.unit] = units.get(tick.unit, 0) + tick.done
        done, total = sum(t.done for t in self.last.values()), sum(t.total for t in self.last.values())
        what = ", ".join(f"{_count(n)} {unit}" for unit, n in units.items())
        steps = f"{len(self.last)} step{'s' * (len(self.last) != 1)}"
        early = "" if done >= total else ", stopped early"
        tail = f"{what} in {_duration(self.ended - self.started)} ({steps}{early})"
        self.clear()
        print(bar_line(self.stage, done, total, tail), file=self.stream, flush=True)
        self.stage, self.drawn = None, ""

    def clear(self) -> None:
        """Take the in-place line off the terminal (before another line is printed)."""
        if self.drawn:
            print("\r\033[K", end="", file=self.stream, flush=True)

    def redraw(self) -> None:
        if self.drawn:
            print(self.drawn, end="", file=self.stream, flush=True)

    def _draw(self, line: str) -> None:
        self.drawn = line
        print(f"\r\033[K{line}", end="", file=self.stream, flush=True)


class _LazyFileHandler(logging.FileHandler):
    """A file handler that creates its folder and file at the first record (read-only commands
    leave nothing behind)."""

    def __init__(self, path: Path):
        super().__init__(path, delay=True, encoding="utf-8")

    def _open(self):
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def configure(log_file: Path, verbosity: int) -> None:
    """Route the libraries' output for this process: to ``log_file`` unless ``verbosity`` is
    VERBOSE. Library progress bars are turned off below VERBOSE (set before they are imported)."""
    _state.update(verbosity=verbosity, log_file=log_file, announced=False)
    if verbosity >= VERBOSE:
        return
    if verbosity == NORMAL:
        _state["bars"] = StageBars(sys.stderr, sys.stderr.isatty())
        _listening.enter_context(meters.listening(_state["bars"]))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars too
    os.environ.setdefault("LANCE_LOG", "error")  # Lance's Rust-side "No existing dataset ... created"
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow sets its own handler when imported
    handler = _LazyFileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.captureWarnings(True)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)


def restore() -> None:
    """Close the stage bars and undo :func:`configure` (a command run in-process, e.g. by a test,
    leaves nothing behind)."""
    if _state["bars"] is not None:
        _state["bars"].close()
        _listening.close()
    if _state["verbosity"] < VERBOSE:
        logging.captureWarnings(False)
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                handler.close()
            logger.handlers, logger.propagate = [], True
    _state.update(verbosity=VERBOSE, log_file=None, announced=False, bars=None)


def verbosity() -> int:
    return _state["verbosity"]


class _RunWarnings(logging.Handler):
    """A run's Dagster warnings as one dsel line each on stderr (above the stage bars); its errors
    are left to dsel's own error line, their details to the log file (:func:`record_run`)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING:
            return
        meta = getattr(record, "dagster_meta", None) or {}
        step = meta.get("step_key")
        progress(
            f"[dsel] warning: {f'{step}: ' if step else ''}{meta.get('orig_message') or record.getMessage()}",
            sys.stderr,
        )


@dg.logger(description="dsel's console below -v: a run's warnings, one line each; a failed step is dsel's error line")
def run_warnings(_init_context) -> logging.Logger:
    logger = logging.Logger("dsel.run", level=logging.WARNING)
    logger.addHandler(_RunWarnings())
    return logger


def progress(line: str, stream=None) -> None:
    """A progress line: printed (``stream``, default stdout), or to the log file with ``-q``."""
    if _state["verbosity"] <= QUIET:
        _append([line])
        return
    bars = _state["bars"]
    if bars is not None:
        bars.clear()
    print(line, file=stream or sys.stdout, flush=True)
    if bars is not None:
        bars.redraw()


def record_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Append a finished run's INFO-and-above event log lines, and the stack trace of a failed
    step, to the log file (below VERBOSE, where they were not shown live), saying once per command
    where they are."""
    if _state["verbosity"] >= VERBOSE or _state["log_file"] is None:
        return
    lines = []
    for entry in instance.all_logs(run_id):
        if entry.level >= logging.INFO and entry.user_message:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.timestamp))
            lines.append(
                f"{when} {logging.getLevelName(entry.level)} {run_id[:8]} {entry.step_key or '-'}: {entry.user_message}"
            )
            event = entry.dagster_event
            if event is not None and event.is_step_failure and event.step_failure_data.error is not None:
                lines.append(event.step_failure_data.error.to_string().rstrip())
    _append(lines)
    if not _state["announced"] and _state["verbosity"] > QUIET:
        _state["announced"] = True
        print(f"[dsel] details: {_state['log_file']} (-v shows them live)", file=sys.stderr, flush=True)


def _append(lines: list[str]) -> None:
    path = _state["log_file"]
    if path is None or not lines:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")

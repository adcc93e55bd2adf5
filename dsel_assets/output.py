"""What a ``dsel`` command prints. By default: its own progress lines (``[dsel]`` / ``[compare]``),
warnings and errors, and the final tables. Dagster's INFO event stream and the libraries' logs,
warnings and progress bars go to ``logs/dsel.log`` under the state home (its path is printed
once per command); ``-v`` shows them live as before, ``-q`` also moves the progress lines to the
log file and leaves results and errors."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import dagster as dg

QUIET, NORMAL, VERBOSE = 0, 1, 2
#: Loggers of libraries whose INFO lines and warnings are details, not progress.
LIBRARY_LOGGERS = ("py.warnings", "mlflow", "alembic", "transformers", "sentence_transformers", "httpx", "urllib3")

_state: dict = {"verbosity": VERBOSE, "log_file": None, "announced": False}


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
    """Undo :func:`configure` (a command run in-process, e.g. by a test, leaves nothing behind)."""
    if _state["verbosity"] < VERBOSE:
        logging.captureWarnings(False)
        for name in LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            for handler in logger.handlers:
                handler.close()
            logger.handlers, logger.propagate = [], True
    _state.update(verbosity=VERBOSE, log_file=None, announced=False)


def verbosity() -> int:
    return _state["verbosity"]


def console_log_level() -> str:
    """Dagster's console logger level for runs: INFO with ``-v``, else warnings and errors only."""
    return {QUIET: "ERROR", NORMAL: "WARNING"}.get(_state["verbosity"], "INFO")


def progress(line: str, stream=None) -> None:
    """A progress line: printed (``stream``, default stdout), or to the log file with ``-q``."""
    if _state["verbosity"] <= QUIET:
        _append([line])
        return
    print(line, file=stream or sys.stdout, flush=True)


def record_run(instance: dg.DagsterInstance, run_id: str) -> None:
    """Append a finished run's INFO-and-above event log lines to the log file (below VERBOSE,
    where they were not shown live), saying once per command where they are."""
    if _state["verbosity"] >= VERBOSE or _state["log_file"] is None:
        return
    lines = []
    for entry in instance.all_logs(run_id):
        if entry.level >= logging.INFO and entry.user_message:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.timestamp))
            lines.append(
                f"{when} {logging.getLevelName(entry.level)} {run_id[:8]} {entry.step_key or '-'}: {entry.user_message}"
            )
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

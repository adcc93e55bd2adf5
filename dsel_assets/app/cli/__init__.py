"""``dsel``: run the default pipeline, ingest files, inspect state, list methods, open the UI."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from dsel_assets.app.cli import comparison, data, selection
from dsel_assets.app.cli.common import HOME_HELP
from resources.home import DselHome


def parser() -> argparse.ArgumentParser:
    """The ``dsel`` argument parser: the global options and every command group's subcommands."""
    p = argparse.ArgumentParser(prog="dsel", description=__doc__)

    def global_options(parsed: argparse.ArgumentParser, after_command: bool) -> None:
        """``--home``, ``-v`` and ``-q``: before the subcommand or after it (the latter wins, so
        there they default to unset)."""
        unset = argparse.SUPPRESS if after_command else None
        parsed.add_argument("--home", default=unset, help=HOME_HELP)
        verbosity = parsed.add_mutually_exclusive_group()
        for flags, help_text in (
            (
                ("-v", "--verbose"),
                "show Dagster's and the libraries' logs and warnings live (default: in <home>/logs/dsel.log)",
            ),
            (("-q", "--quiet"), "results and errors only (progress lines go to the log file too)"),
        ):
            verbosity.add_argument(*flags, action="store_true", default=unset or False, help=help_text)

    global_options(p, after_command=False)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        """A subcommand that also takes the global options after its name (``dsel status --home X -v``)."""
        parsed = sub.add_parser(name, **kwargs)
        global_options(parsed, after_command=True)
        return parsed

    for group in (data, selection, comparison):  # the order of a session: data in, selections, comparison
        group.add_commands(command)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args, extra = cli.parse_known_args(argv)
    if extra and args.command != "ui":
        cli.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    from dsel_assets.app import output
    from dsel_assets.pipeline.liveness import reap_for_cli

    if args.verbose and args.quiet:
        cli.error("-v and -q cannot be combined")
    root = Path(args.home).expanduser().resolve() if args.home else DselHome.from_env().root
    output.configure(root / "logs" / "dsel.log", VERBOSITY[(args.verbose, args.quiet)])

    try:
        reap_for_cli(args.home)  # runs a killed dsel left STARTED: mark failed, free their pool slots
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError) as exc:  # the user's input, if it names the field
        if os.environ.get("DSEL_DEBUG") == "1":
            raise
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        if not USER_ERROR.match(message):  # a bug wearing the same type: say so
            print(
                f"dsel: internal error: {type(exc).__name__}: {message} (a bug: please report it; "
                "DSEL_DEBUG=1 shows the traceback)",
                file=sys.stderr,
            )
            return 1
        print(f"dsel: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dsel: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the state database, a failed run, the OS: one line and what to do
        if os.environ.get("DSEL_DEBUG") == "1":
            raise
        print(f"dsel: error: {_describe(exc)}{_full_disk_hint()} (DSEL_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1
    finally:
        output.restore()


#: A user error names what it is about first (``budget: ...``, ``config: warmup_checkpoint: ...``):
#: the convention of every message dsel raises for bad input; any other ValueError / KeyError /
#: FileNotFoundError is an internal error and is reported as one.
USER_ERROR = re.compile(r"[\w@.\-\[\]' ]{1,80}: ")


#: (-v, -q) -> how much a command prints (dsel_assets.app.output)
VERBOSITY = {(True, False): 2, (False, False): 1, (False, True): 0}


#: Free bytes below which a failure is blamed on the state home's disk (libraries report a full
#: disk in their own words, e.g. SQLite's "disk I/O error" once its file could not grow).
LOW_DISK_BYTES = 64 << 20


def _full_disk_hint() -> str:
    """What to do when the state home's file system is (nearly) full, else ""."""
    root = DselHome.from_env().root
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return ""
    if free >= LOW_DISK_BYTES:
        return ""
    where = f"{free / 2**20:.1f} MiB free at {root}"
    return f"; the state home's disk is full ({where}): free space, then run the same command again (it resumes)"


def _describe(exc: Exception) -> str:
    """One line for an error that is not the user's input."""
    import duckdb

    if isinstance(exc, duckdb.Error):
        return f"the state database refused the operation ({type(exc).__name__}: {exc}); check `dsel status`"
    if isinstance(exc, OSError):
        return f"{exc.filename or 'file system'}: {exc.strerror or exc}; check the path, permissions and free space"
    from dsel_assets.app.runs import RunFailed
    from dsel_assets.store.errors import StateDatabaseError

    first_line = (str(exc).strip().splitlines() or [""])[0]
    return first_line if isinstance(exc, (RunFailed, StateDatabaseError)) else f"{type(exc).__name__}: {first_line}"

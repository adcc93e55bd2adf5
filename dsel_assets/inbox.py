"""The inbox folder: which dropped files are ready to become pool batches.

Pure file-system logic (no Dagster): the inbox sensor calls :func:`scan` every tick with the
state it kept in its cursor. A file is ready once it has kept the same size and mtime for one
whole tick and reads as a finished file of its format; a file that stays unfinished past a
grace period is ingested as it is, so validation quarantines what cannot be read, row by row
with its raw text: nothing in the inbox is ever dropped.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from dsel_assets.core.data.catalog import DATA_SUFFIXES
from dsel_assets.core.data.readers import detect_format

#: Subfolders whose files are query / eval sets; everything else in the inbox is pool data.
SPLIT_FOLDERS = ("query", "eval")
INGESTED, QUARANTINED = "ingested", "quarantined"


@dataclass(frozen=True)
class Ready:
    """A file to ingest now: its split, and why it is ingested although unfinished (or "")."""

    path: Path
    name: str  # relative to the inbox, the key of the sensor's state
    split: str
    problem: str


def looks_complete(path: Path) -> tuple[bool, str]:
    """Whether ``path`` reads as a finished file of its format, and why not.

    A writer still at work leaves a JSON document unclosed, a JSON-lines file with a cut last
    line, or a Parquet file without its footer. Row-level problems of a finished file are not
    judged here: validation quarantines them row by row."""
    data = path.read_bytes()
    if not data.strip():
        return False, "empty file"
    fmt = detect_format(path, data[:64])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.read_metadata(pa.BufferReader(data))
        except (pa.ArrowInvalid, OSError) as exc:
            return False, f"no Parquet footer yet: {exc}"
        return True, ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return False, f"not UTF-8 (a multi-byte character may be cut): {exc}"
    if fmt == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data": JSON lines in a .json file, judged below
                return False, f"JSON document does not parse: {exc}"
        else:
            return True, ""
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    try:
        json.loads(last)
    except json.JSONDecodeError as exc:
        return False, f"last JSON line does not parse: {exc}"
    return True, ""


def candidates(root: Path) -> list[tuple[Path, str]]:
    """(file, split) for every data file in the inbox and its ``query/`` and ``eval/`` folders;
    hidden files (``.name``: a writer's temporary) are left alone."""
    found = []
    for folder, split in [(root, "pool"), *((root / s, s) for s in SPLIT_FOLDERS)]:
        if folder.is_dir():
            found += [
                (p, split)
                for p in sorted(folder.iterdir())
                if p.is_file() and p.suffix.lower() in DATA_SUFFIXES and not p.name.startswith(".")
            ]
    return found


def scan(root: Path, seen: dict[str, list], now: float, grace_s: float) -> tuple[list[Ready], dict[str, list], list]:
    """Files ready to ingest, the state for the next tick (name -> [size, mtime_ns, since]) and
    log lines. Query and eval files come first, so a pool row repeating one of theirs is the
    one quarantined as a duplicate (as in ``dsel ingest``)."""
    ready, state, log = [], {}, []
    for path, split in candidates(root):
        name = path.relative_to(root).as_posix()
        try:
            stat = path.stat()
            signature = [stat.st_size, stat.st_mtime_ns]
            previous = seen.get(name)
            if previous is None or previous[:2] != signature:
                state[name] = [*signature, now]  # new or still growing: look again next tick
                continue
            complete, problem = looks_complete(path)
        except OSError as exc:  # vanished or unreadable right now: try again next tick
            log.append(f"{name}: {exc}; retrying")
            continue
        if complete or now - previous[2] >= grace_s:
            ready.append(Ready(path, name, split, problem))
        else:
            state[name] = previous
            log.append(f"{name}: {problem}; waiting (grace {grace_s:.0f}s)")
    ready.sort(key=lambda r: r.split == "pool")
    return ready, state, log


def archive(root: Path, item: Ready, sha256: str) -> Path:
    """Move a registered file out of the inbox (its bytes are already in the raw store):
    to ``ingested/``, or ``quarantined/`` when it was taken unfinished after the grace period."""
    target = root / (QUARANTINED if item.problem else INGESTED) / f"{sha256[:12]}-{item.path.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(item.path, target)
    return target

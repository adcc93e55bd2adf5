"""The inbox folder: which dropped files are ready to become pool batches.

Pure file-system logic (no Dagster): the inbox sensor calls :func:`scan` every tick with the
state it kept in its cursor. A file is ready once it has kept the same size and mtime for one
whole tick and reads as a finished file of its format; a file that stays unfinished past a
grace period is ingested as it is, so validation quarantines what cannot be read, row by row
with its raw text: nothing in the inbox is ever dropped.

The inbox is writable by whoever drops data, so its entries are not trusted: only regular files
are ever opened, never through a symlink (``O_NOFOLLOW``) and never blocking (``O_NONBLOCK``:
opening a FIFO would wait forever), and only their head and tail are read while waiting.
Symlinks, FIFOs, sockets, devices, folders with a data suffix, a ``query/`` or ``eval/`` that
is not a real folder and files over the size cap are set aside as they are (a link is moved,
not its target) to ``rejected/`` with ``<name>.reason.txt`` beside them, and never copied. A
file whose handling keeps failing is set aside the same way after a bounded number of ticks;
a full disk or quota is the machine's failure, not the file's, and never counts (the file
waits in the inbox until there is room).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from dsel_assets.core.data.catalog import DATA_SUFFIXES
from dsel_assets.core.data.readers import detect_format
from resources.inbox import MAX_ATTEMPTS, MAX_BYTES

#: Subfolders whose files are query / eval sets; everything else in the inbox is pool data.
SPLIT_FOLDERS = ("query", "eval")
INGESTED, QUARANTINED, REJECTED = "ingested", "quarantined", "rejected"
#: OS errors that say the state home has no room: retried every tick, never counted.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT})
#: Inbox entries looked at per tick (the rest wait): bounds a tick's work and the cursor's size.
MAX_ENTRIES = 10_000
#: Bytes read from a file's end to judge whether it is finished.
TAIL_BYTES = 64 << 10


class Alert(str):
    """A log line the sensor logs as a warning (an entry set aside, a failure), not as info."""


class SetAside(Exception):
    """An inbox entry that must never be opened or copied; the message is the reason."""


@dataclass(frozen=True)
class Ready:
    """A file to ingest now: its split, why it is ingested although unfinished (or ""), its
    state row and the identity it had when scanned (checked again just before registering)."""

    path: Path
    name: str  # relative to the inbox, the key of the sensor's state
    split: str
    problem: str
    entry: tuple  # size, mtime_ns, since (last change), failures so far
    identity: tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


def entry_kind(mode: int) -> str:
    """What an entry is when it is not a regular file (the reason to set it aside), else ""."""
    kinds = [
        (stat.S_ISREG, ""),
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file")


@contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """``path`` opened for reading if it is a regular file itself: a symlink is not followed,
    a FIFO does not block the open, anything else raises :class:`SetAside`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW on a symlink
            raise SetAside("symlink") from exc
        raise
    with os.fdopen(fd, "rb") as fh:
        kind = entry_kind(os.fstat(fd).st_mode)
        if kind:
            raise SetAside(kind)
        yield fh


def looks_complete(path: Path) -> tuple[bool, str]:
    """Whether ``path`` reads as a finished file of its format, and why not.

    A writer still at work leaves a JSON document unclosed, a JSON-lines file with a cut last
    line, or a Parquet file without its footer. Only the head, the last :data:`TAIL_BYTES` and
    a Parquet footer are read: a file that fits the tail is parsed as a whole, a longer JSON
    document only has to end in ``]`` or ``}``. Row-level problems of a finished file are not
    judged here: validation quarantines them row by row."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return False, "empty file"
        fmt = detect_format(path, fh.read(64))
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            fh.seek(0)
            try:
                pq.read_metadata(fh)
            except (pa.ArrowInvalid, OSError) as exc:
                return False, f"no Parquet footer yet: {exc}"
            return True, ""
        start = max(0, size - TAIL_BYTES)
        fh.seek(start)
        tail = fh.read(TAIL_BYTES)
    return _text_complete(tail, fmt, whole=start == 0)


def _text_complete(tail: bytes, fmt: str, whole: bool) -> tuple[bool, str]:
    """:func:`looks_complete` for JSON and JSON lines, given the file's end (all of it if ``whole``)."""
    if not whole:  # the window may start inside a multi-byte character: skip its continuation bytes
        skip = 0
        while skip < min(3, len(tail)) and tail[skip] & 0xC0 == 0x80:
            skip += 1
        tail = tail[skip:]
    try:
        text = tail.decode("utf-8").removeprefix("\ufeff").rstrip()  # a byte-order mark is allowed
    except UnicodeDecodeError as exc:
        return False, f"not UTF-8 (a multi-byte character may be cut): {exc}"
    if not text.strip():
        return False, "empty file" if whole else "ends in blank space only"
    if fmt == "json":
        if not whole:
            ok = text.endswith(("]", "}"))
            return ok, "" if ok else "JSON document is not closed (no final ] or })"
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data": JSON lines in a .json file, judged below
                return False, f"JSON document does not parse: {exc}"
        else:
            return True, ""
    cut = text.rfind("\n")
    if cut < 0 and not whole:  # a last line longer than the tail: judged by its closing bracket
        ok = text.endswith(("]", "}"))
        return ok, "" if ok else "last JSON line is not closed (no final } or ])"
    try:
        json.loads(text[cut + 1 :])
    except json.JSONDecodeError as exc:
        return False, f"last JSON line does not parse: {exc}"
    return True, ""


def candidates(root: Path) -> tuple[list[tuple[Path, str]], list[tuple[Path, OSError]]]:
    """(entry, split) for every entry with a data suffix in the ``query/`` and ``eval/`` folders
    and the inbox, whatever its type (:func:`scan` sets aside all but regular files), and the
    folders that could not be listed, with why. A ``query`` or ``eval`` that is not a real folder
    (a symlink) is an entry itself, never entered. Hidden names (``.name``: a writer's temporary)
    are left alone."""
    found: list[tuple[Path, str]] = []
    unlisted: list[tuple[Path, OSError]] = []
    for folder, split in [*((root / s, s) for s in SPLIT_FOLDERS), (root, "pool")]:
        try:
            if folder != root and not stat.S_ISDIR(os.lstat(folder).st_mode):
                found.append((folder, split))
                continue
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        except OSError as exc:
            unlisted.append((folder, exc))
            continue
        found += [
            (folder / n, split) for n in names if Path(n).suffix.lower() in DATA_SUFFIXES and not n.startswith(".")
        ]
    return found, unlisted


def load_state(cursor: str | None) -> dict[str, list]:
    """The sensor's state from its cursor; an unreadable cursor starts afresh."""
    try:
        state = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def scan(
    root: Path,
    seen: dict[str, list],
    now: float,
    grace_s: float,
    max_bytes: int = MAX_BYTES,
    max_attempts: int = MAX_ATTEMPTS,
    max_entries: int = MAX_ENTRIES,
) -> tuple[list[Ready], dict[str, list], list[str]]:
    """Files ready to ingest, the state for the next tick (name -> [size, mtime_ns, since,
    failures], only for entries still in the inbox, at most ``max_entries``) and log lines
    (:class:`Alert` for warnings). Entries that are not regular files or exceed ``max_bytes``
    are set aside; an error on one file is that file's only, set aside once it failed
    ``max_attempts`` ticks.
    Query and eval files come first, so a pool row repeating one of theirs is the one
    quarantined as a duplicate (as in ``dsel ingest``)."""
    ready: list[Ready] = []
    state: dict[str, list] = {}
    log: list[str] = []
    found, unlisted = candidates(root)
    for folder, exc in unlisted:  # unreadable right now: its files keep their state and wait
        log.append(Alert(f"{folder}: not listed ({exc}); its files wait for the next tick"))
        here = "" if folder == root else folder.name
        state.update({k: v for k, v in seen.items() if k.rpartition("/")[0] == here})
    if len(found) > max_entries:  # bounds the work of a tick and the state kept in the cursor
        log.append(Alert(f"{len(found)} entries in the inbox; the first {max_entries} are looked at this tick"))
        del found[max_entries:]
    for path, split in found:
        name = path.relative_to(root).as_posix()
        previous = seen.get(name)
        entry = previous if isinstance(previous, list) and len(previous) >= 3 else None
        failures = entry[3] if entry is not None and len(entry) > 3 else 0
        try:
            st = os.lstat(path)
            kind = entry_kind(st.st_mode)
            if name in SPLIT_FOLDERS:  # not a real folder: candidates() did not enter it
                raise SetAside(f"{kind or 'regular file'} in place of the {name}/ folder")
            if kind:
                raise SetAside(kind)
            if st.st_size > max_bytes:
                raise SetAside(f"{st.st_size} bytes, over the {max_bytes}-byte cap (DSEL_INBOX_MAX_BYTES)")
            signature = [st.st_size, st.st_mtime_ns]
            if entry is None or list(entry[:2]) != signature:
                state[name] = [*signature, now, failures]  # new or still growing: look again next tick
                continue
            complete, problem = looks_complete(path)
        except FileNotFoundError:  # vanished: forgotten
            continue
        except SetAside as exc:
            log.append(set_aside(root, name, path, str(exc)))
            continue
        except Exception as exc:  # one file's fault stays that file's: counted, set aside when past the bound
            log.append(failed(root, name, path, entry or (0, 0, now), exc, state, max_attempts))
            continue
        row = [*signature, entry[2], failures]
        if complete or now - entry[2] >= grace_s:
            identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            ready.append(Ready(path, name, split, problem, tuple(row), identity))
        else:
            state[name] = row
            log.append(f"{name}: {problem}; waiting (grace {grace_s:.0f}s)")
    ready.sort(key=lambda r: r.split == "pool")
    return ready, state, log


def unchanged(item: Ready) -> bool:
    """Whether ``item`` is still the regular file it was when scanned (not swapped for a link)."""
    try:
        st = os.lstat(item.path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == item.identity


def failed(
    root: Path, name: str, path: Path, entry: tuple | list, exc: Exception, state: dict[str, list], max_attempts: int
) -> Alert:
    """Count a failure to handle ``name``: keep it in ``state`` for another try next tick, or set
    it aside once it has failed ``max_attempts`` ticks. A full disk is kept without counting."""
    reason = f"{type(exc).__name__}: {exc}"
    if no_room(exc):
        state[name] = list(entry)
        return Alert(f"{name}: {reason}; no room to store it (not counted against the file), retrying next tick")
    failures = (entry[3] if len(entry) > 3 else 0) + 1
    if failures < max_attempts:
        state[name] = [*entry[:3], failures]
        return Alert(f"{name}: {reason}; attempt {failures} of {max_attempts}, retrying next tick")
    state.pop(name, None)
    return set_aside(root, name, path, f"failed {failures} ticks, last: {reason}")


def no_room(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk or quota is full: an OS error with that code, or a library's
    error (DuckDB's, Lance's) that passes the OS's message on."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return True
    return any(os.strerror(code) in str(exc) for code in NO_ROOM)


def set_aside(root: Path, name: str, path: Path, reason: str) -> Alert:
    """Move the entry itself (a link stays a link, a FIFO is not opened) to ``rejected/`` and
    write the reason beside it in ``<name>.reason.txt``; left in place if even that fails."""
    try:
        folder = _own_folder(root, REJECTED)
        base = name.replace("/", "__")
        for n in range(1000):
            target = folder / (base if n == 0 else f"{n}-{base}")
            if not os.path.lexists(target) and not os.path.lexists(f"{target}.reason.txt"):
                break
        else:
            raise FileExistsError(f"{folder}: no free name for {base}")
        os.rename(path, target)
        # O_EXCL|O_NOFOLLOW: never write through a link planted under that name
        fd = os.open(f"{target}.reason.txt", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(f"{name}: {reason}\n")
    except Exception as exc:  # never opened either way; tried again next tick
        return Alert(f"{name}: {reason}; could not be set aside ({exc}), left in place")
    return Alert(f"{name}: {reason}; set aside to {target}")


def _own_folder(root: Path, name: str) -> Path:
    """``root/name``, created if missing; refused when it is not a real folder (a planted symlink
    would send moved files anywhere)."""
    folder = root / name
    try:
        folder.mkdir()
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            raise NotADirectoryError(f"{folder} is not a real folder (a symlink?); remove it") from None
    return folder


def archive(root: Path, item: Ready, sha256: str) -> Path:
    """Move a registered file out of the inbox (its bytes are already in the raw store):
    to ``ingested/``, or ``quarantined/`` when it was taken unfinished after the grace period."""
    target = _own_folder(root, QUARANTINED if item.problem else INGESTED) / f"{sha256[:12]}-{item.path.name}"
    shutil.move(item.path, target)
    return target

"""The state home's content-addressed raw-file store: every ingested file is copied (hashed
while it is copied) to ``<raw>/<sha256>/<name>``, a local folder or an object-store URI."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import psutil

from dsel_assets.store import artifacts


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def store_raw_file(path: Path, raw: str | Path, objects: artifacts.ObjectStore | None = None) -> tuple[str, str, int]:
    """Copy ``path`` into the content-addressed raw store ``raw`` (a local folder, or an
    object-store URI on a cluster, reached through ``objects``) as ``<raw>/<sha256>/<name>``.
    Returns where it is stored, the sha256 of the bytes actually stored and their size. The
    bytes are hashed while they are copied, so the hash is that of the stored copy even if the
    source changes meanwhile."""
    if not artifacts.is_remote(str(raw)):
        stored, sha, size = _store_local_copy(path, Path(str(raw).removeprefix("file://")))
        return str(stored), sha, size
    if objects is None:
        raise ValueError(f"raw: {raw} is an object-store URI; the object store that reaches it is missing")
    with tempfile.TemporaryDirectory(prefix="dsel-raw-") as staging:
        local, sha, size = _store_local_copy(path, Path(staging))
        uri = artifacts.join(raw, sha, path.name)
        if not objects.exists(uri):  # one object per put: an existing one is whole
            objects.put_file(local, uri)
    return uri, sha, size


def _store_local_copy(path: Path, raw_dir: Path) -> tuple[Path, str, int]:
    """Stream ``path`` to a temporary file in ``raw_dir`` while hashing, fsync, then rename to
    ``raw_dir/<sha256>/<name>``. A file already stored under that hash is trusted only when it
    re-hashes to it (a partial copy left by a killed process is replaced)."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    _remove_orphan_copies(raw_dir)
    with tempfile.NamedTemporaryFile(dir=raw_dir, prefix=f".incoming-{os.getpid()}-", delete=False) as tmp:
        try:
            with path.open("rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    digest.update(block)
                    tmp.write(block)
                    size += len(block)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    sha = digest.hexdigest()
    stored = raw_dir / sha / path.name
    if stored.is_file() and not stored.is_symlink() and file_sha256(stored) == sha:
        Path(tmp.name).unlink()
    else:
        stored.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, stored)
        _fsync_dir(stored.parent)
    return stored, sha, size


def _remove_orphan_copies(raw_dir: Path) -> None:
    """Delete temporary copies left by processes that died mid-copy (their pid is gone)."""
    for leftover in raw_dir.glob(".incoming-*"):
        pid = leftover.name.split("-")[1]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            leftover.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""A lock across processes: on the cluster's PostgreSQL when there is one, else a file."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dsel_assets.store import postgres_backend


@contextmanager
def exclusive(key: str, lock_dir: Path, database_url: str | None = None) -> Iterator[None]:
    """Hold the lock named ``key`` across processes for the block: a PostgreSQL advisory lock
    when the state database is PostgreSQL at ``database_url`` (every pod of a cluster shares it),
    else a file lock under ``lock_dir`` (the processes of one host)."""
    if database_url:
        conn = postgres_backend.connect(database_url)
        try:
            postgres_backend.run(conn, "SELECT pg_advisory_lock(hashtextextended(?, 0))", [key])
            yield
        finally:
            conn.close()  # ends the session, and with it the lock
        return
    from filelock import FileLock

    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"):
        yield

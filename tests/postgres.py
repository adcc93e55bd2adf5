"""A throwaway PostgreSQL server for tests: the machine's ``initdb`` / ``pg_ctl`` (Debian's
``postgresql`` package, found on PATH or under /usr/lib/postgresql), a fresh data folder,
a Unix socket in that folder and no TCP. PostgreSQL refuses to run as root, so under root
the server runs as the ``postgres`` (else ``nobody``) account."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(versions[-1]) if versions else None


def available() -> str | None:
    """Why no server can start here, or None when one can."""
    if _binary("initdb") is None or _binary("pg_ctl") is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg not installed (pip install -e '.[deploy]')"
    return None


def _account() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and no postgres/nobody account to run PostgreSQL as")


@contextlib.contextmanager
def server(database: str = "dsel") -> Iterator[str]:
    """Start a server in a fresh temporary folder (directly under the temp root, so the server
    account can reach it), yield a libpq connection string, stop it and remove the folder."""
    folder = Path(tempfile.mkdtemp(prefix="dsel-pg-"))
    account = _account()

    def as_account() -> None:
        if account is not None:
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

    if account is not None:
        os.chown(folder, account.pw_uid, account.pw_gid)
    data, log = folder / "data", folder / "server.log"
    env = {**os.environ, "LC_ALL": "C"}

    def run(*args: str) -> None:
        subprocess.run(args, check=True, capture_output=True, preexec_fn=as_account, env=env, timeout=120)

    started = False
    try:
        run(_binary("initdb"), "-D", str(data), "-U", "dsel", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-k {folder} -c listen_addresses='' -c fsync=off -c full_page_writes=off"
        run(_binary("pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        started = True
        import psycopg

        with psycopg.connect(host=str(folder), dbname="postgres", user="dsel", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        yield f"host={folder} dbname={database} user=dsel"
    finally:
        if started:
            run(_binary("pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)

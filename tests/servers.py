"""Throwaway local servers for tests: a free port, waiting until one answers, stopping it, and
an MLflow tracking server (PostgreSQL store, S3 artifacts) as a cluster runs one."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Mapping


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, process: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``url`` until it answers; fail when ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start on {url}") from None
            time.sleep(0.3)


@contextlib.contextmanager
def running(command: list[str], env: Mapping[str, str] | None = None, log=subprocess.DEVNULL) -> Iterator:
    """``command`` as a background process, terminated (then killed) when the block ends."""
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mlflow_available() -> str | None:
    return None if shutil.which("mlflow") else "the mlflow command is not installed"


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: str, environ: Mapping[str, str], log) -> Iterator[str]:
    """An MLflow tracking server on a free port: runs in ``backend_uri`` (a database), artifacts
    proxied to ``artifacts`` (e.g. ``s3://bucket/mlflow``, reached with ``environ``'s
    credentials). Yields its URL."""
    port = free_port()
    command = [
        shutil.which("mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
    ]
    env = {**os.environ, **environ, "MLFLOW_S3_ENDPOINT_URL": environ["AWS_ENDPOINT_URL"]}
    url = f"http://127.0.0.1:{port}"
    with running(command, env, log) as process:
        wait_until_serving(f"{url}/health", process, "mlflow server", timeout=180)
        yield url

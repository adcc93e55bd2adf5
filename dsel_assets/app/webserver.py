"""Start the Dagster webserver on a state home and query it, as the UI test and the screenshot
script do (``dsel ui`` runs ``dagster dev`` instead, with the daemon for sensors)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from resources.home import DselHome

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    """A headless-capable Chromium on PATH, or None."""
    return next((b for b in BROWSERS if shutil.which(b)), None)


def screenshot(browser: str, url: str, out: Path, size: str = "1600,1000", wait_ms: int = 20000) -> Path:
    """One headless page load into a PNG; ``wait_ms`` of virtual time lets pages lay themselves out."""
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={size}",
            f"--virtual-time-budget={wait_ms}",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(home: DselHome, port: int | None = None, timeout_s: float = 300, env: dict | None = None) -> Iterator[str]:
    """``dagster-webserver -m dsel_assets.definitions`` with ``DAGSTER_HOME`` in the state home;
    yields its URL once the code location answers, stops it afterwards."""
    home.use_as_dagster_home()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("dagster-webserver")),
        *("-m", "dsel_assets.definitions", "-h", "127.0.0.1", "-p", str(port)),
    ]
    environment = {**os.environ, "DAGSTER_HOME": str(home.dagster), "DSEL_HOME": str(home.root), **(env or {})}
    log = (home.root / "webserver.log").open("wb")
    proc = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"webserver exited with {proc.returncode}; see {home.root / 'webserver.log'}")
            try:
                if graphql(url, "{ assetNodes { id } }")["assetNodes"]:
                    break
            except (urllib.error.URLError, ConnectionError, KeyError, TypeError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"webserver not ready in {timeout_s:.0f}s; see {home.root / 'webserver.log'}")
            time.sleep(2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    """POST a GraphQL query to the webserver; the ``data`` of the answer."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]

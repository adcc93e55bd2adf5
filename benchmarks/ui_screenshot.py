"""Screenshot of the Dagster UI's asset graph, taken by headless Chromium, to confirm the page
renders (the UI test checks the GraphQL answers; only a browser shows the page itself).

    python benchmarks/ui_screenshot.py [--home DIR] [--out PNG] [--page /asset-groups]

Skips (exit 0) when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsel_assets.webserver import graphql, serve  # noqa: E402
from resources.home import DselHome  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def screenshot(browser: str, url: str, out: Path, size: str = "1600,1000", wait_ms: int = 20000) -> None:
    """One headless page load; ``wait_ms`` of virtual time lets the graph lay itself out."""
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="state home (default: $DSEL_HOME or ./.dsel)")
    parser.add_argument("--out", help="PNG path (default: HOME/reports/ui_asset_graph.png)")
    parser.add_argument("--page", default="/asset-groups", help="UI path to load (default: the global asset graph)")
    args = parser.parse_args()
    browser = next((b for b in BROWSERS if shutil.which(b)), None)
    if browser is None:
        print("[ui_screenshot] skipped: no chromium found (apt-get install chromium)")
        return 0
    home = DselHome(Path(args.home).resolve()) if args.home else DselHome.from_env()
    out = Path(args.out) if args.out else home.reports / "ui_asset_graph.png"
    started = time.perf_counter()
    with serve(home) as url:
        ready = time.perf_counter() - started
        graphql(url, "mutation { setNuxSeen }")  # the first-visit community dialog would cover the page
        screenshot(browser, f"{url}{args.page}", out)
    print(f"[ui_screenshot] webserver ready in {ready:.0f}s; {url}{args.page} -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

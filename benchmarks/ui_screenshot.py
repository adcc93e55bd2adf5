"""Screenshot of the Dagster UI's asset graph, taken by headless Chromium, to confirm the page
renders (the UI test checks the GraphQL answers; only a browser shows the page itself).

    python benchmarks/ui_screenshot.py [--home DIR] [--out PNG] [--page /asset-groups]

Skips (exit 0) when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dsel_assets.app.webserver import find_browser, graphql, screenshot, serve  # noqa: E402
from resources.home import DselHome  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="state home (default: $DSEL_HOME or ./.dsel)")
    parser.add_argument("--out", help="PNG path (default: HOME/reports/ui_asset_graph.png)")
    parser.add_argument("--page", default="/asset-groups", help="UI path to load (default: the global asset graph)")
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print("[ui_screenshot] skipped: no chromium found (apt-get install chromium)")
        return 0
    home = DselHome(Path(args.home).resolve()) if args.home else DselHome.from_env()
    out = Path(args.out) if args.out else home.root / "reports" / "ui_asset_graph.png"
    started = time.perf_counter()
    with serve(home) as url:
        ready = time.perf_counter() - started
        graphql(url, "mutation { setNuxSeen }")  # the first-visit community dialog would cover the page
        screenshot(browser, f"{url}{args.page}", out)
    print(f"[ui_screenshot] webserver ready in {ready:.0f}s; {url}{args.page} -> {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

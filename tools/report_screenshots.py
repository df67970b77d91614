#!/usr/bin/env python
"""Open report pages in headless Chromium: their sizes and render times, and screenshots for the docs.

    python tools/report_screenshots.py out/gate [--shot bimodal_cnn_v1=docs/report-bimodal-cnn.png ...]

For every `*.html` in the directory: bytes, keys, mapping lines, and the time from navigation start to
the page's script having drawn every line (`data-ready-ms`, measured by the browser itself), with the
network off. `--shot PAGE=PNG` saves a 1280x900 screenshot of PAGE (its file name without `.html`).
Chromium: `ATHELAS_CHROMIUM` or the first of chromium, chromium-browser, google-chrome on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", type=Path)
    ap.add_argument("--shot", action="append", default=[], metavar="PAGE=PNG")
    args = ap.parse_args(argv)
    chromium = os.environ.get("ATHELAS_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if chromium is None:
        print("no Chromium found (tools/ci_install_browser.sh installs it)", file=sys.stderr)
        return 2
    shots = dict(s.split("=", 1) for s in args.shot)
    from playwright.sync_api import sync_playwright

    print(f"{'page':40} {'bytes':>9} {'keys':>5} {'lines':>5} {'ready ms':>8}")
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        ctx = pw.chromium.launch_persistent_context(profile, headless=True, executable_path=chromium, args=FLAGS,
                                                    offline=True, viewport={"width": 1280, "height": 900})
        for path in sorted(args.pages.glob("*.html")):
            page = ctx.new_page()
            page.goto(path.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']", state="attached")
            ready = page.get_attribute("body", "data-ready-ms")
            keys = page.locator("li.key").count()
            lines = page.locator("#links path").count()
            print(f"{path.name:40} {path.stat().st_size:>9,} {keys:>5} {lines:>5} {ready:>8}")
            if path.stem in shots:
                page.screenshot(path=shots[path.stem])
            page.close()
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

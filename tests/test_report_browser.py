"""The HTML report in a real headless Chromium, as a person would open it: offline, no console errors,
every fixture's page draws one line per key mapping, collapsing a subtree merges its lines, a click shows
a key's details, a sabotaged migration shows its diverging module, and a screenshot is taken.

Chromium comes from the OS packages (tools/ci_install_browser.sh installs it in CI; set ATHELAS_CHROMIUM
to use another binary); Playwright drives it. Without either the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import manifest_entries
from test_report import OV, SRC, sabotage, sabotaged_page  # noqa: F401 - `sabotage` is a fixture

from athelas_migrate import api
from athelas_migrate.equivalence import run_verify
from athelas_migrate.report import page_for, write_page

FIX = Path(__file__).resolve().parents[1] / "fixtures"
CHROMIUM = os.environ.get("ATHELAS_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (install it with "
                                "tools/ci_install_browser.sh, or set ATHELAS_CHROMIUM to its binary)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing "
                               "(pip install -e '.[test]')")
ENTRIES = manifest_entries(fusion=True)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the module: a fresh profile, the network off (offline emulation)."""
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("profile")), headless=True,
                                                        executable_path=CHROMIUM, args=FLAGS, offline=True,
                                                        viewport={"width": 1280, "height": 900})
        yield context
        context.close()


class Opened:
    """A page opened in the browser with everything it logged and every request it made."""

    def __init__(self, context, path: Path):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type in ("error", "warning") else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", state="attached")

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def lines(self) -> tuple[int, int]:
        """(drawn paths, mappings they carry)."""
        counts = self.page.eval_on_selector_all("#links path", "ps => ps.map(p => Number(p.dataset.count))")
        return len(counts), sum(counts)


@pytest.fixture(scope="module")
def fixture_pages(tmp_path_factory):
    """Every fixture migrated, and its page (module trees, no equivalence run: that is the gate's job)."""
    out = tmp_path_factory.mktemp("pages")
    pages = {}
    for e in ENTRIES:
        dst = out / (Path(e["file"]).stem + ".v2.ckpt")
        result = api.migrate(FIX / e["file"], dst, overrides=e["overrides"])
        page = page_for(str(FIX / e["file"]), str(dst), e["overrides"], None, result=result)
        path = out / (Path(e["file"]).stem + ".html")
        write_page(page, path)
        pages[e["file"]] = (path, len(result.raw.state_dict), len(result.state), len(page.edges))
    return pages


@pytest.fixture(scope="module")
def verified_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("verified")
    dst = out / "bimodal.v2.ckpt"
    result = api.migrate(SRC, dst, overrides=OV)
    report = run_verify(SRC, dst, overrides=OV, modules=True)
    path = out / "bimodal.html"
    write_page(page_for(str(SRC), str(dst), OV, report, result=result), path)
    return path


@pytest.mark.parametrize("name", [e["file"] for e in ENTRIES])
def test_every_fixture_page_draws_every_key_and_line_offline(browser, fixture_pages, name):
    path, n_old, n_new, n_edges = fixture_pages[name]
    view = Opened(browser, path)
    try:
        assert view.errors == []
        assert view.requests == [view.url]  # the page itself, nothing else
        assert view.count("#old-tree li.key") == n_old and view.count("#new-tree li.key") == n_new
        assert view.lines() == (n_edges, n_edges) and n_edges >= n_new  # one line per mapping, all expanded
    finally:
        view.page.close()


def test_collapsing_a_subtree_merges_its_lines_and_a_click_shows_a_key(browser, verified_page, tmp_path):
    view = Opened(browser, verified_page)
    page = view.page
    try:
        assert view.errors == [] and view.requests == [view.url]
        assert page.inner_text("#verdict").lower() == "passed"
        assert view.count("#plot-outputs svg") == view.count("#plot-modules svg") == 1
        assert view.count("#plot-domain svg") == view.count("#plot-training svg") == 1
        drawn, carried = view.lines()
        assert drawn == carried == 19
        leaf = page.locator('#old-tree li.key[data-key="text_subnetwork.convs.0.0.weight"]')
        assert leaf.is_visible()
        for tree, module in (("old", "text_subnetwork"), ("new", "text_encoder")):  # the text branch, both sides
            page.click(f'#{tree}-tree details[data-path="{module}"] > summary')
        assert not leaf.is_visible()
        # the toggle event redraws asynchronously: wait for it (a DOM condition, no clock)
        page.wait_for_function("n => document.querySelectorAll('#links path').length < n", arg=drawn)
        drawn_after, carried_after = view.lines()
        assert carried_after == 19 and drawn_after == 19 - 11 + 2  # 11 text-branch keys, in 2 rule groups
        merged = page.eval_on_selector_all("#links path", "ps => ps.map(p => Number(p.dataset.count))")
        assert sorted(merged)[-2:] == [2, 9]
        page.click("#expand-all")
        page.wait_for_function("n => document.querySelectorAll('#links path').length == n", arg=drawn)
        assert leaf.is_visible() and view.lines() == (drawn, carried)

        leaf.click()
        info = page.inner_text("#info")
        assert "text_subnetwork.convs.0.0.weight" in info and "shape 8x16x3" in info
        assert "BimodalCNN/v1-v2.toml#text-embeddings-and-convs" in info and "-> text_encoder.convs.0.0.weight" in info
        assert view.count("#links path.hot") == 1

        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        assert view.errors == []
    finally:
        page.close()


def test_sabotaged_migration_shows_the_diverging_module(browser, sabotage, tmp_path):  # noqa: F811
    path = tmp_path / "sabotaged.html"
    write_page(sabotaged_page(tmp_path, sabotage), path)
    view = Opened(browser, path)
    page = view.page
    try:
        assert view.errors == []
        assert page.inner_text("#verdict").lower() == "failed"
        assert "text_encoder.convs.0.3" in page.inner_text("#diverging")
        row = page.locator('#module-table tr.diverging')
        assert row.count() == 1 and row.is_visible() and row.get_attribute("data-module") == "text_encoder.convs.0.3"
        summary = page.locator('#new-tree details.diverging[data-path="text_encoder.convs.0.3"] > summary')
        assert summary.is_visible()
        assert summary.evaluate("s => getComputedStyle(s).color") == "rgb(213, 94, 0)"  # --fail
        assert "first diverging" in summary.evaluate("s => getComputedStyle(s, '::after').content")
        page.screenshot(path=str(tmp_path / "sabotaged.png"))
        assert (tmp_path / "sabotaged.png").stat().st_size > 10_000
    finally:
        page.close()

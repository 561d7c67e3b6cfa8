"""The site in a real headless Chromium, opened from file://: no console errors or failed requests
on any page, every internal link resolves, search works, and the attention viewer responds."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (CI installs it)"),
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from render_fixtures import make_report

    from reportgen.render import render_site

    out = tmp_path_factory.mktemp("browser-site")
    render_site(make_report(3), out, pdf=False)
    return out


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def screenshot_dir() -> Path:
    d = Path(os.environ.get("REPORTGEN_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="reportgen-shots-"))
    d.mkdir(parents=True, exist_ok=True)
    return d


class Watch:
    """Console errors, page errors and failed or non-file requests of one browser page."""

    def __init__(self, page):
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: self.problems.append(f"failed request: {r.url}"))
        page.on("request", lambda r: r.url.startswith(("file:", "data:")) or self.problems.append(f"request: {r.url}"))


def test_crawl_all_pages(site, browser):
    page = browser.new_page()
    watch = Watch(page)
    start = (site / "index.html").as_uri()
    todo, seen = [start], set()
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        page.goto(url)
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)")
        for href in hrefs:
            target, _ = urldefrag(href)
            assert target.startswith("file:"), (url, href)
            path = Path(unquote(urlparse(target).path))
            assert path.is_file(), (url, href)
            if path.suffix == ".html" and target not in seen:
                todo.append(target)
        broken = page.eval_on_selector_all("img", "els => els.filter(e => !e.complete || !e.naturalWidth).length")
        assert broken == 0, url
    assert watch.problems == []
    html_pages = {p.as_uri() for p in site.rglob("*.html")}
    assert html_pages <= seen
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(start)
    page.screenshot(path=str(screenshot_dir() / "index.png"), full_page=False)
    page.close()


def test_search_finds_examples(site, browser):
    page = browser.new_page()
    watch = Watch(page)
    page.goto((site / "models" / "tiny-1l.html").as_uri())
    page.fill("#search", "59+73")
    results = page.locator("#search-results a")
    assert results.count() >= 2  # the example in both models
    first = results.first.get_attribute("href")
    assert first.startswith("../examples/") and first.endswith("59plus73.html")
    page.fill("#search", "carry_head")
    assert page.locator("#search-results a").count() >= 1
    assert watch.problems == []
    page.close()


def test_attention_viewer_responds(site, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    watch = Watch(page)
    page.goto((site / "examples" / "tiny-2l" / "59plus73.html").as_uri())
    viewer = page.locator(".attn-viewer")
    assert viewer.is_visible()
    assert page.locator("figure.figure img").count() >= 2  # the static figures stay
    grid = page.locator(".v-grid")
    before = grid.inner_html()
    page.select_option(".v-head", "2")
    after_head = grid.inner_html()
    assert after_head != before and grid.get_attribute("data-head") == "2"
    page.select_option(".v-layer", "1")
    assert grid.inner_html() != after_head and grid.get_attribute("data-layer") == "1"
    cell = page.locator(".v-grid td[data-q='6'][data-k='2']")
    cell.hover()
    tip = page.locator(".v-tooltip")
    assert tip.is_visible()
    text = tip.inner_text()
    assert "L1H2" in text and "query 6" in text and "key 2" in text and "weight 0." in text
    viewer.screenshot(path=str(screenshot_dir() / "viewer.png"))
    with page.expect_navigation():
        page.select_option(".v-model", index=0)
    assert page.url.split("#")[0].endswith("examples/tiny-1l/59plus73.html")
    assert page.locator(".v-grid").get_attribute("data-head") == "2"  # layer/head carried over where they exist
    assert watch.problems == []
    page.close()


def test_dark_mode_screenshot(site, browser):
    context = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 900})
    page = context.new_page()
    watch = Watch(page)
    page.goto((site / "models" / "tiny-2l.html").as_uri() + "#ablations")
    bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(15, 20, 25)"
    page.screenshot(path=str(screenshot_dir() / "model-dark.png"))
    assert watch.problems == []
    context.close()

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

    from reportgen.render.report import render_site

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


EXAMPLE = Path("examples") / "tiny-2l" / "59plus73.html"


def attention(site: Path) -> list:
    """The example's attention weights [layer][head][query][key] as its page's data file holds them."""
    import json

    data = (site / EXAMPLE.with_suffix(".data.js")).read_text(encoding="utf-8")
    return json.loads(data.split(" = ", 2)[-1].rstrip().rstrip(";"))["weights"]


def figure_colour(w: float) -> tuple[int, ...]:
    """A weight's colour in the static figures' colour map."""
    import matplotlib

    from reportgen.plots.report import ATTENTION_CMAP

    return tuple(round(255 * c) for c in matplotlib.colormaps[ATTENTION_CMAP](w)[:3])


def rgb(css: str) -> tuple[int, ...]:
    return tuple(int(float(v)) for v in css[css.index("(") + 1:css.index(")")].split(",")[:3])


def close(a, b, tol: int = 3) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def contrast(a, b) -> float:
    """WCAG contrast ratio of two sRGB colours."""
    def lum(c):
        v = [x / 255 for x in c]
        v = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in v]
        return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]
    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def open_viewer(browser, site: Path, scheme: str = "light", fragment: str = ""):
    context = browser.new_context(color_scheme=scheme, viewport={"width": 1280, "height": 1400})
    page = context.new_page()
    watch = Watch(page)
    page.goto((site / EXAMPLE).as_uri() + fragment)
    assert page.locator(".attn-viewer").is_visible()
    return context, page, watch


def test_viewer_shows_every_head_and_enlarges_one(site, browser):
    w = attention(site)
    context, page, watch = open_viewer(browser, site)
    assert page.locator("figure.figure img").count() >= 2  # the static figures stay behind it
    thumbs = page.locator(".v-thumb")
    assert thumbs.count() == 8  # 2 layers x 4 heads
    pixel = page.evaluate("""([l, h, q, k]) => Array.from(document.querySelector(
        `.v-thumb[data-layer="${l}"][data-head="${h}"] canvas`).getContext("2d").getImageData(k, q, 1, 1).data.slice(0, 3))""",
                          [1, 2, 6, 2])
    assert close(pixel, figure_colour(w[1][2][6][2]))
    grid = page.locator(".v-grid")
    assert (grid.get_attribute("data-layer"), grid.get_attribute("data-head")) == ("0", "0")
    page.check(".v-layers input[value='1']")
    assert thumbs.count() == 4
    assert {thumbs.nth(i).get_attribute("data-layer") for i in range(4)} == {"1"}
    assert grid.get_attribute("data-layer") == "1"  # the enlarged head follows to the layer shown
    page.check(".v-layers input[value='all']")
    assert thumbs.count() == 8
    page.click(".v-thumb[data-layer='1'][data-head='2']")
    assert (grid.get_attribute("data-layer"), grid.get_attribute("data-head")) == ("1", "2")
    assert "Layer 1, head 2" in page.inner_text(".v-title")
    assert page.get_attribute(".v-thumb[data-layer='1'][data-head='2']", "aria-pressed") == "true"
    cell = page.locator(".v-grid td[data-q='6'][data-k='2']")
    assert close(rgb(cell.evaluate("e => getComputedStyle(e).backgroundColor")), figure_colour(w[1][2][6][2]))
    cell.hover()
    tip = page.locator(".v-tooltip")
    assert tip.is_visible()
    assert all(s in tip.inner_text() for s in ("L1H2", "query 6", "key 2", f"weight {w[1][2][6][2]:.3f}"))
    assert page.url.endswith("#L1H2")
    page.locator(".attn-viewer").screenshot(path=str(screenshot_dir() / "viewer.png"))
    with page.expect_navigation():
        page.select_option(".v-model", index=0)
    assert page.url.split("#")[0].endswith("examples/tiny-1l/59plus73.html")
    assert page.locator(".v-thumb").count() == 4  # one layer
    assert page.locator(".v-grid").get_attribute("data-head") == "2"  # the head carried over where it exists
    assert watch.problems == []
    context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_hovering_a_token_shows_what_it_attends_to_and_what_attends_to_it(site, browser, scheme):
    w = attention(site)[1][2]
    context, page, watch = open_viewer(browser, site, scheme, "#L1H2")
    body = rgb(page.evaluate("getComputedStyle(document.body).backgroundColor"))
    assert (body == (15, 20, 25)) == (scheme == "dark")
    t, n = 6, len(w)
    page.hover(f".v-strip[data-dir='to'] .v-chip[data-t='{t}']")
    assert page.get_attribute(".attn-viewer", "data-token") == str(t)
    chips = {d: page.eval_on_selector_all(f".v-strip[data-dir='{d}'] .v-chip", """els => els.map(e => [
        getComputedStyle(e).backgroundColor, getComputedStyle(e).color, e.classList.contains("masked")])""")
        for d in ("to", "from")}
    for k, (bg, _, masked) in enumerate(chips["to"]):  # what token t attends to: row t
        assert masked == (k > t) and (k > t or close(rgb(bg), figure_colour(w[t][k]))), k
    for q, (bg, _, masked) in enumerate(chips["from"]):  # what attends to token t: column t
        assert masked == (q < t) and (q < t or close(rgb(bg), figure_colour(w[q][t]))), q
    for bg, ink, masked in chips["to"] + chips["from"]:
        assert masked or contrast(rgb(bg), rgb(ink)) >= 4.5
    opacity = "(q, k) => getComputedStyle(document.querySelector(`.v-grid td[data-q='${q}'][data-k='${k}']`)).opacity"
    assert page.evaluate(f"({opacity})({t}, 1)") == "1" and page.evaluate(f"({opacity})({n - 1}, {t})") == "1"
    assert float(page.evaluate(f"({opacity})({n - 1}, 1)")) < 0.5  # neither row nor column of t: faded
    # the strongest weight stands out from the surface behind the cells in either theme
    surface = rgb(page.evaluate("getComputedStyle(document.querySelector('.v-paper')).backgroundColor"))
    strongest = max(w[q][k] for q in range(n) for k in range(q + 1))
    assert contrast(surface, figure_colour(strongest)) >= 3
    page.click(f".v-strip[data-dir='to'] .v-chip[data-t='{t}']")  # kept while the pointer moves on
    page.mouse.move(5, 5)
    assert page.get_attribute(".attn-viewer", "data-token") == str(t)
    page.locator(".attn-viewer").screenshot(path=str(screenshot_dir() / f"viewer-token-{scheme}.png"))
    page.keyboard.press("Escape")
    assert page.get_attribute(".attn-viewer", "data-token") == ""
    assert watch.problems == []
    context.close()


def test_viewer_is_keyboard_operable(site, browser):
    context, page, watch = open_viewer(browser, site)
    def focused(selector: str) -> bool:
        return page.evaluate("s => document.activeElement.matches(s)", selector)

    page.focus(".v-example")
    page.keyboard.press("Tab")
    assert focused(".v-layers input[value='all']")
    page.keyboard.press("ArrowRight")
    assert page.is_checked(".v-layers input[value='0']") and page.locator(".v-thumb").count() == 4
    page.keyboard.press("ArrowLeft")
    assert page.locator(".v-thumb").count() == 8
    page.keyboard.press("Tab")
    assert focused(".v-thumb[data-layer='0'][data-head='0']")
    ring = page.evaluate("(s => [s.outlineStyle, s.outlineWidth, s.outlineColor])(getComputedStyle(document.activeElement))")
    assert ring[0] == "solid" and float(ring[1].removesuffix("px")) >= 3  # the keyboard focus is plainly visible
    assert contrast(rgb(ring[2]), (255, 255, 255)) >= 3
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowDown")
    assert focused(".v-thumb[data-layer='1'][data-head='1']")
    page.keyboard.press("Enter")
    grid = page.locator(".v-grid")
    assert (grid.get_attribute("data-layer"), grid.get_attribute("data-head")) == ("1", "1")
    page.keyboard.press("Tab")
    assert focused(".v-grid table")
    status = page.locator(".v-status")
    first = status.inner_text()
    assert "L1H1" in first and "query" in first
    page.keyboard.press("ArrowUp")
    assert status.inner_text() != first and "query" in status.inner_text()
    page.keyboard.press("Tab")
    assert focused(".v-strip[data-dir='to'] .v-chip[data-t='0']")
    assert page.get_attribute(".attn-viewer", "data-token") == "0"
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    assert page.get_attribute(".attn-viewer", "data-token") == "2"
    page.keyboard.press("Enter")
    assert page.get_attribute(".v-strip[data-dir='to'] .v-chip[data-t='2']", "aria-pressed") == "true"
    page.keyboard.press("Escape")
    assert page.get_attribute(".v-strip[data-dir='to'] .v-chip[data-t='2']", "aria-pressed") == "false"
    assert watch.problems == []
    context.close()


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


def test_figure_labels_are_as_large_as_body_text_at_the_default_width(site, browser):
    """Figures are drawn with 9 pt labels (the PDF's body text); the site shows them 1.25x larger, so at
    the default width their labels match its 15 px body text."""
    from reportgen.render.figures import svg_size

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    watch = Watch(page)
    model = site / "models" / "tiny-2l.html"
    page.goto(model.as_uri())
    body = float(page.evaluate("getComputedStyle(document.body).fontSize").removesuffix("px"))
    shown = page.eval_on_selector_all("figure.figure img", "els => els.map(e => [e.getAttribute('src'), e.clientWidth])")
    assert len(shown) >= 5
    for src, width in shown:
        pt = svg_size(model.parent / src)[0]
        label_px = 9 * width / pt  # a 9 pt label of a figure drawn `pt` wide, shown `width` px wide
        assert label_px >= body - 0.5, (src, label_px, body)
    assert watch.problems == []
    page.close()

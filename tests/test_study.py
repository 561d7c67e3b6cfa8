"""The study report's numbers and pages, from a synthetic study whose answers are known by
construction (tests/study_fixtures.py) and from the realistic per-model results of the render
tests: roles are compared across seeds by kind, layer and column, the brief answers in sentences
which formats learn fastest and which roles every seed has, and the site's links all resolve."""

from __future__ import annotations

import dataclasses
import html
import json
import re
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest
from render_fixtures import make_report
from study_fixtures import synthetic_study

from reportgen.findings import CircuitComponent
from reportgen.render.study import render_study_site
from reportgen.results.study import (
    FINAL, format_summaries, point_summary, role_stability, roles, steps_to_target, summarise,
)


def test_summarise_reads_one_models_results():
    m = make_report(2).models[0]
    s = summarise(m, FINAL, 300, 64)
    assert (s.step, s.examples_seen, s.n_layers) == (300, 19200, m.provenance.model_config["n_layers"])
    assert s.exact_match == m.accuracy.exact_match and s.by_stratum == m.accuracy.by_stratum
    lens = m.findings.logit_lens
    index = {lab: i for i, lab in enumerate(lens.layer_labels)}
    hist = lens.convergence_hist
    assert s.convergence_layer == pytest.approx(sum(index[k] * n for k, n in hist.items()) / sum(hist.values()))
    by_site: dict = {}
    for p in m.findings.probing.probes:
        by_site.setdefault((p.label, p.hook), []).append(p.selectivity.mean)
    for label, value in s.selectivity.items():
        assert value == pytest.approx(max(sum(v) / len(v) for (lab, _), v in by_site.items() if lab == label))
    hits = {(h.kind, h.layer, h.column): h for h in s.roles}
    carry = hits[("carry_head", 0, 1)]
    assert (carry.confirmed, carry.units, carry.effect) == (True, 1, pytest.approx(0.41))
    assert hits[("position_head", 0, None)].confirmed
    # the fixture's delimiter-head test confirms on two of three twins: broken, so nothing counts
    assert not hits[("delimiter_head", 0, None)].confirmed


def test_roles_are_kind_layer_and_column_never_the_head_index():
    m = make_report(2).models[1]
    comps = [CircuitComponent("carry_head", 1, h, 2, 0.6, 0.1, 0.3 + h / 10, 0.0, confirmed=h != 0) for h in range(3)]
    m = dataclasses.replace(m, findings=dataclasses.replace(
        m.findings, circuits=dataclasses.replace(m.findings.circuits, components=comps)))
    (hit,) = roles(m)
    assert (hit.kind, hit.layer, hit.column, hit.confirmed, hit.units) == ("carry_head", 1, 2, True, 2)
    assert hit.effect == pytest.approx(0.5)  # the strongest confirmed head, not the unconfirmed one


def test_across_seeds_and_formats():
    study = synthetic_study(3)
    by_format = {p.format: p for p in study.points}
    scratch = point_summary(study, by_format["scratchpad"])
    assert (scratch.reached, scratch.trained, scratch.analysed) == (3, 3, 3)
    assert (scratch.steps_to_target.mean, scratch.steps_to_target.lo, scratch.steps_to_target.hi) == (400, 400, 400)
    assert point_summary(study, by_format["plain"]).reached == 0
    stab = {r.key: r for r in role_stability(study, by_format["scratchpad"])}
    assert stab[("position_head", 0, None)].everywhere
    carry = stab[("carry_head", 1, 1)]
    assert (carry.seeds, carry.analysed, carry.first_steps, carry.everywhere) == ([0, 1], [0, 1, 2], [400, 400], False)
    formats = format_summaries(study)
    assert [f.format for f in formats] == ["scratchpad", "reversed", "plain"]
    assert formats[0].examples_to_target.mean == 400 * 64 and formats[1].examples_to_target.mean == 800 * 64
    assert all(steps_to_target(r, 0.99) is None for r in study.runs if r.task["answer_order"] == "plain"
               and not r.task["with_steps"])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study-site")
    render_study_site(synthetic_study(3), out, {}, pdf=False, workers=1)
    return out


def _text(page: Path) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.read_text())).split())


def test_brief_answers_in_sentences(site):
    brief = _text(site / "index.html")
    assert ("Fastest to 99% validation exact match (fewest training examples seen; formats whose runs all reached it "
            "first): scratchpad (3 of 3 runs reached it, after 25,600 training examples on average); then reversed "
            "(3 of 3 runs reached it, after 51,200 training examples on average).") in brief
    assert "Never reached 99%: plain (0 of 3 runs;" in brief
    assert "Roles confirmed in every seed (kind, layer, column; head and neuron indices are not compared): position " \
           "head, layer 0 (format=plain, model.n_layers=1: 3/3; format=reversed, model.n_layers=1: 3/3; " \
           "format=scratchpad, model.n_layers=1: 3/3)." in brief
    assert "Confirmed in some seeds only: carry head, layer 1, column 1 (format=scratchpad, model.n_layers=1: 2/3)." in brief


def test_overview_is_one_sortable_row_per_point_with_every_seed_linked(site):
    page = (site / "index.html").read_text()
    table = page[page.index('<table class="sortable">'):page.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", table[table.index("<tbody>"):], re.S)
    assert len(rows) == 3
    scratch = next(r for r in rows if "scratchpad" in r)
    assert re.findall(r">(s\d)</a>", scratch) == ["s0", "s1", "s2"]
    cells = re.findall(r'<td data-sort="([^"]*)"', scratch)
    assert float(cells[8]) == 400.0  # steps to 99%: sorts by its mean, not its text
    assert (site / "tables/overview.csv").read_text().count("\n") == 4
    assert '<script src="static/study.js">' in page


def test_every_internal_link_resolves(site):
    pages = sorted(site.rglob("*.html"))
    assert {p.relative_to(site).as_posix() for p in pages} >= {
        "index.html", "formats.html", "stability.html", "dynamics.html", "provenance.html",
        "points/scratchpad_n_layers-1.html"}
    for page in pages:
        for target in re.findall(r'(?:href|src)="([^"]+)"', page.read_text()):
            path = unquote(urldefrag(target)[0])
            if path:
                assert (page.parent / path).resolve().is_file(), f"{page.relative_to(site)} links {target}"


def test_study_json_holds_what_the_pages_show(site):
    data = json.loads((site / "study.json").read_text())
    assert len(data["runs"]) == 9 and [p["format"] for p in data["points"]] == ["plain", "reversed", "scratchpad"]
    assert "nan" not in (site / "study.json").read_text().lower()


@pytest.mark.slow
def test_overview_sorts_and_filters_in_a_browser(site):
    """The hand-written table script, in headless Chromium from file://: a header click sorts by the
    cells' values (not their text), typing filters rows, and nothing errs or reaches the network."""
    from test_site_browser import ARGS, CHROMIUM, Watch

    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        watch = Watch(page)
        page.goto((site / "index.html").as_uri())
        rows = page.locator("table.sortable tbody tr")
        first_cells = lambda: [rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())]  # noqa: E731
        page.get_by_role("button", name="steps to 99%").click()
        assert first_cells()[:2] == ["format=scratchpad, model.n_layers=1", "format=reversed, model.n_layers=1"]
        assert first_cells()[-1] == "format=plain, model.n_layers=1"  # never reached: empty, sorted last
        page.get_by_role("button", name="steps to 99%").click()
        assert first_cells()[:2] == ["format=reversed, model.n_layers=1", "format=scratchpad, model.n_layers=1"]
        page.locator(".table-filter").fill("scratch")
        assert [r.is_visible() for r in rows.all()].count(True) == 1
        assert page.locator(".table-count").inner_text() == "1 of 3 rows"
        browser.close()
    assert not watch.problems

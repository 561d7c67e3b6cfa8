"""The static site rendered from a synthetic report: pages, escaping, offline links, downloads,
determinism, and rendering without torch."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from reportgen.catalog import ANALYSIS_NAMES
from reportgen.findings import Estimate
from reportgen.names import safe_name
from reportgen.render.tables import Cell, Table, fmt_est

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = "<script>alert('x')</script>"
N_EXAMPLES = 2

RENDER_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails
sys.path.insert(0, {tests!r})
from pathlib import Path
from render_fixtures import make_report
from reportgen.render.report import render_site
render_site(make_report({n}), Path({out!r}), pdf=False)
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
"""


def render_in_subprocess(out: Path, n: int = N_EXAMPLES) -> None:
    code = RENDER_WITHOUT_TORCH.format(tests=str(ROOT / "tests"), n=n, out=str(out))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site rendered once, in a process where importing torch is impossible."""
    out = tmp_path_factory.mktemp("site")
    render_in_subprocess(out)
    return out


def files(site: Path, *exts: str) -> list[Path]:
    return sorted(p for p in site.rglob("*") if p.is_file() and p.suffix in exts)


class Refs(HTMLParser):
    """Collects href/src attributes and element ids of one HTML page."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src") and value is not None:
                self.refs.append(value)
            if name == "id" and value:
                self.ids.add(value)


def parse(path: Path) -> Refs:
    parser = Refs()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


# ---------------------------------------------------------------- formatting units
def test_estimate_format():
    assert fmt_est(Estimate(0.931, 0.902, 0.958, 100)) == "0.93 [0.90, 0.96]"
    assert fmt_est(Estimate(0.93, math.nan, math.nan, 1)) == "0.93 [no CI]"
    assert fmt_est(Estimate(math.nan, math.nan, math.nan, 0)) == "n/a"


def test_table_downloads_unit():
    t = Table("tables/x", "Caption with 50% & under_score", ["name", "acc"],
              [[Cell("a&b", "x.html", strong=True), Estimate(0.5, 0.4, 0.6, 10)], ["c", None]])
    rows = list(csv.reader(io.StringIO(t.to_csv())))
    assert rows[0] == ["name", "acc", "acc_lo", "acc_hi", "acc_n"]
    assert rows[1] == ["a&b", "0.5", "0.4", "0.6", "10"]
    tex = t.to_latex()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "50\\% \\& under\\_score" in tex
    assert "\\textbf{a\\&b}" in tex


def test_print_widths_keep_numbers_whole_and_give_text_the_rest():
    from reportgen.render.tables import LINE_CHARS, PAD_CHARS

    note = "a long explanation " * 20
    t = Table("tables/x", "c", ["head", "recovery", "note"], [["L0H1", Estimate(0.5, 0.41, 0.62, 10), note]] * 3)
    widths = t.print_widths()
    assert math.isclose(sum(widths), 100, abs_tol=0.05)
    est_chars = widths[1] / 100 * LINE_CHARS
    assert est_chars >= len("0.50 [0.41, 0.62]") + PAD_CHARS - 0.01  # an interval is not split across lines
    assert widths[2] > widths[0] + widths[1]  # the text column takes what the line has left
    short = Table("tables/y", "c", ["a", "bb"], [["x", 1]]).print_widths()
    assert math.isclose(sum(short), 100, abs_tol=0.05) and Table("tables/z", "c", ["a"], []).print_widths() == [100.0]


def test_safe_name():
    assert safe_name("59plus73") == "59plus73"
    bad = safe_name(f"../{HOSTILE} key")
    assert re.fullmatch(r"[A-Za-z0-9_-]+", bad) and bad != safe_name(f"../{HOSTILE} kez")


# ---------------------------------------------------------------- the rendered site
def test_every_page_exists(site):
    for name in ("index.html", "compare.html", "provenance.html", "search-index.js", "results.json", "arrays.npz",
                 "static/report.css", "static/print.css", "static/viewer.js"):
        assert (site / name).is_file(), name
    assert {p.name for p in (site / "models").iterdir()} == {"tiny-1l.html", "tiny-2l.html"}
    assert len(list((site / "examples" / "tiny-1l").glob("*.html"))) == N_EXAMPLES
    assert len(list((site / "examples" / "tiny-2l").glob("*.html"))) == N_EXAMPLES + 1  # + the hostile key
    assert (site / "examples" / "tiny-1l" / "59plus73.html").is_file()
    assert (site / "examples" / "tiny-1l" / "59plus73.data.js").is_file()


def test_paths_are_sanitised(site):
    for p in site.rglob("*"):
        assert re.fullmatch(r"[A-Za-z0-9_.-]+", p.name), p
    assert not (site.parent / "script").exists()


def test_text_is_escaped(site):
    pages = files(site, ".html")
    for page in pages:
        text = page.read_text(encoding="utf-8")
        assert HOSTILE not in text, page
        assert "<script>alert" not in text, page
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in index


def test_no_external_urls(site):
    for path in files(site, ".html", ".js", ".css", ".csv", ".tex", ".json"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://", text), path
    for path in files(site, ".svg"):
        urls = set(re.findall(r"https?://[^\s\"'<>]+", path.read_text(encoding="utf-8")))
        assert urls <= {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink",
                        "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd", "http://purl.org/dc/elements/1.1/",
                        "http://creativecommons.org/ns#", "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
                        "http://purl.org/dc/dcmitype/StillImage"}, (path, urls)


def test_every_relative_link_resolves(site):
    ids = {p: parse(p).ids for p in files(site, ".html")}
    for page in files(site, ".html"):
        for ref in parse(page).refs:
            assert not ref.startswith("/"), (page, ref)
            if ref.startswith(("#", "data:")):
                target, frag = page, ref[1:] if ref.startswith("#") else ""
            else:
                path, _, frag = ref.partition("#")
                target = (page.parent / path).resolve()
                assert target.is_file(), (page, ref)
            if frag and target.suffix == ".html":
                assert frag in ids[target], (page, ref)


def test_pages_show_not_run_and_numbers(site):
    model = (site / "models" / "tiny-2l.html").read_text(encoding="utf-8")
    probing = model.split('id="probing"')[1].split("</section>")[0]
    assert "Not run" in probing
    for page in files(site, ".html"):
        text = page.read_text(encoding="utf-8")
        n_fig = text.count('<figure class="figure"')
        assert [int(n) for n in re.findall(r"Figure (\d+)\.</span>", text)] == list(range(1, n_fig + 1)), page
        n_tab = text.count("<table>")
        assert [int(n) for n in re.findall(r"Table (\d+)\.</span>", text)] == list(range(1, n_tab + 1)), page
        assert text.count(">SVG</a>") == text.count(">PDF</a>") == n_fig
        assert text.count(">CSV</a>") == text.count(">LaTeX</a>") == n_tab


def test_captions_are_short_and_definitions_come_once_per_section(site):
    """Each figure caption is a sentence or two; the full definitions are said once per section,
    folded away in a details toggle on the site."""
    for page in [site / "models" / "tiny-1l.html", site / "examples" / "tiny-2l" / "59plus73.html"]:
        html = page.read_text(encoding="utf-8")
        captions = re.findall(r'<figcaption><span class="label">Figure \d+\.</span> (.*?)\n\s*<span class="downloads">',
                              html, re.S)
        assert len(captions) >= 3
        for caption in captions:
            sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z])", caption.strip())
            assert len(sentences) <= 2 and len(caption.split()) <= 60, caption
        for section in html.split("<section ")[1:]:
            figures = section.count("<figure ")
            assert section.count('<details class="fig-details">') <= 1, section[:80]
            if figures > 1 and "patching" in section[:60]:
                assert section.count('<details class="fig-details">') == 1
    attention = (site / "examples" / "tiny-2l" / "59plus73.html").read_text(encoding="utf-8")
    assert attention.count('<details class="fig-details">') == 1  # under layer 0's attention figure only


def test_captions_say_what_numbers_mean(site):
    model = (site / "models" / "tiny-1l.html").read_text(encoding="utf-8")
    assert "recovery = (LD_patched − LD_corrupt)/(LD_clean − LD_corrupt)" in model
    assert "48 pairs used, 3 dropped" in model
    assert "mean ablation" in model and "zero ablation (activation set to zero" in model
    assert "operand identity alone" in model and "balanced accuracy" in model
    compare = (site / "compare.html").read_text(encoding="utf-8")
    assert "Not directly comparable across groups" in compare


def test_downloads_exist_and_parse(site):
    csvs, texs = files(site, ".csv"), files(site, ".tex")
    assert len(csvs) > 50 and len(texs) > 20
    for path in csvs:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"))))
        assert rows and all(len(r) == len(rows[0]) for r in rows), path
    for path in texs:
        tex = path.read_text(encoding="utf-8")
        spec = re.search(r"\\begin\{tabular\}\{([lr]+)\}", tex).group(1)
        body = tex.split("\\midrule\n")[1].split("\\bottomrule")[0]
        for line in body.strip().splitlines():
            assert line.endswith("\\\\") and len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1, (path, line)
        assert tex.count("{") == tex.count("}") + tex.count("\\{") - tex.count("\\}"), path
    for path in files(site, ".json"):
        json.loads(path.read_text(encoding="utf-8"))
    for page in files(site, ".html"):
        for ref in parse(page).refs:
            if ref.endswith((".svg", ".pdf")) and "figures/" in ref:
                assert (page.parent / ref).resolve().stat().st_size > 500


def test_search_index_and_viewer_data(site):
    index = (site / "search-index.js").read_text(encoding="utf-8")
    assert index.startswith("window.REPORTGEN_SEARCH = ")
    entries = json.loads(index.removeprefix("window.REPORTGEN_SEARCH = ").rstrip().rstrip(";"))
    kinds = {e["k"] for e in entries}
    assert {"model", "example", "component", "head", "section"} <= kinds
    for e in entries:
        assert (site / e["u"].partition("#")[0]).is_file(), e
    data = (site / "examples" / "tiny-2l" / "59plus73.data.js").read_text(encoding="utf-8")
    payload = json.loads(data.split(" = ", 2)[-1].rstrip().rstrip(";"))
    assert len(payload["weights"]) == 2 and len(payload["weights"][0]) == 4
    assert len(payload["tokens"]) == len(payload["weights"][0][0])


def test_render_is_deterministic(site, tmp_path):
    """Same report, byte-identical site, even after a save/load round trip reorders its dicts."""
    from render_fixtures import make_report

    from reportgen.render.report import render_site
    from reportgen.results.store import normalized

    render_site(normalized(make_report(N_EXAMPLES)), tmp_path, pdf=False)
    first = {p.relative_to(site): p.read_bytes() for p in site.rglob("*") if p.is_file()}
    second = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []


def test_analyses_not_run(tmp_path):
    """A model with no analyses and no per-example arrays still gets every page, saying 'not run'."""
    import numpy as np
    from render_fixtures import make_model

    from reportgen.render.report import render_site
    from reportgen.results.compare import compare_models
    from reportgen.results.schema import Report

    bare = make_model("bare", "bare model", 1, 1, seed=3, skip=ANALYSIS_NAMES)
    for ex in bare.findings.examples:
        ex.attention, ex.lens_prob = np.zeros((0,)), np.zeros((0, 0))
    bare.training.steps, bare.training.train_loss, bare.training.val_exact_match = [], [], []
    render_site(Report(1, "bare", "", [bare], compare_models([bare])), tmp_path, pdf=False)
    model = (tmp_path / "models" / "bare.html").read_text(encoding="utf-8")
    assert model.count("Not run") == len(ANALYSIS_NAMES)
    assert "No training history" in model
    example = (tmp_path / "examples" / "bare" / "59plus73.html").read_text(encoding="utf-8")
    assert "No attention was recorded" in example and "data.js" not in example
    compare = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert compare.count("Not run") == 4
    for page in files(tmp_path, ".html"):
        for ref in parse(page).refs:
            if not ref.startswith("#"):
                assert (page.parent / ref.partition("#")[0]).resolve().is_file(), (page, ref)


def test_comparison_of_logit_lens_convergence_shows_the_known_shares():
    """The comparison table's shares are each model's convergence histogram over its total, with
    no value where a model has no such layer; final-layer P(correct) is the last layer's estimate."""
    import dataclasses

    from render_fixtures import make_report

    from reportgen.render.pages import comparison
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    hists = [{"embed": 1, "L0": 7}, {"embed": 0, "L0": 2, "L1": 6}]
    for m, hist in zip(report.models, hists):
        m.findings.logit_lens = dataclasses.replace(m.findings.logit_lens, convergence_hist=hist)
    site = Site(report, pdf=False)
    comparison.page(site)
    (table,) = [t for t in site.tables if t.key == "tables/compare-logit-lens"]
    rows = {r[0]: [c.value if isinstance(c, Cell) else c for c in r[1:]] for r in table.rows}
    assert rows["share converging at embed"] == [1 / 8, 0.0]
    assert rows["share converging at L0"] == [7 / 8, 2 / 8]
    assert rows["share converging at L1"] == [None, 6 / 8]
    assert not any("never" in key for key in rows)
    assert rows["final layer P(correct)"] == [m.findings.logit_lens.prob_correct[-1] for m in report.models]


def test_bold_only_where_the_shown_intervals_separate():
    """0.99998 [0.99997, 0.99998] vs 0.99839 [0.99756, 0.99913]: both show as 1.00 [1.00, 1.00],
    so neither is bold; 0.90 [0.85, 0.95] vs 0.50 [0.40, 0.60] is."""
    from render_fixtures import make_report

    from reportgen.render.pages import comparison
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    models = report.models[:2]
    assert any(g.aspect == "accuracy" and {m.name for m in models} <= set(g.models) for g in report.comparison.groups)
    site = Site(report, pdf=False)
    close = comparison.highlighted(site, [Estimate(0.99998, 0.99997, 0.99998, 99), Estimate(0.99839, 0.99756, 0.99913, 99)],
                                 models, "accuracy")
    apart = comparison.highlighted(site, [Estimate(0.9, 0.85, 0.95, 99), Estimate(0.5, 0.4, 0.6, 99)], models, "accuracy")
    assert [c.strong for c in close] == [False, False] and [c.strong for c in apart] == [True, False]


def test_top_head_verdicts_come_from_the_circuit_test_of_that_role():
    """A head's carry-head verdict is shown on its n-1 row only, never on another role's."""
    import dataclasses

    from render_fixtures import make_report

    from reportgen.findings import Estimate as E, RoleScore
    from reportgen.render.pages import comparison
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    m = report.models[0]
    # L0H1 (the fixture's confirmed carry head) tops every role
    scores = [RoleScore(0, 1, role, E(0.9, 0.85, 0.95, 10), 1.0, E(0.1, 0.05, 0.15, 10))
              for role in ("n", "n-1", "operator")]
    m.findings.attention = dataclasses.replace(m.findings.attention, role_scores=scores)
    site = Site(report, pdf=False)
    comparison.page(site)
    (table,) = [t for t in site.tables if t.key == "tables/compare-heads"]
    verdicts = {r[1]: r[-1] for r in table.rows if r[0] == m.label}
    assert verdicts == {"n": "no causal test of this role", "n-1": "carry_head: confirmed",
                        "operator": "not a candidate"}


def test_probe_comparison_csv_holds_numbers():
    import csv
    import io

    from render_fixtures import make_report

    from reportgen.render.pages import comparison
    from reportgen.render.site import Site

    site = Site(make_report(N_EXAMPLES), pdf=False)
    comparison.page(site)
    (table,) = [t for t in site.tables if t.key == "tables/compare-probes"]
    rows = list(csv.reader(io.StringIO(table.to_csv())))
    assert rows[0][:3] == ["label", "site", "metric"] and rows[0][3].endswith(" accuracy")
    for row in rows[1:]:
        assert row[2] in ("accuracy", "balanced accuracy") or row[2].startswith("balanced accuracy for ")
        assert all(v == "" or -1 <= float(v) <= 1 for v in row[3:])  # plain numbers, not display text


def test_a_capped_neuron_list_says_so():
    from render_fixtures import make_report

    from reportgen.render.pages import model
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    m = report.models[0]
    site = Site(report, pdf=False)
    model.circuits_section(site, m, m.findings.circuits)
    (table,) = [t for t in site.tables if t.key.endswith("/components")]
    assert "the 1 most selective (largest |AUROC − 0.5|) of the 5 selected by the screen are listed" in table.caption


def axes_inches(ax) -> tuple[float, float, float, float]:
    W, H = ax.figure.get_size_inches()
    b = ax.get_position()
    return b.x0 * W, b.y0 * H, b.width * W, b.height * H


@pytest.mark.parametrize("n_pos", [11, 51])
def test_patching_heatmaps_keep_body_size_labels_and_a_colour_bar_beside_each_row(n_pos):
    """Three sites over 11 or 51 token positions (a scratchpad model: 'BOS', the prompt, four column
    steps of ten characters, the answer) plus a head panel: labels stay at 9 pt, columns wide
    enough for them, the figure within the page; the scratchpad splits between whole steps; every
    row of panels has its colour bar right beside its last panel."""
    import numpy as np

    from types import SimpleNamespace

    from reportgen.findings import PatchSweep
    from reportgen.plots import report as P
    from reportgen.render import figures as F

    def sweep(site, labels):
        zeros = np.zeros((2, len(labels)))
        return PatchSweep(pair_kind="carry_flip", direction="denoise", site=site, mean=zeros, lo=zeros, hi=zeros,
                          position_labels=labels, n_pairs=40, n_dropped=2)

    prompt = ["BOS", "a2", "a1", "a0", "op", "b2", "b1", "b0", "="]
    places = ("a", "op1", "b", "op2", "cin", "eq", "d", "c", "cout", "sep")  # pairs.token_roles' step places
    positions = prompt + [f"s{i // 10}.{places[i % 10]}" for i in range(n_pos - 11)] + ["ans3", "ans2"]
    sweeps = [sweep(site, positions) for site in ("resid_pre", "attn_out", "mlp_out")]
    sweeps.append(sweep("head", ["H0", "H1", "H2", "H3"]))
    task = {"task": "add", "with_steps": n_pos > 11}
    (figure,) = F.patching_figures("figures/m/patching", SimpleNamespace(sweeps=sweeps), task)
    fig = P.PLOTS[figure.plot](**figure.args)
    W, _ = fig.get_size_inches()
    assert W <= P.PAGE_W + 1e-6
    heatmaps = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if ax not in heatmaps]
    columns = []
    for ax in heatmaps:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        columns.append(labels)
        cell = axes_inches(ax)[2] / len(labels)
        assert cell >= P.MIN_COL - 1e-9, (ax.get_title(loc="left"), cell)
        assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 9
        for t in ax.get_xticklabels():  # a label across its column is upright unless it fits
            assert t.get_rotation() == 90 or P._text_w(t.get_text()) <= 0.85 * cell
    rows = {}
    for ax in heatmaps:
        x, y, w, h = axes_inches(ax)
        rows.setdefault(round(y + h, 3), []).append(x + w)
    assert len(bars) == len(rows)
    for bar in bars:
        x, y, w, h = axes_inches(bar)
        right = max(rights for top, rights in ((t, max(r)) for t, r in rows.items()) if abs(top - (y + h)) < 1e-3)
        assert 0 < x - right < 0.3  # beside the row, not at the far edge of the page
    flat = [label for labels in columns for label in labels]
    if n_pos == 51:
        assert flat[9:19] == ["a", "+", "b", "+", "ci", "=", "d", "c", "co", ";|"]  # step 0 read by its roles
        assert len(heatmaps) >= 3 and len(columns[0]) == 9 + 20  # prompt and two whole steps, then the rest
    assert set(positions) - {l for l in positions if l.startswith("s")} <= set(flat)


def test_examples_show_the_answer_as_a_number():
    """A reversed-answer model reads '836+672=8051': the table also gives the stored answer 1508."""
    import dataclasses

    from render_fixtures import make_report

    from reportgen.render.pages import model
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    m = report.models[0]
    m.findings.examples[0] = dataclasses.replace(m.findings.examples[0], prompt="836+672=", target="8051",
                                                 problem="836 + 672", answer="1508")
    m.provenance = dataclasses.replace(m.provenance, task={**m.provenance.task, "answer_order": "reversed"})
    site = Site(report, pdf=False)
    model.examples_section(site, m)
    (table,) = [t for t in site.tables if t.key.endswith("/examples")]
    assert table.columns[:2] == ["example", "answer"] and table.rows[0][1] == "1508"
    assert "reversed answer order" in table.caption


def test_shown_text_rounds_but_the_csv_keeps_full_precision():
    from reportgen.render.tables import Cell, Table, fmt_est, fmt_num

    t = Table("tables/t", "c", ["quantity", "value"], [["p", Cell(0.132885, text="0.1329")], ["hash", Cell("ab" * 32, text="abab")]])
    assert [c["text"] for c in t.html_rows()[0]] == ["p", "0.1329"] and t.html_rows()[1][1]["text"] == "abab"
    assert t.to_csv().splitlines()[1:] == ["p,0.132885", "hash," + "ab" * 32]
    assert fmt_num(-0.001) == "0.00" and fmt_num(-0.01) == "-0.01"  # no negative zero
    assert fmt_est(Estimate(-0.001, -0.004, 0.002, 9)) == "0.00 [0.00, 0.00]"


def test_tables_show_the_findings_numbers():
    """Each new column carries its own finding, not a neighbour's: ablation effects per stratum on
    all three measures, the uniform-attention mass, the untrained logit lens, and the probe
    comparison's accuracy and selectivity per model."""
    import csv
    import io

    from render_fixtures import make_report

    from reportgen.render import figures as F
    from reportgen.render.pages import comparison, model
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    m = report.models[0]
    site = Site(report, pdf=False)
    model.ablation_section(site, m, m.findings.interventions)
    model.attention_section(site, m, m.findings.attention)
    model.lens_section(site, m, m.findings.logit_lens)
    comparison.page(site)
    table = {t.key.rsplit("/", 1)[-1]: t for t in site.tables}

    iv = m.findings.interventions
    effect = next(e for e in iv.effects if e.method == iv.default_method)
    rows = {(r[0], r[1]): r[2:] for r in table["ablations-by-stratum"].rows}
    strata = table["ablations-by-stratum"].columns[2:]
    for measure, by in (("exact match", effect.metrics.by_stratum),
                        ("digit accuracy", effect.metrics.digit_accuracy_by_stratum),
                        ("log-prob", effect.metrics.logprob_by_stratum)):
        assert rows[(effect.component, measure)] == [by.get(s) for s in strata]
    assert rows[("none (clean)", "log-prob")] == [iv.clean.logprob_by_stratum.get(s) for s in strata]

    att = m.findings.attention
    held = {(f"L{r.layer}H{r.head}", r.column): r for r in att.head_roles if r.held}
    roles = table["head-roles"]
    for head, *cells in roles.rows:
        for column, cell in zip(att.columns.columns, cells):
            r = held.get((head, column))
            assert cell == (f"{r.key_group} {r.mass.mean:.2f}" if r else "—")
    assert roles.rows[:4] == [["L0H0", "n 0.90", "n 0.90", "n 0.90", "—"], ["L0H1", "—", "n-1 0.90", "n-1 0.90",
                                                                           "n-1 0.90"],
                              ["L0H2", "—", "—", "n-2 0.90", "n-2 0.90"], ["L0H3", "= 0.90", "= 0.90", "= 0.90", "= 0.90"]]

    lens = m.findings.logit_lens
    assert [r[2] for r in table["logit-lens"].rows] == lens.untrained_prob_correct

    probes = list(csv.DictReader(io.StringIO(table["compare-probes"].to_csv())))
    for probed in [m for m in report.models if m.findings.probing is not None]:
        summary = {(r["label"], r["site"]): r for r in F.probe_summary(probed.findings.probing)}
        for row in probes:
            r = summary.get((row["label"], row["site"]))
            assert (row[f"{probed.label} accuracy"], row[f"{probed.label} selectivity"]) == (
                ("", "") if r is None else (repr(r["accuracy"]), repr(r["selectivity"])))


def test_the_per_column_view_frames_each_heads_role_by_column_and_offset():
    """The staircase of the fixture's layer 0 (heads on n, n-1, n-2, one on '=') as the figure draws it,
    and the test verdicts of position and delimiter heads beside their untrained twins."""
    import numpy as np
    from render_fixtures import make_report

    from reportgen.render.pages import model
    from reportgen.render.site import Site

    report = make_report(N_EXAMPLES)
    m = report.models[0]
    site = Site(report, pdf=False)
    blocks = model.attention_section(site, m, m.findings.attention)
    (fig,) = [f for f in site.figures if f.key.endswith("/attention-columns")]
    xlabels, panels = fig.args["xlabels"], fig.args["panels"]
    assert xlabels[:4] == ["n", "n-1", "n-2", "n-3"] and "earlier answers" not in xlabels
    for h, group in enumerate(["n", "n-1", "n-2", "="]):
        rows, cols = np.nonzero(panels[h]["held"])
        assert {xlabels[c] for c in cols} == {group} and panels[h]["title"] == f"L0H{h}"
    assert [p["title"] for p in panels] == [f"L{l}H{h}" for l in m.findings.attention.columns.layers for h in range(4)]
    data = list(csv.DictReader(io.StringIO(fig.data)))
    assert {(r["head"], r["column"], r["key_group"]) for r in data if r["held"] == "True"} >= {
        ("L0H2", "2", "n-2"), ("L0H2", "3", "n-2"), ("L0H3", "0", "=")}
    said = " ".join(b.item for b in blocks if b.kind == "text")
    tests = len(panels)
    assert f"Position heads: 1 of {tests} head-role tests confirmed (L0H0); on the untrained twins" in said
    assert "Delimiter heads: not reported: the test confirmed components on the untrained twins (0, 1, 1)" in said


def test_every_caption_in_the_captions_template_is_used_and_reads_as_one_line():
    """templates/captions.txt defines exactly the captions the page builders ask for, and each
    comes out as one line of plain text (no markup escaped into it, no stray whitespace)."""
    from reportgen.render.site import TEMPLATES, caption

    defined = set(re.findall(r"\{% macro (\w+)\(\) %\}", (TEMPLATES / "captions.txt").read_text()))
    used = {name for f in (ROOT / "reportgen" / "render").rglob("*.py")
            for name in re.findall(r'\bcaption\("(\w+)"\)', f.read_text())}
    assert defined == used and used
    for name in used:
        text = caption(name)
        assert text == " ".join(text.split()) and "&#" not in text and "&amp;" not in text, name
    assert caption("head_stats").endswith("the '=' token and the operator.")

"""A model report, rendered: its pages, figures and tables as a static site, and `report.pdf`,
written from a results `Report` alone, with the stamp that lets an unchanged site be skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from jinja2 import Environment

from reportgen.catalog import ANALYSES

from reportgen.parallel import default_workers
from reportgen.render.figures import figures_in_background, render_figures
from reportgen.render.pages import comparison, example, index, model, provenance
from reportgen.render.pdf import document_parts, figure_keys, render_pdf
from reportgen.render.search import search_index_js
from reportgen.render.site import Page, Site, SiteLinks, copy_static, environment, number_blocks, write_text
from reportgen.render.stamp import fingerprint, is_current, write_stamp
from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, dump_results


def render_site(report, out_dir: Path, pdf: bool = True, log: Optional[Callable[[str], None]] = None,
                summary: bool = False, workers: Optional[int] = None) -> None:
    """Write the site (index, model, example, comparison and provenance pages, figures, tables,
    search index, results files) into `out_dir`, and `report.pdf` when `pdf` is set.

    Files are written in place; a caller that must never leave a half-written report renders into
    a fresh directory and swaps it in afterwards. `workers` caps the figure-drawing processes
    (default: the usable CPUs, at most 4).
    """
    say = log or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    site = Site(report, pdf)
    pages = site_pages(site)
    env = environment()
    json_bytes, npz_bytes = dump_results(report)
    copy_static(out_dir)
    say(f"rendering {len(site.figures)} figures")
    if pdf:
        _figures_and_pdf(site, pages, out_dir, env, {RESULTS_FILE: json_bytes, ARRAYS_FILE: npz_bytes},
                         summary, workers, say)
    else:
        render_figures(site.figures, out_dir, workers)
    say(f"writing {len(pages)} pages and {len(site.tables)} tables")
    write_site(site, pages, out_dir, env)
    (out_dir / RESULTS_FILE).write_bytes(json_bytes)
    (out_dir / ARRAYS_FILE).write_bytes(npz_bytes)
    write_stamp(out_dir, fingerprint(json_bytes, npz_bytes, pdf, summary))


def _figures_and_pdf(site: Site, pages: list, out_dir: Path, env, attachments: dict[str, bytes],
                     summary: bool, workers: Optional[int], say: Callable[[str], None]) -> None:
    """The PDF's figures first, then report.pdf typeset here while the figures only the site shows
    (the examples past the PDF's cap) are drawn in other processes: typesetting uses one CPU."""
    parts = document_parts(site, pages, summary)
    keys = figure_keys(parts)
    render_figures([f for f in site.figures if f.key in keys], out_dir, workers)
    rest = [f for f in site.figures if f.key not in keys]
    say("typesetting report.pdf" + (f" (and drawing the site's other {len(rest)} figures)" if rest else ""))
    with figures_in_background(rest, out_dir, (workers or default_workers()) - 1):
        render_pdf(site, parts, out_dir, env, attachments)



def site_pages(site: Site) -> list[Page]:
    """Every page of the site, in the order the PDF reads them: overview, comparison, provenance,
    then each model's page followed by its examples' pages."""
    pages = [index.page(site), comparison.page(site), provenance.page(site)]
    for m in site.report.models:
        pages.append(model.page(site, m))
        pages += [example.page(site, m, i) for i in range(len(m.findings.examples))]
    return pages


def page_context(site: Site, page: Page, links: SiteLinks) -> dict:
    return {"report": site.report, "page": page, "sections": number_blocks(page.sections),
            "nav": nav_model(site), "L": links, "pdf": False, "offset": 1, "has_pdf": site.pdf,
            "model_pages": {m.name: site.paths.model(m) for m in site.report.models}, **page.extra}


def nav_model(site: Site) -> list[dict]:
    """The sidebar: overview, comparison, each model with its sections and examples, provenance."""
    items = [{"title": "Overview", "href": "index.html", "children": []},
             {"title": "Comparison", "href": "compare.html", "children": []}]
    for m in site.report.models:
        children = [{"title": a.title, "href": site.paths.model(m, a.section)} for a in ANALYSES]
        examples = [{"title": ex.prompt + ex.target, "href": site.paths.example(m, i)}
                    for i, ex in enumerate(m.findings.examples)]
        items.append({"title": m.label, "href": site.paths.model(m), "children": children, "examples": examples})
    items.append({"title": "Provenance", "href": "provenance.html", "children": []})
    return items


def write_site(site: Site, pages: list[Page], out_dir: Path, env: Environment) -> None:
    """Every page, table download, viewer data file and the search index."""
    for page in pages:
        html = env.get_template(page.template).render(**page_context(site, page, SiteLinks(page.path)))
        write_text(out_dir / page.path, html)
    for t in {t.key: t for t in site.tables}.values():
        write_text(out_dir / t.csv_path, t.to_csv())
        write_text(out_dir / t.tex_path, t.to_latex())
    for m in site.report.models:
        for i, ex in enumerate(m.findings.examples):
            if example.has_attention(ex):
                write_text(out_dir / site.paths.example_data(m, i), example.viewer_data_js(site, m, i))
    sections = [(a.section, a.title) for a in ANALYSES]
    write_text(out_dir / "search-index.js", search_index_js(site.report, site.paths, sections))


def site_is_current(report, out_dir: Path, pdf: bool, summary: bool = False) -> bool:
    """True when `out_dir` already holds exactly what render_site would write for `report`."""
    return is_current(Path(out_dir), fingerprint(*dump_results(report), pdf, summary))

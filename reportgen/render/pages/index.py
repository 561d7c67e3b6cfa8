"""The overview page (index.html): key findings, the models, accuracy per stratum, what can be
compared, and the contents."""

from __future__ import annotations

from reportgen.catalog import ANALYSES
from reportgen.data.arithmetic import STRATUM_DESCRIPTIONS
from reportgen.render.pages.shared import accuracy_comparison_table, claims_block, groups_table
from reportgen.render.site import Page, Section, Site, caption, links, model_shape, notes, short_hash, task_text, text
from reportgen.render.tables import Cell, Table


def page(site: Site) -> Page:
    r = site.report
    models = site.table(Table(
        "tables/models", caption("models"),
        ["model", "task", "shape", "checkpoint", "exact match", "test problems", "examples"],
        [[Cell(m.label, site.paths.model(m)), task_text(m.provenance.task), model_shape(m),
          Cell(m.provenance.sha256, text=short_hash(m.provenance.sha256)), m.accuracy.exact_match, m.accuracy.n, len(m.findings.examples)]
         for m in r.models]))
    contents = []
    for m in r.models:
        contents.append((f"{m.label}: model page", site.paths.model(m)))
        contents += [(f"{m.label}: {a.title}", site.paths.model(m, a.section)) for a in ANALYSES]
        contents.append((f"{m.label}: examples ({len(m.findings.examples)})", site.paths.model(m, "examples")))
    contents += [("Comparison of the models", "compare.html"),
                 ("Provenance: checkpoints, configs, versions", "provenance.html"),
                 ("Results data (results.json)", "results.json")]
    if site.pdf:
        contents.append(("The report as one PDF (report.pdf)", "report.pdf"))
    sections = [
        Section("findings", "Key findings", [claims_block(site, m, title=True) for m in r.models]),
        Section("models", "Models", [
            text(f"{len(r.models)} model(s); the first is the primary model, the others are compared with it."),
            models]),
        Section("accuracy", "Accuracy per stratum", [
            text("Exact-match accuracy per difficulty stratum. " + "; ".join(
                f"{s}: {d}" for s, d in STRATUM_DESCRIPTIONS.items()) + "."),
            accuracy_comparison_table(site)]),
        Section("comparability", "What can be compared", [
            groups_table(site), *([notes(list(r.comparison.notes))] if r.comparison.notes else []),
            links([("Full comparison", "compare.html")])]),
        Section("contents", "Contents", [links(contents)]),
    ]
    return Page("index.html", "index.html", r.title, sections)

"""The provenance page (provenance.html): the results files, and per model its checkpoint, seeds,
library versions and every configuration."""

from __future__ import annotations

from reportgen.fingerprint import library_version
from reportgen.render.site import RENDER_LIBRARIES, Page, Section, Site, caption, kv_rows, links, text
from reportgen.render.tables import Table


def page(site: Site) -> Page:
    sections = [Section("data", "Results data", [
        text(caption("results_data")),
        links([("results.json (all results except arrays)", "results.json"),
               ("arrays.npz (the arrays results.json refers to)", "arrays.npz")]),
        site.table(Table("tables/render-versions", "Versions of the libraries that drew the figures and "
                         "typeset this report.", ["library", "version"],
                         [[lib, library_version(lib) or "not installed"] for lib in RENDER_LIBRARIES]))])]
    for m in site.report.models:
        p = m.provenance
        slug = site.paths.models[m.name]
        facts = [["model", m.label], ["checkpoint", p.checkpoint], ["file name", p.file_name], ["sha256", p.sha256],
                 ["training seed", p.seed], ["data manifest hash", p.data_manifest_hash],
                 ["reportgen version", p.reportgen_version],
                 ["examples given", ", ".join(p.examples) if p.examples else "chosen by the analyses"]]
        versions = sorted(set(p.versions_training) | set(p.versions_analysis))
        blocks = [
            site.table(Table(site.paths.table(m, "provenance"), f"Provenance of {m.label}.", ["item", "value"],
                             facts)),
            site.table(Table(site.paths.table(m, "versions"), "Library versions when the checkpoint was trained "
                             "and when the analyses ran.", ["library", "training", "analysis"],
                             [[v, p.versions_training.get(v, "—"), p.versions_analysis.get(v, "—")]
                              for v in versions])),
        ]
        configs = (("model-config", "Model configuration", p.model_config),
                   ("train-config", "Training configuration", p.train_config),
                   ("task", "Task", p.task), ("analysis-config", "Analysis configuration", p.analysis_config))
        for name, title, d in configs:
            blocks.append(site.table(Table(site.paths.table(m, name), f"{title} of {m.label}.", ["key", "value"],
                                           kv_rows(d or {}))))
        sections.append(Section(f"model-{slug}", m.label, blocks))
    return Page("provenance.html", "provenance.html", "Provenance", sections)

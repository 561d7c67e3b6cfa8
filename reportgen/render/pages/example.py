"""An example's page (examples/<model>/<example>.html): its facts and ground truth, attention (the
interactive viewer and a figure per layer) and logit lens; and the viewer's data file."""

from __future__ import annotations

import json

import numpy as np

from reportgen.plots.report import ATTENTION_CMAP, colour_stops
from reportgen.render import figures as F
from reportgen.render.site import Block, Page, Section, Site, caption, layer_labels, notice, task_text
from reportgen.render.tables import Cell, Table


def page(site: Site, m, i: int) -> Page:
    ex = m.findings.examples[i]
    labels = ex.labels if isinstance(ex.labels, dict) else {}
    facts = [["prompt + target", ex.prompt + ex.target], ["answer", ex.answer],
             ["task and format", task_text(m.provenance.task)], ["greedy prediction", ex.prediction],
             ["correct", Cell("yes" if ex.correct else "no", strong=not ex.correct)], ["stratum", ex.stratum]]
    facts += [[k, labels[k]] for k in ("n_carries", "longest_cascade") if k in labels]
    slug = site.paths.examples[m.name][i]
    sections = [Section("summary", "Example", [site.table(Table(
        site.paths.table(m, f"examples/{slug}-summary"), f"Example {ex.prompt}{ex.target} of model {m.label}.",
        ["fact", "value"], facts))])]
    columns = labels.get("columns") or []
    if columns:
        keys = [k for k in ("n", "a", "b", "carry_in", "carry_out", "digit", "propagate", "cascade_len")
                if k in columns[0]]
        sections[0].blocks.append(site.table(Table(
            site.paths.table(m, f"examples/{slug}-columns"), caption("example_columns"),
            keys, [[c.get(k) for k in keys] for c in columns])))
    attention = has_attention(ex)
    attn_blocks = [Block("viewer", viewer_context(site, m, i))] if attention else []
    attn_blocks += [site.fig(F.attention_example_figure(site.paths.example_figure(m, i, f"attn-L{l}"), ex, l))
                    for l in range(np.asarray(ex.attention).shape[0] if attention else 0)]
    sections.append(Section("attention", "Attention", attn_blocks or [notice("No attention was recorded.")]))
    labels_l = layer_labels(m)
    lens_blocks = []
    prob = np.asarray(ex.lens_prob)
    if prob.ndim == 2 and prob.size and prob.shape[0] == len(labels_l):
        answer_order = m.provenance.task.get("answer_order", "plain") if m.provenance.task else "plain"
        lens_blocks.append(site.fig(F.lens_example_figure(site.paths.example_figure(m, i, "lens"), ex, labels_l,
                                                          answer_order)))
        conv = [labels_l[c] if c is not None and 0 <= c < len(labels_l) else "never" for c in ex.convergence]
        digits = F.digit_labels(ex, answer_order)
        lens_blocks.append(site.table(Table(
            site.paths.table(m, f"examples/{slug}-lens"), caption("example_lens"),
            ["answer digit", "converges at", "final P(correct)"],
            [[d, c, float(prob[-1, j])] for j, (d, c) in enumerate(zip(digits, conv))])))
    sections.append(Section("lens", "Logit lens", lens_blocks or [notice("No logit-lens data for this example.")]))
    pager = {"model_href": site.paths.model(m), "prev": site.paths.example(m, i - 1) if i > 0 else None,
           "next": site.paths.example(m, i + 1) if i + 1 < len(m.findings.examples) else None}
    return Page(site.paths.example(m, i), "example.html", f"{ex.prompt}{ex.target}", sections,
                {"model": m, "example": ex, "pager": pager,
                 "data_js": site.paths.example_data(m, i) if attention else None})


def viewer_context(site: Site, m, i: int) -> dict:
    """What the attention viewer's controls list: every model (at the same example where it has
    it) and every example of this model, named in words; the shape; the static figures' colours."""
    ex = m.findings.examples[i]
    att = np.asarray(ex.attention)
    models = []
    for other in site.report.models:
        keys = [e.key for e in other.findings.examples]
        if not keys:
            continue
        j = keys.index(ex.key) if ex.key in keys else 0
        models.append({"label": f"{other.label} ({task_text(other.provenance.task)})",
                       "href": site.paths.example(other, j), "selected": other is m})
    return {
        "id": f"{site.paths.models[m.name]}/{site.paths.examples[m.name][i]}",
        "models": models,
        "examples": [{"label": _example_words(e), "href": site.paths.example(m, j), "selected": j == i}
                     for j, e in enumerate(m.findings.examples)],
        "layers": att.shape[0], "heads": att.shape[1],
        "ramp": colour_stops(ATTENTION_CMAP),
    }


def viewer_data_js(site: Site, m, i: int) -> str:
    ex = m.findings.examples[i]
    ident = f"{site.paths.models[m.name]}/{site.paths.examples[m.name][i]}"
    data = {"tokens": list(ex.tokens), "answer_positions": list(ex.answer_positions),
            "weights": np.round(np.asarray(ex.attention, dtype=float), 4)}
    return ("window.REPORTGEN_ATTENTION = window.REPORTGEN_ATTENTION || {};\n"
            f"window.REPORTGEN_ATTENTION[{json.dumps(ident)}] = {F.to_json(data).strip()};\n")


def _example_words(ex) -> str:
    """An example as the viewer's list names it: the problem and answer as numbers, the written form
    where it differs (reversed digits; a scratchpad is left to the page), the stratum in words."""
    shown = f"{ex.problem} = {ex.answer}"
    if "|" in ex.target:
        shown += " (with written steps)"
    elif ex.target != ex.answer:
        shown += f" (written {ex.prompt}{ex.target})"
    shown += f", {ex.stratum.replace('_', ' ')}"
    return shown + ("" if ex.correct else f", answered {ex.prediction} (wrong)")


def has_attention(ex) -> bool:
    att = np.asarray(ex.attention)
    return att.ndim == 4 and att.size > 0

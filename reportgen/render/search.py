"""The site's search index: models, analysis sections, examples and circuit components, embedded as
a script that assigns a global (a <script src> works from file://, where fetch() does not)."""

from __future__ import annotations

import json


def search_entries(report, paths, sections: list[tuple[str, str]]) -> list[dict]:
    """Entries {t: title, k: kind, u: site path, s: extra searchable text}, in report order;
    `sections` are the (anchor, title) pairs of each model page's analysis sections."""
    out = [{"t": "Comparison of the models", "k": "page", "u": "compare.html", "s": "compare accuracy strata"},
           {"t": "Provenance", "k": "page", "u": "provenance.html", "s": "checkpoint sha256 config seed versions"}]
    for m in report.models:
        p = m.provenance
        out.append({"t": m.label, "k": "model", "u": paths.model(m),
                    "s": f"{m.name} {p.file_name} {p.sha256} {json.dumps(p.task, sort_keys=True)}"})
        out += [{"t": f"{title} — {m.label}", "k": "section", "u": paths.model(m, sid), "s": sid}
                for sid, title in sections]
        for i, ex in enumerate(m.findings.examples):
            verdict = "correct" if ex.correct else f"wrong (predicted {ex.prediction})"
            out.append({"t": ex.prompt + ex.target, "k": "example", "u": paths.example(m, i),
                        "s": f"{m.label} {ex.key} {ex.stratum} {verdict}"})
        circ = m.findings.circuits
        for c in sorted(circ.components if circ else [], key=lambda c: (c.kind, c.layer, c.index)):
            unit = f"L{c.layer}H{c.index}" if c.kind.endswith("head") else f"L{c.layer} neuron {c.index}"
            column = f" column {c.column}" if c.column is not None else ""
            out.append({"t": f"{unit} {c.kind}{column}", "k": "component", "u": paths.model(m, "circuits"),
                        "s": f"{m.label} {'confirmed' if c.confirmed else 'not confirmed'} {c.note}"})
        att = m.findings.attention
        if att is not None:
            heads = sorted({(r.layer, r.head) for r in att.role_scores})
            for layer, head in heads:
                roles = [f"{r.role} {r.score.mean:.2f}" for r in att.role_scores if (r.layer, r.head) == (layer, head)]
                out.append({"t": f"L{layer}H{head}", "k": "head", "u": paths.model(m, "attention"),
                            "s": f"{m.label} head role scores {' '.join(roles)}"})
    return out


def search_index_js(report, paths, sections: list[tuple[str, str]]) -> str:
    data = json.dumps(search_entries(report, paths, sections), ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return f"window.REPORTGEN_SEARCH = {data};\n"

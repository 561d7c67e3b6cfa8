"""The comparison page (compare.html): what differs between the models, what is comparable, and
accuracy, logit lens, probes, top heads and ablations side by side, marked where a model stands apart."""

from __future__ import annotations

from reportgen import hooks as hp
from reportgen.render import figures as F
from reportgen.render.pages.shared import (
    accuracy_comparison_table, claim_item, delta, groups_table, shown,
)
from reportgen.render.site import Block, Page, Section, Site, caption, not_run, notes, notice, text
from reportgen.render.tables import Cell, Table, fmt_est
from reportgen.results.claims import comparison_claims
from reportgen.results.compare import apart, finite_or


def page(site: Site) -> Page:
    r = site.report
    differences = comparison_claims(r)
    sections = [
        Section("differences", "What differs between the models", [Block("claims", {
            "title": "", "href": None, "not_found": [],
            "found": [claim_item(site, None, c) for c in differences]})] if differences else [
            text(caption("no_differences"))]),
        Section("notes", "What is comparable", [
            text(caption("comparable_intro")),
            groups_table(site),
            notes(list(r.comparison.notes) or ["All models are comparable on every aspect."])]),
        Section("accuracy", "Accuracy per stratum", [accuracy_comparison_table(site, "tables/compare-accuracy")]),
        lens_section(site),
        probe_section(site),
        heads_section(site),
        ablation_section(site),
    ]
    return Page("compare.html", "compare.html", "Comparison of the models", sections)


def group_note(site: Site, aspect: str) -> list[Block]:
    groups = [g for g in site.report.comparison.groups if g.aspect == aspect]
    if len(groups) <= 1:
        return []
    labels = {m.name: m.label for m in site.report.models}
    parts = "; ".join(g.describe(labels) for g in groups)
    return [notice(f"Not directly comparable across groups ({aspect}): {parts}. Compare rows only within a "
                   f"group; a missing entry means the model has no such component or the analysis was not run.")]


def highlighted(site: Site, estimates: list, models: list, aspect: str, directional: bool = True) -> list:
    """Cells for one row of per-model estimates, marked where one model stands apart from every
    other model it is comparable with (on `aspect`) by more than the 95% intervals allow, as the
    cells show them (rounded to 2 decimals, so a reader can see it); '—' where it has none.
    `directional` (a measure where higher is better, such as accuracy): bold where highest;
    otherwise the mark APART follows any value apart, high or low, and says nothing of better."""
    group_of = {n: i for i, g in enumerate(g for g in site.report.comparison.groups if g.aspect == aspect)
                for n in g.models}
    cells = []
    for i, (m, e) in enumerate(zip(models, estimates)):
        if e is None:
            cells.append("—")
            continue
        rivals = [o for j, (n, o) in enumerate(zip(models, estimates))
                  if j != i and o is not None and n.name in group_of and group_of.get(m.name) == group_of[n.name]]
        side = apart(e, rivals, shown)
        if directional:
            cells.append(Cell(e, strong=side == "above"))
        else:
            cells.append(Cell(e, text=f"{fmt_est(e)} {APART}") if side else Cell(e))
    return cells


def lens_section(site: Site) -> Section:
    models = [m for m in site.report.models if m.findings.logit_lens is not None]
    if not models:
        return Section("logit-lens", "Logit-lens convergence", [not_run("logit lens")])
    final = [m.findings.logit_lens.prob_correct[-1] for m in models]
    rows = [["final layer P(correct)", *highlighted(site, final, models, "layers")]]
    labels = list(dict.fromkeys(lab for m in models for lab in m.findings.logit_lens.layer_labels))
    for lab in labels:
        row = [f"share converging at {lab}"]
        for m in models:
            hist = m.findings.logit_lens.convergence_hist
            total = sum(hist.values())
            row.append(hist[lab] / total if lab in hist and total else None)
        rows.append(row)
    return Section("logit-lens", "Logit-lens convergence", [*group_note(site, "layers"), site.table(Table(
        "tables/compare-logit-lens", caption("compare_logit_lens"), ["quantity", *[m.label for m in models]], rows))])


def probe_section(site: Site) -> Section:
    models = [m for m in site.report.models if m.findings.probing is not None]
    if not models:
        return Section("probing", "Probe accuracy per layer and label", [not_run("probing")])
    summaries = {m.name: {(r["label"], r["site"]): r for r in F.probe_summary(m.findings.probing)} for m in models}
    stated = {m.name: m.findings.probing.null is None or m.findings.probing.null.passed for m in models}
    order = {}
    for summary in summaries.values():
        for k, r in summary.items():
            order.setdefault(k, (r["label"], r["layer"], hp.forward_rank(r["hook"]), r["site"]))
    keys = sorted(order, key=order.get)
    rows = []
    for label, where in keys:
        found = [summaries[m.name].get((label, where)) for m in models]
        balanced = {r["balanced"] for r in found if r}
        row = [label, where, "balanced accuracy" if balanced == {True} else "accuracy" if balanced == {False}
               else "balanced accuracy for " + ", ".join(m.label for m, r in zip(models, found) if r and r["balanced"])]
        for m, r in zip(models, found):
            confirmed = r and (Cell(r["confirmed"] / r["positions"], text=f"{r['confirmed']} of {r['positions']}")
                               if stated[m.name] else Cell(None, text="not stated"))
            row += [r["accuracy"], r["selectivity"], confirmed] if r else [None, None, None]
        rows.append(row)
    missing = [m.label for m in site.report.models if m.findings.probing is None]
    extra = [notice(f"Probing not run for: {', '.join(missing)}.")] if missing else []
    table = site.table(Table(
        "tables/compare-probes", caption("compare_probes"),
        ["label", "site", "metric", *[f"{m.label} {q}" for m in models for q in ("accuracy", "selectivity",
                                                                                 "confirmed")]], rows))
    return Section("probing", "Probe accuracy per layer and label", [*group_note(site, "layers"), *extra, table])


def heads_section(site: Site) -> Section:
    rows = []
    for m in site.report.models:
        att, circ, iv = m.findings.attention, m.findings.circuits, m.findings.interventions
        if att is None:
            continue
        effects = {}
        if iv is not None:
            clean = iv.clean.exact_match.mean
            effects = {e.component: delta(clean, e.metrics.exact_match.mean) for e in iv.default_effects()}
        causal = {(c.kind, c.layer, c.index): c for c in (circ.components if circ else [])}
        for role in dict.fromkeys(r.role for r in att.role_scores):
            best = min((r for r in att.role_scores if r.role == role),
                       key=lambda r: (-finite_or(r.score.mean), r.layer, r.head))
            baseline = max(finite_or(best.untrained.mean, 0.0), finite_or(best.chance, 0.0))
            if finite_or(best.score.mean) - baseline < finite_or(att.role_margin, 0.0):
                continue  # no head takes this key group (e.g. one of a scratchpad's many)
            kind = ROLE_CIRCUIT.get(role)
            verdict = _verdict(causal.get((kind, best.layer, best.head))) if kind else "no causal test of this role"
            rows.append([m.label, role, f"L{best.layer}H{best.head}", best.score, best.untrained,
                         effects.get(f"L{best.layer}H{best.head}"), verdict])
    if not rows:
        return Section("heads", "Top heads per role", [not_run("attention")])
    return Section("heads", "Top heads per role", [*group_note(site, "heads"), site.table(Table(
        "tables/compare-heads", caption("compare_heads"),
        ["model", "role", "head", "role score", "untrained", "ablation drop", "circuit"], rows))])


def ablation_section(site: Site) -> Section:
    models = [m for m in site.report.models if m.findings.interventions is not None]
    if not models:
        return Section("ablations", "Ablation effects", [not_run("ablation")])
    by = {m.name: {e.component: e.metrics.exact_match for e in m.findings.interventions.default_effects()}
          for m in models}
    comps = sorted({c for d in by.values() for c in d}, key=F.component_rank)
    rows = [["none (clean)", *highlighted(site, [m.findings.interventions.clean.exact_match for m in models],
                                                models, "accuracy")]]
    rows += [[c, *highlighted(site, [by[m.name].get(c) for m in models], models, "heads", directional=False)]
             for c in comps]
    methods = ", ".join(sorted({f"{m.label}: {m.findings.interventions.default_method}" for m in models}))
    return Section("ablations", "Ablation effects", [*group_note(site, "heads"), site.table(Table(
        "tables/compare-ablations", f"Exact match with each component ablated (default method per model — "
        f"{methods}; mean/resample ablation unless labelled zero), 95% bootstrap intervals; '—': the model "
        f"has no such component. Clean row, bold: higher than every model of the same task beyond the 95% "
        f"intervals. Ablated rows, {APART}: apart from every model of the same shape beyond the 95% intervals, "
        f"higher or lower; neither is better (a model that loses less to an ablation relies less on that "
        f"component, which is a difference, not a merit).", ["component", *[m.label for m in models]], rows))])


APART = "◆"  # marks a value apart from the comparable models, with no direction implied


ROLE_CIRCUIT = {"n-1": "carry_head", "operator": "operator_head"}  # role (key group) -> circuit test


def _verdict(comp) -> str:
    if comp is None:
        return "not a candidate"
    return f"{comp.kind}: {'confirmed' if comp.confirmed else 'not confirmed'}"

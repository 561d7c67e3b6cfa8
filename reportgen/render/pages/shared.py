"""Blocks more than one page shows: a model's claims, the accuracy-by-stratum and comparability
tables, and the number rules their cells share."""

from __future__ import annotations

import math
from typing import Optional

from reportgen.render import figures as F
from reportgen.render.site import Block, Site, caption
from reportgen.render.tables import Cell, Table, fmt_num
from reportgen.results.claims import Claim
from reportgen.results.compare import apart


def claims_block(site: Site, m, title: bool = False) -> Block:
    """A model's findings and what was tested and not found, each linked to its evidence."""
    c = site.claims[m.name]
    return Block("claims", {"title": m.label if title else "", "href": site.paths.model(m, "findings"),
                            "found": [claim_item(site, m, x) for x in c.found],
                            "not_found": [claim_item(site, m, x) for x in c.not_found]})


def claim_item(site: Site, m, c: Claim) -> dict:
    anchor = f"t-{c.item}" if c.item else c.section
    href = f"compare.html#{anchor}" if m is None else site.paths.model(m, anchor)
    return {"text": c.text, "test": c.test.rstrip("."), "null": c.null, "href": href}


def accuracy_comparison_table(site: Site, key: str = "tables/accuracy-by-stratum") -> Block:
    r = site.report
    strata = F.ordered_strata({s for m in r.models for s in m.accuracy.by_stratum})
    leaders = {(l.stratum, l.best) for l in r.comparison.leaders  # apart as the cells show them, too
               if apart(l.exact_match, [l.runner_up_exact_match], shown) == "above"}
    rows = []
    for s in ["all", *strata]:
        row = [s]
        for m in r.models:
            e = m.accuracy.exact_match if s == "all" else m.accuracy.by_stratum.get(s)
            row.append(Cell(e, strong=(s, m.name) in leaders))
        rows.append(row)
    return site.table(Table(
        key, "Exact-match accuracy per difficulty stratum with 95% Wilson intervals, one column per model. "
        "Bold: the best model on that stratum where its interval does not overlap the runner-up's "
        "(among models tested on the same task and digits).",
        ["stratum", *[m.label for m in r.models]], rows))


def groups_table(site: Site) -> Block:
    from_aspect = {}
    for g in site.report.comparison.groups:
        from_aspect.setdefault(g.aspect, []).append(g)
    labels = {m.name: m.label for m in site.report.models}
    rows = [[aspect, "; ".join(g.describe(labels) for g in gs),
             "yes" if len(gs) == 1 else "only within each group"]
            for aspect, gs in from_aspect.items()]
    return site.table(Table(
        "tables/comparability", caption("comparability"), ["aspect", "groups", "all comparable"], rows))


def delta(a, b) -> Optional[float]:
    return a - b if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) else None


def shown(x: float) -> float:
    """x as a table cell shows it (fmt_num, the tables' default digits)."""
    return float(fmt_num(x)) if math.isfinite(x) else x

"""Which models' results can be compared with which, and the differences that matter.

Comparability is decided per aspect from each model's task and shape:
- accuracy: same task and digit range, so both were tested on the same distribution of problems
  (and the same strata). Models that write the answer differently (steps, reversed digits) are
  still compared on their final answer; a note says so.
- positions: additionally the same input format (steps, answer order), so token positions line up
  (patching sweeps over positions, per-example token views).
- heads: same number of layers and heads (per-head tables).
- layers: same number of layers (logit lens, probes, per-layer ablations).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from reportgen.findings import Estimate
from reportgen.catalog import ANALYSIS_NAMES
from reportgen.data.arithmetic import STRATA
from reportgen.results.schema import ComparableGroup, Comparison, ModelResults, StratumLeader

ASPECTS = {
    "accuracy": ("Accuracy per stratum", "the same task and digit range"),
    "positions": ("Per-position results (patching over positions, token views)", "the same task, digits and format"),
    "heads": ("Per-head tables", "the same number of layers and heads"),
    "layers": ("Per-layer results (logit lens, probes, layer ablations)", "the same number of layers"),
}


def compare_models(models: list[ModelResults]) -> Comparison:
    """Comparability groups per aspect, per-stratum leaders among accuracy-comparable models, notes."""
    groups = [g for aspect in ASPECTS for g in _group(aspect, models)]
    by_name = {m.name: m for m in models}
    leaders = [leader for g in groups if g.aspect == "accuracy" and len(g.models) > 1
               for leader in _leaders([by_name[n] for n in g.models])]
    return Comparison(groups=groups, leaders=leaders, notes=_notes(groups, models))


def _aspect_key(aspect: str, m: ModelResults) -> tuple[tuple, str]:
    """What models must share to be comparable on `aspect`, and that in words."""
    t, c = m.provenance.task, m.provenance.model_config
    problems = (t["task"], t["min_digits"], t["max_digits"])
    problems_text = f"{t['task']}, {t['min_digits']}-{t['max_digits']} digits"
    if aspect == "accuracy":
        return problems, problems_text
    if aspect == "positions":
        return problems + (t["with_steps"], t["answer_order"]), f"{problems_text}, {_format_text(t)}"
    if aspect == "heads":
        return (c["n_layers"], c["n_heads"]), f"{_plural(c['n_layers'], 'layer')} x {_plural(c['n_heads'], 'head')}"
    return (c["n_layers"],), _plural(c["n_layers"], "layer")


def _group(aspect: str, models: list[ModelResults]) -> list[ComparableGroup]:
    groups: dict[tuple, ComparableGroup] = {}
    for m in models:
        key, basis = _aspect_key(aspect, m)
        groups.setdefault(key, ComparableGroup(aspect=aspect, basis=basis, models=[])).models.append(m.name)
    return list(groups.values())


def _leaders(models: list[ModelResults]) -> list[StratumLeader]:
    present = {s for m in models for s in m.accuracy.by_stratum}
    strata = ["all"] + [s for s in STRATA if s in present] + sorted(present - set(STRATA))
    out = []
    for stratum in strata:
        scored = [(m.name, _stratum_estimate(m, stratum)) for m in models]
        scored = [(n, e) for n, e in scored if e is not None and e.n > 0]
        if len(scored) < 2:
            continue
        scored.sort(key=lambda ne: -ne[1].mean)  # stable: ties keep report order
        (best, b), (runner_up, r) = scored[0], scored[1]
        out.append(StratumLeader(stratum=stratum, models=[n for n, _ in scored], best=best, exact_match=b,
                                 runner_up=runner_up, runner_up_exact_match=r,
                                 ci_overlap=apart(b, [r]) is None))
    return out


def apart(value: Estimate, others: list[Estimate], shown: Callable[[float], float] = lambda x: x) -> Optional[str]:
    """'above' where `value`'s 95% interval lies above every one of `others`' intervals, 'below'
    where it lies below every one, else None (also when there are no others): the one rule by
    which the report marks a model apart. `shown` rounds the bounds as a reader sees them, so that
    no mark is set where the printed intervals touch. A missing bound (None, NaN) is unbounded."""
    if not others:
        return None
    lo, hi = finite_or(value.lo, -math.inf), finite_or(value.hi, math.inf)
    if all(shown(lo) > shown(finite_or(o.hi, math.inf)) for o in others):
        return "above"
    if all(shown(hi) < shown(finite_or(o.lo, -math.inf)) for o in others):
        return "below"
    return None


def finite_or(x: Optional[float], default: float = -math.inf) -> float:
    """x, or `default` where it is missing or not finite (an interval's open end, a NaN)."""
    return x if x is not None and math.isfinite(x) else default


def _stratum_estimate(m: ModelResults, stratum: str) -> Estimate | None:
    return m.accuracy.exact_match if stratum == "all" else m.accuracy.by_stratum.get(stratum)


def _notes(groups: list[ComparableGroup], models: list[ModelResults]) -> list[str]:
    notes = []
    for aspect, (what, shared) in ASPECTS.items():
        split = [g for g in groups if g.aspect == aspect]
        if len(split) > 1:
            parts = "; ".join(g.describe() for g in split)
            notes.append(f"{what} compare only between models with {shared}: {parts}.")
    by_name = {m.name: m for m in models}
    for g in groups:
        formats = {n: _format_text(by_name[n].provenance.task) for n in g.models}
        if g.aspect == "accuracy" and len(set(formats.values())) > 1:
            parts = "; ".join(f"{n}: {f}" for n, f in formats.items())
            notes.append(f"{', '.join(g.models)} write their answers in different formats ({parts}); "
                         "their accuracies compare the final answer only.")
    for m in models:
        missing = [a for a in ANALYSIS_NAMES if getattr(m.findings, a) is None]
        if missing and len(models) > 1:
            notes.append(f"{m.name}: not analysed with {', '.join(missing)}, so it is missing from those comparisons.")
    return notes


def _format_text(task: dict) -> str:
    return f"{'with' if task['with_steps'] else 'without'} steps, {task['answer_order']} answer order"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"

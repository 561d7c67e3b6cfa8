"""What a report concludes, in sentences: each model's findings, what was tested and not found,
and what differs between models, generated from the results alone.

A finding is stated only from a test that confirms it and that passed its null (the same test
on the untrained twins, findings.NullCheck); each Claim carries its number and interval
in the sentence, the test behind it, that test's result on the twins, and where in the report
the evidence is (a section id and, where there is one, the table or figure name).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from reportgen import hooks as hp
from reportgen.findings import CircuitFindings, ComponentRecovery, Estimate, NullCheck
from reportgen.data.arithmetic import STRATA
from reportgen.results.compare import apart
from reportgen.results.schema import ModelResults, Report

CEILING = 0.99  # exact match at or above this is at ceiling: it can no longer tell models apart
FORMED = 0.5  # the logit lens "forms" the answer where P(correct) first reaches this


@dataclass
class Claim:
    text: str  # one sentence, with its number and interval
    test: str  # the test behind it
    null: str  # what the same test gave on the untrained twins ("" where the claim has no null)
    section: str  # section id of the model page (or comparison page) that shows the evidence
    item: str = ""  # table or figure name within it ("" for the section)


@dataclass
class ModelClaims:
    model: str  # ModelResults.name
    found: list[Claim] = field(default_factory=list)
    not_found: list[Claim] = field(default_factory=list)
    summary: str = ""  # one paragraph: the findings' first sentences


# ---------------------------------------------------------------- formatting
def num(x: float, digits: int = 2) -> str:
    text = f"{x:.{digits}f}"
    return "0.00" if text in ("-0.00", "-0.0") else text


def est(e: Optional[Estimate], digits: int = 2) -> str:
    """'0.44 [0.38, 0.49]', or the mean alone where there is no interval."""
    if e is None or e.mean is None or math.isnan(e.mean):
        return "n/a"
    if e.lo is None or math.isnan(e.lo):
        return num(e.mean, digits)
    return f"{num(e.mean, digits)} [{num(e.lo, digits)}, {num(e.hi, digits)}]"


def pct(e: Estimate) -> str:
    if math.isnan(e.lo):
        return f"{100 * e.mean:.1f}%"
    return f"{100 * e.mean:.1f}% [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"


def listing(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def null_text(n: Optional[NullCheck]) -> str:
    if n is None:
        return ""
    counts = ", ".join(str(c) for c in n.twin_confirmed)
    return (f"the same test confirmed {counts} on {len(n.twin_confirmed)} untrained twins "
            f"(error rate {n.error_rate:.0%} per model{'' if n.passed else '; the test fails its null'})")


# ---------------------------------------------------------------- per model
def model_claims(m: ModelResults) -> ModelClaims:
    """Every claim the results support about one model, and what was tested and not found."""
    out = ModelClaims(m.name)
    for part in (accuracy_claims, lens_claims, circuit_claims, head_role_claims, probe_claims, ablation_claims):
        found, missing = part(m)
        out.found += found
        out.not_found += missing
    out.summary = " ".join(c.text for c in out.found[:4])
    return out


def accuracy_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    a = m.accuracy
    strata = [s for s in STRATA if s in a.by_stratum]
    weakest = min(strata, key=lambda s: a.by_stratum[s].mean) if strata else None
    held = "held-out" if a.unseen else "generated (possibly seen in training)"
    text = f"{m.label} answers {pct(a.exact_match)} of {a.n} {held} questions exactly"
    if weakest and a.by_stratum[weakest].mean < CEILING:
        text += f"; its weakest stratum is {weakest} at {pct(a.by_stratum[weakest])}"
    found = [Claim(text + ".", "greedy decoding, exact match with 95% Wilson intervals", "", "accuracy")]
    if m.harder is not None:
        h = m.harder
        longer = " (longer than any it trained on)" if h.accuracy.unseen else ""
        found.append(Claim(f"On {h.accuracy.n} problems whose operands have {h.digits} digits{longer}, it answers "
                           f"{pct(h.accuracy.exact_match)} exactly.", "greedy decoding on the harder test", "",
                           "accuracy", "harder-test"))
    iv = m.findings.interventions
    at_ceiling = all(e.mean >= CEILING for e in [a.exact_match, *a.by_stratum.values()])
    if at_ceiling and iv is not None:
        found.append(Claim(
            f"Exact match is at ceiling in every stratum, so it cannot tell this model from another at 100%; the "
            f"margin of the correct digit over the best wrong one (teacher forced) does: {est(iv.clean.margin)} "
            f"nats on average.", "log-probability margin over held-out problems, 95% bootstrap intervals", "",
            "ablations", "ablations"))
    return found, []


def lens_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    lens = m.findings.logit_lens
    if lens is None:
        return [], []
    probs = lens.prob_correct
    formed = next((i for i, e in enumerate(probs) if e.mean >= FORMED), None)
    if formed is None:
        return [], [Claim(f"The logit lens never gives the correct answer digit a probability of {FORMED} or more "
                          f"before the output.", "logit lens", "", "logit-lens")]
    where = "in the embedding" if formed == 0 else f"in block {formed - 1}"
    before = f"{est(probs[formed - 1])} before it and " if formed > 0 else ""
    untrained = lens.untrained_prob_correct[formed]
    text = (f"The answer digit forms {where}: the logit lens gives the correct digit a probability of "
            f"{before}{est(probs[formed])} after it, against {est(untrained)} on an untrained twin.")
    found = [Claim(text, "logit lens (final LayerNorm and unembedding on the residual stream), mean over answer "
                   "digits", f"an untrained twin gives {est(untrained)}", "logit-lens")]
    missing = []
    for role, series in lens.prob_by_role.items():
        guess = lens.majority_by_role.get(role, 1.0)  # unknown (older results): no claim
        at = next((i for i, e in enumerate(series) if e.mean >= FORMED and e.lo > guess), None)
        test = "logit lens at the positions writing scratchpad digits"
        null = f"always guessing the most common digit scores {guess:.2f}"
        if at is not None:
            found.append(Claim(
                f"In the scratchpad, the {ROLE_WORDS[role]} is readable "
                f"{'from the embedding' if at == 0 else f'after block {at - 1}'} ({est(series[at])}, against "
                f"{guess:.2f} for always guessing its most common digit).", test, null, "logit-lens",
                "logit-lens-scratchpad"))
        elif role in lens.majority_by_role:
            missing.append(Claim(
                f"In the scratchpad, the logit lens never reads the {ROLE_WORDS[role]} better than always guessing "
                f"its most common digit ({guess:.2f}); the last layer gives {est(series[-1])}.", test, null,
                "logit-lens", "logit-lens-scratchpad"))
    return found, missing


ROLE_WORDS = {"operand_a": "copy of a's digit", "operand_b": "copy of b's digit", "carry_in": "carry in",
              "sum_digit": "sum digit", "carry_out": "carry out", "step": "multiplication step digit"}

# What heads confirmed at a target do: (verb for one head, verb for several, the rest).
TARGET_PHRASES = {
    "answer": ("carries", "carry", "the carry into answer column {n}"),
    "sum_digit": ("brings", "bring", "the carry into the scratchpad's sum digit of column {n}"),
    "carry_in": ("copies", "copy", "the carry written by the previous step into the carry-in of column {n}"),
    "carry_out": ("writes", "write", "the carry into column {n} at the carry-out token of the step before"),
    "operator": ("carries", "carry", "the operator to answer column {n}"),
}


def circuit_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    circ = m.findings.circuits
    if circ is None:
        return [], []
    nulls = {n.test: n for n in circ.nulls}
    found, missing = [], []
    for test in ("carry_head", "operator_head", "neuron"):
        n = nulls.get(test)
        if n is not None and not n.passed:
            missing.append(Claim(f"The {test.replace('_', ' ')} test confirms components on untrained twins more "
                                 f"often than its error rate allows, so none of its findings is stated.",
                                 n.definition, null_text(n), "circuits", "null-checks"))
    heads = nulls.get("carry_head")
    if heads is not None and heads.passed:
        f, mi = head_claims(circ, heads, "carry_flip")
        found += f
        missing += mi
    ops = nulls.get("operator_head")
    if ops is not None and ops.passed:
        f, mi = head_claims(circ, ops, "operator_flip")
        found += f
        missing += mi
    neurons = nulls.get("neuron")
    if neurons is not None and neurons.passed:
        f, mi = neuron_claims(circ, neurons)
        found += f
        missing += mi
    return found, missing


def head_claims(circ: CircuitFindings, null: NullCheck, kind: str) -> tuple[list[Claim], list[Claim]]:
    """One sentence per target token: the heads confirmed there, column by column, and the
    columns tested where none was."""
    rows = [r for r in circ.recoveries if r.kind == kind and "H" in r.component]
    found, missing = [], []
    test = ("patching a head's output on carry-flip pairs aimed at the column, against sum-flip pairs, every "
            "same-layer head of the untrained twins and their prediction bound") if kind == "carry_flip" else \
        ("patching a head's output on operator-flip pairs, against every same-layer head of the untrained twins "
         "and their prediction bound")
    for target in sorted({r.target for r in rows}, key=lambda t: TARGET_ORDER.get(t, 9)):
        here = [r for r in rows if r.target == target]
        one, several, rest = TARGET_PHRASES["operator" if kind == "operator_flip" else target]
        parts = []
        for n in sorted({r.column for r in here}):
            yes = sorted((r for r in here if r.column == n and r.confirmed), key=lambda r: -r.recovery.mean)
            if not yes:
                best = max((r for r in here if r.column == n), key=lambda r: r.recovery.mean)
                missing.append(Claim(
                    f"No head was confirmed to {several} {rest.format(n=n)}; the largest recovery, {best.component}'s "
                    f"{est(best.recovery)}, {short_of(best)}.", test, null_text(null), "circuits", "head-recovery"))
                continue
            names = listing([f"{r.component} {est(r.recovery)}" for r in yes])
            controls = [r.control.hi for r in yes if r.control is not None]
            twins = max(r.untrained.hi for r in yes if r.untrained is not None)
            bounds = [r.null_threshold for r in yes if r.null_threshold is not None]
            against = (f"sum-flip pairs at most {num(max(controls))}, " if controls else "") + \
                f"untrained-twin heads at most {num(twins)}" + \
                (f", their prediction bound {num(max(bounds))}" if bounds else "")
            parts.append(f"{names} {one if len(yes) == 1 else several} {rest.format(n=n)} ({against})")
        if parts:
            found.append(Claim(
                "Patching one head's output restores this share of the " + kind.replace("_", "-") + " logit "
                "difference: " + "; ".join(parts) + ".", test, null_text(null), "circuits", "head-recovery"))
    return found, missing


def short_of(r: ComponentRecovery) -> str:
    """The bars a head's recovery was held against (it failed at least one), for a sentence saying it
    was not confirmed."""
    bars = [f"sum-flip pairs {est(r.control)}"] if r.control is not None else []
    bars += [f"untrained-twin heads up to {est(r.untrained)}"] if r.untrained is not None else []
    bars += [f"their prediction bound {num(r.null_threshold)}"] if r.null_threshold is not None else []
    return "does not clear every one of " + (listing(bars) if bars else "the test's bars") + " at the test's Bonferroni level"


TARGET_ORDER = {"carry_out": 0, "carry_in": 1, "sum_digit": 2, "answer": 3}


def neuron_claims(circ: CircuitFindings, null: NullCheck) -> tuple[list[Claim], list[Claim]]:
    rows = [r for r in circ.recoveries if "N" in r.component]
    yes = sorted((r for r in rows if r.confirmed), key=lambda r: -r.recovery.mean)
    tested = len({r.component for r in rows})
    test = ("each correlational candidate patched alone on carry-flip pairs, against random neurons of its layer "
            "and sum-flip pairs")
    if not yes:
        what = (f"of {tested} correlational candidates tested, none restores more than random neurons of its layer"
                if tested else "no neuron passed the correlational screen")
        return [], [Claim(f"No MLP neuron was confirmed to carry the carry on its own: {what}.", test,
                          null_text(null), "circuits", "components")]
    by_neuron: dict[str, list[ComponentRecovery]] = {}
    for r in yes:
        by_neuron.setdefault(r.component, []).append(r)
    shown = list(by_neuron.items())[:4]
    names = listing([f"{name} ({'; '.join(f'column {r.column}: {est(r.recovery)}' for r in rs)})" for name, rs in shown])
    more = f" and {len(by_neuron) - len(shown)} more" if len(by_neuron) > len(shown) else ""
    return [Claim(f"{len(by_neuron)} of {tested} correlational neuron candidates carry the carry on their own, e.g. "
                  f"{names}{more}; the others do not beat random neurons of their layer.", test,
                  null_text(null), "circuits", "components")], []


def head_role_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    """Position and delimiter heads: attention kept on one key group at every column."""
    circ = m.findings.circuits
    if circ is None:
        return [], []
    nulls = {n.test: n for n in circ.nulls}
    found, missing = [], []
    for kind, what in (("position_head", "position head"), ("delimiter_head", "delimiter head")):
        n = nulls.get(kind)
        if n is None:
            continue
        if not n.passed:
            missing.append(Claim(f"The {what} test confirms heads on untrained twins more often than its error rate "
                                 f"allows, so none of its findings is stated.", n.definition, null_text(n), "circuits",
                                 "null-checks"))
            continue
        heads = [c for c in circ.components if c.kind == kind and c.confirmed]
        if not heads:
            missing.append(Claim(f"No {what} was confirmed.", n.definition, null_text(n), "attention"))
            continue
        patterns = listing([f"L{c.layer}H{c.index} ({c.note.split('; mass there')[0]}; mass {num(c.score)} against "
                            f"{num(c.null)} in the twins)" for c in heads])
        where = "a delimiter" if kind == "delimiter_head" else "positions set by the layout, not by digit values"
        found.append(Claim(f"{what.capitalize()}s, attending to {where} at every column: {patterns}.",
                           n.definition, null_text(n), "attention"))
    return found, missing


def probe_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    """Per label: where a linear probe first reads it beyond the untrained twins."""
    probing = m.findings.probing
    if probing is None or probing.null is None:
        return [], []
    null = probing.null
    test = "logistic probes against the same probes on untrained twins, Bonferroni over every probe"
    if not null.passed:
        return [], [Claim("The probe test confirms probes on untrained twins more often than its error rate allows, "
                          "so none of its findings is stated.", test, null_text(null), "probing")]
    found, missing = [], []
    for label in dict.fromkeys(p.label for p in probing.probes):
        probes = [p for p in probing.probes if p.label == label]
        yes = [p for p in probes if p.confirmed]
        if not yes:
            missing.append(Claim(f"{label.replace('_', ' ')} was not confirmed linearly decodable beyond the untrained "
                                 f"twins at any of {len(probes)} sites.", test, null_text(null), "probing"))
            continue
        first = min(yes, key=lambda p: (p.layer, hp.forward_rank(p.hook), -p.selectivity.mean))
        best = max(yes, key=lambda p: p.selectivity.mean)
        found.append(Claim(
            f"{label.replace('_', ' ').capitalize()} is linearly decodable beyond the untrained twins in {len(yes)} of "
            f"{len(probes)} probes, first in layer {first.layer} ({hp.short_site(first.hook)}, "
            f"{first.position}); the largest selectivity is {est(best.selectivity)} ({best.position}, layer "
            f"{best.layer}), where the operand digits alone give {num(best.operand_baseline)}.", test,
            null_text(null), "probing"))
    return found, missing


def ablation_claims(m: ModelResults) -> tuple[list[Claim], list[Claim]]:
    iv = m.findings.interventions
    if iv is None:
        return [], []
    clean = iv.clean
    default = iv.default_effects()
    heads = [e for e in default if "H" in e.component]
    found = []
    if heads:
        worst = min(heads, key=lambda e: e.metrics.exact_match.mean)
        if clean.exact_match.mean - worst.metrics.exact_match.mean >= 0.1:
            found.append(Claim(
                f"Ablating {worst.component} ({iv.default_method} ablation) lowers exact match from "
                f"{est(clean.exact_match)} to {est(worst.metrics.exact_match)}, the largest drop of any head "
                f"(importance, not a role).", "ablation of each head, teacher forced", "", "ablations", "ablations"))
    for e in default:
        tf, free = e.metrics.exact_match, e.metrics.free_exact_match
        if free is not None and tf.mean >= clean.exact_match.mean - 0.05 and tf.mean - free.mean >= 0.2:
            found.append(Claim(
                f"Ablating {e.component} leaves teacher-forced exact match at {est(tf)} but free generation falls to "
                f"{est(free)}: the model needs it to write its own scratchpad, which teacher forcing supplies.",
                "ablation with greedy decoding from the prompt against teacher forcing", "", "ablations", "ablations"))
    return found, []


# ---------------------------------------------------------------- between models
def comparison_claims(report: Report) -> list[Claim]:
    """The differences between the models that their intervals support, in sentences, largest
    relative difference first."""
    models = report.models
    sized: list[tuple[float, Claim]] = []
    for i, a in enumerate(models):
        for b in models[i + 1:]:
            sized += difference(a, b, "exact match", a.accuracy.exact_match, b.accuracy.exact_match, "accuracy", True)
            if a.harder is not None and b.harder is not None and a.harder.digits == b.harder.digits:
                sized += difference(a, b, f"exact match on {a.harder.digits}-digit operands",
                                    a.harder.accuracy.exact_match, b.harder.accuracy.exact_match, "accuracy", True)
            ia, ib = a.findings.interventions, b.findings.interventions
            if ia is not None and ib is not None:
                sized += difference(a, b, "mean margin (nats)", ia.clean.margin, ib.clean.margin, "ablations", False)
            la, lb = a.findings.logit_lens, b.findings.logit_lens
            fa = None if la is None else forming_layer(la)
            fb = None if lb is None else forming_layer(lb)
            if None not in (fa, fb) and fa != fb:
                sized.append((1.0, Claim(f"The answer forms in block {fa - 1} in {a.label} but in block {fb - 1} in "
                                         f"{b.label} (logit lens).", "logit lens", "", "logit-lens")))
    return [c for _, c in sorted(sized, key=lambda sc: -sc[0])]


def forming_layer(lens) -> Optional[int]:
    """The first lens index (0 = embedding) whose mean P(correct) reaches FORMED."""
    return next((i for i, e in enumerate(lens.prob_correct) if e.mean >= FORMED), None)


def difference(a: ModelResults, b: ModelResults, what: str, ea: Estimate, eb: Estimate, section: str,
               directional: bool) -> list[tuple[float, Claim]]:
    """(relative size, sentence) for a difference whose 95% intervals do not overlap; none
    otherwise. Only a measure users agree on (directional: accuracy) says 'higher'."""
    if any(math.isnan(x) for x in (ea.lo, ea.hi, eb.lo, eb.hi)) or apart(ea, [eb]) is None:
        return []
    (high, e_high), (low, e_low) = sorted([(a, ea), (b, eb)], key=lambda me: -me[1].mean)
    word = "a higher" if directional else "a larger"
    size = abs(ea.mean - eb.mean) / max(abs(ea.mean), abs(eb.mean), 1e-9)
    return [(size, Claim(f"{high.label} has {word} {what} than {low.label}: {est(e_high)} against {est(e_low)}.",
                         "the two models' 95% intervals do not overlap", "", section))]

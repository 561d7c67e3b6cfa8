"""A realistic synthetic `Report` for the render tests: two models (1 and 2 layers, 4 heads),
every analysis filled with plausible arrays (NaN where a value is missing), and hostile text
(`<script>` in the title, a label and an example key) to check escaping and path sanitising.

Everything is drawn from a seeded generator, so the same call gives the same report.
"""

from __future__ import annotations

import numpy as np

from reportgen.findings import (
    AblationEffect,
    AnalysisFindings,
    AttentionFindings,
    AttributionScore,
    CircuitComponent,
    CircuitFindings,
    ColumnRoles,
    ComponentRecovery,
    Estimate,
    ExampleFindings,
    HeadRole,
    HeadStats,
    InterventionFindings,
    LogitLensFindings,
    Metrics,
    PatchingFindings,
    PatchSweep,
    NullCheck,
    ProbeLayout,
    ProbeResult,
    ProbingFindings,
    Population,
    RoleScore,
)
from reportgen.data.arithmetic import STRATA, make_record
from reportgen.results.compare import compare_models
from reportgen.results.schema import SCHEMA_VERSION, Accuracy, ModelResults, Provenance, Report, TrainingCurve

HOSTILE = "<script>alert('x')</script>"
PROBLEMS = [(59, 73), (12, 34), (88, 99), (999, 1), (405, 95), (7, 5), (123, 456), (650, 350),
            (19, 81), (2, 2), (555, 445), (301, 299), (46, 54), (80, 20), (911, 89), (64, 36)]
ROLES = ["n", "n-1", "operator"]
METHODS = ("mean", "zero")


def _est(rng, mean, spread=0.04, n=200, missing_ci=False) -> Estimate:
    mean = float(np.clip(mean, 0.0, 1.0))
    if missing_ci:
        return Estimate(mean, float("nan"), float("nan"), n)
    lo, hi = mean - spread * rng.uniform(0.5, 1.5), mean + spread * rng.uniform(0.5, 1.5)
    return Estimate(mean, max(0.0, lo), min(1.0, hi), n)


def _tokens(record: dict) -> list[str]:
    return ["BOS", *record["prompt"], *record["target"], "EOS"]


def _attention(rng, n_layers: int, n_heads: int, n_pos: int) -> np.ndarray:
    logits = rng.normal(0, 2, size=(n_layers, n_heads, n_pos, n_pos))
    mask = np.triu(np.ones((n_pos, n_pos), bool), 1)
    logits[..., mask] = -np.inf
    w = np.exp(logits - logits.max(-1, keepdims=True))
    return (w / w.sum(-1, keepdims=True)).astype(np.float32)


def _example(rng, a: int, b: int, n_layers: int, n_heads: int, key: str | None = None) -> ExampleFindings:
    rec = make_record(a, b, "+", False, "plain")
    tokens = _tokens(rec)
    start, end = rec["answer_span"]
    n_ans = end - start
    prob = np.clip(np.linspace(0.1, 0.95, n_layers + 1)[:, None] + rng.normal(0, 0.05, (n_layers + 1, n_ans)), 0, 1)
    correct = rng.uniform() > 0.25
    prediction = rec["target"] if correct else str(rec["answer"] + 10)
    top = np.array([[int(d) for d in rec["target"]]] * (n_layers + 1))
    top[0] = rng.integers(0, 10, n_ans)
    return ExampleFindings(
        key=key or f"{a}plus{b}",
        prompt=rec["prompt"],
        target=rec["target"],
        problem=f"{rec['a']} {rec['op']} {rec['b']}",
        answer=str(rec["answer"]),
        prediction=prediction,
        correct=bool(correct),
        stratum=rec["labels"]["stratum"],
        labels=rec["labels"],
        tokens=tokens,
        answer_positions=list(range(start, end)),
        attention=_attention(rng, n_layers, n_heads, len(tokens)),
        lens_prob=prob.astype(np.float32),
        lens_top=top,
        lens_entropy=(2.3 * (1 - prob)).astype(np.float32),
        convergence=[n_layers if i else None for i in range(n_ans)],
    )


GROUPS = ["n", "n-1", "n-2", "n-3", "prev answer", "earlier answers", "BOS", "operator", "="]
KINDS = ["operand"] * 4 + ["answer", "lump", "delimiter", "delimiter", "delimiter"]


def _attention_findings(rng, n_layers, n_heads) -> AttentionFindings:
    stats, roles = [], []
    for l in range(n_layers):
        for h in range(n_heads):
            stats.append(HeadStats(l, h, *(_est(rng, rng.uniform(0.05, 0.9)) for _ in range(5))))
            for role in ROLES:
                roles.append(RoleScore(l, h, role, _est(rng, rng.uniform(0, 0.8)), 1.0, _est(rng, rng.uniform(0, 0.2))))
    columns, head_roles = _column_roles(rng, n_layers, n_heads)
    return AttentionFindings(stats, roles, columns, head_roles, 0.2)


def _column_roles(rng, n_layers, n_heads) -> tuple[ColumnRoles, list[HeadRole]]:
    """Answer digits of columns 0-3; in layer 0 heads 0-2 form a staircase (column n, n-1, n-2) and
    head 3 sits on '='; column n-k has no key below column k."""
    cols, G = [0, 1, 2, 3], len(GROUPS)
    mass = rng.uniform(0.0, 0.15, (n_layers, n_heads, 1, len(cols), G))
    for c in cols:
        mass[..., c, 1 + c : 4] = np.nan
        if c == 3:
            mass[..., c, 0] = np.nan
    for h, g in ((0, 0), (1, 1), (2, 2), (3, 8)):
        for c in cols:
            if np.isfinite(mass[0, h, 0, c, g]):
                mass[0, h, 0, c, g] = 0.9
    untrained = np.where(np.isfinite(mass), 0.12, np.nan)
    chance = np.where(np.isfinite(mass[0, 0]), 0.1, np.nan)
    table = ColumnRoles([0, 1][:n_layers], ["answer"], cols, GROUPS, KINDS, mass, mass - 0.05, mass + 0.05,
                        untrained, untrained - 0.02, untrained + 0.02, chance,
                        np.where(np.isfinite(chance), 40, 0).astype(np.int64), 3)
    roles = []
    for l in range(n_layers):
        for h in range(n_heads):
            for c in cols:
                m = np.where(np.isfinite(mass[l, h, 0, c]) & (np.array(KINDS) != "lump"), mass[l, h, 0, c], -1)
                g = int(m.argmax())
                roles.append(HeadRole(l, h, "answer", c, GROUPS[g], Estimate(float(m[g]), float(m[g]) - 0.05,
                                      float(m[g]) + 0.05, 40), Estimate(0.12, 0.1, 0.14, 40), 0.1, bool(m[g] > 0.5)))
    return table, roles


def _patching(rng, n_layers, n_heads, positions) -> PatchingFindings:
    sweeps = []
    for kind in ("carry_flip", "sum_flip"):
        for direction in ("denoise", "noise"):
            for site in ("resid_pre", "attn_out", "mlp_out", "head"):
                labels = [f"H{h}" for h in range(n_heads)] if site == "head" else positions
                mean = rng.uniform(-0.1, 1.0, (n_layers, len(labels)))
                mean[0, 0] = np.nan  # every pair dropped at this cell
                lo, hi = mean - 0.1, mean + 0.1
                sweeps.append(PatchSweep(kind, direction, site, mean, lo, hi, labels, 48, 3))
    attribution = [AttributionScore("head", l, h, f"H{h}", float(rng.normal()), float(rng.normal()) if h % 2 else None)
                   for l in range(n_layers) for h in range(n_heads)]
    return PatchingFindings(sweeps, attribution, {"carry_flip": 51, "sum_flip": 51}, {"carry_flip": 3, "sum_flip": 3})


def _lens(rng, n_layers) -> LogitLensFindings:
    labels = ["embed"] + [f"L{l}" for l in range(n_layers)]
    probs = np.linspace(0.12, 0.9, n_layers + 1)
    return LogitLensFindings(
        layer_labels=labels,
        prob_correct=[_est(rng, p) for p in probs],
        rank_correct=[Estimate(4 * (1 - p), 4 * (1 - p) - 0.3, 4 * (1 - p) + 0.3, 200) for p in map(float, probs)],
        entropy=[Estimate(float(2.3 * (1 - p)), float(2.2 * (1 - p)), float(2.4 * (1 - p)), 200) for p in probs],
        kl_to_final=[Estimate(float(3 * (1 - p)), float(2.8 * (1 - p)), float(3.2 * (1 - p)), 200) for p in probs],
        convergence_hist={lab: int(rng.integers(0, 40)) for lab in labels},
        by_stratum={s: [_est(rng, p - 0.1 * i, missing_ci=(s == "cascade" and j == 0)) for j, p in enumerate(probs)]
                    for i, s in enumerate(STRATA)},
        untrained_prob_correct=[_est(rng, 0.1) for _ in probs],
    )


def _circuits(rng, n_layers, n_heads) -> CircuitFindings:
    comps = [
        CircuitComponent("carry_head", 0, 1, 1, 0.62, 0.08, 0.41, 0.03, True),
        CircuitComponent("operator_head", n_layers - 1, 2, None, 0.55, 0.10, 0.05, 0.04, False,
                         "no operator variation in an add-only task"),
        CircuitComponent("position_head", 0, 0, None, 0.91, 0.25, None, None, True,
                         "answer digits: n at columns 0, 1, 2; mass there 0.91"),
        CircuitComponent("delimiter_head", 0, 3, None, 0.90, 0.25, None, None, True,
                         "answer digits: = at columns 0, 1, 2, 3; mass there 0.90"),
        CircuitComponent("neuron", n_layers - 1, 17, 2, 0.88, 0.51, 0.12, 0.02, True),
    ]
    recoveries = [ComponentRecovery(f"L{l}H{h}", l, h, n, "answer", "carry_flip", _est(rng, 0.4 if (l, h) == (0, 1) else 0.02),
                                    _est(rng, 0.3), _est(rng, 0.01), _est(rng, 0.02), 0.11, (l, h, n) == (0, 1, 1))
                  for n in (1, 2) for l in range(n_layers) for h in range(n_heads)]
    nulls = [NullCheck("carry_head", "patching recovers more on carry-flip than sum-flip pairs", 2 * n_layers * n_heads,
                       1, [2 * n_layers * n_heads] * 3, [0, 0, 0], 0.05, True),
             NullCheck("neuron", "patched alone, beats random neurons", 6, 1, [6, 4, 5], [0, 2, 1], 0.05, False),
             NullCheck("position_head", "A position head: fixed-position mass >= 0.5 ...", n_layers * n_heads, 1,
                       [n_layers * n_heads] * 3, [0, 0, 0], 0.05, True),
             NullCheck("delimiter_head", "A delimiter head: fixed-position mass >= 0.5 ...", n_layers * n_heads, 1,
                       [n_layers * n_heads] * 3, [0, 1, 1], 0.05, False)]
    return CircuitFindings(comps, rng.uniform(0, 0.8, (n_layers, n_heads, len(ROLES))), list(ROLES),
                           {"fdr": 0.05, "n_selected": 5, "n_tested": 512}, recoveries, nulls)


def _probing(rng, n_layers) -> ProbingFindings:
    probes = []
    for label in ("carry_in", "digit", "a_digit"):
        for l in range(n_layers):
            for col in range(3):
                acc = float(rng.uniform(0.55, 0.98))
                twins = [float(rng.uniform(0.4, 0.6)) for _ in range(3)]
                sel = acc - float(np.mean(twins))
                probes.append(ProbeResult(
                    label, f"blocks.{l}.hook_resid_post", l, f"predicts answer digit of column {col}", "answer", col, 0,
                    _est(rng, acc), label == "carry_in", 0.55, float(np.mean(twins)), twins,
                    Estimate(sel, sel - 0.1, sel + 0.1, 40), sel - 0.2, sel > 0.2, Estimate(sel, sel - 0.1, sel + 0.1, 40),
                    float(rng.uniform(0.5, 0.9)), [0.01, -0.02, 0.01], [False, False, False], 160, 40))
    null = NullCheck("probe", "selectivity bound above 0", len(probes), sum(p.confirmed for p in probes),
                     [len(probes)] * 3, [0, 0, 0], 0.05, True, "twins' mean selectivity +0.01, -0.02, +0.01")
    return ProbingFindings(probes, seed=0, layouts=[ProbeLayout("ddodd=ddd", "59+73=132", 200, 160, 40)], null=null,
                           n_twins=3, held_out="none of the model's training questions")


def _metrics(rng, em) -> Metrics:
    return Metrics(_est(rng, em), _est(rng, min(1.0, em + 0.05)),
                   Estimate(float(-3 * (1 - em)), float(-3 * (1 - em) - 0.2), float(-3 * (1 - em) + 0.2), 200),
                   {s: _est(rng, em - 0.1 * i) for i, s in enumerate(STRATA)},
                   {s: _est(rng, min(1.0, em + 0.05) - 0.1 * i) for i, s in enumerate(STRATA)},
                   {s: Estimate(-0.5 * i, -0.5 * i - 0.2, -0.5 * i + 0.2, 50) for i, s in enumerate(STRATA)},
                   Estimate(8 * em, 8 * em - 0.5, 8 * em + 0.5, 200),
                   {s: Estimate(8 * em - i, 8 * em - i - 0.5, 8 * em - i + 0.5, 50) for i, s in enumerate(STRATA)},
                   _est(rng, em - 0.1), {s: _est(rng, em - 0.1 * (i + 1)) for i, s in enumerate(STRATA)}, None)


def _interventions(rng, n_layers, n_heads) -> InterventionFindings:
    effects = []
    for method in METHODS:
        for l in range(n_layers):
            for h in range(n_heads):
                effects.append(AblationEffect(f"L{l}H{h}", method, _metrics(rng, rng.uniform(0.3, 0.95))))
            effects.append(AblationEffect(f"L{l}.attn", method, _metrics(rng, rng.uniform(0.1, 0.6))))
            effects.append(AblationEffect(f"L{l}.mlp", method, _metrics(rng, rng.uniform(0.05, 0.5))))
    cumulative = [AblationEffect(f"top-{k}", "mean", _metrics(rng, 0.93 - 0.2 * k)) for k in range(1, 5)]
    return InterventionFindings(_metrics(rng, 0.93), effects, cumulative, "mean")


def make_model(name: str, label: str, n_layers: int, n_examples: int = 6, seed: int = 0,
               hostile_key: bool = False, skip: tuple[str, ...] = (), n_heads: int = 4) -> ModelResults:
    """One model's results; `skip` names analyses left None (not run)."""
    rng = np.random.default_rng(seed)
    examples = [_example(rng, a, b, n_layers, n_heads) for a, b in PROBLEMS[:n_examples]]
    if hostile_key:
        examples.append(_example(rng, 3, 4, n_layers, n_heads, key=f"../{HOSTILE} key"))
    positions = ["BOS", "a2", "a1", "a0", "+", "b2", "b1", "b0", "="]
    findings = AnalysisFindings(
        examples=examples,
        attention=_attention_findings(rng, n_layers, n_heads),
        patching=_patching(rng, n_layers, n_heads, positions),
        logit_lens=_lens(rng, n_layers),
        circuits=_circuits(rng, n_layers, n_heads),
        probing=_probing(rng, n_layers),
        interventions=_interventions(rng, n_layers, n_heads),
        population=Population(300, "train, val and test"),
    )
    for analysis in skip:
        setattr(findings, analysis, None)
    steps = list(range(0, 2001, 250))
    training = TrainingCurve(steps, [float(2.5 * np.exp(-s / 600) + 0.05) for s in steps],
                             [float(min(0.97, s / 2000)) for s in steps])
    provenance = Provenance(
        checkpoint=f"runs/{name}/checkpoint_best.pt",
        file_name="checkpoint_best.pt",
        sha256=f"{seed:02d}" + "ab" * 31,
        model_config={"n_layers": n_layers, "n_heads": n_heads, "d_model": 64, "d_mlp": 256, "n_ctx": 16,
                      "d_vocab": 21},
        train_config={"lr": 0.001, "steps": 2000, "batch_size": 256, "note": HOSTILE},
        task={"task": "add", "min_digits": 1, "max_digits": 3, "with_steps": False, "answer_order": "plain"},
        seed=seed,
        data_manifest_hash="f" * 64,
        versions_training={"torch": "2.13.0", "numpy": "2.4.6"},
        versions_analysis={"torch": "2.13.0", "numpy": "2.4.6", "reportgen": "0.1.0"},
        analysis_config={"n_examples": n_examples, "max_pdf_examples": 4, "seed": 0},
        examples=["59 + 73"],
        reportgen_version="0.1.0",
    )
    drop = 0.12 if n_layers == 1 else 0.04  # the deeper model copes better with carries
    by_stratum = {s: _est(rng, 0.98 - drop * i, 0.02, missing_ci=(i == 3 and n_layers == 1))
                  for i, s in enumerate(STRATA)}
    accuracy = Accuracy(_est(rng, 0.98 - drop * 1.5, 0.02), 0.95, by_stratum, 1000, 0, True)
    return ModelResults(name, label, provenance, accuracy, training, findings)


def make_report(n_examples: int = 6) -> Report:
    """Two models, 1 and 2 layers; the second has probing not run and a hostile example key."""
    models = [
        make_model("tiny-1l", f"tiny 1-layer {HOSTILE}", 1, n_examples, seed=1),
        make_model("tiny-2l", "tiny 2-layer", 2, n_examples, seed=2, hostile_key=True, skip=("probing",)),
    ]
    return Report(SCHEMA_VERSION, f"Synthetic report {HOSTILE}", "2026-01-02T03:04:05Z", models, compare_models(models))

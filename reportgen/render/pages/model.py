"""A model's page (models/<model>.html): its findings, configuration, training, accuracy, one
section per analysis (attention, patching, logit lens, circuits, probing, ablations) and its examples."""

from __future__ import annotations

from typing import Optional

from reportgen import hooks as hp
from reportgen.catalog import ANALYSES
from reportgen.data.arithmetic import TARGET_ROLE_DESCRIPTIONS, TARGET_ROLES
from reportgen.render import figures as F
from reportgen.render.pages.shared import claims_block, delta
from reportgen.render.site import (
    Block, Page, Section, Site, caption, kv_rows, links, not_run, notes, notice, task_text, text,
)
from reportgen.render.tables import Cell, Table, fmt_est, fmt_num
from reportgen.results.claims import CEILING


def page(site: Site, m) -> Page:
    fd = m.findings
    sections = [
        findings_section(site, m),
        overview_section(site, m),
        Section("training", "Training", [site.fig(
            F.training_figure(site.paths.figure(m, "training"), m.training),
            "No training history was saved in the checkpoint.")]),
        accuracy_section(site, m),
    ]
    builders = {"attention": attention_section, "patching": patching_section, "logit_lens": lens_section,
                "circuits": circuits_section, "probing": probing_section, "interventions": ablation_section}
    for a in ANALYSES:
        found = getattr(fd, a.name)
        blocks = builders[a.name](site, m, found) if found is not None else [not_run(a.title.lower())]
        sections.append(Section(a.section, a.title, [b for b in blocks if b is not None]))
    sections.append(examples_section(site, m))
    return Page(site.paths.model(m), "model.html", m.label, sections, {"model": m})


def findings_section(site: Site, m) -> Section:
    """What the model computes, in sentences, and the diagram of its confirmed carry components."""
    circ = m.findings.circuits
    diagram = None if circ is None else site.fig(F.circuit_figure(site.paths.figure(m, "circuit"), circ))
    return Section("findings", "Key findings", [claims_block(site, m)] + ([diagram] if diagram else []))


def overview_section(site: Site, m) -> Section:
    p = m.provenance
    rows = [["task", task_text(p.task)], ["checkpoint", p.file_name], ["sha256", p.sha256],
            ["training seed", p.seed], ["analysis problems", population_text(m.findings.population)]]
    rows += kv_rows(p.model_config)
    return Section("overview", "Configuration", [site.table(Table(
        site.paths.table(m, "config"), caption("config"), ["setting", "value"], rows)),
        links([("Provenance of this model", f"provenance.html#model-{site.paths.models[m.name]}")])])


def accuracy_section(site: Site, m) -> Section:
    a = m.accuracy
    strata = F.ordered_strata(a.by_stratum)
    rows = [["all", a.exact_match]] + [[s, a.by_stratum[s]] for s in strata]
    return Section("accuracy", "Accuracy", [
        text(f"Greedy decoding on a fresh stratified test set of {a.n} problems of the model's own task (seed "
             f"{a.seed}), " + ("none of them in the data set the model was trained on (its train, val or test "
                               "split)" if a.unseen else "which may include training questions: the model's "
                               "training data could not be recovered to leave them out") +
             f". Exact match: the whole final answer right. Mean per-digit accuracy: {fmt_num(a.digit_accuracy)}."),
        site.table(Table(site.paths.table(m, "accuracy"), "Exact-match accuracy overall and per difficulty "
                         "stratum, with 95% Wilson intervals" + CEILING_NOTE, ["stratum", "exact match", ""],
                         ceiling_rows(rows))),
        site.fig(F.accuracy_figure(site.paths.figure(m, "accuracy"), a)),
    ] + harder_blocks(site, m))


def harder_blocks(site: Site, m) -> list[Block]:
    """The harder test (longer operands than trained), where the config asked for it."""
    if m.harder is None:
        return []
    h = m.harder.accuracy
    rows = [["all", h.exact_match]] + [[s, h.by_stratum[s]] for s in F.ordered_strata(h.by_stratum)]
    return [site.table(Table(site.paths.table(m, "harder-test"), f"The harder test: exact match on {h.n} "
                             f"stratified problems whose operands all have {m.harder.digits} digits"
                             + (" (longer than any the model trained on)" if h.unseen else "")
                             + ", with 95% Wilson intervals" + CEILING_NOTE, ["stratum", "exact match", ""],
                             ceiling_rows(rows)))]


def attention_section(site: Site, m, att) -> list[Block]:
    stats = sorted(att.head_stats, key=lambda s: (s.layer, s.head))
    rows = [[f"L{s.layer}H{s.head}", s.entropy, s.prev_token, s.sink, s.equals, s.operator] for s in stats]
    blocks = [text(caption("attention_intro"))]
    scratch = [r for r in (att.columns.query_roles if att.columns else []) if r != "answer"]
    blocks.append(site.fig(F.column_view_figure(site.paths.figure(m, "attention-columns"), att, ["answer"],
                                                "the final-answer digits")))
    blocks.append(head_role_table(site, m, att, ["answer"], "", "the final-answer digits"))
    if scratch:  # one figure per layer: scratchpad rows (role and column) are many
        for l in att.columns.layers:
            blocks.append(site.fig(F.column_view_figure(site.paths.figure(m, f"attention-columns-scratchpad-L{l}"),
                                                        att, scratch, f"the scratchpad digits, layer {l}", [l])))
        blocks.append(head_role_table(site, m, att, scratch, "-scratchpad", "the scratchpad digits"))
    blocks += head_test_summary(site, m)
    blocks.append(site.table(Table(
        site.paths.table(m, "head-stats"), caption("head_stats"),
        ["head", "entropy", "previous token", "BOS (sink)", "'='", "operator"], rows)))
    return [b for b in blocks if b is not None]


def head_role_table(site: Site, m, att, roles: list[str], name: str, what: str) -> Optional[Block]:
    """Each head's role (held key group and its mass) per column, from the per-column table."""
    t = att.columns
    if t is None:
        return None
    cols = list(t.columns)
    held = {(r.layer, r.head, r.query_role, r.column): r for r in att.head_roles if r.held}
    present = {(r.query_role, r.column) for r in att.head_roles}
    multi = len(roles) > 1
    rows = []
    for l in t.layers:
        for h in range(t.mass.shape[1]):
            for role in roles:
                cells = []
                for n in cols:
                    r = held.get((l, h, role, n))
                    cells.append(f"{r.key_group} {fmt_num(r.mass.mean)}" if r else
                                 "—" if (role, n) in present else "")
                if multi and not any(c not in ("—", "") for c in cells):
                    continue  # a head holding nothing at a scratchpad role takes no row
                rows.append([f"L{l}H{h}", *([role] if multi else []), *cells])
    title = (f"Head roles at {what} per column n: the key group holding the head's attention there and its mean "
             f"mass, where that mass beats both chance and the untrained twins by at least "
             f"{F.fmt_margin(att.role_margin)} with its interval above theirs; '—': no group does.")
    if multi:
        title += " Heads holding no group at a role are left out for that role."
    return site.table(Table(site.paths.table(m, f"head-roles{name}"), title,
                            ["head", *(["digit"] if multi else []), *[f"column {n}" for n in cols]], rows))


def head_test_summary(site: Site, m) -> list[Block]:
    """The position- and delimiter-head tests (run with the circuits), each beside its untrained twins."""
    circ = m.findings.circuits
    checks = {c.test: c for c in (circ.nulls if circ else [])}
    out = []
    for kind, name in (("position_head", "Position heads"), ("delimiter_head", "Delimiter heads")):
        c = checks.get(kind)
        if c is None:
            continue
        heads = sorted({f"L{x.layer}H{x.index}" for x in circ.components if x.kind == kind and x.confirmed})
        twins = ", ".join(map(str, c.twin_confirmed))
        listed = f" ({', '.join(heads)})" if heads else ""
        verdict = (f"{c.confirmed} of {c.n_tested} head-role tests confirmed{listed}" if c.passed else
                   f"not reported: the test confirmed components on the untrained twins ({twins}) more often than "
                   f"its error rate allows")
        out.append(f"{name}: {verdict}; on the untrained twins, each judged by the same test against the others: "
                   f"{twins} (family-wise error rate {c.error_rate:g}). {c.definition}")
    if out:
        out.append("Each confirmed head is listed with its pattern by column in the circuits section.")
    return [text(" ".join(out))] if out else []


def patching_section(site: Site, m, pat) -> list[Block]:
    counts = sorted(pat.pair_counts.items(), key=lambda kv: F.pair_rank(kv[0].split("@")[0]) + (kv[0],))
    blocks = [site.table(Table(site.paths.table(m, "patch-pairs"), caption("patch_pairs"),
                               ["pair kind", "pairs", "dropped", "meaning"],
                               [[k, _pair_count(k, n, m.provenance.task), pat.pair_dropped.get(k, 0),
                                 _pair_meaning(k)] for k, n in counts]))]
    figures = F.patching_figures(site.paths.figure(m, "patching"), pat, m.provenance.task)
    blocks += [site.fig(f) for f in figures]
    if pat.attribution:
        top = sorted(pat.attribution, key=lambda a: (-abs(a.estimate), a.site, a.layer, a.index))[:12]
        blocks.append(site.table(Table(
            site.paths.table(m, "attribution"), caption("attribution"),
            ["site", "layer", "role / head", "estimate", "exact"],
            [[a.site, a.layer, a.label, a.estimate, a.exact] for a in top])))
    return blocks


def lens_section(site: Site, m, lens) -> list[Block]:
    rows = [[lab, lens.prob_correct[i], lens.untrained_prob_correct[i], lens.rank_correct[i], lens.entropy[i],
             lens.kl_to_final[i]] for i, lab in enumerate(lens.layer_labels)]
    total = sum(lens.convergence_hist.values())
    order = list(lens.layer_labels) + sorted(set(lens.convergence_hist) - set(lens.layer_labels))
    hist = [[lab, lens.convergence_hist[lab], lens.convergence_hist[lab] / total if total else None]
            for lab in order if lab in lens.convergence_hist]
    return [
        site.fig(F.lens_figure(site.paths.figure(m, "logit-lens"), lens)),
        site.table(Table(site.paths.table(m, "logit-lens"), caption("logit_lens"),
                         ["layer", "P(correct)", "untrained", "rank", "entropy", "KL to final"], rows)),
        site.table(Table(site.paths.table(m, "convergence"), caption("convergence"),
                         ["layer", "answer digits", "share"], hist)),
    ] + lens_roles_table(site, m, lens)


def lens_roles_table(site: Site, m, lens) -> list[Block]:
    """A scratchpad model's lens at every kind of digit it writes."""
    if not lens.prob_by_role:
        return []
    roles = [r for r in TARGET_ROLES if r in lens.prob_by_role]
    guess = lens.majority_by_role
    rows = [[role, TARGET_ROLE_DESCRIPTIONS[role], guess[role] if role in guess else "", *lens.prob_by_role[role]]
            for role in roles]
    return [site.table(Table(site.paths.table(m, "logit-lens-scratchpad"), caption("logit_lens_scratchpad"),
                             ["digit written", "meaning", "guess", *lens.layer_labels], rows))]


def circuits_section(site: Site, m, circ) -> list[Block]:
    broken = {n.test for n in circ.nulls if not n.passed}
    blocks = [
        text(caption("circuits_intro")),
        site.table(Table(site.paths.table(m, "null-checks"), caption("null_checks"),
                         ["test", "definition", "tested", "confirmed", "confirmed on twins", "error rate",
                          "verdict"], [_null_row(n) for n in circ.nulls])),
    ]
    comps = sorted(circ.components, key=lambda c: (c.kind, not c.confirmed, c.layer, c.index, c.column or 0))
    n_listed = sum(c.kind == "neuron" for c in comps)
    n_selected = (circ.neuron_test or {}).get("n_selected", n_listed)
    listed = (f" Neurons: the {n_listed} most selective (largest |AUROC − 0.5|) of the {n_selected} selected by the "
              f"screen are listed." if n_listed < n_selected else "")
    rows = [[c.kind, f"L{c.layer}", c.index, c.column, c.target, c.causal_effect, c.control_effect, c.null,
             _component_verdict(c, broken), c.note] for c in comps]
    blocks.append(site.table(Table(
        site.paths.table(m, "components"), "Components tested: heads whose carry-flip (operator-flip) recovery "
        "reaches the minimum, and the correlational neuron candidates. Recovery is pooled over pairs (per-pair "
        "recoveries weighted by how far each pair's logit difference moves); 'control': the same on sum-flip "
        "pairs aimed at the same column; 'null': the largest recovery of a same-layer head in the untrained "
        "twins (heads) or the neuron's AUROC under shuffled labels (neurons)." + listed,
        ["kind", "layer", "index", "column", "read at", "recovery", "control", "null", "verdict", "note"], rows)))
    heads = [r for r in circ.recoveries if "H" in r.component]
    if heads:
        blocks.append(site.table(Table(
            site.paths.table(m, "head-recovery"), caption("head_recovery"),
            ["head", "pairs", "column", "read at", "recovery", "damage", "sum-flip", "untrained (largest)",
             "untrained bound", "verdict"],
            [[r.component, r.kind, r.column, r.target, r.recovery, r.damage, r.control, r.untrained,
              r.null_threshold, Cell("confirmed" if r.confirmed else "—", strong=r.confirmed)]
             for r in sorted(heads, key=lambda r: (r.kind, r.target, r.column, r.layer, r.index))],
            site_only=True)))
    if circ.neuron_test:
        blocks.append(site.table(Table(site.paths.table(m, "neuron-screen"), caption("neuron_screen"),
                                       ["quantity", "value"], kv_rows(circ.neuron_test))))
    return blocks


def probing_section(site: Site, m, probing) -> list[Block]:
    null = probing.null
    blocks = [text(
        f"Each probe is a logistic regression reading one label at one site: a layer's residual stream at the "
        f"position predicting one target digit, in problems of one layout (same operand and answer lengths, so "
        f"the position plays one role in every row); {probing.held_out or 'problems drawn for probing'}. "
        f"Selectivity is its held-out accuracy minus the mean accuracy of the same probe on "
        f"{probing.n_twins} untrained twins (balanced accuracy where classes are unbalanced). A probe is "
        f"confirmed when its selectivity's lower bound, Bonferroni-corrected over the model's "
        f"{len(probing.probes)} probes (family-wise {probing.alpha:g}), is above 0; the bound's standard error "
        f"combines a bootstrap over held-out problems with the spread of untrained initialisations. Carries are "
        f"functions of the operands, so they are linearly decodable from operand identity alone (the 'operands "
        f"only' column): a probe at that line shows only that the site still holds the inputs.")]
    if probing.layouts:
        blocks.append(notes([f"layout {i}: {lay.template} (e.g. {lay.example}), {lay.n_examples} problems, "
                             f"{lay.n_train} to fit and {lay.n_test} held out" for i, lay in enumerate(probing.layouts)]))
    if null is not None:
        twins = ", ".join(f"{c} of {t}" for c, t in zip(null.twin_confirmed, null.twin_tested))
        line = (f"Null check: the test confirmed {null.confirmed} of {null.n_tested} probes on the model and "
                f"{twins} on the untrained twins (each twin against the others; error rate {null.error_rate:g}); "
                f"{null.note}.")
        blocks.append(text(line + " The test passed its null.") if null.passed else
                      notice(line + " The test confirms components on untrained models more often than its error "
                                    "rate allows, so it is broken here and no probe is reported as confirmed."))
    blocks += [site.fig(f) for f in F.probe_figures(site.paths.figure(m, "probes"), probing)]
    stated = null is None or null.passed
    confirmed = [p for p in probing.probes if p.confirmed] if stated else []
    shown = sorted(confirmed or probing.probes, key=lambda p: -p.selectivity.mean)[:40 if confirmed else 10]
    rows = [[p.label + (" (balanced)" if p.balanced else ""), p.layout, p.position.removeprefix("predicts "),
             hp.label(p.hook), p.accuracy, p.untrained, p.selectivity, p.selectivity_bound, p.over_baseline,
             p.operand_baseline] for p in shown]
    what = "the confirmed probes" if confirmed else "the probes with the highest selectivity (none confirmed)"
    blocks.append(site.table(Table(
        site.paths.table(m, "probes"), f"Linear probes: {what}, by selectivity (at most 40 rows; the figure's data "
        f"lists every probe). Accuracy is held-out (balanced where the label's classes are unbalanced) with a 95% "
        f"bootstrap interval over held-out problems; 'twins' the mean accuracy of the same probe on the untrained "
        f"twins; selectivity = accuracy − twins with its 95% interval and its Bonferroni-corrected lower bound; "
        f"'over best baseline' = accuracy − max(majority class, twins) with its 95% interval; 'operands only' a "
        f"probe on the one-hot digits of both operands (operand identity alone). Position: the digit the position "
        f"predicts, by role and column.",
        ["label", "layout", "position", "site", "accuracy", "twins", "selectivity", "corrected bound",
         "over best baseline", "operands only"], rows, site_only=True)))
    summary = [[r["label"], r["site"], r["positions"], r["confirmed"] if stated else "not stated",
                r["accuracy"], r["untrained"], r["selectivity"], r["operand_baseline"]] for r in F.probe_summary(probing)]
    blocks.append(site.table(Table(
        site.paths.table(m, "probes-by-site"), caption("probes_by_site"),
        ["label", "site", "positions", "confirmed", "mean accuracy", "mean twins", "mean selectivity",
         "mean operands only"], summary)))
    return blocks


def ablation_section(site: Site, m, iv) -> list[Block]:
    clean = iv.clean
    default = sorted(iv.default_effects(), key=lambda e: F.component_rank(e.component))
    scratch = clean.scratchpad_accuracy is not None
    rows = [[e.component, e.metrics.exact_match, delta(e.metrics.exact_match.mean, clean.exact_match.mean),
             e.metrics.free_exact_match, e.metrics.digit_accuracy, e.metrics.margin, e.metrics.logprob]
            + ([e.metrics.scratchpad_accuracy] if scratch else []) for e in default]
    method = F.METHOD_TEXT.get(iv.default_method, f"{iv.default_method} ablation")
    strata = F.ordered_strata({s for e in default for s in e.metrics.by_stratum} | set(clean.by_stratum))
    stratum_rows = []
    for name, metrics in [("none (clean)", clean)] + [(e.component, e.metrics) for e in default]:
        for measure, by in (("exact match", metrics.by_stratum), ("free exact match", metrics.free_by_stratum),
                            ("digit accuracy", metrics.digit_accuracy_by_stratum),
                            ("margin", metrics.margin_by_stratum), ("log-prob", metrics.logprob_by_stratum)):
            stratum_rows.append([name, measure, *[by.get(s) for s in strata]])
    summary = (f"Unablated model on the analysis examples: exact match {fmt_est(clean.exact_match)} teacher forced "
               f"and {fmt_est(clean.free_exact_match)} in free generation, per-digit accuracy "
               f"{fmt_est(clean.digit_accuracy)}, margin {fmt_est(clean.margin)}, answer log-probability "
               f"{fmt_est(clean.logprob)}" + (f", scratchpad digits right {fmt_est(clean.scratchpad_accuracy)}"
                                             if scratch else "") + f". Default method: {method}.")
    return [
        text(summary),
        site.fig(F.ablation_figure(site.paths.figure(m, "ablations"), iv)),
        site.fig(F.cumulative_figure(site.paths.figure(m, "cumulative"), iv)),
        site.table(Table(site.paths.table(m, "ablations"), f"Effect of ablating each component with the default "
                         f"method, {method}: exact match teacher forced (the model reads the correct earlier "
                         f"tokens), its change from the unablated model (Δ), exact match in free generation "
                         f"(greedy decoding from the prompt with the ablation in place, where a broken "
                         f"scratchpad compounds), per-digit accuracy, margin (mean over answer digits of the "
                         f"correct digit's log-probability minus the best wrong digit's; it keeps separating "
                         f"models when exact match is at ceiling) and answer log-probability"
                         + (", and the share of scratchpad digits right (teacher forced)" if scratch else "")
                         + "; 95% bootstrap intervals over examples.",
                         ["component", "exact match", "Δ exact match", "free exact match", "digit accuracy",
                          "margin", "log-prob"] + (["scratchpad digits"] if scratch else []), rows)),
        site.table(Table(site.paths.table(m, "ablations-by-stratum"), f"The measures per difficulty stratum with "
                         f"each component ablated ({method}); a carry-handling component hurts the carry strata "
                         f"far more than no_carry. 95% bootstrap intervals over examples; 'n/a': no example of "
                         f"that stratum.", ["component", "measure", *strata], stratum_rows,
                         site_only=True)),
    ]


def examples_section(site: Site, m) -> Section:
    exs = m.findings.examples
    if not exs:
        return Section("examples", "Examples", [notice("No examples were analysed for this model.")])
    rows = [[Cell(ex.prompt + ex.target, site.paths.example(m, i)), ex.answer, ex.prediction,
             Cell("yes" if ex.correct else "no", strong=not ex.correct), ex.stratum]
            for i, ex in enumerate(exs)]
    return Section("examples", "Examples", [site.table(Table(
        site.paths.table(m, "examples"), "The analysed examples as the model reads them (teacher forced; in "
        f"its format: {task_text(m.provenance.task)}), the answer as a number, the model's greedy "
        "output and its difficulty stratum; each links to a page with its attention and logit lens.",
        ["example", "answer", "greedy prediction", "correct", "stratum"], rows))])


CEILING_NOTE = "; 'at ceiling': 0.99 or more, where exact match can no longer tell models apart (the margin can)."


def ceiling_rows(rows: list[list]) -> list[list]:
    """Rows [label, Estimate] with a third cell saying where the estimate is at ceiling."""
    return [[label, e, "at ceiling" if e.mean >= CEILING else ""] for label, e in rows]


def population_text(pop) -> str:
    """What the aggregate analyses ran on, in words."""
    if pop is None:
        return "not recorded"
    if not pop.held_out_from:
        return f"{pop.n} generated problems (the model's data set could not be recovered: they may include its training questions)"
    return f"{pop.n} held-out problems, none of them in the model's {pop.held_out_from} split{'s' if ',' in pop.held_out_from else ''}"


def _pair_count(kind: str, n: int, task: Optional[dict]):
    """A pair count, or why there are none (operator-flip pairs need a model of '+' and '-')."""
    if kind == "operator_flip" and n == 0 and (task or {}).get("task") != "addsub":
        return Cell(0, text="not applicable: one operator")
    return n


def _pair_meaning(key: str) -> str:
    """What a pair-count key ('carry_flip', or 'carry_flip@sum_digit' for a scratchpad target) means."""
    kind, _, target = key.partition("@")
    return F.PAIR_TEXT.get(kind, "") + (f", read at the scratchpad's {target} token" if target else "")


def _null_row(n) -> list:
    twins = ", ".join(f"{c} of {t}" for c, t in zip(n.twin_confirmed, n.twin_tested)) or "—"
    verdict = Cell("passes its null" if n.passed else "broken: confirms on untrained twins; findings not stated",
                   strong=not n.passed)
    return [n.test, n.definition, n.n_tested, n.confirmed, twins, n.error_rate, verdict]


def _component_verdict(comp, broken: set[str]) -> Cell:
    if comp.kind in broken:
        return Cell("not stated: its test fails its null", strong=True)
    if comp.confirmed:
        return Cell("confirmed", strong=True)
    return Cell("correlational candidate, not confirmed" if comp.kind == "neuron" else "not confirmed")

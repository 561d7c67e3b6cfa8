"""The static site: pages as data (sections of blocks), built from the results alone, and written
through the Jinja2 templates that the PDF shares.

A page is a list of `Section`s; a section holds blocks (text, notices, figures, tables, link lists,
the attention viewer). Figures and tables are numbered when a document is assembled, so the site
(numbered per page) and the PDF (numbered through the document) place the same objects.
Every path comes from `safe_name`; no text from results is ever used raw in a path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import posixpath
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from reportgen.data.arithmetic import STRATUM_DESCRIPTIONS, apply_op, parse_problem
from reportgen.errors import ReportgenError
from reportgen.fingerprint import library_version
from reportgen.render import figures as F
from reportgen.render.search import search_index_js
from reportgen.render.tables import Cell, Table, fmt_est, fmt_num

def _templates_dir() -> Path:
    """templates/ of the source tree (editable install), else the copy a wheel installs."""
    for d in (Path(__file__).resolve().parents[2] / "templates", Path(sys.prefix) / "share" / "reportgen" / "templates"):
        if (d / "base.html").is_file():
            return d
    raise ReportgenError("reportgen's templates are missing; reinstall it (pip install -e . from the repository)")


TEMPLATES = _templates_dir()
ANALYSES = [  # (findings attribute, section id, title)
    ("attention", "attention", "Attention patterns"),
    ("patching", "patching", "Activation patching"),
    ("logit_lens", "logit-lens", "Logit lens"),
    ("circuits", "circuits", "Circuits"),
    ("probing", "probing", "Linear probes"),
    ("interventions", "ablations", "Ablations"),
]


# ---------------------------------------------------------------- page model
@dataclass
class Block:
    """One piece of a section: kind is the partial that renders it (text, notice, figure, table,
    links, notes, viewer); `item` its payload; `number` set when a document is assembled."""

    kind: str
    item: Any
    number: Optional[int] = None


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Block]
    level: int = 1  # 1 = top section of a page


@dataclass
class Page:
    path: str  # from the site root, e.g. "models/tiny.html"
    template: str
    title: str
    sections: list[Section]
    extra: dict = field(default_factory=dict)


def text(s: str) -> Block:
    return Block("text", s)


def notice(s: str) -> Block:
    return Block("notice", s)


def fig_block(f: Optional[F.ReportFigure], missing: str = "") -> Optional[Block]:
    if f is None:
        return notice(missing) if missing else None
    return Block("figure", f)


def links(items: list[tuple[str, str]]) -> Block:
    return Block("links", items)


def notes(items: list[str]) -> Block:
    return Block("notes", items)


def not_run(what: str) -> Block:
    return notice(f"Not run: the {what} analysis was not part of this build, so there is nothing to show here.")


NUMBERED_AS = {"sortable": "table"}  # block kinds numbered with another kind (a sortable table is a table)


def number_blocks(sections: list[Section]) -> list[Section]:
    """Copies of `sections` whose figures and tables are numbered in order of appearance."""
    counters = {"figure": 0, "table": 0}
    out = []
    for s in sections:
        blocks = []
        for b in s.blocks:
            kind = NUMBERED_AS.get(b.kind, b.kind)
            if kind in counters:
                counters[kind] += 1
                b = dataclasses.replace(b, number=counters[kind])
            blocks.append(b)
        out.append(dataclasses.replace(s, blocks=blocks))
    return out


# ---------------------------------------------------------------- names and paths
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_name(raw: str) -> str:
    """A file- and URL-safe name: unsafe characters become '-', and a changed name gets a short
    hash of the original so that two different raw names never collide."""
    name = _UNSAFE.sub("-", str(raw)).strip("-")[:60] or "x"
    if name != raw:
        name = f"{name}-{hashlib.sha256(str(raw).encode()).hexdigest()[:8]}"
    return name


class Paths:
    """Every site path of a report, derived once: model slugs and example slugs per model."""

    def __init__(self, report):
        self.models = {}
        for m in report.models:
            slug = safe_name(m.name)
            while slug in self.models.values():
                slug += "-x"
            self.models[m.name] = slug
        self.examples: dict[str, dict[int, str]] = {}
        for m in report.models:
            seen: dict[str, int] = {}
            slugs = {}
            for i, ex in enumerate(m.findings.examples):
                slug = safe_name(ex.key)
                seen[slug] = seen.get(slug, 0) + 1
                slugs[i] = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
            self.examples[m.name] = slugs

    def model(self, m, anchor: str = "") -> str:
        return f"models/{self.models[m.name]}.html" + (f"#{anchor}" if anchor else "")

    def example(self, m, i: int) -> str:
        return f"examples/{self.models[m.name]}/{self.examples[m.name][i]}.html"

    def example_data(self, m, i: int) -> str:
        return f"examples/{self.models[m.name]}/{self.examples[m.name][i]}.data.js"

    def figure(self, m, name: str) -> str:
        return f"figures/{self.models[m.name]}/{name}"

    def example_figure(self, m, i: int, name: str) -> str:
        return f"figures/{self.models[m.name]}/examples/{self.examples[m.name][i]}-{name}"

    def table(self, m, name: str) -> str:
        return f"tables/{self.models[m.name]}/{name}" if m is not None else f"tables/{name}"


# ---------------------------------------------------------------- small helpers
def distinct_labels(report):
    """The report with every model label made unique (a repeated label gets the model's name), so
    that navigation and comparison columns can tell the models apart."""
    counts: dict[str, int] = {}
    for m in report.models:
        counts[m.label] = counts.get(m.label, 0) + 1
    if all(n == 1 for n in counts.values()):
        return report
    models = [m if counts[m.label] == 1 else dataclasses.replace(m, label=f"{m.label} ({m.name})")
              for m in report.models]
    return dataclasses.replace(report, models=models)


def model_shape(m) -> str:
    c = m.provenance.model_config
    return f"{c.get('n_layers', '?')} layer(s) × {c.get('n_heads', '?')} heads, d_model {c.get('d_model', '?')}"


def task_text(task: dict) -> str:
    if not task:
        return "unknown task"
    steps = "with steps" if task.get("with_steps") else "without steps"
    return (f"{task.get('task', '?')}, {task.get('min_digits', '?')}-{task.get('max_digits', '?')} digits, "
            f"{steps}, {task.get('answer_order', 'plain')} answer order")


def short_hash(h: Optional[str]) -> str:
    return (h or "")[:12] or "n/a"


def layer_labels(m) -> list[str]:
    lens = m.findings.logit_lens
    if lens is not None:
        return list(lens.layer_labels)
    n = int(m.provenance.model_config.get("n_layers", 0))
    return ["embed"] + [f"L{l}" for l in range(n)]


def kv_rows(d: dict) -> list[list]:
    """Rows of (key, value) for a config dict, sorted by key: floats to 4 significant digits (a
    p-value or learning rate must not round to 0.00), nested values as compact JSON."""
    def show(v):
        if isinstance(v, float):
            return Cell(v, text=f"{v:.4g}")
        if isinstance(v, (str, int, bool)) or v is None:
            return v
        return json.dumps(v, sort_keys=True)

    return [[k, show(v)] for k, v in sorted(d.items())]


def _delta(a, b) -> Optional[float]:
    return a - b if a is not None and b is not None and math.isfinite(a) and math.isfinite(b) else None


# ---------------------------------------------------------------- builder
class SiteBuilder:
    """Turns a Report into pages, figures and tables (data only; nothing is written here)."""

    def __init__(self, report, pdf: bool):
        self.report = distinct_labels(report)
        self.paths = Paths(report)
        self.pdf = pdf
        self.figures: list[F.ReportFigure] = []
        self.tables: list[Table] = []

    # -- registration
    def fig(self, f: Optional[F.ReportFigure], missing: str = "") -> Optional[Block]:
        if f is not None:
            self.figures.append(f)
        return fig_block(f, missing)

    def table(self, t: Table) -> Block:
        self.tables.append(t)
        return Block("table", t)

    # -- pages
    def pages(self) -> list[Page]:
        pages = [self.index_page(), self.compare_page(), self.provenance_page()]
        for m in self.report.models:
            pages.append(self.model_page(m))
            pages += [self.example_page(m, i) for i in range(len(m.findings.examples))]
        return pages

    # ------------------------------------------------------------ index
    def index_page(self) -> Page:
        r = self.report
        models = self.table(Table(
            "tables/models", "The models in this report: task, shape, checkpoint (first 12 hex digits of its SHA-256; the CSV "
            "has all 64) "
            "and exact-match accuracy on the model's own stratified test set with its 95% interval.",
            ["model", "task", "shape", "checkpoint", "exact match", "test problems", "examples"],
            [[Cell(m.label, self.paths.model(m)), task_text(m.provenance.task), model_shape(m),
              Cell(m.provenance.sha256, text=short_hash(m.provenance.sha256)), m.accuracy.exact_match, m.accuracy.n, len(m.findings.examples)]
             for m in r.models]))
        contents = []
        for m in r.models:
            contents.append((f"{m.label}: model page", self.paths.model(m)))
            contents += [(f"{m.label}: {title}", self.paths.model(m, sid)) for _, sid, title in ANALYSES]
            contents.append((f"{m.label}: examples ({len(m.findings.examples)})", self.paths.model(m, "examples")))
        contents += [("Comparison of the models", "compare.html"),
                     ("Provenance: checkpoints, configs, versions", "provenance.html"),
                     ("Results data (results.json)", "results.json")]
        if self.pdf:
            contents.append(("The report as one PDF (report.pdf)", "report.pdf"))
        sections = [
            Section("models", "Models", [
                text(f"{len(r.models)} model(s); the first is the primary model, the others are compared with it."),
                models]),
            Section("accuracy", "Accuracy per stratum", [
                text("Exact-match accuracy per difficulty stratum. " + "; ".join(
                    f"{s}: {d}" for s, d in STRATUM_DESCRIPTIONS.items()) + "."),
                self.accuracy_comparison_table()]),
            Section("comparability", "What can be compared", [
                self.groups_table(), *([notes(list(r.comparison.notes))] if r.comparison.notes else []),
                links([("Full comparison", "compare.html")])]),
            Section("contents", "Contents", [links(contents)]),
        ]
        return Page("index.html", "index.html", r.title, sections)

    def accuracy_comparison_table(self, key: str = "tables/accuracy-by-stratum") -> Block:
        r = self.report
        strata = F.ordered_strata({s for m in r.models for s in m.accuracy.by_stratum})
        leaders = {(l.stratum, l.best) for l in r.comparison.leaders  # apart as the cells show them, too
                   if not l.ci_overlap and _shown(l.exact_match.lo) > _shown(l.runner_up_exact_match.hi)}
        rows = []
        for s in ["all", *strata]:
            row = [s]
            for m in r.models:
                e = m.accuracy.exact_match if s == "all" else m.accuracy.by_stratum.get(s)
                row.append(Cell(e, strong=(s, m.name) in leaders))
            rows.append(row)
        return self.table(Table(
            key, "Exact-match accuracy per difficulty stratum with 95% Wilson intervals, one column per model. "
            "Bold: the best model on that stratum where its interval does not overlap the runner-up's "
            "(among models tested on the same task and digits).",
            ["stratum", *[m.label for m in r.models]], rows))

    def groups_table(self) -> Block:
        from_aspect = {}
        for g in self.report.comparison.groups:
            from_aspect.setdefault(g.aspect, []).append(g)
        labels = {m.name: m.label for m in self.report.models}
        rows = [[aspect, "; ".join(f"{', '.join(labels.get(n, n) for n in g.models)} ({g.basis})" for g in gs),
                 "yes" if len(gs) == 1 else "only within each group"]
                for aspect, gs in from_aspect.items()]
        return self.table(Table(
            "tables/comparability", "Comparability of the models per aspect: models in the same group share what the "
            "aspect needs (accuracy: task and digit range; positions: also the input format; heads: layers and "
            "heads; layers: number of layers).", ["aspect", "groups", "all comparable"], rows))

    # ------------------------------------------------------------ model
    def model_page(self, m) -> Page:
        fd = m.findings
        sections = [
            self.overview_section(m),
            Section("training", "Training", [self.fig(
                F.training_figure(self.paths.figure(m, "training"), m.training),
                "No training history was saved in the checkpoint.")]),
            self.accuracy_section(m),
        ]
        builders = {"attention": self.attention_section, "patching": self.patching_section,
                    "logit_lens": self.lens_section, "circuits": self.circuits_section,
                    "probing": self.probing_section, "interventions": self.ablation_section}
        for attr, sid, title in ANALYSES:
            found = getattr(fd, attr)
            blocks = builders[attr](m, found) if found is not None else [not_run(title.lower())]
            sections.append(Section(sid, title, [b for b in blocks if b is not None]))
        sections.append(self.examples_section(m))
        return Page(self.paths.model(m), "model.html", m.label, sections, {"model": m})

    def overview_section(self, m) -> Section:
        p = m.provenance
        rows = [["task", task_text(p.task)], ["checkpoint", p.file_name], ["sha256", p.sha256],
                ["training seed", p.seed]] + kv_rows(p.model_config)
        return Section("overview", "Configuration", [self.table(Table(
            self.paths.table(m, "config"), "Model configuration and task; the full training and analysis "
            "configuration is on the provenance page.", ["setting", "value"], rows)),
            links([("Provenance of this model", f"provenance.html#model-{self.paths.models[m.name]}")])])

    def accuracy_section(self, m) -> Section:
        a = m.accuracy
        strata = F.ordered_strata(a.by_stratum)
        rows = [["all", a.exact_match]] + [[s, a.by_stratum[s]] for s in strata]
        return Section("accuracy", "Accuracy", [
            text(f"Greedy decoding on a fresh stratified test set of {a.n} problems of the model's own task (seed "
                 f"{a.seed}), " + ("none of them in the data set the model was trained on (its train, val or test "
                                   "split)" if a.unseen else "which may include training questions: the model's "
                                   "training data could not be recovered to leave them out") +
                 f". Exact match: the whole final answer right. Mean per-digit accuracy: {fmt_num(a.digit_accuracy)}."),
            self.table(Table(self.paths.table(m, "accuracy"), "Exact-match accuracy overall and per difficulty "
                             "stratum, with 95% Wilson intervals.", ["stratum", "exact match"], rows)),
            self.fig(F.accuracy_figure(self.paths.figure(m, "accuracy"), a)),
        ])

    def attention_section(self, m, att) -> list[Block]:
        stats = sorted(att.head_stats, key=lambda s: (s.layer, s.head))
        rows = [[f"L{s.layer}H{s.head}", s.entropy, s.prev_token, s.sink, s.equals, s.operator] for s in stats]
        role_rows = []
        for role in dict.fromkeys(r.role for r in att.role_scores):
            best = sorted((r for r in att.role_scores if r.role == role),
                          key=lambda r: (-_finite_or(r.score.mean), r.layer, r.head))[:3]
            role_rows += [[role, f"L{r.layer}H{r.head}", r.score, r.untrained, r.chance] for r in best]
        return [
            text("Attention at the positions that predict answer digits, teacher forced on the model's own input "
                 "format. The interactive per-example viewer is on each example's page."),
            self.fig(F.role_figure(self.paths.figure(m, "role-scores"), att)),
            self.table(Table(self.paths.table(m, "role-top"), "The three heads with the highest score per role "
                             "(attention mass on the role's alignment mask; a head that followed the mask exactly "
                             "scores 1), against the same head in an untrained model and the mass a uniform head "
                             "would put there ('uniform': 1/visible keys per key); 95% bootstrap intervals over "
                             "examples.", ["role", "head", "score", "untrained", "uniform"], role_rows)),
            self.table(Table(self.paths.table(m, "head-stats"), "Per-head statistics at the answer-predicting "
                             "positions, mean over examples with 95% bootstrap intervals: attention entropy "
                             "normalised by log(number of visible keys) (1 = uniform), and the attention mass on the "
                             "previous token, the first (BOS, sink) token, the '=' token and the operator.",
                             ["head", "entropy", "previous token", "BOS (sink)", "'='", "operator"], rows)),
        ]

    def patching_section(self, m, pat) -> list[Block]:
        counts = sorted(pat.pair_counts.items(), key=lambda kv: F.pair_rank(kv[0]))
        blocks = [self.table(Table(self.paths.table(m, "patch-pairs"), "Minimal pairs generated from the ground "
                                   "truth, per kind, and how many were dropped because the clean and corrupted "
                                   "logit differences were too close to normalise by.",
                                   ["pair kind", "pairs", "dropped", "meaning"],
                                   [[k, _pair_count(k, n, m.provenance.task), pat.pair_dropped.get(k, 0),
                                     F.PAIR_TEXT.get(k, "")] for k, n in counts]))]
        blocks += [self.fig(f) for f in F.patching_figures(self.paths.figure(m, "patching"), pat)]
        if pat.attribution:
            top = sorted(pat.attribution, key=lambda a: (-abs(a.estimate), a.site, a.layer, a.index))[:12]
            blocks.append(self.table(Table(
                self.paths.table(m, "attribution"), "Attribution patching: first-order (gradient) estimates of a "
                "patch's effect, used only to rank candidates (largest |estimate| first), per site, layer and token "
                "role or head; 'exact' is the exact patching result where it was run to confirm.",
                ["site", "layer", "role / head", "estimate", "exact"],
                [[a.site, a.layer, a.label, a.estimate, a.exact] for a in top])))
        return blocks

    def lens_section(self, m, lens) -> list[Block]:
        rows = [[lab, lens.prob_correct[i], lens.untrained_prob_correct[i], lens.rank_correct[i], lens.entropy[i],
                 lens.kl_to_final[i]] for i, lab in enumerate(lens.layer_labels)]
        total = sum(lens.convergence_hist.values())
        order = list(lens.layer_labels) + sorted(set(lens.convergence_hist) - set(lens.layer_labels))
        hist = [[lab, lens.convergence_hist[lab], lens.convergence_hist[lab] / total if total else None]
                for lab in order if lab in lens.convergence_hist]
        return [
            self.fig(F.lens_figure(self.paths.figure(m, "logit-lens"), lens)),
            self.table(Table(self.paths.table(m, "logit-lens"), "Logit lens per layer, means over answer digits "
                             "and examples with 95% bootstrap intervals: probability of the correct digit among "
                             "digits, the same on an untrained model of the same shape (baseline), its rank among "
                             "digits (0 = top-1), entropy of the digit distribution (nats) and KL(final ‖ layer) "
                             "(nats).", ["layer", "P(correct)", "untrained", "rank", "entropy", "KL to final"], rows)),
            self.table(Table(self.paths.table(m, "convergence"), "Convergence layer: the first layer at which the "
                             "model's final answer digit is top-1 among digits (later layers may still change "
                             "their top-1 before the last), counted over answer digits.", ["layer", "answer digits", "share"], hist)),
        ]

    def circuits_section(self, m, circ) -> list[Block]:
        comps = sorted(circ.components, key=lambda c: (c.kind, -abs(c.score - 0.5), c.layer, c.index)
                       if c.kind == "neuron" else (c.kind, c.layer, c.index))
        n_listed = sum(c.kind == "neuron" for c in comps)
        n_selected = (circ.neuron_test or {}).get("n_selected", n_listed)
        listed = (f" Neurons: the {n_listed} most selective (largest |AUROC − 0.5|) of the {n_selected} selected are "
                  f"listed; the set test ablates all {n_selected}." if n_listed < n_selected else "")
        rows = [[c.kind, f"L{c.layer}", c.index, c.column, c.score, c.null, c.causal_effect, c.control_effect,
                 Cell("confirmed" if c.confirmed else "not confirmed", strong=c.confirmed), c.note] for c in comps]
        blocks = [
            text("Candidates come from correlational scores (role scores, AUROC, offset consistency) and count only "
                 "when a causal test confirms them: a carry head's ablation must hurt the carry-dependent stratum "
                 "far more than the carry-free stratum at its column; an operator head must carry the operator "
                 "(operator-flip patching through it); a neuron set's ablation must beat a random set of equal size."),
            self.table(Table(self.paths.table(m, "components"), "Circuit components: the selection score and its "
                             "null (untrained model, shuffled labels or random set), the causal effect (e.g. accuracy "
                             "drop on the carry-dependent stratum) and the control effect (e.g. drop on the "
                             "carry-free stratum or for a random set of equal size)." + listed,
                             ["kind", "layer", "index", "column", "score", "null", "causal effect", "control effect",
                              "verdict", "note"], rows)),
        ]
        if circ.neuron_test:
            blocks.append(self.table(Table(self.paths.table(m, "neuron-test"), "Specialised-neuron test: ablating "
                                           "the selected neurons together against random sets of equal size, with "
                                           "the multiple-comparison control used.", ["quantity", "value"],
                                           kv_rows(circ.neuron_test))))
        return blocks

    def probing_section(self, m, probing) -> list[Block]:
        summary = F.probe_summary(probing)
        rows = [[r["label"] + (" (balanced)" if r["balanced"] else ""), r["site"], r["positions"], r["accuracy"],
                 r["control"], r["selectivity"], r["majority"], r["untrained"], r["operand_baseline"]] for r in summary]
        return [
            self.fig(F.probe_figure(self.paths.figure(m, "probes"), probing)),
            self.table(Table(self.paths.table(m, "probes"), "Linear probes per label and site, averaged over answer "
                             "positions: held-out accuracy ('balanced': balanced accuracy, for labels with unbalanced "
                             "classes, in every column and baseline), control-task accuracy, selectivity (accuracy − "
                             "control), majority-class baseline, the same probe on an untrained model, and a probe on "
                             "the digits of both operands in every column (operand identity alone).", ["label", "site", "positions", "accuracy", "control",
                                                       "selectivity", "majority", "untrained", "operands only"], rows)),
        ]

    def ablation_section(self, m, iv) -> list[Block]:
        clean = iv.clean
        default = [e for e in iv.effects if e.method == iv.default_method]
        rows = [[e.component, e.metrics.exact_match, _delta(e.metrics.exact_match.mean, clean.exact_match.mean),
                 e.metrics.digit_accuracy, e.metrics.logprob]
                for e in sorted(default, key=lambda e: F.component_rank(e.component))]
        method = F.METHOD_TEXT.get(iv.default_method, f"{iv.default_method} ablation")
        strata = F.ordered_strata({s for e in default for s in e.metrics.by_stratum} | set(clean.by_stratum))
        stratum_rows = []
        for name, metrics in [("none (clean)", clean)] + [(e.component, e.metrics) for e in
                                                          sorted(default, key=lambda e: F.component_rank(e.component))]:
            for measure, by in (("exact match", metrics.by_stratum), ("digit accuracy", metrics.digit_accuracy_by_stratum),
                                ("log-prob", metrics.logprob_by_stratum)):
                stratum_rows.append([name, measure, *[by.get(s) for s in strata]])
        return [
            text(f"Unablated model on the analysis examples: exact match {fmt_est(clean.exact_match)}, per-digit "
                 f"accuracy {fmt_est(clean.digit_accuracy)}, answer log-probability {fmt_est(clean.logprob)}. "
                 f"Default method: {method}."),
            self.fig(F.ablation_figure(self.paths.figure(m, "ablations"), iv)),
            self.fig(F.cumulative_figure(self.paths.figure(m, "cumulative"), iv)),
            self.table(Table(self.paths.table(m, "ablations"), f"Effect of ablating each component with the default "
                             f"method, {method}: exact match, its change from the unablated model (Δ), per-digit "
                             f"accuracy and answer log-probability (teacher forced, summed over answer digits); 95% "
                             f"bootstrap intervals over examples.",
                             ["component", "exact match", "Δ exact match", "digit accuracy", "log-prob"], rows)),
            self.table(Table(self.paths.table(m, "ablations-by-stratum"), f"Exact match, per-digit accuracy and "
                             f"answer log-probability per difficulty stratum with each component ablated ({method}); "
                             f"a carry-handling component hurts the carry strata far more than no_carry. 95% "
                             f"bootstrap intervals over examples; 'n/a': no example of that stratum.",
                             ["component", "measure", *strata], stratum_rows)),
        ]

    def examples_section(self, m) -> Section:
        exs = m.findings.examples
        if not exs:
            return Section("examples", "Examples", [notice("No examples were analysed for this model.")])
        rows = [[Cell(ex.prompt + ex.target, self.paths.example(m, i)), _answer(ex), ex.prediction,
                 Cell("yes" if ex.correct else "no", strong=not ex.correct), ex.stratum]
                for i, ex in enumerate(exs)]
        return Section("examples", "Examples", [self.table(Table(
            self.paths.table(m, "examples"), "The analysed examples as the model reads them (teacher forced; in "
            f"its format: {task_text(m.provenance.task)}), the answer as a number, the model's greedy "
            "output and its difficulty stratum; each links to a page with its attention and logit lens.",
            ["example", "answer", "greedy prediction", "correct", "stratum"], rows))])

    # ------------------------------------------------------------ example
    def example_page(self, m, i: int) -> Page:
        ex = m.findings.examples[i]
        labels = ex.labels if isinstance(ex.labels, dict) else {}
        facts = [["prompt + target", ex.prompt + ex.target], ["answer", _answer(ex)],
                 ["task and format", task_text(m.provenance.task)], ["greedy prediction", ex.prediction],
                 ["correct", Cell("yes" if ex.correct else "no", strong=not ex.correct)], ["stratum", ex.stratum]]
        facts += [[k, labels[k]] for k in ("n_carries", "longest_cascade") if k in labels]
        slug = self.paths.examples[m.name][i]
        sections = [Section("summary", "Example", [self.table(Table(
            self.paths.table(m, f"examples/{slug}-summary"), f"Example {ex.prompt}{ex.target} of model {m.label}.",
            ["fact", "value"], facts))])]
        columns = labels.get("columns") or []
        if columns:
            keys = [k for k in ("n", "a", "b", "carry_in", "carry_out", "digit", "propagate", "cascade_len")
                    if k in columns[0]]
            sections[0].blocks.append(self.table(Table(
                self.paths.table(m, f"examples/{slug}-columns"), "Ground truth per answer column (n = 0 is the least "
                "significant): operand digits, carry in and out, the column's answer digit, whether a carry would "
                "cascade through it (propagate) and the length of the carry chain it belongs to.",
                keys, [[c.get(k) for k in keys] for c in columns])))
        has_attention = _has_attention(ex)
        attn_blocks = [Block("viewer", self.viewer_context(m, i))] if has_attention else []
        attn_blocks += [self.fig(F.attention_example_figure(self.paths.example_figure(m, i, f"attn-L{l}"), ex, l))
                        for l in range(np.asarray(ex.attention).shape[0] if has_attention else 0)]
        sections.append(Section("attention", "Attention", attn_blocks or [notice("No attention was recorded.")]))
        labels_l = layer_labels(m)
        lens_blocks = []
        prob = np.asarray(ex.lens_prob)
        if prob.ndim == 2 and prob.size and prob.shape[0] == len(labels_l):
            answer_order = m.provenance.task.get("answer_order", "plain") if m.provenance.task else "plain"
            lens_blocks.append(self.fig(F.lens_example_figure(self.paths.example_figure(m, i, "lens"), ex, labels_l,
                                                              answer_order)))
            conv = [labels_l[c] if c is not None and 0 <= c < len(labels_l) else "never" for c in ex.convergence]
            digits = F.digit_labels(ex, answer_order)
            lens_blocks.append(self.table(Table(
                self.paths.table(m, f"examples/{slug}-lens"), "Per answer digit: the first layer at which the final "
                "answer is top-1 among digits, and the probability of the correct digit at the last layer.",
                ["answer digit", "converges at", "final P(correct)"],
                [[d, c, float(prob[-1, j])] for j, (d, c) in enumerate(zip(digits, conv))])))
        sections.append(Section("lens", "Logit lens", lens_blocks or [notice("No logit-lens data for this example.")]))
        pager = {"model_href": self.paths.model(m), "prev": self.paths.example(m, i - 1) if i > 0 else None,
               "next": self.paths.example(m, i + 1) if i + 1 < len(m.findings.examples) else None}
        return Page(self.paths.example(m, i), "example.html", f"{ex.prompt}{ex.target}", sections,
                    {"model": m, "example": ex, "pager": pager,
                     "data_js": self.paths.example_data(m, i) if has_attention else None})

    def viewer_context(self, m, i: int) -> dict:
        ex = m.findings.examples[i]
        att = np.asarray(ex.attention)
        models = []
        for other in self.report.models:
            keys = [e.key for e in other.findings.examples]
            if not keys:
                continue
            j = keys.index(ex.key) if ex.key in keys else 0
            models.append({"label": other.label, "href": self.paths.example(other, j), "selected": other is m})
        return {
            "id": f"{self.paths.models[m.name]}/{self.paths.examples[m.name][i]}",
            "models": models,
            "examples": [{"label": e.prompt + e.target, "href": self.paths.example(m, j), "selected": j == i}
                         for j, e in enumerate(m.findings.examples)],
            "layers": att.shape[0], "heads": att.shape[1],
        }

    def viewer_data_js(self, m, i: int) -> str:
        ex = m.findings.examples[i]
        ident = f"{self.paths.models[m.name]}/{self.paths.examples[m.name][i]}"
        data = {"tokens": list(ex.tokens), "answer_positions": list(ex.answer_positions),
                "weights": np.round(np.asarray(ex.attention, dtype=float), 4)}
        return ("window.REPORTGEN_ATTENTION = window.REPORTGEN_ATTENTION || {};\n"
                f"window.REPORTGEN_ATTENTION[{json.dumps(ident)}] = {F.to_json(data).strip()};\n")

    # ------------------------------------------------------------ compare
    def compare_page(self) -> Page:
        r = self.report
        sections = [
            Section("notes", "What is comparable", [
                text("Models are compared per aspect only where they share what that aspect needs; the notes say "
                     "what is not comparable and why."),
                self.groups_table(),
                notes(list(r.comparison.notes) or ["All models are comparable on every aspect."])]),
            Section("accuracy", "Accuracy per stratum", [self.accuracy_comparison_table("tables/compare-accuracy")]),
            self.compare_lens_section(),
            self.compare_probe_section(),
            self.compare_heads_section(),
            self.compare_ablation_section(),
        ]
        return Page("compare.html", "compare.html", "Comparison of the models", sections)

    def _group_note(self, aspect: str) -> list[Block]:
        groups = [g for g in self.report.comparison.groups if g.aspect == aspect]
        if len(groups) <= 1:
            return []
        labels = {m.name: m.label for m in self.report.models}
        parts = "; ".join(f"{', '.join(labels.get(n, n) for n in g.models)} ({g.basis})" for g in groups)
        return [notice(f"Not directly comparable across groups ({aspect}): {parts}. Compare rows only within a "
                       f"group; a missing entry means the model has no such component or the analysis was not run.")]

    def _highlighted(self, estimates: list, models: list, aspect: str) -> list:
        """Cells for one row of per-model estimates: bold where one model beats every other model it is
        comparable with (on `aspect`) by more than the 95% intervals allow, as the cells show them
        (rounded to 2 decimals, so a reader can see it); '—' where it has none."""
        group_of = {n: i for i, g in enumerate(g for g in self.report.comparison.groups if g.aspect == aspect)
                    for n in g.models}
        cells = []
        for i, (m, e) in enumerate(zip(models, estimates)):
            if e is None:
                cells.append("—")
                continue
            rivals = [o for j, (n, o) in enumerate(zip(models, estimates))
                      if j != i and o is not None and n.name in group_of and group_of.get(m.name) == group_of[n.name]]
            best = bool(rivals) and all(_shown(_finite_or(e.lo)) > _shown(_finite_or(o.hi, math.inf)) for o in rivals)
            cells.append(Cell(e, strong=best))
        return cells

    def compare_lens_section(self) -> Section:
        models = [m for m in self.report.models if m.findings.logit_lens is not None]
        if not models:
            return Section("logit-lens", "Logit-lens convergence", [not_run("logit lens")])
        final = [m.findings.logit_lens.prob_correct[-1] for m in models]
        rows = [["final layer P(correct)", *self._highlighted(final, models, "layers")]]
        labels = list(dict.fromkeys(lab for m in models for lab in m.findings.logit_lens.layer_labels))
        for lab in labels:
            row = [f"share converging at {lab}"]
            for m in models:
                hist = m.findings.logit_lens.convergence_hist
                total = sum(hist.values())
                row.append(hist[lab] / total if lab in hist and total else None)
            rows.append(row)
        return Section("logit-lens", "Logit-lens convergence", [*self._group_note("layers"), self.table(Table(
            "tables/compare-logit-lens", "Logit lens per model: probability of the correct digit after the last "
            "layer (95% bootstrap interval), and the share of answer digits whose final answer first becomes top-1 "
            "among digits at each layer. Layer labels mean the same depth "
            "only between models with the same number of layers. Bold: higher than every model with the same number "
            "of layers, beyond the 95% intervals.", ["quantity", *[m.label for m in models]], rows))])

    def compare_probe_section(self) -> Section:
        models = [m for m in self.report.models if m.findings.probing is not None]
        if not models:
            return Section("probing", "Probe accuracy per layer and label", [not_run("probing")])
        summaries = {m.name: {(r["label"], r["site"]): r for r in F.probe_summary(m.findings.probing)} for m in models}
        order = {}
        for summary in summaries.values():
            for k, r in summary.items():
                order.setdefault(k, (r["label"], r["layer"], F._hook_rank(r["hook"]), r["site"]))
        keys = sorted(order, key=order.get)
        rows = []
        for label, site in keys:
            found = [summaries[m.name].get((label, site)) for m in models]
            balanced = {r["balanced"] for r in found if r}
            row = [label, site, "balanced accuracy" if balanced == {True} else "accuracy" if balanced == {False}
                   else "balanced accuracy for " + ", ".join(m.label for m, r in zip(models, found) if r and r["balanced"])]
            for r in found:
                row += [r["accuracy"], r["selectivity"]] if r else [None, None]
            rows.append(row)
        missing = [m.label for m in self.report.models if m.findings.probing is None]
        extra = [notice(f"Probing not run for: {', '.join(missing)}.")] if missing else []
        table = self.table(Table(
            "tables/compare-probes", "Held-out probe accuracy per label and site (balanced accuracy where the "
            "label's classes are unbalanced), averaged over answer positions, and its selectivity (accuracy − "
            "control-task accuracy) per model; 'n/a': no such site in that model.",
            ["label", "site", "metric", *[f"{m.label} {q}" for m in models for q in ("accuracy", "selectivity")]], rows))
        return Section("probing", "Probe accuracy per layer and label", [*self._group_note("layers"), *extra, table])

    def compare_heads_section(self) -> Section:
        rows = []
        for m in self.report.models:
            att, circ, iv = m.findings.attention, m.findings.circuits, m.findings.interventions
            if att is None:
                continue
            effects = {}
            if iv is not None:
                clean = iv.clean.exact_match.mean
                effects = {e.component: _delta(clean, e.metrics.exact_match.mean)
                           for e in iv.effects if e.method == iv.default_method}
            causal = {(c.kind, c.layer, c.index): c for c in (circ.components if circ else [])}
            for role in dict.fromkeys(r.role for r in att.role_scores):
                best = min((r for r in att.role_scores if r.role == role),
                           key=lambda r: (-_finite_or(r.score.mean), r.layer, r.head))
                kind = ROLE_CIRCUIT.get(role)
                verdict = _verdict(causal.get((kind, best.layer, best.head))) if kind else "no causal test of this role"
                rows.append([m.label, role, f"L{best.layer}H{best.head}", best.score, best.untrained,
                             effects.get(f"L{best.layer}H{best.head}"), verdict])
        if not rows:
            return Section("heads", "Top heads per role", [not_run("attention")])
        return Section("heads", "Top heads per role", [*self._group_note("heads"), self.table(Table(
            "tables/compare-heads", "The head with the highest role score per role and model (95% bootstrap "
            "interval), the same head untrained, the drop in exact match when it is ablated with the model's "
            "default method (clean − ablated; positive = the head matters), and the verdict of the circuit test of "
            "that role (carry_source: carry head; operator: operator head).",
            ["model", "role", "head", "role score", "untrained", "ablation drop", "circuit"], rows))])

    def compare_ablation_section(self) -> Section:
        models = [m for m in self.report.models if m.findings.interventions is not None]
        if not models:
            return Section("ablations", "Ablation effects", [not_run("ablation")])
        by = {m.name: {e.component: e.metrics.exact_match for e in m.findings.interventions.effects
                       if e.method == m.findings.interventions.default_method} for m in models}
        comps = sorted({c for d in by.values() for c in d}, key=F.component_rank)
        rows = [["none (clean)", *self._highlighted([m.findings.interventions.clean.exact_match for m in models],
                                                    models, "accuracy")]]
        rows += [[c, *self._highlighted([by[m.name].get(c) for m in models], models, "heads")] for c in comps]
        methods = ", ".join(sorted({f"{m.label}: {m.findings.interventions.default_method}" for m in models}))
        return Section("ablations", "Ablation effects", [*self._group_note("heads"), self.table(Table(
            "tables/compare-ablations", f"Exact match with each component ablated (default method per model — "
            f"{methods}; mean/resample ablation unless labelled zero), 95% bootstrap intervals; '—': the model "
            f"has no such component. Bold: higher than every model of the same shape (or, for the clean row, the same "
            f"task), beyond the 95% intervals.", ["component", *[m.label for m in models]], rows))])

    # ------------------------------------------------------------ provenance
    def provenance_page(self) -> Page:
        sections = [Section("data", "Results data", [
            text("Everything in this report is rendered from these files (the PDF carries them as attachments); "
                 "`reportgen render` re-renders them without a model or torch."),
            links([("results.json (all results except arrays)", "results.json"),
                   ("arrays.npz (the arrays results.json refers to)", "arrays.npz")]),
            self.table(Table("tables/render-versions", "Versions of the libraries that drew the figures and "
                             "typeset this report.", ["library", "version"],
                             [[lib, library_version(lib) or "not installed"] for lib in RENDER_LIBRARIES]))])]
        for m in self.report.models:
            p = m.provenance
            slug = self.paths.models[m.name]
            facts = [["model", m.label], ["checkpoint", p.checkpoint], ["file name", p.file_name], ["sha256", p.sha256],
                     ["training seed", p.seed], ["data manifest hash", p.data_manifest_hash],
                     ["reportgen version", p.reportgen_version],
                     ["examples given", ", ".join(p.examples) if p.examples else "chosen by the analyses"]]
            versions = sorted(set(p.versions_training) | set(p.versions_analysis))
            blocks = [
                self.table(Table(self.paths.table(m, "provenance"), f"Provenance of {m.label}.", ["item", "value"],
                                 facts)),
                self.table(Table(self.paths.table(m, "versions"), "Library versions when the checkpoint was trained "
                                 "and when the analyses ran.", ["library", "training", "analysis"],
                                 [[v, p.versions_training.get(v, "—"), p.versions_analysis.get(v, "—")]
                                  for v in versions])),
            ]
            configs = (("model-config", "Model configuration", p.model_config),
                       ("train-config", "Training configuration", p.train_config),
                       ("task", "Task", p.task), ("analysis-config", "Analysis configuration", p.analysis_config))
            for name, title, d in configs:
                blocks.append(self.table(Table(self.paths.table(m, name), f"{title} of {m.label}.", ["key", "value"],
                                               kv_rows(d or {}))))
            sections.append(Section(f"model-{slug}", m.label, blocks))
        return Page("provenance.html", "provenance.html", "Provenance", sections)


RENDER_LIBRARIES = ("jinja2", "matplotlib", "numpy", "weasyprint")  # what draws and typesets a report


def _pair_count(kind: str, n: int, task: Optional[dict]):
    """A pair count, or why there are none (operator-flip pairs need a model of '+' and '-')."""
    if kind == "operator_flip" and n == 0 and (task or {}).get("task") != "addsub":
        return Cell(0, text="not applicable: one operator")
    return n


def _answer(ex) -> str:
    """The example's answer as a number (its target may hold steps or reversed digits)."""
    a, b, op = parse_problem(ex.prompt)
    return str(apply_op(a, b, op))


ROLE_CIRCUIT = {"carry_source": "carry_head", "operator": "operator_head"}  # role score -> circuit test


def _verdict(comp) -> str:
    if comp is None:
        return "not a candidate"
    return f"{comp.kind}: {'confirmed' if comp.confirmed else 'not confirmed'}"


def _has_attention(ex) -> bool:
    att = np.asarray(ex.attention)
    return att.ndim == 4 and att.size > 0


def _finite_or(x, default: float = -math.inf) -> float:
    return x if x is not None and math.isfinite(x) else default


def _shown(x: float) -> float:
    """x as a table cell shows it (fmt_num, the tables' default digits)."""
    return float(fmt_num(x)) if math.isfinite(x) else x


# ---------------------------------------------------------------- templates and writing
def environment() -> Environment:
    """Jinja2 with autoescaping for every .html template and undefined names as errors."""
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["est"] = fmt_est
    env.filters["num"] = fmt_num
    return env


class SiteLinks:
    """Links from one page of the site: relative paths, so the site works from file:// and any sub-path."""

    pdf = False

    def __init__(self, page_path: str):
        self.base = posixpath.dirname(page_path)
        self.root = "" if not self.base else posixpath.relpath(".", self.base) + "/"

    def href(self, target: Optional[str]) -> Optional[str]:
        if target is None:
            return None
        path, _, frag = target.partition("#")
        rel = posixpath.relpath(path, self.base or ".") if path else ""
        return rel + (f"#{frag}" if frag else "")

    asset = href

    def anchor(self, section_id: str) -> str:
        return section_id


def write_text(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8", newline="\n")


def page_context(builder: SiteBuilder, page: Page, links: SiteLinks) -> dict:
    return {"report": builder.report, "page": page, "sections": number_blocks(page.sections),
            "nav": nav_model(builder), "L": links, "pdf": False, "offset": 1, "has_pdf": builder.pdf,
            "model_pages": {m.name: builder.paths.model(m) for m in builder.report.models}, **page.extra}


def nav_model(builder: SiteBuilder) -> list[dict]:
    """The sidebar: overview, comparison, each model with its sections and examples, provenance."""
    items = [{"title": "Overview", "href": "index.html", "children": []},
             {"title": "Comparison", "href": "compare.html", "children": []}]
    for m in builder.report.models:
        children = [{"title": title, "href": builder.paths.model(m, sid)} for _, sid, title in ANALYSES]
        examples = [{"title": ex.prompt + ex.target, "href": builder.paths.example(m, i)}
                    for i, ex in enumerate(m.findings.examples)]
        items.append({"title": m.label, "href": builder.paths.model(m), "children": children, "examples": examples})
    items.append({"title": "Provenance", "href": "provenance.html", "children": []})
    return items


def write_site(builder: SiteBuilder, pages: list[Page], out_dir: Path, env: Environment) -> None:
    """Every page, table download, viewer data file, the search index and the static assets."""
    for page in pages:
        html = env.get_template(page.template).render(**page_context(builder, page, SiteLinks(page.path)))
        write_text(out_dir / page.path, html)
    for t in {t.key: t for t in builder.tables}.values():
        write_text(out_dir / t.csv_path, t.to_csv())
        write_text(out_dir / t.tex_path, t.to_latex())
    for m in builder.report.models:
        for i, ex in enumerate(m.findings.examples):
            if _has_attention(ex):
                write_text(out_dir / builder.paths.example_data(m, i), builder.viewer_data_js(m, i))
    sections = [(sid, title) for _, sid, title in ANALYSES]
    write_text(out_dir / "search-index.js", search_index_js(builder.report, builder.paths, sections))
    static = out_dir / "static"
    static.mkdir(parents=True, exist_ok=True)
    for src in sorted((TEMPLATES / "static").iterdir()):
        shutil.copyfile(src, static / src.name)

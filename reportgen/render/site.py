"""The static site: pages as data (sections of blocks), built from the results alone, and written
through the Jinja2 templates that the PDF shares.

A page is a list of `Section`s; a section holds blocks (text, notices, figures, tables, link lists,
the attention viewer). Figures and tables are numbered when a document is assembled, so the site
(numbered per page) and the PDF (numbered through the document) place the same objects.
Every path comes from `safe_name`; no text from results is ever used raw in a path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from reportgen.data.arithmetic import (
    STRATUM_DESCRIPTIONS, TARGET_ROLE_DESCRIPTIONS, TARGET_ROLES, apply_op, parse_problem,
)
from reportgen.errors import ReportgenError
from reportgen.fingerprint import library_version
from reportgen.names import safe_name
from reportgen.render import figures as F
from reportgen.render.search import search_index_js
from reportgen.render.tables import Cell, Table, fmt_est, fmt_num
from reportgen.results.claims import CEILING, Claim, comparison_claims, model_claims
from reportgen.results.compare import apart

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
        self.claims = {m.name: model_claims(m) for m in self.report.models}

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
            Section("findings", "Key findings", [self.claims_block(m, title=True) for m in r.models]),
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

    def claims_block(self, m, title: bool = False) -> Block:
        """A model's findings and what was tested and not found, each linked to its evidence."""
        c = self.claims[m.name]
        return Block("claims", {"title": m.label if title else "", "href": self.paths.model(m, "findings"),
                                "found": [self.claim_item(m, x) for x in c.found],
                                "not_found": [self.claim_item(m, x) for x in c.not_found]})

    def claim_item(self, m, c: Claim) -> dict:
        anchor = f"t-{c.item}" if c.item else c.section
        href = f"compare.html#{anchor}" if m is None else self.paths.model(m, anchor)
        return {"text": c.text, "test": c.test.rstrip("."), "null": c.null, "href": href}

    def accuracy_comparison_table(self, key: str = "tables/accuracy-by-stratum") -> Block:
        r = self.report
        strata = F.ordered_strata({s for m in r.models for s in m.accuracy.by_stratum})
        leaders = {(l.stratum, l.best) for l in r.comparison.leaders  # apart as the cells show them, too
                   if apart(l.exact_match, [l.runner_up_exact_match], _shown) == "above"}
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
            self.findings_section(m),
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

    def findings_section(self, m) -> Section:
        """What the model computes, in sentences, and the diagram of its confirmed carry components."""
        circ = m.findings.circuits
        diagram = None if circ is None else self.fig(F.circuit_figure(self.paths.figure(m, "circuit"), circ))
        return Section("findings", "Key findings", [self.claims_block(m)] + ([diagram] if diagram else []))

    def overview_section(self, m) -> Section:
        p = m.provenance
        rows = [["task", task_text(p.task)], ["checkpoint", p.file_name], ["sha256", p.sha256],
                ["training seed", p.seed], ["analysis problems", population_text(m.findings.population)]]
        rows += kv_rows(p.model_config)
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
                             "stratum, with 95% Wilson intervals" + CEILING_NOTE, ["stratum", "exact match", ""],
                             ceiling_rows(rows))),
            self.fig(F.accuracy_figure(self.paths.figure(m, "accuracy"), a)),
        ] + self.harder_blocks(m))

    def harder_blocks(self, m) -> list[Block]:
        """The harder test (longer operands than trained), where the config asked for it."""
        if m.harder is None:
            return []
        h = m.harder.accuracy
        rows = [["all", h.exact_match]] + [[s, h.by_stratum[s]] for s in F.ordered_strata(h.by_stratum)]
        return [self.table(Table(self.paths.table(m, "harder-test"), f"The harder test: exact match on {h.n} "
                                 f"stratified problems whose operands all have {m.harder.digits} digits"
                                 + (" (longer than any the model trained on)" if h.unseen else "")
                                 + ", with 95% Wilson intervals" + CEILING_NOTE, ["stratum", "exact match", ""],
                                 ceiling_rows(rows)))]

    def attention_section(self, m, att) -> list[Block]:
        stats = sorted(att.head_stats, key=lambda s: (s.layer, s.head))
        rows = [[f"L{s.layer}H{s.head}", s.entropy, s.prev_token, s.sink, s.equals, s.operator] for s in stats]
        blocks = [text("Attention at every position that predicts a digit the model writes (teacher forced on the "
                       "model's own input format), by the column n of that digit and by key group, relative to n: "
                       "'n', 'n-1', 'n-2', … the digits of both operands in column n, n−1, n−2 (a head's offset); "
                       "'prev answer' the answer digit written just before; the delimiters 'BOS', 'operator', '=', "
                       "'|'; and in scratchpad models 's[n].<place>' and 's[n-1].<place>', the tokens of step n and "
                       "step n−1 (a, b, cin, d, cout; op, =, c, ;). Mass on a group is the sum of a head's attention "
                       "on its keys, averaged over examples; the untrained twins are freshly initialised models of "
                       "the same shape. The interactive per-example viewer is on each example's page.")]
        scratch = [r for r in (att.columns.query_roles if att.columns else []) if r != "answer"]
        blocks.append(self.fig(F.column_view_figure(self.paths.figure(m, "attention-columns"), att, ["answer"],
                                                    "the final-answer digits")))
        blocks.append(self.head_role_table(m, att, ["answer"], "", "the final-answer digits"))
        if scratch:  # one figure per layer: scratchpad rows (role and column) are many
            for l in att.columns.layers:
                blocks.append(self.fig(F.column_view_figure(self.paths.figure(m, f"attention-columns-scratchpad-L{l}"),
                                                            att, scratch, f"the scratchpad digits, layer {l}", [l])))
            blocks.append(self.head_role_table(m, att, scratch, "-scratchpad", "the scratchpad digits"))
        blocks += self.head_test_summary(m)
        blocks.append(self.table(Table(
            self.paths.table(m, "head-stats"), "Per-head statistics at the answer-predicting positions, mean over "
            "examples with 95% bootstrap intervals: attention entropy normalised by log(number of visible keys) (1 = "
            "uniform), and the attention mass on the previous token, the first (BOS, sink) token, the '=' token and "
            "the operator.", ["head", "entropy", "previous token", "BOS (sink)", "'='", "operator"], rows)))
        return [b for b in blocks if b is not None]

    def head_role_table(self, m, att, roles: list[str], name: str, what: str) -> Optional[Block]:
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
        caption = (f"Head roles at {what} per column n: the key group holding the head's attention there and its mean "
                   f"mass, where that mass beats both chance and the untrained twins by at least "
                   f"{F.fmt_margin(att.role_margin)} with its interval above theirs; '—': no group does.")
        if multi:
            caption += " Heads holding no group at a role are left out for that role."
        return self.table(Table(self.paths.table(m, f"head-roles{name}"), caption,
                                ["head", *(["digit"] if multi else []), *[f"column {n}" for n in cols]], rows))

    def head_test_summary(self, m) -> list[Block]:
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

    def patching_section(self, m, pat) -> list[Block]:
        counts = sorted(pat.pair_counts.items(), key=lambda kv: F.pair_rank(kv[0].split("@")[0]) + (kv[0],))
        blocks = [self.table(Table(self.paths.table(m, "patch-pairs"), "Minimal pairs generated from the ground "
                                   "truth, per kind, and how many were dropped because the clean and corrupted "
                                   "logit differences were too close to normalise by.",
                                   ["pair kind", "pairs", "dropped", "meaning"],
                                   [[k, _pair_count(k, n, m.provenance.task), pat.pair_dropped.get(k, 0),
                                     _pair_meaning(k)] for k, n in counts]))]
        figures = F.patching_figures(self.paths.figure(m, "patching"), pat, m.provenance.task)
        blocks += [self.fig(f) for f in figures]
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
        ] + self.lens_roles_table(m, lens)

    def lens_roles_table(self, m, lens) -> list[Block]:
        """A scratchpad model's lens at every kind of digit it writes."""
        if not lens.prob_by_role:
            return []
        roles = [r for r in TARGET_ROLES if r in lens.prob_by_role]
        guess = lens.majority_by_role
        rows = [[role, TARGET_ROLE_DESCRIPTIONS[role], guess[role] if role in guess else "", *lens.prob_by_role[role]]
                for role in roles]
        return [self.table(Table(self.paths.table(m, "logit-lens-scratchpad"), "Logit lens at the positions "
                                 "predicting each kind of scratchpad digit: probability of the correct digit among "
                                 "digits after each layer (95% bootstrap intervals over examples), beside what "
                                 "always guessing the most common digit of that kind scores (carries are 0 or 1).",
                                 ["digit written", "meaning", "guess", *lens.layer_labels], rows))]

    def circuits_section(self, m, circ) -> list[Block]:
        broken = {n.test for n in circ.nulls if not n.passed}
        blocks = [
            text("Every component here is tested causally and specifically, and every test also runs unchanged on "
                 "untrained twins of the model (freshly initialised, same shape) as its null. A carry head's output, "
                 "patched from the clean into the corrupted run of carry-flip pairs aimed at answer column n, must "
                 "restore more of the logit difference than on sum-flip pairs and than any head of its layer in the "
                 "twins; a neuron, patched alone, likewise, against random neurons of its layer. Position and "
                 "delimiter heads keep their attention on one key group at every column, far above the twins' "
                 "heads. Correlational candidates (AUROC) are listed apart and are not findings until their causal "
                 "test confirms them."),
            self.table(Table(self.paths.table(m, "null-checks"), "Each confirming test on the model and, unchanged, "
                             "on each untrained twin. A test that confirms components on the twins more often than "
                             "its error rate allows is broken, and the report states none of its findings.",
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
        blocks.append(self.table(Table(
            self.paths.table(m, "components"), "Components tested: heads whose carry-flip (operator-flip) recovery "
            "reaches the minimum, and the correlational neuron candidates. Recovery is pooled over pairs (per-pair "
            "recoveries weighted by how far each pair's logit difference moves); 'control': the same on sum-flip "
            "pairs aimed at the same column; 'null': the largest recovery of a same-layer head in the untrained "
            "twins (heads) or the neuron's AUROC under shuffled labels (neurons)." + listed,
            ["kind", "layer", "index", "column", "read at", "recovery", "control", "null", "verdict", "note"], rows)))
        heads = [r for r in circ.recoveries if "H" in r.component]
        if heads:
            blocks.append(self.table(Table(
                self.paths.table(m, "head-recovery"), "Per-column patching of every head: pooled recovery (denoising) "
                "and damage (noising) on carry-flip (operator-flip) pairs aimed at answer column n, read at each "
                "target token the flip changes (the answer digit; in a scratchpad also the step's sum digit, the "
                "carry it reads in and the carry the previous step writes out), the same on sum-flip pairs, and "
                "the largest same-layer head of the untrained twins; 95% bootstrap intervals over pairs.",
                ["head", "pairs", "column", "read at", "recovery", "damage", "sum-flip", "untrained (largest)",
                 "verdict"],
                [[r.component, r.kind, r.column, r.target, r.recovery, r.damage, r.control, r.untrained,
                  Cell("confirmed" if r.confirmed else "—", strong=r.confirmed)]
                 for r in sorted(heads, key=lambda r: (r.kind, r.target, r.column, r.layer, r.index))],
                site_only=True)))
        if circ.neuron_test:
            blocks.append(self.table(Table(self.paths.table(m, "neuron-screen"), "The correlational screen that "
                                           "lists neuron candidates (not a confirmation of any of them).",
                                           ["quantity", "value"], kv_rows(circ.neuron_test))))
        return blocks

    def probing_section(self, m, probing) -> list[Block]:
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
        blocks += [self.fig(f) for f in F.probe_figures(self.paths.figure(m, "probes"), probing)]
        stated = null is None or null.passed
        confirmed = [p for p in probing.probes if p.confirmed] if stated else []
        shown = sorted(confirmed or probing.probes, key=lambda p: -p.selectivity.mean)[:40 if confirmed else 10]
        rows = [[p.label + (" (balanced)" if p.balanced else ""), p.layout, p.position.removeprefix("predicts "),
                 F.site_label(p.hook), p.accuracy, p.untrained, p.selectivity, p.selectivity_bound, p.over_baseline,
                 p.operand_baseline] for p in shown]
        what = "the confirmed probes" if confirmed else "the probes with the highest selectivity (none confirmed)"
        blocks.append(self.table(Table(
            self.paths.table(m, "probes"), f"Linear probes: {what}, by selectivity (at most 40 rows; the figure's data "
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
        blocks.append(self.table(Table(
            self.paths.table(m, "probes-by-site"), "Probes per label and site: positions probed (over all layouts), "
            "how many were confirmed, and means over those positions of the accuracy, the twins' accuracy, the "
            "selectivity and the operands-only baseline.",
            ["label", "site", "positions", "confirmed", "mean accuracy", "mean twins", "mean selectivity",
             "mean operands only"], summary)))
        return blocks

    def ablation_section(self, m, iv) -> list[Block]:
        clean = iv.clean
        default = sorted((e for e in iv.effects if e.method == iv.default_method), key=lambda e: F.component_rank(e.component))
        scratch = clean.scratchpad_accuracy is not None
        rows = [[e.component, e.metrics.exact_match, _delta(e.metrics.exact_match.mean, clean.exact_match.mean),
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
            self.fig(F.ablation_figure(self.paths.figure(m, "ablations"), iv)),
            self.fig(F.cumulative_figure(self.paths.figure(m, "cumulative"), iv)),
            self.table(Table(self.paths.table(m, "ablations"), f"Effect of ablating each component with the default "
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
            self.table(Table(self.paths.table(m, "ablations-by-stratum"), f"The measures per difficulty stratum with "
                             f"each component ablated ({method}); a carry-handling component hurts the carry strata "
                             f"far more than no_carry. 95% bootstrap intervals over examples; 'n/a': no example of "
                             f"that stratum.", ["component", "measure", *strata], stratum_rows,
                             site_only=True)),
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
        """What the attention viewer's controls list: every model (at the same example where it has
        it) and every example of this model, named in words; the shape; the static figures' colours."""
        ex = m.findings.examples[i]
        att = np.asarray(ex.attention)
        models = []
        for other in self.report.models:
            keys = [e.key for e in other.findings.examples]
            if not keys:
                continue
            j = keys.index(ex.key) if ex.key in keys else 0
            models.append({"label": f"{other.label} ({task_text(other.provenance.task)})",
                           "href": self.paths.example(other, j), "selected": other is m})
        return {
            "id": f"{self.paths.models[m.name]}/{self.paths.examples[m.name][i]}",
            "models": models,
            "examples": [{"label": _example_words(e), "href": self.paths.example(m, j), "selected": j == i}
                         for j, e in enumerate(m.findings.examples)],
            "layers": att.shape[0], "heads": att.shape[1],
            "ramp": F.colour_stops(F.ATTENTION_CMAP),
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
        differences = comparison_claims(r)
        sections = [
            Section("differences", "What differs between the models", [Block("claims", {
                "title": "", "href": None, "not_found": [],
                "found": [self.claim_item(None, c) for c in differences]})] if differences else [
                text("No difference between the models is larger than their 95% intervals on the measures "
                     "compared here (exact match, margin, where the answer forms).")]),
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

    def _highlighted(self, estimates: list, models: list, aspect: str, directional: bool = True) -> list:
        """Cells for one row of per-model estimates, marked where one model stands apart from every
        other model it is comparable with (on `aspect`) by more than the 95% intervals allow, as the
        cells show them (rounded to 2 decimals, so a reader can see it); '—' where it has none.
        `directional` (a measure where higher is better, such as accuracy): bold where highest;
        otherwise the mark APART follows any value apart, high or low, and says nothing of better."""
        group_of = {n: i for i, g in enumerate(g for g in self.report.comparison.groups if g.aspect == aspect)
                    for n in g.models}
        cells = []
        for i, (m, e) in enumerate(zip(models, estimates)):
            if e is None:
                cells.append("—")
                continue
            rivals = [o for j, (n, o) in enumerate(zip(models, estimates))
                      if j != i and o is not None and n.name in group_of and group_of.get(m.name) == group_of[n.name]]
            side = apart(e, rivals, _shown)
            if directional:
                cells.append(Cell(e, strong=side == "above"))
            else:
                cells.append(Cell(e, text=f"{fmt_est(e)} {APART}") if side else Cell(e))
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
        stated = {m.name: m.findings.probing.null is None or m.findings.probing.null.passed for m in models}
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
            for m, r in zip(models, found):
                confirmed = r and (Cell(r["confirmed"] / r["positions"], text=f"{r['confirmed']} of {r['positions']}")
                                   if stated[m.name] else Cell(None, text="not stated"))
                row += [r["accuracy"], r["selectivity"], confirmed] if r else [None, None, None]
            rows.append(row)
        missing = [m.label for m in self.report.models if m.findings.probing is None]
        extra = [notice(f"Probing not run for: {', '.join(missing)}.")] if missing else []
        table = self.table(Table(
            "tables/compare-probes", "Probes per label and site: held-out accuracy (balanced accuracy where the "
            "label's classes are unbalanced) and selectivity (accuracy − the same probe's mean accuracy on untrained "
            "twins), averaged over the positions probed (each probe reads one position of one layout), and how many "
            "of those positions the model's test confirmed (the CSV holds the share; 'not stated' where the test "
            "failed its null on the untrained twins); 'n/a': no such site in that model.",
            ["label", "site", "metric", *[f"{m.label} {q}" for m in models for q in ("accuracy", "selectivity",
                                                                                     "confirmed")]], rows))
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
                baseline = max(_finite_or(best.untrained.mean, 0.0), _finite_or(best.chance, 0.0))
                if _finite_or(best.score.mean) - baseline < _finite_or(att.role_margin, 0.0):
                    continue  # no head takes this key group (e.g. one of a scratchpad's many)
                kind = ROLE_CIRCUIT.get(role)
                verdict = _verdict(causal.get((kind, best.layer, best.head))) if kind else "no causal test of this role"
                rows.append([m.label, role, f"L{best.layer}H{best.head}", best.score, best.untrained,
                             effects.get(f"L{best.layer}H{best.head}"), verdict])
        if not rows:
            return Section("heads", "Top heads per role", [not_run("attention")])
        return Section("heads", "Top heads per role", [*self._group_note("heads"), self.table(Table(
            "tables/compare-heads", "The head with the highest role score per role and model (mean attention mass "
            "from the answer digits to a key group, averaged over columns, with its 95% bootstrap interval; roles "
            "where it does not beat chance and the untrained twins by the role margin are left out), the same head "
            "in the untrained twins, the drop in exact match when it is ablated with the model's default method "
            "(clean − ablated; positive = the head matters), and the verdict of the circuit test of that role "
            "(n-1, the column below: carry head; operator: operator head).",
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
        rows += [[c, *self._highlighted([by[m.name].get(c) for m in models], models, "heads", directional=False)]
                 for c in comps]
        methods = ", ".join(sorted({f"{m.label}: {m.findings.interventions.default_method}" for m in models}))
        return Section("ablations", "Ablation effects", [*self._group_note("heads"), self.table(Table(
            "tables/compare-ablations", f"Exact match with each component ablated (default method per model — "
            f"{methods}; mean/resample ablation unless labelled zero), 95% bootstrap intervals; '—': the model "
            f"has no such component. Clean row, bold: higher than every model of the same task beyond the 95% "
            f"intervals. Ablated rows, {APART}: apart from every model of the same shape beyond the 95% intervals, "
            f"higher or lower; neither is better (a model that loses less to an ablation relies less on that "
            f"component, which is a difference, not a merit).", ["component", *[m.label for m in models]], rows))])

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


APART = "◆"  # marks a value apart from the comparable models, with no direction implied
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


def _pair_meaning(key: str) -> str:
    """What a pair-count key ('carry_flip', or 'carry_flip@sum_digit' for a scratchpad target) means."""
    kind, _, target = key.partition("@")
    return F.PAIR_TEXT.get(kind, "") + (f", read at the scratchpad's {target} token" if target else "")


def _example_words(ex) -> str:
    """An example as the viewer's list names it: the problem and answer as numbers, the written form
    where it differs (reversed digits; a scratchpad is left to the page), the stratum in words."""
    a, b, op = parse_problem(ex.prompt)
    answer = str(apply_op(a, b, op))
    shown = f"{a} {op} {b} = {answer}"
    if "|" in ex.target:
        shown += " (with written steps)"
    elif ex.target != answer:
        shown += f" (written {ex.prompt}{ex.target})"
    shown += f", {ex.stratum.replace('_', ' ')}"
    return shown + ("" if ex.correct else f", answered {ex.prediction} (wrong)")


def _answer(ex) -> str:
    """The example's answer as a number (its target may hold steps or reversed digits)."""
    a, b, op = parse_problem(ex.prompt)
    return str(apply_op(a, b, op))


ROLE_CIRCUIT = {"n-1": "carry_head", "operator": "operator_head"}  # role (key group) -> circuit test


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

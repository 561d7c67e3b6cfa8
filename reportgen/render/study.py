"""The study report: a site and a PDF summarising a grid of models over seeds and training, made from
a `Study` (reportgen.results.study) alone.

Pages are built from the blocks a single-model report uses (site.Section, Block, Table, figures)
and written through their own templates (study_index.html, study_page.html, study_pdf.html), which
extend base.html and reuse its partials. It scales by summarising: one sortable, filterable row per
grid point, small multiples (a panel per seed or grid point) instead of a page per chart, and a
PDF of the grid rather than of every model. Each final model's full chapter (a single-model site
rendered by the sweep's render jobs) is copied in under models/<run>/.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from reportgen.findings import Estimate
from reportgen.atomic import MANIFEST, check_replaceable, replace_dir
from reportgen.data.arithmetic import STRATUM_DESCRIPTIONS
from reportgen.fingerprint import library_version
from reportgen.names import safe_name
from reportgen.render import figures as F
from reportgen.render import study_figures as SF
from reportgen.render.site import (
    RENDER_LIBRARIES, Block, Page, Section, SiteLinks, kv_rows, links, notes, notice, number_blocks,
    text, write_text,
)
from reportgen.render.stamp import STAMP_FILE, fingerprint, is_current, write_stamp
from reportgen.render.tables import Cell, Table, fmt_est
from reportgen.results.compare import finite_or
from reportgen.results.study import (
    FINAL, HEADLINE_PROBE, Study, StudyPoint, StudyRun, confirmed_roles, final, first_confirmed, format_summaries, mean_curve, point_summary, role_name, role_order, role_stability, steps_to_target,
    study_json,
)

STUDY_FILE = "study.json"
MAX_PDF_POINTS = 12  # the PDF shows each grid point's dynamics only for studies this small
RANGE = "mean over seeds [smallest, largest seed]"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _examples(x: float) -> str:
    return f"{x:,.0f}"


@dataclass
class Sortable:
    """A table the site lets readers sort (click a header) and filter (type in the box above it);
    `links[row]` are the (text, site path) links shown in column `link_column`."""

    table: Table
    links: list[list[tuple[str, str]]]
    link_column: int
    sort_keys: list[list[str]]  # per row and column: the value to sort by (a number as text, or the text)


# ---------------------------------------------------------------- the pages
class StudyBuilder:
    """Turns a Study into pages, figures and tables (data only; nothing is written here)."""

    def __init__(self, study: Study, pdf: bool):
        self.study, self.pdf = study, pdf
        self.figures: list[F.ReportFigure] = []
        self.tables: list[Table] = []
        self.summaries = {p.name: point_summary(study, p) for p in study.points}
        self.stability = {p.name: role_stability(study, p) for p in study.points}
        self.formats = format_summaries(study)
        self.slugs = {p.name: safe_name(p.name) for p in study.points}
        self.strata = F.ordered_strata({s for r in study.runs for snap in r.snapshots for s in snap.by_stratum})

    def fig(self, f: F.ReportFigure) -> Block:
        self.figures.append(f)
        return Block("figure", f)

    def table(self, t: Table) -> Block:
        self.tables.append(t)
        return Block("table", t)

    def sortable(self, t: Table, links_: list[list[tuple[str, str]]], link_column: int) -> Block:
        self.tables.append(t)
        keys = [[_sort_key(c) for c in row] for row in t.rows]
        return Block("sortable", Sortable(t, links_, link_column, keys))

    def point_page(self, p: StudyPoint) -> str:
        return f"points/{self.slugs[p.name]}.html"

    def pages(self) -> list[Page]:
        return [self.index_page(), self.formats_page(), self.stability_page(), self.dynamics_page(),
                *[self.point_page_(p) for p in self.study.points], self.provenance_page()]

    # ------------------------------------------------------------ index
    def index_page(self) -> Page:
        s = self.study
        sections = [
            Section("brief", "Findings in brief", [notes(self.brief())]),
            Section("overview", "The grid", [
                text(f"One row per grid point; every value is the {RANGE}, so a wide range means the seeds disagree. "
                     "Click a column header to sort, type in the box to filter; the seed links open each final "
                     "model's full chapter (all six analyses, examples)."),
                self.overview_table()]),
            self.failures_section(),
            Section("pages", "Contents", [links([
                ("Answer formats: sample efficiency", "formats.html"),
                ("Roles across seeds", "stability.html"),
                ("Training dynamics", "dynamics.html"),
                *[(f"Grid point {p.label}", self.point_page(p)) for p in s.points],
                ("Provenance: the sweep, configs, versions", "provenance.html"),
                (f"Study data ({STUDY_FILE})", STUDY_FILE),
                *([("The study as one PDF (report.pdf)", "report.pdf")] if self.pdf else [])])]),
        ]
        return Page("index.html", "study_index.html", s.title, sections)

    def brief(self) -> list[str]:
        """The study's answers in sentences: scope, which formats learn fastest, which roles hold in
        every seed, and what failed."""
        s = self.study
        analysed = sum(r.status == "analysed" for r in s.runs)
        seeds = sorted({r.seed for r in s.runs})
        out = [f"{_count(len(s.runs), 'run')}: {_count(len(s.points), 'grid point')} × {_count(len(seeds), 'seed')}; "
               f"{analysed} analysed (final model and every training snapshot)" +
               (f"; {_count(len(s.failures), 'job')} failed (listed below)." if s.failures else ".")]
        out.append(self.format_sentence())
        out += self.role_sentences()
        best = max(self.summaries.values(), key=lambda ps: (finite_or(ps.exact_match.mean), ps.point.name), default=None)
        if best is not None and math.isfinite(best.exact_match.mean):
            out.append(f"Highest exact match on fresh test problems: {best.point.label} "
                       f"({fmt_est(best.exact_match)}, {RANGE}).")
        return out

    def format_sentence(self) -> str:
        """Which answer formats reach the target validation exact match with the fewest training
        examples (formats whose runs all reached it first), and which never reached it."""
        target = _pct(self.study.target)
        if not self.formats:
            return "No run has finished training, so no answer format can be compared yet."
        reached = [f for f in self.formats if f.reached]
        missed = [f for f in self.formats if not f.reached]
        parts = []
        for f in reached:
            e = f.examples_to_target
            spread = f", range {_examples(e.lo)}–{_examples(e.hi)}" if e.lo != e.hi else ""
            parts.append(f"{f.format} ({f.reached} of {_count(len(f.runs), 'run')} reached it, after "
                         f"{_examples(e.mean)} training examples on average{spread})")
        missed_text = "; ".join(f"{f.format} (0 of {_count(len(f.runs), 'run')}; last validation exact match "
                                f"{fmt_est(f.last_exact_match)} after at most {_examples(f.max_examples)} examples)"
                                for f in missed)
        if len(self.formats) == 1:
            f = self.formats[0]
            return (f"Every run uses one answer format ({f.format}), so formats cannot be compared; "
                    + (parts[0] if parts else missed_text) + f" for {target} validation exact match.")
        if not reached:
            return (f"No format reached {target} validation exact match in any run, so none can be called fastest; "
                    f"closest first: {missed_text}.")
        out = (f"Fastest to {target} validation exact match (fewest training examples seen; formats whose runs all "
               f"reached it first): " + "; then ".join(parts) + ".")
        return out + (f" Never reached {target}: {missed_text}." if missed else "")

    def role_sentences(self) -> list[str]:
        every: dict[tuple, list[str]] = {}
        some: dict[tuple, list[str]] = {}
        single = []
        for p in self.study.points:
            stab = self.stability[p.name]
            n = self.summaries[p.name].analysed
            if n < 2:
                if n == 1:
                    single.append(p.label)
                continue
            for r in stab:
                (every if r.everywhere else some).setdefault(r.key, []).append(f"{p.label}: {len(r.seeds)}/{n}")
        out = []
        if every:
            out.append("Roles confirmed in every seed (kind, layer, column; head and neuron indices are not compared): "
                       + "; ".join(f"{role_name(k)} ({'; '.join(v)})" for k, v in sorted(every.items(),
                                                                                           key=lambda kv: role_order(kv[0])))
                       + ".")
        else:
            out.append("No role is confirmed in every seed of any grid point with two or more analysed seeds.")
        if some:
            out.append("Confirmed in some seeds only: " + "; ".join(
                f"{role_name(k)} ({'; '.join(v)})" for k, v in sorted(some.items(), key=lambda kv: role_order(kv[0])))
                + ".")
        if single:
            out.append(f"Grid points with only one analysed seed (stability unknown): {', '.join(single)}.")
        return out

    def overview_rows(self):
        """(row values, seed links) per grid point."""
        rows, seed_links = [], []
        for p in self.study.points:
            ps = self.summaries[p.name]
            runs = self.study.runs_of(p)
            rows.append([Cell(p.label, self.point_page(p)), p.format, f"{ps.analysed}/{len(runs)}",
                         ps.exact_match, *[ps.by_stratum.get(st) for st in self.strata],
                         ps.steps_to_target, f"{ps.reached}/{ps.trained}", ps.convergence_layer, ps.selectivity,
                         ps.confirmed_roles, ps.roles_everywhere])
            seed_links.append([(f"s{r.seed}", r.chapter or self.point_page(p) + "#seeds") for r in runs])
        return rows, seed_links

    def overview_table(self) -> Block:
        rows, seed_links = self.overview_rows()
        target = _pct(self.study.target)
        columns = ["grid point", "format", "seeds", "exact match", *self.strata, f"steps to {target}",
                   f"reached {target}", "convergence layer", f"{HEADLINE_PROBE} selectivity", "roles confirmed",
                   "roles in every seed"]
        return self.sortable(Table(
            "tables/overview", f"The grid: per grid point, {RANGE}. Seeds: seeds with an analysed final model / runs. "
            "Exact match: greedy decoding on fresh stratified test problems, overall and per difficulty stratum. "
            f"Steps to {target}: first validation at or above {target} exact match (seeds that reached it; 'reached' "
            "counts them). Convergence layer: mean first layer at which the logit lens shows the final answer's digit "
            f"as top-1 (0 = embedding). {HEADLINE_PROBE} selectivity: probe accuracy minus control-task accuracy at "
            "the best site. Roles: distinct (kind, layer, column) confirmed by circuit discovery per seed, and how "
            "many are confirmed in every seed.", columns, rows), seed_links, 2)

    def overview_pdf_tables(self) -> list[Block]:
        """The overview split in two for the page width: accuracy, then training and analyses."""
        rows, _ = self.overview_rows()
        n = 4 + len(self.strata)
        target = _pct(self.study.target)
        acc = self.table(Table("tables/overview-accuracy", f"Exact match per grid point on fresh stratified test "
                               f"problems, overall and per stratum ({RANGE}); seeds: analysed / runs.",
                               ["grid point", "format", "seeds", "exact match", *self.strata], [r[:n] for r in rows]))
        rest = self.table(Table("tables/overview-analyses", f"Training and analyses per grid point ({RANGE}): steps "
                                f"to {target} validation exact match, logit-lens convergence layer, "
                                f"{HEADLINE_PROBE} probe selectivity at the best site, roles confirmed per seed and "
                                "roles confirmed in every seed.",
                                ["grid point", f"steps to {target}", "reached", "convergence layer", "selectivity",
                                 "roles confirmed", "in every seed"], [[r[0], *r[n:]] for r in rows]))
        return [acc, rest]

    def failures_section(self) -> Section:
        f = self.study.failures
        if not f:
            return Section("failures", "Failures", [text("No job failed.")])
        return Section("failures", "Failures", [
            notice(f"{_count(len(f), 'job')} failed after every attempt; the runs they belong to are missing from the "
                   "numbers that need them. Running the sweep again retries them (and only them)."),
            self.table(Table("tables/failures", "Jobs that failed every attempt, with the error of the last attempt.",
                             ["job", "kind", "run", "attempts", "error"],
                             [[x.job, x.kind, x.run, x.attempts, x.error] for x in f]))])

    # ------------------------------------------------------------ formats
    def formats_page(self) -> Page:
        target = _pct(self.study.target)
        blocks = [text(self.format_sentence())]
        if self.formats:
            blocks += [self.sample_efficiency_figure(), self.table(Table(
                "tables/formats", f"Sample efficiency per answer format over all its runs (grid points and seeds): "
                f"runs that reached {target} validation exact match, the training examples they had seen by then "
                f"(steps × batch size; mean [smallest, largest run]), and the final models' exact match on fresh test "
                f"problems (mean [smallest, largest run]).",
                ["format", "runs", f"reached {target}", f"examples to {target}", "final exact match",
                 "most examples seen"],
                [[f.format, len(f.runs), f.reached, f.examples_to_target, f.final_exact_match, f.max_examples]
                 for f in self.formats])), self.format_runs_figure()]
        return Page("formats.html", "study_page.html", "Answer formats: sample efficiency",
                    [Section("formats", "Sample efficiency per answer format", blocks)])

    def _format_runs(self) -> dict[str, list[StudyRun]]:
        return {f.format: [self.study.run(n) for n in f.runs] for f in self.formats}

    def sample_efficiency_figure(self) -> Block:
        series, rows, legend = [], [], []
        xmax = 1
        for i, (fmt, runs) in enumerate(self._format_runs().items()):
            xs, mean, lo, hi = mean_curve(runs)
            series.append({"x": xs, "y": mean, "lo": lo, "hi": hi, "color": i, "lw": 1.5})
            legend.append({"name": f"{fmt} ({_count(len(runs), 'run')})", "color": i})
            rows += [[fmt, x, m, a, b] for x, m, a, b in zip(xs, mean, lo, hi)]
            xmax = max([xmax, *xs])
        xmin = min((x for s in series for x in s["x"] if x > 0), default=1)
        series.append({"x": [xmin, xmax], "y": [self.study.target] * 2, "color": 6, "ls": "--", "lw": 0.8})
        legend.append({"name": f"{_pct(self.study.target)} target", "color": 6, "ls": "--"})
        panel = {"title": "validation exact match by training examples seen", "xlabel": "training examples seen",
                 "ylabel": "validation exact match", "ylim": [0, 1.02], "xlog": True, "series": series}
        return self.fig(SF.panels_figure(
            "figures/sample-efficiency", [panel], 1, legend,
            "Sample efficiency per answer format: validation exact match (the whole final answer right, greedy "
            "decoding) against training examples seen (steps × batch size, log scale), mean over the format's runs "
            "with the band from the smallest to the largest run. A run that stopped early (having reached its "
            "stopping accuracy) counts with its last value.",
            "Line plot of validation exact match against training examples seen, one line per answer format.",
            rows, ["format", "examples_seen", "mean", "min", "max"], size=(5.4, 2.6)))

    def format_runs_figure(self) -> Block:
        panels, rows = [], []
        for fmt, runs in self._format_runs().items():
            series = []
            for r in runs:
                xs = [s * r.batch_size for s in r.steps]
                series.append({"x": xs, "y": r.val_exact_match, "color": self._point_index(r.point), "lw": 0.8})
                rows += [[fmt, r.name, x, v] for x, v in zip(xs, r.val_exact_match)]
            panels.append({"title": fmt, "xlabel": "training examples seen", "ylabel": "validation exact match",
                           "ylim": [0, 1.02], "xlog": True, "series": series})
        legend = [{"name": p.label, "color": i} for i, p in enumerate(self.study.points)][:8]
        return self.fig(SF.panels_figure(
            "figures/format-runs", panels, 3, legend,
            "Every run's validation exact match against training examples seen, one panel per answer format, one "
            "line per run coloured by grid point" + (" (colours repeat after eight grid points)."
                                                      if len(self.study.points) > 8 else "."),
            "Small multiples of validation exact match against training examples seen, one panel per format.",
            rows, ["format", "run", "examples_seen", "val_exact_match"]))

    def _point_index(self, name: str) -> int:
        return next(i for i, p in enumerate(self.study.points) if p.name == name)

    # ------------------------------------------------------------ roles across seeds
    def stability_rows(self, points: list[StudyPoint]):
        rows = []
        for p in points:
            n = self.summaries[p.name].analysed
            for r in self.stability[p.name]:
                firsts = ", ".join(f"s{seed}: {step if step is not None else '—'}" for seed, step in zip(r.seeds, r.first_steps))
                rows.append([Cell(p.label, self.point_page(p)), p.format, role_name(r.key), f"{len(r.seeds)}/{n}",
                             "yes" if r.everywhere else "no", firsts])
        return rows

    def stability_page(self) -> Page:
        rows = self.stability_rows(self.study.points)
        if not rows:
            return Page("stability.html", "study_page.html", "Roles across seeds", [Section("roles", "Roles across seeds", [
                notes(self.role_sentences()), text("No role is confirmed in any final model of the study.")])])
        table = self.sortable(Table(
            "tables/roles-by-point", "Roles confirmed by circuit discovery in the final models, per grid point: a "
            "role is a kind of component with its layer and answer column, compared across seeds by that alone (head "
            "and neuron indices are arbitrary across seeds). Seeds: seeds whose final model confirms it / seeds "
            "analysed. First step: per seed, the first analysed training step (snapshot or final) at which it passed "
            "its test.", ["grid point", "format", "role", "seeds", "every seed", "first step passed"], rows),
            [[] for _ in rows], -1)
        return Page("stability.html", "study_page.html", "Roles across seeds", [
            Section("roles", "Roles across seeds", [notes(self.role_sentences()), table, self.role_summary_table()])])

    def role_summary_table(self) -> Block:
        keys = sorted({r.key for st in self.stability.values() for r in st}, key=role_order)
        rows = []
        for key in keys:
            every, some = [], []
            for p in self.study.points:
                hit = next((r for r in self.stability[p.name] if r.key == key), None)
                if hit is not None:
                    (every if hit.everywhere else some).append(p.label)
            rows.append([role_name(key), "; ".join(every) or "—", "; ".join(some) or "—"])
        return self.table(Table("tables/roles", "Each role over the study: the grid points where every analysed seed "
                                "confirms it, and those where only some seeds do.",
                                ["role", "in every seed of", "in some seeds of"], rows))

    # ------------------------------------------------------------ dynamics
    def dynamics_page(self) -> Page:
        blocks = [text("Validation exact match during training, one panel per grid point and one line per seed. Each "
                       "grid point's page follows every run through its snapshots: accuracy per stratum, logit-lens "
                       "convergence, probe selectivity and the causal effect of each confirmed role, with the step at "
                       "which each role first passes its test marked.")]
        blocks += self.points_training_figures()
        blocks.append(links([(f"{p.label}: training dynamics", self.point_page(p) + "#dynamics") for p in self.study.points]))
        return Page("dynamics.html", "study_page.html", "Training dynamics", [Section("dynamics", "Training dynamics", blocks)])

    def points_training_figures(self) -> list[Block]:
        seeds = sorted({r.seed for r in self.study.runs})
        out = []
        chunked = SF.chunks(self.study.points)
        for k, points in enumerate(chunked):
            panels, rows = [], []
            for p in points:
                series = []
                for r in self.study.runs_of(p):
                    series.append({"x": r.steps, "y": r.val_exact_match, "color": seeds.index(r.seed), "lw": 0.9})
                    rows += [[p.name, r.seed, s, v] for s, v in zip(r.steps, r.val_exact_match)]
                panels.append({"title": p.label, "xlabel": "step", "ylabel": "val exact match", "ylim": [0, 1.02],
                               "series": [s for s in series if s["x"]], "empty": "not trained"})
            part = f" (grid points {k * SF.MAX_PANELS + 1}–{k * SF.MAX_PANELS + len(points)})" if len(chunked) > 1 else ""
            out.append(self.fig(SF.panels_figure(
                f"figures/training-{k + 1}", panels, 4, [{"name": f"seed {s}", "color": i} for i, s in enumerate(seeds)][:8],
                f"Validation exact match against training step, one panel per grid point, one line per seed{part}.",
                "Small multiples of validation exact match against training step per grid point.",
                rows, ["point", "seed", "step", "val_exact_match"])))
        return out

    # ------------------------------------------------------------ one grid point
    def point_page_(self, p: StudyPoint) -> Page:
        runs = self.study.runs_of(p)
        target = _pct(self.study.target)
        settings = self.table(Table(f"tables/points/{self.slugs[p.name]}-settings",
                                    "The settings this grid point changes (on top of the sweep's base training config).",
                                    ["setting", "value"], kv_rows(p.overrides) or [["(none)", "base config"]]))
        seed_rows = []
        for r in runs:
            f = final(r)
            seed_rows.append([Cell(f"seed {r.seed}", r.chapter or None), r.status,
                              f.exact_match if f else None, *[(f.by_stratum.get(st) if f else None) for st in self.strata],
                              steps_to_target(r, self.study.target), r.best_step, len([s for s in r.snapshots
                                                                                       if s.checkpoint != FINAL])])
        seeds = self.table(Table(f"tables/points/{self.slugs[p.name]}-seeds",
                                 "Each seed's final model (checkpoint_best.pt: best validation exact match): exact "
                                 "match on fresh stratified test problems with 95% Wilson intervals, overall and per "
                                 f"stratum; first step at {target} validation exact match; the step of the final model; "
                                 "snapshots analysed. The seed links open the model's full chapter.",
                                 ["seed", "status", "exact match", *self.strata, f"steps to {target}", "final step",
                                  "snapshots"], seed_rows))
        stab_rows = [row[2:] for row in self.stability_rows([p])]
        roles = (self.table(Table(f"tables/points/{self.slugs[p.name]}-roles",
                                  "Roles confirmed in this grid point's final models: in how many seeds, and the first "
                                  "analysed step at which each seed's model passed the test.",
                                  ["role", "seeds", "every seed", "first step passed"], stab_rows))
                 if stab_rows else text("No role is confirmed in any seed's final model."))
        sections = [
            Section("settings", "Settings", [text(f"Answer format: {p.format}."), settings]),
            Section("seeds", "Seeds", [seeds]),
            Section("dynamics", "Training dynamics", self.dynamics_figures(p, runs)),
            Section("roles", "Roles across seeds", [roles]),
        ]
        return Page(self.point_page(p), "study_page.html", f"Grid point {p.label}", sections)

    def dynamics_figures(self, p: StudyPoint, runs: list[StudyRun]) -> list[Block]:
        """Four figures, one panel per seed each: accuracy per stratum, convergence layer, probe
        selectivity and the causal effect of each confirmed role, against training step."""
        runs = [r for r in runs if r.snapshots]
        if not runs:
            return [notice("No checkpoint of this grid point has been analysed yet.")]
        key, cols = f"figures/points/{self.slugs[p.name]}", min(4, len(runs))
        return [self.fig(make(f"{key}-{name}", p, runs, cols)) for name, make in (
            ("accuracy", self._accuracy_figure), ("convergence", self._convergence_figure),
            ("probes", self._probe_figure), ("roles", self._roles_figure))]

    def _accuracy_figure(self, key: str, p: StudyPoint, runs: list[StudyRun], cols: int) -> F.ReportFigure:
        panels, rows = [], []
        for r in runs:
            steps = [s.step for s in r.snapshots]
            series = [{"x": steps, "y": [s.exact_match.mean for s in r.snapshots], "color": 7, "lw": 1.4, "ls": "--"}]
            series += [{"x": steps, "y": [s.by_stratum[st].mean if st in s.by_stratum else None for s in r.snapshots],
                        "color": i} for i, st in enumerate(self.strata)]
            rows += [[r.seed, s.step, s.checkpoint, s.exact_match.mean,
                      *[s.by_stratum[st].mean if st in s.by_stratum else None for st in self.strata]] for s in r.snapshots]
            panels.append(self._panel(r, "exact match", [0, 1.02], series))
        legend = [{"name": "all strata", "color": 7, "ls": "--"}] + [{"name": st, "color": i} for i, st in enumerate(self.strata)]
        return SF.panels_figure(
            key, panels, cols, legend,
            f"{p.label}: exact match on fresh stratified test problems per difficulty stratum against training step "
            "(log scale), one panel per seed; points are the analysed snapshots and the final model. "
            + "; ".join(f"{s}: {d}" for s, d in STRATUM_DESCRIPTIONS.items() if s in self.strata) + ".",
            "Small multiples of exact match per stratum against training step, one panel per seed.",
            rows, ["seed", "step", "checkpoint", "exact_match", *self.strata])

    def _convergence_figure(self, key: str, p: StudyPoint, runs: list[StudyRun], cols: int) -> F.ReportFigure:
        panels, rows = [], []
        for r in runs:
            n_layers = max(s.n_layers for s in r.snapshots)
            panels.append(self._panel(r, "convergence layer", [0, n_layers + 0.2], [
                {"x": [s.step for s in r.snapshots], "y": [s.convergence_layer for s in r.snapshots], "color": 0}]))
            rows += [[r.seed, s.step, s.checkpoint, s.convergence_layer] for s in r.snapshots]
        return SF.panels_figure(
            key, panels, cols, [],
            f"{p.label}: logit-lens convergence layer (mean over answer digits of the first layer at which the "
            "model's final answer digit is top-1 among digits; 0 = embedding, l+1 = after block l) against training "
            "step, one panel per seed. Lower: the answer is readable earlier in the network.",
            "Small multiples of the logit-lens convergence layer against training step.",
            rows, ["seed", "step", "checkpoint", "convergence_layer"])

    def _probe_figure(self, key: str, p: StudyPoint, runs: list[StudyRun], cols: int) -> F.ReportFigure:
        labels = sorted({k for r in runs for s in r.snapshots for k in s.selectivity})
        panels, rows = [], []
        for r in runs:
            series = [{"x": [s.step for s in r.snapshots], "y": [s.selectivity.get(lab) for s in r.snapshots], "color": i}
                      for i, lab in enumerate(labels)]
            panels.append(self._panel(r, "selectivity", [-0.1, 1.0], series))
            rows += [[r.seed, s.step, s.checkpoint, lab, s.selectivity.get(lab)] for s in r.snapshots for lab in labels]
        return SF.panels_figure(
            key, panels, cols, [{"name": lab, "color": i} for i, lab in enumerate(labels)][:8],
            f"{p.label}: linear-probe selectivity (held-out accuracy minus control-task accuracy) per label at its "
            "best site (hook and layer; averaged over the answer positions probed there), against training step, "
            "one panel per seed. Untrained models score about 0.",
            "Small multiples of probe selectivity per label against training step.",
            rows, ["seed", "step", "checkpoint", "label", "selectivity"])

    def _roles_figure(self, key: str, p: StudyPoint, runs: list[StudyRun], cols: int) -> F.ReportFigure:
        keys = sorted({k for r in runs for s in r.snapshots for k in confirmed_roles(s)}, key=role_order)
        color = {k: i % 8 for i, k in enumerate(keys)}
        panels, rows = [], []
        for r in runs:
            series, marks = [], []
            for k in keys:
                effects = [next((h.effect for h in s.roles if (h.kind, h.layer, h.column) == k), None) for s in r.snapshots]
                if any(e is not None for e in effects):
                    series.append({"x": [s.step for s in r.snapshots], "y": effects, "color": color[k]})
                first = first_confirmed(r, k)
                if first is not None:
                    marks.append({"x": first, "color": color[k]})
                rows += [[r.seed, s.step, s.checkpoint, role_name(k), e, k in confirmed_roles(s)]
                         for s, e in zip(r.snapshots, effects)]
            panels.append({**self._panel(r, "causal effect", None, series), "marks": marks, "empty": "no confirmed role"})
        return SF.panels_figure(
            key, panels, cols, [{"name": role_name(k), "color": color[k]} for k in keys][:8],
            f"{p.label}: causal effect of each role confirmed in some analysed checkpoint (as circuit discovery "
            "measures it for that kind: e.g. the accuracy drop on carry digits when a carry head is ablated; the "
            "role's strongest component at that step) against training step, one panel per seed. Dotted lines and "
            "triangles: the first analysed step at which the role passes its test. Gaps: the role was not a "
            "candidate at that step." + (" Colours repeat after eight roles." if len(keys) > 8 else ""),
            "Small multiples of the causal effect of each confirmed role against training step, with the step it "
            "first passes marked.", rows, ["seed", "step", "checkpoint", "role", "effect", "confirmed"])

    def _panel(self, r: StudyRun, ylabel: str, ylim, series: list[dict]) -> dict:
        return {"title": f"seed {r.seed}", "xlabel": "step", "ylabel": ylabel, "ylim": ylim, "xlog": True,
                "series": series}

    # ------------------------------------------------------------ provenance
    def provenance_page(self) -> Page:
        sw = self.study.sweep
        cfg = sw.get("config", {})
        sections = [
            Section("data", "Study data", [
                text(f"Every page of this report is drawn from {STUDY_FILE} (attached to the PDF too), made by "
                     f"`reportgen sweep` with the {self.study.engine} engine from the per-model results under the "
                     "sweep's results/ directory. Each final model's chapter also holds its own results.json."),
                links([(f"{STUDY_FILE}", STUDY_FILE)]),
                self.table(Table("tables/render-versions", "Versions of the libraries that drew and typeset this "
                                 "report.", ["library", "version"],
                                 [[lib, library_version(lib) or "not installed"] for lib in RENDER_LIBRARIES]))]),
            Section("sweep", "The sweep", [
                text(f"Sweep file: {sw.get('file', 'unknown')}."),
                self.table(Table("tables/sweep", "The sweep file's settings.", ["key", "value"], kv_rows(cfg))),
                self.table(Table("tables/grid", "Grid points and the training settings each changes.",
                                 ["grid point", "name", "settings"],
                                 [[p.label, p.name, json.dumps(p.overrides, sort_keys=True)] for p in self.study.points])),
                self.table(Table("tables/analysis-config", "Analysis configuration (every checkpoint).", ["key", "value"],
                                 kv_rows(sw.get("analysis_config", {}))))]),
            Section("runs", "Runs", [self.table(Table(
                "tables/runs", "Every run: grid point, seed, status (analysed: the final model was analysed; trained: "
                "trained but its final model not analysed; failed; pending) and the checkpoints analysed.",
                ["run", "grid point", "seed", "status", "checkpoints analysed"],
                [[Cell(r.name, r.chapter or None), r.point, r.seed, r.status,
                  ", ".join(s.checkpoint for s in r.snapshots) or "—"] for r in self.study.runs]))]),
        ]
        return Page("provenance.html", "study_page.html", "Provenance", sections)


def _sort_key(c) -> str:
    v = c.value if isinstance(c, Cell) else c
    if isinstance(v, Estimate):
        v = v.mean
    if isinstance(v, bool) or v is None:
        return ""
    if isinstance(v, (int, float)):
        return repr(float(v)) if math.isfinite(v) else ""
    if isinstance(v, str) and "/" in v and all(part.isdigit() for part in v.split("/", 1)):
        a, b = v.split("/", 1)
        return repr(int(a) / int(b)) if int(b) else ""
    return str(v)


# ---------------------------------------------------------------- writing
def nav_model(builder: StudyBuilder) -> list[dict]:
    s = builder.study
    return [{"title": "Overview", "href": "index.html", "children": []},
            {"title": "Answer formats", "href": "formats.html", "children": []},
            {"title": "Roles across seeds", "href": "stability.html", "children": []},
            {"title": "Training dynamics", "href": "dynamics.html",
             "children": [{"title": p.label, "href": builder.point_page(p)} for p in s.points]},
            {"title": "Provenance", "href": "provenance.html", "children": []}]


def search_js(builder: StudyBuilder) -> str:
    s = builder.study
    entries = [{"t": t, "k": "page", "u": u, "s": ""} for t, u in (
        ("Answer formats: sample efficiency", "formats.html"), ("Roles across seeds", "stability.html"),
        ("Training dynamics", "dynamics.html"), ("Provenance", "provenance.html"))]
    for p in s.points:
        entries.append({"t": p.label, "k": "grid point", "u": builder.point_page(p),
                        "s": f"{p.name} {p.format} {json.dumps(p.overrides, sort_keys=True)}"})
        for r in s.runs_of(p):
            entries.append({"t": r.name, "k": "run", "u": r.chapter or builder.point_page(p),
                            "s": f"{p.label} seed {r.seed} {r.status}"})
        for st in builder.stability[p.name]:
            entries.append({"t": f"{role_name(st.key)} — {p.label}", "k": "role", "u": builder.point_page(p) + "#roles",
                            "s": f"{len(st.seeds)} seeds {'every seed' if st.everywhere else ''}"})
    data = json.dumps(entries, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return f"window.REPORTGEN_SEARCH = {data};\n"


def render_study_site(study: Study, out_dir: Path, chapters: dict[str, Path], pdf: bool = True,
                      log: Optional[Callable[[str], None]] = None, workers: Optional[int] = None) -> None:
    """Write the study site (pages, figures, tables, search index, study.json, the chapters under
    models/<run>/) into `out_dir`, and report.pdf when `pdf` is set."""
    from reportgen.render.site import copy_static, environment

    say = log or (lambda message: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = StudyBuilder(study, pdf)
    pages = builder.pages()
    say(f"rendering {len(builder.figures)} study figures")
    F.render_figures(builder.figures, out_dir, workers)
    say(f"writing {len(pages)} study pages and copying {len(chapters)} model chapters")
    env = environment()
    nav = nav_model(builder)
    for page in pages:
        L = SiteLinks(page.path)
        html = env.get_template(page.template).render(
            report=study, page=page, sections=number_blocks(page.sections), nav=nav, L=L, pdf=False, offset=1,
            has_pdf=pdf, data_file=STUDY_FILE, **page.extra)
        write_text(out_dir / page.path, html)
    for t in {t.key: t for t in builder.tables}.values():
        write_text(out_dir / t.csv_path, t.to_csv())
        write_text(out_dir / t.tex_path, t.to_latex())
    write_text(out_dir / "search-index.js", search_js(builder))
    copy_static(out_dir)
    data = study_json(study)
    (out_dir / STUDY_FILE).write_bytes(data)
    for run, src in sorted(chapters.items()):
        shutil.copytree(src, out_dir / "models" / run, ignore=shutil.ignore_patterns("job.json", MANIFEST, STAMP_FILE))
    if pdf:
        say("typesetting report.pdf")
        render_study_pdf(builder, pages, out_dir, env, {STUDY_FILE: data})


def _fingerprint(study: Study, chapters: dict[str, Path], pdf: bool) -> str:
    """What the study site is made from: the study, each chapter's render key, templates, code, versions."""
    h = hashlib.sha256()
    for run, src in sorted(chapters.items()):
        h.update(run.encode() + b"\0" + (src / "job.json").read_bytes())
    return fingerprint(study_json(study), h.hexdigest().encode(), pdf)


def write_study(study: Study, out: Path, chapters: dict[str, Path], pdf: bool,
                say: Callable[[str], None] = lambda m: None) -> None:
    """Render the study report into `out` as a whole (swapped in when complete); one rendered from
    the same inputs and untouched since is left as it is."""
    fp = _fingerprint(study, chapters, pdf)
    if is_current(out, fp):
        say(f"{out} is up to date; nothing to render")
        return
    check_replaceable(out, "--out", "the study report")

    def write(tmp: Path) -> None:
        render_study_site(study, tmp, chapters, pdf, say)
        write_stamp(tmp, fp)

    say("rendering the study report" + (" and PDF" if pdf else ""))
    replace_dir(out, write)
    say(f"wrote {out / 'index.html'}" + (f" and {out / 'report.pdf'}" if pdf else ""))


# ---------------------------------------------------------------- PDF
def render_study_pdf(builder: StudyBuilder, pages: list[Page], out_dir: Path, env, attachments: dict[str, bytes]) -> Path:
    """report.pdf: the grid summarised (brief, overview, formats, roles, dynamics, provenance); each
    grid point's dynamics only for studies of at most MAX_PDF_POINTS points. Model chapters stay on
    the site."""
    from reportgen.render.pdf import Part, PdfLinks, _numbered, table_of_contents, typeset

    study = builder.study
    by_path = {p.path: p for p in pages}
    with_points = len(study.points) <= MAX_PDF_POINTS
    order = ["index.html", "formats.html", "stability.html", "dynamics.html",
             *([builder.point_page(p) for p in study.points] if with_points else []), "provenance.html"]
    anchors = {path: "part-" + safe_name(path.removesuffix(".html").replace("/", "-")) for path in order}
    parts = []
    for path in order:
        page = by_path[path]
        sections = page.sections
        if path == "index.html":  # the sortable overview becomes two tables that fit the page
            sections = [dataclasses.replace(s, blocks=builder.overview_pdf_tables()) if s.id == "overview" else s
                        for s in sections if s.id != "pages"]
        elif path == "stability.html":
            sections = [dataclasses.replace(s, blocks=[Block("table", b.item.table) if b.kind == "sortable" else b
                                                       for b in s.blocks]) for s in sections]
        title = "Summary" if path == "index.html" else page.title
        parts.append(Part(anchors[path], title, sections, PdfLinks(anchors, path)))
    if not with_points:
        parts[3].intro = (f"The study has {len(study.points)} grid points: each one's dynamics per seed are on its page "
                          "of the site.")
    parts = _numbered(parts)
    html = env.get_template("study_pdf.html").render(
        report=study, study=study, doc=study, parts=parts, toc=table_of_contents(parts), pdf=True,
        attachment_names=sorted(attachments), n_runs=len(study.runs), n_seeds=len({r.seed for r in study.runs}))
    return typeset(html, out_dir, attachments, study.generated_at)

"""The report's figures: which figures a report has, what each shows (with its caption, alt text
and data download), and the renderer that writes each once as SVG (shown in the site) and PDF
(for papers, and placed as it is into the PDF report), drawn by reportgen.plots.report. Figures
are independent, so they are drawn in parallel worker processes.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import functools
import io
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from reportgen import hooks as hp
from reportgen.findings import Estimate, ExampleFindings, PatchSweep
from reportgen.data.arithmetic import STEP_TOKENS, STRATA
from reportgen.parallel import jobs_in_background, run_jobs
from reportgen.plots.report import COLORS, draw, import_writers

SITE_SCALE = 1.25
METHOD_TEXT = {
    "mean": "mean ablation (activation replaced by its position-specific mean over a reference set)",
    "resample": "resample ablation (activation taken from another example)",
    "zero": "zero ablation (activation set to zero; off-distribution, shown for reference)",
}
SITE_TEXT = {"resid_pre": "residual stream (block input)", "attn_out": "attention output", "mlp_out": "MLP output",
             "head": "single heads (the head's output z, patched at every position)"}
PAIR_TEXT = {
    "carry_flip": "carry-flip pairs (column n−1 changed so the carry into column n flips, column n digits fixed)",
    "sum_flip": "sum-flip pairs (a column digit changed without changing any carry)",
    "operator_flip": "operator-flip pairs (+ and − swapped)",
}


@dataclass
class ReportFigure:
    """One figure: `key` is its path stem from the site root; `plot` names a function in PLOTS.
    `caption` is a sentence or two; `details` the full definitions, given once per section (the
    site folds them away, the PDF prints them under the caption)."""

    key: str
    plot: str
    args: dict
    caption: str
    alt: str
    data: str
    data_ext: str = "csv"
    details: str = ""
    size: tuple[float, float] = ()  # (width, height) in pt once drawn, from the SVG

    @property
    def site_size(self) -> tuple[int, int]:
        """Width and height in CSS px at which the site shows the figure: 1.25x its size, as the site's
        15 px body text is 1.25x the PDF's 9 pt, so labels keep body-text size in both."""
        return tuple(round(v * 4 / 3 * SITE_SCALE) for v in self.size)

    @property
    def svg(self) -> str:
        return f"{self.key}.svg"

    @property
    def pdf(self) -> str:
        return f"{self.key}.pdf"

    @property
    def data_path(self) -> str:
        return f"{self.key}.{self.data_ext}"

    @property
    def placeholder(self) -> str:
        """An empty SVG of the figure's size, as a data URI: what WeasyPrint lays out in the PDF
        report, where the figure's own PDF is then placed (pdf.place_figures)."""
        w, h = self.size
        svg = f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}pt" height="{h}pt" viewBox="0 0 {w} {h}"/>'
        return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


# ---------------------------------------------------------------- rendering
def render_figures(figures: list[ReportFigure], out_dir: Path, workers: Optional[int] = None) -> None:
    """Write every figure's SVG, PDF and data file under `out_dir` (in parallel where it pays)."""
    run_jobs(_draw_jobs(figures, out_dir), workers, min_jobs=8)
    _measure(figures, out_dir)


@contextmanager
def figures_in_background(figures: list[ReportFigure], out_dir: Path, workers: int) -> Iterator[None]:
    """render_figures in `workers` processes while the caller's block runs (e.g. the PDF)."""
    with jobs_in_background(_draw_jobs(figures, out_dir), workers):
        yield
    _measure(figures, out_dir)


def _draw_jobs(figures: list[ReportFigure], out_dir: Path) -> list[Callable[[], None]]:
    """Write each figure's data file; the jobs that draw the figures."""
    for f in figures:
        path = out_dir / f.data_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.data, encoding="utf-8")
    import_writers()
    return [functools.partial(_draw, (f.plot, f.args, str(out_dir / f.key))) for f in figures]


def _measure(figures: list[ReportFigure], out_dir: Path) -> None:
    for f in figures:
        f.size = svg_size(out_dir / f.svg)


def svg_size(path: Path) -> tuple[float, float]:
    """(width, height) in pt of an SVG matplotlib wrote (its root element's attributes)."""
    import re

    with open(path, encoding="utf-8") as fh:
        head = fh.read(2000)
    found = re.search(r'<svg[^>]*\bwidth="([\d.]+)pt"[^>]*\bheight="([\d.]+)pt"', head)
    return (float(found[1]), float(found[2])) if found else ()


def _draw(job: tuple[str, dict, str]) -> None:
    plot, args, stem = job
    svg, pdf = draw(plot, args)
    Path(stem + ".svg").write_bytes(svg)
    Path(stem + ".pdf").write_bytes(pdf)


# ---------------------------------------------------------------- data downloads
def _clean(x):
    """JSON-ready: numpy to lists, NaN to null, floats rounded to 6 significant digits."""
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (float, np.floating)):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def to_json(data) -> str:
    return json.dumps(_clean(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    """CSV text; floats at full precision, NaN and None empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v))
                         else repr(float(v)) if isinstance(v, (float, np.floating)) else v for v in row])
    return buf.getvalue()


def _est_cols(e: Optional[Estimate]) -> list:
    return [e.mean, e.lo, e.hi, e.n] if e is not None else [None, None, None, None]


def _ci_note(estimates) -> str:
    missing = any(e is not None and math.isfinite(e.mean) and not (math.isfinite(e.lo) and math.isfinite(e.hi))
                  for e in estimates)
    return " Values without whiskers have no interval (too few examples)." if missing else ""


def ordered_strata(keys) -> list[str]:
    """Strata in difficulty order, unknown ones after them alphabetically."""
    return [s for s in STRATA if s in keys] + sorted(set(keys) - set(STRATA))


# ---------------------------------------------------------------- figures of one model
def training_figure(key: str, training) -> Optional[ReportFigure]:
    if not training.steps:
        return None
    rows = [[s, l, v] for s, l, v in zip(training.steps, training.train_loss, training.val_exact_match)]
    return ReportFigure(
        key, "training",
        {"steps": list(training.steps), "train_loss": list(training.train_loss),
         "val_exact_match": list(training.val_exact_match)},
        "Training history saved in the checkpoint: training loss (cross-entropy per target token, left axis) and "
        "exact-match accuracy on the validation set (whole answer correct, right axis) against optimisation step.",
        "Line plot of training loss and validation exact match against training step.",
        to_csv(["step", "train_loss", "val_exact_match"], rows),
    )


def accuracy_figure(key: str, accuracy) -> ReportFigure:
    strata = ordered_strata(accuracy.by_stratum)
    ests = [accuracy.by_stratum[s] for s in strata]
    em = accuracy.exact_match
    return ReportFigure(
        key, "bars",
        {"categories": strata, "series": [{"name": "exact match", "mean": [e.mean for e in ests],
                                           "lo": [e.lo for e in ests], "hi": [e.hi for e in ests]}],
         "ylabel": "exact match", "reference": {"value": em.mean, "lo": em.lo, "hi": em.hi, "label": "all strata"}},
        f"Exact-match accuracy (greedy decoding; the whole final answer must be right) per difficulty stratum on a "
        f"fresh stratified test set of {accuracy.n} problems (seed {accuracy.seed}; "
        f"{'none from the model' + chr(39) + 's training data' if accuracy.unseen else 'may include training questions'}); "
        f"whiskers and the grey band are "
        f"95% Wilson intervals; dashed line: all strata together.{_ci_note(ests)}",
        "Bar chart of exact-match accuracy per difficulty stratum.",
        to_csv(["stratum", "exact_match", "lo", "hi", "n"], [[s, *_est_cols(e)] for s, e in zip(strata, ests)]),
    )


def column_view(attention, roles: list[str], layers: Optional[list[int]] = None) -> Optional[dict]:
    """What the per-column view of `roles` shows: heads, rows ((query role, column) with data),
    the key groups worth a column (every "n", "n-k" group; others where some head holds them or
    puts 0.3 of its attention; never a group of many keys), their mass [heads, rows, groups] and
    which cells are the heads' held roles."""
    t = attention.columns
    if t is None:
        return None
    if layers is not None:
        keep = [i for i, l in enumerate(t.layers) if l in layers]
        t = dataclasses.replace(t, layers=[t.layers[i] for i in keep], mass=t.mass[keep])
    L, H = t.mass.shape[:2]
    rows = [(q, c) for q, role in enumerate(t.query_roles) if role in roles for c in range(len(t.columns))
            if np.isfinite(t.mass[:, :, q, c]).any()]
    if not rows:
        return None
    mass = np.stack([t.mass[:, :, q, c] for q, c in rows], axis=2).reshape(L * H, len(rows), -1)
    held_at = {(r.layer, r.head, r.query_role, r.column): r.key_group for r in attention.head_roles if r.held}
    held = np.zeros_like(mass, dtype=bool)
    for li, l in enumerate(t.layers):
        for h in range(H):
            for i, (q, c) in enumerate(rows):
                g = held_at.get((l, h, t.query_roles[q], t.columns[c]))
                if g is not None:
                    held[li * H + h, i, t.key_groups.index(g)] = True
    with np.errstate(invalid="ignore"):
        top = np.nanmax(np.where(np.isfinite(mass), mass, -1), axis=(0, 1))
    keep = [g for g, (name, kind) in enumerate(zip(t.key_groups, t.group_kinds)) if kind != "lump" and (
        name == "n" or name.startswith("n-") or top[g] >= 0.3 or held[:, :, g].any())]
    return {"heads": [f"L{l}H{h}" for l in t.layers for h in range(H)], "n_heads": H, "layers": list(t.layers),
            "rows": [(t.query_roles[q], t.columns[c]) for q, c in rows], "groups": [t.key_groups[g] for g in keep],
            "mass": mass[:, :, keep], "held": held[:, :, keep], "cells": rows, "group_index": keep}


def column_view_figure(key: str, attention, roles: list[str], what: str,
                       layers: Optional[list[int]] = None) -> Optional[ReportFigure]:
    """The per-column view (DESIGN §4.1) of the queries of `roles` (e.g. ["answer"]) in `layers`
    (default all), `what` naming them."""
    v = column_view(attention, roles, layers)
    if v is None:
        return None
    t = attention.columns
    single = len({r for r, _ in v["rows"]}) == 1
    ylabels = [f"n={c}" if single else f"{r} n={c}" for r, c in v["rows"]]
    rows = []
    for hi, head in enumerate(v["heads"]):
        li, h = divmod(hi, v["n_heads"])
        li = t.layers.index(v["layers"][li])
        for (role, col), (q, c) in zip(v["rows"], v["cells"]):
            held = {r.key_group for r in attention.head_roles if r.held and (r.layer, r.head, r.query_role, r.column)
                    == (t.layers[li], h, role, col)}
            for g, name in enumerate(t.key_groups):
                if np.isfinite(t.mass[li, h, q, c, g]):
                    rows.append([head, role, col, name, t.mass[li, h, q, c, g], t.mass_lo[li, h, q, c, g],
                                 t.mass_hi[li, h, q, c, g], int(t.n[q, c, g]), t.untrained[li, h, q, c, g],
                                 t.untrained_lo[li, h, q, c, g], t.untrained_hi[li, h, q, c, g], t.chance[q, c, g],
                                 name in held])
    margin = attention.role_margin
    details = ""
    if roles == ["answer"]:
        caption = ("Attention mass from the position predicting answer column n (rows) to each key group (columns), "
                   "a panel per head; framed: the head's role at that column. A staircase of heads on n, n−1, n−2 "
                   "shows as frames one column apart from head to head.")
        details = (f"A head's role at a column is its largest key group there, held when its mass is above chance "
                   f"and above the same head in {t.twins} untrained twins by at least {fmt_margin(margin)}, with its "
                   f"95% interval above theirs. Groups no head holds or gives 0.3 of its attention are left out (the "
                   f"data has every group, with intervals).")
    else:
        caption = (f"As the answer-digit view, at {what} (rows: the digit's role in its step and the step's column "
                   f"n); s[n].d is step n's sum digit, s[n-1].cout step n−1's carry out.")
    return ReportFigure(
        key, "column_view",
        {"panels": [{"title": head, "matrix": v["mass"][i], "held": v["held"][i]} for i, head in enumerate(v["heads"])],
         "xlabels": v["groups"], "ylabels": ylabels, "ncols": v["n_heads"],
         "breaks": [i for i in range(1, len(v["rows"])) if v["rows"][i][0] != v["rows"][i - 1][0]]},
        caption,
        f"Small multiples of attention mass by column (rows) and key group (columns), one panel per head, at {what}.",
        to_csv(["head", "query_role", "column", "key_group", "mass", "mass_lo", "mass_hi", "n", "untrained",
                "untrained_lo", "untrained_hi", "uniform", "held"], rows),
        details=details,
    )


def fmt_margin(x: float) -> str:
    return f"{x:g}" if math.isfinite(x) else "the margin"


def patching_figures(key: str, patching, task: Optional[dict] = None) -> list[ReportFigure]:
    """One figure per (pair kind, direction), a panel per patched site; the first carries the
    definitions for all of them. Scratchpad positions are named and grouped by step (see
    position_axis), so a long input splits into readable rows."""
    groups: dict[tuple[str, str, str], list[PatchSweep]] = {}
    for s in patching.sweeps:
        groups.setdefault((s.pair_kind, s.target, s.direction), []).append(s)
    site_order = ["resid_pre", "attn_out", "mlp_out", "head"]
    out = []
    for (kind, target, direction), sweeps in sorted(groups.items(), key=lambda kv: (pair_rank(kv[0][0]), kv[0][1:])):
        sweeps.sort(key=lambda s: site_order.index(s.site) if s.site in site_order else len(site_order))
        panels = [_sites_panel(same, task) for same in _by_axis(sweeps)]
        n_pairs, n_dropped = sweeps[0].n_pairs, sweeps[0].n_dropped
        metric = "recovery" if direction == "denoise" else "damage"
        counts = "; ".join(sorted({f"{s.n_pairs} pairs used, {s.n_dropped} dropped" for s in sweeps}))
        read = "" if target == "answer" else f" read at the scratchpad's {target.replace('_', ' ')} token"
        caption = (f"Activation patching on {PAIR_SHORT.get(kind, kind + ' pairs')}{read}, {direction}: {metric} per "
                   f"layer and token position, one panel per patched site ({counts}; grey: no pair left).")
        where = "" if target == "answer" else f"-at-{target}"
        out.append(ReportFigure(
            f"{key}-{kind}{where}-{direction}", "heatmaps",
            {"panels": panels, "vmin": -1.0, "vmax": 1.0, "cmap": "RdBu_r", "cbar_label": metric},
            caption + ("" if not out else " Definitions under the first patching figure of this section."),
            f"Heatmaps of activation patching {metric} per layer and position for {kind} pairs"
            + ("" if target == "answer" else f", read at the scratchpad's {target} token") + ".",
            to_json({"pair_kind": kind, "target": target, "direction": direction, "metric": metric, "n_pairs": n_pairs,
                     "n_dropped": n_dropped,
                     "sites": {s.site: {"position_labels": s.position_labels, "mean": s.mean, "lo": s.lo, "hi": s.hi}
                               for s in sweeps}}),
            "json",
            "" if out else patch_details(patching.sweeps, task),
        ))
    return out


def _by_axis(sweeps: list[PatchSweep]) -> list[list[PatchSweep]]:
    """Sweeps grouped by their columns (token positions, or heads), in order of first appearance."""
    groups: dict[tuple, list[PatchSweep]] = {}
    for s in sweeps:
        groups.setdefault(tuple(s.position_labels), []).append(s)
    return list(groups.values())


def _sites_panel(sweeps: list[PatchSweep], task: Optional[dict]) -> dict:
    """One heatmap for sweeps over the same columns: a row per (site, layer), a line between sites,
    so the position labels are written once for all of them."""
    xlabels, groups = position_axis(list(sweeps[0].position_labels), task)
    mats = [np.asarray(s.mean, dtype=float) for s in sweeps]
    ylabels = [f"{s.site} L{l}" if l == 0 else f"L{l}" for s, m in zip(sweeps, mats) for l in range(m.shape[0])]
    breaks = list(np.cumsum([m.shape[0] for m in mats])[:-1])
    heads = all(s.site == "head" for s in sweeps)
    return {"title": "per head" if heads else "per token position", "matrix": np.vstack(mats), "xlabels": xlabels,
            "groups": groups, "ylabels": ylabels, "row_breaks": [int(b) for b in breaks]}


PAIR_SHORT = {"carry_flip": "carry-flip pairs", "sum_flip": "sum-flip pairs", "operator_flip": "operator-flip pairs"}
STEP_TEXT = ("Scratchpad positions are grouped by step, step n working answer column n ('9+3+0=2c1;'): a and b "
             "its operand digits, the operator, ci and co (bi and bo) the carry (borrow) in and out, d the column's "
             "digit, c (b) the letter before the carry out ('cb' where both occur, 'op' for either operator) and "
             "';|' the separator (';' between steps, '|' before the answer).")


def position_axis(labels: list[str], task: Optional[dict]) -> tuple[list[str], list[tuple[str, int, int]]]:
    """Column labels and groups for a patching panel. Scratchpad roles of + and - steps
    ('s1.cin': step 1's carry in; pairs.token_roles) are named by what they hold and grouped per
    step (its answer column); a multiplication scratchpad's ('s17': the target's 18th character)
    in tens; the prompt and the answer are groups of their own. Other labels are kept."""
    steps = [i for i, lab in enumerate(labels) if len(lab) > 1 and lab[0] == "s" and lab[1].isdigit()]
    if not steps:
        return labels, []
    names = STEP_ROLES.get((task or {}).get("task", ""), STEP_ROLES["add"])
    out, groups = list(labels), []
    first, last = steps[0], steps[-1] + 1
    if first:
        groups.append(("prompt", 0, first))
    for i in steps:
        step, _, place = labels[i][1:].partition(".")
        if place:
            out[i] = names[STEP_TOKENS.index(place)]
            name = f"column {step}"
        else:
            name = f"s{10 * (int(step) // 10)}–s{10 * (int(step) // 10) + 9}"
        if groups and groups[-1][0] == name and groups[-1][2] == i:
            groups[-1] = (name, groups[-1][1], i + 1)
        else:
            groups.append((name, i, i + 1))
    if last < len(labels):
        groups.append(("answer", last, len(labels)))
    return out, groups


STEP_ROLES = {  # what each place of a step holds, in pairs.STEP_TOKENS order ('9+3+0=2c1;', data.steps_text)
    "add": ["a", "+", "b", "+", "ci", "=", "d", "c", "co", ";|"],
    "sub": ["a", "−", "b", "−", "bi", "=", "d", "b", "bo", ";|"],
    "addsub": ["a", "op", "b", "op", "ci", "=", "d", "cb", "co", ";|"],
}


def pair_rank(kind: str) -> tuple[int, str]:
    order = list(PAIR_TEXT)
    return (order.index(kind) if kind in order else len(order), kind)


def patch_details(sweeps: list[PatchSweep], task: Optional[dict] = None) -> str:
    """The definitions behind every patching figure of a model, said once."""
    kinds = sorted({s.pair_kind for s in sweeps}, key=pair_rank)
    directions = sorted({s.direction for s in sweeps})
    sites = "; ".join(f"{site}: {SITE_TEXT.get(site, site)}" for site in dict.fromkeys(s.site for s in sweeps))
    parts = ["Pairs: " + "; ".join(PAIR_TEXT.get(k, f"{k} pairs") for k in kinds) + "."]
    if "denoise" in directions:
        parts.append("Denoising: the clean run's activation at one (layer, position) is patched into the corrupted "
                     "run; recovery = (LD_patched − LD_corrupt)/(LD_clean − LD_corrupt), 1 = clean behaviour "
                     "restored, 0 = no effect.")
    if "noise" in directions:
        parts.append("Noising: the corrupted run's activation is patched into the clean run; damage = (LD_clean − "
                     "LD_patched)/(LD_clean − LD_corrupt), 1 = the patch alone gives the corrupted behaviour, 0 = no "
                     "effect.")
    parts.append("LD = logit(correct digit) − logit(counterfactual digit) at the position predicting the affected "
                 "answer digit, mean over pairs; a pair is dropped when |LD_clean − LD_corrupt| is too small to "
                 "normalise by. Positions are token roles (a1: a's tens digit, op: the operator, ans0: the answer's "
                 "units digit), so pairs aimed at different answer columns are averaged role by role; each run reads "
                 "its own answer (teacher forced), so answer digits written before the affected one may differ "
                 "between the runs too.")
    if any(position_axis(list(s.position_labels), task)[1] for s in sweeps):
        parts.append(STEP_TEXT if STEP_ROLES.get((task or {}).get("task", "")) else
                     "Scratchpad positions (s<k>: the k-th character of the target) are grouped in tens.")
    parts.append(f"Sites: {sites}.")
    return " ".join(parts)


# Where a carry flows, stage by stage: (target role, the token the flip changes first, the token read).
CIRCUIT_TOKENS = {
    "carry_out": ("column {m} digits", "carry out\nof step {m}"),
    "carry_in": ("carry out\nof step {m}", "carry in\nof step {n}"),
    "sum_digit": ("carry in\nof step {n}", "sum digit\nof step {n}"),
    "answer": ("column {m} digits", "answer digit {n}"),
}
CIRCUIT_ORDER = ("carry_out", "carry_in", "sum_digit", "answer")


def circuit_figure(key: str, circuits) -> Optional[ReportFigure]:
    """The confirmed carry heads and neurons per answer column as a flow diagram, or None."""
    confirmed = [r for r in circuits.recoveries if r.confirmed and r.kind == "carry_flip"]
    if not confirmed or not all(n.passed for n in circuits.nulls if n.test in ("carry_head", "neuron")):
        return None
    rows = []
    for n in sorted({r.column for r in confirmed}):
        stages = []
        for target in CIRCUIT_ORDER:
            here = sorted((r for r in confirmed if r.column == n and r.target == target), key=lambda r: -r.recovery.mean)
            if here:
                source, dest = (t.format(n=n, m=n - 1) for t in CIRCUIT_TOKENS[target])
                if stages and stages[-1]["target"] != source:
                    source = stages[-1]["target"]
                stages.append({"source": source, "target": dest,
                               "components": [(r.component, round(r.recovery.mean, 2)) for r in here]})
        rows.append({"column": n, "stages": stages})
    caption = ("Confirmed carry components per answer column: each edge into a token is as wide as the component's "
               "patching recovery there (the share of the carry-flip logit difference it restores); only components "
               "whose test confirmed them, with every test passing its null on the untrained twins, are drawn.")
    data = [{"column": r.column, "target": r.target, "component": r.component, "recovery": r.recovery.mean,
             "lo": r.recovery.lo, "hi": r.recovery.hi} for r in confirmed]
    return ReportFigure(key, "circuit", {"rows": rows}, caption,
                        "Diagram of the confirmed carry heads and neurons per answer column.", to_json(data), "json")


def lens_figure(key: str, lens) -> ReportFigure:
    series = [{"name": "all examples", "mean": [e.mean for e in lens.prob_correct],
               "lo": [e.lo for e in lens.prob_correct], "hi": [e.hi for e in lens.prob_correct], "lw": 2.0}]
    strata = ordered_strata(lens.by_stratum)
    for i, s in enumerate(strata):
        series.append({"name": s, "mean": [e.mean for e in lens.by_stratum[s]], "ls": "--", "marker": ".",
                       "lw": 1.0, "color": i + 1})
    series.append({"name": "untrained model", "mean": [e.mean for e in lens.untrained_prob_correct], "ls": ":",
                   "lw": 1.2, "color": COLORS.index("#7f7f7f"), "marker": ""})
    header = ["layer", "prob_correct", "lo", "hi", "n"]
    header += [f"{s}_{c}" for s in strata for c in ("mean", "lo", "hi", "n")]
    header += [f"untrained_{c}" for c in ("mean", "lo", "hi", "n")]
    rows = [[lab, *_est_cols(lens.prob_correct[i])] + [v for s in strata for v in _est_cols(lens.by_stratum[s][i])]
            + _est_cols(lens.untrained_prob_correct[i]) for i, lab in enumerate(lens.layer_labels)]
    return ReportFigure(
        key, "lines",
        {"xlabels": list(lens.layer_labels), "series": series, "ylabel": "P(correct digit)", "xlabel": "decoded after"},
        "Logit lens: probability of the correct digit when the residual stream after each layer is decoded "
        "directly; dashed lines per difficulty stratum, dotted grey the same lens on an untrained model.",
        "Line plot of the probability of the correct digit by layer.",
        to_csv(header, rows),
        details="logits_l = W_U · LN_final(x_l) + b_U with LN_final recomputing its statistics on x_l; the "
        "probability is a softmax over the ten digits, teacher forced at the positions predicting answer digits, "
        "averaged over answer digits and examples. 'embed' is the embedding (input to block 0), 'L0', 'L1', … the "
        "residual stream after block 0, 1, …. Band: 95% bootstrap interval over examples (all examples). The "
        "untrained model has the same shape (the baseline; 0.1 is uniform over the digits).",
    )


def probe_summary(probing) -> list[dict]:
    """Probes per (label, hook), in layer then hook order: how many positions were probed and
    confirmed there, and means over those positions (each probe reads one position of one layout)."""
    groups: dict[tuple[str, str], list] = {}
    for p in probing.probes:
        groups.setdefault((p.label, p.hook), []).append(p)
    out = []
    for (label, hook), ps in groups.items():
        mean = {f: float(np.mean([getattr(p, f) for p in ps])) for f in ("majority", "untrained", "operand_baseline")}
        mean.update({f: float(np.mean([getattr(p, f).mean for p in ps]))
                     for f in ("accuracy", "selectivity", "over_baseline")})
        out.append({"label": label, "hook": hook, "layer": ps[0].layer, "site": hp.label(hook),
                    "positions": len(ps), "confirmed": sum(p.confirmed for p in ps),
                    "balanced": any(p.balanced for p in ps), **mean})
    return sorted(out, key=lambda r: (r["label"], r["layer"], hp.forward_rank(r["hook"]), r["hook"]))


ROLE_SHORT = {"answer": "ans", "operand_a": "a", "operand_b": "b", "carry_in": "cin", "sum_digit": "sum",
              "carry_out": "cout"}
PROBE_FIELDS = ["label", "layout", "position", "role", "column", "hook", "layer", "accuracy", "balanced", "majority",
                "untrained", "untrained_each", "selectivity", "selectivity_bound", "confirmed", "over_baseline",
                "operand_baseline", "twin_selectivity", "twin_confirmed", "n_train", "n_test"]


def probe_position_label(p) -> str:
    """'ans0', 'sum1', 'cout2': the role of the predicted digit and its column."""
    return f"{ROLE_SHORT.get(p.role, p.role)}{p.column}"


def probe_rows(probing, probes) -> list[list]:
    """Probes as CSV cells (PROBE_FIELDS; estimates as value, lo, hi; lists as JSON)."""
    rows = []
    for p in sorted(probes, key=lambda p: (p.label, p.layout, p.layer, hp.forward_rank(p.hook), p.hook)):
        row = []
        for f in PROBE_FIELDS:
            v = getattr(p, f)
            if isinstance(v, Estimate):
                row += [v.mean, v.lo, v.hi]
            elif f == "layout":
                row.append(probing.layouts[v].template if v < len(probing.layouts) else v)
            else:
                row.append(json.dumps(v) if isinstance(v, list) else v)
        rows.append(row)
    return rows


def probe_figures(key: str, probing) -> list[ReportFigure]:
    """One figure per label: selectivity per site (rows) and probed position (columns), a panel per layout."""
    sites = sorted({(p.layer, hp.forward_rank(p.hook), p.hook) for p in probing.probes})
    ylabels = [hp.label(h) for _, _, h in sites]
    header = []
    for f in PROBE_FIELDS:
        header += [f, f"{f}_lo", f"{f}_hi"] if f in ("accuracy", "selectivity", "over_baseline") else [f]
    out = []
    for label in sorted({p.label for p in probing.probes}):
        probes = [p for p in probing.probes if p.label == label]
        panels = []
        for li in sorted({p.layout for p in probes}):
            ps = [p for p in probes if p.layout == li]
            cols = list(dict.fromkeys(probe_position_label(p) for p in ps))
            matrix = np.full((len(sites), len(cols)), np.nan)
            for p in ps:
                matrix[sites.index((p.layer, hp.forward_rank(p.hook), p.hook)), cols.index(probe_position_label(p))] = \
                    p.selectivity.mean
            panels.append({"title": f"layout {li}", "matrix": matrix, "xlabels": cols, "ylabels": ylabels})
        out.append(ReportFigure(
            f"{key}-{label}", "heatmaps",
            {"panels": panels, "vmin": -1.0, "vmax": 1.0, "cmap": "RdBu_r", "cbar_label": f"selectivity ({label})"},
            f"Probe selectivity for {label}: held-out accuracy minus that of the same probe on {probing.n_twins} "
            f"untrained twins, per site (rows) and position predicting a target digit (columns), a panel per layout.",
            f"Heatmaps of {label} probe selectivity per site and position, one per layout.",
            to_csv(header, probe_rows(probing, probes)),
            details="" if out else ("Columns name the digit a position predicts by its role and column, e.g. 'ans1' "
                                    "the answer digit of column 1, 'cout0' the carry out written in scratchpad step 0; "
                                    "grey: not probed (the label is constant there). The data download lists every "
                                    "probe with its baselines and intervals."),
        ))
    return out


def component_rank(component: str) -> tuple:
    """Natural order of ablated components: layer, then heads, attention, MLP; others after."""
    import re

    m = re.fullmatch(r"L(\d+)(?:H(\d+)|\.(attn|mlp))", component)
    if not m:
        return (1, 0, 0, 0, component)
    layer, head, part = m.groups()
    return (0, int(layer), 0 if head is not None else (1 if part == "attn" else 2), int(head or 0), component)


def ablation_figure(key: str, interventions) -> Optional[ReportFigure]:
    if not interventions.effects:
        return None
    methods = sorted({e.method for e in interventions.effects}, key=lambda m: (m != interventions.default_method, m))
    components = sorted({e.component for e in interventions.effects}, key=component_rank)
    by = {(e.component, e.method): e.metrics.exact_match for e in interventions.effects}
    series = []
    for m in methods:
        ests = [by.get((c, m)) for c in components]
        series.append({"name": f"{m} ablation", "mean": [e.mean if e else None for e in ests],
                       "lo": [e.lo if e else None for e in ests], "hi": [e.hi if e else None for e in ests]})
    clean = interventions.clean.exact_match
    effects = sorted(interventions.effects, key=lambda e: (component_rank(e.component), e.method))
    rows = [[e.component, e.method, *_est_cols(e.metrics.exact_match), *_est_cols(e.metrics.digit_accuracy),
             *_est_cols(e.metrics.logprob)] for e in effects]
    methods_text = "; ".join(METHOD_TEXT.get(m, f"{m} ablation") for m in methods)
    return ReportFigure(
        key, "bars",
        {"categories": components, "series": series, "ylabel": "exact match after ablation",
         "reference": {"value": clean.mean, "lo": clean.lo, "hi": clean.hi, "label": "no ablation"}},
        f"Ablation: exact match with one component ablated at a time (default: {interventions.default_method} "
        f"ablation; dashed line and band: no ablation); the lower the bar, the more the answer depends on it."
        f"{_ci_note(by.values())}",
        "Bar chart of exact-match accuracy with each component ablated.",
        to_csv(["component", "method", "exact_match", "em_lo", "em_hi", "n", "digit_accuracy", "da_lo", "da_hi",
                "da_n", "logprob", "lp_lo", "lp_hi", "lp_n"], rows),
        details=f"Components: a head such as 'L0H1' (layer 0, head 1), a layer's whole attention 'L0.attn' or MLP "
        f"'L0.mlp'. Methods: {methods_text}. Exact match on the analysis examples; whiskers and band: 95% bootstrap "
        f"intervals over examples.",
    )


def cumulative_figure(key: str, interventions) -> Optional[ReportFigure]:
    if not interventions.cumulative:
        return None
    clean = interventions.clean.exact_match
    steps = sorted(interventions.cumulative, key=lambda e: component_rank_k(e.component))
    ests = [clean] + [e.metrics.exact_match for e in steps]
    labels = ["0"] + [e.component.removeprefix("top-") for e in steps]
    methods = sorted({e.method for e in steps})
    return ReportFigure(
        key, "lines",
        {"xlabels": labels, "series": [{"name": "exact match", "mean": [e.mean for e in ests],
                                        "lo": [e.lo for e in ests], "hi": [e.hi for e in ests]}],
         "ylabel": "exact match", "xlabel": "heads ablated together (k most important)"},
        f"Cumulative ablation: exact-match accuracy with the k most important heads ablated together, in order of "
        f"importance (k = 0: no ablation); {'; '.join(METHOD_TEXT.get(m, m + ' ablation') for m in methods)}. "
        f"Band: 95% bootstrap interval over examples.",
        "Line plot of exact-match accuracy against the number of heads ablated.",
        to_csv(["k", "method", "exact_match", "lo", "hi", "n"],
               [[lab, steps[i - 1].method if i else "none", *_est_cols(e)]
                for i, (lab, e) in enumerate(zip(labels, ests))]),
    )


def component_rank_k(component: str) -> tuple:
    k = component.removeprefix("top-")
    return (0, int(k), component) if k.isdigit() else (1, 0, component)


# ---------------------------------------------------------------- figures of one example
def attention_example_figure(key: str, ex: ExampleFindings, layer: int) -> ReportFigure:
    weights = np.asarray(ex.attention)[layer]
    answer = list(ex.answer_positions)
    return ReportFigure(
        key, "attention",
        {"tokens": list(ex.tokens), "weights": weights, "answer_positions": answer, "layer": layer},
        f"Attention of layer {layer}'s heads on {ex.prompt}{ex.target}: rows are query tokens, columns key tokens; "
        f"red marks the positions that predict answer digits.",
        f"Attention heatmaps of layer {layer}, one per head.",
        to_json({"tokens": ex.tokens, "layer": layer, "answer_positions": answer, "weights": np.round(weights, 4)}),
        "json",
        "" if layer else "Teacher forced: A[h, q, k] = softmax(q·k/√d_head + causal mask), one panel per head; the "
        "empty upper triangle is masked. Token labels left of (and, on the first row, under) the first panel of a "
        "row apply to the whole row. A long input is labelled by its runs (prompt, each scratchpad step, answer), "
        "with lines between them; the data download has every token.",
    )


def digit_labels(ex: ExampleFindings, answer_order: str = "plain") -> list[str]:
    """'col n: d' for each written answer digit (n = 0 is the least significant column)."""
    n = len(ex.answer_positions)
    digits = list(ex.target.split("|")[-1])[:n]
    cols = list(range(n)) if answer_order == "reversed" else list(range(n - 1, -1, -1))
    return [f"col {c}: {d}" for c, d in zip(cols, digits)]


def lens_example_figure(key: str, ex: ExampleFindings, layer_labels: list[str],
                        answer_order: str = "plain") -> ReportFigure:
    prob = np.asarray(ex.lens_prob, dtype=float)
    top = np.asarray(ex.lens_top)
    ent = np.asarray(ex.lens_entropy, dtype=float)
    cols = digit_labels(ex, answer_order)
    if len(cols) != prob.shape[1]:
        cols = [f"digit {i}" for i in range(prob.shape[1])]
    rows = [[layer_labels[i], cols[j], prob[i, j], int(top[i, j]), ent[i, j]]
            for i in range(prob.shape[0]) for j in range(prob.shape[1])]
    return ReportFigure(
        key, "lens_example",
        {"layer_labels": layer_labels, "digit_labels": cols, "prob": prob, "top": top},
        f"Logit lens on {ex.prompt}{ex.target}: probability of the correct digit after each layer (rows) at the "
        f"position predicting each answer digit (columns, 'col n' counted from the least significant), with the top "
        f"digit in each cell. The residual stream ('embed': the embedding; 'L0', 'L1', …: after each block) is "
        f"decoded with the final LayerNorm and unembedding, softmax over the ten digits.",
        "Heatmap of the probability of the correct digit per layer and answer digit.",
        to_csv(["layer", "answer_digit", "prob_correct", "top_digit", "entropy_nats"], rows),
    )

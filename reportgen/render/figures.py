"""Figures made at render time from the results: what each shows (with its caption and data), the
plotting functions, and a deterministic renderer that writes each figure once as SVG (shown in
the site) and PDF (for papers, and placed as it is into the PDF report).

Plotting uses matplotlib's object API (no pyplot, no global state) under a fixed rc context:
`svg.hashsalt` fixed and dates left out of the metadata, so the same data always gives the same
bytes. SVG text stays text (smaller files, selectable in the browser).
Layouts are computed by hand in inches: a layout engine would double the drawing time. Figures
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

RC = {
    "svg.hashsalt": "reportgen",
    "svg.fonttype": "none",
    "pdf.fonttype": 3,
    "font.family": ["DejaVu Sans", "sans-serif"],  # SVG text falls back to a sans font where DejaVu is missing
    "font.size": 9,  # the PDF's body text; the site shows figures at 1.25x, matching its 15 px text
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "image.interpolation": "nearest",
}
SITE_SCALE = 1.25
SVG_META = {"Date": None, "Creator": "reportgen"}
PDF_META = {"CreationDate": None, "ModDate": None, "Creator": "reportgen", "Producer": "reportgen"}
ATTENTION_CMAP = "Blues"  # attention weights, in the static figures and the interactive viewer alike
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#17becf"]
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
    import matplotlib.backends.backend_pdf  # noqa: F401  imported once here, not in every worker
    import matplotlib.backends.backend_svg  # noqa: F401

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
    import matplotlib

    plot, args, stem = job
    with matplotlib.rc_context(RC):
        fig = PLOTS[plot](**args)
        svg, pdf = io.BytesIO(), io.BytesIO()
        fig.savefig(svg, format="svg", metadata=SVG_META)
        fig.savefig(pdf, format="pdf", metadata=PDF_META)
    Path(stem + ".svg").write_bytes(svg.getvalue())
    Path(stem + ".pdf").write_bytes(pdf.getvalue())


@functools.lru_cache(maxsize=None)
def colour_stops(cmap: str, n: int = 9) -> tuple[str, ...]:
    """`n` evenly spaced colours of a matplotlib colour map as '#rrggbb', for the site's script to
    interpolate between: the viewer then shows weights in the static figures' colours."""
    import matplotlib

    cm = matplotlib.colormaps[cmap]
    return tuple(matplotlib.colors.to_hex(cm(i / (n - 1))) for i in range(n))


# ---------------------------------------------------------------- plotting functions
PAGE_W = 6.8  # inches: the widest figure (the PDF's text width; the site shows it at 1.25x)


def _figure(w: float, h: float):
    """A figure to be laid out by hand (see the module docstring)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _axes(fig, x: float, y: float, w: float, h: float):
    """Axes at a position given in inches from the bottom-left corner."""
    W, H = fig.get_size_inches()
    return fig.add_axes((x / W, y / H, w / W, h / H))


_EM = {**dict.fromkeys("0123456789", 0.636), **dict.fromkeys("+=<>−×±", 0.838), **dict.fromkeys(";:|.,'", 0.337),
       " ": 0.318, "_": 0.5, "-": 0.361, "(": 0.39, ")": 0.39, "*": 0.5, "i": 0.278, "l": 0.278, "j": 0.278,
       "r": 0.411, "t": 0.392, "f": 0.352, "m": 0.974, "w": 0.818, "M": 0.863, "W": 0.989}  # DejaVu Sans advances


def _text_w(text, size: float = 9.0) -> float:
    """Width in inches of `text` in DejaVu Sans at `size` pt (advance widths, no kerning): margins are
    computed by hand, without a layout engine."""
    return sum(_EM.get(ch, 0.62 if ch.islower() else 0.7) for ch in str(text)) * size / 72


def _widest(labels) -> float:
    return max((_text_w(l) for l in labels), default=0.1)


def _xlabel_room(labels, rotation: int) -> float:
    """Height in inches that x tick labels need at a rotation of 0, 45, 60 or 90 degrees."""
    sin = {0: 0.0, 45: 0.71, 60: 0.87, 90: 1.0}[rotation]
    return 0.3 + _widest(labels) * sin


def _rotation(labels, width_per_label: float) -> int:
    return 0 if _widest(labels) < 0.9 * width_per_label else 45


def _arr(values) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in values], dtype=float)


def _err(mean, lo, hi) -> np.ndarray:
    """Asymmetric error bars; a missing interval draws no whisker."""
    err = np.vstack([mean - lo, hi - mean])
    return np.where(np.isfinite(err), np.clip(err, 0, None), 0)


def _top_legend(fig, ax, ncols: int) -> None:
    fig.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 1.0), frameon=False,
               ncols=ncols)


def plot_training(steps, train_loss, val_exact_match):
    fig = _figure(6.4, 3.0)
    ax = _axes(fig, 0.85, 0.55, 6.4 - 0.85 - 0.8, 3.0 - 0.55 - 0.15)
    loss = _arr(train_loss)
    lines = ax.plot(steps, loss, color=COLORS[0], lw=1.2, label="train loss")
    finite = loss[np.isfinite(loss)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("train loss (cross-entropy)")
    val = _arr(val_exact_match)
    if val.size == len(steps) and np.isfinite(val).any():
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        lines += ax2.plot(steps, val, color=COLORS[1], lw=1.2, marker="o", ms=2.5, label="validation exact match")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("validation exact match")
    ax.legend(lines, [l.get_label() for l in lines], loc="center right", frameon=False)
    return fig


def plot_bars(categories, series, ylabel, ylim=(0.0, 1.0), reference=None):
    """Grouped bars with 95% whiskers; `reference` draws a dashed line with its interval band."""
    n, k = len(categories), len(series)
    width_in = min(6.8, max(3.6, 1.2 + 0.22 * n * k + 0.2 * n))
    rotation = _rotation(categories, (width_in - 0.9) / max(n, 1))
    bottom = _xlabel_room(categories, rotation)
    legend = k > 1 or reference is not None
    top = 0.35 if legend else 0.15
    height = 2.4 + bottom + top
    fig = _figure(width_in, height)
    ax = _axes(fig, 0.7, bottom, width_in - 0.85, height - bottom - top)
    x = np.arange(n)
    width = 0.8 / k
    for i, s in enumerate(series):
        mean = _arr(s["mean"])
        ax.bar(x + (i - (k - 1) / 2) * width, mean, width, yerr=_err(mean, _arr(s["lo"]), _arr(s["hi"])),
               color=COLORS[i % len(COLORS)], label=s["name"], capsize=2, error_kw={"lw": 0.8})
    if reference:
        ax.axhline(reference["value"], ls="--", lw=1, color="0.25", label=reference["label"])
        if all(map(math.isfinite, (reference["lo"], reference["hi"]))):
            ax.axhspan(reference["lo"], reference["hi"], color="0.5", alpha=0.15, lw=0)
    ax.set_xticks(x, categories, rotation=rotation, ha="right" if rotation else "center",
                  rotation_mode="anchor" if rotation else "default")
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    if legend:
        _top_legend(fig, ax, min(4, k + (reference is not None)))
    return fig


def _draw_lines(ax, xlabels, series, ylim, rotation):
    x = np.arange(len(xlabels))
    for i, s in enumerate(series):
        color = COLORS[s.get("color", i) % len(COLORS)]
        mean = _arr(s["mean"])
        ax.plot(x, mean, color=color, lw=s.get("lw", 1.4), ls=s.get("ls", "-"), marker=s.get("marker", "o"),
                ms=3, label=s["name"])
        if s.get("lo") is not None:
            ax.fill_between(x, _arr(s["lo"]), _arr(s["hi"]), color=color, alpha=0.18, lw=0)
    ax.set_xticks(x, xlabels, rotation=rotation, ha="right" if rotation else "center",
                  rotation_mode="anchor" if rotation else "default")
    ax.set_xlim(-0.3, len(xlabels) - 0.7)
    if ylim:
        ax.set_ylim(*ylim)


def plot_lines(xlabels, series, ylabel, xlabel="", ylim=(0.0, 1.0)):
    """Lines over categorical x (layers, k); series with lo/hi get a 95% band."""
    width = min(6.4, 2.8 + 0.5 * len(xlabels))
    rotation = _rotation(xlabels, (width - 0.9) / max(len(xlabels), 1))
    bottom = _xlabel_room(xlabels, rotation) + (0.2 if xlabel else 0)
    height = 2.4 + bottom
    fig = _figure(width, height)
    ax = _axes(fig, 0.7, bottom, width - 0.85, height - bottom - 0.12)
    _draw_lines(ax, xlabels, series, ylim, rotation)
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)
    ax.legend(frameon=False, loc="best")
    return fig


def plot_line_panels(panels, ylabel, xlabel="", ylim=(0.0, 1.0)):
    """One small line plot per panel (e.g. per probe label), sharing a legend at the bottom."""
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, left, gap_x, panel_h = 6.6, 0.65, 0.35, 1.7
    panel_w = (width - left - 0.1 - (cols - 1) * gap_x) / cols
    all_labels = [l for p in panels for l in p["xlabels"]]
    rotation = _rotation(all_labels, panel_w / max(max(len(p["xlabels"]) for p in panels), 1))
    below = _xlabel_room(all_labels, rotation) + (0.2 if xlabel else 0)
    gap_y, legend, top = below + 0.3, 0.6, 0.25
    height = legend + rows * panel_h + (rows - 1) * gap_y + below + top
    fig = _figure(width, height)
    first = None
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        y = height - top - (r + 1) * panel_h - r * gap_y
        ax = _axes(fig, left + c * (panel_w + gap_x), y, panel_w, panel_h)
        _draw_lines(ax, p["xlabels"], p["series"], ylim, rotation)
        ax.set_title(p["title"])
        if c == 0:
            ax.set_ylabel(ylabel)
        else:
            ax.tick_params(labelleft=False)
        ax.set_xlabel(xlabel)
        first = first or ax
    fig.legend(*first.get_legend_handles_labels(), loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False,
               ncols=3)
    return fig


MIN_COL, MAX_COL = 0.15, 0.3  # inches per heatmap column: narrower cannot carry a 9 pt label each
CBAR_W = 0.95  # inches right of a row of heatmaps for its colour bar, ticks and label


def plot_heatmaps(panels, vmin, vmax, cmap, cbar_label, annotate=False):
    """Heatmaps sharing one colour scale, in rows no wider than the page, each row with its colour
    bar right beside its last panel. A panel too wide for a row at legible columns (e.g. 51 token
    positions of a scratchpad model) is split at its column groups (`groups`: (label, start, end)
    runs such as one scratchpad step, named under the axis) into segments on successive rows.
    `row_breaks` draws a line above those rows (e.g. between patched sites). Labels too wide for
    their column are turned upright. NaN cells (no data) are grey."""
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad="#d9d9d9")
    ylabel_w = 0.15 + _widest(l for p in panels for l in p["ylabels"])
    shared_y = all(p["ylabels"] == panels[0]["ylabels"] for p in panels)
    gap = lambda p: 0.25 + (0 if shared_y else 0.15 + _widest(p["ylabels"]))  # noqa: E731  before a panel in a row
    avail = PAGE_W - ylabel_w - CBAR_W
    pieces = [piece for p in panels for piece in _segments(p, int(avail // MIN_COL))]
    fewest = len(_flow(pieces, MIN_COL, gap, avail))
    widest = max(len(p["xlabels"]) for p in pieces)
    cell_w = next((c for c in np.arange(MAX_COL, MIN_COL, -0.01)
                   if widest * c <= avail and len(_flow(pieces, c, gap, avail)) == fewest), MIN_COL)
    rows = _flow(pieces, cell_w, gap, avail)
    n_rows = max(len(p["ylabels"]) for p in panels)
    cell_h = min(max(0.3, 1.0 / n_rows), 3.6 / n_rows)  # at least an inch tall, at most 3.6
    title = 0.32 if any(p.get("title") for p in pieces) else 0.1
    upright = lambda label: _text_w(label) > 0.85 * cell_w  # noqa: E731
    layouts = []
    for row in rows:
        labels = [l for p in row for l in p["xlabels"]]
        below = 0.22 + max([_text_w(l) for l in labels if upright(l)] + [0.13])
        below += 0.25 if any(p.get("groups") for p in row) else 0.0
        layouts.append((row, below, cell_h * max(len(p["ylabels"]) for p in row)))
    width = ylabel_w + max(sum(len(p["xlabels"]) * cell_w + gap(p) * (i > 0) for i, p in enumerate(row))
                           for row in rows) + CBAR_W
    height = sum(title + h + below for _, below, h in layouts) + 0.05
    fig = _figure(width, height)
    y = height
    for row, below, row_h in layouts:
        y -= title + row_h
        x = ylabel_w
        for i, p in enumerate(row):
            x += gap(p) if i else 0.0
            m = np.asarray(p["matrix"], dtype=float)
            w = cell_w * m.shape[1]
            ax = _axes(fig, x, y + row_h - cell_h * m.shape[0], w, cell_h * m.shape[0])
            im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto")
            ax.set_xticks(range(m.shape[1]), p["xlabels"])
            for t in ax.get_xticklabels():
                t.set_rotation(90 if upright(t.get_text()) else 0)
            ax.set_yticks(range(m.shape[0]), p["ylabels"] if (i == 0 or not shared_y) else [])
            ax.tick_params(length=0)
            ax.set_title(p.get("title", ""), loc="left")
            ax.spines[:].set_visible(False)
            _column_groups(ax, p.get("groups") or [], below)
            for r in p.get("row_breaks") or []:
                ax.axhline(r - 0.5, color="0.2", lw=1.0)
            if annotate and cell_w >= 0.3:
                for (r, c), v in np.ndenumerate(m):
                    if math.isfinite(v):
                        ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7.5,
                                color="white" if (v - vmin) / (vmax - vmin) > 0.6 else "black")
            x += w
        cax = _axes(fig, x + 0.15, y + row_h - min(row_h, 3.6), 0.12, min(row_h, 3.6))
        bar = fig.colorbar(im, cax=cax, label=cbar_label)
        if row_h < 1.2:  # a short bar holds three ticks
            bar.set_ticks([vmin, (vmin + vmax) / 2, vmax])
        y -= below
    return fig


def _segments(panel: dict, max_cols: int) -> list[dict]:
    """`panel` as one piece, or split into pieces of at most `max_cols` columns at its groups'
    boundaries (evenly where a single group is wider); later pieces are titled '... (cont.)'."""
    n = len(panel["xlabels"])
    if n <= max_cols:
        return [panel]
    groups = panel.get("groups") or [("", i, min(n, i + max_cols)) for i in range(0, n, max_cols)]
    cuts, start = [0], 0
    for _, g0, g1 in groups:
        if g1 - start > max_cols and g0 > start:
            cuts.append(g0)
            start = g0
        while g1 - start > max_cols:
            start += max_cols
            cuts.append(start)
    while n - start > max_cols:  # columns after the last group
        start += max_cols
        cuts.append(start)
    cuts.append(n)
    out = []
    for k, (a, b) in enumerate(zip(cuts, cuts[1:])):
        m = np.asarray(panel["matrix"], dtype=float)[:, a:b]
        title = panel.get("title", "")
        out.append({**panel, "title": title + (" (cont.)" if k and title else ""), "matrix": m,
                    "xlabels": panel["xlabels"][a:b],
                    "groups": [(lab, max(g0, a) - a, min(g1, b) - a) for lab, g0, g1 in panel.get("groups") or []
                               if g0 < b and g1 > a]})
    return out


def _flow(pieces: list[dict], cell_w: float, gap, avail: float) -> list[list[dict]]:
    """Pieces placed left to right, `gap(piece)` inches before each but the first of a row, a new
    row when the next would pass `avail` inches."""
    rows, used = [[]], 0.0
    for p in pieces:
        w = len(p["xlabels"]) * cell_w
        if rows[-1] and used + gap(p) + w > avail:
            rows.append([])
            used = 0.0
        used += (gap(p) if rows[-1] else 0.0) + w
        rows[-1].append(p)
    return rows


def _column_groups(ax, groups, below: float) -> None:
    """Each group's name centred under its columns, at the foot of the tick labels, and a line
    between neighbouring groups."""
    if not groups:
        return
    H = ax.figure.get_size_inches()[1]
    h = ax.get_position().height * H
    for label, g0, g1 in groups:
        if label:
            ax.text((g0 + g1 - 1) / 2, -(below - 0.08) / h, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", color="0.25")
        if g0 > 0:
            ax.axvline(g0 - 0.5, color="0.35", lw=0.6)


def plot_attention(tokens, weights, answer_positions, layer):
    """All heads of one layer for one example, labels drawn once, on the first panel of each row
    (text is most of the drawing time). Up to 27 tokens every token is labelled at 9 pt (upright
    under the panel, 0.11 in apart: four panels of a 12-token input fit the page); a longer
    input (a scratchpad) is labelled by its runs (prompt, each step, answer) with lines between
    them, and red marks at the rows predicting answer digits."""
    import matplotlib

    w = np.asarray(weights, dtype=float)
    n_heads, n_pos = w.shape[0], w.shape[-1]
    per_token = n_pos <= 27
    groups = [] if per_token else token_groups(tokens)
    names = tokens if per_token else [g[0] for g in groups]
    label_w = (0.08 if per_token else 0.14) + _widest(names)
    below = 0.15 + _widest(names)
    gap, top, right = 0.1, 0.3, 0.8
    panel = max(1.25, 0.11 * n_pos) if per_token else min(3.0, (PAGE_W - label_w - gap - right) / 2)
    cols = min(n_heads, 4 if label_w + 4 * panel + 3 * gap + right <= PAGE_W else 2)
    rows = math.ceil(n_heads / cols)
    width = label_w + cols * panel + (cols - 1) * gap + right
    height = rows * (panel + top) + below
    fig = _figure(width, height)
    future = np.triu(np.ones((n_pos, n_pos), bool), 1)
    cm = matplotlib.colormaps[ATTENTION_CMAP].with_extremes(bad="white")
    answer = set(answer_positions)
    im = None
    for h in range(n_heads):
        r, c = divmod(h, cols)
        y = height - (r + 1) * (panel + top) - (below if r else 0)
        ax = _axes(fig, label_w + c * (panel + gap), y, panel, panel)
        im = ax.imshow(np.ma.masked_array(w[h], future), cmap=cm, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"L{layer}H{h}", pad=3)
        for _, g0, _ in groups[1:]:
            ax.axhline(g0 - 0.5, color="0.6", lw=0.4)
            ax.axvline(g0 - 0.5, color="0.6", lw=0.4)
        if c == 0:
            _token_axes(ax, tokens, groups, answer, r == 0, panel)
    cax = _axes(fig, width - right + 0.15, height - panel - top, 0.12, panel)
    fig.colorbar(im, cax=cax, label="attention weight")
    return fig


CHAR = 0.058  # inches per character of a 7 pt tick label, for margins computed without a layout engine


def _longest(labels) -> int:
    return max((len(str(l)) for l in labels), default=1)


def plot_column_view(panels, xlabels, ylabels, ncols, breaks=()):
    """Small multiples of one heatmap per head (rows: query column, columns: key group) on one
    colour scale, framed where the head holds that group, a white line before each row in
    `breaks` (where the query role changes); labels on the outer panels only."""
    import matplotlib
    from matplotlib.patches import Rectangle

    cm = matplotlib.colormaps["magma_r"].with_extremes(bad="#d9d9d9")
    ylabel_w = 0.12 + CHAR * _longest(ylabels)
    right, gap, top, title = 0.85, 0.12, 0.05, 0.22

    def cell(cols: int) -> float:
        return min(0.24, (6.8 - ylabel_w - right - (cols - 1) * gap) / (cols * len(xlabels)))

    # As many panels per row as fit with legible columns, in whole fractions of a layer's heads.
    ncols = max([d for d in range(1, ncols + 1) if ncols % d == 0 and (d == 1 or cell(d) >= 0.1)])
    nrows = math.ceil(len(panels) / ncols)
    cell_w = max(0.08, cell(ncols))
    cell_h = min(0.24, max(0.13, 1.2 / len(ylabels)))
    size = max(5.0, min(7.0, 0.85 * 72 * cell_w))
    bottom = 0.3 + CHAR * size / 7 * _longest(xlabels)
    pw, ph = cell_w * len(xlabels), cell_h * len(ylabels)
    width = ylabel_w + ncols * pw + (ncols - 1) * gap + right
    height = top + nrows * (title + ph) + (nrows - 1) * gap + bottom
    fig = _figure(width, height)
    im = None
    for i, p in enumerate(panels):
        r, c = divmod(i, ncols)
        y = height - top - (r + 1) * (title + ph) - r * gap
        ax = _axes(fig, ylabel_w + c * (pw + gap), y, pw, ph)
        m = np.asarray(p["matrix"], dtype=float)
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cm, vmin=0.0, vmax=1.0, aspect="auto")
        for b in breaks:
            ax.axhline(b - 0.5, color="white", linewidth=1.5)
        for (yy, xx) in zip(*np.nonzero(np.asarray(p["held"]))):
            ax.add_patch(Rectangle((xx - 0.5, yy - 0.5), 1, 1, fill=False, edgecolor=COLORS[0], linewidth=1.4))
        ax.set_xticks(range(len(xlabels)), xlabels if r == nrows - 1 or i + ncols >= len(panels) else [],
                      rotation=90, fontsize=size)
        ax.set_yticks(range(len(ylabels)), ylabels if c == 0 else [], fontsize=size)
        ax.tick_params(length=0)
        ax.spines[:].set_visible(False)
        ax.set_title(p["title"], fontsize=8, pad=2)
    grid_h = nrows * (title + ph) + (nrows - 1) * gap - title
    cax = _axes(fig, width - right + 0.15, bottom, 0.1, min(grid_h, 2.5))
    fig.colorbar(im, cax=cax, label="attention mass")
    return fig


def _token_axes(ax, tokens, groups, answer, first_row: bool, panel: float) -> None:
    """Token labels left of a panel (and under it on the first row): each token, or each run of
    tokens with red marks at the answer-predicting rows between the labels and the panel."""
    xt, yt = ax.get_xaxis_transform(), ax.get_yaxis_transform()
    inch = 1 / panel  # axes fraction per inch
    red = {"color": COLORS[3], "weight": "bold"}
    if not groups:
        for j, tok in enumerate(tokens):
            ax.text(-0.04 * inch, j, tok, transform=yt, ha="right", va="center", **(red if j in answer else {}))
            if first_row:
                ax.text(j, -0.03 * inch, tok, transform=xt, ha="center", va="top", rotation=90)
        return
    for label, g0, g1 in groups:
        ax.text(-0.1 * inch, (g0 + g1 - 1) / 2, label, transform=yt, ha="right", va="center")
        if first_row:
            ax.text((g0 + g1 - 1) / 2, -0.03 * inch, label, transform=xt, ha="center", va="top", rotation=90)
    for j in answer:
        ax.plot([-0.08 * inch, -0.02 * inch], [j, j], transform=yt, color=COLORS[3], lw=1.5, clip_on=False)


def token_groups(tokens) -> list[tuple[str, int, int]]:
    """Runs of a long input read as units, each (its text, start, end): BOS, the prompt (through
    the first '='), each scratchpad step (through ';' or '|'), then the answer with EOS."""
    runs, start = [], 0
    for j, tok in enumerate(tokens):
        prompt_end = tok == "=" and len(runs) <= 1
        if tok == "BOS" or tok in (";", "|") or prompt_end or j == len(tokens) - 1:
            runs.append((start, j + 1))
            start = j + 1
    return [(_run_text(tokens[a:b]), a, b) for a, b in runs]


def _run_text(run: list[str]) -> str:
    return "".join(run[:-1]) + " EOS" if len(run) > 1 and run[-1] == "EOS" else "".join(run)


def plot_lens_example(layer_labels, digit_labels, prob, top):
    """P(correct digit) per layer (rows) and answer digit (columns), annotated with the top digit."""
    import matplotlib

    p = np.asarray(prob, dtype=float)
    n_layers, n_digits = p.shape
    cell_w, cell_h, left, right, bottom, top_m = 0.85, 0.42, 0.65, 1.05, 0.4, 0.1
    width, height = left + n_digits * cell_w + right, bottom + n_layers * cell_h + top_m
    fig = _figure(width, height)
    ax = _axes(fig, left, bottom, n_digits * cell_w, n_layers * cell_h)
    cm = matplotlib.colormaps["viridis"].with_extremes(bad="#d9d9d9")
    im = ax.imshow(np.ma.masked_invalid(p), cmap=cm, vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(p):
        text = f"{v:.2f}\ntop {int(top[i][j])}" if math.isfinite(v) else "n/a"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if v > 0.6 else "white")
    ax.set_xticks(range(n_digits), digit_labels)
    ax.set_yticks(range(n_layers), layer_labels)
    ax.tick_params(length=0)
    cax = _axes(fig, left + n_digits * cell_w + 0.12, bottom, 0.1, n_layers * cell_h)
    fig.colorbar(im, cax=cax, label="P(correct digit)")
    return fig


def plot_circuit(rows):
    """The confirmed carry components, a row per answer column: tokens (boxes) linked through the
    heads and neurons confirmed between them (rounded boxes); an edge into a token is as wide as
    the component's patching recovery there, labelled with it."""
    from matplotlib.patches import FancyBboxPatch

    stages = max(len(r["stages"]) for r in rows)
    band = [max(1, *(len(st["components"]) for st in r["stages"])) for r in rows]
    width, height = 1.2 + 2.6 * stages + 1.0, 0.5 + sum(0.55 * b + 0.45 for b in band)
    fig = _figure(width, height)
    ax = _axes(fig, 0, 0, width, height)
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.axis("off")
    top = height - 0.25
    for r, b in zip(rows, band):
        mid = top - (0.55 * b + 0.45) / 2
        ax.text(0.1, mid + 0.22 * b, f"column {r['column']}", fontsize=8, fontweight="bold", va="bottom")
        x = 0.9
        _token(ax, x, mid, r["stages"][0]["source"])
        for st in r["stages"]:
            comps = st["components"]
            ys = [mid + 0.55 * (len(comps) - 1) / 2 - 0.55 * i for i in range(len(comps))]
            for (name, rec), y in zip(comps, ys):
                ax.plot([x + 0.5, x + 1.1], [mid, y], color="#999999", lw=0.8)
                ax.plot([x + 1.7, x + 2.1], [y, mid], color="#1f77b4", lw=0.8 + 5 * max(rec, 0), solid_capstyle="butt")
                ax.text(x + 1.74, y + 0.1, f"{rec:.2f}", fontsize=6.5, ha="left", color="#1f77b4")
                ax.add_patch(FancyBboxPatch((x + 1.1, y - 0.16), 0.6, 0.32, boxstyle="round,pad=0.02",
                                            fc="#e8f0fa", ec="#1f77b4", lw=0.8))
                ax.text(x + 1.4, y, name, fontsize=7.5, ha="center", va="center")
            x += 2.6
            _token(ax, x, mid, st["target"])
        top -= 0.55 * b + 0.45
    return fig


def _token(ax, x: float, y: float, label: str) -> None:
    ax.text(x, y, label, fontsize=7, ha="center", va="center", wrap=True,
            bbox={"boxstyle": "square,pad=0.3", "fc": "white", "ec": "#333333", "lw": 0.8})


PLOTS = {
    "circuit": plot_circuit,
    "training": plot_training,
    "bars": plot_bars,
    "lines": plot_lines,
    "line_panels": plot_line_panels,
    "heatmaps": plot_heatmaps,
    "attention": plot_attention,
    "column_view": plot_column_view,
    "lens_example": plot_lens_example,
}


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

"""The report's figures: every plot a model or study report shows, drawn from plain data (lists,
numpy arrays) and written as SVG (shown in the site) and PDF (for papers, and placed as it is into
the PDF report). `PLOTS` names them; render.figures says which figures a report has and with what
data, and draws each with `draw` in worker processes.

Plotting uses matplotlib's object API (no pyplot, no global state) under a fixed rc context:
`svg.hashsalt` fixed and dates left out of the metadata, so the same data always gives the same
bytes. SVG text stays text (smaller files, selectable in the browser).
Layouts are computed by hand in inches: a layout engine would double the drawing time.
Matplotlib is imported inside the functions that draw: importing this module costs numpy only.
"""

from __future__ import annotations

import functools
import io
import math

import numpy as np

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
SVG_META = {"Date": None, "Creator": "reportgen"}
PDF_META = {"CreationDate": None, "ModDate": None, "Creator": "reportgen", "Producer": "reportgen"}
ATTENTION_CMAP = "Blues"  # attention weights, in the static figures and the interactive viewer alike
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#7f7f7f", "#17becf"]


def draw(plot: str, args: dict) -> tuple[bytes, bytes]:
    """The figure `PLOTS[plot](**args)` as SVG and PDF bytes."""
    import matplotlib

    with matplotlib.rc_context(RC):
        fig = PLOTS[plot](**args)
        svg, pdf = io.BytesIO(), io.BytesIO()
        fig.savefig(svg, format="svg", metadata=SVG_META)
        fig.savefig(pdf, format="pdf", metadata=PDF_META)
    return svg.getvalue(), pdf.getvalue()


def import_writers() -> None:
    """Import matplotlib's SVG and PDF writers now: called before forking the workers that draw,
    so that each does not import them again."""
    import matplotlib.backends.backend_pdf  # noqa: F401
    import matplotlib.backends.backend_svg  # noqa: F401


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



def plot_panels(panels, cols, legend, panel_w=1.55, panel_h=1.15):
    """A grid of small line plots. Each panel: title, xlabel, ylabel, ylim, xlog, series
    [{x, y, color, lw, ls, lo, hi}] and marks [{x, color}] (dotted vertical lines with a triangle
    on top: the step at which something first happened). `legend`: [{name, color, ls}] shown once
    below the panels."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    cols = max(1, min(cols, len(panels)))
    rows = math.ceil(len(panels) / cols)
    left, gap_x, gap_y, top, bottom = 0.55, 0.45, 0.62, 0.3, 0.45
    width = max(left + cols * panel_w + (cols - 1) * gap_x + 0.15, 3.0)
    entry_w = max((0.45 + CHAR * len(e["name"]) for e in legend), default=1.0)
    per_row = max(1, min(len(legend), int((width - 0.2) // entry_w))) if legend else 1
    legend_h = (0.2 * math.ceil(len(legend) / per_row) + 0.1) if legend else 0
    height = top + rows * panel_h + (rows - 1) * gap_y + bottom + legend_h
    fig = _figure(width, height)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        ax = _axes(fig, left + c * (panel_w + gap_x), height - top - (r + 1) * panel_h - r * gap_y, panel_w, panel_h)
        for s in p["series"]:
            x, y = _arr(s["x"]), _arr(s["y"])
            color = COLORS[s.get("color", 0) % len(COLORS)]
            ls = s.get("ls", "-")
            ax.plot(x, y, color=color, lw=s.get("lw", 1.1), ls=ls, marker="o" if len(x) < 12 and ls == "-" else None,
                    ms=2.2)
            if s.get("lo") is not None:
                ax.fill_between(x, _arr(s["lo"]), _arr(s["hi"]), color=color, alpha=0.15, lw=0)
        for m in p.get("marks", []):
            color = COLORS[m.get("color", 0) % len(COLORS)]
            ax.axvline(m["x"], color=color, ls=":", lw=0.9)
            ax.plot([m["x"]], [1.0], marker="v", color=color, ms=4, transform=ax.get_xaxis_transform(), clip_on=False)
        # Few ticks and no minor ones: text is most of a small panel's drawing time.
        if p.get("xlog") and p["series"]:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=6))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: compact(v)))
            ax.xaxis.set_minor_locator(NullLocator())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(4))
        if p.get("ylim"):
            ax.set_ylim(*p["ylim"])
        if p.get("ylim") and p["ylim"][0] == 0 and p["ylim"][1] in (1, 1.02):
            ax.set_yticks([0, 0.5, 1])
        else:
            ax.yaxis.set_major_locator(MaxNLocator(4))
        if not p["series"]:
            ax.set_xticks([])
            ax.text(0.5, 0.5, p.get("empty", "no data"), ha="center", va="center", transform=ax.transAxes,
                    fontsize=6.5, color="0.4")
        ax.set_title(p["title"], fontsize=7.5)
        ax.set_xlabel(p.get("xlabel", ""), fontsize=7, labelpad=1)
        ax.set_ylabel(p.get("ylabel", ""), fontsize=7, labelpad=1)
        ax.tick_params(labelsize=6, pad=1)
    if legend:
        handles = [Line2D([], [], color=COLORS[e.get("color", 0) % len(COLORS)], ls=e.get("ls", "-"), lw=1.4,
                          label=e["name"]) for e in legend]
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), frameon=False, ncols=per_row,
                   fontsize=6.5)
    return fig


def compact(v: float) -> str:
    """A tick label: 400, 1.6k, 128k, 2M."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


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
    "panels": plot_panels,
}

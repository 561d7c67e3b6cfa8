"""Figures of a study report: small multiples (one small panel per run, seed or grid point) so
that a study of 50 models stays a handful of figures. Drawn by `figures.render_figures` like every
other figure (the plot is registered in `figures.PLOTS` under "panels")."""

from __future__ import annotations

import math

from reportgen.render import figures as F

MAX_PANELS = 24  # per figure: a taller one would not fit a PDF page; more panels make more figures


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
    entry_w = max((0.45 + F.CHAR * len(e["name"]) for e in legend), default=1.0)
    per_row = max(1, min(len(legend), int((width - 0.2) // entry_w))) if legend else 1
    legend_h = (0.2 * math.ceil(len(legend) / per_row) + 0.1) if legend else 0
    height = top + rows * panel_h + (rows - 1) * gap_y + bottom + legend_h
    fig = F._figure(width, height)
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        ax = F._axes(fig, left + c * (panel_w + gap_x), height - top - (r + 1) * panel_h - r * gap_y, panel_w, panel_h)
        for s in p["series"]:
            x, y = F._arr(s["x"]), F._arr(s["y"])
            color = F.COLORS[s.get("color", 0) % len(F.COLORS)]
            ls = s.get("ls", "-")
            ax.plot(x, y, color=color, lw=s.get("lw", 1.1), ls=ls, marker="o" if len(x) < 12 and ls == "-" else None,
                    ms=2.2)
            if s.get("lo") is not None:
                ax.fill_between(x, F._arr(s["lo"]), F._arr(s["hi"]), color=color, alpha=0.15, lw=0)
        for m in p.get("marks", []):
            color = F.COLORS[m.get("color", 0) % len(F.COLORS)]
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
        handles = [Line2D([], [], color=F.COLORS[e.get("color", 0) % len(F.COLORS)], ls=e.get("ls", "-"), lw=1.4,
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


F.PLOTS["panels"] = plot_panels


def panels_figure(key: str, panels: list[dict], cols: int, legend: list[dict], caption: str, alt: str, data_rows: list,
                  data_header: list[str], size: tuple[float, float] = (1.55, 1.15)) -> F.ReportFigure:
    """A small-multiples figure; `size` is one panel's width and height in inches."""
    args = {"panels": panels, "cols": cols, "legend": legend, "panel_w": size[0], "panel_h": size[1]}
    return F.ReportFigure(key, "panels", args, caption, alt, F.to_csv(data_header, data_rows))


def chunks(items: list, size: int = MAX_PANELS) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]

"""Figures of a study report: small multiples (one small panel per run, seed or grid point) so
that a study of 50 models stays a handful of figures. Drawn by `figures.render_figures` like every
other figure (plots.report.plot_panels)."""

from __future__ import annotations

from reportgen.render import figures as F

MAX_PANELS = 24  # per figure: a taller one would not fit a PDF page; more panels make more figures


def panels_figure(key: str, panels: list[dict], cols: int, legend: list[dict], caption: str, alt: str, data_rows: list,
                  data_header: list[str], size: tuple[float, float] = (1.55, 1.15)) -> F.ReportFigure:
    """A small-multiples figure; `size` is one panel's width and height in inches."""
    args = {"panels": panels, "cols": cols, "legend": legend, "panel_w": size[0], "panel_h": size[1]}
    return F.ReportFigure(key, "panels", args, caption, alt, F.to_csv(data_header, data_rows))


def chunks(items: list, size: int = MAX_PANELS) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]

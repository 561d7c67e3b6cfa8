"""A model report, rendered: its pages, figures and tables as a static site, and `report.pdf`,
written from a results `Report` alone, with the stamp that lets an unchanged site be skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from reportgen.parallel import cpus
from reportgen.render.figures import figures_in_background, render_figures
from reportgen.render.pdf import figure_keys, render_pdf
from reportgen.render.site import SiteBuilder, copy_static, environment, write_site
from reportgen.render.stamp import fingerprint, is_current, write_stamp
from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, dump_results


def render_site(report, out_dir: Path, pdf: bool = True, log: Optional[Callable[[str], None]] = None,
                summary: bool = False, workers: Optional[int] = None) -> None:
    """Write the site (index, model, example, comparison and provenance pages, figures, tables,
    search index, results files) into `out_dir`, and `report.pdf` when `pdf` is set.

    Files are written in place; a caller that must never leave a half-written report renders into
    a fresh directory and swaps it in afterwards. `workers` caps the figure-drawing processes
    (default: the usable CPUs, at most 4).
    """
    say = log or (lambda message: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    builder = SiteBuilder(report, pdf)
    pages = builder.pages()
    env = environment()
    json_bytes, npz_bytes = dump_results(report)
    copy_static(out_dir)
    say(f"rendering {len(builder.figures)} figures")
    if pdf:
        _figures_and_pdf(builder, pages, out_dir, env, {RESULTS_FILE: json_bytes, ARRAYS_FILE: npz_bytes},
                         summary, workers, say)
    else:
        render_figures(builder.figures, out_dir, workers)
    say(f"writing {len(pages)} pages and {len(builder.tables)} tables")
    write_site(builder, pages, out_dir, env)
    (out_dir / RESULTS_FILE).write_bytes(json_bytes)
    (out_dir / ARRAYS_FILE).write_bytes(npz_bytes)
    write_stamp(out_dir, fingerprint(json_bytes, npz_bytes, pdf, summary))


def _figures_and_pdf(builder: SiteBuilder, pages: list, out_dir: Path, env, attachments: dict[str, bytes],
                     summary: bool, workers: Optional[int], say: Callable[[str], None]) -> None:
    """The PDF's figures first, then report.pdf typeset here while the figures only the site shows
    (the examples past the PDF's cap) are drawn in other processes: typesetting uses one CPU."""
    keys = figure_keys(builder, pages, summary)
    render_figures([f for f in builder.figures if f.key in keys], out_dir, workers)
    rest = [f for f in builder.figures if f.key not in keys]
    say("typesetting report.pdf" + (f" (and drawing the site's other {len(rest)} figures)" if rest else ""))
    with figures_in_background(rest, out_dir, (workers or min(4, cpus())) - 1):
        render_pdf(builder, pages, out_dir, env, attachments, summary)


def site_is_current(report, out_dir: Path, pdf: bool, summary: bool = False) -> bool:
    """True when `out_dir` already holds exactly what render_site would write for `report`."""
    return is_current(Path(out_dir), fingerprint(*dump_results(report), pdf, summary))

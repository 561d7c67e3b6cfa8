"""The render stage: the static site and the PDF report, made from a results `Report` alone.

No torch here: `reportgen render RESULTS_DIR` re-renders a saved report without a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from reportgen.render.figures import render_figures
from reportgen.render.pdf import render_pdf
from reportgen.render.site import SiteBuilder, environment, write_site
from reportgen.render.stamp import fingerprint, is_current, write_stamp
from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, dump_results

__all__ = ["render_site", "site_is_current"]


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
    say(f"rendering {len(builder.figures)} figures")
    render_figures(builder.figures, out_dir, workers)
    say(f"writing {len(pages)} pages and {len(builder.tables)} tables")
    env = environment()
    write_site(builder, pages, out_dir, env)
    json_bytes, npz_bytes = dump_results(report)
    (out_dir / RESULTS_FILE).write_bytes(json_bytes)
    (out_dir / ARRAYS_FILE).write_bytes(npz_bytes)
    if pdf:
        say("typesetting report.pdf")
        render_pdf(builder, pages, out_dir, env, {RESULTS_FILE: json_bytes, ARRAYS_FILE: npz_bytes}, summary)
    write_stamp(out_dir, fingerprint(json_bytes, npz_bytes, pdf, summary))


def site_is_current(report, out_dir: Path, pdf: bool, summary: bool = False) -> bool:
    """True when `out_dir` already holds exactly what render_site would write for `report`."""
    return is_current(Path(out_dir), fingerprint(*dump_results(report), pdf, summary))

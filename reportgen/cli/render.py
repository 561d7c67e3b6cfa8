"""`reportgen render`: re-render a report from results directories alone (no model, no torch)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "render", help="render a site and PDF from saved results, without torch",
        description="Load results.json and arrays.npz from each RESULTS_DIR (a site or results directory "
                    "written by `reportgen build` or `reportgen analyze`), merge their models into one "
                    "report and render it.")
    p.add_argument("results", nargs="+", metavar="RESULTS_DIR")
    p.add_argument("--out", default="site", help="site directory, replaced atomically (default: %(default)s)")
    p.add_argument("--title", help="report title (default: the title saved with a single RESULTS_DIR, "
                                   "else one naming the models)")
    p.add_argument("--no-pdf", action="store_true", help="skip report.pdf")
    p.add_argument("--pdf", choices=["full", "summary"], default="full",
                   help="report.pdf in full, or its short version: findings, comparison, one chapter page per "
                        "model (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.atomic import check_out_dir
    from reportgen.build import make_report, print_progress, write_site
    from reportgen.names import unique_names
    from reportgen.results.store import load_results

    reports = [load_results(d) for d in args.results]
    out = Path(args.out).resolve()
    check_out_dir(out)
    models = [m for r in reports for m in r.models]
    models = [dataclasses.replace(m, name=n) for m, n in zip(models, unique_names([m.name for m in models]))]
    title = args.title if args.title is not None else (reports[0].title if len(reports) == 1 else None)
    write_site(make_report(models, title), out, pdf=not args.no_pdf, progress=print_progress,
               summary=args.pdf == "summary")
    return 0

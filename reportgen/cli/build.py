"""`reportgen build`: analyse checkpoints and write the report site (and PDF) in one command."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "build", help="analyse checkpoints and write the report site and PDF",
        description="Evaluate and analyse each checkpoint, collect the results, and render a static site "
                    "with results.json, arrays.npz and report.pdf. Results are cached per model in "
                    ".reportgen-cache beside the output, so an unchanged rebuild only re-renders.")
    p.add_argument("--checkpoint", action="append", required=True,
                   help="checkpoint of the primary model, e.g. runs/add3_rev/checkpoint_best.pt")
    p.add_argument("--compare", nargs="+", action="extend", default=[], metavar="CHECKPOINT",
                   help="checkpoints to compare with the primary model")
    p.add_argument("--examples", nargs="+", action="extend", metavar="PROBLEM",
                   help='problems to analyse one by one, e.g. "59 + 73" "88 + 99" (default: the config\'s examples, '
                        'else chosen by the analyses)')
    p.add_argument("--config", help="analysis YAML (default: configs/interpretability.yaml if present, "
                                    "else built-in defaults)")
    p.add_argument("--out", default="site", help="site directory, replaced atomically (default: %(default)s)")
    p.add_argument("--title", help="report title (default: names the models)")
    p.add_argument("--no-pdf", action="store_true", help="skip report.pdf")
    p.add_argument("--pdf", choices=["full", "summary"], default="full",
                   help="report.pdf in full, or its short version: findings, comparison, one chapter page per "
                        "model (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--no-cache", action="store_true", help="recompute every model's results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.build import build_report, print_progress

    build_report(args.checkpoint, args.compare, args.examples, args.config, args.out, args.title,
                 pdf=not args.no_pdf, device=args.device, progress=print_progress, use_cache=not args.no_cache,
                 pdf_summary=args.pdf == "summary")
    return 0

"""`reportgen sweep`: train a grid of models over seeds, analyse them through training, and render
one study report."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="train and analyse a grid of models over seeds; render a study report",
        description="Train every (grid point, seed) of SWEEP.yaml, analyse every final checkpoint and training "
                    "snapshot, and render one study report (site and PDF) into OUT/report. Finished jobs are kept: "
                    "running the same command again (after a crash or Ctrl-C) runs only what is unfinished.")
    p.add_argument("sweep", metavar="SWEEP.yaml", help="sweep file, e.g. configs/sweep_formats.yaml")
    p.add_argument("--out", required=True, help="study directory, e.g. studies/formats (created; reused to resume)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: worker processes on this machine (default); ray: tasks on a Ray cluster")
    p.add_argument("--address", default="auto",
                   help="Ray cluster: auto (the one this machine belongs to, default), HOST:PORT of its head, or "
                        "local (a private Ray instance for this sweep)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="train and analyse on this device (overrides the configs)")
    p.add_argument("--jobs", type=int, help="jobs at once (default: the usable cores; with Ray, the cluster's CPUs)")
    p.add_argument("--no-pdf", action="store_true", help="skip report.pdf")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from reportgen.build import print_progress
    from reportgen.sweep.run import run_sweep

    study = run_sweep(args.sweep, args.out, engine=args.engine, address=args.address, device=args.device,
                      jobs=args.jobs, pdf=not args.no_pdf, progress=print_progress)
    return 1 if study.failures else 0

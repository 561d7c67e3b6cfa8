"""Render benchmark: the synthetic two-model report of the render tests, N examples per model,
site plus PDF. Prints wall time and CPU time per stage (CPU includes the figure worker processes),
so numbers stay meaningful on a busy machine.

    PYTHONPATH=. python benchmarks/bench_render.py [--examples 16] [--out /tmp/bench-site] [--no-pdf]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from render_fixtures import make_report  # noqa: E402

from reportgen.render.report import render_site  # noqa: E402


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-pdf", action="store_true")
    args = parser.parse_args()
    report = make_report(args.examples)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-render-"))
    marks = [("start", time.perf_counter(), cpu())]

    def log(message: str) -> None:
        marks.append((message, time.perf_counter(), cpu()))

    render_site(report, out, pdf=not args.no_pdf, log=log)
    log("done")
    for (name, w0, c0), (_, w1, c1) in zip(marks, marks[1:]):
        print(f"{name:<40} wall {w1 - w0:6.2f} s   cpu {c1 - c0:6.2f} s")
    wall, used = marks[-1][1] - marks[0][1], marks[-1][2] - marks[0][2]
    print(f"{'total':<40} wall {wall:6.2f} s   cpu {used:6.2f} s   -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

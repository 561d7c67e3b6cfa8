"""Build benchmark: `reportgen build` of the two demo models with all analyses, site and PDF.

Runs a cold build (empty result cache, no site) and then a rebuild with nothing changed, and
prints wall and CPU time and peak memory per stage (evaluation and analyses per model, figures,
HTML, PDF; each line measures the step it names, up to the next line), the cold/rebuild ratio and
the peak memory (PSS) of this process and its workers during the cold build. The analysis config is
configs/interpretability.yaml with n_example_pages set to --examples.
Targets on the 2-core development machine: cold build under 60 s with 16 examples per model,
rebuild under 5 s, peak memory under 2 GB.

    python benchmarks/bench_build.py [--examples 16] [--out /tmp/bench-build/site] [--no-pdf]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reportgen.atomic import check_replaceable  # noqa: E402
from reportgen.errors import ReportgenError  # noqa: E402
from reportgen.build import build_report  # noqa: E402

DEMOS = [str(ROOT / "runs" / name / "checkpoint_best.pt") for name in ("add3_rev", "add3_steps")]


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class PeakMemory:
    """Samples the proportional set size (PSS: shared pages split between the processes sharing
    them, so forked figure workers are not counted twice) of process `pid` (default: this one) and
    its descendants every 100 ms, keeping the largest total (Linux /proc)."""

    def __init__(self, pid: int | None = None):
        self.pid = pid or os.getpid()
        self.peak_kb = 0
        self.step_kb = 0  # the peak since the last take()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def take(self) -> int:
        """The peak (kB) since the last call."""
        kb, self.step_kb = self.step_kb, 0
        return kb

    def _run(self):
        while not self._stop.wait(0.1):
            now = sum(_pss_kb(pid) for pid in _tree(self.pid))
            self.peak_kb, self.step_kb = max(self.peak_kb, now), max(self.step_kb, now)


def _tree(pid: int) -> list[int]:
    pids, i = [pid], 0
    while i < len(pids):
        for task in Path(f"/proc/{pids[i]}/task").glob("*/children"):
            try:
                pids += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
        i += 1
    return pids


def _pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def timed_build(checkpoints: list[str], out: Path, config: Path, pdf: bool,
                memory: PeakMemory) -> tuple[float, list[tuple[str, float, float, int]]]:
    """Build once; return the wall time and the (step, wall s, cpu s, peak kB) of each progress step."""
    memory.take()
    marks = [("start", time.perf_counter(), cpu(), 0)]
    build_report(checkpoints[:1], checkpoints[1:], None, str(config), out, None, pdf=pdf,
                 progress=lambda message: marks.append((message, time.perf_counter(), cpu(), memory.take())))
    marks.append(("done", time.perf_counter(), cpu(), memory.take()))
    steps = [(name, w1 - w0, c1 - c0, kb) for (name, w0, c0, _), (_, w1, c1, kb) in zip(marks, marks[1:])]
    return marks[-1][1] - marks[0][1], steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16, help="example pages per model (default %(default)s)")
    parser.add_argument("--out", type=Path, help="site directory (default: a temporary one)")
    parser.add_argument("--no-pdf", action="store_true")
    parser.add_argument("--checkpoints", nargs="+", default=DEMOS, help="default: the two demo models")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    out = args.out or work / "site"
    try:  # a cold build starts from nothing, but never deletes a user's files
        check_replaceable(out, "--out", "the site")
    except ReportgenError as e:
        parser.error(str(e))
    shutil.rmtree(out.parent / ".reportgen-cache", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    config = work / "config.yaml"
    raw = yaml.safe_load((ROOT / "configs" / "interpretability.yaml").read_text())
    config.write_text(yaml.safe_dump({**raw, "n_example_pages": args.examples}))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.examples} examples per model "
          f"(the PDF shows the config's max_pdf_examples = {raw.get('max_pdf_examples')}); "
          f"{'site only' if args.no_pdf else 'site and PDF'}")
    with PeakMemory() as memory:
        cold, steps = timed_build(args.checkpoints, out, config, not args.no_pdf, memory)
        for name, wall, used, kb in steps:
            print(f"  {name[:64]:<64} wall {wall:6.2f} s  cpu {used:6.2f} s  peak {kb / 1024:5.0f} MB")
        peak_kb = memory.peak_kb
        warm, _ = timed_build(args.checkpoints, out, config, not args.no_pdf, memory)
    print(f"cold build {cold:.1f} s (target < 60 s); rebuild with nothing changed {warm:.2f} s (target < 5 s); "
          f"cold/rebuild {cold / warm:.0f}x; peak memory of the cold build {peak_kb / 1024:.0f} MB PSS, "
          f"process and workers (target < 2048 MB) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

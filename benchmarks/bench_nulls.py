"""What the nulls cost: `reportgen analyze --all` and `reportgen build` of the demo models with 3,
4 and 5 untrained twins.

Every confirming test also runs on `untrained_twins` freshly initialised models (at least 2), so
the cost without nulls cannot be run; it is the intercept of a straight line through the three
timings. The script prints each timing, the cost of one twin (the slope) and the share of the
default twins (5) in each command's time. The build is timed without its PDF and with an empty
result cache (the twins change the analyses, not the rendering).

    python benchmarks/bench_nulls.py [--demos add3_rev add3_steps] [--twins 3 4 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reportgen.analysis.config import UNTRAINED_TWINS as DEFAULT_TWINS  # noqa: E402


def timed(argv: list[str]) -> float:
    """Wall seconds of `python -m reportgen ARGV` (which must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "reportgen", *argv], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"reportgen {' '.join(argv)} failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def config(work: Path, twins: int) -> Path:
    raw = yaml.safe_load((ROOT / "configs" / "interpretability.yaml").read_text())
    path = work / f"twins{twins}.yaml"
    path.write_text(yaml.safe_dump({**raw, "untrained_twins": twins}))
    return path


def report(what: str, twins: list[int], seconds: list[float]) -> None:
    slope, intercept = np.polyfit(twins, seconds, 1)
    at_default = intercept + slope * DEFAULT_TWINS
    print(f"{what}: " + ", ".join(f"{k} twins {s:.1f} s" for k, s in zip(twins, seconds))
          + f"; one twin {slope:.1f} s; without nulls (extrapolated) {intercept:.1f} s; "
          f"the default {DEFAULT_TWINS} twins are {DEFAULT_TWINS * slope / at_default:.0%} of {at_default:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", nargs="+", default=["add3_rev", "add3_steps"])
    parser.add_argument("--twins", nargs="+", type=int, default=[3, 4, 5])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-nulls-"))
    checkpoints = [str(ROOT / "runs" / demo / "checkpoint_best.pt") for demo in args.demos]
    for demo, checkpoint in zip(args.demos, checkpoints):
        seconds = [timed(["analyze", "--checkpoint", checkpoint, "--all", "--config", str(config(work, k)),
                          "--output-dir", str(work / f"analyze-{demo}-{k}"), "--quiet"]) for k in args.twins]
        report(f"analyze --all {demo}", args.twins, seconds)
    compare = [a for c in checkpoints[1:] for a in ("--compare", c)]
    seconds = [timed(["build", "--checkpoint", checkpoints[0], *compare, "--config", str(config(work, k)),
                      "--out", str(work / f"site-{k}"), "--no-cache", "--no-pdf"]) for k in args.twins]
    report(f"build --no-pdf {' + '.join(args.demos)}", args.twins, seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How often each confirming test confirms something on untrained models: its measured error rate.

For each demo config, N freshly initialised models of its shape are each analysed as if they
were the trained model, against 3 other untrained models as their twins (what a report does),
on the same held-out problems the demo's report uses. A test is sound when the share of models
with any confirmation stays near its stated 5% family-wise rate.

    python benchmarks/null_rates.py [--models 24] [--demos add3_rev add3_steps]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reportgen.analysis import engine  # noqa: E402
from reportgen.analysis.attention import ROLE_MARGIN  # noqa: E402
from reportgen.analysis.circuits import CircuitConfig, run_circuits  # noqa: E402
from reportgen.analysis.examples import build_batch, held_out_records  # noqa: E402
from reportgen.analysis.run import cached_runs  # noqa: E402
from reportgen.model.checkpoint import load_checkpoint  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

SEED_BASE = 90_000  # initialisation seeds far from the reports' own twins


def rates(demo: str, n_models: int) -> dict[str, list[int]]:
    """Per test: for each untrained subject, how many components it confirmed."""
    ckpt = load_checkpoint(f"runs/{demo}/checkpoint_best.pt")
    records, _ = held_out_records(ckpt, 300, 0)
    batch = build_batch(records, ckpt.tokenizer, ckpt.model.cfg.n_ctx)
    out: dict[str, list[int]] = {}
    for i in range(n_models):
        subject = engine.untrained_twin(ckpt.model, SEED_BASE + 4 * i)
        twins = [engine.untrained_twin(ckpt.model, SEED_BASE + 4 * i + k) for k in (1, 2, 3)]
        runs = cached_runs(subject, ckpt.tokenizer, batch, twins, {"circuits"}, i, ROLE_MARGIN)
        f = run_circuits(subject, ckpt.tokenizer, batch, runs.cache, runs.attention, twins, runs.twin_caches,
                         CircuitConfig(), seed=i)
        for null in f.nulls:
            out.setdefault(null.test, []).append(null.confirmed)
        print(f"  {demo} untrained model {i + 1}/{n_models}: "
              + ", ".join(f"{n.test} {n.confirmed}" for n in f.nulls), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--demos", nargs="+", default=["add3_rev", "add3_steps"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    for demo in args.demos:
        start = time.perf_counter()
        found = rates(demo, args.models)
        print(f"{demo}: {args.models} untrained models, each against 3 untrained twins "
              f"({time.perf_counter() - start:.0f} s)")
        for test, counts in found.items():
            k = sum(c > 0 for c in counts)
            ci = binomtest(k, len(counts)).proportion_ci()
            print(f"  {test:14s} models confirming anything: {k}/{len(counts)} = {k / len(counts):.2f} "
                  f"[95% CI {ci.low:.2f}, {ci.high:.2f}]  (stated family-wise rate 0.05)")


if __name__ == "__main__":
    main()

"""How often each confirming test confirms something on untrained models: its measured error rate.

For each demo config, N freshly initialised models of its shape are each analysed as if they
were the trained model, against `untrained_twins` (the analysis default, 5) other untrained
models as its twins (what a report does), on the problems the demo's report uses: circuits'
head and neuron tests and probing's probes (also printing the mean probe selectivity, which
should be near 0). A test is sound when the share of models with any confirmation stays near
its stated 5% family-wise rate.

    python benchmarks/null_rates.py [--models 24] [--demos add3_rev add3_steps] [--twins 5]
                                    [--analyses circuits probing]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reportgen.analysis import engine  # noqa: E402
from reportgen.analysis.attention import ROLE_MARGIN  # noqa: E402
from reportgen.analysis.circuits import run_circuits  # noqa: E402
from reportgen.analysis.config import AnalysisConfig  # noqa: E402
from reportgen.analysis.plan import prepare  # noqa: E402
from reportgen.analysis.probing import analyze_probing  # noqa: E402
from reportgen.analysis.examples import build_batch, held_out_records  # noqa: E402
from reportgen.analysis.run import cached_runs  # noqa: E402
from reportgen.model.checkpoint import load_checkpoint  # noqa: E402
from scipy.stats import binomtest  # noqa: E402

SEED_BASE = 90_000  # initialisation seeds far from the reports' own twins


def rates(demo: str, n_models: int, n_twins: int, analyses: list[str]) -> tuple[dict[str, list[int]], list[float]]:
    """Per test: for each untrained subject, how many components it confirmed; and each subject's
    mean probe selectivity (probing)."""
    ckpt = load_checkpoint(f"runs/{demo}/checkpoint_best.pt")
    records, _ = held_out_records(ckpt, 300, 0)
    batch = build_batch(records, ckpt.tokenizer, ckpt.model.cfg.n_ctx)
    cfg = AnalysisConfig()
    plan = prepare(ckpt, cfg, enabled=["probing"]) if "probing" in analyses else None
    out: dict[str, list[int]] = {}
    selectivity = []
    for i in range(n_models):
        first = SEED_BASE + (n_twins + 1) * i
        subject = engine.untrained_twin(ckpt.model, first)
        twins = [engine.untrained_twin(ckpt.model, first + k) for k in range(1, n_twins + 1)]
        nulls = []
        if "circuits" in analyses:
            runs = cached_runs(subject, ckpt.tokenizer, batch, twins, {"circuits"}, i, ROLE_MARGIN, cfg.circuits)
            nulls += run_circuits(subject, ckpt.tokenizer, batch, runs.cache, runs.attention, twins, runs.twin_caches,
                                  cfg.circuits, i, screens=runs.screens).nulls
        if plan is not None:
            f = analyze_probing(dataclasses.replace(ckpt, model=subject), twins, cfg.probing, plan.probe_layers, i,
                                plan.questions)
            nulls.append(f.null)
            selectivity.append(float(np.mean([p.selectivity.mean for p in f.probes])))
        for null in nulls:
            out.setdefault(null.test, []).append(null.confirmed)
        print(f"  {demo} untrained model {i + 1}/{n_models}: "
              + ", ".join(f"{n.test} {n.confirmed}" for n in nulls), flush=True)
    return out, selectivity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--twins", type=int, default=AnalysisConfig().untrained_twins)
    parser.add_argument("--demos", nargs="+", default=["add3_rev", "add3_steps"])
    parser.add_argument("--analyses", nargs="+", choices=["circuits", "probing"], default=["circuits", "probing"],
                        help="the confirming tests to run: circuits' head and neuron tests, probing's probes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for demo in args.demos:
        start = time.perf_counter()
        found, selectivity = rates(demo, args.models, args.twins, args.analyses)
        print(f"{demo}: {args.models} untrained models, each against {args.twins} untrained twins "
              f"({time.perf_counter() - start:.0f} s)")
        for test, counts in found.items():
            k = sum(c > 0 for c in counts)
            ci = binomtest(k, len(counts)).proportion_ci()
            print(f"  {test:14s} models confirming anything: {k}/{len(counts)} = {k / len(counts):.2f} "
                  f"[95% CI {ci.low:.2f}, {ci.high:.2f}]  (stated family-wise rate 0.05)")
        if selectivity:
            print(f"  mean probe selectivity per model: {np.mean(selectivity):+.3f} "
                  f"(from {min(selectivity):+.3f} to {max(selectivity):+.3f})")


if __name__ == "__main__":
    main()

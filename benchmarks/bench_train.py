"""Benchmark: wall time for the default training config to reach 99% validation exact match.

Runs the Trainer on `configs/train.yaml` (with `stop_at_exact_match` set to the target) into a
temporary directory and prints the wall time, the steps taken and the val/test exact match. A
baseline measured in the same process, seconds per 100 training steps of the same config, makes
the number comparable across machines. Target on the 2-core development machine: <= 90 s.

    python benchmarks/bench_train.py                   # full run
    python benchmarks/bench_train.py --max-steps 200   # short smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reportgen.train.config import load_train_config  # noqa: E402
from reportgen.train.trainer import Trainer  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "train.yaml"))
    p.add_argument("--target", type=float, default=0.99, help="validation exact match to reach (default %(default)s)")
    p.add_argument("--max-steps", type=int, help="step budget (default: the config's)")
    p.add_argument("--baseline-steps", type=int, default=100, help="steps timed for the baseline (default %(default)s)")
    p.add_argument("--output-dir", help="keep the run here (default: a temporary directory)")
    return p.parse_args()


def seconds_per_100_steps(cfg, out_dir: Path, steps: int) -> float:
    """Training-step speed of this config on this machine (a throwaway model, same data)."""
    trainer = Trainer(cfg, out_dir)
    for _ in range(5):  # warm-up
        trainer._train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer._train_step()
    return (time.perf_counter() - t0) * 100 / steps


def main() -> int:
    args = parse_args()
    cfg = load_train_config(args.config)
    cfg = dataclasses.replace(cfg, stop_at_exact_match=args.target)
    if args.max_steps:
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, max_steps=args.max_steps))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"python {platform.python_version()}, device {cfg.device}")
    print(f"config: {args.config}; target val exact match {args.target}; max {cfg.optim.max_steps} steps, "
          f"eval every {cfg.eval_every}")
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        out = Path(args.output_dir) if args.output_dir else Path(tmp) / "run"
        t0 = time.perf_counter()
        trainer = Trainer(cfg, out)  # generates the data set
        t_data = time.perf_counter() - t0
        baseline = seconds_per_100_steps(cfg, out, args.baseline_steps)
        t1 = time.perf_counter()
        metrics = trainer.run()
        t_run = time.perf_counter() - t1
    history = trainer.history
    reached = [s for s, em in zip(history["step"], history["val_exact_match"]) if em >= args.target]
    summary = {
        "wall_s": round(t_run, 1), "data_s": round(t_data, 1), "steps": metrics["steps"],
        "reached_target": bool(reached), "target_step": reached[0] if reached else None,
        "train_step_s": metrics["train_seconds"], "val_exact_match": metrics["val"]["exact_match"],
        "test_exact_match": metrics["test"]["exact_match"], "baseline_s_per_100_steps": round(baseline, 3),
        "threads": torch.get_num_threads(),
    }
    print(f"data generation: {t_data:.1f} s")
    print(f"baseline: {baseline:.2f} s per 100 training steps")
    status = f"reached {args.target} at step {reached[0]}" if reached else f"did not reach {args.target}"
    print(f"training: {t_run:.1f} s wall ({metrics['train_seconds']} s in training steps), "
          f"{metrics['steps']} steps, {status}")
    print(f"best checkpoint (step {metrics['best_step']}): val exact match {metrics['val']['exact_match']:.4f}, "
          f"test exact match {metrics['test']['exact_match']:.4f}")
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

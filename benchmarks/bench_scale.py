"""Scaling benchmark: `reportgen analyze --all` on randomly initialised models of growing size.

The shapes are those of issue 15, all trained (nominally) on reversed addition with d_mlp =
4 d_model: small = 2 layers, 4 heads, d_model 64, 3 digits (add3_rev's shape); medium = 4 layers,
4 heads, d_model 256, 5 digits; large = 6 layers, 8 heads, d_model 512, 6 digits. Random weights
cost what trained ones do in the forward passes and probes, and more in free generation under
ablation, which decodes only the problems that teacher forcing gets wrong (all of them on random
weights); the number of neuron candidates tested causally depends on the weights. Each run is a
fresh `python -m reportgen` process; the script prints its wall time, CPU time and peak memory
(PSS of that process and its workers, sampled every 100 ms) and the growth factors from one shape
to the next. Targets on two CPU cores (issue 15): large in at most 60 s and 2 GB.

With `--flops`, each shape is also analysed once more in this process with its FLOPs counted by
torch's formulas (matrix products and attention, forward and backward) to print each analysis's
work and the compute floor it sets: that work at the matrix-product rate this machine reaches on
the shape's MLP product (measured in the same run). Wall time far above the floor is overhead; a
floor above the target means the analyses as configured must do less work.

    python benchmarks/bench_scale.py [--shapes small,medium,large] [--config analysis.yaml] [--flops]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_build import PeakMemory  # noqa: E402
from reportgen.data.tokenizer import Tokenizer  # noqa: E402
from reportgen.model.checkpoint import save_checkpoint  # noqa: E402
from reportgen.model.transformer import ModelConfig, Transformer  # noqa: E402

SHAPES = {  # name: (layers, heads, d_model, max digits)
    "small": (2, 4, 64, 3),
    "medium": (4, 4, 256, 5),
    "large": (6, 8, 512, 6),
}
N_CTX = 48  # add3_rev's; 6-digit reversed addition needs 23 tokens


def make_checkpoint(path: Path, layers: int, heads: int, d_model: int, digits: int) -> int:
    """A randomly initialised reversed-addition checkpoint of this shape; returns its parameter count."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(n_layers=layers, n_heads=heads, d_model=d_model, d_mlp=4 * d_model, n_ctx=N_CTX))
    task = {"task": "add", "max_digits": digits, "min_digits": 1, "with_steps": False, "answer_order": "reversed"}
    save_checkpoint(path, model, Tokenizer(), data=task, seed=0)
    return sum(p.numel() for p in model.parameters())


def child_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def analyze(checkpoint: Path, out: Path, config: str | None) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and peak PSS (kB) of `python -m reportgen analyze --all` (which
    must succeed). CPU time shows what the run cost when other jobs share the cores."""
    argv = [sys.executable, "-m", "reportgen", "analyze", "--checkpoint", str(checkpoint), "--all",
            "--output-dir", str(out), "--quiet", *(["--config", config] if config else [])]
    start, cpu = time.perf_counter(), child_cpu()
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with PeakMemory(proc.pid) as memory:
        _, err = proc.communicate()
    wall, cpu = time.perf_counter() - start, child_cpu() - cpu
    if proc.returncode:
        sys.exit(f"analyze {checkpoint} failed: {err.strip()[-500:]}")
    return wall, cpu, memory.peak_kb


PHASES = {  # reportgen.analysis.run's steps whose work is counted -> the analysis they belong to
    "cached_runs": "cached forward passes (model and twins)",
    "run_patching": "patching",
    "compute_lens": "logit lens",
    "target_lens": "logit lens",
    "run_circuits": "circuits",
    "analyze_probing": "probing",
    "run_interventions": "interventions",
    "example_findings": "examples shown",
}
OTHER = "other (planning)"


class FlopCount(TorchDispatchMode):
    """FLOPs of every operator torch's FLOP counter has a formula for (matrix products, attention,
    convolutions), forward and backward, per `phase` (the label set while they run). torch's
    FlopCounterMode also tracks modules with backward hooks, which autograd.grad (patching's
    attribution) refuses."""

    def __init__(self):
        super().__init__()
        self.phase = OTHER
        self.flops: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops[self.phase] = self.flops.get(self.phase, 0) + formula(*args, **kwargs, out_val=out)
        return out


def gemm_rate(d_model: int, rows: int = 8192) -> float:
    """FLOP/s of this machine's float32 matrix product at the shape of the model's MLP input."""
    x, w = torch.randn(rows, d_model), torch.randn(d_model, 4 * d_model)
    for _ in range(3):
        x @ w
    start, n = time.perf_counter(), 10
    for _ in range(n):
        x @ w
    return 2 * rows * d_model * 4 * d_model * n / (time.perf_counter() - start)


def count_flops(checkpoint: Path, config: str | None) -> dict[str, int]:
    """FLOPs of the analyses of `analyze --all` per analysis (PHASES' labels), counted in this
    process (without the evaluation the command runs first: one pass over 512 problems). Work
    is booked to the innermost step running (the logit lens the cached runs and the examples
    shown compute is the logit lens's), so the analyses add up to the whole."""
    from reportgen.analysis import run
    from reportgen.analysis.config import load_analysis_config
    from reportgen.model.checkpoint import load_checkpoint

    counter = FlopCount()

    def counting(label, fn):
        def wrapped(*args, **kwargs):
            outer, counter.phase = counter.phase, label
            try:
                return fn(*args, **kwargs)
            finally:
                counter.phase = outer
        return wrapped

    originals = {name: getattr(run, name) for name in PHASES}
    for name, fn in originals.items():  # run_plan looks these up in its module at call time
        setattr(run, name, counting(PHASES[name], fn))
    try:
        with counter:
            run.analyze(load_checkpoint(checkpoint), load_analysis_config(config), progress=False)
    finally:
        for name, fn in originals.items():
            setattr(run, name, fn)
    return counter.flops


def print_flops(flops: dict[str, int], rate: float, wall: float) -> None:
    print(f"    matrix products at {rate / 1e9:.0f} GFLOP/s (this machine, all threads):")
    for label in dict.fromkeys([*PHASES.values(), OTHER]):
        if flops.get(label):
            print(f"      {label:<40} {flops[label] / 1e9:9.1f} GFLOP  floor {flops[label] / rate:7.1f} s")
    total = sum(flops.values())
    print(f"      {'all':<40} {total / 1e9:9.1f} GFLOP  floor {total / rate:7.1f} s "
          f"(wall {wall:.1f} s = floor x{wall * rate / total:.1f})", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,medium,large", help="comma-separated subset of "
                        f"{', '.join(SHAPES)} (default: %(default)s)")
    parser.add_argument("--config", help="analysis YAML (default: configs/interpretability.yaml)")
    parser.add_argument("--flops", action="store_true", help="also count each analysis's floating-point work "
                        "and print the compute floor it sets")
    args = parser.parse_args()
    names = args.shapes.split(",")
    if unknown := sorted(set(names) - set(SHAPES)):
        parser.error(f"unknown shape {unknown[0]!r}; choose from {', '.join(SHAPES)}")
    config = str(Path(args.config).resolve()) if args.config else None
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; config {config or 'configs/interpretability.yaml'}")
    rows = []
    for name in names:
        layers, heads, d_model, digits = SHAPES[name]
        checkpoint = work / f"{name}.pt"
        params = make_checkpoint(checkpoint, layers, heads, d_model, digits)
        wall, cpu, kb = analyze(checkpoint, work / f"analyze-{name}", config)
        print(f"  {name:<7} {layers} layers, {heads} heads, d_model {d_model:>3}, {digits} digits, "
              f"{params / 1e6:5.2f} M parameters: wall {wall:6.1f} s, cpu {cpu:6.1f} s, peak {kb / 1024:6.0f} MB PSS",
              flush=True)
        if args.flops:
            print_flops(count_flops(checkpoint, config), gemm_rate(d_model), wall)
        rows.append((name, params, wall, cpu, kb))
    for (a, pa, wa, ca, ma), (b, pb, wb, cb, mb) in zip(rows, rows[1:]):
        print(f"  {a} -> {b}: parameters x{pb / pa:.1f}, wall x{wb / wa:.1f}, cpu x{cb / ca:.1f}, "
              f"peak memory x{mb / ma:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`--device cuda` end to end, where a GPU exists (skipped elsewhere): every analysis runs on the
GPU and gives the CPU's findings to float32 rounding, and `reportgen build --device cuda` writes
a report."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reportgen.analysis.config import AnalysisConfig
from reportgen.analysis.run import prepare, run_plan
from reportgen.configfile import from_dict
from reportgen.model.checkpoint import load_checkpoint
from test_memory_budget import numbers

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_every_analysis_on_the_gpu_gives_the_cpu_findings():
    raw = {"n_examples": 120, "patching": {"n_pairs": 24}, "circuits": {"n_pairs": 64, "neuron_permutations": 20},
           "interventions": {"reference_size": 8}, "probing": {"n_examples": 120}}
    cfg = from_dict(AnalysisConfig, raw, "test")
    out = {}
    for device in ("cpu", "cuda"):
        ckpt = load_checkpoint(ROOT / "runs/add3_steps/checkpoint_best.pt", device)
        assert ckpt.model.device.type == device
        out[device] = numbers(run_plan(ckpt, cfg, prepare(ckpt, cfg), progress=False, shown=False))
    cpu, gpu = out["cpu"], out["cuda"]
    assert cpu.keys() == gpu.keys()
    floats = [k for k, v in cpu.items() if isinstance(v, float)]
    far = [k for k in floats if not ((math.isnan(cpu[k]) and math.isnan(gpu[k]))
                                     or gpu[k] == pytest.approx(cpu[k], rel=1e-3, abs=1e-4))]
    assert len(far) <= len(floats) // 1000, far[:10]
    others = [k for k in cpu if k not in floats]
    differ = [k for k in others if cpu[k] != gpu[k]]  # a verdict at its threshold may flip with rounding
    assert len(differ) <= len(others) // 100, differ[:10]


def test_build_on_the_gpu_writes_a_report(tmp_path):
    out = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "reportgen", "build", "--checkpoint", "runs/add3_rev/checkpoint_best.pt",
                           "--device", "cuda", "--no-pdf", "--no-cache", "--out", str(out)],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "index.html").exists() and (out / "results.json").exists()

"""benchmarks/bench_scale.py --flops: the FLOP counts behind the README's compute floor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from reportgen.analysis import run
from reportgen.analysis.config import load_analysis_config
from reportgen.model.checkpoint import load_checkpoint
from reportgen.model.transformer import ModelConfig, Transformer

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runs" / "add3_rev" / "checkpoint_best.pt"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_forward_pass_counts_the_flops_of_its_matrix_products(bench):
    """Known answer: per layer Q, K, V and O (4 x 2BPd^2), scores and pattern @ V (2 x 2BP^2d),
    the MLP (2 x 2BPdm); then the unembedding (2BPdV)."""
    cfg = ModelConfig(n_layers=3, n_heads=4, d_model=32, d_mlp=96, n_ctx=16, d_vocab=21)
    B, P, d, m = 5, 11, cfg.d_model, cfg.d_mlp
    model = Transformer(cfg)
    counter = bench.FlopCount()
    with torch.no_grad(), counter:
        model(torch.zeros(B, P, dtype=torch.long))
    per_layer = 8 * B * P * d * d + 4 * B * P * P * d + 4 * B * P * d * m
    assert counter.flops == {bench.OTHER: cfg.n_layers * per_layer + 2 * B * P * d * cfg.d_vocab}


@pytest.mark.slow
def test_the_analyses_flops_add_up_to_those_of_the_whole_run(bench):
    """Each FLOP is booked to one analysis (the innermost step running): the per-analysis counts
    of add3_rev add up to the run counted whole, with nothing left outside the analyses."""
    per_analysis = bench.count_flops(DEMO, None)
    assert set(per_analysis) == set(bench.PHASES.values())
    assert all(v > 0 for v in per_analysis.values())
    whole = bench.FlopCount()
    with whole:
        run.analyze(load_checkpoint(DEMO), load_analysis_config(None), progress=False)
    assert sum(per_analysis.values()) == whole.flops[bench.OTHER]

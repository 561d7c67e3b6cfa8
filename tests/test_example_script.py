"""The top-level tour `example_interpretability.py` on the shipped demo checkpoints."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("run", ["add3_rev", "add3_steps"])
def test_tour_runs_all_six_analyses_on_a_demo_checkpoint(run, tmp_path):
    ckpt = ROOT / "runs" / run / "checkpoint_best.pt"
    out = subprocess.run([sys.executable, "example_interpretability.py", str(ckpt), "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    sections = re.findall(r"^\d\. (.+)$", out.stdout, flags=re.M)
    assert sections == ["Attention patterns", "Activation patching", "Logit lens", "Circuit discovery",
                        "Linear probing", "Ablation interventions"]
    assert "skipped" not in out.stdout
    # The units digit of 12+34 vs 12+35 differs in every answer format; restoring every earlier
    # layer's outputs (layer 0 of a 2-layer model) recovers most of the logit difference.
    recovery = re.search(r"recovery by layer .*: L0 (-?[\d.]+), L1 (-?[\d.]+)", out.stdout)
    assert recovery and float(recovery.group(1)) > 0.5
    assert (tmp_path / "attention.png").stat().st_size > 0 and (tmp_path / "logit_lens.png").stat().st_size > 0


def test_tour_refuses_a_missing_checkpoint_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "example_interpretability.py", str(tmp_path / "none.pt")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_classes_read_problems_in_the_loaded_checkpoints_format():
    """The original toolkit's calls pass only (model, tokenizer): on add3_rev, which writes its
    answers reversed, '12 + 34' must be read as '12+34=64', not '12+34=46'."""
    from reportgen import InterventionAnalyzer, LogitLens, load_model_and_tokenizer

    model, tokenizer, ckpt = load_model_and_tokenizer(str(ROOT / "runs" / "add3_rev" / "checkpoint_best.pt"))
    conv = LogitLens(model, tokenizer).analyze_convergence("12 + 34", target_token_pos=0, target_token="6")
    assert conv["target"] == 6 and conv["convergence_layer"] is not None and conv["prob"][-1] > 0.9
    drop = InterventionAnalyzer(model, tokenizer).measure_layer_importance(["12 + 34", "59 + 73", "88 + 99"])
    assert all(d["exact_match"] >= 0 for d in drop.values())  # the clean model gets them right

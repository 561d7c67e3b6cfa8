"""Circuit discovery: planted mechanisms are found, an untrained model yields no carry head, and
the statistics (AUROC, Benjamini-Hochberg, permutation null) give their known answers."""

from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import TOKENIZER, batch_for, operator_head_model, random_model, records, zero_model
from reportgen.analysis import engine
from reportgen.analysis.circuits import (
    CircuitConfig, CircuitDiscovery, auroc_test, benjamini_hochberg, carry_head_tests, run_circuits,
)
from reportgen.analysis.findings import AttentionFindings, Estimate, RoleScore
from reportgen.configfile import from_dict
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from test_patching import strong_model


def fake_attention(n_layers: int, n_heads: int, roles=("carry_source", "operator")) -> AttentionFindings:
    """Role scores that make every head a candidate for every role (the causal tests decide)."""
    est = lambda v: Estimate(v, v, v, 10)  # noqa: E731
    scores = [RoleScore(l, h, role, est(0.9 - 0.1 * h), 1.0, est(0.1))
              for l in range(n_layers) for h in range(n_heads) for role in roles]
    return AttentionFindings(head_stats=[], role_scores=scores)


def planted_carry_model(C: float = 100.0):
    """1 layer: head 0 copies the units digit of a (token 2), head 1 that of b (token 5) into dims
    20/21; MLP neuron 0 reads their sum, so at the position predicting column 1 of 'ab+cd=' it
    is larger exactly when a0 + b0 >= 10 (a carry into column 1). Large constant dimensions keep
    the LayerNorm scale nearly fixed so the read-outs stay linear. Other neurons are constant."""
    m = zero_model(n_layers=1, n_heads=2, d_model=32, d_mlp=8, n_ctx=16)
    with torch.no_grad():
        m.W_pos[:, :16] = torch.eye(16)
        for d, i in enumerate(TOKENIZER.digit_ids):
            m.W_E[i, 16] = d / 9
        m.W_E[:, 17], m.W_E[:, 18] = C, -C
        attn = m.blocks[0].attn
        for h, key in ((0, 2), (1, 5)):
            attn.b_Q[h, 0] = 1.0
            attn.W_K[h, key, 0] = 2000.0
            attn.W_V[h, 16, 0] = 1.0
            attn.W_O[h, 0, 20 + h] = 225.0
        mlp = m.blocks[0].mlp
        mlp.W_in[20, 0] = mlp.W_in[21, 0] = 25.0
        mlp.b_in[0] = 1.0  # keeps the neuron on GELU's increasing branch
        mlp.b_in[1:] = torch.linspace(-1, 1, 7)
    return m


def two_digit_batch(model, n=120, seed=0):
    rng = random.Random(seed)
    return batch_for(model, records(*[(rng.randrange(50, 100), "+", rng.randrange(50, 100)) for _ in range(n)]))


def test_planted_carry_neuron_is_found_with_auroc_far_above_the_null():
    model = planted_carry_model()
    batch = two_digit_batch(model)
    _, cache = engine.run_with_cache(model, batch)
    f = run_circuits(model, TOKENIZER, batch, cache, None, [], CircuitConfig(), 0)
    neurons = [c for c in f.components if c.kind == "neuron"]
    assert [(c.layer, c.index) for c in neurons] == [(0, 0)]
    assert neurons[0].score == 1.0 and abs(neurons[0].null - 0.5) < 0.05
    assert f.neuron_test["n_selected"] == 1 and f.neuron_test["multiple_comparisons"] == "Benjamini-Hochberg"


def test_position_heads_and_their_null_checks_come_from_the_attention_test():
    """Both heads of the planted carry model always attend one fixed token (a's and b's units
    digit): column n, n-1 or n-2 depending on the answer column, a position pattern."""
    model = planted_carry_model()
    batch = two_digit_batch(model, n=40)
    _, cache = engine.run_with_cache(model, batch)
    twins = [engine.run_with_cache(t, batch)[1] for t in engine.untrained_twins(model, 3, 0)]
    f = run_circuits(model, TOKENIZER, batch, cache, None, twins, CircuitConfig(), 0)
    heads = {(c.layer, c.index): c for c in f.components if c.kind == "position_head"}
    assert set(heads) == {(0, 0), (0, 1)} and all(c.confirmed and c.score > 0.99 for c in heads.values())
    assert "n at column 0; n-1 at column 1; n-2 at column 2" in heads[0, 0].note
    checks = {c.test: c for c in f.null_checks}
    assert set(checks) == {"position_head", "delimiter_head"} and checks["position_head"].confirmed == 2
    assert run_circuits(model, TOKENIZER, batch, cache, None, [], CircuitConfig(), 0).null_checks == []


def test_untrained_model_has_no_carry_head():
    for seed in range(3):
        model = random_model(seed)
        batch = batch_for(model, stratified_examples("add", 120, 3, 1, seed, False, "plain"))
        _, cache = engine.run_with_cache(model, batch)
        cfg = CircuitConfig(max_candidates=99, reference_size=8)
        f = run_circuits(model, TOKENIZER, batch, cache, fake_attention(2, 2), [], cfg, seed)
        carry = [c for c in f.components if c.kind == "carry_head"]
        assert len(carry) == 4 and not any(c.confirmed for c in carry)
        ops = [c for c in f.components if c.kind == "operator_head"]
        assert ops and all(c.note == "not applicable: model trained on one operator" for c in ops)
        assert f.head_specialization.shape == (2, 2, 2) and f.roles == ["carry_source", "operator"]


class KnownDropAblator:
    """An Ablator stand-in whose every ablation makes exactly the given answer digits wrong.

    Answer slot 0 is column 1 of the first 12 examples (6 with a carry in, 6 without), slot 1 is
    column 2 of all 400 (200 with a carry in)."""

    def __init__(self, wrong: torch.Tensor):
        B = wrong.shape[0]
        self.mask = torch.zeros(B, 2, dtype=torch.bool)
        self.mask[:12, 0] = True
        self.mask[:, 1] = True
        c1, c2 = [1] * 6 + [0] * (B - 6), [1] * 200 + [0] * (B - 200)
        self.batch = types.SimpleNamespace(columns=torch.tensor([[1, 2]] * B), records=[
            {"answer_columns": [1, 2], "labels": {"columns": [{"carry_in": 0}, {"carry_in": c1[i]}, {"carry_in": c2[i]}]}}
            for i in range(B)])
        self.digits = torch.zeros(B, 2, dtype=torch.long)
        self.clean_logprobs = torch.full((B, 2, 10), -5.0)
        self.clean_logprobs[..., 0] = 0.0  # every digit right when nothing is ablated
        self.ablated_logprobs = self.clean_logprobs.clone()
        self.ablated_logprobs[wrong, 0] = -9.0

    def ablated(self, specs, method):
        return self.ablated_logprobs[None].expand(len(specs), -1, -1, -1)


def test_a_carry_head_passing_at_one_column_is_confirmed_whatever_another_column_shows():
    """Column 1 (6 + 6 digits): a larger but uncertain difference (4/6 vs 1/6 wrong); column 2
    (200 + 200): 80/200 vs 0/200 wrong, a clean pass. The head is confirmed at column 2."""
    wrong = torch.zeros(400, 2, dtype=torch.bool)
    wrong[[0, 1, 2, 3, 11], 0] = True
    wrong[:80, 1] = True
    (t,) = carry_head_tests(KnownDropAblator(wrong), [(0, 0)], CircuitConfig(), seed=0)
    assert t["confirmed"] and t["column"] == 2 and t["difference"] == pytest.approx(0.4)
    assert t["n_carry"] == t["n_no_carry"] == 200 and t["tests"] == 2
    wrong[:, 1] = False  # column 2 now shows nothing: column 1's larger, unconfirmed difference is reported
    (t,) = carry_head_tests(KnownDropAblator(wrong), [(0, 0)], CircuitConfig(), seed=0)
    assert not t["confirmed"] and t["column"] == 1 and t["difference"] == pytest.approx(4 / 6 - 1 / 6)


def test_operator_head_is_confirmed_only_where_the_operator_flows():
    model = strong_model(0)
    with torch.no_grad():  # only head L0H1 can move information between positions
        for l in range(2):
            for h in range(2):
                if (l, h) != (0, 1):
                    model.blocks[l].attn.W_O[h] = 0.0
            model.blocks[l].mlp.W_out.zero_()
            model.blocks[l].mlp.b_out.zero_()
    batch = batch_for(model, stratified_examples("addsub", 120, 3, 1, 0, False, "plain"))
    _, cache = engine.run_with_cache(model, batch)
    cfg = CircuitConfig(max_candidates=99, reference_size=4, min_denominator=0.1)
    f = run_circuits(model, TOKENIZER, batch, cache, fake_attention(2, 2, ("operator",)), [], cfg, 0)
    ops = {(c.layer, c.index): c for c in f.components if c.kind == "operator_head"}
    assert ops[(0, 1)].confirmed and ops[(0, 1)].causal_effect > 0.5
    for key in [(0, 0), (1, 0), (1, 1)]:
        assert ops[key].causal_effect == 0 and not ops[key].confirmed


def test_auroc_matches_sklearn_and_the_null_is_calibrated():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 50))
    y = rng.random(300) < 0.4
    x[:, 0] += 1.5 * y
    groups = rng.integers(0, 3, 300)
    auroc, p, null = auroc_test(x, y, groups, 100, 0)
    assert auroc == pytest.approx([roc_auc_score(y, x[:, j]) for j in range(50)])
    assert p[0] < 1e-10 and np.mean(p[1:] < 0.05) < 0.15 and np.all(np.abs(null - 0.5) < 0.03)


def test_within_column_null_absorbs_a_column_confound():
    """A neuron that only tracks the column looks selective to a plain AUROC, not to the null."""
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1], 200)
    y = np.concatenate([rng.random(200) < 0.2, rng.random(200) < 0.8])
    x = (groups + 0.01 * rng.normal(size=400))[:, None]
    auroc, p, null = auroc_test(x, y, groups, 200, 0)
    assert auroc[0] > 0.75 and p[0] > 0.01 and null[0] > 0.7


def test_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert benjamini_hochberg(p, 0.05).tolist() == [True, True] + [False] * 8
    assert benjamini_hochberg(np.array([0.01, 0.02, 0.03]), 0.05).tolist() == [True, True, True]
    assert not benjamini_hochberg(np.array([0.5, 0.9]), 0.05).any()


def test_circuit_discovery_api():
    model = strong_model(3)
    cd = CircuitDiscovery(model, TOKENIZER, config=CircuitConfig(reference_size=4))
    texts = [f"{a} + {b}" for a, b in [(59, 73), (88, 99), (12, 34), (45, 45), (19, 1), (70, 20)]]
    heads = cd.find_carry_detection_heads([(t, [0, 1]) for t in texts])
    assert len(heads) == 4 and all("confirmed" in h and "note" in h for h in heads)
    assert heads == cd.find_carry_detection_heads(texts)

    op_model = operator_head_model(layer=0, head=1)
    task = {"task": "addsub", "max_digits": 3, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
    out = CircuitDiscovery(op_model, TOKENIZER, task=task).find_operator_attention_heads(
        ["12 + 34", "56 - 7", "90 + 9", "34 - 12"], ["+", "-"])
    assert (out[0]["layer"], out[0]["head"]) == (0, 1)
    assert min(out[0]["operator_attention"].values()) > 0.99
    assert out[0]["operator_flip_recovery"] is None or np.isfinite(out[0]["operator_flip_recovery"])


def test_config_loads_from_yaml_dict():
    cfg = from_dict(CircuitConfig, {"method": "resample", "fdr": 0.1}, "test")
    assert cfg.method == "resample" and cfg.fdr == 0.1
    with pytest.raises(ReportgenError):
        from_dict(CircuitConfig, {"method": "zero"}, "test")
    assert CircuitConfig(neuron_random_sets=19).neuron_random_sets == 19  # p can reach 1/20 = 0.05
    with pytest.raises(ReportgenError, match="neuron_random_sets must be >= 19"):
        CircuitConfig(neuron_random_sets=18)

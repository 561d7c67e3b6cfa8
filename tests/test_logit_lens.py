"""Logit lens: the last index is the model itself; a planted writer converges exactly where it writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import TOKENIZER, answer_writer_model, batch_for, random_model, records
from reportgen.analysis import engine, logit_lens
from reportgen.findings import ExampleFindings
from reportgen.data.dataset import stratified_examples
from reportgen.data.arithmetic import TARGET_ROLES
from test_patching import strong_model


def _lens(model, recs, seed=0):
    batch = batch_for(model, recs)
    logits, cache = engine.run_with_cache(model, batch)
    arrays = logit_lens.compute_lens(model, TOKENIZER, cache, batch)
    twin = engine.untrained_twin(model, seed)
    _, twin_cache = engine.run_with_cache(twin, batch)
    untrained = logit_lens.compute_lens(twin, TOKENIZER, twin_cache, batch)
    findings = logit_lens.summarize(arrays, untrained, [r["labels"]["stratum"] for r in recs], seed)
    return batch, logits, cache, findings, arrays


def test_last_index_equals_the_models_own_digit_distribution():
    model = random_model(seed=2)
    batch, logits, cache, findings, arrays = _lens(model, stratified_examples("add", 30, 3, 1, seed=1))
    own = engine.digit_log_probs(engine.gather_at_answers(logits, batch), TOKENIZER)
    lens = logit_lens.lens_log_probs(model, TOKENIZER, cache, batch.pred_pos)
    assert lens.shape[0] == model.cfg.n_layers + 1
    assert torch.allclose(lens[-1], own, atol=1e-6)
    m = batch.answer_mask
    assert torch.allclose(arrays.kl[-1][m], torch.zeros(int(m.sum())), atol=1e-6)
    assert findings.kl_to_final[-1].mean == pytest.approx(0.0, abs=1e-6)
    assert findings.layer_labels == ["embed", "L0", "L1"]
    # an untrained twin (GPT-2 init) decodes to nearly uniform digits at every layer
    assert all(abs(e.mean - 0.1) < 0.02 for e in findings.untrained_prob_correct)


@pytest.mark.parametrize("write_layer", [0, 1, 2])
def test_planted_writer_converges_exactly_at_its_layer(write_layer):
    model = answer_writer_model(write_layer, n_layers=3, early=3, late=7)
    recs = records((59, "+", 73), (3, "+", 4), (120, "+", 7))  # answers 132, 7, 127
    batch, logits, cache, findings, arrays = _lens(model, recs)
    m = batch.answer_mask
    assert (arrays.convergence[m] == write_layer + 1).all()
    assert (arrays.top[: write_layer + 1][:, m] == 3).all() and (arrays.top[write_layer + 1 :][:, m] == 7).all()
    n_digits = int(m.sum())
    label = findings.layer_labels[write_layer + 1]
    assert findings.convergence_hist[label] == n_digits
    assert sum(findings.convergence_hist.values()) == n_digits
    # LN_final recomputes its statistics on each layer's residual: exact values are known.
    a = 1.0 / math.sqrt(2 / 32 + 1e-5)  # LN(e1 - e2) along e1
    s = math.sqrt(202 / 32 + 1e-5)  # after the write: e1 - e2 + 10 (e3 - e4)
    p_early = math.exp(a) / (math.exp(a) + 9)
    p_late = math.exp(10 / s) / (math.exp(10 / s) + math.exp(1 / s) + 8)
    probs = logit_lens.lens_log_probs(model, TOKENIZER, cache, batch.pred_pos).exp()
    assert float(probs[0, 0, 0, 3]) == pytest.approx(p_early, rel=1e-4)
    assert float(probs[-1, 0, 0, 7]) == pytest.approx(p_late, rel=1e-4)
    # '3+4=7': the correct digit is 7, so its probability jumps at the writer and its rank goes 1 -> 0
    assert float(arrays.prob[-1, 1, 0]) == pytest.approx(p_late, rel=1e-4)
    assert arrays.rank[:, 1, 0].tolist() == [1] * (write_layer + 1) + [0] * (3 - write_layer)


def test_convergence_is_the_first_layer_at_which_the_final_top1_is_top1():
    """DESIGN §4.3 literally: a layer that agrees with the final answer counts even when a later
    layer changes its mind before the last one."""
    tops = torch.tensor([[1, 4, 1], [4, 1, 1], [1, 1, 1], [2, 3, 1]])  # [digit, lens index]
    logp = torch.full((3, 4, 1, 10), -10.0)
    logp.scatter_(-1, tops.T[:, :, None, None], 0.0)
    arrays = logit_lens.lens_arrays(logp.log_softmax(-1), torch.ones(4, 1, dtype=torch.long),
                                    torch.ones(4, 1, dtype=torch.bool))
    assert arrays.convergence[:, 0].tolist() == [0, 1, 0, 2]
    findings = logit_lens.summarize(arrays, arrays, ["no_carry"] * 4, seed=0)
    assert findings.convergence_hist == {"embed": 2, "L0": 1, "L1": 1}


def test_by_stratum_and_intervals():
    model = random_model(seed=4)
    recs = stratified_examples("add", 40, 3, 1, seed=2)
    _, _, _, findings, _ = _lens(model, recs)
    assert set(findings.by_stratum) == {r["labels"]["stratum"] for r in recs}
    assert sum(est[0].n for est in findings.by_stratum.values()) == 40
    for series in (findings.prob_correct, findings.rank_correct, findings.entropy, findings.kl_to_final):
        assert len(series) == 3
        for e in series:
            assert e.lo <= e.mean <= e.hi
    assert all(0 <= e.mean <= math.log(10) + 1e-9 for e in findings.entropy)


def test_example_arrays_and_files(tmp_path):
    model = answer_writer_model(1, n_layers=2)
    recs = records((59, "+", 73))
    batch, _, _, _, arrays = _lens(model, recs)
    fields = logit_lens.example_lens(arrays, 0)
    assert fields["lens_prob"].shape == (3, 3) and fields["convergence"] == [2, 2, 2]
    assert fields["lens_top"][:, 0].tolist() == [3, 3, 7]
    ex = ExampleFindings(key="59plus73", prompt="59+73=", target="132", problem="59 + 73", answer="132",
                         prediction="777", correct=False,
                         stratum="one_carry", labels=recs[0]["labels"], tokens=["BOS", *"59+73=132", "EOS"],
                         answer_positions=[6, 7, 8], attention=np.zeros((2, 2, 11, 11)), **fields)
    logit_lens.plot_evolution(ex, tmp_path / "e.png")
    logit_lens.plot_predictions(ex, tmp_path / "p.png")
    logit_lens.write_entropy_json(tmp_path / "e.json", ex)
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["convergence"] == [2, 2, 2] and len(data["entropy_nats"]) == 3
    assert (tmp_path / "e.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


def test_api_convergence_and_evolution(tmp_path):
    model = answer_writer_model(1, n_layers=3)
    lens = logit_lens.LogitLens(model, TOKENIZER)
    res = lens.analyze_convergence("12 + 34", target_token_pos=-1, target_token="7")
    assert res["convergence_layer"] == 2 and res["convergence_label"] == "L1" and res["top"] == [3, 3, 7, 7]
    early = lens.analyze_convergence("12 + 34", target_token_pos=-1, target_token="3")
    assert early["convergence_layer"] == 0 and early["convergence_label"] == "embed"  # top-1 there, lost later
    never = lens.analyze_convergence("12 + 34", target_token_pos=-1, target_token="5")
    assert never["convergence_layer"] is None and never["convergence_label"] == "never"
    default = lens.analyze_convergence("12 + 34")  # target: the correct digit '6', never top-1 here
    assert default["target"] == 6 and default["convergence_layer"] is None and default["token_index"] == 7
    out = lens.visualize_prediction_evolution("12 + 34", position=0, save_path=tmp_path / "v.png")
    assert out["token_index"] == 6 and out["correct_digit"] == 4 and len(out["probs"]) == 4
    assert (tmp_path / "v.png").exists()
    from reportgen.errors import ReportgenError

    with pytest.raises(ReportgenError, match="out of range"):
        lens.analyze_convergence("12 + 34", target_token_pos=5)


def test_lens_at_every_scratchpad_digit_ends_at_the_models_own_prediction():
    model = strong_model(3, n_ctx=48)
    batch = batch_for(model, stratified_examples("add", 20, 2, 1, 0, True, "plain"))
    logits, cache = engine.run_with_cache(model, batch)
    arrays = logit_lens.target_lens(model, TOKENIZER, cache, batch)
    own = engine.digit_log_probs(engine.gather_at(logits, batch.target_pos), TOKENIZER).exp()
    right = own.gather(-1, engine.target_digits(batch, TOKENIZER)[..., None])[..., 0]
    assert torch.allclose(arrays.prob[-1][batch.target_mask], right[batch.target_mask], atol=1e-6)
    probs, hists, guess = logit_lens.by_role(arrays, batch, 0)
    assert set(probs) == {"operand_a", "operand_b", "carry_in", "sum_digit", "carry_out"} == set(guess)
    digits = engine.target_digits(batch, TOKENIZER)
    for r, role in enumerate(TARGET_ROLES):
        if role in hists:
            at = batch.target_mask & (batch.target_roles == r)
            assert sum(hists[role].values()) == int(at.sum())
            assert probs[role][-1].n == len(batch)
            written = digits[at].tolist()
            assert guess[role] == max(written.count(d) for d in set(written)) / len(written)
    assert set(digits[batch.target_mask & (batch.target_roles == TARGET_ROLES.index("carry_out"))].tolist()) <= {0, 1}

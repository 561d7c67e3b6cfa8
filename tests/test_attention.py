"""Attention statistics and role scores against planted mechanisms with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ADD_TASK, TOKENIZER, batch_for, operator_head_model, random_model, records, zero_model
from reportgen.analysis import attention, engine
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError


def _analyze(model, recs, layers=None, seed=0):
    batch = batch_for(model, recs)
    _, cache = engine.run_with_cache(model, batch)
    _, twin = engine.run_with_cache(engine.untrained_twin(model, seed), batch)
    n = model.cfg.n_layers
    return attention.analyze_attention(batch, cache, twin, n, list(range(n)) if layers is None else layers, seed)


def _head(findings, layer, head):
    return next(s for s in findings.head_stats if (s.layer, s.head) == (layer, head))


def _role(findings, layer, head, role):
    return next(s for s in findings.role_scores if (s.layer, s.head, s.role) == (layer, head, role))


def test_prompt_positions_and_role_keys_of_59_plus_73():
    (r,) = records((59, "+", 73))
    op, eq, a_pos, b_pos = attention.prompt_positions(r)
    # tokens: BOS 5 9 + 7 3 = 1 3 2 EOS
    assert (op, eq, a_pos, b_pos) == (3, 6, {0: 2, 1: 1}, {0: 5, 1: 4})
    layout = attention.query_layout([r], 11)
    assert layout.pred_pos[0].tolist() == [6, 7, 8]  # predict '1' (column 2), '3' (1), '2' (0)
    keys = lambda j, role: torch.nonzero(layout.role_keys[0, j, role]).flatten().tolist()  # noqa: E731
    assert keys(2, 0) == [2, 5] and keys(2, 1) == []  # column 0: '9','3'; no carry source
    assert keys(1, 0) == [1, 4] and keys(1, 1) == [2, 5]  # column 1: '5','7'; source '9','3'
    assert keys(0, 0) == [] and keys(0, 1) == [1, 4]  # column 2 (leading carry digit) has no operand digit
    assert all(keys(j, 2) == [3] for j in range(3))


def test_absent_operand_digits_contribute_nothing():
    (r,) = records((7, "+", 95))  # '7+95=102': a has no column 1
    layout = attention.query_layout([r], 12)
    assert torch.nonzero(layout.role_keys[0, 1, 0]).flatten().tolist() == [3]  # only b's '9'


def test_uniform_heads_have_known_statistics():
    model = zero_model()  # W_Q = W_K = 0: every query attends uniformly to its q+1 visible keys
    recs = records((59, "+", 73), (7, "+", 5), (123, "+", 456))
    f = _analyze(model, recs)
    batch = batch_for(model, recs)
    q = batch.pred_pos.float()
    per_example = ((1.0 / (q + 1)) * batch.answer_mask).sum(1) / batch.answer_mask.sum(1)
    for s in f.head_stats:
        assert s.entropy.mean == pytest.approx(1.0, abs=1e-5)
        for est in (s.sink, s.prev_token, s.equals, s.operator):
            assert est.mean == pytest.approx(float(per_example.mean()), abs=1e-6)
    for r in f.role_scores:
        assert r.score.mean == pytest.approx(r.chance, abs=1e-6) and r.expected == 1.0


def test_planted_operator_head_is_found_and_others_are_not():
    model = operator_head_model(layer=1, head=1)
    recs = stratified_examples("add", 60, 3, 1, seed=3)
    f = _analyze(model, recs)
    planted = _head(f, 1, 1)
    assert planted.operator.mean > 0.99 and planted.operator.lo > 0.98
    assert planted.sink.mean < 0.01 and planted.entropy.mean < 0.05
    op_role = _role(f, 1, 1, "operator")
    assert op_role.score.mean > 0.99
    assert op_role.untrained.mean < 0.2 and op_role.chance < 0.2  # the random twin is near uniform
    for other in [(0, 0), (0, 1), (1, 0)]:
        assert _head(f, *other).operator.mean < 0.2
        assert _role(f, *other, "column").score.mean == pytest.approx(_role(f, *other, "column").chance, abs=1e-5)


def test_intervals_contain_the_mean_and_count_examples():
    model = random_model(seed=1)
    recs = stratified_examples("add", 50, 3, 1, seed=0)
    f = _analyze(model, recs)
    for s in f.head_stats:
        for est in (s.entropy, s.prev_token, s.sink, s.equals, s.operator):
            assert est.lo <= est.mean <= est.hi and est.n == 50
    for r in f.role_scores:
        assert r.score.lo <= r.score.mean <= r.score.hi
        assert r.untrained.lo <= r.untrained.mean <= r.untrained.hi
    # examples whose answer is one digit have no carry-source query and are left out
    assert _role(f, 0, 0, "carry_source").score.n == sum(len(str(r["answer"])) > 1 for r in recs)


def test_layer_selection_and_example_stats_agree_with_the_batch():
    model = operator_head_model(layer=0, head=0)
    recs = records((59, "+", 73), (12, "+", 34))
    f = _analyze(model, recs, layers=[0])
    assert {s.layer for s in f.head_stats} == {0}
    tokens, att = attention.AttentionAnalyzer(model, TOKENIZER).patterns("59 + 73")
    rows = attention.example_stats(att, recs[0], [0, 1])
    assert rows[0]["operator"] > 0.99 and rows[0]["role_operator"] == rows[0]["operator"]
    assert rows[1]["operator"] < 0.2 and len(rows) == 4


def test_analyzer_plots_and_writes_stats(tmp_path):
    model = random_model()
    an = attention.AttentionAnalyzer(model, TOKENIZER, task=ADD_TASK)
    pattern = an.plot_attention_heads("59 + 73", layer_idx=1, save_path=tmp_path / "layer.png")
    assert pattern.shape == (2, 11, 11) and (tmp_path / "layer.png").stat().st_size > 0
    an.plot_head("59 + 73", 0, 1, tmp_path / "head.png")
    assert (tmp_path / "head.png").exists()
    with pytest.raises(ReportgenError, match="out of range"):
        an.plot_attention_heads("59 + 73", layer_idx=2)
    tokens, att = an.patterns("59 + 73")
    (r,) = records((59, "+", 73))
    attention.write_example_stats(tmp_path / "s.json", att, r, tokens, [0, 1])
    data = json.loads((tmp_path / "s.json").read_text())
    assert data["answer_positions"] == [6, 7, 8] and len(data["heads"]) == 4
    findings = an.head_statistics(["59 + 73", "12 + 34"], layers=[1])
    assert {(s.layer, s.head) for s in findings.head_stats} == {(1, 0), (1, 1)}


def test_attention_figures_redrawn_over_a_saved_background_match_a_full_redraw(tmp_path):
    """ExampleFigures draws the token labels once per example and then only each head's image,
    frame and title; what it writes must be what a full redraw shows, and a layer's figure must
    tile its heads' figures under the title."""
    from PIL import Image

    from reportgen.analysis.attention import ExampleFigures

    tokens = ["BOS", "5", "9", "+", "7", "3", "=", "1", "3", "2", "EOS"]
    att = np.random.default_rng(0).random((2, 4, len(tokens), len(tokens)))
    with ExampleFigures(tokens, 4) as figs:
        figs.save(att[0], 0, tmp_path / "layer0.png", [tmp_path / f"l0h{h}.png" for h in range(4)])
        figs.save(att[1], 1, tmp_path / "layer1.png", [tmp_path / f"l1h{h}.png" for h in range(4)], "59+73=132")
        blitted = figs.head.draw().astype(int)  # state after the last head: layer 1, head 3
        figs.head.fig.canvas.draw()
        redrawn = np.asarray(figs.head.fig.canvas.buffer_rgba()).astype(int)
        assert figs.ax.get_title() == "Layer 1, head 3"
    assert np.abs(blitted - redrawn).max() <= 1

    def png(name):
        return np.asarray(Image.open(tmp_path / name)).astype(int)

    assert np.array_equal(png("l1h3.png"), redrawn[..., :3])
    heads = [png(f"l1h{h}.png") for h in range(4)]
    assert np.abs(heads[0] - png("l0h0.png")).max() > 50  # each layer shows its own data
    layer = png("layer1.png")
    th, tw = heads[0].shape[:2]
    assert layer.shape[1] == 4 * tw and layer.shape[0] > th
    assert all(np.array_equal(layer[-th:, h * tw : (h + 1) * tw], heads[h]) for h in range(4))
    assert (layer[: layer.shape[0] - th] < 128).any()  # the title band has text

"""Activation patching and minimal pairs: known answers (dead components, full patches), the
batched sweep against the one-forward-per-patch loop, and the pair invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TOKENIZER, batch_for, random_model, records
from reportgen.analysis.pairs import MinimalPair, digit_at, make_pairs, token_roles
from reportgen.analysis.config import PatchingConfig
from reportgen.analysis.engine import PASS_SHARE, forward_row_bytes
from reportgen.analysis import patching
from reportgen.analysis.patching import (
    ActivationPatcher, PairRun, answer_order, hook_name, logit_diff, pair_batch, patch_pairs,
    run_patching,
)
from reportgen.configfile import from_dict
from reportgen.data.arithmetic import make_record
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from reportgen import hooks as hp


def strong_model(seed: int = 0, **overrides):
    """A random model with weights large enough that logit differences are far from zero."""
    model = random_model(seed, **overrides)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("W_"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model


def add_records(n: int = 40, seed: int = 0, **fmt) -> list[dict]:
    return stratified_examples("add", n, 3, 2, seed, fmt.get("with_steps", False), fmt.get("answer_order", "plain"))


def loop_sweep(model, run: PairRun, pb, site: str, direction: str) -> torch.Tensor:
    """The straightforward sweep: one full forward pass per (layer, position) or (layer, head)."""
    tokens = pb.corrupt if direction == "denoise" else pb.clean
    tokens = tokens[run.kept]
    source = run.clean if direction == "denoise" else run.corrupt
    L, P = model.cfg.n_layers, tokens.shape[1]
    width = model.cfg.n_heads if site == "head" else P
    out = torch.zeros(run.n_kept, L, width, dtype=next(model.parameters()).dtype)
    for l in range(L):
        name = hook_name(site, l)
        for j in range(width):
            def patch(act, _n, j=j):
                act = act.clone()
                if site == "head":
                    act[:, :, j] = source[name][:, :, j]
                else:
                    act[:, j] = source[name][:, j]
                return act
            with torch.no_grad():
                logits = model(tokens, hooks={name: patch})
            ld = logit_diff(logits, run.pred_pos, run.correct, run.cf)
            out[:, l, j] = run.effect(ld, torch.arange(run.n_kept), direction)
    return out


# ---------------------------------------------------------------- pairs
def test_carry_flip_flips_the_carry_into_column_n_and_keeps_its_digits():
    pairs = make_pairs(add_records(60), "carry_flip", 60, seed=1)
    assert len(pairs) == 60
    for p in pairs:
        n, c, x = p.column, p.clean["labels"]["columns"], p.corrupt["labels"]["columns"]
        assert n >= 1 and c[n]["carry_in"] != x[n]["carry_in"]
        assert (c[n]["a"], c[n]["b"]) == (x[n]["a"], x[n]["b"])
        assert len(p.clean["prompt"] + p.clean["target"]) == len(p.corrupt["prompt"] + p.corrupt["target"])
        assert digit_at(p.corrupt, n) == (p.pred_pos, p.counterfactual)
        assert digit_at(p.clean, n) == (p.pred_pos, p.correct) and p.correct != p.counterfactual
        changed = [k for k in range(len(c)) if (c[k]["a"], c[k]["b"]) != (x[k]["a"], x[k]["b"])]
        assert changed == [n - 1]


def test_sum_flip_changes_one_column_digit_and_no_carry():
    pairs = make_pairs(add_records(60), "sum_flip", 60, seed=2)
    assert len(pairs) == 60
    for p in pairs:
        c, x = p.clean["labels"]["columns"], p.corrupt["labels"]["columns"]
        assert [(k["carry_in"], k["carry_out"]) for k in c] == [(k["carry_in"], k["carry_out"]) for k in x]
        changed = [k for k in range(len(c)) if (c[k]["a"], c[k]["b"]) != (x[k]["a"], x[k]["b"])]
        assert changed == [p.column] and p.correct != p.counterfactual


def test_operator_flip_swaps_only_the_operator():
    recs = stratified_examples("addsub", 40, 3, 1, 0, False, "plain")
    pairs = make_pairs(recs, "operator_flip", 30, seed=0)
    assert pairs
    for p in pairs:
        assert (p.clean["a"], p.clean["b"]) == (p.corrupt["a"], p.corrupt["b"])
        assert {p.clean["op"], p.corrupt["op"]} == {"+", "-"} and p.correct != p.counterfactual


@pytest.mark.parametrize("fmt", [{"with_steps": True}, {"answer_order": "reversed"}])
def test_pairs_align_token_by_token_in_every_format(fmt):
    for kind in ("carry_flip", "sum_flip"):
        pairs = make_pairs(add_records(30, **fmt), kind, 20, seed=0)
        assert pairs
        for p in pairs:
            clean, corrupt = (r["prompt"] + r["target"] for r in (p.clean, p.corrupt))
            assert len(clean) == len(corrupt)
            assert (clean[p.pred_pos], corrupt[p.pred_pos]) == (str(p.correct), str(p.counterfactual))


def test_pairs_are_deterministic_given_the_seed():
    recs = add_records(40)
    key = lambda ps: [(p.clean["prompt"], p.corrupt["prompt"], p.column) for p in ps]  # noqa: E731
    assert key(make_pairs(recs, "carry_flip", 20, 3)) == key(make_pairs(recs, "carry_flip", 20, 3))
    assert key(make_pairs(recs, "carry_flip", 20, 3)) != key(make_pairs(recs, "carry_flip", 20, 4))


def test_token_roles():
    rec = records((59, "+", 73))[0]
    assert token_roles(rec) == ["BOS", "a1", "a0", "op", "b1", "b0", "=", "ans2", "ans1", "ans0", "EOS"]


# ---------------------------------------------------------------- patching known answers
def _run(model, sites=("resid_pre", "attn_out", "mlp_out", "head"), min_denominator=1.0, n=24):
    pb = pair_batch(make_pairs(add_records(40), "carry_flip", n, 0), TOKENIZER)
    return PairRun(model, pb, sites, min_denominator), pb


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "head"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("grouped", [False, True])
def test_batched_sweep_equals_one_forward_per_patch(site, direction, grouped, monkeypatch):
    """Batched passes (grouped: each group of rows run only from the first position its patch
    changes, with the earlier positions' keys and values from the cache) give what one full
    forward pass per patch gives."""
    if grouped:
        monkeypatch.setattr(patching, "GROUP_ROWS", 1)
    model = strong_model(1)
    run, pb = _run(model, sites=(site,))
    assert run.n_kept >= 5
    batched = run.sweep(site, direction)
    assert torch.allclose(batched, loop_sweep(model, run, pb, site, direction), atol=1e-5)


def test_a_small_memory_budget_cuts_the_sweep_into_chunks_and_changes_nothing():
    """PairRun takes the memory budget itself (as the API classes use it): a budget of a few
    rows' activations cuts every patched pass to those rows, with the same effects to float32
    rounding of the patched logit differences (compared before dividing by the pair's logit
    difference, which min_denominator 0 lets fall to hundredths and would magnify them)."""
    model = strong_model(1)
    pb = pair_batch(make_pairs(add_records(), "carry_flip", 16, 0), TOKENIZER, "cpu")
    whole = PairRun(model, pb, ("head", "resid_pre"), 0.0)
    row = forward_row_bytes(model.cfg, pb.clean.shape[1])
    small = PairRun(model, pb, ("head", "resid_pre"), 0.0, memory_mb=3 * row / 2**20 / PASS_SHARE)
    assert whole.max_rows == 512 and small.max_rows == 3
    den = (whole.ld_clean - whole.ld_corrupt)[:, None, None]
    assert torch.equal(small.ld_clean, whole.ld_clean) and torch.equal(small.ld_corrupt, whole.ld_corrupt)
    for site in ("head", "resid_pre"):
        torch.testing.assert_close(small.sweep(site, "denoise") * den, whole.sweep(site, "denoise") * den,
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("site", ["resid_pre", "head"])
def test_a_float64_model_is_swept_in_float64(site, monkeypatch):
    monkeypatch.setattr(patching, "GROUP_ROWS", 1)  # every pass resumed after its unchanged prefix
    model = strong_model(1).double()
    run, pb = _run(model, sites=(site,))
    batched = run.sweep(site, "denoise")
    assert batched.dtype == torch.float64
    assert torch.allclose(batched, loop_sweep(model, run, pb, site, "denoise"), rtol=0, atol=1e-12)


def test_whole_residual_patch_recovers_exactly():
    model = strong_model(2)
    run, _ = _run(model, sites=("resid_pre",))
    for l in range(model.cfg.n_layers):
        assert torch.equal(run.whole(l, ("resid_pre",), "denoise"), torch.ones(run.n_kept))
        assert torch.equal(run.whole(l, ("resid_pre",), "noise"), torch.ones(run.n_kept))


def test_dead_head_and_dead_mlp_have_exactly_zero_effect():
    model = strong_model(3)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
        model.blocks[1].mlp.W_out.zero_()
        model.blocks[1].mlp.b_out.zero_()
    run, _ = _run(model, sites=("head", "mlp_out"))
    for direction in ("denoise", "noise"):
        assert torch.all(run.sweep("head", direction)[:, 0, 1] == 0)
        assert torch.all(run.sweep("mlp_out", direction)[:, 1] == 0)
        assert run.sweep("head", direction)[:, 0, 0].abs().sum() > 0
    findings = run_patching(model, TOKENIZER, batch_for(model, add_records(30)), PatchingConfig(n_pairs=10), 0)
    for s in findings.sweeps:
        if s.site == "head":
            assert s.mean[0, 1] == 0 and s.lo[0, 1] == 0 and s.hi[0, 1] == 0
        if s.site == "mlp_out":
            assert np.all(s.mean[1] == 0)


def test_identical_inputs_are_dropped_and_counted_never_nan():
    model = strong_model(4)
    real = _run(model, ("resid_pre",))[0].pairs[:3]
    same = [MinimalPair("carry_flip", p.clean, p.clean, p.column, p.pred_pos, p.correct, p.counterfactual) for p in real]
    cfg = PatchingConfig()
    sweeps, _, dropped = patch_pairs(model, TOKENIZER, real + same[:2], cfg, 0)
    assert sweeps and all(s.n_dropped == dropped >= 2 and s.n_pairs + s.n_dropped == 5 for s in sweeps)
    assert all(not np.isnan(s.mean).any() for s in sweeps)
    assert patch_pairs(model, TOKENIZER, same, cfg, 0) == ([], [], 3)  # all dropped: still counted


def test_run_patching_end_to_end():
    model = strong_model(5)
    batch = batch_for(model, add_records(40))
    cfg = PatchingConfig(n_pairs=16, attribution_top_k=5)
    f = run_patching(model, TOKENIZER, batch, cfg, 0)
    assert f.pair_counts == {"carry_flip": 16, "sum_flip": 16, "operator_flip": 0}
    assert len(f.sweeps) == 2 * 4 * 2
    for s in f.sweeps:
        assert s.n_pairs + s.n_dropped == 16
        assert not np.isnan(s.mean).any() and np.all(s.lo <= s.mean + 1e-12) and np.all(s.mean <= s.hi + 1e-12)
        assert s.mean.shape == (2, 2 if s.site == "head" else len(s.position_labels))
    exact = {s.site: s.mean for s in f.sweeps if s.pair_kind == "carry_flip" and s.direction == "denoise"}
    assert [a.exact is not None for a in f.attribution].count(True) == 5
    labels = {s.site: s.position_labels for s in f.sweeps}
    for a in f.attribution:
        assert a.label == labels[a.site][a.index]  # a token role or head, never a raw token position
    for a in f.attribution[:5]:
        assert a.exact == pytest.approx(exact[a.site][a.layer, a.index])
    assert f.pair_dropped == {k: (s.n_dropped if (s := next((s for s in f.sweeps if s.pair_kind == k), None)) else 0)
                              for k in f.pair_counts}
    assert abs(f.attribution[0].estimate) >= abs(f.attribution[-1].estimate)
    assert from_dict(PatchingConfig, {"pair_kinds": ["sum_flip"], "n_pairs": 8}, "test").pair_kinds == ["sum_flip"]


def test_answer_order_is_read_off_a_pair_with_two_answer_digits():
    """A one-digit answer looks 'plain'; the sweep's axis still follows the reversed format."""
    one = make_record(3, 4, "+", False, "reversed")  # '3+4=7'
    two = make_record(59, 73, "+", False, "reversed")  # '59+73=231'
    pair = lambda r: MinimalPair("sum_flip", r, r, 0, 0, 0, 1)  # noqa: E731
    assert answer_order([pair(one), pair(two)]) == "reversed"
    assert answer_order([pair(make_record(3, 4, "+", False, "plain")), pair(make_record(59, 73, "+"))]) == "plain"


def test_attribution_is_zero_where_nothing_differs():
    model = strong_model(6)
    run, _ = _run(model, sites=("resid_pre",))
    est = run.attribution(("resid_pre",))["resid_pre"]
    same = (run.clean[hp.resid_pre(0)] == run.corrupt[hp.resid_pre(0)]).all(-1)
    assert torch.all(est[:, 0][same] == 0)


def test_activation_patcher_api():
    model = strong_model(7)
    patcher = ActivationPatcher(model, TOKENIZER)
    effects = patcher.compute_patching_effect("12 + 34", "12 + 35", target_token_pos=-2)
    assert set(effects) == {0, 1} and all(np.isfinite(v) for v in effects.values())
    with pytest.raises(ReportgenError, match="laid out differently"):
        patcher.compute_patching_effect("12 + 34", "12 + 94", -2)  # answers of 2 and 3 digits
    with pytest.raises(ReportgenError, match="laid out differently"):
        patcher.compute_patching_effect("12 + 345", "123 + 45", -2)  # same length, '+' at another position
    with pytest.raises(ReportgenError, match="same digit"):
        patcher.compute_patching_effect("12 + 34", "12 + 35", -3)


def test_config_rejects_bad_values():
    with pytest.raises(ReportgenError):
        PatchingConfig(n_pairs=0)
    with pytest.raises(ReportgenError):
        from_dict(PatchingConfig, {"sites": ["nowhere"]}, "test")


def test_pairs_use_random_records_not_only_the_first():
    recs = add_records(40)
    pairs = make_pairs(recs, "carry_flip", 10, seed=5)
    assert len({p.clean["prompt"] for p in pairs}) == 10

"""Ablation interventions: dead components change nothing, the batched sweep equals one forward
pass per head, reference sets and resampling follow their definitions, metrics are right."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import TOKENIZER, batch_for, records
from reportgen.analysis.config import InterventionConfig
from reportgen.analysis.interventions import (
    Ablator, InterventionAnalyzer, head_spec, _tokens, reference_records, run_interventions,
)
from reportgen.analysis.examples import template
from reportgen.configfile import from_dict
from reportgen.data.dataset import stratified_examples
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.checkpoint import load_checkpoint
from test_patching import strong_model


def add_batch(model, n=24, seed=0, **fmt):
    recs = stratified_examples("add", n, 3, 1, seed, fmt.get("with_steps", False), fmt.get("answer_order", "plain"))
    return batch_for(model, recs)


def loop_head_ablation(ab: Ablator, method: str) -> torch.Tensor:
    """One full forward pass per head: [L*H, B, A, 10] digit log-probs."""
    model, out = ab.model, []
    for l in range(model.cfg.n_layers):
        name = hp.attn_z(l)
        values = ab.values(method, name)
        for h in range(model.cfg.n_heads):
            def hook(z, _n, h=h):
                z = z.clone()
                z[:, :, h] = values[:, :, h]
                return z
            with torch.no_grad():
                logits = model(ab.tokens, hooks={name: hook})
            out.append(ab._target_logprobs(logits[None])[0])
    return torch.stack(out)


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_batched_head_ablation_equals_one_forward_per_head(method):
    model = strong_model(0)
    ab = Ablator(model, TOKENIZER, add_batch(model), seed=0, reference_size=8)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    batched = ab.ablated([head_spec(l, h) for l in range(L) for h in range(H)], method)
    assert torch.allclose(batched, loop_head_ablation(ab, method), atol=1e-5)


def loop_ablation(ab: Ablator, spec: dict, method: str) -> torch.Tensor:
    """One full forward pass with plain replacement hooks: [B, A, 10] digit log-probs."""
    def hook_for(name, idx):
        values = ab.values(method, name)

        def hook(act, _n):
            act = act.clone()
            if idx is None:
                act[:] = values
            else:
                act[:, :, idx] = values[:, :, idx]
            return act
        return hook
    with torch.no_grad():
        logits = ab.model(ab.tokens, hooks={name: hook_for(name, idx) for name, idx in spec.items()})
    return ab._target_logprobs(logits[None])[0]


@pytest.mark.parametrize("method", ["zero", "mean", "resample"])
def test_every_kind_of_batched_ablation_equals_a_plain_forward_with_hooks(method):
    """Specs resumed after resid_mid or resid_post, across layers, in the last block (which then
    runs at the answer positions only) and from resid_pre all give the plain forward's numbers."""
    model = strong_model(0)
    ab = Ablator(model, TOKENIZER, add_batch(model), seed=0, reference_size=8)
    specs = [
        {hp.attn_out(0): None}, {hp.mlp_out(1): None}, {hp.mlp_out(0): None},
        {hp.mlp_post(0): [1, 5, 9]}, {hp.mlp_post(1): [0, 3]},
        {hp.mlp_post(0): [2], hp.mlp_post(1): [4, 7]},
        {hp.attn_z(0): [0], hp.mlp_post(0): [3], hp.attn_z(1): [1]},
        {hp.attn_z(1): None}, {hp.resid_pre(1): None},
        {hp.resid_pre(0): None, hp.attn_out(1): None},
    ]
    together = ab.ablated(specs, method)  # grouped by first layer, so resumed from the earliest point any needs
    for spec, got in zip(specs, together):
        want = loop_ablation(ab, spec, method)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=str(spec))
        torch.testing.assert_close(ab.ablated([spec], method)[0], want, rtol=1e-5, atol=1e-4, msg=str(spec))


def test_passes_with_fewer_rows_than_examples_cut_the_examples_and_change_nothing(monkeypatch):
    """max_rows 5 over 24 examples: every ablated pass (resumed at any point) holds at most 5 rows,
    one spec over a slice of the examples, and gives the plain forward's numbers."""
    model = strong_model(0)
    ab = Ablator(model, TOKENIZER, add_batch(model), seed=0, reference_size=8, max_rows=5)
    assert ab.max_rows == 5 < ab.tokens.shape[0]
    specs = [{hp.attn_z(0): [1]}, {hp.mlp_out(1): None}, {hp.mlp_post(0): [2, 3]}, {hp.resid_pre(1): None}]
    seen = []
    for name in ("run_from", "run_from_mid"):
        real = getattr(model, name)
        monkeypatch.setattr(model, name, lambda x, *a, real=real, **k: seen.append(x.shape[0]) or real(x, *a, **k))
    together = ab.ablated(specs, "mean")
    assert seen and max(seen) <= 5
    monkeypatch.undo()
    for spec, got in zip(specs, together):
        torch.testing.assert_close(got, loop_ablation(ab, spec, "mean"), rtol=1e-5, atol=1e-4, msg=str(spec))


def assert_same_metrics(got, want):
    """The same per-example values: equal means and counts; interval ends to the float32 rounding
    of stats.bootstrap_means, whose batched resampled means round by the column's place in the batch."""
    flat = lambda m: dict(flatten(dataclasses.asdict(m)))  # noqa: E731
    got, want = flat(got), flat(want)
    assert got.keys() == want.keys()
    for key, w in want.items():
        g = got[key]
        if w is None or g is None:
            assert g == w, key
            continue
        assert (g[0], g[3]) == (w[0], w[3]), key
        assert g[1:3] == pytest.approx(w[1:3], rel=1e-6, abs=1e-9, nan_ok=True), key


def flatten(tree, prefix=""):
    """(path, (mean, lo, hi, n)) of every Estimate in an asdict'ed Metrics; (path, None) where none."""
    if isinstance(tree, dict) and set(tree) == {"mean", "lo", "hi", "n"}:
        yield prefix, (tree["mean"], tree["lo"], tree["hi"], tree["n"])
    elif isinstance(tree, dict):
        for k, v in tree.items():
            yield from flatten(v, f"{prefix}.{k}")
    else:
        yield prefix, tree


def test_dead_head_and_dead_mlp_ablations_change_nothing():
    model = strong_model(1)
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
        model.blocks[1].mlp.W_out.zero_()
        model.blocks[1].mlp.b_out.zero_()
    cfg = InterventionConfig(methods=["mean", "resample", "zero"], reference_size=8)
    f = run_interventions(model, TOKENIZER, add_batch(model), cfg, 0)
    dead = [e for e in f.effects if e.component in ("L0H1", "L1.mlp")]
    assert len(dead) == 6
    for e in dead:  # free generation is measured for the default method only
        free = {} if e.method == cfg.default_method else {"free_exact_match": f.clean.free_exact_match,
                                                          "free_by_stratum": f.clean.free_by_stratum}
        assert_same_metrics(dataclasses.replace(e.metrics, **free), f.clean)
    live = [e for e in f.effects if e.component == "L0H0" and e.method == "zero"]
    assert live[0].metrics.logprob.mean != f.clean.logprob.mean


def test_mean_values_are_position_means_over_a_separate_reference_set_of_the_same_layout():
    model = strong_model(2)
    batch = add_batch(model)
    ab = Ablator(model, TOKENIZER, batch, seed=0, reference_size=6)
    refs, ref_templates = ab.reference()
    _, cache = model.run_with_cache(_tokens(refs, TOKENIZER, ab.P))
    batch_keys = {(r["a"], r["b"], r["op"]) for r in batch.records}
    assert not batch_keys & {(r["a"], r["b"], r["op"]) for r in refs}
    assert set(ref_templates) == set(ab.templates)
    name = hp.attn_out(0)
    values = ab.values("mean", name)
    for i, t in enumerate(ab.templates):
        rows = [j for j, rt in enumerate(ref_templates) if rt == t]
        assert torch.allclose(values[i], cache[name][rows].mean(0))


def test_resample_takes_another_example_of_the_same_layout():
    model = strong_model(3)
    batch = add_batch(model, n=40)
    ab = Ablator(model, TOKENIZER, batch, seed=0, reference_size=4)
    src = ab.resample_sources().tolist()
    refs, ref_templates = ab.reference()
    B = len(batch)
    for i, s in enumerate(src):
        assert s != i
        assert (ab.templates[s] if s < B else ref_templates[s - B]) == ab.templates[i]
    assert src == Ablator(model, TOKENIZER, batch, seed=0, reference_size=4).resample_sources().tolist()
    groups = [i for i in range(B) if ab.templates.count(ab.templates[i]) > 1]
    assert groups and all(src[i] < B for i in groups)


def test_copies_of_a_problem_never_resample_from_each_other():
    """'59+73' given twice with '68+74' (same layout): each copy takes another problem's
    activations (or a reference example's), so a resampled example is always really ablated."""
    model = strong_model(3)
    batch = batch_for(model, records((59, "+", 73), (59, "+", 73), (68, "+", 74), (12, "+", 34), (12, "+", 34)))
    ab = Ablator(model, TOKENIZER, batch, seed=0, reference_size=4)
    src = ab.resample_sources().tolist()
    assert src[:3] == [2, 2, 0]  # the other problem's first copy
    assert src[3] == src[4] >= len(batch)  # '12+34' is its layout's only problem: a reference example


def test_ablation_keeps_the_model_dtype():
    model = strong_model(3).double()
    ab = Ablator(model, TOKENIZER, add_batch(model, n=8), seed=0, reference_size=4)
    out = ab.ablated([head_spec(0, 0), {hp.mlp_out(1): None}], "mean")
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_reference_records_cover_rare_layouts():
    rare = records((100, "-", 99), (999, "+", 1))
    found = reference_records(rare, 4, seed=0)
    for r in rare:
        assert len(found[template(r)]) == 4


def test_metrics_count_exact_match_digits_and_logprob():
    model = strong_model(4)
    batch = batch_for(model, records((59, "+", 73), (12, "+", 34)))
    ab = Ablator(model, TOKENIZER, batch, seed=0, reference_size=2)
    perfect = torch.full((2, batch.answer_ids.shape[1], 10), -30.0)
    perfect.scatter_(-1, ab.digits[..., None], 0.0)
    s = ab.scores(perfect)
    assert s["exact_match"].tolist() == [1.0, 1.0] and s["digit_accuracy"].tolist() == [1.0, 1.0]
    assert s["logprob"].tolist() == [0.0, 0.0]
    wrong = perfect.clone()
    wrong[0, 1] = perfect[0, 1].roll(1)  # second digit of 132 wrong
    s = ab.scores(wrong)
    assert s["exact_match"].tolist() == [0.0, 1.0]
    assert s["digit_accuracy"][0] == pytest.approx(2 / 3) and s["logprob"][0] == -30.0
    m = ab.metrics(wrong)
    assert m.exact_match.mean == 0.5
    # 59+73 (multi_carry) has its second digit wrong; 12+34 (no_carry) is right
    assert m.by_stratum.keys() == m.digit_accuracy_by_stratum.keys() == {"multi_carry", "no_carry"}
    assert m.by_stratum["multi_carry"].mean == 0.0 and m.by_stratum["no_carry"].mean == 1.0
    assert m.digit_accuracy_by_stratum["multi_carry"].mean == pytest.approx(2 / 3)
    assert m.logprob_by_stratum["multi_carry"].mean == -30.0 and m.logprob_by_stratum["no_carry"].mean == 0.0
    # margin: 30 at a right digit (0 against -30), -30 at the wrong one (-30 against 0)
    assert s["margin"].tolist() == [pytest.approx(10.0), 30.0]
    assert m.margin_by_stratum["multi_carry"].mean == pytest.approx(10.0) and m.free_exact_match is None


def loop_free_generation(ab: Ablator, spec: dict, method: str) -> list[bool]:
    """Greedy decoding one token at a time, a full forward pass with the replacement at every step."""
    right = []
    for i, r in enumerate(ab.batch.records):
        ids = TOKENIZER.encode(r["prompt"], bos=True)
        start = len(ids)
        for _ in range(len(r["target"]) + 1):
            def hook(act, name):
                values, out = ab.values(method, name)[i : i + 1], act.clone()
                n = min(out.shape[1], values.shape[1])
                if spec[name] is None:
                    out[:, :n] = values[:, :n]
                else:
                    out[:, :n, spec[name]] = values[:, :n, spec[name]]
                return out
            with torch.no_grad():
                nxt = int(ab.model(torch.tensor([ids]), hooks={n: hook for n in spec})[0, -1].argmax())
            ids.append(nxt)
            if nxt == TOKENIZER.eos_id:
                break
        text = TOKENIZER.decode(ids[start:], keep_specials=True)
        right.append(text.rsplit("|", 1)[-1] == r["target"].rsplit("|", 1)[-1])
    return right


@pytest.mark.parametrize("with_steps", [False, True])
def test_free_generation_with_the_ablation_in_place_equals_a_token_by_token_loop(with_steps):
    model = strong_model(7, n_ctx=64)
    ab = Ablator(model, TOKENIZER, add_batch(model, n=10, with_steps=with_steps), seed=0, reference_size=4)
    specs = [head_spec(0, 1), {hp.mlp_out(1): None}, {hp.mlp_post(0): [1, 2, 3]}]
    for method in ("mean", "zero"):
        shortcut = ab.free_exact_match(specs, method, ab.ablated_outcome(specs, method)[1])
        decoded = ab.free_exact_match(specs, method, torch.zeros(len(specs), len(ab.batch), dtype=torch.bool))
        assert torch.equal(shortcut, decoded)  # teacher forcing right at every token: greedy writes the target
        for spec, row in zip(specs, decoded):
            assert row.tolist() == loop_free_generation(ab, spec, method)


def test_run_interventions_shapes_and_labels():
    model = strong_model(5)
    cfg = InterventionConfig(methods=["mean", "zero"], cumulative_max_k=3, reference_size=4)
    f = run_interventions(model, TOKENIZER, add_batch(model), cfg, 0)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert len(f.effects) == 2 * (L * H + 2 * L)
    assert {e.method for e in f.effects} == {"mean", "zero"} and f.default_method == "mean"
    assert [e.component for e in f.cumulative] == ["top-1", "top-2", "top-3"]
    head_lp = {e.component: e.metrics.logprob.mean for e in f.effects if e.method == "mean" and "H" in e.component}
    top1 = min(head_lp, key=head_lp.get)
    assert f.cumulative[0].metrics.logprob.mean == pytest.approx(head_lp[top1])
    for e in f.effects + f.cumulative + [type("E", (), {"metrics": f.clean})]:
        assert not np.isnan(e.metrics.exact_match.mean) and e.metrics.exact_match.n == 24


def test_a_broken_scratchpad_shows_in_free_generation_not_teacher_forcing():
    """In runs/add3_steps, L0H0 moves the written carry from step to step: ablating it leaves the
    teacher-forced answer right (copied from the correct scratchpad it is given) while greedy
    decoding, which reads its own broken scratchpad, gets most answers wrong."""
    ckpt = load_checkpoint("runs/add3_steps/checkpoint_best.pt")
    batch = batch_for(ckpt.model, stratified_examples("add", 60, 3, 1, 5, True, "plain"))
    # the trained model predicts every target token of every problem teacher forced, so free
    # generation needs no decoding for it: the reads line up with the tokens
    assert Ablator(ckpt.model, TOKENIZER, batch, 0).clean_teacher_forced.all()
    f = run_interventions(ckpt.model, TOKENIZER, batch, InterventionConfig(methods=["mean"], cumulative=False,
                                                                            layers=False, reference_size=8), 0)
    l0h0 = next(e.metrics for e in f.effects if e.component == "L0H0")
    assert l0h0.exact_match.mean > 0.95 and l0h0.free_exact_match.mean < 0.6
    assert l0h0.scratchpad_accuracy.mean < 0.95 and f.clean.free_exact_match.mean > 0.95


def test_steps_format_and_reversed_answers():
    model = strong_model(6, n_ctx=64)
    f = run_interventions(model, TOKENIZER, add_batch(model, n=12, with_steps=True, answer_order="reversed"),
                          InterventionConfig(methods=["resample"], default_method="resample", reference_size=3), 0)
    assert f.effects and f.cumulative


def test_layer_importance_api():
    model = strong_model(7)
    out = InterventionAnalyzer(model, TOKENIZER).measure_layer_importance(["12 + 34", "59 + 73"], component="mlp")
    assert set(out) == {0, 1} and set(out[0]) == {"exact_match", "digit_accuracy", "logprob", "margin"}
    with pytest.raises(ReportgenError, match="attn"):
        InterventionAnalyzer(model, TOKENIZER).measure_layer_importance(["12 + 34"], component="resid")


def test_api_counts_each_problem_once():
    """'59 + 73' and '59+73=' are one problem: giving it twice changes no number."""
    model = strong_model(7)
    texts = ["12 + 34", "59 + 73", "68 + 74"]
    once = InterventionAnalyzer(model, TOKENIZER, method="resample").measure_layer_importance(texts)
    twice = InterventionAnalyzer(model, TOKENIZER, method="resample").measure_layer_importance(texts + ["59+73=", "12 + 34 = 46"])
    assert once == twice


def test_config_validation():
    with pytest.raises(ReportgenError, match="default_method"):
        InterventionConfig(methods=["zero"], default_method="mean")
    cfg = from_dict(InterventionConfig, {"methods": ["resample"], "default_method": "resample"}, "test")
    assert cfg.methods == ["resample"]
    with pytest.raises(ReportgenError):
        from_dict(InterventionConfig, {"methods": ["median"]}, "test")

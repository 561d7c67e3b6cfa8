"""The transformer's hook points: names, shapes, exact no-op interventions, partial forward passes."""

from __future__ import annotations

import pytest
import torch

from conftest import TOKENIZER, random_model
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.transformer import ModelConfig

PROBLEMS = ["12+345=", "9+9=", "999+1=", "40+57="]


def tokens_for(model, problems=PROBLEMS) -> torch.Tensor:
    """Right-padded token ids [batch, pos] for prompts of mixed lengths."""
    seqs = [TOKENIZER.encode(p) for p in problems]
    out = torch.full((len(seqs), max(map(len, seqs))), TOKENIZER.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s)
    return out


@pytest.fixture(params=[1, 2], ids=["1-layer", "2-layer"])
def model(request):
    return random_model(seed=request.param, n_layers=request.param)


def test_every_hook_name_is_recorded_by_run_with_cache(model):
    logits, cache = model.run_with_cache(tokens_for(model))
    assert list(cache) == hp.all_names(model.cfg.n_layers)
    assert logits.shape == (len(PROBLEMS), tokens_for(model).shape[1], model.cfg.d_vocab)


def test_run_with_cache_filters_names_and_detaches(model):
    tokens = tokens_for(model)
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert list(cache) == [hp.attn_pattern(l) for l in range(model.cfg.n_layers)]
    assert not any(t.requires_grad for t in cache.values())
    _, attached = model.run_with_cache(tokens, names=lambda n: n == "hook_embed", detach=False)
    assert attached["hook_embed"].requires_grad


def test_activation_shapes_and_attention_is_a_causal_distribution(model):
    tokens = tokens_for(model)
    _, cache = model.run_with_cache(tokens)
    b, p = tokens.shape
    c = model.cfg
    for l in range(c.n_layers):
        pattern = cache[hp.attn_pattern(l)]
        assert pattern.shape == (b, c.n_heads, p, p)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(b, c.n_heads, p))
        above_diagonal = torch.triu(torch.ones(p, p, dtype=torch.bool), diagonal=1)
        assert (pattern[..., above_diagonal] == 0).all()
        assert (pattern[..., ~above_diagonal] > 0).all()
        for name in (hp.attn_q, hp.attn_k, hp.attn_v, hp.attn_z):
            assert cache[name(l)].shape == (b, p, c.n_heads, c.d_head)
        assert cache[hp.mlp_post(l)].shape == (b, p, c.d_mlp)
        for name in (hp.resid_pre, hp.ln1_normalized, hp.attn_out, hp.resid_mid, hp.ln2_normalized, hp.mlp_out,
                     hp.resid_post):
            assert cache[name(l)].shape == (b, p, c.d_model)


def test_overwriting_every_hook_with_its_cached_value_changes_nothing(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    hooks = {name: (lambda x, n: cache[n].clone()) for name in hp.all_names(model.cfg.n_layers)}
    replayed, replay_cache = model.run_with_cache(tokens, hooks=hooks)
    assert torch.equal(replayed, logits)
    assert all(torch.equal(replay_cache[n], cache[n]) for n in cache)


def test_hook_returning_none_leaves_the_activation_alone(model):
    tokens = tokens_for(model)
    seen = []
    hooks = {name: (lambda x, n: seen.append(n)) for name in hp.all_names(model.cfg.n_layers)}
    assert torch.equal(model(tokens, hooks=hooks), model(tokens))
    assert seen == hp.all_names(model.cfg.n_layers)


def test_overwriting_the_last_residual_gives_unembedded_final_layernorm(model):
    tokens = tokens_for(model)
    torch.manual_seed(7)
    x = torch.randn(*tokens.shape, model.cfg.d_model)
    last = hp.resid_post(model.cfg.n_layers - 1)
    logits = model(tokens, hooks={last: lambda act, n: x})
    with torch.no_grad():
        want = model.unembed(x)
    assert torch.equal(logits, want)


def test_running_to_and_from_a_layer_reproduces_the_full_forward(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    pos = torch.tensor([[4, 5, 6], [2, 3, 3], [0, 4, 5], [1, 5, 6]])
    at = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    for l in range(n + 1):
        resid = model.run_to(tokens, l)
        entering = cache[hp.resid_pre(l)] if l < n else cache[hp.resid_post(n - 1)]
        assert torch.equal(resid, entering), l
        assert torch.equal(model.run_from(resid, l), logits), l
        torch.testing.assert_close(model.run_from(resid, l, query_pos=pos), at, rtol=0, atol=1e-5)
    assert torch.equal(model.run_to(tokens, 0), cache[hp.EMBED] + cache[hp.POS_EMBED])


def test_resuming_from_resid_mid_and_query_positions_reproduce_the_full_forward(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    pos = torch.tensor([[4, 5, 6], [2, 3, 3], [0, 4, 5], [1, 5, 6]])
    at = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    for l in range(model.cfg.n_layers):
        mid = cache[hp.resid_mid(l)]
        torch.testing.assert_close(model.run_from_mid(mid, l), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.run_from_mid(mid, l, query_pos=pos), at, rtol=0, atol=1e-5)


def test_hooks_apply_when_resuming_from_a_layer():
    model = random_model(seed=3, n_layers=2)
    tokens = tokens_for(model)
    resid = model.run_to(tokens, 1)
    zero_mlp = {hp.mlp_out(1): lambda x, n: torch.zeros_like(x)}
    assert torch.equal(model.run_from(resid, 1, hooks=zero_mlp), model(tokens, hooks=zero_mlp))
    assert not torch.equal(model(tokens, hooks=zero_mlp), model(tokens))


def test_hook_returning_a_wrong_shape_raises(model):
    tokens = tokens_for(model)
    bad = {hp.attn_out(0): lambda x, n: x[:, :-1]}
    with pytest.raises(ValueError, match=hp.attn_out(0)):
        model(tokens, hooks=bad)


def test_intervening_on_one_example_leaves_the_rest_of_the_batch_unchanged(model):
    tokens = tokens_for(model)
    clean = model(tokens)

    def ablate_first(x, name):
        x = x.clone()
        x[0] = 0.0
        return x

    for name in (hp.attn_z(0), hp.mlp_out(0), hp.attn_pattern(0)):
        patched = model(tokens, hooks={name: ablate_first})
        assert not torch.equal(patched[0], clean[0]), name
        assert torch.equal(patched[1:], clean[1:]), name


def test_batched_examples_do_not_see_each_other():
    """An example's logits do not depend on what else is in the batch (or on its right padding)."""
    model = random_model(seed=5)
    tokens = tokens_for(model)
    batched = model(tokens)
    for i, problem in enumerate(PROBLEMS):
        alone = model(torch.tensor([TOKENIZER.encode(problem)]))
        torch.testing.assert_close(batched[i, : alone.shape[1]], alone[0], rtol=1e-5, atol=1e-6)


def test_input_longer_than_the_context_is_a_reportgen_error(model):
    too_long = torch.zeros(1, model.cfg.n_ctx + 1, dtype=torch.long)
    with pytest.raises(ReportgenError, match="longer than the model's context"):
        model(too_long)
    with pytest.raises(ReportgenError, match="longer than the model's context"):
        model.run_with_cache(too_long)
    model(too_long[:, :-1])  # exactly n_ctx is fine


def test_model_config_rejects_impossible_shapes():
    with pytest.raises(ReportgenError, match="divisible"):
        ModelConfig(d_model=30, n_heads=4)
    with pytest.raises(ReportgenError, match="n_layers"):
        ModelConfig(n_layers=0)


def test_hook_normalized_is_the_layernorm_output_before_its_weight_and_bias(model):
    """TransformerLens's meaning: (x - mean) / sqrt(var + eps), the weight and bias applied after;
    replacing it changes what the block computes from it."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.normal_(0.5, 1.0)  # LayerNorm weights and biases far from 1 and 0
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    last = model.cfg.n_layers - 1
    sites = [(n(l), cache[x(l)]) for l in range(model.cfg.n_layers)
             for n, x in ((hp.ln1_normalized, hp.resid_pre), (hp.ln2_normalized, hp.resid_mid))]
    for name, x in sites + [(hp.FINAL_NORMALIZED, cache[hp.resid_post(last)])]:
        want = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + model.cfg.ln_eps)
        torch.testing.assert_close(cache[name], want, rtol=0, atol=1e-5)
        doubled = model(tokens, hooks={name: lambda act, n: 2 * act})
        assert not torch.equal(doubled, logits), name
    final = model(tokens, hooks={hp.FINAL_NORMALIZED: lambda act, n: torch.zeros_like(act)})
    torch.testing.assert_close(final, (model.ln_final.b @ model.W_U + model.b_U).expand_as(final))

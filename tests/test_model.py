"""The transformer's hook points: names, shapes, exact no-op interventions, partial forward passes."""

from __future__ import annotations

import pytest
import torch

from conftest import TOKENIZER, random_model
from reportgen.errors import ReportgenError
from reportgen.model.transformer import ModelConfig, _Run, hook_names

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
    assert list(cache) == hook_names(model.cfg)
    assert logits.shape == (len(PROBLEMS), tokens_for(model).shape[1], model.cfg.d_vocab)


def test_run_with_cache_filters_names_and_detaches(model):
    tokens = tokens_for(model)
    _, cache = model.run_with_cache(tokens, names=lambda n: n.endswith("hook_pattern"))
    assert list(cache) == [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    assert not any(t.requires_grad for t in cache.values())
    _, attached = model.run_with_cache(tokens, names=lambda n: n == "hook_embed", detach=False)
    assert attached["hook_embed"].requires_grad


def test_activation_shapes_and_attention_is_a_causal_distribution(model):
    tokens = tokens_for(model)
    _, cache = model.run_with_cache(tokens)
    b, p = tokens.shape
    c = model.cfg
    for l in range(c.n_layers):
        pattern = cache[f"blocks.{l}.attn.hook_pattern"]
        assert pattern.shape == (b, c.n_heads, p, p)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(b, c.n_heads, p))
        above_diagonal = torch.triu(torch.ones(p, p, dtype=torch.bool), diagonal=1)
        assert (pattern[..., above_diagonal] == 0).all()
        assert (pattern[..., ~above_diagonal] > 0).all()
        assert cache[f"blocks.{l}.attn.hook_z"].shape == (b, p, c.n_heads, c.d_head)
        for name in ("hook_q", "hook_k", "hook_v"):
            assert cache[f"blocks.{l}.attn.{name}"].shape == (b, p, c.n_heads, c.d_head)
        assert cache[f"blocks.{l}.mlp.hook_post"].shape == (b, p, c.d_mlp)
        for name in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"blocks.{l}.{name}"].shape == (b, p, c.d_model)


def test_overwriting_every_hook_with_its_cached_value_changes_nothing(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    hooks = {name: (lambda x, n: cache[n].clone()) for name in hook_names(model.cfg)}
    replayed, replay_cache = model.run_with_cache(tokens, hooks=hooks)
    assert torch.equal(replayed, logits)
    assert all(torch.equal(replay_cache[n], cache[n]) for n in cache)


def test_hook_returning_none_leaves_the_activation_alone(model):
    tokens = tokens_for(model)
    seen = []
    hooks = {name: (lambda x, n: seen.append(n)) for name in hook_names(model.cfg)}
    assert torch.equal(model(tokens, hooks=hooks), model(tokens))
    assert seen == hook_names(model.cfg)


def test_overwriting_the_last_residual_gives_unembedded_final_layernorm(model):
    tokens = tokens_for(model)
    torch.manual_seed(7)
    x = torch.randn(*tokens.shape, model.cfg.d_model)
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    logits = model(tokens, hooks={last: lambda act, n: x})
    with torch.no_grad():
        want = model.ln_final(x, _Run(None)) @ model.W_U + model.b_U
    assert torch.equal(logits, want)


def test_start_and_stop_at_layer_reproduce_the_full_forward(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    n = model.cfg.n_layers
    for l in range(n + 1):
        resid = model(tokens, stop_at_layer=l)
        entering = cache[f"blocks.{l}.hook_resid_pre"] if l < n else cache[f"blocks.{n - 1}.hook_resid_post"]
        assert torch.equal(resid, entering), l
        assert torch.equal(model(resid=resid, start_at_layer=l), logits), l
    assert torch.equal(model(tokens, stop_at_layer=0), cache["hook_embed"] + cache["hook_pos_embed"])


def test_resuming_from_resid_mid_and_query_positions_reproduce_the_full_forward(model):
    tokens = tokens_for(model)
    logits, cache = model.run_with_cache(tokens)
    pos = torch.tensor([[4, 5, 6], [2, 3, 3], [0, 4, 5], [1, 5, 6]])
    at = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))
    for l in range(model.cfg.n_layers):
        mid = cache[f"blocks.{l}.hook_resid_mid"]
        torch.testing.assert_close(model(resid=mid, start_at_layer=l, from_mid=True), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(model(resid=mid, start_at_layer=l, from_mid=True, query_pos=pos), at,
                                   rtol=0, atol=1e-5)
    torch.testing.assert_close(model(tokens, query_pos=pos), at, rtol=0, atol=1e-5)


def test_hooks_apply_when_resuming_from_a_layer():
    model = random_model(seed=3, n_layers=2)
    tokens = tokens_for(model)
    resid = model(tokens, stop_at_layer=1)
    zero_mlp = {"blocks.1.hook_mlp_out": lambda x, n: torch.zeros_like(x)}
    assert torch.equal(model(resid=resid, start_at_layer=1, hooks=zero_mlp), model(tokens, hooks=zero_mlp))
    assert not torch.equal(model(tokens, hooks=zero_mlp), model(tokens))


def test_hook_returning_a_wrong_shape_raises(model):
    tokens = tokens_for(model)
    bad = {"blocks.0.hook_attn_out": lambda x, n: x[:, :-1]}
    with pytest.raises(ValueError, match="blocks.0.hook_attn_out"):
        model(tokens, hooks=bad)


def test_intervening_on_one_example_leaves_the_rest_of_the_batch_unchanged(model):
    tokens = tokens_for(model)
    clean = model(tokens)

    def ablate_first(x, name):
        x = x.clone()
        x[0] = 0.0
        return x

    for name in ("blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", "blocks.0.attn.hook_pattern"):
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

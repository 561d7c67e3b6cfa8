"""A small decoder-only pre-LayerNorm transformer whose every activation is a named hook point.

Parameter and hook names follow TransformerLens (W_Q, W_O, W_in, ...; `blocks.0.attn.hook_pattern`,
spelled once in `reportgen.hooks`) so researchers can read the analyses in the terms they
know. Interventions are not flags set on
modules: each forward pass takes a mapping `hooks = {name: fn}`; `fn(activation, name)` may
return a replacement tensor (batched over the whole batch) or None to leave it unchanged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Callable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from reportgen.errors import ReportgenError
from reportgen import hooks as hp

HookFn = Callable[[torch.Tensor, str], Optional[torch.Tensor]]
Hooks = Mapping[str, HookFn]
Past = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values [batch, positions, heads, d_head]


MAX_PARAMETERS = 100_000_000  # weights, gradients and two Adam moments: 1.6 GB
MAX_CONTEXT = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the transformer; saved in every checkpoint."""

    n_layers: int = 2
    n_heads: int = 4
    d_model: int = 64
    d_mlp: int = 256
    n_ctx: int = 48
    d_vocab: int = 21
    ln_eps: float = 1e-5

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ReportgenError(f"model config {f.name} must be a number, got {str(value)[:40]!r}")
            if not value > 0 or not math.isfinite(value):
                raise ReportgenError(f"model config {f.name} must be positive and finite, got {value}")
        if self.d_model % self.n_heads:
            raise ReportgenError(
                f"model config d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.n_ctx > MAX_CONTEXT:
            raise ReportgenError(f"model config n_ctx must be at most {MAX_CONTEXT} (each layer holds an "
                                 f"n_ctx x n_ctx attention mask), got {self.n_ctx}")
        if self.n_params > MAX_PARAMETERS:
            raise ReportgenError(
                f"model config {self.describe()} has {self.n_params:,} parameters ({self.n_params * 16 / 1e9:.0f} GB "
                f"to train); reportgen trains small models of at most {MAX_PARAMETERS:,}: lower d_model, d_mlp, "
                "n_layers or n_ctx")

    @property
    def n_params(self) -> int:
        """Number of weights (embeddings, attention, MLP, LayerNorms, unembedding)."""
        d, m = self.d_model, self.d_mlp
        per_layer = 4 * d * d + 4 * d + 2 * d * m + m + d + 4 * d
        return self.d_vocab * d + self.n_ctx * d + self.n_layers * per_layer + 2 * d + d * self.d_vocab + self.d_vocab

    def describe(self) -> str:
        return (f"(n_layers={self.n_layers}, n_heads={self.n_heads}, d_model={self.d_model}, d_mlp={self.d_mlp}, "
                f"n_ctx={self.n_ctx})")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


def _gather_pos(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x[b, pos[b, a]] for x [batch, pos, d]: [batch, A, d]."""
    return x.gather(1, pos[..., None].expand(-1, -1, x.shape[-1]))


# Every weight product is F.linear (x @ W + b with the bias added inside the matrix product): on
# the CPU a separate addition costs up to a quarter of the product on wide outputs like the MLP's.
def _to_heads(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-head projection [..., d] -> [..., heads, d_head] of W [heads, d, d_head], b [heads, d_head]."""
    h, d, e = W.shape
    return F.linear(x, W.transpose(1, 2).reshape(h * e, d), b.reshape(h * e)).unflatten(-1, (h, e))


def _from_heads(z: torch.Tensor, W_O: torch.Tensor, b_O: torch.Tensor) -> torch.Tensor:
    """Sum over heads of z [..., heads, d_head] @ W_O [heads, d_head, d] + b_O: one matrix product."""
    return F.linear(z.flatten(-2), W_O.flatten(0, 1).T, b_O)


class _Run:
    """Applies the hooks of one forward pass by name."""

    def __init__(self, hooks: Optional[Hooks] = None):
        self.hooks = hooks or {}

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fn = self.hooks.get(name)
        if fn is None:
            return x
        out = fn(x, name)
        if out is None:
            return x
        if out.shape != x.shape:
            raise ValueError(f"hook {name} returned shape {tuple(out.shape)}, expected {tuple(x.shape)}")
        return out


class LayerNorm(nn.Module):
    """LayerNorm that recomputes its statistics on whatever it is given (used by the logit lens).

    Its hook point `hook` sees (x - mean) / sqrt(var + eps) (var biased) before the weight and
    bias are applied, as TransformerLens's `hook_normalized` does."""

    def __init__(self, d_model: int, eps: float, hook: str):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))
        self.eps = eps
        self.hook = hook

    def forward(self, x: torch.Tensor, run: Optional[_Run] = None) -> torch.Tensor:
        if run is None or self.hook not in run.hooks:  # the fused kernel is ~3x faster on CPU
            return F.layer_norm(x, self.w.shape, self.w, self.b, self.eps)
        normalized = run(self.hook, F.layer_norm(x, self.w.shape, None, None, self.eps))
        # b + normalized * w in one kernel: rounds as the fused layer_norm does (bit for bit on CPU)
        return torch.addcmul(self.b, normalized, self.w)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        h, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d, dh))
        self.W_K = nn.Parameter(torch.empty(h, d, dh))
        self.W_V = nn.Parameter(torch.empty(h, d, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, d))
        self.b_Q = nn.Parameter(torch.zeros(h, dh))
        self.b_K = nn.Parameter(torch.zeros(h, dh))
        self.b_V = nn.Parameter(torch.zeros(h, dh))
        self.b_O = nn.Parameter(torch.zeros(d))
        self.layer = layer
        mask = torch.tril(torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor, run: _Run, query_pos: Optional[torch.Tensor] = None,
                past: Optional[Past] = None) -> torch.Tensor:
        """Attention output [batch, pos, d_model], or [batch, A, d_model] at `query_pos` [batch, A]
        only (keys and values still cover every position). With `past` (keys, values) [batch, f,
        heads, d_head] of f earlier positions, `x` holds the positions from f on and attends to
        those too (`query_pos` counts from f)."""
        l = self.layer
        xq = x if query_pos is None else _gather_pos(x, query_pos)
        q = run(hp.attn_q(l), _to_heads(xq, self.W_Q, self.b_Q))
        k = run(hp.attn_k(l), _to_heads(x, self.W_K, self.b_K))
        v = run(hp.attn_v(l), _to_heads(x, self.W_V, self.b_V))
        f = 0 if past is None else past[0].shape[1]
        if f:
            k, v = torch.cat([past[0], k], 1), torch.cat([past[1], v], 1)
        p = f + x.shape[1]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(q.shape[-1])
        allowed = self.mask[f:p, :p] if query_pos is None else self.mask[query_pos + f, :p][:, None]
        scores = scores.masked_fill(~allowed, float("-inf"))
        scores = run(hp.attn_scores(l), scores)
        pattern = run(hp.attn_pattern(l), scores.softmax(-1))
        z = run(hp.attn_z(l), torch.einsum("bhqk,bkhe->bqhe", pattern, v))
        return _from_heads(z, self.W_O, self.b_O)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model))
        self.layer = layer

    def forward(self, x: torch.Tensor, run: _Run) -> torch.Tensor:
        pre = run(hp.mlp_pre(self.layer), F.linear(x, self.W_in.T, self.b_in))
        post = run(hp.mlp_post(self.layer), F.gelu(pre))
        return F.linear(post, self.W_out.T, self.b_out)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps, hp.ln1_normalized(layer))
        self.attn = Attention(cfg, layer)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps, hp.ln2_normalized(layer))
        self.mlp = MLP(cfg, layer)

    def forward(self, x: torch.Tensor, run: _Run, from_mid: bool = False,
                query_pos: Optional[torch.Tensor] = None, past: Optional[Past] = None) -> torch.Tensor:
        """resid_post from resid_pre `x` (or from resid_mid when `from_mid`); at `query_pos`
        [batch, A] only when given; after `past` positions when given (Attention.forward)."""
        l = self.layer
        if not from_mid:
            x = run(hp.resid_pre(l), x)
            attn_out = run(hp.attn_out(l), self.attn(self.ln1(x, run), run, query_pos, past))
            x = x if query_pos is None else _gather_pos(x, query_pos)
            x = x + attn_out
        elif query_pos is not None:
            x = _gather_pos(x, query_pos)
        x = run(hp.resid_mid(l), x)
        mlp_out = run(hp.mlp_out(l), self.mlp(self.ln2(x, run), run))
        return run(hp.resid_post(l), x + mlp_out)


class Transformer(nn.Module):
    """Decoder-only pre-LN transformer with learned positional embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
        self.blocks = nn.ModuleList(Block(cfg, l) for l in range(cfg.n_layers))
        self.ln_final = LayerNorm(cfg.d_model, cfg.ln_eps, hp.FINAL_NORMALIZED)
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.reset_parameters()

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """GPT-2 style init: N(0, 0.02), output projections scaled by depth."""
        std = 0.02
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.split(".")[-1] in ("W_O", "W_out"):
                nn.init.normal_(p, 0.0, out_std, generator=generator)
            elif name.split(".")[-1].startswith("W_"):
                nn.init.normal_(p, 0.0, std, generator=generator)

    @property
    def device(self) -> torch.device:
        return self.W_E.device

    def embed(self, tokens: torch.Tensor, run: _Run) -> torch.Tensor:
        if tokens.shape[1] > self.cfg.n_ctx:
            raise ReportgenError(
                f"input of {tokens.shape[1]} tokens is longer than the model's context of {self.cfg.n_ctx}; "
                "use shorter examples"
            )
        emb = run(hp.EMBED, self.W_E[tokens])
        pos = run(hp.POS_EMBED, self.W_pos[: tokens.shape[1]].expand(tokens.shape[0], -1, -1))
        return emb + pos

    def forward(self, tokens: torch.Tensor, hooks: Optional[Hooks] = None) -> torch.Tensor:
        """Logits [batch, pos, vocab] for `tokens` [batch, pos]."""
        run = _Run(hooks)
        return self._blocks(self.embed(tokens, run), run, 0, self.cfg.n_layers)

    def run_to(self, tokens: torch.Tensor, layer: int, hooks: Optional[Hooks] = None) -> torch.Tensor:
        """The residual stream [batch, pos, d_model] entering block `layer` (its resid_pre; the
        last block's resid_post when `layer` is n_layers): what `run_from` resumes from."""
        run = _Run(hooks)
        return self._blocks(self.embed(tokens, run), run, 0, layer, unembed=False)

    def run_from(self, resid: torch.Tensor, layer: int, hooks: Optional[Hooks] = None,
                 query_pos: Optional[torch.Tensor] = None, past: Optional[dict[int, Past]] = None) -> torch.Tensor:
        """Logits of a run resumed at `blocks.{layer}.hook_resid_pre` = `resid` [batch, pos,
        d_model] (at n_layers: only the final LayerNorm and unembedding), skipping the earlier
        layers. With `query_pos` [batch, A] the logits [batch, A, vocab] at those positions only:
        the last block then computes queries and MLP there alone (its hooks see those positions),
        since nothing later reads the others. With `past` {layer: (keys, values) [batch, f, heads,
        d_head]} for every layer run, `resid` holds positions f.. only and attends to the f
        earlier ones as the run they come from did (a run that only differs from it after f)."""
        return self._blocks(resid, _Run(hooks), layer, self.cfg.n_layers, query_pos=query_pos, past=past)

    def run_from_mid(self, resid: torch.Tensor, layer: int, hooks: Optional[Hooks] = None,
                     query_pos: Optional[torch.Tensor] = None, past: Optional[dict[int, Past]] = None) -> torch.Tensor:
        """Logits of a run resumed in the middle of block `layer`, at its `hook_resid_mid` =
        `resid` (attention already added); `query_pos` and `past` as in `run_from`."""
        return self._blocks(resid, _Run(hooks), layer, self.cfg.n_layers, from_mid=True, query_pos=query_pos,
                            past=past)

    def _blocks(self, x: torch.Tensor, run: _Run, start: int, stop: int, unembed: bool = True,
                from_mid: bool = False, query_pos: Optional[torch.Tensor] = None,
                past: Optional[dict[int, Past]] = None) -> torch.Tensor:
        """Blocks start..stop-1 on `x` (block `start` from its resid_mid when `from_mid`), then the
        unembedding; the last block only at `query_pos` when given."""
        for l in range(start, stop):
            x = self.blocks[l](x, run, from_mid=from_mid and l == start,
                               query_pos=query_pos if l == self.cfg.n_layers - 1 else None,
                               past=None if past is None or (from_mid and l == start) else past[l])
        if not unembed:
            return x
        if query_pos is not None and start == self.cfg.n_layers:
            x = _gather_pos(x, query_pos)
        return self.unembed(x, run)

    def unembed(self, resid: torch.Tensor, run: Optional[_Run] = None) -> torch.Tensor:
        """Logits of a final residual stream: final LayerNorm (statistics of `resid` itself), W_U, b_U."""
        return F.linear(self.ln_final(resid, run), self.W_U.T, self.b_U)

    def prefill(self, tokens: torch.Tensor, hooks: Optional[Hooks] = None
                ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Logits for `tokens` [batch, pos] and per-layer key/value buffers [batch, heads, n_ctx,
        d_head] holding their keys and values, for `decode_step`; `hooks` as in forward. Heads come
        before positions so that each decoding step reads them as one batched matrix product."""
        names = {name(l) for l in range(self.cfg.n_layers) for name in (hp.attn_k, hp.attn_v)}
        logits, cache = self.run_with_cache(tokens, names=names.__contains__, hooks=hooks)
        B, P = tokens.shape
        kv = []
        for l in range(self.cfg.n_layers):
            pair = []
            for name in (hp.attn_k(l), hp.attn_v(l)):
                buf = cache[name].new_zeros(B, self.cfg.n_heads, self.cfg.n_ctx, self.cfg.d_head)
                buf[:, :, :P] = cache[name].transpose(1, 2)
                pair.append(buf)
            kv.append((pair[0], pair[1]))
        return logits, kv

    def decode_step(self, tokens: torch.Tensor, pos: torch.Tensor, kv: list[tuple[torch.Tensor, torch.Tensor]],
                    hooks: Optional[Hooks] = None) -> torch.Tensor:
        """Logits [batch, vocab] of one new token per row, `tokens` [batch] at positions `pos`
        [batch], attending to the keys/values at positions <= pos (which it writes into `kv`).

        The same arithmetic as `forward` for the last position; rows may be at different
        positions. Hooks see the new position's activations with a position axis of length 1
        (`blocks.{l}.hook_resid_pre`, `attn.hook_z`, `hook_attn_out`, `hook_resid_mid`,
        `mlp.hook_post`, `hook_mlp_out`, `hook_resid_post`). Keys written beyond a row's
        position are never read before that row overwrites them.
        """
        run = _Run(hooks)
        at = lambda name, x: run(name, x[:, None])[:, 0]  # noqa: E731  (hooks see [batch, 1, ...])
        rows = torch.arange(tokens.shape[0], device=tokens.device)
        x = self.W_E[tokens] + self.W_pos[pos]
        m = int(pos.max()) + 1
        B, H, E = tokens.shape[0], self.cfg.n_heads, self.cfg.d_head
        hidden = torch.arange(m, device=tokens.device)[None, None, :] > pos[:, None, None]
        for l, (block, (K, V)) in enumerate(zip(self.blocks, kv)):
            a = block.attn
            x = at(hp.resid_pre(l), x)
            h = block.ln1(x)
            q = _to_heads(h, a.W_Q, a.b_Q)
            K[rows, :, pos] = _to_heads(h, a.W_K, a.b_K)
            V[rows, :, pos] = _to_heads(h, a.W_V, a.b_V)
            keys, values = K[:, :, :m].reshape(B * H, m, E), V[:, :, :m].reshape(B * H, m, E)  # views
            scores = torch.bmm(keys, q.reshape(B * H, E, 1)).view(B, H, m) / math.sqrt(E)
            pattern = scores.masked_fill(hidden, float("-inf")).softmax(-1)
            z = at(hp.attn_z(l), torch.bmm(pattern.view(B * H, 1, m), values).view(B, H, E))
            x = at(hp.resid_mid(l), x + at(hp.attn_out(l), _from_heads(z, a.W_O, a.b_O)))
            mlp = block.mlp
            post = at(hp.mlp_post(l), F.gelu(F.linear(block.ln2(x), mlp.W_in.T, mlp.b_in)))
            x = at(hp.resid_post(l), x + at(hp.mlp_out(l), F.linear(post, mlp.W_out.T, mlp.b_out)))
        return self.unembed(x)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        names: Optional[Callable[[str], bool]] = None,
        hooks: Optional[Hooks] = None,
        detach: bool = True,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass recording every hook point (or those `names` accepts).

        `hooks` may intervene at the same time; the cache records the values after intervention.
        """
        cache: dict[str, torch.Tensor] = {}
        hooks = dict(hooks or {})

        def record(name: str, fn: Optional[HookFn]) -> HookFn:
            def hook(x: torch.Tensor, _name: str) -> torch.Tensor:
                if fn is not None:
                    out = fn(x, _name)
                    x = x if out is None else out
                cache[_name] = x.detach() if detach else x
                return x
            return hook

        for name in hp.all_names(self.cfg.n_layers):
            if names is None or names(name):
                hooks[name] = record(name, hooks.get(name))
        logits = self(tokens, hooks=hooks)
        return logits, cache

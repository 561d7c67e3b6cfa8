"""Greedy-decoding evaluation: exact match and per-digit accuracy, overall and per stratum."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.transformer import Hooks, Transformer


@dataclass
class EvalResult:
    """Exact match with a 95% Wilson interval, per-digit accuracy, and the same per stratum."""

    exact_match: float
    lo: float
    hi: float
    n: int
    digit_accuracy: float
    by_stratum: dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "exact_match": self.exact_match, "lo": self.lo, "hi": self.hi, "n": self.n,
            "digit_accuracy": self.digit_accuracy, "by_stratum": self.by_stratum,
        }


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sound at 0% and 100%)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Clamp so rounding never leaves the estimate outside (e.g. hi = 0.9999999999999999 at k = n).
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


HooksFor = Callable[[torch.Tensor, torch.Tensor], Hooks]
DECODE_BUFFER_BYTES = 1 << 30


@torch.no_grad()
def greedy_decode(model: Transformer, tokenizer: Tokenizer, prompts: list[str], max_new_tokens: int,
                  batch_size: int = 512, hooks_for: Optional[HooksFor] = None) -> list[str]:
    """Generated text after each prompt (up to EOS), batched over prompts.

    Prompts of different lengths are left-aligned; each row writes its next token at its own
    current end, so no row ever attends to padding (the causal mask hides later positions).
    Each row stops at EOS, after `max_new_tokens`, or when prompt plus output fill the context.
    Batches are made smaller where their key/value buffers would exceed DECODE_BUFFER_BYTES.
    `hooks_for(prompt indices [rows], positions [rows, P])` gives the hooks (interventions) of
    each pass over those rows and positions, e.g. an ablation kept in place while generating.
    """
    cfg = model.cfg
    row_bytes = 2 * cfg.n_layers * cfg.n_ctx * cfg.d_model * 4  # keys and values of every layer, float32
    batch_size = max(1, min(batch_size, DECODE_BUFFER_BYTES // row_bytes))
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        index = torch.arange(start, min(start + batch_size, len(prompts)), device=model.device)
        out += _decode_batch(model, tokenizer, prompts[start : start + batch_size], max_new_tokens,
                             None if hooks_for is None else functools.partial(hooks_for, index))
    return out


@torch.no_grad()
def _decode_batch(model, tokenizer, prompts, max_new_tokens, hooks_at=None):
    seqs = [tokenizer.encode(p, bos=True) for p in prompts]
    n_ctx = model.cfg.n_ctx
    for p, s in zip(prompts, seqs):
        if len(s) > n_ctx:
            raise ReportgenError(
                f"prompt {p!r} is {len(s)} tokens, longer than the model's context of {n_ctx}; use shorter examples"
            )
    lengths = torch.tensor([len(s) for s in seqs], device=model.device)
    limit = (lengths + max_new_tokens).clamp(max=n_ctx)
    tokens = torch.full((len(seqs), int(limit.max())), tokenizer.pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
    tokens = tokens.to(model.device)  # one copy, not one per row
    cur = lengths.clone()
    done = cur >= limit
    if done.all():
        return ["" for _ in prompts]
    # Shorter prompts are followed by padding in the prefill; each row overwrites those keys and
    # values at its own position before it can attend to them.
    rows = torch.arange(len(seqs), device=model.device)
    P = int(lengths.max())
    hooks = None if hooks_at is None else hooks_at(torch.arange(P, device=model.device).expand(len(seqs), P))
    logits, kv = model.prefill(tokens[:, :P], hooks)
    nxt = logits[rows, cur - 1].argmax(-1)
    while True:
        live = ~done
        tokens[rows[live], cur[live]] = nxt[live]
        done = done | (nxt == tokenizer.eos_id) | (cur + 1 >= limit)
        cur = torch.where(live, cur + 1, cur)
        if done.all():
            break
        at = (cur - 1).clamp(max=n_ctx - 1)  # finished rows repeat a harmless step
        nxt = model.decode_step(tokens[rows, at], at, kv, None if hooks_at is None else hooks_at(at[:, None])).argmax(-1)
    tokens, lengths, cur = tokens.tolist(), lengths.tolist(), cur.tolist()  # one copy from the device each
    return [tokenizer.decode(tokens[i][lengths[i] : cur[i]], keep_specials=True) for i in range(len(seqs))]


def final_answer(target: str) -> str:
    """The final answer digits of a target: the part after '|' when there are steps."""
    return target.rsplit("|", 1)[-1]


def evaluate(model: Transformer, tokenizer: Tokenizer, records: list[dict], batch_size: int = 512) -> EvalResult:
    """Greedy-decode every record's prompt and score the final answer against its target."""
    max_new = max(len(r["target"]) for r in records) + 1
    was_training = model.training
    model.eval()
    preds = greedy_decode(model, tokenizer, [r["prompt"] for r in records], max_new, batch_size)
    model.train(was_training)
    exact, digits = [], []
    for r, p in zip(records, preds):
        want, got = final_answer(r["target"]), final_answer(p)
        exact.append(got == want)
        digits.append(sum(g == w for g, w in zip(got.ljust(len(want)), want)) / len(want))
    by_stratum = {}
    for stratum in sorted({r["labels"]["stratum"] for r in records}):
        hits = [e for e, r in zip(exact, records) if r["labels"]["stratum"] == stratum]
        lo, hi = wilson_interval(sum(hits), len(hits))
        by_stratum[stratum] = {"exact_match": sum(hits) / len(hits), "lo": lo, "hi": hi, "n": len(hits)}
    lo, hi = wilson_interval(sum(exact), len(exact))
    return EvalResult(sum(exact) / len(exact), lo, hi, len(exact), sum(digits) / len(digits), by_stratum)

"""Activation patching on minimal pairs (DESIGN §4.2).

Metric: LD = logit(correct digit) - logit(counterfactual digit) at the position predicting the
pair's answer column, where "correct" is the clean answer's digit and "counterfactual" the
corrupt answer's digit there (a difference of two digit logits, so restricting to the digit
vocabulary changes nothing).

* Denoising (clean activation patched into the corrupt run):
  recovery = (LD_patched - LD_corrupt) / (LD_clean - LD_corrupt); 1 = clean behaviour fully
  restored, 0 = no effect.
* Noising (corrupt activation patched into the clean run):
  damage = (LD_clean - LD_patched) / (LD_clean - LD_corrupt); 1 = fully broken (the clean run
  behaves like the corrupt one), 0 = no effect.

Both share the denominator; pairs with |LD_clean - LD_corrupt| < min_denominator are dropped
and counted, never averaged. Sweeps patch one (layer, position) of `resid_pre`
(blocks.l.hook_resid_pre), `attn_out` or `mlp_out`, or one head's `hook_z` at every position.
Positions are aligned across pairs by token role (pairs.token_roles); a pair contributes the
positions up to its predicting position, and a role it lacks is left out of that role's mean.

Batching: all positions (or heads) of one layer are patched in one forward pass over an expanded
batch (pairs x positions), resumed at that layer from the cached layer input. Patches that
change nothing (positions before the first differing token, any activation identical in both
runs, a head whose W_O is zero) and positions after the predicting one are exactly
0 and are filled without computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from reportgen.analysis import stats
from reportgen.analysis.api import task_of, text_records
from reportgen.analysis.config import DEFAULT_MEMORY_MB, PatchingConfig
from reportgen.analysis.engine import forward_row_bytes, rows_within
from reportgen.analysis.examples import ExampleBatch, template
from reportgen.findings import AttributionScore, PatchingFindings, PatchSweep
from reportgen.analysis.pairs import (
    MinimalPair, make_pairs, record_format, role_order, targets_of, token_roles,
)
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.transformer import Transformer

GROUP_ROWS = 256
POSITION_SITES = ("resid_pre", "attn_out", "mlp_out")  # sites patched at one position (the others at all)
# Where a patch of each site re-enters the residual stream: (cached hook of block l the run
# resumes from, layers to skip, whether the run starts at that block's resid_mid).
RESUME = {
    "resid_pre": (hp.resid_pre, 0, False),
    "attn_out": (hp.resid_mid, 0, True),
    "head": (hp.resid_mid, 0, True),
    "mlp_out": (hp.resid_post, 1, False),
    "neuron": (hp.resid_post, 1, False),
}  # patched rows of one layer from which they are run in groups cut at their predicting position


SITE_HOOKS = {"resid_pre": hp.resid_pre, "attn_out": hp.attn_out, "mlp_out": hp.mlp_out, "head": hp.attn_z,
              "neuron": hp.mlp_post}


def hook_name(site: str, layer: int) -> str:
    """The hook point a patching site names at a layer."""
    return SITE_HOOKS[site](layer)


@dataclass
class PairBatch:
    """Token tensors of minimal pairs, cut after the last predicting position (causality makes
    later tokens irrelevant)."""

    pairs: list[MinimalPair]
    clean: torch.Tensor  # [N, P]
    corrupt: torch.Tensor  # [N, P]
    pred_pos: torch.Tensor  # [N]
    correct: torch.Tensor  # [N] token id of the clean digit
    counterfactual: torch.Tensor  # [N] token id of the corrupt digit
    roles: list[list[str]]  # per pair, the role of each position up to its predicting position


def pair_batch(pairs: list[MinimalPair], tokenizer: Tokenizer, device="cpu") -> PairBatch:
    """Tokenise pairs; clean and corrupt must have the same length so that positions align."""
    P = max(p.pred_pos for p in pairs) + 1
    clean = torch.full((len(pairs), P), tokenizer.pad_id, dtype=torch.long)
    corrupt = clean.clone()
    for i, p in enumerate(pairs):
        c = tokenizer.encode(p.clean["prompt"] + p.clean["target"], bos=True, eos=True)
        x = tokenizer.encode(p.corrupt["prompt"] + p.corrupt["target"], bos=True, eos=True)
        if len(c) != len(x):
            raise ReportgenError(
                f"{p.clean['prompt']!r} and {p.corrupt['prompt']!r} have inputs of different lengths "
                f"({len(c)} and {len(x)} tokens); a patching pair must align position by position"
            )
        clean[i, : min(P, len(c))] = torch.tensor(c[:P])
        corrupt[i, : min(P, len(x))] = torch.tensor(x[:P])
    digit = torch.tensor(tokenizer.digit_ids)
    return PairBatch(
        pairs=pairs,
        clean=clean.to(device),
        corrupt=corrupt.to(device),
        pred_pos=torch.tensor([p.pred_pos for p in pairs], device=device),
        correct=digit[[p.correct for p in pairs]].to(device),
        counterfactual=digit[[p.counterfactual for p in pairs]].to(device),
        roles=[token_roles(p.clean)[: p.pred_pos + 1] for p in pairs],
    )


def logit_diff(logits: torch.Tensor, pred_pos: torch.Tensor, correct: torch.Tensor, cf: torch.Tensor) -> torch.Tensor:
    """LD per row of `logits` [R, P, V] at the row's predicting position."""
    rows = logits[torch.arange(logits.shape[0], device=logits.device), pred_pos]
    return rows.gather(1, correct[:, None])[:, 0] - rows.gather(1, cf[:, None])[:, 0]


class PairRun:
    """The clean and corrupt runs of a PairBatch, cached once; dropped pairs are removed here.
    A patched pass holds at most `max_rows` rows, fewer where their activations would take more
    than a chunk's share of `memory_mb` (engine.rows_within)."""

    def __init__(self, model: Transformer, pb: PairBatch, sites, min_denominator: float, max_rows: int = 512,
                 memory_mb: float = DEFAULT_MEMORY_MB):
        self.model = model
        self.max_rows = rows_within(memory_mb, forward_row_bytes(model.cfg, pb.clean.shape[1]), max_rows)
        L = model.cfg.n_layers
        names = {hook_name(s, l) for s in sites for l in range(L)}
        names |= {hook(l) for l in range(L) for hook in (hp.resid_pre, hp.resid_mid, hp.resid_post, hp.attn_k, hp.attn_v)}
        args = (pb.pred_pos, pb.correct, pb.counterfactual)
        cached = names.__contains__
        with torch.no_grad():
            lc, self.clean = model.run_with_cache(pb.clean, names=cached)
            lx, self.corrupt = model.run_with_cache(pb.corrupt, names=cached)
            keep = (logit_diff(lc, *args) - logit_diff(lx, *args)).abs() >= min_denominator
            if not keep.all():
                # Kept pairs are run again so that every patched forward pass resumes from a cache
                # computed on exactly its rows: a patch that restores every value restores every bit.
                lc, self.clean = model.run_with_cache(pb.clean[keep], names=cached)
                lx, self.corrupt = model.run_with_cache(pb.corrupt[keep], names=cached)
        self.kept = keep.nonzero()[:, 0]  # indices into pb.pairs
        self.n_dropped = int((~keep).sum())
        self.pairs = [pb.pairs[i] for i in self.kept.tolist()]
        self.roles = [pb.roles[i] for i in self.kept.tolist()]
        self.pred_pos, self.correct, self.cf = (t[keep] for t in args)
        # Where the pair's tokens first differ: before it the clean and corrupt runs are the same.
        self.first_diff = torch.minimum((pb.clean[keep] != pb.corrupt[keep]).int().argmax(1), self.pred_pos)
        self.ld_clean = logit_diff(lc, self.pred_pos, self.correct, self.cf)
        self.ld_corrupt = logit_diff(lx, self.pred_pos, self.correct, self.cf)

    @property
    def n_kept(self) -> int:
        return len(self.pairs)

    def _sides(self, direction: str) -> tuple[dict, dict]:
        """(cache of the run patched into, cache the patch comes from)."""
        return (self.corrupt, self.clean) if direction == "denoise" else (self.clean, self.corrupt)

    def effect(self, ld: torch.Tensor, rows: torch.Tensor, direction: str) -> torch.Tensor:
        """Recovery (denoise) or damage (noise) of patched LDs of pairs `rows`."""
        den = self.ld_clean[rows] - self.ld_corrupt[rows]
        if direction == "denoise":
            return (ld - self.ld_corrupt[rows]) / den
        return (self.ld_clean[rows] - ld) / den

    @torch.no_grad()
    def patched_ld(self, site: str, layer: int, direction: str, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """LD of each row r: pair rows[r] with position (or head, neuron) index[r] of `site` patched.

        A patch that writes linearly into the residual stream (attn_out, a head's z through W_O,
        mlp_out, a neuron through its W_out row) is added as its change to resid_mid or
        resid_post and the run resumes there; the last block runs at the predicting position
        only. Rows are grouped by predicting position and by the first position the patch can
        change (the pair's first differing token, or the patched position): each group runs only
        from there (the run patched into holds the same values before it, and its keys and values
        serve) up to its predicting position (causality). Groups of fewer than GROUP_ROWS rows join
        the one before them (from its earlier first position), and with fewer rows than that in
        all, one pass runs them all: the saving would not pay for the extra passes."""
        target, source = self._sides(direction)
        resume, start, from_mid = RESUME[site]
        base = target[resume(layer)]
        name = hook_name(site, layer)
        delta = source[name] - target[name]
        first = self.first_diff[rows]
        if site in POSITION_SITES:
            first = torch.minimum(first, index)
        ends = self.pred_pos[rows] + 1
        if len(rows) < GROUP_ROWS:  # few rows: one pass costs less than one per group
            ends, first = torch.full_like(ends, base.shape[1]), torch.zeros_like(first)
        order = torch.argsort(ends * (base.shape[1] + 1) + first, stable=True)
        rows, index = rows[order], index[order]
        bounds, counts = torch.unique_consecutive(torch.stack([ends[order], first[order]], 1), dim=0,
                                                  return_counts=True)
        groups: list[list[int]] = []  # [end, first, rows]; a group's first position serves all its rows
        for (end, f), count in zip(bounds.tolist(), counts.tolist()):
            if groups and groups[-1][0] == end and groups[-1][2] < GROUP_ROWS:  # too few rows for a pass
                groups[-1][2] += count
            else:
                groups.append([end, f, count])
        out, start_row = torch.empty(len(rows), dtype=base.dtype, device=rows.device), 0
        run_from = self.model.run_from_mid if from_mid else self.model.run_from
        L = self.model.cfg.n_layers
        for end, f, count in groups:
            for s in range(start_row, start_row + count, self.max_rows):
                stop = min(s + self.max_rows, start_row + count)
                pi, ix = rows[s:stop], index[s:stop]
                r = torch.arange(len(pi), device=pi.device)
                if site == "resid_pre":
                    x = base[pi, f:end].clone()
                    x[r, ix - f] = source[name][pi, ix]
                else:
                    x = base[pi, f:end] + self._change(site, layer, delta, pi, ix, r, f, end)
                past = {l: (target[hp.attn_k(l)][pi, :f], target[hp.attn_v(l)][pi, :f])  # layers whose attention runs
                        for l in range(layer + start + from_mid, L)} if f else None
                logits = run_from(x, layer + start, query_pos=(self.pred_pos[pi] - f)[:, None], past=past)
                out[s:stop] = logit_diff(logits, torch.zeros_like(pi), self.correct[pi], self.cf[pi])
            start_row += count
        return out[torch.argsort(order)]

    def _change(self, site: str, layer: int, delta: torch.Tensor, pi, ix, r, f, end) -> torch.Tensor:
        """What patching index ix of `site` adds to the residual stream it resumes from, at
        positions f..end-1 [R, end - f, d]."""
        if site in ("attn_out", "mlp_out"):  # one position
            change = torch.zeros(len(pi), end - f, self.model.cfg.d_model, device=delta.device, dtype=delta.dtype)
            change[r, ix - f] = delta[pi, ix]
        elif site == "head":  # one head's z at every position, through its W_O
            W_O = self.model.blocks[layer].attn.W_O
            change = torch.einsum("rpe,red->rpd", delta[pi, f:end, ix], W_O[ix])
        else:  # one neuron at every position, through its W_out row
            change = delta[pi, f:end, ix][..., None] * self.model.blocks[layer].mlp.W_out[ix][:, None, :]
        return change

    @torch.no_grad()
    def sweep(self, site: str, direction: str) -> torch.Tensor:
        """Effects [pairs, layers, positions] (or [pairs, layers, heads] for site 'head')."""
        target, source = self._sides(direction)
        L, N = self.model.cfg.n_layers, self.n_kept
        P = target[hp.resid_pre(0)].shape[1]
        upto = torch.arange(P, device=self.pred_pos.device)[None, :] <= self.pred_pos[:, None]  # [N, P]
        width = self.model.cfg.n_heads if site == "head" else P
        out = torch.zeros(N, L, width, dtype=target[hp.resid_pre(0)].dtype, device=self.pred_pos.device)
        for l in range(L):
            name = hook_name(site, l)
            if site == "head":
                differs = (target[name] != source[name]).any(-1) & upto[..., None]
                need = differs.any(1) & head_can_write(self.model, l)  # [N, H]
            else:
                need = (target[name] != source[name]).flatten(2).any(-1) & upto  # [N, P]
            rows, index = need.nonzero(as_tuple=True)
            ld = self.patched_ld(site, l, direction, rows, index)
            out[rows, l, index] = self.effect(ld, rows, direction)
        return out

    @torch.no_grad()
    def whole(self, layer: int, sites, direction: str) -> torch.Tensor:
        """Effect per pair of patching every position of `sites` at `layer` at once."""
        target, source = self._sides(direction)
        x = (source if "resid_pre" in sites else target)[hp.resid_pre(layer)]
        hooks = {hook_name(s, layer): (lambda act, n: source[n]) for s in sites if s != "resid_pre"}
        logits = self.model.run_from(x, layer, hooks=hooks)
        rows = torch.arange(self.n_kept, device=x.device)
        return self.effect(logit_diff(logits, self.pred_pos, self.correct, self.cf), rows, direction)

    def attribution(self, sites) -> dict[str, torch.Tensor]:
        """First-order estimate of each denoising patch: grad of LD at the corrupt run times
        (clean - corrupt), normalised like recovery. [pairs, layers, positions or heads] per site."""
        L = self.model.cfg.n_layers
        names = [hook_name(s, l) for s in sites for l in range(L)]
        acts: dict[str, torch.Tensor] = {}

        def keep(x, name):
            acts[name] = x

        with torch.enable_grad():
            r0 = self.corrupt[hp.resid_pre(0)].clone().requires_grad_(True)
            logits = self.model.run_from(r0, 0, hooks={n: keep for n in names})
            ld = logit_diff(logits, self.pred_pos, self.correct, self.cf)
            grads = dict(zip(names, torch.autograd.grad(ld.sum(), [acts[n] for n in names])))
        den = (self.ld_clean - self.ld_corrupt)[:, None]
        out = {}
        for s in sites:
            per_layer = []
            for l in range(L):
                n = hook_name(s, l)
                est = (grads[n] * (self.clean[n] - self.corrupt[n])).sum(-1)
                per_layer.append((est.sum(1) if s == "head" else est) / den)
            out[s] = torch.stack(per_layer, 1).detach()
        return out


def head_can_write(model: Transformer, layer: int) -> torch.Tensor:
    """[H] bool: heads whose W_O is not all zero (a head with W_O = 0 writes nothing, whatever its z)."""
    return model.blocks[layer].attn.W_O.detach().flatten(1).ne(0).any(1)


def by_role(values: np.ndarray, roles: list[list[str]], axis: list[str]) -> np.ndarray:
    """[pairs, layers, positions] -> [pairs, layers, roles of `axis`], NaN where a pair lacks a role."""
    col = {r: j for j, r in enumerate(axis)}
    out = np.full(values.shape[:2] + (len(axis),), np.nan)
    for i, pair_roles in enumerate(roles):
        for p, r in enumerate(pair_roles):
            out[i, :, col[r]] = values[i, :, p]
    return out


def patch_pairs(model: Transformer, tokenizer: Tokenizer, pairs: list[MinimalPair], cfg: PatchingConfig,
                seed: int, memory_mb: float = DEFAULT_MEMORY_MB) -> tuple[list[PatchSweep], list[AttributionScore], int]:
    """Sweeps (and, for cfg.attribution_kind, attribution scores) of one kind's pairs, and how
    many pairs were dropped. A kind whose pairs are all dropped yields no sweep."""
    kind = pairs[0].kind
    run = PairRun(model, pair_batch(pairs, tokenizer, model.device), cfg.sites, cfg.min_denominator, cfg.max_rows,
                  memory_mb)
    if run.n_kept == 0:
        return [], [], run.n_dropped
    axis = role_order([r for roles in run.roles for r in roles], answer_order(run.pairs))
    heads = [f"H{h}" for h in range(model.cfg.n_heads)]
    sweeps, exact = [], {}
    for site in cfg.sites:
        for direction in cfg.directions:
            values = run.sweep(site, direction).cpu().numpy().astype(np.float64)
            if site != "head":
                values = by_role(values, run.roles, axis)
            mean, lo, hi = stats.bootstrap(values, seed=seed)
            sweeps.append(PatchSweep(kind, direction, site, mean, lo, hi, heads if site == "head" else axis,
                                     run.n_kept, run.n_dropped, pairs[0].target))
            if direction == "denoise":
                exact[site] = mean
    attribution = []
    if kind == cfg.attribution_kind and pairs[0].target == "answer":
        attribution = _attribution_scores(run, cfg, axis, exact, heads)
    return sweeps, attribution, run.n_dropped


def answer_order(pairs: list[MinimalPair]) -> str:
    """The pairs' answer order, read off a record with two answer digits or more (a one-digit
    answer reads the same either way)."""
    return next((record_format(p.clean)[1] for p in pairs if len(p.clean["answer_columns"]) > 1), "plain")


def _attribution_scores(run: PairRun, cfg: PatchingConfig, axis: list[str], exact: dict,
                        heads: list[str]) -> list[AttributionScore]:
    """Every (site, layer, index) ranked by |attribution estimate|; the top_k carry the exact value."""
    scores = []
    for site, est in run.attribution(cfg.sites).items():
        values = est.cpu().numpy().astype(np.float64)
        if site != "head":
            values = by_role(values, run.roles, axis)
        labels = heads if site == "head" else axis
        mean = np.nanmean(values, axis=0)
        for l, i in np.ndindex(mean.shape):
            scores.append(AttributionScore(site, l, i, labels[i], float(mean[l, i]), None))
    scores.sort(key=lambda s: -abs(s.estimate))
    for s in scores[: cfg.attribution_top_k]:
        if s.site in exact:
            s.exact = float(exact[s.site][s.layer, s.index])
    return scores


def run_patching(model: Transformer, tokenizer: Tokenizer, batch: ExampleBatch, cfg: PatchingConfig,
                 seed: int, memory_mb: float = DEFAULT_MEMORY_MB) -> PatchingFindings:
    """DESIGN §4.2 on pairs drawn from the batch's records, read at every target token each kind
    changes (pairs.TARGETS: the answer digit, and in a scratchpad the step digits).

    operator_flip pairs are made only when the batch mixes '+' and '-' (an 'addsub' model);
    otherwise its pair count is 0 and it has no sweep. Counts are keyed 'kind' for the answer
    target and 'kind@target' for scratchpad targets.
    """
    mixed = {"+", "-"} <= {r["op"] for r in batch.records}
    sweeps, attribution, counts, dropped = [], [], {}, {}
    for kind in cfg.pair_kinds:
        for target in targets_of(batch.records, kind):
            key = kind if target == "answer" else f"{kind}@{target}"
            pairs = make_pairs(batch.records, kind, cfg.n_pairs, seed, target) if kind != "operator_flip" or mixed else []
            counts[key], dropped[key] = len(pairs), 0
            if pairs:
                s, a, dropped[key] = patch_pairs(model, tokenizer, pairs, cfg, seed, memory_mb)
                sweeps += s
                attribution += a
    return PatchingFindings(sweeps=sweeps, attribution=attribution, pair_counts=counts, pair_dropped=dropped)


class ActivationPatcher:
    """Patching on problems given as text ('12 + 34'), in the model's own input format.

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None,
                 min_denominator: float = PatchingConfig.min_denominator):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.min_denominator = min_denominator

    def compute_patching_effect(self, clean_text: str, corrupted_text: str, target_token_pos: int) -> dict[int, float]:
        """Denoising recovery per layer: {layer: recovery} when the clean outputs of block l
        (attention and MLP, every position) are patched into the corrupted run.

        `target_token_pos` indexes the full input BOS + prompt + answer + EOS (negative counts
        from the end, so -2 is the last answer digit); it must hold a digit in both inputs, and
        LD compares the clean and corrupted digits there, at the position predicting it.
        """
        clean, corrupt = text_records([clean_text, corrupted_text], self.task)
        tokens = [self.tokenizer.encode(r["prompt"] + r["target"], bos=True, eos=True) for r in (clean, corrupt)]
        n = len(tokens[0])
        if template(clean) != template(corrupt):
            raise ReportgenError(
                f"{clean_text!r} and {corrupted_text!r} are laid out differently ({clean['prompt'] + clean['target']!r} "
                f"vs {corrupt['prompt'] + corrupt['target']!r}); patching needs a pair whose every position plays "
                "the same role (same digit counts, same answer length)"
            )
        t = target_token_pos + n if target_token_pos < 0 else target_token_pos
        digits = self.tokenizer.digit_ids
        if not 1 <= t < n or tokens[0][t] not in digits or tokens[1][t] not in digits:
            raise ReportgenError(
                f"target_token_pos {target_token_pos} must point at a digit of both inputs "
                f"(the input has {n} tokens including BOS and EOS)"
            )
        if tokens[0][t] == tokens[1][t]:
            raise ReportgenError(f"both inputs have the same digit at target_token_pos {target_token_pos}; nothing to recover")
        start, end = clean["answer_span"]
        column = clean["answer_columns"][t - 1 - start] if start <= t - 1 < end else None
        pair = MinimalPair("custom", clean, corrupt, column, t - 1, digits.index(tokens[0][t]), digits.index(tokens[1][t]))
        sites = ("attn_out", "mlp_out")
        run = PairRun(self.model, pair_batch([pair], self.tokenizer, self.model.device), sites, self.min_denominator)
        if run.n_kept == 0:
            raise ReportgenError(
                f"the model's logit difference barely changes between {clean_text!r} and {corrupted_text!r} "
                f"(below {self.min_denominator}); recovery is undefined for this pair"
            )
        return {l: float(run.whole(l, sites, "denoise")[0]) for l in range(self.model.cfg.n_layers)}

"""Logit lens (DESIGN §4.3): decode the residual stream after every layer through the final
LayerNorm and unembedding, restricted to the digits, at the answer-predicting positions.

logits_l = W_U · LN_final(x_l) + b_U, where `model.ln_final` recomputes its mean and variance on
x_l itself. Index 0 is the embedding (`blocks.0.hook_resid_pre`), index l+1 is
`blocks.{l}.hook_resid_post`; the last index therefore equals the model's own logits.

Convergence layer (per answer digit, DESIGN §4.3): the first lens index at which the final
model's top-1 digit is top-1, whether or not a later layer changes its mind before the last
one. Because the last index is the model itself, every answer digit converges somewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from reportgen.analysis import stats
from reportgen.analysis.api import task_of, text_batch
from reportgen.analysis.engine import answer_digits, digit_log_probs, gather_at, run_with_cache, target_digits
from reportgen.analysis.examples import ExampleBatch
from reportgen.findings import ExampleFindings, LogitLensFindings
from reportgen.data.arithmetic import STRATA, TARGET_ROLES
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.transformer import Transformer
from reportgen.plots import toolkit


def layer_labels(n_layers: int) -> list[str]:
    """'embed' for index 0, then 'L{l}' for the residual stream after block l."""
    return ["embed"] + [f"L{l}" for l in range(n_layers)]


def lens_log_probs(model: Transformer, tokenizer: Tokenizer, cache: dict, pos: torch.Tensor) -> torch.Tensor:
    """Digit log-probabilities of every lens index at positions `pos` [B, K]: [L+1, B, K, 10]."""
    resid = torch.stack([gather_at(cache[name], pos) for name in hp.stream(model.cfg.n_layers)])
    with torch.no_grad():
        return digit_log_probs(model.unembed(resid), tokenizer)


@dataclass
class LensArrays:
    """Per lens index, example and answer digit ([L+1, B, A]; masked slots are meaningless)."""

    prob: torch.Tensor  # probability of the correct digit among digits
    rank: torch.Tensor  # 0 = the correct digit is top-1 among digits
    entropy: torch.Tensor  # nats, over the digit distribution
    kl: torch.Tensor  # KL(final || layer), nats
    top: torch.Tensor  # top-1 digit
    convergence: torch.Tensor  # [B, A] first lens index at which the final top-1 digit is top-1
    mask: torch.Tensor  # [B, A]
    correct: torch.Tensor  # [B, A] the correct digits


def lens_arrays(logp: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> LensArrays:
    """Lens metrics from digit log-probs [L+1, B, A, 10] and the correct digits [B, A]."""
    idx = correct[None, :, :, None].expand(logp.shape[0], -1, -1, 1)
    lp_correct = logp.gather(-1, idx)
    p = logp.exp()
    final = logp[-1:]
    top = logp.argmax(-1)
    return LensArrays(
        prob=lp_correct.squeeze(-1).exp(),
        rank=(logp > lp_correct).sum(-1),
        entropy=-(p * logp).sum(-1),
        kl=(final.exp() * (final - logp)).sum(-1),
        top=top,
        convergence=(top == top[-1:]).int().argmax(0),  # argmax: the first of equal maxima
        mask=mask,
        correct=correct,
    )


def compute_lens(model: Transformer, tokenizer: Tokenizer, cache: dict, batch: ExampleBatch) -> LensArrays:
    """The lens at the positions predicting the final answer's digits."""
    logp = lens_log_probs(model, tokenizer, cache, batch.pred_pos)
    return lens_arrays(logp, answer_digits(batch, tokenizer), batch.answer_mask)


def target_lens(model: Transformer, tokenizer: Tokenizer, cache: dict, batch: ExampleBatch) -> LensArrays:
    """The lens at the positions predicting every target digit (scratchpad steps and answer)."""
    logp = lens_log_probs(model, tokenizer, cache, batch.target_pos)
    return lens_arrays(logp, target_digits(batch, tokenizer), batch.target_mask)


def by_role(arrays: LensArrays, batch: ExampleBatch, seed: int) -> tuple[dict, dict, dict]:
    """Per target role of a scratchpad model (data.TARGET_ROLES, besides the answer): P(correct)
    per lens index (estimates over examples), the convergence histogram, and the share of the
    role's most common correct digit (what always guessing that digit scores: carries are 0 or 1,
    so about 0.5 is no evidence)."""
    n_idx = arrays.prob.shape[0]
    labels = layer_labels(n_idx - 1)
    probs, hists, majority = {}, {}, {}
    for r, role in enumerate(TARGET_ROLES):
        mask = arrays.mask & (batch.target_roles == r)
        if role == "answer" or not mask.any():
            continue
        per = _per_example(arrays.prob, mask)
        keep = ~np.isnan(per[:, 0])
        probs[role] = [stats.estimate(per[keep, i], seed) for i in range(n_idx)]
        conv = arrays.convergence[mask].cpu().numpy()
        hists[role] = {label: int((conv == i).sum()) for i, label in enumerate(labels)}
        majority[role] = float(torch.bincount(arrays.correct[mask].flatten()).max()) / int(mask.sum())
    return probs, hists, majority


def _per_example(x: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """[L+1, B, A] -> [B, L+1] mean over each example's answer digits."""
    x = x.double().masked_fill(~mask[None], float("nan"))
    return torch.nanmean(x, dim=2).T.cpu().numpy()


def summarize(arrays: LensArrays, untrained: LensArrays, strata: list[str], seed: int,
              roles: tuple[dict, dict, dict] = ({}, {}, {})) -> LogitLensFindings:
    """LogitLensFindings: per-layer estimates over examples, convergence histogram, strata,
    P(correct) of the same lens on an untrained twin (the baseline that shows a layer's
    probability to be noise: about 0.1 for ten digits), and `roles` (by_role's output)."""
    n_idx = arrays.prob.shape[0]
    labels = layer_labels(n_idx - 1)
    per = {k: _per_example(getattr(arrays, k), arrays.mask) for k in ("prob", "rank", "entropy", "kl")}
    series = {k: [stats.estimate(v[:, i], seed) for i in range(n_idx)] for k, v in per.items()}
    conv = arrays.convergence[arrays.mask].cpu().numpy()
    hist = {label: int((conv == i).sum()) for i, label in enumerate(labels)}
    strata_arr = np.array(strata)
    by_stratum = {
        s: [stats.estimate(per["prob"][strata_arr == s, i], seed) for i in range(n_idx)]
        for s in STRATA if (strata_arr == s).any()
    }
    untrained_prob = _per_example(untrained.prob, untrained.mask)
    return LogitLensFindings(
        layer_labels=labels, prob_correct=series["prob"], rank_correct=series["rank"],
        entropy=series["entropy"], kl_to_final=series["kl"], convergence_hist=hist, by_stratum=by_stratum,
        untrained_prob_correct=[stats.estimate(untrained_prob[:, i], seed) for i in range(n_idx)],
        prob_by_role=roles[0], convergence_by_role=roles[1], majority_by_role=roles[2],
    )


def example_lens(arrays: LensArrays, i: int) -> dict:
    """ExampleFindings fields of example i: lens_prob/top/entropy [L+1, digits] and convergence."""
    n = int(arrays.mask[i].sum())
    return {
        "lens_prob": arrays.prob[:, i, :n].cpu().numpy(),
        "lens_top": arrays.top[:, i, :n].cpu().numpy(),
        "lens_entropy": arrays.entropy[:, i, :n].cpu().numpy(),
        "convergence": [int(c) for c in arrays.convergence[i, :n]],
    }


# ---------------------------------------------------------------- per-example files (from findings)
def _answer_labels(ex: ExampleFindings) -> list[str]:
    return [f"'{ex.tokens[q + 1]}' @{q}" for q in ex.answer_positions]


def plot_evolution(ex: ExampleFindings, save_path=None) -> None:
    """Probability of the correct digit at each lens index, one line per answer digit."""
    toolkit.lens_evolution(ex.lens_prob, layer_labels(ex.lens_prob.shape[0] - 1), _answer_labels(ex),
                           f"Logit lens: {ex.prompt}{ex.target}", save_path)


def plot_predictions(ex: ExampleFindings, save_path=None) -> None:
    """Heatmap of P(correct digit) per lens index and answer digit, annotated with the top-1 digit."""
    toolkit.lens_predictions(ex.lens_prob, ex.lens_top, layer_labels(ex.lens_prob.shape[0] - 1), _answer_labels(ex),
                             save_path)


def write_entropy_json(path, ex: ExampleFindings) -> None:
    """`example_{i}_entropy.json`: per lens index and answer digit entropy, P(correct), top-1, convergence."""
    data = {
        "prompt": ex.prompt,
        "target": ex.target,
        "layer_labels": layer_labels(ex.lens_prob.shape[0] - 1),
        "answer_positions": ex.answer_positions,
        "entropy_nats": ex.lens_entropy.T.tolist(),
        "prob_correct": ex.lens_prob.T.tolist(),
        "top_digit": ex.lens_top.T.astype(int).tolist(),
        "convergence": ex.convergence,
        "convergence_definition": "first lens index at which the final top-1 digit is top-1",
    }
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class LogitLens:
    """Logit lens on problems given as text ('12 + 34').

    Positions are indices into the answer-predicting positions in written order (Python style:
    -1 is the position predicting the last written answer digit), on the model's own
    teacher-forced input. `task` is the checkpoint's data spec; without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)

    def _lens(self, text: str, position: int) -> tuple[torch.Tensor, int, int]:
        """Digit log-probs [L+1, 10] at one answer position, its token index and its correct digit."""
        batch = text_batch(self.model, self.tokenizer, [text], self.task)
        hooks = set(hp.stream(self.model.cfg.n_layers))
        _, cache = run_with_cache(self.model, batch, names=hooks.__contains__)
        n = int(batch.answer_mask[0].sum())
        if not -n <= position < n:
            raise ReportgenError(f"position {position} is out of range: {text!r} has {n} answer digits")
        j = position % n
        logp = lens_log_probs(self.model, self.tokenizer, cache, batch.pred_pos)[:, 0, j]
        return logp, int(batch.pred_pos[0, j]), int(answer_digits(batch, self.tokenizer)[0, j])

    def visualize_prediction_evolution(self, text: str, position: int = -1, save_path=None) -> dict:
        """Plot the digit distribution at every lens index for one answer position.

        Returns {"layer_labels", "token_index", "correct_digit", "probs" [L+1][10]}.
        """
        logp, q, correct = self._lens(text, position)
        probs = logp.exp().cpu().numpy()
        labels = layer_labels(self.model.cfg.n_layers)
        toolkit.digit_distribution(probs, labels, correct, f"{text}: prediction at token {q}", save_path)
        return {"layer_labels": labels, "token_index": q, "correct_digit": correct, "probs": probs.tolist()}

    def analyze_convergence(self, text: str, target_token_pos: int = -1, target_token: Optional[str] = None) -> dict:
        """At which layer is `target_token` (default: the correct digit) first top-1 among digits?

        Returns per lens index its probability, rank and the top-1 digit, and "convergence_layer":
        the first lens index at which the target is top-1 (None if it is top-1 at none; "top"
        shows whether it stays so).
        """
        if target_token is not None and (len(str(target_token)) != 1 or not str(target_token).isdigit()):
            raise ReportgenError(f"target_token must be one digit '0'..'9', got {target_token!r}")
        logp, q, correct = self._lens(text, target_token_pos)
        target = correct if target_token is None else int(target_token)
        top = logp.argmax(-1)
        hits = (top == target).nonzero()
        first = int(hits[0]) if len(hits) else None
        labels = layer_labels(self.model.cfg.n_layers)
        return {
            "layer_labels": labels,
            "token_index": q,
            "target": target,
            "prob": logp[:, target].exp().tolist(),
            "rank": (logp > logp[:, target : target + 1]).sum(-1).tolist(),
            "top": top.tolist(),
            "convergence_layer": first,
            "convergence_label": "never" if first is None else labels[first],
        }

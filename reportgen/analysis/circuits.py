"""Circuit discovery (DESIGN §4.4): correlational candidates, each confirmed or rejected causally.

* Carry heads: candidates are heads whose "carry_source" role score (attention from the position
  predicting column n to the operand digits of column n-1) beats the same head of the untrained
  twin by `role_margin`. A candidate is ablated (mean or resample); per answer column n >= 1 we
  compare the drop in digit accuracy (teacher forced, argmax over digits) on answer digits that
  receive a carry (borrow) with the drop on those that do not. Confirmed only if, at some column,
  the difference is at least `carry_threshold` and its bootstrap interval (examples resampled
  within each group, Bonferroni over all head-column tests) excludes 0. The column reported is the
  one with the largest difference.
* Operator heads: candidates by the "operator" role score the same way. In a model trained on
  '+' and '-' together, a candidate is confirmed if patching its output (hook_z, every position)
  from the clean run into the operator-flipped run recovers the logit difference: the lower
  bound of the recovery interval must exceed `operator_min_recovery`. For a model trained on one
  operator the test does not apply and says so.
* Position and delimiter heads: attention.head_tests (attention only, against the untrained twins,
  with NullChecks of both tests run unchanged on each twin).
* Carry neurons (blocks.l.mlp.hook_post at the answer-predicting positions of columns
  1 <= n < longest operand, where a carry can go either way): AUROC for carry-in per neuron.
  The null shuffles the labels within each answer column (so column identity alone cannot make
  a neuron look selective); p-values use the exact mean and variance of that permutation
  distribution with a normal tail, and Benjamini-Hochberg controls the false discovery rate
  across all neurons. The selected set is confirmed if ablating it lowers accuracy on carry
  digits more than ablating random sets of the same size in the same layers (one-sided
  empirical p <= 0.05). Random sets avoid the selected neurons except in a layer where more
  than half are selected (neuron_test["random_sets_disjoint"] says which).

CircuitComponent fields per kind (score / null / causal_effect / control_effect):
carry_head: carry_source role score / the untrained head's / accuracy drop on carry digits at
its column / drop on carry-free digits there. operator_head: operator role score / untrained /
mean operator-flip recovery / mean recovery of the other heads. position_head and
delimiter_head: fixed-position attention mass / the untrained twins' / - / -. neuron: AUROC /
mean AUROC under shuffled labels / accuracy drop on carry digits when the selected set is
ablated / mean drop of the random sets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from scipy.stats import norm, rankdata

from reportgen.analysis import stats
from reportgen.analysis.api import task_of, text_batch, text_records
from reportgen.analysis.attention import head_tests
from reportgen.analysis.examples import ExampleBatch, build_batch, distinct
from reportgen.analysis.findings import AttentionFindings, CircuitComponent, CircuitFindings
from reportgen.analysis.interventions import Ablator, head_spec
from reportgen.analysis.pairs import make_pairs
from reportgen.analysis.patching import PairRun, pair_batch
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.transformer import Transformer

ALPHA = 0.05


@dataclass
class CircuitConfig:
    method: Literal["mean", "resample"] = "mean"  # ablation used by the causal tests
    role_margin: float = 0.05  # candidate: role score minus the untrained head's >= this
    max_candidates: int = 4  # per role, best margins first
    carry_threshold: float = 0.1  # accuracy-drop difference (carry minus no carry) a carry head needs
    min_group: int = 5  # answer digits needed on each side (carry / no carry) to test a column
    operator_pairs: int = 64
    operator_min_recovery: float = 0.1  # lower bound of the operator-flip recovery interval
    min_denominator: float = 0.5  # operator-flip pairs with a smaller |LD_clean - LD_corrupt| are dropped
    position_min_mass: float = 0.5  # fixed-position attention mass a position or delimiter head needs
    position_margin: float = 0.2  # lower bound of that mass minus the untrained twins' a confirmed head needs
    neuron_min_selectivity: float = 0.1  # |AUROC - 0.5| a selected neuron needs besides significance
    fdr: float = 0.05  # Benjamini-Hochberg false discovery rate across neurons
    neuron_permutations: int = 200  # label shuffles for the reported null AUROC
    neuron_random_sets: int = 39  # random neuron sets the selected set is compared with
    max_listed_neurons: int = 20  # selected neurons listed as components (most selective first)
    reference_size: int = 32  # reference examples per template for mean/resample ablation
    max_rows: int = 512

    def __post_init__(self):
        if not 0 < self.fdr < 1:
            raise ReportgenError(f"circuits fdr must be between 0 and 1, got {self.fdr}")
        for name in ("min_group", "reference_size", "max_rows", "neuron_random_sets", "neuron_permutations"):
            if getattr(self, name) < 1:
                raise ReportgenError(f"circuits {name} must be >= 1, got {getattr(self, name)}")
        if 1 / (self.neuron_random_sets + 1) > ALPHA:  # the smallest p-value the comparison can give
            raise ReportgenError(f"circuits neuron_random_sets must be >= {round(1 / ALPHA) - 1} so that a neuron set "
                                 f"can be confirmed at p <= {ALPHA}, got {self.neuron_random_sets}")


# ---------------------------------------------------------------- helpers
def carry_in(batch: ExampleBatch) -> torch.Tensor:
    """Carry (borrow) into the column of each answer digit [B, A]; 0 where masked."""
    out = torch.zeros_like(batch.columns)
    for i, r in enumerate(batch.records):
        cols = r["labels"]["columns"]
        for j, n in enumerate(r["answer_columns"]):
            out[i, j] = cols[n]["carry_in"]
    return out


def diff_interval(x1: np.ndarray, x0: np.ndarray, seed: int, alpha: float) -> tuple[float, float, float]:
    """mean(x1) - mean(x0) and its (1 - alpha) percentile-bootstrap interval, each group
    resampled separately (they hold different examples)."""
    rng, n_boot = np.random.default_rng(seed), stats.resamples(alpha)
    b1 = x1[rng.integers(0, len(x1), (n_boot, len(x1)))].mean(1)
    b0 = x0[rng.integers(0, len(x0), (n_boot, len(x0)))].mean(1)
    lo, hi = np.percentile(b1 - b0, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(x1.mean() - x0.mean()), float(lo), float(hi)


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Rejections (bool per hypothesis) controlling the false discovery rate at q."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    below = np.nonzero(p[order] <= q * np.arange(1, m + 1) / m)[0]
    out = np.zeros(m, dtype=bool)
    if below.size:
        out[order[: below[-1] + 1]] = True
    return out


def auroc_test(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_perm: int, seed: int):
    """(AUROC [N], two-sided p [N], mean null AUROC [N]) of features x [S, N] for labels y [S].

    The null permutes y within each group; p uses that distribution's exact mean and variance of
    the rank sum with a normal tail, the null mean is estimated from n_perm shuffles.
    """
    R = rankdata(x, axis=0)
    y = y.astype(bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    shift = n1 * (n1 + 1) / 2
    T = R[y].sum(0)
    mean_T, var_T = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    for g in np.unique(groups):
        sel = groups == g
        n_g, k = int(sel.sum()), int(y[sel].sum())
        Rg = R[sel]
        mean_T += k * Rg.mean(0)
        if n_g > 1:
            var_T += k * (n_g - k) / (n_g * (n_g - 1)) * ((Rg - Rg.mean(0)) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(var_T > 0, (T - mean_T) / np.sqrt(var_T), 0.0)
    rng = np.random.default_rng(seed)
    perms = np.empty((n_perm, len(y)))
    for i in range(n_perm):
        yp = y.copy()
        for g in np.unique(groups):
            idx = np.nonzero(groups == g)[0]
            yp[idx] = rng.permutation(y[idx])
        perms[i] = yp
    null = ((perms @ R - shift) / (n1 * n0)).mean(0)
    return (T - shift) / (n1 * n0), 2 * norm.sf(np.abs(z)), null


def _candidates(attention: Optional[AttentionFindings], role: str, cfg: CircuitConfig):
    """(layer, head, score, untrained score) of the heads whose role score beats their untrained twin."""
    if attention is None:
        return []
    rows = [(s.layer, s.head, s.score.mean, s.untrained.mean) for s in attention.role_scores
            if s.role == role and s.score.mean - s.untrained.mean >= cfg.role_margin]
    rows.sort(key=lambda r: (-(r[2] - r[3]), r[0], r[1]))
    return rows[: cfg.max_candidates]


def specialization(attention: Optional[AttentionFindings], n_layers: int, n_heads: int) -> tuple[np.ndarray, list[str]]:
    """Role scores as [layers, heads, roles] (NaN where a head was not scored) and the role names."""
    if attention is None:
        return np.zeros((n_layers, n_heads, 0)), []
    roles = list(dict.fromkeys(s.role for s in attention.role_scores))
    out = np.full((n_layers, n_heads, len(roles)), np.nan)
    for s in attention.role_scores:
        out[s.layer, s.head, roles.index(s.role)] = s.score.mean
    return out, roles


# ---------------------------------------------------------------- carry heads
def carry_head_tests(ab: Ablator, heads: list[tuple[int, int]], cfg: CircuitConfig, seed: int) -> list[dict]:
    """Per head: the carry-vs-no-carry accuracy drop under ablation at its best column: the
    passing column with the largest difference if any column passes (every head-column test is
    Bonferroni-corrected), else the column with the largest difference."""
    batch = ab.batch
    mask, cols, carry = ab.mask, batch.columns, carry_in(batch)
    right_clean = ((ab.clean_logprobs.argmax(-1) == ab.digits) & mask).double()
    testable = []
    for n in sorted(set(cols[mask].tolist())):
        at = mask & (cols == n)
        if n >= 1 and int((at & (carry > 0)).sum()) >= cfg.min_group and int((at & (carry == 0)).sum()) >= cfg.min_group:
            testable.append(n)
    if not heads:
        return []
    lps = ab.ablated([head_spec(l, h) for l, h in heads], cfg.method)
    drops = (right_clean - ((lps.argmax(-1) == ab.digits) & mask).double()).cpu().numpy()
    c = (carry > 0).cpu().numpy()
    at = {n: (mask & (cols == n)).cpu().numpy() for n in testable}
    alpha = ALPHA / max(1, len(heads) * len(testable))
    out = []
    for (l, h), drop in zip(heads, drops):
        best = None
        for n in testable:
            x1, x0 = drop[at[n] & c], drop[at[n] & ~c]
            diff, lo, hi = diff_interval(x1, x0, seed, alpha)
            row = {"layer": l, "head": h, "column": n, "effect_carry": float(x1.mean()),
                   "effect_no_carry": float(x0.mean()), "difference": diff, "ci": [lo, hi],
                   "n_carry": int(x1.size), "n_no_carry": int(x0.size), "tests": len(heads) * len(testable)}
            row["confirmed"] = diff >= cfg.carry_threshold and lo > 0
            if best is None or (row["confirmed"], diff) > (best["confirmed"], best["difference"]):
                best = row
        out.append(best or {"layer": l, "head": h, "column": None, "effect_carry": None, "effect_no_carry": None,
                            "difference": None, "ci": None, "confirmed": False, "tests": 0})
    return out


def _carry_note(t: dict, method: str) -> str:
    if t["column"] is None:
        return "not testable: too few answer digits with and without a carry at any column"
    lo, hi = t["ci"]
    return (f"{method} ablation, column {t['column']}: accuracy drop {t['effect_carry']:.3f} with carry "
            f"(n={t['n_carry']}) vs {t['effect_no_carry']:.3f} without (n={t['n_no_carry']}); difference "
            f"{t['difference']:.3f}, interval [{lo:.3f}, {hi:.3f}] (Bonferroni over {t['tests']} head-column tests)")


# ---------------------------------------------------------------- operator heads
def operator_recovery(model: Transformer, tokenizer: Tokenizer, records: list[dict], cfg: CircuitConfig,
                      seed: int) -> tuple[Optional[np.ndarray], int, int]:
    """(per-pair denoising recovery [pairs, layers, heads] of each head's output, or None;
    pairs made; pairs dropped) for operator-flip pairs of the records."""
    pairs = make_pairs(records, "operator_flip", cfg.operator_pairs, seed)
    if not pairs:
        return None, 0, 0
    run = PairRun(model, pair_batch(pairs, tokenizer, model.device), ("head",), cfg.min_denominator, cfg.max_rows)
    if run.n_kept == 0:
        return None, len(pairs), run.n_dropped
    return run.sweep("head", "denoise").cpu().numpy().astype(np.float64), len(pairs), run.n_dropped


def _operator_components(model, tokenizer, batch, attention, cfg, seed) -> list[CircuitComponent]:
    cands = _candidates(attention, "operator", cfg)
    if not cands:
        return []
    if not {"+", "-"} <= {r["op"] for r in batch.records}:
        return [CircuitComponent("operator_head", l, h, None, score, null, None, None, False,
                                 "not applicable: model trained on one operator") for l, h, score, null in cands]
    rec, made, dropped = operator_recovery(model, tokenizer, batch.records, cfg, seed)
    if rec is None:
        return [CircuitComponent("operator_head", l, h, None, score, null, None, None, False,
                                 f"untested: no usable operator-flip pairs ({made} made, {dropped} dropped)")
                for l, h, score, null in cands]
    chosen = {(l, h) for l, h, _, _ in cands}
    others = [rec[:, l, h].mean() for l in range(rec.shape[1]) for h in range(rec.shape[2]) if (l, h) not in chosen]
    control = float(np.mean(others)) if others else None
    out = []
    for l, h, score, null in cands:
        est = stats.estimate(rec[:, l, h], seed, alpha=ALPHA / len(cands))
        note = (f"operator-flip recovery {est.mean:.3f} [{est.lo:.3f}, {est.hi:.3f}] over {est.n} pairs "
                f"({dropped} dropped; interval Bonferroni-corrected over {len(cands)} candidate heads); "
                f"control = mean recovery of the other heads")
        out.append(CircuitComponent("operator_head", l, h, None, score, null, est.mean, control,
                                    est.lo > cfg.operator_min_recovery, note))
    return out


# ---------------------------------------------------------------- neurons
def neuron_rows(batch: ExampleBatch) -> torch.Tensor:
    """Answer digits [B, A] whose carry-in can go either way: columns 1 <= n < longest operand."""
    longest = torch.tensor([max(r["labels"]["len_a"], r["labels"]["len_b"]) for r in batch.records],
                           device=batch.columns.device)
    return batch.answer_mask & (batch.columns >= 1) & (batch.columns < longest[:, None])


def neuron_activations(cache: dict, batch: ExampleBatch, rows: torch.Tensor, n_layers: int) -> np.ndarray:
    """MLP hidden activations at the selected answer-predicting positions: [digits, layers * d_mlp]."""
    B = batch.tokens.shape[0]
    acts = []
    for l in range(n_layers):
        post = cache[f"blocks.{l}.mlp.hook_post"]
        acts.append(post[torch.arange(B, device=post.device)[:, None], batch.pred_pos][rows])
    return torch.cat(acts, -1).double().cpu().numpy()


def _neuron_components(ab: Ablator, cache, n_layers: int, cfg: CircuitConfig, seed: int):
    batch = ab.batch
    rows = neuron_rows(batch)
    carry = carry_in(batch) > 0
    y = carry[rows].cpu().numpy()
    if y.sum() < cfg.min_group or (~y).sum() < cfg.min_group:
        return [], {"note": "not tested: too few answer digits with and without a carry"}
    x = neuron_activations(cache, batch, rows, n_layers)
    d_mlp = x.shape[1] // n_layers
    auroc, p, null = auroc_test(x, y, batch.columns[rows].cpu().numpy(), cfg.neuron_permutations, seed)
    selected = benjamini_hochberg(p, cfg.fdr) & (np.abs(auroc - 0.5) >= cfg.neuron_min_selectivity)
    test = {
        "label": "carry into the answer column (columns 1 <= n < longest operand)",
        "statistic": "AUROC", "null": "labels shuffled within answer column",
        "p_values": "exact permutation mean and variance, normal tail, two-sided",
        "multiple_comparisons": "Benjamini-Hochberg", "fdr": cfg.fdr,
        "n_tested": int(x.shape[1]), "n_digits": int(len(y)), "n_selected": int(selected.sum()),
        "method": cfg.method,
    }
    idx = np.nonzero(selected)[0]
    if idx.size == 0:
        return [], test
    drop, rand, disjoint = _set_ablation(ab, idx, d_mlp, rows & carry, cfg, seed)
    p_emp = (1 + int((rand >= drop).sum())) / (len(rand) + 1)
    confirmed = bool(drop > 0 and p_emp <= ALPHA)
    test.update({"selected_drop": drop, "random_drop_mean": float(rand.mean()),
                 "random_drop_q95": float(np.quantile(rand, 0.95)), "n_random_sets": len(rand), "random_sets_disjoint": disjoint,
                 "p_value": p_emp, "confirmed": confirmed})
    listed = idx[np.argsort(-np.abs(auroc[idx] - 0.5), kind="stable")][: cfg.max_listed_neurons]
    comps = [CircuitComponent("neuron", int(i // d_mlp), int(i % d_mlp), None, float(auroc[i]), float(null[i]),
                              drop, float(rand.mean()), confirmed,
                              f"p = {p[i]:.2g} (BH at {cfg.fdr}); effects are of the whole selected set of {idx.size}")
             for i in listed]
    return comps, test


def _set_ablation(ab: Ablator, idx: np.ndarray, d_mlp: int, digits: torch.Tensor, cfg: CircuitConfig, seed: int):
    """Accuracy drop on `digits` when the neurons idx (flat layer*d_mlp+i) are ablated, the drops
    of random sets with as many neurons in each layer, and whether those sets avoid the selected
    neurons (impossible in a layer where more than half of them are selected)."""
    rng = np.random.default_rng(seed)

    def spec(flat) -> dict:
        out: dict[str, list[int]] = {}
        for i in sorted(int(v) for v in flat):
            out.setdefault(f"blocks.{i // d_mlp}.mlp.hook_post", []).append(i % d_mlp)
        return out

    layers = [(np.arange(l * d_mlp, (l + 1) * d_mlp), int((idx // d_mlp == l).sum())) for l in np.unique(idx // d_mlp)]
    pools = [(np.setdiff1d(layer, idx), k) if len(layer) - k >= k else (layer, k) for layer, k in layers]
    sets = [idx] + [np.concatenate([rng.choice(pool, size=k, replace=False) for pool, k in pools])
                    for _ in range(cfg.neuron_random_sets)]
    lps = ab.ablated([spec(s) for s in sets], cfg.method)
    clean = ((ab.clean_logprobs.argmax(-1) == ab.digits) & digits).double().sum() / digits.sum()
    acc = ((lps.argmax(-1) == ab.digits) & digits).double().sum((1, 2)) / digits.sum()
    drops = (clean - acc).cpu().numpy()
    disjoint = all(len(pool) < len(layer) for (pool, _), (layer, _) in zip(pools, layers))
    return float(drops[0]), drops[1:], disjoint


# ---------------------------------------------------------------- entry point
def run_circuits(model: Transformer, tokenizer: Tokenizer, batch: ExampleBatch, cache: dict,
                 attention: Optional[AttentionFindings], twin_caches: Sequence[dict],
                 cfg: CircuitConfig, seed: int) -> CircuitFindings:
    """DESIGN §4.4 on the batch; `cache` is the clean run's activation cache of the same batch,
    `twin_caches` those of the untrained twins (position and delimiter heads need two or more)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ab = Ablator(model, tokenizer, batch, seed, cfg.reference_size, cfg.max_rows)
    components = []
    carry = _candidates(attention, "carry_source", cfg)
    for (l, h, score, null), t in zip(carry, carry_head_tests(ab, [(l, h) for l, h, _, _ in carry], cfg, seed)):
        components.append(CircuitComponent("carry_head", l, h, t["column"], score, null, t["effect_carry"],
                                           t["effect_no_carry"], t["confirmed"], _carry_note(t, cfg.method)))
    components += _operator_components(model, tokenizer, batch, attention, cfg, seed)
    null_checks = []
    if len(twin_caches) >= 2:
        heads, null_checks = head_tests(batch, cache, twin_caches, L, seed, cfg.position_min_mass, cfg.position_margin)
        components += heads
    neurons, neuron_test = _neuron_components(ab, cache, L, cfg, seed)
    components += neurons
    spec, roles = specialization(attention, L, H)
    return CircuitFindings(components=components, head_specialization=spec, roles=roles, neuron_test=neuron_test,
                           null_checks=null_checks)


class CircuitDiscovery:
    """Carry and operator heads of a model on problems given as text ('59 + 73').

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None,
                 config: Optional[CircuitConfig] = None, seed: int = 0):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.cfg, self.seed = config or CircuitConfig(), seed

    def find_carry_detection_heads(self, examples) -> list[dict]:
        """Every head's causal carry test (see the module docstring), best difference first.

        `examples` are texts ('59 + 73') or (text, carry positions) tuples as in the original
        toolkit; carries always come from the ground truth, so the positions are not needed.
        """
        texts = [e[0] if isinstance(e, (tuple, list)) else e for e in examples]
        ab = Ablator(self.model, self.tokenizer, text_batch(self.model, self.tokenizer, texts, self.task),
                     self.seed, self.cfg.reference_size, self.cfg.max_rows)
        heads = [(l, h) for l in range(self.model.cfg.n_layers) for h in range(self.model.cfg.n_heads)]
        out = carry_head_tests(ab, heads, self.cfg, self.seed)
        for t in out:
            t["note"] = _carry_note(t, self.cfg.method)
        return sorted(out, key=lambda t: -(t["difference"] if t["difference"] is not None else -np.inf))

    def find_operator_attention_heads(self, examples: list[str], operators: list[str]) -> list[dict]:
        """Per head: mean attention from the answer-predicting positions to the operator token,
        for examples of each operator, and (when the examples mix '+' and '-') the operator-flip
        recovery of patching the head's output. Most operator-attending heads first."""
        records = distinct(text_records(examples, self.task))
        batch = build_batch(records, self.tokenizer, self.model.cfg.n_ctx, device=self.model.device)
        L, H = self.model.cfg.n_layers, self.model.cfg.n_heads
        with torch.no_grad():
            _, cache = self.model.run_with_cache(batch.tokens, names=lambda n: n.endswith("attn.hook_pattern"))
        op_pos = torch.tensor([r["prompt"].index(r["op"]) + 1 for r in records], device=batch.tokens.device)
        B = len(records)
        mass = torch.stack([
            cache[f"blocks.{l}.attn.hook_pattern"][torch.arange(B)[:, None], :, batch.pred_pos, op_pos[:, None]]
            for l in range(L)])  # [L, B, A, H]
        m = batch.answer_mask[None, :, :, None]
        per_example = ((mass * m).sum(2) / m.sum(2)).cpu().numpy()  # [L, B, H]
        ops = np.array([r["op"] for r in records])
        rec = None
        if {"+", "-"} <= set(ops):
            rec = operator_recovery(self.model, self.tokenizer, records, self.cfg, self.seed)[0]
        out = []
        for l in range(L):
            for h in range(H):
                att = {op: float(per_example[l, ops == op, h].mean()) for op in operators if (ops == op).any()}
                out.append({"layer": l, "head": h, "operator_attention": att,
                            "operator_flip_recovery": None if rec is None else float(rec[:, l, h].mean())})
        return sorted(out, key=lambda d: -max(d["operator_attention"].values(), default=0.0))

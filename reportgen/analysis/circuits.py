"""Circuit discovery (DESIGN §4.4): components confirmed causally and specifically, each test run
unchanged on untrained twins of the model (its null).

Every causal test here patches one component's output (a head's `hook_z`, a neuron's
`mlp.hook_post`, at every position) from the clean run into the corrupt run of minimal pairs
(pairs.py) and measures how much of the logit difference at the pair's target token comes back:
the pooled recovery  sum_i s_i (LD_patched,i - LD_corrupt,i) / sum_i |LD_clean,i - LD_corrupt,i|
with s_i the sign of pair i's denominator, i.e. per-pair recoveries weighted by how much each
pair's logit difference moves. Untrained twins move logits by hundredths, so per-pair ratios are
dominated by noise there; pooling keeps the statistic defined and comparable on both. Noising
damage (corrupt into clean) is reported beside it. Intervals are percentile bootstraps over pairs.

* Carry heads. Pairs: carry-flip pairs aimed at answer column n (column n-1 changed so the carry
  into column n flips) read at each target token the flip changes: the answer digit of column n,
  and in a scratchpad also step n's sum digit and written carry_in and step n-1's carry_out; the
  control is sum-flip pairs aimed at the same column (a column-n digit changed, no carry changes)
  read at the same kind of token. A head is a carry head for column n at a target when
  (a) its recovery on carry-flip pairs is at least `min_recovery`,
  (b) it exceeds its recovery on sum-flip pairs (where the target has them), and
  (c) it exceeds the largest recovery of any head of its layer in the untrained twins (paired:
  same pairs), and
  (d) its recovery exceeds what an untrained head of its layer reaches: the upper prediction
  bound mean + t(m-1) sd sqrt(1 + 1/m) of the m same-layer heads of the twins. Untrained heads
  are heavy-tailed (one that happens to attend to the edited digit recovers up to ~0.9), so (c)
  alone, which resamples pairs but not models, confirmed something on 28 of 224 untrained
  models of the add3_steps config (12.5%); (d) adds the spread between heads and models.
  (b), (c) and (d) each by a one-sided bootstrap lower bound at 5% family-wise, Bonferroni over
  every (head, column, target) test of the model (the t quantile at the same level).
* Operator heads (models trained on '+' and '-'): the same with operator-flip pairs ('+' <-> '-',
  same operands), (a), (c) and (d).
* Position and delimiter heads: attention.head_tests (attention mass at a fixed position, against
  the untrained twins, with the NullChecks of both tests run unchanged on each twin).
* Carry neurons. Correlational candidates first: per neuron of `blocks.l.mlp.hook_post` at the
  positions predicting the carry target (the answer digit; in a scratchpad the carry_out token,
  where the carry is written) of columns 1 <= n < longest operand, AUROC for the carry into
  column n with a within-column permutation null and Benjamini-Hochberg control. Candidates are
  listed as correlational; each is then confirmed alone by carry-flip patching of that neuron:
  (a) recovery at least `neuron_min_recovery`, (b) above its sum-flip recovery where the target
  has sum-flip pairs, and (c) its Bonferroni lower bound above the largest recovery of
  `null_neurons` random neurons of the same layer patched the same way. A neuron that merely
  varies with operand digits but does not move the output recovers nothing and cannot pass.
* Nulls. Each test runs unchanged with each untrained twin as the subject (the other twins as its
  reference for (c); a twin's own random neurons for neurons): NullCheck records what it
  confirmed on the model and on each twin; stats.null_passed calls a test broken when the twins
  confirm more than its 5% family-wise error rate allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from scipy.stats import norm, rankdata, t as student_t

from reportgen.analysis import stats
from reportgen.analysis.api import task_of, text_records
from reportgen.analysis.attention import head_tests
from reportgen.analysis.config import DEFAULT_MEMORY_MB, UNTRAINED_TWINS, CircuitConfig
from reportgen.analysis.engine import at_targets, untrained_twins
from reportgen.analysis.examples import ExampleBatch, build_batch, distinct
from reportgen.findings import (
    AttentionFindings, CircuitComponent, CircuitFindings, ComponentRecovery, Estimate, NullCheck,
)
from reportgen.analysis.pairs import TARGETS, make_pairs, targets_of
from reportgen.analysis.patching import PairBatch, PairRun, pair_batch
from reportgen.data.arithmetic import TARGET_ROLES
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.model.transformer import Transformer

ALPHA = 0.05  # family-wise error rate of every confirming test, per model


# ---------------------------------------------------------------- helpers
def carry_in(batch: ExampleBatch) -> torch.Tensor:
    """Carry (borrow) into the column of each answer digit [B, A]; 0 where masked."""
    out = torch.zeros_like(batch.columns)
    for i, r in enumerate(batch.records):
        cols = r["labels"]["columns"]
        for j, n in enumerate(r["answer_columns"]):
            out[i, j] = cols[n]["carry_in"]
    return out


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Rejections (bool per hypothesis) controlling the false discovery rate at q: the hypotheses
    whose Benjamini-Hochberg adjusted p-value is at most q."""
    from scipy.stats import false_discovery_control

    return false_discovery_control(p, method="bh") <= q


def auroc_test(x: np.ndarray, y: np.ndarray, groups: np.ndarray, n_perm: int, seed: int, chunk: int = 1024):
    """(AUROC [N], two-sided p [N], mean null AUROC [N]) of features x [S, N] for labels y [S].

    The null permutes y within each group; p uses that distribution's exact mean and variance of
    the rank sum with a normal tail, the null mean is estimated from n_perm shuffles (the same
    for every feature). Features are ranked `chunk` at a time: the ranks take float64 copies.
    """
    y = y.astype(bool)
    rng = np.random.default_rng(seed)
    perms = np.empty((n_perm, len(y)))
    for i in range(n_perm):
        yp = y.copy()
        for g in np.unique(groups):
            idx = np.nonzero(groups == g)[0]
            yp[idx] = rng.permutation(y[idx])
        perms[i] = yp
    parts = [_auroc_columns(x[:, i:i + chunk], y, groups, perms) for i in range(0, x.shape[1], chunk)]
    return tuple(np.concatenate(p) for p in zip(*parts))


def _auroc_columns(x: np.ndarray, y: np.ndarray, groups: np.ndarray, perms: np.ndarray):
    """`auroc_test` of some features, with the label permutations drawn."""
    R = rankdata(x, axis=0)
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
    null = ((perms @ R - shift) / (n1 * n0)).mean(0)
    return (T - shift) / (n1 * n0), 2 * norm.sf(np.abs(z)), null


def specialization(attention: Optional[AttentionFindings], n_layers: int, n_heads: int) -> tuple[np.ndarray, list[str]]:
    """Role scores as [layers, heads, roles] (NaN where a head was not scored) and the role names."""
    if attention is None:
        return np.zeros((n_layers, n_heads, 0)), []
    roles = list(dict.fromkeys(s.role for s in attention.role_scores))
    out = np.full((n_layers, n_heads, len(roles)), np.nan)
    for s in attention.role_scores:
        out[s.layer, s.head, roles.index(s.role)] = s.score.mean
    return out, roles


# ---------------------------------------------------------------- pooled patching effects
@dataclass
class Effects:
    """Per-pair patching effects of C components on one model: recovery (denoise) or damage
    (noise) ratios and each pair's weight |LD_clean - LD_corrupt|."""

    ratio: np.ndarray  # [N, C]; 0 where the pair's weight is 0
    weight: np.ndarray  # [N]

    def weighted(self) -> np.ndarray:
        return self.ratio * self.weight[:, None]


def head_effects(model: Transformer, pb: PairBatch, directions: tuple[str, ...], max_rows: int,
                 memory_mb: float = DEFAULT_MEMORY_MB) -> dict[str, Effects]:
    """Effects per direction of patching every head (components ordered layer-major) on every pair."""
    run = PairRun(model, pb, ("head",), 0.0, max_rows, memory_mb)
    weight = (run.ld_clean - run.ld_corrupt).abs()
    return {d: effects(run.sweep("head", d).flatten(1), weight) for d in directions}


def effects(ratio: torch.Tensor, weight: torch.Tensor) -> Effects:
    """Effects of ratios [N, C] (undefined ones and those of weightless pairs set to 0)."""
    ratio = torch.nan_to_num(ratio, nan=0.0, posinf=0.0, neginf=0.0) * (weight > 0)[:, None]
    return Effects(ratio.double().cpu().numpy(), weight.double().cpu().numpy())


def neuron_effects(run: PairRun, direction: str, neurons: dict[int, np.ndarray], pairs: np.ndarray) -> Effects:
    """Effects of patching each of `neurons` (per layer; columns in that order) alone, on the
    pairs `pairs` only (rows in that order): the tests read no other pair."""
    rows = torch.as_tensor(pairs, device=run.ld_clean.device)
    weight = (run.ld_clean - run.ld_corrupt).abs()[rows]
    ratio = []
    for layer, idx in neurons.items():
        index = torch.as_tensor(idx, device=rows.device)
        each = rows.repeat_interleave(len(index))  # every pair with each neuron patched alone
        ld = run.patched_ld("neuron", layer, direction, each, index.repeat(len(rows)))
        ratio.append(run.effect(ld, each, direction).view(len(rows), len(index)))
    return effects(torch.cat(ratio, 1), weight)


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """[n_boot, n] how often each of n pairs is drawn in each bootstrap resample (small whole
    numbers: float32 holds them exactly and halves the cost of the resampled sums)."""
    return stats.draw_counts(rng.integers(0, n, (n_boot, n)), n, np.float32)


def pooled(e: Effects, counts: Optional[np.ndarray] = None) -> np.ndarray:
    """Pooled effect [C], or per resample [B, C] given bootstrap `counts` [B, N]."""
    if counts is None:
        return e.weighted().sum(0) / max(e.weight.sum(), 1e-300)
    num = counts @ e.weighted().astype(np.float32)
    return (num / np.maximum(counts @ e.weight.astype(np.float32), 1e-30)[:, None]).astype(np.float64)


def interval(point: np.ndarray, boots: np.ndarray, n: int) -> list[Estimate]:
    """A 95% percentile interval per component."""
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    return [Estimate(float(p), float(a), float(b), n) for p, a, b in zip(point, lo, hi)]


@dataclass
class Subject:
    """What one model's test needs at one (column, target): the effects of each pair kind."""

    carry: Effects  # the tested kind (carry_flip, operator_flip)
    control: Optional[Effects]  # sum_flip where the target has it
    noise: Optional[Effects] = None  # damage on the tested kind (reported for the model only)


@dataclass
class Pooled:
    """A pooled effect per component and its bootstrap resamples."""

    point: np.ndarray  # [C]
    boot: np.ndarray  # [B, C]

    @classmethod
    def of(cls, e: Optional[Effects], counts: Optional[np.ndarray]) -> Optional["Pooled"]:
        return None if e is None or counts is None else cls(pooled(e), pooled(e, counts))

    def estimates(self, n: int) -> list[Estimate]:
        return interval(self.point, self.boot, n)


@dataclass
class Verdicts:
    """Per component: the statistics of (a), (b), (c) and the verdict."""

    recovery: Pooled
    control: Optional[Pooled]
    reference: Optional[Pooled]  # the largest recovery of a same-layer head of the reference twins
    threshold: Optional[np.ndarray]  # the bar the lower bound must clear (prediction_bound; neurons: random neurons)
    confirmed: np.ndarray  # [C] bool


def layer_max(pools: list[Pooled], layer_of: np.ndarray) -> Pooled:
    """Per component, the largest value over the pools and over the components of its layer."""
    point = np.max([p.point for p in pools], 0)
    boot = np.max([p.boot for p in pools], 0)
    out_p, out_b = np.empty_like(point), np.empty_like(boot)
    for l in np.unique(layer_of):
        same = layer_of == l
        out_p[same] = point[same].max()
        out_b[:, same] = boot[:, same].max(1, keepdims=True)
    return Pooled(out_p, out_b)


def prediction_bound(others: list[Pooled], layer_of: np.ndarray, alpha: float) -> np.ndarray:
    """Per component, the one-sided (1 - alpha) upper prediction bound of one more untrained head
    of its layer, from the m heads of that layer in `others` (untrained twins): mean + t(m-1) sd
    sqrt(1 + 1/m) of their recoveries (normal prediction interval); inf when m < 2."""
    values = np.array([p.point for p in others])  # [twins, C]
    out = np.full(values.shape[1], np.inf)
    for l in np.unique(layer_of):
        y = values[:, layer_of == l].ravel()
        if len(y) >= 2:
            out[layer_of == l] = y.mean() + student_t.ppf(1 - alpha, len(y) - 1) * y.std(ddof=1) * np.sqrt(1 + 1 / len(y))
    return out


def judge(rec: Pooled, control: Optional[Pooled], reference: Optional[Pooled], threshold: Optional[np.ndarray],
          min_effect: float, alpha: float) -> Verdicts:
    """The conditions of the module docstring for one subject at one (column, target):
    (a) recovery >= min_effect; (b) above the control where there is one; (c) above the reference
    (resampled with the same pairs) where there is one; (d) a lower bound above `threshold` (the
    prediction bound of untrained heads, or for neurons the largest random neuron). alpha is the
    one-sided level of each lower bound."""
    ok = rec.point >= min_effect
    if control is not None:
        ok &= np.quantile(rec.boot - control.boot, alpha, axis=0) > 0
    if reference is not None:
        ok &= np.quantile(rec.boot - reference.boot, alpha, axis=0) > 0
    if threshold is not None:
        ok &= np.quantile(rec.boot, alpha, axis=0) > np.maximum(threshold, 0.0)
    return Verdicts(rec, control, reference, threshold, ok)


def subset(e: Effects, idx: np.ndarray) -> Effects:
    return Effects(e.ratio[idx], e.weight[idx])


# ---------------------------------------------------------------- pairs shared by a test
@dataclass
class PairSet:
    """Minimal pairs of one kind read at one target token, tokenised once for every subject."""

    kind: str
    target: str
    batch: PairBatch
    columns: np.ndarray  # [N] aimed column of each pair


def pair_set(records: list[dict], kind: str, target: str, n: int, seed: int, tokenizer: Tokenizer,
             device, memo: Optional[dict] = None) -> Optional[PairSet]:
    pairs = make_pairs(records, kind, n, seed, target, memo)
    if not pairs:
        return None
    return PairSet(kind, target, pair_batch(pairs, tokenizer, device), np.array([p.column for p in pairs]))


def control_kind(kind: str, target: str) -> Optional[str]:
    """The pair kind whose pairs control a test of `kind` read at `target` (sum-flip for carry)."""
    if kind == "carry_flip" and target in dict(TARGETS["sum_flip"]):
        return "sum_flip"
    return None


@dataclass
class Test:
    """One (column, target) of a head or neuron test, with the pairs it uses."""

    target: str
    column: int
    idx: np.ndarray  # pairs of the tested kind aimed at the column
    control_idx: Optional[np.ndarray]  # control pairs aimed at the column


def column_tests(target: str, tested: PairSet, control: Optional[PairSet], min_pairs: int,
                 columns: Optional[set[int]] = None) -> list[Test]:
    """A Test per aimed column with at least min_pairs pairs of each kind compared."""
    out = []
    for n in sorted(set(tested.columns.tolist()) if columns is None else columns):
        idx = np.nonzero(tested.columns == n)[0]
        cidx = None if control is None else np.nonzero(control.columns == n)[0]
        if len(idx) >= min_pairs and (cidx is None or len(cidx) >= min_pairs):
            out.append(Test(target, n, idx, cidx))
    return out


# ---------------------------------------------------------------- carry and operator heads
def head_names(model: Transformer) -> list[tuple[int, int]]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def patched_head_tests(model: Transformer, twins: list[Transformer], tokenizer: Tokenizer, records: list[dict],
                       kind: str, n_pairs: int, cfg: CircuitConfig, seed: int, memory_mb: float = DEFAULT_MEMORY_MB):
    """Carry-head (kind 'carry_flip') or operator-head (kind 'operator_flip') tests of every head
    at every (column, target): (ComponentRecovery rows, CircuitComponents, NullCheck)."""
    device, memo = model.device, {}
    subjects = [model] + twins
    tests, effects = [], []  # effects[t]: per subject (Subject)
    for target in targets_of(records, kind):
        tested = pair_set(records, kind, target, n_pairs, seed, tokenizer, device, memo)
        ck = control_kind(kind, target)
        control = pair_set(records, ck, target, n_pairs, seed, tokenizer, device, memo) if ck and tested else None
        if tested is None or (ck and control is None):
            continue
        found = column_tests(target, tested, control, cfg.min_pairs)
        if not found:
            continue
        per_subject = []
        for i, m in enumerate(subjects):
            e = head_effects(m, tested.batch, ("denoise", "noise") if i == 0 else ("denoise",), cfg.max_rows, memory_mb)
            c = None if control is None else head_effects(m, control.batch, ("denoise",), cfg.max_rows,
                                                          memory_mb)["denoise"]
            per_subject.append(Subject(e["denoise"], c, e.get("noise")))
        for t in found:
            tests.append(t)
            effects.append([Subject(subset(s.carry, t.idx), None if s.control is None else subset(s.control, t.control_idx),
                                    None if s.noise is None else subset(s.noise, t.idx)) for s in per_subject])
    heads = head_names(model)
    layer_of = np.array([l for l, _ in heads])
    n_tests = len(tests) * len(heads)
    if not n_tests:
        return [], [], None
    alpha = ALPHA / n_tests
    rng = np.random.default_rng(seed)
    rows, confirmed = [], np.zeros(len(subjects), dtype=int)
    for t, subj in zip(tests, effects):
        counts = resample_counts(len(t.idx), stats.resamples(alpha), rng)
        ccounts = None if t.control_idx is None else resample_counts(len(t.control_idx), stats.resamples(alpha), rng)
        carry = [Pooled.of(s.carry, counts) for s in subj]
        control = [Pooled.of(s.control, ccounts) for s in subj]
        for i, s in enumerate(subj):
            others = [p for j, p in enumerate(carry[1:], 1) if j != i]
            bound = prediction_bound(others, layer_of, alpha)
            v = judge(carry[i], control[i], layer_max(others, layer_of), bound, cfg.min_recovery, alpha)
            confirmed[i] += int(v.confirmed.sum())
            if i == 0:
                rows += recovery_rows(v, Pooled.of(s.noise, counts), heads, t, kind, "H")
    components = [head_component(r, kind, cfg) for r in rows if r.confirmed or r.recovery.mean >= cfg.min_recovery]
    test_name = "carry_head" if kind == "carry_flip" else "operator_head"
    null = NullCheck(test_name, HEAD_DEFINITIONS[kind], n_tests, int(confirmed[0]), [n_tests] * len(twins),
                     [int(c) for c in confirmed[1:]], ALPHA, stats.null_passed(list(confirmed[1:]), ALPHA))
    return rows, components, null


HEAD_DEFINITIONS = {
    "carry_flip": ("patching the head's output on carry-flip pairs aimed at column n recovers at least "
                   "min_recovery of the logit difference, more than on sum-flip pairs (where the target has "
                   "them), more than any head of the same layer in the untrained twins, and above the prediction "
                   "bound of an untrained head of that layer (bootstrap lower bounds, Bonferroni over heads x "
                   "columns x targets)"),
    "operator_flip": ("patching the head's output on operator-flip pairs recovers at least min_recovery of the "
                      "logit difference, more than any head of the same layer in the untrained twins and above the "
                      "prediction bound of an untrained head of that layer (bootstrap lower bounds, Bonferroni "
                      "over heads x columns)"),
}


def recovery_rows(v: Verdicts, noise: Optional[Pooled], names: list[tuple[int, int]], t: Test, kind: str,
                  prefix: str) -> list[ComponentRecovery]:
    """The model's ComponentRecovery rows of one (column, target) test."""
    n, none = len(t.idx), [None] * len(names)
    rec = v.recovery.estimates(n)
    dmg = none if noise is None else noise.estimates(n)
    ctl = none if v.control is None else v.control.estimates(len(t.control_idx))
    ref = none if v.reference is None else v.reference.estimates(n)
    thr = none if v.threshold is None else [float(x) for x in v.threshold]
    return [ComponentRecovery(f"L{l}{prefix}{i}", l, i, t.column, t.target, kind, rec[c], dmg[c], ctl[c], ref[c],
                              thr[c], bool(v.confirmed[c]))
            for c, (l, i) in enumerate(names)]


def head_component(r: ComponentRecovery, kind: str, cfg: CircuitConfig) -> CircuitComponent:
    comp = "carry_head" if kind == "carry_flip" else "operator_head"
    where = f"column {r.column}" + ("" if r.target == "answer" else f", read at the {r.target} token")
    parts = [f"{kind.replace('_', '-')} recovery {fmt(r.recovery)} ({where})"]
    if r.control is not None:
        parts.append(f"sum-flip {fmt(r.control)}")
    bound = "" if r.null_threshold is None else f", prediction bound {r.null_threshold:.2f}"
    parts.append(f"largest head of layer {r.layer} in the untrained twins {fmt(r.untrained)}{bound}")
    if not r.confirmed:
        parts.append("not confirmed: " + failed_condition(r, cfg.min_recovery))
    null = float("nan") if r.untrained is None else r.untrained.mean
    return CircuitComponent(comp, r.layer, r.index, r.column, r.recovery.mean, null, r.recovery.mean,
                            None if r.control is None else r.control.mean, r.confirmed, "; ".join(parts), r.target)


def fmt(e: Optional[Estimate]) -> str:
    return "-" if e is None else f"{e.mean:.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def failed_condition(r: ComponentRecovery, min_recovery: float) -> str:
    """Which condition a tested component missed, in words (the first that fails)."""
    if r.recovery.mean < min_recovery:
        return f"recovery below {min_recovery}"
    if r.control is not None and r.control.mean >= r.recovery.mean - 1e-12:
        return "not above its sum-flip recovery"
    bar = "" if r.null_threshold is None else f" ({r.null_threshold:.3f})"
    bar = (f"the largest random neuron's recovery{bar}" if "N" in r.component else
           f"every same-layer head of the untrained twins and an untrained head's prediction bound{bar}")
    if r.control is not None:
        return f"not clearly above its sum-flip recovery or {bar} (Bonferroni lower bounds)"
    return f"lower bound not above {bar}"


# ---------------------------------------------------------------- neurons
def carry_target(records: list[dict]) -> str:
    """Where a carry is computed: the answer digit, or in a scratchpad the carry_out it writes."""
    return "carry_out" if "carry_out" in targets_of(records, "carry_flip") else "answer"


def screen_rows(batch: ExampleBatch, target: str) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Target tokens [B, T] (bool) of role `target` whose aimed column n has a carry that can go
    either way (1 <= n < longest operand), the carry into n there, and n."""
    offset = dict(TARGETS["carry_flip"])[target]
    n = batch.target_columns - offset
    longest = torch.tensor([max(r["labels"]["len_a"], r["labels"]["len_b"]) for r in batch.records],
                           device=n.device)[:, None]
    rows = batch.target_mask & (batch.target_roles == TARGET_ROLES.index(target)) & (n >= 1) & (n < longest)
    aimed = n.tolist()  # one copy from the device, not one per token
    carry = np.array([batch.records[i]["labels"]["columns"][aimed[i][j]]["carry_in"] for i, j in rows.nonzero().tolist()])
    return rows, carry > 0, n[rows].cpu().numpy()


class NeuronScreen(NamedTuple):
    """The neuron test's correlational screen of one model (or twin)."""

    candidates: np.ndarray  # flat neuron indices, most selective first
    auroc: Optional[np.ndarray]  # [neurons]
    p: Optional[np.ndarray]
    null: Optional[np.ndarray]  # mean AUROC under the within-column null
    test: dict  # what was screened, for the report


def neuron_screen(cache: dict, batch: ExampleBatch, n_layers: int, cfg: CircuitConfig, seed: int) -> NeuronScreen:
    """Correlational candidates among the MLP neurons of a run of the batch (`cache` holds their
    activations), at the token where the carry is computed (carry_target)."""
    target = carry_target(batch.records)
    rows, y, groups = screen_rows(batch, target)
    if y.sum() < cfg.min_pairs or (~y).sum() < cfg.min_pairs:
        return NeuronScreen(np.zeros(0, dtype=int), None, None, None,
                            {"note": "not tested: too few carry tokens with and without a carry"})
    x = torch.cat([at_targets(cache, hp.mlp_post(l), batch)[rows] for l in range(n_layers)], -1).cpu().numpy()
    auroc, p, null = auroc_test(x, y, groups, cfg.neuron_permutations, seed)
    selected = benjamini_hochberg(p, cfg.fdr) & (np.abs(auroc - 0.5) >= cfg.neuron_min_selectivity)
    idx = np.nonzero(selected)[0]
    idx = idx[np.argsort(-np.abs(auroc[idx] - 0.5), kind="stable")]
    test = {"label": f"carry into the column, at the {target} token (columns 1 <= n < longest operand)",
            "statistic": "AUROC", "null": "labels shuffled within answer column",
            "p_values": "exact permutation mean and variance, normal tail, two-sided",
            "multiple_comparisons": "Benjamini-Hochberg", "fdr": cfg.fdr, "n_tested": int(x.shape[1]),
            "n_digits": int(len(y)), "n_selected": int(idx.size), "n_causally_tested": int(min(idx.size, cfg.max_neuron_candidates))}
    return NeuronScreen(idx, auroc, p, null, test)


def neuron_causal(model: Transformer, cand: np.ndarray, tested: PairSet, control: Optional[PairSet],
                  cfg: CircuitConfig, seed: int, with_noise: bool = True, memory_mb: float = DEFAULT_MEMORY_MB):
    """(candidates in test order, [(Test, Verdicts, noising Pooled or None)] per testable column):
    each candidate (flat index) patched alone, against `null_neurons` random neurons of its layer;
    Bonferroni over candidates x columns. Only what the verdicts read is computed: the random
    neurons' recovery on the tested pairs; the candidates' also on the control pairs and, when
    `with_noise`, their noising damage; all only on the pairs of testable columns."""
    d_mlp = model.cfg.d_mlp
    rng = np.random.default_rng(seed)
    layers = sorted({int(i // d_mlp) for i in cand})
    mine = {l: cand[cand // d_mlp == l] % d_mlp for l in layers}
    nulls = {l: rng.choice(np.setdiff1d(np.arange(d_mlp), mine[l]),
                           size=min(cfg.null_neurons, d_mlp - len(mine[l])), replace=False)
             for l in layers}
    by_layer = {l: np.concatenate([mine[l], nulls[l]]) for l in layers}
    order = np.concatenate([l * d_mlp + by_layer[l] for l in layers])
    is_cand = np.isin(order, cand)
    tests = column_tests(tested.target, tested, control, cfg.min_pairs)
    if not tests:
        return order[is_cand], []
    used = np.unique(np.concatenate([t.idx for t in tests]))
    run = PairRun(model, tested.batch, ("neuron",), 0.0, cfg.max_rows, memory_mb)
    e = neuron_effects(run, "denoise", by_layer, used)
    noise = neuron_effects(run, "noise", mine, used) if with_noise else None
    del run  # its cached runs, before the control's
    c, c_used = None, None
    if control is not None:
        c_used = np.unique(np.concatenate([t.control_idx for t in tests]))
        c = neuron_effects(PairRun(model, control.batch, ("neuron",), 0.0, cfg.max_rows, memory_mb), "denoise", mine,
                           c_used)
    alpha = ALPHA / max(1, len(tests) * len(cand))
    out = []
    for t in tests:
        at = np.searchsorted(used, t.idx)
        null_rec = pooled(subset(e, at))[~is_cand]
        threshold = np.array([null_rec[order[~is_cand] // d_mlp == i // d_mlp].max() for i in order[is_cand]])
        counts = resample_counts(len(t.idx), stats.resamples(alpha), rng)
        ccounts = None if t.control_idx is None else resample_counts(len(t.control_idx), stats.resamples(alpha), rng)
        rec = Pooled.of(keep(subset(e, at), is_cand), counts)
        ctl = None if c is None else Pooled.of(subset(c, np.searchsorted(c_used, t.control_idx)), ccounts)
        v = judge(rec, ctl, None, threshold, cfg.neuron_min_recovery, alpha)
        out.append((t, v, None if noise is None else Pooled.of(subset(noise, at), counts)))
    return order[is_cand], out


def keep(e: Effects, columns: np.ndarray) -> Effects:
    return Effects(e.ratio[:, columns], e.weight)


def neuron_tests(model: Transformer, twins: list[Transformer], screens: list[NeuronScreen], tokenizer: Tokenizer,
                 batch: ExampleBatch, cfg: CircuitConfig, seed: int, memory_mb: float = DEFAULT_MEMORY_MB):
    """The neuron test's causal part on the model and on each twin, from their screens
    (`neuron_screen` of each, model first): (ComponentRecovery rows, components, NullCheck, the
    model's screen description)."""
    records, d_mlp = batch.records, model.cfg.d_mlp
    target = carry_target(records)
    tested = pair_set(records, "carry_flip", target, cfg.n_pairs, seed, tokenizer, model.device)
    ck = control_kind("carry_flip", target)
    control = pair_set(records, ck, target, cfg.n_pairs, seed, tokenizer, model.device) if ck and tested else None
    rows, components, counts, tested_counts = [], [], [], []
    for i, (m, (idx, auroc, p, null, _)) in enumerate(zip([model] + twins, screens)):
        cand = idx[: cfg.max_neuron_candidates]
        results = []
        if cand.size and tested is not None and not (ck and control is None):
            cand, results = neuron_causal(m, cand, tested, control, cfg, seed, i == 0, memory_mb)
        confirmed = {int(cand[k]) for _, v, _ in results for k in np.nonzero(v.confirmed)[0]}
        counts.append(sum(int(v.confirmed.sum()) for _, v, _ in results))
        tested_counts.append(sum(len(v.confirmed) for _, v, _ in results))
        if i == 0:
            names = [(int(f // d_mlp), int(f % d_mlp)) for f in cand]
            for t, v, noise in results:
                rows += recovery_rows(v, noise, names, t, "carry_flip", "N")
            components += [neuron_component(int(f), d_mlp, auroc, p, null, f in confirmed, rows, cfg)
                           for f in idx[: max(cfg.max_listed_neurons, len(cand))]]
    null = NullCheck("neuron", NEURON_DEFINITION, tested_counts[0], counts[0], tested_counts[1:], counts[1:], ALPHA,
                     stats.null_passed(counts[1:], ALPHA),
                     "twins are screened and tested like the model; each screens its own candidates")
    return rows, components, null, screens[0].test


NEURON_DEFINITION = ("a correlational candidate (AUROC for the carry, Benjamini-Hochberg) whose own patching on "
                     "carry-flip pairs recovers at least neuron_min_recovery of the logit difference, more than on "
                     "sum-flip pairs where the target has them, with a Bonferroni lower bound above the largest "
                     "recovery of random neurons of its layer")


def neuron_component(flat: int, d_mlp: int, auroc, p, null, confirmed: bool, rows: list[ComponentRecovery],
                     cfg: CircuitConfig) -> CircuitComponent:
    l, i = flat // d_mlp, flat % d_mlp
    mine = [r for r in rows if (r.layer, r.index) == (l, i)]
    best = max(mine, key=lambda r: (r.confirmed, r.recovery.mean), default=None)
    note = f"correlational candidate: AUROC {auroc[flat]:.3f}, p = {p[flat]:.2g} (BH at {cfg.fdr})"
    if best is None:
        note += "; not tested causally (beyond max_neuron_candidates)"
    else:
        note += f"; carry-flip recovery {fmt(best.recovery)} at column {best.column}"
        if not best.confirmed:
            note += "; not confirmed: " + failed_condition(best, cfg.neuron_min_recovery)
    return CircuitComponent("neuron", int(l), int(i), None if best is None else best.column, float(auroc[flat]),
                            float(null[flat]), None if best is None else best.recovery.mean,
                            None if best is None or best.control is None else best.control.mean, confirmed, note,
                            "answer" if best is None else best.target)


# ---------------------------------------------------------------- entry point
def run_circuits(model: Transformer, tokenizer: Tokenizer, batch: ExampleBatch, cache: dict,
                 attention: Optional[AttentionFindings], twins: list[Transformer], twin_caches: Sequence[dict],
                 cfg: CircuitConfig, seed: int, screens: list[NeuronScreen], memory_mb: float = DEFAULT_MEMORY_MB,
                 caches_read: Callable[[], None] = lambda: None) -> CircuitFindings:
    """DESIGN §4.4 on the batch's records; `cache` is the model's activation cache of the batch
    (attention patterns are read), `twins` its untrained twins (the nulls), `twin_caches` their
    caches of the batch and `screens` the `neuron_screen` of the model and each twin, made from
    their runs of the batch.

    What reads the caches (the position-head tests) runs first; then `caches_read` is called, so
    that the caller can free them before the patched passes, which make their own."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads, head_nulls = head_tests(batch, cache, twin_caches, L, seed, cfg.position_min_mass, cfg.position_margin)
    del cache, twin_caches
    caches_read()
    recoveries, components, nulls = [], [], []
    kinds = [("carry_flip", cfg.n_pairs)]
    if {"+", "-"} <= {r["op"] for r in batch.records}:
        kinds.append(("operator_flip", cfg.operator_pairs))
    for kind, n in kinds:
        rows, comps, null = patched_head_tests(model, twins, tokenizer, batch.records, kind, n, cfg, seed, memory_mb)
        recoveries += rows
        components += comps
        nulls += [null] if null else []
    components += heads
    nulls += head_nulls
    rows, comps, null, screen = neuron_tests(model, twins, screens, tokenizer, batch, cfg, seed, memory_mb)
    recoveries += rows
    components += comps
    nulls.append(null)
    spec, roles = specialization(attention, L, H)
    return CircuitFindings(components=components, head_specialization=spec, roles=roles, neuron_test=screen,
                           recoveries=recoveries, nulls=nulls)


class CircuitDiscovery:
    """Carry and operator heads of a model on problems given as text ('59 + 73').

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    The tests run against `n_twins` untrained twins of the model.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None,
                 config: Optional[CircuitConfig] = None, seed: int = 0, n_twins: int = UNTRAINED_TWINS):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.cfg, self.seed, self.n_twins = config or CircuitConfig(), seed, n_twins

    def find_carry_detection_heads(self, examples) -> list[dict]:
        """Every head's carry test (module docstring) at every (column, target) the examples' pairs
        allow, largest carry-flip recovery first.

        `examples` are texts ('59 + 73') or (text, carry positions) tuples as in the original
        toolkit; carries always come from the ground truth, so the positions are not needed.
        """
        texts = [e[0] if isinstance(e, (tuple, list)) else e for e in examples]
        records = distinct(text_records(texts, self.task))
        twins = untrained_twins(self.model, self.n_twins, self.seed)
        rows, _, null = patched_head_tests(self.model, twins, self.tokenizer, records, "carry_flip",
                                           self.cfg.n_pairs, self.cfg, self.seed)
        if null is None:
            raise ReportgenError(
                f"too few carry-flip and sum-flip pairs in {len(records)} examples to test any column (each needs "
                f"{self.cfg.min_pairs} of each kind); give more examples with carries into columns 1 and up")
        return sorted((recovery_dict(r) for r in rows), key=lambda d: -d["recovery"])

    def find_operator_attention_heads(self, examples: list[str], operators: list[str]) -> list[dict]:
        """Per head: mean attention from the answer-predicting positions to the operator token,
        for examples of each operator, and (when the examples mix '+' and '-') the pooled
        operator-flip recovery of patching the head's output. Most operator-attending heads first."""
        records = distinct(text_records(examples, self.task))
        batch = build_batch(records, self.tokenizer, self.model.cfg.n_ctx, device=self.model.device)
        L, H = self.model.cfg.n_layers, self.model.cfg.n_heads
        with torch.no_grad():
            _, cache = self.model.run_with_cache(batch.tokens, names=hp.at_sites(hp.ATTN_PATTERN))
        op_pos = torch.tensor([r["prompt"].index(r["op"]) + 1 for r in records], device=batch.tokens.device)
        B = len(records)
        mass = torch.stack([
            cache[hp.attn_pattern(l)][torch.arange(B)[:, None], :, batch.pred_pos, op_pos[:, None]]
            for l in range(L)])  # [L, B, A, H]
        m = batch.answer_mask[None, :, :, None]
        per_example = ((mass * m).sum(2) / m.sum(2)).cpu().numpy()  # [L, B, H]
        ops = np.array([r["op"] for r in records])
        rec = None
        if {"+", "-"} <= set(ops):
            ps = pair_set(records, "operator_flip", "answer", self.cfg.operator_pairs, self.seed, self.tokenizer,
                          self.model.device)
            if ps is not None:
                rec = pooled(head_effects(self.model, ps.batch, ("denoise",), self.cfg.max_rows)["denoise"]).reshape(L, H)
        out = []
        for l in range(L):
            for h in range(H):
                att = {op: float(per_example[l, ops == op, h].mean()) for op in operators if (ops == op).any()}
                out.append({"layer": l, "head": h, "operator_attention": att,
                            "operator_flip_recovery": None if rec is None else float(rec[l, h])})
        return sorted(out, key=lambda d: -max(d["operator_attention"].values(), default=0.0))


def recovery_dict(r: ComponentRecovery) -> dict:
    est = lambda e: None if e is None else {"mean": e.mean, "lo": e.lo, "hi": e.hi, "n": e.n}  # noqa: E731
    return {"layer": r.layer, "head": r.index, "column": r.column, "target": r.target, "recovery": r.recovery.mean,
            "carry_flip": est(r.recovery), "sum_flip": est(r.control), "untrained": est(r.untrained),
            "noising_damage": est(r.damage), "confirmed": r.confirmed}

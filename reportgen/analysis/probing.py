"""Linear probing (DESIGN §4.5): logistic-regression probes on frozen activations, calibrated
against untrained twins of the same config.

A probe reads one label at one site: a (layer, hook) at the position that predicts one target
digit (data.arithmetic.target_tokens: the final answer's digits and, for scratchpad models, every
digit of every step, by role and column), in problems of ONE text layout (examples.template:
every row has the same characters at the same positions, so the probed position plays the same
role in every row; e.g. 3+3 digits with a 3-digit answer). Probing draws its own problems: of
the model's task and format, with the longest operands, none of the model's training questions,
grouped by layout, keeping the `layouts` most common layouts with `n_examples` problems each.

Labels (of the column n of the predicted digit; a scratchpad digit's column is its step's):
carry_in, carry_out, digit (the column's result digit), a_digit (a's digit), operator (where
the data mix operators), cascade (the column belongs to a carry chain of length >= 2). Answer
positions take `labels`, scratchpad positions `scratchpad_labels`; multiplication scratchpads
have no column and are not probed. A label constant in the training rows is not probed.

Protocol: one seeded split by problem per layout (the same held-out rows for every probe of the
layout, for the model and for every twin), features standardised on the training rows, an
L2-regularised logistic regression (one-vs-rest where a label has more than two classes) fitted
by batched Newton steps, scored on the held-out rows: accuracy, or balanced accuracy (mean
recall over classes) for a label whose classes are unbalanced at any of its sites. Beside each
probe, at the same site and rows:
- untrained: the mean accuracy of the same probe on the untrained twins' activations;
- selectivity = accuracy - untrained, with a 95% interval from the SE below (its bootstrap part
  is paired: each resample of held-out problems rescores the model and every twin on the same
  rows, balanced accuracy recomputed per resample); accuracy has a percentile bootstrap interval;
- majority: always predicting the training majority class; over_baseline = accuracy -
  max(majority, untrained), with an interval like selectivity's;
- operand: the same probe on the one-hot digits of both operands in every column (and the
  operator), i.e. operand identity alone. Carries are functions of the operands, so they are
  linearly decodable from operand identity; a probe that matches this line shows no more than
  that the site still holds the inputs.
No Hewitt-Liang control task: with ~200 input types (operator, a_n, b_n, carry_in) and a few
hundred problems a type-level control is not learnable, and its selectivity measured 0.3-0.5 on
untrained models. The untrained twins are the control: they hold the same inputs at the same
sites with no training, so twins-calibrated selectivity is ~0 on an untrained model.

Confirmation and its null: a probe is confirmed (the label is linearly decodable there beyond
untrained models) when the lower bound of its selectivity interval, Bonferroni-corrected over all
probes of the model at family-wise error `alpha`, is above 0. The bound is selectivity - z * SE
(a normal interval: a percentile interval at alpha / probes would need ~10^5 resamples), with
SE^2 = the paired bootstrap variance + (1 + 1/twins) * the initialisation spread of untrained
models (the twins' sample variance, floored by a ratio pooled over probes): with the bootstrap
part alone, a twin was confirmed against the others in about a third of the demo configs' runs,
against alpha = 0.05. The same test runs
with each twin as the subject against the other twins; findings.NullCheck records both counts and
stats.null_passed judges them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from reportgen.analysis.api import task_of, text_batch
from reportgen.analysis import stats
from reportgen.analysis.config import MIN_TEST, UNTRAINED_TWINS, ProbingConfig, min_problems
from reportgen.analysis.engine import run_with_cache, untrained_twins
from reportgen.analysis.examples import ExampleBatch, build_batch, example_key, template
from reportgen.findings import Estimate, NullCheck, ProbeLayout, ProbeResult, ProbingFindings
from reportgen.analysis.stats import N_BOOT, null_passed
from reportgen.data.arithmetic import target_tokens
from reportgen.data.dataset import count_questions, stratified_examples
from reportgen.errors import ReportgenError
from reportgen import hooks as hp
from reportgen.plots import toolkit
from reportgen.model.transformer import Transformer

OPS = ("+", "-", "*")
IMBALANCE_RATIO = 1.5
SCRATCHPAD_ROLES = ("operand_a", "operand_b", "carry_in", "sum_digit", "carry_out")
CHUNK_VALUES = 4_000_000  # feature values of the problems solved together (32 MB in float64)
NEWTON_RIDGE = 1e-4  # keeps Newton systems definite when a fit separates the classes


# ---------------------------------------------------------------- the probe core
def holdout_split(keys: list, test_fraction: float, seed) -> np.ndarray:
    """Boolean per row: which rows are held out. A seeded shuffle of the distinct keys (problems),
    at least one on each side where there are two, so copies of a problem share a side."""
    distinct = list(dict.fromkeys(keys))
    n = len(distinct)
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    held = {distinct[i] for i in np.random.default_rng(seed).permutation(n)[:n_test]}
    return np.array([k in held for k in keys], dtype=bool)


def is_unbalanced(y: np.ndarray) -> bool:
    _, counts = np.unique(y, return_counts=True)
    return counts.max() > IMBALANCE_RATIO * counts.min()


def score(y_true: np.ndarray, y_pred: np.ndarray, balanced: bool) -> float:
    """Accuracy, or balanced accuracy (mean recall over the classes present in y_true)."""
    if not balanced:
        return float(np.mean(y_true == y_pred))
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def majority_class(y_train: np.ndarray):
    values, counts = np.unique(y_train, return_counts=True)
    return values[counts.argmax()]


def majority_score(y: np.ndarray, is_test: np.ndarray, balanced: bool) -> float:
    return score(y[is_test], np.full(is_test.sum(), majority_class(y[~is_test])), balanced)


def train_moments(feats: torch.Tensor, train: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std [F, 1, d] (float64) of each feature set's training rows, `chunk` sets at a time."""
    mu = torch.empty(feats.shape[0], 1, feats.shape[2], dtype=torch.float64)
    sd = torch.empty_like(mu)
    for start in range(0, len(feats), chunk):
        x = feats[start:start + chunk, train].double()
        mu[start:start + chunk] = x.mean(1, keepdim=True)
        sd[start:start + chunk] = x.std(1, unbiased=False, keepdim=True)
    return mu, sd


def standardize(feats: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    """[F, N, d] features (float64) scaled by their training rows' mean and std (constant columns
    left at 0), with a column of ones appended for the intercept."""
    z = (feats.double() - mu) / torch.where(sd > 1e-12, sd, torch.ones_like(sd))
    return torch.cat([z, torch.ones_like(z[..., :1])], -1)


def logistic_decisions(feats: torch.Tensor, targets: torch.Tensor, pairs: torch.Tensor, train: torch.Tensor,
                       C: float, max_iter: int) -> torch.Tensor:
    """Held-out decision values of many binary L2-regularised logistic regressions at once.

    feats [F, N, d] (raw features of N rows), targets [T, N] in {0, 1}, pairs [Q, 2]: problem q
    fits targets[pairs[q, 1]] on feats[pairs[q, 0]]; train [N] bool. Each problem minimises
    sum(log-loss) + ||w||^2 / (2C) over standardised features, intercept unpenalised (scikit-
    learn's objective), by Newton steps with step halving. Returns [Q, N_test] (float64).
    """
    test = ~train
    reg = torch.full((feats.shape[-1] + 1,), 1.0 / C, dtype=torch.float64)
    reg[-1] = 0.0  # the intercept
    out = torch.empty(len(pairs), int(test.sum()), dtype=torch.float64)
    chunk = max(1, min(512, CHUNK_VALUES // feats[0].numel()))  # problems whose features are gathered at once
    # Features stay as given (float32 activations: half the memory) and are standardised in
    # float64 chunk by chunk, exactly as if all at once.
    mu, sd = train_moments(feats, train, chunk)
    for start in range(0, len(pairs), chunk):
        p = pairs[start:start + chunk]
        X = standardize(feats[p[:, 0]], mu[p[:, 0]], sd[p[:, 0]])
        w = _newton(X[:, train], targets[p[:, 1]][:, train].double(), reg, max_iter)
        out[start:start + chunk] = (X[:, test] @ w[..., None])[..., 0]
    return out


def _newton(X: torch.Tensor, y: torch.Tensor, reg: torch.Tensor, max_iter: int, tol: float = 1e-6) -> torch.Tensor:
    """Batched Newton's method for L2-regularised logistic regression; X [Q, n, d] (intercept
    column last), y [Q, n], reg [d] (the features' 1/C, 0 for the intercept).

    Each step solves the Newton system in the cheaper of two exact ways (_primal_step: the d x d
    Hessian; _dual_step: an n x n system, when there are fewer training rows than features, as
    in wide models' residual streams). Problems leave the batch once their step is below `tol`."""
    w = torch.zeros(X.shape[0], X.shape[2], dtype=torch.float64)
    dual = X.shape[1] < X.shape[2]
    if dual:  # the rows' Gram matrices, fixed through the iterations
        gram = X[..., :-1] @ X[..., :-1].transpose(1, 2)
    else:
        X32 = X.float()

    def loss(X, y, w):
        z = (X @ w[..., None])[..., 0]
        return (torch.nn.functional.softplus(z) - y * z).sum(1) + 0.5 * (reg * w * w).sum(1)

    active = torch.arange(len(w))
    current = loss(X, y, w)
    for _ in range(max_iter):
        every = len(active) == len(w)  # gather only once some problems have converged
        pick = (lambda t: t) if every else (lambda t: t[active])  # noqa: E731
        Xa, ya, wa = pick(X), pick(y), pick(w)
        prob = torch.sigmoid((Xa @ wa[..., None])[..., 0])
        grad = (Xa.transpose(1, 2) @ (prob - ya)[..., None])[..., 0] + reg * wa
        curvature = prob * (1 - prob)
        if dual:
            step = _dual_step(Xa[..., :-1], pick(gram), curvature, grad, float(reg[0]))
        else:
            step = _primal_step(pick(X32), curvature, grad, reg)
        t = torch.ones(len(active), 1, dtype=torch.float64)
        now = current[active]
        for _ in range(10):  # halve where a full step would increase the loss
            new = loss(Xa, ya, wa - t * step)
            worse = new > now + 1e-10 * now.abs()
            if not worse.any():
                break
            t[worse] /= 2
        w[active] = wa - t * step
        current[active] = torch.minimum(now, new)
        active = active[(t * step).abs().amax(1) >= tol]
        if not len(active):
            break
    return w


def _primal_step(X32: torch.Tensor, curvature: torch.Tensor, grad: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Newton step from the d x d Hessian, formed and factorised in float32 (the costly part; an
    inexact Hessian slows convergence slightly but does not move the optimum), with a small
    ridge so that it stays definite when the fit separates the classes."""
    ridge = torch.diag(reg.float() + NEWTON_RIDGE)
    chol, _ = torch.linalg.cholesky_ex((X32 * curvature.float()[..., None]).transpose(1, 2) @ X32 + ridge)
    return torch.cholesky_solve(grad.float()[..., None], chol)[..., 0].double()


def _dual_step(F: torch.Tensor, gram: torch.Tensor, curvature: torch.Tensor, grad: torch.Tensor,
               lam: float) -> torch.Tensor:
    """The same Newton step (float64) through an n x n system: features F [q, n, d], their Gram
    matrices F F^T [q, n, n], an intercept column of ones besides them.

    The Hessian is [[A, u], [u^T, c]] with A = lam I + F^T D F, u = F^T D 1, c = sum D (D the
    curvature); A^-1 v = (v - F^T S (lam I + S F F^T S)^-1 S F v) / lam with S = D^1/2
    (Woodbury), and the intercept's row is eliminated through its Schur complement."""
    s = curvature.sqrt()[..., None]  # [q, n, 1]
    system = s * gram * s.transpose(1, 2) + lam * torch.eye(gram.shape[-1], dtype=gram.dtype)
    chol, _ = torch.linalg.cholesky_ex(system)
    u = F.transpose(1, 2) @ curvature[..., None]  # [q, d, 1]
    v = torch.cat([grad[:, :-1, None], u], -1)  # [q, d, 2]: A^-1 of the features' gradient and of u
    inv = (v - F.transpose(1, 2) @ (s * torch.cholesky_solve(s * (F @ v), chol))) / lam
    a_grad, a_u = inv[..., 0], inv[..., 1]
    schur = curvature.sum(1) - (u[..., 0] * a_u).sum(1) + NEWTON_RIDGE
    step_b = (grad[:, -1] - (u[..., 0] * a_grad).sum(1)) / schur
    return torch.cat([a_grad - a_u * step_b[:, None], step_b[:, None]], 1)


def fit_predict(X: np.ndarray, y: np.ndarray, is_test: np.ndarray, max_iter: int, C: float) -> np.ndarray:
    """Held-out predictions of one standardised logistic probe (one-vs-rest over y's training classes)."""
    classes = np.unique(y[~is_test])
    if classes.size < 2:
        return np.full(is_test.sum(), classes[0])
    targets = class_targets(y, classes)
    dec = logistic_decisions(torch.as_tensor(X, dtype=torch.float64)[None], torch.as_tensor(targets),
                             torch.tensor([[0, t] for t in range(len(targets))]), torch.as_tensor(~is_test), C, max_iter)
    return decide(dec.numpy(), classes)


def fit_score(X: np.ndarray, y: np.ndarray, is_test: np.ndarray, balanced: bool, max_iter: int, C: float) -> float:
    """Held-out score of a standardised logistic-regression probe (train on ~is_test)."""
    return score(y[is_test], fit_predict(X, y, is_test, max_iter, C), balanced)


def class_targets(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The binary problems of a label, targets [problems, N]: one (the second class against the
    first) for two classes, one per class otherwise (one-vs-rest)."""
    return np.array([y == classes[1]] if classes.size == 2 else [y == c for c in classes], dtype=np.float64)


def decide(dec: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Predicted classes from a label's decision values [problems, N_test] (class_targets' order)."""
    if classes.size == 2:
        return classes[(dec[0] > 0).astype(int)]
    return classes[dec.argmax(0)]


# ---------------------------------------------------------------- ground truth
def column_label(record: dict, n: int, label: str):
    """Value of `label` for column n of a record."""
    col = record["labels"]["columns"][n]
    if label == "operator":
        return OPS.index(record["op"])
    if label == "a_digit":
        return col["a"]
    if label == "cascade":
        return int(col["cascade_len"] >= 2)
    return col[label]


def operand_features(records: list[dict]) -> np.ndarray:
    """One-hot digits of both operands in every answer column (all zeros where a record has no
    such column) and the operator: everything the problem is, none of what the model computes."""
    width = max(len(r["labels"]["columns"]) for r in records)
    X = np.zeros((len(records), 20 * width + len(OPS)))
    for i, r in enumerate(records):
        for c, col in enumerate(r["labels"]["columns"]):
            X[i, 20 * c + col["a"]] = X[i, 20 * c + 10 + col["b"]] = 1.0
        X[i, 20 * width + OPS.index(r["op"])] = 1.0
    return X


def position_name(role: str, column: int) -> str:
    """'predicts sum_digit of column 1', 'predicts answer digit of column 0'."""
    return f"predicts {'answer digit' if role == 'answer' else role} of column {column}"


# ---------------------------------------------------------------- problems per layout
LOAD = object()  # analyze_probing's `questions` not given: compute them


def held_out_layouts(ckpt, cfg: ProbingConfig, seed: int, questions=LOAD) -> tuple[list[list[dict]], str]:
    """The `cfg.layouts` most common layouts of the checkpoint's task with the longest operands,
    `cfg.n_examples` problems each (fewer where a layout has fewer; layouts under the minimum
    dropped), in its own format, none of its training questions; and a sentence saying which
    questions were excluded."""
    from reportgen.train.splits import training_questions

    t = ckpt.task
    D = t["max_digits"]
    longest = lambda q: len(str(q[0])) == len(str(q[2])) == D  # noqa: E731
    total = count_questions(t["task"], D, D)
    want = min(total, 3 * cfg.layouts * cfg.n_examples)
    splits = training_questions(ckpt.meta) if questions is LOAD else questions
    if splits is None:
        exclude, note = None, "the model's training split could not be recovered: problems may include training questions"
    else:
        every = {q for s in splits.values() for q in s if longest(q)}
        train = {q for q in splits["train"] if longest(q)}
        if total - len(every) >= want:
            exclude, note = every, "none of the model's training, validation or test questions"
        else:
            exclude, note = train, "none of the model's training questions (validation and test questions allowed)"
        want = min(want, total - len(exclude))
    pool = stratified_examples(t["task"], want, D, D, seed, t["with_steps"], t["answer_order"], exclude) if want else []
    groups: dict[str, list[dict]] = {}
    for r in pool:
        groups.setdefault(template(r), []).append(r)
    least = min_problems(cfg.test_fraction)
    ranked = sorted(groups.values(), key=len, reverse=True)  # stable: ties keep their first-drawn order
    return [recs[: cfg.n_examples] for recs in ranked[: cfg.layouts] if len(recs) >= least], note


def probe_sites(layers: list[int], hooks: list[str]) -> list[tuple[int, str]]:
    """(layer, hook name) to probe, in forward order; resid_pre of a layer whose previous layer's
    resid_post is probed is the same tensor and is left out."""
    sites = [(l, hp.in_block(l, h)) for l in sorted(set(layers)) for h in hp.BLOCK_SITES if h in hooks]
    have = {name for _, name in sites}
    return [(l, n) for l, n in sites if not (n == hp.resid_pre(l) and hp.resid_post(l - 1) in have)]


# ---------------------------------------------------------------- the analysis
@dataclass
class _Probe:
    """One fitted probe before scoring: held-out predictions of the model and of each twin."""

    label: str
    role: str
    column: int
    layer: int
    hook: str
    layout: int
    y: np.ndarray  # every row's label (train and test)
    y_test: np.ndarray
    preds: np.ndarray  # [1 + twins, N_test]: the model's, then each twin's
    majority: object  # the training majority class
    operand: np.ndarray  # [N_test] predictions of the operand-identity probe
    n_train: int


def analyze_probing(ckpt, twins: list[Transformer], cfg: ProbingConfig, layers: list[int], seed: int,
                    questions=LOAD) -> ProbingFindings:
    """Every configured probe on held-out problems of the checkpoint's task, one layout per probe,
    calibrated against the untrained `twins` (engine.untrained_twins; at least two). `questions`:
    train.splits.training_questions(ckpt.meta) where the caller has it (it regenerates the data
    set, seconds), else it is computed here."""
    layouts, note = held_out_layouts(ckpt, cfg, seed, questions)
    return probe_layouts(ckpt.model, twins, ckpt.tokenizer, layouts, cfg, layers, seed, note)


def probe_layouts(model: Transformer, twins: list[Transformer], tokenizer, layouts: list[list[dict]],
                  cfg: ProbingConfig, layers: list[int], seed: int, held_out: str = "") -> ProbingFindings:
    """Probes on the given problems, one list of records per layout (each of one template)."""
    if len(twins) < 2:
        raise ReportgenError(f"probing needs at least two untrained twins (each twin is judged against the "
                             f"others), got {len(twins)}")
    sites = probe_sites(layers, cfg.hooks)
    raw, infos = [], []
    with torch.no_grad(), single_threaded_blas():
        for i, records in enumerate(layouts):
            probes, info = _fit_layout(i, records, model, twins, tokenizer, cfg, sites, seed)
            raw += probes
            infos.append(info)
        return _findings(raw, infos, len(twins), cfg, seed, held_out)


def single_threaded_blas():
    """Small numpy products run far faster without BLAS threads competing with torch's."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _fit_layout(index: int, records: list[dict], model, twins, tokenizer, cfg: ProbingConfig,
                sites: list[tuple[int, str]], seed: int) -> tuple[list[_Probe], ProbeLayout]:
    """Fit every probe of one layout for the model and every twin in one batched solve."""
    layout = template(records[0])
    if any(template(r) != layout for r in records):
        raise ReportgenError("probe rows must share one layout (examples.template); got several")
    is_test = holdout_split([example_key(r) for r in records], cfg.test_fraction, [seed, index])
    positions = [(q, role, n) for q, role, n in target_tokens(records[0]) if n is not None]
    targets, label_rows = [], []  # binary targets; per (position, label): (classes, target indices)
    for p, (_, role, n) in enumerate(positions):
        for label in (cfg.labels if role == "answer" else cfg.scratchpad_labels if role in SCRATCHPAD_ROLES else []):
            y = np.array([column_label(r, n, label) for r in records])
            classes = np.unique(y[~is_test])
            if classes.size < 2:
                continue
            rows = class_targets(y, classes)
            label_rows.append((p, label, y, classes, list(range(len(targets), len(targets) + len(rows)))))
            targets += list(rows)
    info = ProbeLayout(layout, records[0]["prompt"] + records[0]["target"], len(records),
                       int((~is_test).sum()), int(is_test.sum()))
    if not label_rows:
        return [], info
    batch = build_batch(records, tokenizer, model.cfg.n_ctx, device=model.device)
    pos = torch.tensor([q for q, _, _ in positions], device=model.device)
    names = {name for _, name in sites}
    n_sub, n_site, n_pos = 1 + len(twins), len(sites), len(positions)
    # [(subject, site, position), N, d], in the model's dtype, filled pass by pass
    feats = torch.empty(n_sub * n_site * n_pos, len(records), model.cfg.d_model, dtype=model.W_E.dtype)
    for m, subject in enumerate([model, *twins]):
        at_probes = {}  # each site only at the probed positions, as the pass goes

        def keep(x: torch.Tensor, name: str) -> None:
            at_probes[name] = x[:, pos]

        with torch.no_grad():
            subject(batch.tokens, hooks={name: keep for name in names})
        for s, (_, name) in enumerate(sites):
            at = (m * n_site + s) * n_pos
            feats[at:at + n_pos] = at_probes[name].transpose(0, 1).cpu()
    pairs = [((m * n_site + s) * n_pos + p, t) for m in range(n_sub) for s in range(n_site)
             for p, _, _, _, ts in label_rows for t in ts]
    train = torch.as_tensor(~is_test)
    dec = logistic_decisions(feats, torch.as_tensor(np.array(targets)), torch.tensor(pairs), train,
                             cfg.C, cfg.max_iter).numpy()
    at = {pair: i for i, pair in enumerate(pairs)}
    operand = _operand_predictions(records, label_rows, positions, is_test, cfg)
    probes = []
    for s, (layer, hook) in enumerate(sites):
        for k, (p, label, y, classes, ts) in enumerate(label_rows):
            preds = np.stack([decide(dec[[at[((m * n_site + s) * n_pos + p, t)] for t in ts]], classes)
                              for m in range(n_sub)])
            probes.append(_Probe(label, positions[p][1], positions[p][2], layer, hook, index, y, y[is_test], preds,
                                 majority_class(y[~is_test]), operand[k], int((~is_test).sum())))
    return probes, info


def _operand_predictions(records, label_rows, positions, is_test, cfg: ProbingConfig) -> list[np.ndarray]:
    """Held-out predictions of the operand-identity probe of each (position, label), one solve
    per distinct (column, label)."""
    X = torch.as_tensor(operand_features(records))[None]
    keys = list(dict.fromkeys((positions[p][2], label) for p, label, *_ in label_rows))
    first = {}
    targets, pairs = [], []
    for p, label, y, classes, ts in label_rows:
        key = (positions[p][2], label)
        if key not in first:
            first[key] = (classes, list(range(len(targets), len(targets) + len(ts))))
            targets += list(class_targets(y, classes))
            pairs += [[0, t] for t in first[key][1]]
    dec = logistic_decisions(X, torch.as_tensor(np.array(targets)), torch.tensor(pairs),
                             torch.as_tensor(~is_test), cfg.C, cfg.max_iter).numpy()
    preds = {key: decide(dec[first[key][1]], first[key][0]) for key in keys}
    return [preds[(positions[p][2], label)] for p, label, *_ in label_rows]


# ---------------------------------------------------------------- scoring, intervals, the null
def multiplicities(n: int, seed) -> np.ndarray:
    """[N_BOOT, n] how often each held-out row appears in each bootstrap resample."""
    return stats.draw_counts(np.random.default_rng(seed).integers(0, n, size=(N_BOOT, n)), n)


def resampled_scores(weights: np.ndarray, correct: np.ndarray, y: np.ndarray, balanced: bool) -> np.ndarray:
    """Scores [R, J] of J predictors whose per-row correctness is `correct` [J, n], under row
    weights [R, n] (multiplicities; a row of ones is the sample itself): accuracy, or balanced
    accuracy recomputed per resample (mean recall over the classes the resample holds)."""
    if not balanced:
        return weights @ correct.T / weights.sum(1, keepdims=True)
    onehot = (y[:, None] == np.unique(y)[None]).astype(np.float64)  # [n, K]
    counts = weights @ onehot  # [R, K]
    hits = (weights @ (correct.T[:, :, None] * onehot[:, None, :]).reshape(len(y), -1)).reshape(
        len(weights), len(correct), -1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = hits / counts[:, None, :]
    present = counts > 0
    return np.where(present[:, None, :], recall, 0.0).sum(-1) / present.sum(-1, keepdims=True)


def bonferroni_z(alpha: float, n_tests: int) -> float:
    """Two-sided normal quantile of a (1 - alpha / n_tests) interval."""
    from scipy.stats import norm

    return float(norm.ppf(1 - alpha / (2 * max(n_tests, 1))))


def init_variance(spread: float, n_ref: int) -> float:
    """Variance that initialisation alone gives an untrained subject's accuracy minus the mean of
    n_ref other untrained models' accuracies, when one untrained model's accuracy varies with its
    initialisation by `spread` (a variance): spread * (1 + 1 / n_ref)."""
    return spread * (1.0 + 1.0 / n_ref)


@dataclass
class _Scored:
    """A probe's scores [model, twins..., majority, operand] on the held-out rows and on each resample."""

    probe: _Probe
    balanced: bool
    obs: np.ndarray  # [J]
    boot: np.ndarray  # [N_BOOT, J]


def _findings(raw: list[_Probe], infos: list[ProbeLayout], k: int, cfg: ProbingConfig, seed: int,
              held_out: str) -> ProbingFindings:
    balanced = {p.label for p in raw if is_unbalanced(p.y)}
    weights = {i: multiplicities(info.n_test, [seed, i, 1]) for i, info in enumerate(infos)}
    scored = []
    for p in raw:
        bal = p.label in balanced
        correct = np.vstack([p.preds == p.y_test, p.y_test == p.majority, p.operand == p.y_test]).astype(np.float64)
        obs = resampled_scores(np.ones((1, len(p.y_test))), correct, p.y_test, bal)[0]
        scored.append(_Scored(p, bal, obs, resampled_scores(weights[p.layout], correct, p.y_test, bal)))
    z = bonferroni_z(cfg.alpha, len(scored))
    ratio = spread_ratio(scored, k)
    probes = [_result(s, k, z, ratio) for s in scored]
    twin_confirmed = [sum(p.twin_confirmed[j] for p in probes) for j in range(k)]
    twin_mean = [float(np.mean([p.twin_selectivity[j] for p in probes])) if probes else 0.0 for j in range(k)]
    twin_max = [float(np.max([abs(p.twin_selectivity[j]) for p in probes])) if probes else 0.0 for j in range(k)]
    null = NullCheck(
        test="probe",
        definition=(f"a probe is confirmed when the lower bound of its selectivity (accuracy minus the mean accuracy "
                    f"of the same probe on {k} untrained twins) is above 0, Bonferroni-corrected over the "
                    f"{len(probes)} probes (family-wise {cfg.alpha:g}); the bound's standard error combines a "
                    f"bootstrap over held-out problems with the spread of untrained initialisations"),
        n_tested=len(probes), confirmed=sum(p.confirmed for p in probes),
        twin_tested=[len(probes)] * k, twin_confirmed=twin_confirmed, error_rate=cfg.alpha,
        passed=null_passed(twin_confirmed, cfg.alpha),
        note=(f"each twin tested as the subject against the other {k - 1}; their mean selectivity over probes "
              + ", ".join(f"{v:+.3f}" for v in twin_mean) + ", largest |selectivity| "
              + ", ".join(f"{v:.3f}" for v in twin_max)),
    )
    return ProbingFindings(probes=probes, seed=seed, layouts=infos, null=null, n_twins=k, alpha=cfg.alpha,
                           bound_z=z, held_out=held_out, twin_mean_selectivity=twin_mean,
                           twin_max_abs_selectivity=twin_max)


def spread_ratio(scored: list[_Scored], k: int) -> float:
    """How much untrained models' accuracies vary with initialisation, relative to the bootstrap
    variance of one untrained accuracy, pooled over the probes: sum of the twins' sample variances
    over sum of their mean bootstrap variances. Times a probe's bootstrap variance, it is the floor
    of that probe's initialisation spread (k twins give a variance with only k - 1 degrees of freedom)."""
    spread = sum(float(np.var(s.obs[1:1 + k], ddof=1)) for s in scored)
    noise = sum(float(s.boot[:, 1:1 + k].var(0, ddof=1).mean()) for s in scored)
    return spread / noise if noise > 0 else 0.0


def comparisons(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From scores [..., J] of [model, k twins, majority, operand]: the model's selectivity
    (accuracy - the twins' mean), its accuracy over the best baseline (max of majority and the
    twins' mean), and each twin's selectivity as the subject against the other twins [..., k]."""
    twins = scores[..., 1:1 + k]
    mean = twins.mean(-1)
    loo = twins - (twins.sum(-1, keepdims=True) - twins) / (k - 1)
    return scores[..., 0] - mean, scores[..., 0] - np.maximum(scores[..., 1 + k], mean), loo


def _result(s: _Scored, k: int, z: float, ratio: float) -> ProbeResult:
    """A ProbeResult from a probe's scores. Each standard error is the bootstrap one (held-out
    problems, paired) combined with the initialisation spread of the untrained reference models
    (their sample variance, at least the pooled floor): the subject is compared with a mean of
    untrained models, and an untrained subject would differ from it by that spread alone."""
    p, obs, boot = s.probe, s.obs, s.boot
    twins = boot[:, 1:1 + k]
    floor = ratio * float(twins.var(0, ddof=1).mean())

    def spread(idx) -> float:
        return max(float(np.var(obs[1:1 + k][idx], ddof=1)) if len(idx) > 1 else 0.0, floor)

    sel, over, loo = comparisons(obs, k)
    b_sel, b_over, b_loo = comparisons(boot, k)
    model_var = init_variance(spread(list(range(k))), k)
    se_sel = float(np.sqrt(b_sel.var(ddof=1) + model_var))
    se_over = float(np.sqrt(b_over.var(ddof=1) + model_var))
    twin_se = [float(np.sqrt(b_loo[:, j].var(ddof=1) + init_variance(spread([i for i in range(k) if i != j]), k - 1)))
               for j in range(k)]
    n = len(p.y_test)
    return ProbeResult(
        label=p.label, hook=p.hook, layer=p.layer, position=position_name(p.role, p.column), role=p.role,
        column=p.column, layout=p.layout, accuracy=_percentile(obs[0], boot[:, 0], n), balanced=s.balanced,
        majority=float(obs[1 + k]), untrained=float(obs[1:1 + k].mean()), untrained_each=[float(v) for v in obs[1:1 + k]],
        selectivity=_normal(sel, se_sel, n), selectivity_bound=float(sel - z * se_sel),
        confirmed=bool(sel - z * se_sel > 0), over_baseline=_normal(over, se_over, n),
        operand_baseline=float(obs[2 + k]), twin_selectivity=[float(v) for v in loo],
        twin_confirmed=[bool(v - z * e > 0) for v, e in zip(loo, twin_se)], n_train=p.n_train, n_test=n,
    )


def _percentile(observed: float, boot: np.ndarray, n: int) -> Estimate:
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return Estimate(float(observed), float(lo), float(hi), n)


def _normal(observed: float, se: float, n: int) -> Estimate:
    return Estimate(float(observed), float(observed - Z95 * se), float(observed + Z95 * se), n)


Z95 = 1.959963984540054


# ---------------------------------------------------------------- figures and the Python API
def plot_probe(findings: ProbingFindings, label: str, save_path=None) -> None:
    """`<label>_results.png`: selectivity per site (rows) and probed position (columns), one panel
    per layout; confirmed probes marked '*'."""
    rows = [p for p in findings.probes if p.label == label]
    sites = sorted({(p.layer, hp.forward_rank(p.hook), p.hook) for p in rows})
    panels = []
    for li in sorted({p.layout for p in rows}):
        ps = [p for p in rows if p.layout == li]
        cols = list(dict.fromkeys((p.role, p.column, p.position) for p in ps))
        M = np.full((len(sites), len(cols)), np.nan)
        marked = []
        for p in ps:
            i = sites.index((p.layer, hp.forward_rank(p.hook), p.hook))
            j = cols.index((p.role, p.column, p.position))
            M[i, j] = p.selectivity.mean
            if p.confirmed:
                marked.append((i, j))
        info = findings.layouts[li]
        panels.append({"matrix": M, "marked": marked,
                       "xlabels": [f"{r if r != 'answer' else 'ans'} c{n}" for r, n, _ in cols],
                       "title": f"layout {info.template} (e.g. {info.example}): {info.n_train} train / {info.n_test} test"})
    toolkit.probe_selectivity(panels, [hp.label(h) for _, _, h in sites],
                              f"Probe {label}: accuracy - untrained twins' accuracy (* confirmed)", save_path)


class ProbingClassifier:
    """Probes for user-given labels on problems given as text.

    `probe_across_layers` probes the position that predicts the first written answer digit,
    at the embedding (`blocks.0.hook_resid_pre`) and after every block (`hook_resid_post`). The
    problems must share one layout (the same text shape, e.g. all 2+2 digits with a 3-digit
    answer), so that position plays one role in every row.
    """

    def __init__(self, model: Transformer, tokenizer, task: Optional[dict] = None, seed: int = 0,
                 test_fraction: float = 0.3, max_iter: int = 30, n_twins: int = UNTRAINED_TWINS):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.seed, self.test_fraction, self.max_iter, self.n_twins = seed, test_fraction, max_iter, n_twins

    def probe_across_layers(self, examples: list[str], labels: list, name: str) -> dict:
        """Held-out accuracy per layer of a probe for `labels` (one per example), with the
        majority-class baseline and the mean accuracy of the same probe on untrained twins."""
        if len(examples) != len(labels):
            raise ReportgenError(f"probe {name!r}: {len(examples)} examples but {len(labels)} labels")
        batch = text_batch(self.model, self.tokenizer, examples, self.task, copies=True)
        _check_one_layout(batch, name)
        keys = [example_key(r) for r in batch.records]
        least = min_problems(self.test_fraction)
        if len(set(keys)) < least:
            raise ReportgenError(f"probe {name!r}: needs at least {least} distinct problems ({MIN_TEST} held out "
                                 f"at test_fraction {self.test_fraction}), got {len(set(keys))}; give more examples")
        y = np.array(labels)
        is_test = holdout_split(keys, self.test_fraction, self.seed)
        if np.unique(y[~is_test]).size < 2:
            raise ReportgenError(f"probe {name!r}: the training split has one class; give more examples")
        n_layers = self.model.cfg.n_layers
        sites = hp.stream(n_layers)
        rows = torch.arange(len(y), device=batch.tokens.device)
        feats = []
        for subject in [self.model, *untrained_twins(self.model, self.n_twins, self.seed)]:
            _, cache = run_with_cache(subject, batch, names=set(sites).__contains__)
            feats += [cache[s][rows, batch.pred_pos[:, 0]].double().cpu() for s in sites]
        classes = np.unique(y[~is_test])
        targets = class_targets(y, classes)
        ts = range(len(targets))
        pairs = torch.tensor([[f, t] for f in range(len(feats)) for t in ts])
        dec = logistic_decisions(torch.stack(feats), torch.as_tensor(targets), pairs, torch.as_tensor(~is_test),
                                 1.0, self.max_iter).numpy().reshape(len(feats), len(ts), -1)
        bal = is_unbalanced(y)
        acc = np.array([score(y[is_test], decide(d, classes), bal) for d in dec]).reshape(-1, len(sites))
        return {
            "name": name,
            "layout": template(batch.records[0]),
            "sites": sites,
            "layer_labels": ["embed"] + [f"L{l}" for l in range(n_layers)],
            "accuracy": acc[0].tolist(),
            "untrained": acc[1:].mean(0).tolist(),
            "majority": majority_score(y, is_test, bal),
            "balanced": bool(bal),
            "n_train": int((~is_test).sum()),
            "n_test": int(is_test.sum()),
        }


def _check_one_layout(batch: ExampleBatch, name: str) -> None:
    counts = Counter(template(r) for r in batch.records)
    if len(counts) > 1:
        shown = ", ".join(f"{t} ({n})" for t, n in counts.most_common(3))
        raise ReportgenError(f"probe {name!r}: the examples have {len(counts)} layouts ({shown}); a probe reads one "
                             f"position role, so give problems of one layout (same operand and answer lengths)")

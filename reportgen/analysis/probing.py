"""Linear probing (DESIGN §4.5): logistic-regression probes on frozen activations.

One probe per (label, answer column n, hook point): its features are the activation at the
position that predicts answer column n, one row per example that has that column, so columns
are probed separately (a probe never mixes positions). Labels come from the ground truth of
column n: carry_in, carry_out, digit (the answer digit), a_digit (a's digit), operator (only
where the data mix operators), cascade (the column belongs to a carry chain of length >= 2).

Protocol, shared by every probe: one shuffled split of the problems with a fixed seed (no
problem is in both train and test, whatever the column, even when it is given twice),
StandardScaler fitted on train only, held-out accuracy, balanced accuracy for a label whose
classes are unbalanced (largest class more than 1.5 times the smallest) in any column, so that
one label is scored the same way at every column, and the baselines
- majority: always predicting the training majority class (same metric);
- untrained: the same probe on an untrained twin's activations at the same site;
- operand: the same probe on the one-hot digits of both operands in every column (and the
  operator), i.e. operand identity alone, from which carries are linearly decodable;
- control (Hewitt & Liang): each input type (operator, a_n, b_n, carry_in of column n) gets a
  random label drawn from the real label's marginal; selectivity = accuracy - control accuracy.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional, get_args

import numpy as np
import torch

from reportgen.analysis.api import check_layers, pyplot, save_figure, task_of, text_batch
from reportgen.analysis.engine import run_with_cache, untrained_twin
from reportgen.analysis.examples import ExampleBatch, example_key
from reportgen.analysis.findings import ProbeResult, ProbingFindings
from reportgen.errors import ReportgenError
from reportgen.model.transformer import Transformer

Label = Literal["carry_in", "carry_out", "digit", "a_digit", "operator", "cascade"]
Hook = Literal["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"]
LABELS: tuple[str, ...] = get_args(Label)
OPS = ("+", "-", "*")
IMBALANCE_RATIO = 1.5


@dataclass
class ProbingConfig:
    """Which probes to fit and how (see the module docstring for the protocol)."""

    labels: list[Label] = field(default_factory=lambda: list(LABELS))
    hooks: list[Hook] = field(default_factory=lambda: ["hook_resid_pre", "hook_resid_mid", "hook_resid_post"])
    layers: Optional[list[int]] = None  # None: every layer
    n_examples: int = 300  # first n examples of the analysis batch
    test_fraction: float = 0.3
    max_iter: int = 200  # newton-cg iterations (it converges in ~10 on these problems)
    C: float = 1.0

    def __post_init__(self):
        if self.n_examples < 10:
            raise ReportgenError(f"probing n_examples must be at least 10, got {self.n_examples}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ReportgenError(f"probing test_fraction must be between 0 and 1, got {self.test_fraction}")
        if self.max_iter < 1 or self.C <= 0:
            raise ReportgenError("probing max_iter must be >= 1 and C > 0")


# ---------------------------------------------------------------- the probe core (numpy)
def holdout_split(keys: list, test_fraction: float, seed: int) -> np.ndarray:
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


def majority_score(y: np.ndarray, is_test: np.ndarray, balanced: bool) -> float:
    values, counts = np.unique(y[~is_test], return_counts=True)
    return score(y[is_test], np.full(is_test.sum(), values[counts.argmax()]), balanced)


def fit_score(X: np.ndarray, y: np.ndarray, is_test: np.ndarray, balanced: bool, max_iter: int, C: float) -> float:
    """Held-out score of a standardised logistic-regression probe (train on ~is_test)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if np.unique(y[~is_test]).size < 2:
        return majority_score(y, is_test, balanced)
    scaler = StandardScaler().fit(X[~is_test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = LogisticRegression(C=C, solver="newton-cg", max_iter=max_iter).fit(scaler.transform(X[~is_test]), y[~is_test])
    return score(y[is_test], clf.predict(scaler.transform(X[is_test])), balanced)


def control_labels(types: list[tuple], y: np.ndarray, seed) -> np.ndarray:
    """Hewitt & Liang control task: one random label per distinct input type, drawn from y's marginal."""
    values, counts = np.unique(y, return_counts=True)
    distinct = sorted(set(types))
    drawn = np.random.default_rng(seed).choice(values, size=len(distinct), p=counts / counts.sum())
    lookup = dict(zip(distinct, drawn))
    return np.array([lookup[t] for t in types])


# ---------------------------------------------------------------- ground truth per column
def column_label(record: dict, n: int, label: str):
    """Value of `label` for answer column n of a record."""
    col = record["labels"]["columns"][n]
    if label == "operator":
        return OPS.index(record["op"])
    if label == "a_digit":
        return col["a"]
    if label == "cascade":
        return int(col["cascade_len"] >= 2)
    return col[label]


def input_type(record: dict, n: int) -> tuple:
    """The control task's input type of column n: (operator, a_n, b_n, carry_in)."""
    col = record["labels"]["columns"][n]
    return (record["op"], col["a"], col["b"], col["carry_in"])


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


# ---------------------------------------------------------------- the analysis
@dataclass
class _Column:
    """The examples (rows) that have answer column n, and where it is predicted."""

    n: int
    rows: np.ndarray  # example indices
    pos: np.ndarray  # token index predicting column n in each of those examples
    records: list[dict]
    is_test: np.ndarray


def _columns(batch: ExampleBatch, n_use: int, is_test: np.ndarray) -> list[_Column]:
    cols = batch.columns[:n_use].cpu().numpy()
    mask = batch.answer_mask[:n_use].cpu().numpy()
    pos = batch.pred_pos[:n_use].cpu().numpy()
    out = []
    for n in sorted(set(cols[mask].tolist())):
        rows, slots = np.nonzero(mask & (cols == n))
        out.append(_Column(n, rows, pos[rows, slots], [batch.records[i] for i in rows], is_test[rows]))
    return out


def analyze_probing(
    batch: ExampleBatch, cache: dict, twin_cache: dict, cfg: ProbingConfig, layers: list[int], seed: int
) -> ProbingFindings:
    """Every configured probe on the first cfg.n_examples examples of the batch (DESIGN §4.5)."""
    with single_threaded_blas():
        return _analyze_probing(batch, cache, twin_cache, cfg, layers, seed)


def single_threaded_blas():
    """Tiny probe fits run an order of magnitude faster without BLAS threads competing with torch's."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1)


def _analyze_probing(
    batch: ExampleBatch, cache: dict, twin_cache: dict, cfg: ProbingConfig, layers: list[int], seed: int
) -> ProbingFindings:
    n_use = min(len(batch), cfg.n_examples)
    is_test = holdout_split([example_key(r) for r in batch.records[:n_use]], cfg.test_fraction, seed)
    columns = _columns(batch, n_use, is_test)
    targets = [_targets(col, cfg.labels, seed) for col in columns]
    balanced = {label for t in targets for label, (y, _) in t.items() if is_unbalanced(y)}
    probes = []
    for col, col_targets in zip(columns, targets):
        operand_X = operand_features(col.records)
        baselines = {
            label: (majority_score(y, col.is_test, label in balanced),
                    fit_score(operand_X, y, col.is_test, label in balanced, cfg.max_iter, cfg.C))
            for label, (y, _) in col_targets.items()
        }
        for l in layers:
            for hook in cfg.hooks:
                name = f"blocks.{l}.{hook}"
                X = cache[name][col.rows, col.pos].double().cpu().numpy()
                X_twin = twin_cache[name][col.rows, col.pos].double().cpu().numpy()
                for label, (y, y_control) in col_targets.items():
                    bal = label in balanced
                    fit = lambda X_, y_: fit_score(X_, y_, col.is_test, bal, cfg.max_iter, cfg.C)  # noqa: E731
                    acc, control = fit(X, y), fit(X, y_control)
                    majority, operand = baselines[label]
                    probes.append(ProbeResult(
                        label=label, hook=name, layer=l, position=f"predicts column {col.n}",
                        accuracy=acc, balanced=bal, majority=majority, control=control,
                        selectivity=acc - control, untrained=fit(X_twin, y), operand_baseline=operand,
                        n_train=int((~col.is_test).sum()), n_test=int(col.is_test.sum()),
                    ))
    return ProbingFindings(probes=probes, seed=seed)


def _targets(col: _Column, labels: list[str], seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per probe-able label: (labels, control labels). Labels constant in train are skipped."""
    types = [input_type(r, col.n) for r in col.records]
    out = {}
    for label in labels:
        y = np.array([column_label(r, col.n, label) for r in col.records])
        if np.unique(y[~col.is_test]).size < 2 or not col.is_test.any():
            continue
        out[label] = (y, control_labels(types, y, [seed, col.n, LABELS.index(label)]))
    return out


def plot_probe(findings: ProbingFindings, label: str, save_path=None) -> None:
    """`<probe>_results.png`: accuracy and baselines across sites, one panel per column."""
    rows = [p for p in findings.probes if p.label == label]
    positions = sorted({p.position for p in rows})
    plt = pyplot()
    fig, axes = plt.subplots(1, len(positions), figsize=(4.2 * len(positions), 3.4), squeeze=False, sharey=True)
    for ax, position in zip(axes[0], positions):
        ps = [p for p in rows if p.position == position]
        x = range(len(ps))
        for key, style in (("accuracy", "o-"), ("control", "s--"), ("untrained", "^--"),
                           ("operand_baseline", "d:"), ("majority", "k:")):
            ax.plot(x, [getattr(p, key) for p in ps], style, label=key, markersize=4)
        ax.set_xticks(list(x), [p.hook.replace("blocks.", "L").replace(".hook_", " ") for p in ps],
                      rotation=60, fontsize=7)
        ax.set_title(position, fontsize=9)
        ax.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("held-out (balanced) accuracy")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(f"Probe: {label}")
    save_figure(fig, save_path)


class ProbingClassifier:
    """Probes for user-given labels on problems given as text.

    `probe_across_layers` probes the position that predicts the first written answer digit,
    at the embedding (`blocks.0.hook_resid_pre`) and after every block (`hook_resid_post`).
    """

    def __init__(self, model: Transformer, tokenizer, task: Optional[dict] = None, seed: int = 0,
                 test_fraction: float = 0.3, max_iter: int = 200):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)
        self.seed, self.test_fraction, self.max_iter = seed, test_fraction, max_iter

    def probe_across_layers(self, examples: list[str], labels: list, name: str) -> dict:
        """Held-out accuracy per layer of a probe for `labels` (one per example), with the
        majority-class and untrained-model baselines at the same sites."""
        if len(examples) != len(labels):
            raise ReportgenError(f"probe {name!r}: {len(examples)} examples but {len(labels)} labels")
        batch = text_batch(self.model, self.tokenizer, examples, self.task, copies=True)
        y = np.array(labels)
        is_test = holdout_split([example_key(r) for r in batch.records], self.test_fraction, self.seed)
        if not is_test.any():
            raise ReportgenError(f"probe {name!r}: needs at least two distinct problems (copies share a split side)")
        if np.unique(y[~is_test]).size < 2:
            raise ReportgenError(f"probe {name!r}: the training split has one class; give more examples")
        n_layers = self.model.cfg.n_layers
        sites = ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]
        _, cache = run_with_cache(self.model, batch, names=set(sites).__contains__)
        _, twin = run_with_cache(untrained_twin(self.model, self.seed), batch, names=set(sites).__contains__)
        rows = torch.arange(len(y), device=batch.tokens.device)
        feats = lambda c, s: c[s][rows, batch.pred_pos[:, 0]].double().cpu().numpy()  # noqa: E731
        bal = is_unbalanced(y)
        fit = lambda X: fit_score(X, y, is_test, bal, self.max_iter, 1.0)  # noqa: E731
        with single_threaded_blas():
            accuracy = [fit(feats(cache, s)) for s in sites]
            untrained = [fit(feats(twin, s)) for s in sites]
        return {
            "name": name,
            "sites": sites,
            "layer_labels": ["embed"] + [f"L{l}" for l in range(n_layers)],
            "accuracy": accuracy,
            "untrained": untrained,
            "majority": majority_score(y, is_test, bal),
            "balanced": bal,
            "n_train": int((~is_test).sum()),
            "n_test": int(is_test.sum()),
        }


def check_probe_layers(cfg: ProbingConfig, n_layers: int) -> list[int]:
    return check_layers(range(n_layers) if cfg.layers is None else cfg.layers, n_layers, "probing layer")

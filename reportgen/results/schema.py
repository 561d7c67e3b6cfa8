"""The results object: everything a report shows, typed and versioned, free of torch.

A `Report` holds one `ModelResults` per analysed model (the first is the one given with
`--checkpoint`, the rest those given with `--compare`) and the `Comparison` facts computed from
them (`reportgen.results.compare`). `reportgen.results.store` saves it as results.json plus
arrays.npz and loads it back exactly; the renderer reads nothing else.

Dict order is not part of the data: results.json sorts keys, so a loaded report lists dict
entries (e.g. `by_stratum`) alphabetically. Order strata with `reportgen.data.arithmetic.STRATA`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from reportgen.findings import AnalysisFindings, Estimate

SCHEMA_VERSION = 7


@dataclass
class Provenance:
    """Where a model's results came from: enough to reproduce them."""

    checkpoint: str  # path as given on the command line
    file_name: str
    sha256: str  # of the checkpoint file
    model_config: dict  # n_layers, n_heads, d_model, d_mlp, n_ctx, d_vocab, ln_eps
    train_config: dict
    task: dict  # task, min_digits, max_digits, with_steps, answer_order
    seed: Optional[int]  # training seed
    data_manifest_hash: Optional[str]
    versions_training: dict[str, str]  # library versions when the checkpoint was written
    versions_analysis: dict[str, str]  # library versions when the analyses ran
    analysis_config: dict
    examples: list[str]  # problems asked for (--examples, else the config's); [] when the analyses chose
    reportgen_version: str


@dataclass
class Accuracy:
    """Greedy-decoding accuracy on a fresh stratified test set of the model's own task.

    Exact-match intervals are 95% Wilson intervals (`reportgen.train.evaluate`).
    """

    exact_match: Estimate
    digit_accuracy: float  # mean fraction of correct final-answer digits
    by_stratum: dict[str, Estimate]  # exact match per difficulty stratum
    n: int
    seed: int  # seed of the test set
    unseen: bool  # the test set holds none of the model's training data (its train, val and test splits)


@dataclass
class HarderTest:
    """Accuracy on problems harder than any the model trained on (every operand `digits` long),
    which tells apart models that both answer their own task perfectly."""

    digits: int
    accuracy: Accuracy


@dataclass
class TrainingCurve:
    """The training history saved in the checkpoint (empty lists when it holds none)."""

    steps: list[int]
    train_loss: list[float]
    val_exact_match: list[float]


@dataclass
class ModelResults:
    """One model: what it is, how well it does, and what the six analyses found."""

    name: str  # slug unique within the report, [a-z0-9_-], from the run directory; safe in paths/URLs
    label: str  # human-readable name (the run directory name); escape it in HTML
    provenance: Provenance
    accuracy: Accuracy
    training: TrainingCurve
    findings: AnalysisFindings
    harder: Optional[HarderTest] = None


@dataclass
class ComparableGroup:
    """Models whose results may be compared on one aspect, and what they share."""

    aspect: str  # "accuracy", "heads", "layers" or "positions" (see compare.ASPECTS)
    basis: str  # plain-language description of what they share, e.g. "add, 1-3 digits"
    models: list[str]  # model names, in report order

    def describe(self, labels: Optional[dict[str, str]] = None) -> str:
        """'a, b (add, 1-3 digits)': its models (by their `labels` where given) and their basis."""
        return f"{', '.join((labels or {}).get(n, n) for n in self.models)} ({self.basis})"


@dataclass
class StratumLeader:
    """Among accuracy-comparable models: who is best on one stratum, and is it more than noise."""

    stratum: str  # a stratum name, or "all" for the whole test set
    models: list[str]  # the comparable models that have this stratum
    best: str
    exact_match: Estimate  # the best model's
    runner_up: str
    runner_up_exact_match: Estimate
    ci_overlap: bool  # the two 95% intervals overlap: the difference may be noise


@dataclass
class Comparison:
    """Which models are comparable for what, the differences that matter, and plain notes.

    `groups` partitions the models once per aspect (a model alone in its group is comparable
    with no other on that aspect); `notes` says in words what is not comparable and why.
    """

    groups: list[ComparableGroup]
    leaders: list[StratumLeader]
    notes: list[str]


@dataclass
class Report:
    """The whole report; `models[0]` is the primary model (`--checkpoint`)."""

    schema_version: int
    title: str
    generated_at: str  # ISO 8601 UTC from SOURCE_DATE_EPOCH, or the build's UTC date; "" undated
    models: list[ModelResults]
    comparison: Comparison

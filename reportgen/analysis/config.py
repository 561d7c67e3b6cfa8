"""`configs/interpretability.yaml` as a typed config: which analyses run, on which examples, and
the settings of each analysis. Unknown keys and wrong types are one-line errors naming the key.

Every analysis's config lives here, apart from the analysis itself, so that the command line and
the build read and check a config without importing torch or scipy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from reportgen import hooks as hp
from reportgen.analysis.pairs import PAIR_KINDS
from reportgen.configfile import from_dict, load_yaml
from reportgen.errors import ReportgenError
from reportgen.catalog import ANALYSIS_NAMES

DEFAULT_MEMORY_MB = 1500  # memory_budget_mb: fits a laptop beside a browser
MAX_EXAMPLES = 5000  # one cached forward pass holds every activation of every example in memory
AnalysisName = Literal[ANALYSIS_NAMES]
ANALYSES: tuple[str, ...] = ANALYSIS_NAMES  # the names, in the catalog's order

PairKind = Literal["carry_flip", "sum_flip", "operator_flip"]
Site = Literal["resid_pre", "attn_out", "mlp_out", "head"]
Direction = Literal["denoise", "noise"]
SITES: tuple[str, ...] = get_args(Site)
DIRECTIONS: tuple[str, ...] = get_args(Direction)
Method = Literal["zero", "mean", "resample"]
METHODS: tuple[str, ...] = get_args(Method)
Label = Literal["carry_in", "carry_out", "digit", "a_digit", "operator", "cascade"]
Hook = Literal[hp.RESID_PRE, hp.RESID_MID, hp.RESID_POST, hp.ATTN_OUT, hp.MLP_OUT]  # the sites probes read (d_model wide)
LABELS: tuple[str, ...] = get_args(Label)
MIN_TEST = 12  # held-out problems below which a probe's accuracy means little
MIN_TRAIN = 20


def at_least(cfg, section: str, minimum: float, *names: str) -> None:
    """Refuse the first of `names` below `minimum`, naming its key (e.g. 'circuits n_pairs')."""
    for name in names:
        if getattr(cfg, name) < minimum:
            key = f"{section} {name}".strip()
            raise ReportgenError(f"{key} must be >= {minimum}, got {getattr(cfg, name)}")


@dataclass
class AttentionConfig:
    layers_to_analyze: Optional[list[int]] = None  # None: every layer
    per_head_figures: bool = True  # also write one figure per head (reportgen analyze)
    role_margin: float = 0.2  # mass a head's key group needs above chance and the untrained twins to be its role

    def __post_init__(self):
        if not 0 <= self.role_margin < 1:
            raise ReportgenError(f"attention role_margin must be between 0 and 1, got {self.role_margin}")


@dataclass
class PatchingConfig:
    pair_kinds: list[PairKind] = field(default_factory=lambda: list(PAIR_KINDS))
    n_pairs: int = 64  # per kind, drawn from the analysis batch
    sites: list[Site] = field(default_factory=lambda: list(SITES))
    directions: list[Direction] = field(default_factory=lambda: list(DIRECTIONS))
    min_denominator: float = 0.5  # |LD_clean - LD_corrupt| below this (in logits) drops the pair
    attribution_top_k: int = 10  # attribution candidates confirmed by exact patching
    attribution_kind: PairKind = "carry_flip"  # the pair kind attribution patching ranks
    max_rows: int = 512  # rows of one patched forward pass (expanded batch is chunked)

    def __post_init__(self):
        at_least(self, "patching", 1, "n_pairs", "max_rows")
        at_least(self, "patching", 0, "min_denominator", "attribution_top_k")


@dataclass
class CircuitConfig:
    n_pairs: int = 128  # carry-flip and sum-flip pairs per target token
    min_pairs: int = 10  # pairs a column needs (of each kind compared) to be tested
    min_recovery: float = 0.1  # pooled recovery a carry or operator head needs
    operator_pairs: int = 64
    neuron_min_recovery: float = 0.05  # pooled recovery a carry neuron needs
    max_neuron_candidates: int = 16  # correlational candidates tested causally (most selective first)
    null_neurons: int = 32  # random neurons per layer patched as the in-model null of the neuron test
    neuron_min_selectivity: float = 0.1  # |AUROC - 0.5| a correlational candidate needs besides significance
    fdr: float = 0.05  # Benjamini-Hochberg false discovery rate of the correlational screen
    neuron_permutations: int = 200  # label shuffles for the reported null AUROC
    max_listed_neurons: int = 20  # correlational candidates listed in the report
    position_min_mass: float = 0.5  # fixed-position attention mass a position or delimiter head needs
    position_margin: float = 0.2  # lower bound of that mass minus the untrained twins' a confirmed head needs
    max_rows: int = 512

    def __post_init__(self):
        if not 0 < self.fdr < 1:
            raise ReportgenError(f"circuits fdr must be between 0 and 1, got {self.fdr}")
        at_least(self, "circuits", 1, "n_pairs", "min_pairs", "operator_pairs", "max_rows", "neuron_permutations",
                 "null_neurons")
        at_least(self, "circuits", 0, "max_neuron_candidates", "max_listed_neurons")


@dataclass
class ProbingConfig:
    """Which probes to fit and how (see analysis.probing's docstring for the protocol)."""

    labels: list[Label] = field(default_factory=lambda: ["carry_in", "carry_out", "cascade", "operator"])
    scratchpad_labels: list[Label] = field(default_factory=lambda: ["carry_in", "carry_out"])
    # Per layer; blocks.{l}.hook_resid_pre equals blocks.{l-1}.hook_resid_post and is probed once.
    hooks: list[Hook] = field(default_factory=lambda: [hp.RESID_MID, hp.RESID_POST])
    layers: Optional[list[int]] = None  # None: every layer
    layouts: int = 2  # the most common layouts of the longest operands
    n_examples: int = 300  # held-out problems drawn per layout
    test_fraction: float = 0.4
    max_iter: int = 30  # Newton iterations (they converge in ~6-10 on these problems)
    C: float = 1.0  # inverse L2 regularisation strength
    alpha: float = 0.05  # family-wise error rate of the confirmations, over all probes of a model

    def __post_init__(self):
        if not 0.0 < self.test_fraction < 1.0:
            raise ReportgenError(f"probing test_fraction must be between 0 and 1, got {self.test_fraction}")
        least = min_problems(self.test_fraction)
        if self.n_examples < least:
            raise ReportgenError(f"probing n_examples must be at least {least} (to hold out {MIN_TEST} problems "
                                 f"at test_fraction {self.test_fraction}), got {self.n_examples}")
        if self.layouts < 1:
            raise ReportgenError(f"probing layouts must be at least 1, got {self.layouts}")
        if self.max_iter < 1 or self.C <= 0:
            raise ReportgenError("probing max_iter must be >= 1 and C > 0")
        if not 0.0 < self.alpha < 1.0:
            raise ReportgenError(f"probing alpha must be between 0 and 1, got {self.alpha}")


def min_problems(test_fraction: float) -> int:
    """Fewest distinct problems that hold out MIN_TEST and train on MIN_TRAIN."""
    n = MIN_TEST + MIN_TRAIN
    while round(n * test_fraction) < MIN_TEST or n - round(n * test_fraction) < MIN_TRAIN:
        n += 1
    return n


@dataclass
class InterventionConfig:
    methods: list[Method] = field(default_factory=lambda: ["mean", "resample", "zero"])
    default_method: Method = "mean"  # ranks heads for cumulative ablation
    heads: bool = True  # ablate each head
    layers: bool = True  # ablate each layer's attention and MLP
    cumulative: bool = True  # ablate the top-1, top-2, ... heads together
    cumulative_max_k: int = 0  # 0: up to every head
    reference_size: int = 32  # reference examples per template (mean and resample)
    max_rows: int = 512  # examples x components in one forward pass

    def __post_init__(self):
        if not self.methods:
            raise ReportgenError("interventions methods must name at least one of zero, mean, resample")
        if self.default_method not in self.methods:
            raise ReportgenError(f"interventions default_method {self.default_method!r} must be one of methods {self.methods}")
        at_least(self, "interventions", 1, "reference_size", "max_rows")
        at_least(self, "interventions", 0, "cumulative_max_k")


# Untrained twins per analysis: with 3, an untrained head's prediction bound at a Bonferroni level
# (circuits.prediction_bound, from the 12 heads of a demo layer) was too wide for add3_steps's
# carry reader to clear; with 5 it clears, and the twins still confirm nothing.
UNTRAINED_TWINS = 5


@dataclass
class AnalysisConfig:
    """Everything `reportgen analyze` and the report's analysis stage can be told."""

    enabled: list[AnalysisName] = field(default_factory=lambda: list(ANALYSES))
    n_examples: int = 300  # generated stratified examples the aggregate analyses run on
    seed: int = 0
    untrained_twins: int = UNTRAINED_TWINS  # freshly initialised models of the same shape every confirming test also runs on
    harder_test_digits: int = 0  # also test on operands of this many digits (longer than trained); 0: off
    examples: list[str] = field(default_factory=list)  # shown one by one; --examples overrides
    n_example_pages: int = 8  # generated examples shown one by one when none are given
    max_pdf_examples: int = 8  # cap on the examples the PDF report shows
    # Memory for the chunks of batched passes (patching and neuron sweeps, ablations, free
    # generation, reference sets): they are cut so that one chunk's activations take at most a
    # quarter of it. Results do not depend on it (to float rounding).
    memory_budget_mb: int = DEFAULT_MEMORY_MB
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    patching: PatchingConfig = field(default_factory=PatchingConfig)
    interventions: InterventionConfig = field(default_factory=InterventionConfig)
    circuits: CircuitConfig = field(default_factory=CircuitConfig)

    def __post_init__(self):
        at_least(self, "", 0, "n_examples", "n_example_pages", "max_pdf_examples")
        if self.harder_test_digits < 0:
            raise ReportgenError(f"harder_test_digits must be >= 0 (0 turns the harder test off), got {self.harder_test_digits}")
        if self.untrained_twins < 2:
            raise ReportgenError(f"untrained_twins must be at least 2 (each twin's null is judged against the "
                                 f"others), got {self.untrained_twins}")
        if self.memory_budget_mb < 1:
            raise ReportgenError(f"memory_budget_mb must be at least 1 (megabytes), got {self.memory_budget_mb}")
        if self.n_examples > MAX_EXAMPLES:
            raise ReportgenError(f"n_examples must be at most {MAX_EXAMPLES} (the analyses hold every activation "
                                 f"of every example in memory), got {self.n_examples}")


def load_analysis_config(path: Optional[str | Path]) -> AnalysisConfig:
    """The config at `path`, or the defaults when path is None."""
    if path is None:
        return AnalysisConfig()
    return from_dict(AnalysisConfig, load_yaml(path), str(path))

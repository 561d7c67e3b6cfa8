"""`configs/interpretability.yaml` as a typed config: which analyses run, on which examples, and
the settings of each analysis. Unknown keys and wrong types are one-line errors naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from reportgen.analysis.circuits import CircuitConfig
from reportgen.analysis.engine import DEFAULT_MEMORY_MB
from reportgen.analysis.interventions import InterventionConfig
from reportgen.analysis.patching import PatchingConfig
from reportgen.analysis.probing import ProbingConfig
from reportgen.configfile import from_dict, load_yaml
from reportgen.errors import ReportgenError

MAX_EXAMPLES = 5000  # one cached forward pass holds every activation of every example in memory
Analysis = Literal["attention", "patching", "logit_lens", "circuits", "probing", "interventions"]
ANALYSES: tuple[str, ...] = get_args(Analysis)


@dataclass
class AttentionConfig:
    layers_to_analyze: Optional[list[int]] = None  # None: every layer
    per_head_figures: bool = True  # also write one figure per head (reportgen analyze)
    role_margin: float = 0.2  # mass a head's key group needs above chance and the untrained twins to be its role

    def __post_init__(self):
        if not 0 <= self.role_margin < 1:
            raise ReportgenError(f"attention role_margin must be between 0 and 1, got {self.role_margin}")


@dataclass
class AnalysisConfig:
    """Everything `reportgen analyze` and the report's analysis stage can be told."""

    enabled: list[Analysis] = field(default_factory=lambda: list(ANALYSES))
    n_examples: int = 300  # generated stratified examples the aggregate analyses run on
    seed: int = 0
    untrained_twins: int = 3  # freshly initialised models of the same shape every confirming test also runs on
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
        for name in ("n_examples", "n_example_pages", "max_pdf_examples"):
            if getattr(self, name) < 0:
                raise ReportgenError(f"{name} must be >= 0, got {getattr(self, name)}")
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

"""The six analyses, listed once: the config's `enabled` keys, `reportgen analyze`'s flags and
output directories, the report's sections and the comparison's list all come from ANALYSES.

Pure Python (no numpy), so the command line can build its parser from it without slowing its start.
Each name is also a field of findings.AnalysisFindings (a test holds the two to the same list).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Analysis:
    """One analysis as the config, the command line and the report name it."""

    name: str  # AnalysisFindings attribute, config key and `reportgen analyze` output directory
    section: str  # the report's section id (a URL fragment)
    title: str  # the report's section title

    @property
    def flag(self) -> str:
        """`reportgen analyze`'s option that runs it."""
        return "--" + self.name.replace("_", "-")


ANALYSES: tuple[Analysis, ...] = (
    Analysis("attention", "attention", "Attention patterns"),
    Analysis("patching", "patching", "Activation patching"),
    Analysis("logit_lens", "logit-lens", "Logit lens"),
    Analysis("circuits", "circuits", "Circuits"),
    Analysis("probing", "probing", "Linear probes"),
    Analysis("interventions", "ablations", "Ablations"),
)
ANALYSIS_NAMES: tuple[str, ...] = tuple(a.name for a in ANALYSES)

"""The results stage: the typed, versioned results object and its files (torch-free)."""

from reportgen.results.compare import compare_models
from reportgen.results.schema import (
    SCHEMA_VERSION,
    Accuracy,
    Comparison,
    ModelResults,
    Provenance,
    Report,
    TrainingCurve,
)
from reportgen.results.store import load_results, save_results

__all__ = [
    "SCHEMA_VERSION", "Accuracy", "Comparison", "ModelResults", "Provenance", "Report", "TrainingCurve",
    "compare_models", "load_results", "save_results",
]

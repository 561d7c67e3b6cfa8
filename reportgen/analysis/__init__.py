"""The six analyses and their public API.

Imports are lazy (module `__getattr__`) so that `reportgen.analysis.config`, which the command
line and the build read before any analysis runs, can be imported without importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_model_and_tokenizer": "api",
    "AttentionAnalyzer": "attention",
    "ActivationPatcher": "patching",
    "LogitLens": "logit_lens",
    "CircuitDiscovery": "circuits",
    "ProbingClassifier": "probing",
    "InterventionAnalyzer": "interventions",
    "AnalysisConfig": "config",
    "load_analysis_config": "config",
    "analyze": "run",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)

"""reportgen: train small arithmetic transformers, analyse how they compute, and report it.

The public analysis API keeps the original toolkit's names. It is loaded lazily so that
torch-free parts (the data stage, `reportgen render`) never import torch.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "load_model_and_tokenizer": "reportgen.analysis.api",
    "AttentionAnalyzer": "reportgen.analysis.attention",
    "ActivationPatcher": "reportgen.analysis.patching",
    "LogitLens": "reportgen.analysis.logit_lens",
    "CircuitDiscovery": "reportgen.analysis.circuits",
    "ProbingClassifier": "reportgen.analysis.probing",
    "InterventionAnalyzer": "reportgen.analysis.interventions",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")

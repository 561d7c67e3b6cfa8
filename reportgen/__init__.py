"""reportgen: train small arithmetic transformers, analyse how they compute, and report it.

The public analysis API keeps the original toolkit's names; they are `reportgen.analysis`'s lazy
exports, so torch-free parts (the data stage, `reportgen render`) never import torch.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["ActivationPatcher", "AttentionAnalyzer", "CircuitDiscovery", "InterventionAnalyzer", "LogitLens",
           "ProbingClassifier", "load_model_and_tokenizer"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("reportgen.analysis"), name)
    raise AttributeError(f"module 'reportgen' has no attribute {name!r}")

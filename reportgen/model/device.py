"""The torch device a command runs on, checked once for every command that takes --device."""

from __future__ import annotations

import torch

from reportgen.errors import ReportgenError


def resolve_device(name: str) -> torch.device:
    """torch.device for 'cpu' or 'cuda'; a one-line error for another name or a missing GPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ReportgenError("device cuda was requested but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ReportgenError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)

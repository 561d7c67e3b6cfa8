"""Training configuration: data to train on, model shape, optimisation and evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Literal, Optional

from reportgen.configfile import check_size, from_dict, load_yaml, yaml_where
from reportgen.errors import ReportgenError
from reportgen.model.transformer import ModelConfig


@dataclass
class DataConfig:
    """Either an existing `reportgen data` directory (`dir`) or a data set to generate."""

    dir: Optional[str] = None
    task: Literal["add", "sub", "mul", "addsub"] = "add"
    instances: int = 20000
    max_digits: int = 3
    min_digits: int = 1
    with_steps: bool = False
    answer_order: Literal["plain", "reversed"] = "plain"
    stratified_fraction: float = 0.5
    # Draw training batches with equal weight per (len(a), len(b)) pair: short operands have few
    # distinct questions, so under uniform draws a model rarely sees them and fails on them.
    balance_lengths: bool = False


MAX_BATCH_SIZE = 65536


@dataclass
class OptimConfig:
    lr: float = 3e-3
    min_lr: float = 1e-4
    weight_decay: float = 0.1
    batch_size: int = 128
    warmup_steps: int = 100
    max_steps: int = 4000
    grad_clip: float = 1.0

    def __post_init__(self):
        _check("optim", self, positive=("lr", "batch_size", "max_steps", "grad_clip"),
               non_negative=("min_lr", "weight_decay", "warmup_steps"))
        if self.batch_size > MAX_BATCH_SIZE:
            raise ReportgenError(f"optim.batch_size must be at most {MAX_BATCH_SIZE} (a batch is held in memory "
                                 f"with every activation for the backward pass), got {self.batch_size}")


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval_every: int = 200
    eval_instances: int = 1000  # validation examples decoded at each evaluation
    stop_at_exact_match: float = 1.0  # stop once validation exact match reaches this
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        _check("", self, positive=("eval_every", "eval_instances"), non_negative=("seed",))
        if not 0 < self.stop_at_exact_match <= 1:
            raise ReportgenError(f"stop_at_exact_match must be in (0, 1], got {self.stop_at_exact_match}")


def _check(section: str, cfg, positive: tuple[str, ...], non_negative: tuple[str, ...]) -> None:
    """Range checks that YAML typing cannot express, naming the bad key. Every number must be
    finite: YAML reads .inf and .nan as floats, and an infinite learning rate trains NaN weights."""
    prefix = f"{section}." if section else ""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ReportgenError(f"{prefix}{f.name} must be a finite number, got {value}")
    for name in positive:
        if not getattr(cfg, name) > 0:
            raise ReportgenError(f"{prefix}{name} must be positive, got {getattr(cfg, name)}")
    for name in non_negative:
        if not getattr(cfg, name) >= 0:
            raise ReportgenError(f"{prefix}{name} must not be negative, got {getattr(cfg, name)}")


def load_train_config(path: str) -> TrainConfig:
    """Read and validate a training YAML; errors name the bad key."""
    return from_dict(TrainConfig, load_yaml(path), path)


def apply_overrides(cfg_dict: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` overrides (YAML-parsed values) to a config mapping."""
    import yaml

    for item in overrides:
        if "=" not in item:
            raise ReportgenError(f"override {item[:80]!r} must look like section.key=value, e.g. optim.lr=0.001")
        key, value = item.split("=", 1)
        node = cfg_dict
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ReportgenError(f"override {item[:80]!r}: {p[:40]!r} is not a section")
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ReportgenError(f"override {item[:80]!r}: the value is malformed YAML{yaml_where(e)}; "
                                 "quote it or fix it") from None
        except RecursionError:
            raise ReportgenError(f"override {item[:80]!r}: the value is nested too deeply") from None
        check_size(node[leaf], f"override {item[:80]!r}")
    return cfg_dict

"""A sweep file: a base training config, a grid of overrides, seeds, a snapshot schedule and the
analysis config. Everything is validated here, before any work: an unknown key, an empty grid or an
override that makes a bad training config is a one-line error naming it.

    train_config: train.yaml          # relative to the sweep file; omitted: reportgen's defaults
    train: {optim.max_steps: 2000}    # overrides for every run
    grid:                             # every combination of the axes below is a grid point
      model.n_layers: [1, 2]          # an axis over one `section.key`
      format:                         # a named axis whose values set several keys at once
        plain: {data.with_steps: false, data.answer_order: plain}
        scratchpad: {data.with_steps: true}
    seeds: [0, 1, 2]
    snapshots: {first: 100, factor: 2}  # keep the model at steps 100, 200, 400, ... (<= max_steps)
    analysis_config: interpretability.yaml
    analysis: {n_examples: 200}       # overrides of the analysis config
    retries: 1
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from reportgen.configfile import from_dict, load_yaml, to_dict
from reportgen.errors import ReportgenError

TARGET_EXACT_MATCH = 0.99  # "steps to reach 99% validation exact match"


@dataclass
class SnapshotConfig:
    """Steps at which every run keeps its model: log-spaced from `first` by `factor` up to the run's
    optim.max_steps, plus any listed `steps`. first: 0 and no steps: no snapshots."""

    first: int = 0
    factor: float = 2.0
    steps: list[int] = field(default_factory=list)

    def __post_init__(self):
        if self.first < 0:
            raise ReportgenError(f"snapshots.first must not be negative, got {self.first}")
        if not self.factor > 1:
            raise ReportgenError(f"snapshots.factor must be above 1 (each snapshot later than the last), got {self.factor}")
        bad = [s for s in self.steps if s <= 0]
        if bad:
            raise ReportgenError(f"snapshots.steps must be positive training steps, got {bad[0]}")

    def schedule(self, max_steps: int) -> list[int]:
        """The snapshot steps of a run of `max_steps` steps, ascending."""
        steps = {s for s in self.steps if s <= max_steps}
        if self.first:
            k = 0
            while (s := int(round(self.first * self.factor ** k))) <= max_steps:
                steps.add(s)
                k += 1
        return sorted(steps)


@dataclass
class SweepConfig:
    grid: dict[str, Any] = field(default_factory=dict)
    title: Optional[str] = None
    train_config: Optional[str] = None
    train: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    snapshots: SnapshotConfig = field(default_factory=SnapshotConfig)
    analysis_config: Optional[str] = None
    analysis: dict[str, Any] = field(default_factory=dict)
    retries: int = 1  # further attempts of a failing job before it is recorded as failed

    def __post_init__(self):
        if not self.grid:
            raise ReportgenError("grid is empty; give at least one axis, e.g. grid: {data.answer_order: [plain, reversed]}")
        if not self.seeds:
            raise ReportgenError("seeds is empty; give at least one, e.g. seeds: [0, 1, 2]")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ReportgenError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.retries < 0:
            raise ReportgenError(f"retries must not be negative, got {self.retries}")


@dataclass(frozen=True)
class GridPoint:
    name: str  # slug, unique in the sweep: [a-z0-9_-]
    label: str  # the axis values in words, e.g. "format=plain, model.n_layers=1"
    overrides: dict  # section.key -> value, the grid's on top of the sweep's `train`


@dataclass
class RunSpec:
    """One training run: a grid point with a seed."""

    name: str  # "<point>-s<seed>", unique in the sweep
    point: str
    seed: int
    train_config: Any  # TrainConfig
    snapshot_steps: list[int]


@dataclass
class Sweep:
    """A validated sweep: what to train and how to analyse it."""

    path: Path
    config: SweepConfig
    points: list[GridPoint]
    runs: list[RunSpec]
    analysis_config: Any  # AnalysisConfig
    title: str

    def to_dict(self) -> dict:
        """The sweep as recorded in the study: the file's settings and every run's overrides."""
        return {"file": str(self.path), "config": to_dict(self.config),
                "points": [{"name": p.name, "label": p.label, "overrides": p.overrides} for p in self.points],
                "analysis_config": to_dict(self.analysis_config)}


def load_sweep(path: str | Path, device: Optional[str] = None) -> Sweep:
    """Read and validate a sweep file; every run's training config and the analysis config are
    built here, so a bad key fails now. `device` (cpu/cuda) overrides every run's."""
    from reportgen.analysis.config import AnalysisConfig
    from reportgen.train.config import TrainConfig

    path = Path(path)
    cfg = from_dict(SweepConfig, load_yaml(path), str(path))
    base = _base_train_dict(cfg, path)
    if "seed" in cfg.train or "seed" in cfg.grid:
        raise ReportgenError(f"{path}: seeds are set by `seeds`, not by a train or grid key")
    train = {**cfg.train, **({"device": device} if device else {})}
    points = _grid_points(cfg.grid, str(path))
    runs = []
    for point in points:
        where = f"{path} (grid point {point.label})"
        raw = _with_overrides(base, {**train, **point.overrides}, where)
        for seed in cfg.seeds:
            tc = from_dict(TrainConfig, {**raw, "seed": seed}, where)
            runs.append(RunSpec(f"{point.name}-s{seed}", point.name, seed, tc, cfg.snapshots.schedule(tc.optim.max_steps)))
    analysis_raw = load_yaml(_relative(path, cfg.analysis_config)) if cfg.analysis_config else {}
    where = f"{path} (analysis)"
    analysis = from_dict(AnalysisConfig, _with_overrides(analysis_raw, cfg.analysis, where), where)
    title = cfg.title or f"Study: {path.stem}"
    return Sweep(path, cfg, points, runs, analysis, title)


def _relative(sweep_path: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else sweep_path.parent / p


def _base_train_dict(cfg: SweepConfig, path: Path) -> dict:
    return load_yaml(_relative(path, cfg.train_config)) if cfg.train_config else {}


def _with_overrides(base: dict, overrides: dict[str, Any], where: str) -> dict:
    """A deep copy of `base` with each `section.key` set to its value."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ReportgenError(f"{where}: bad override key {key!r}; write section.key, e.g. data.answer_order")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ReportgenError(f"{where}: override {key!r}: {p!r} is not a section")
        node[leaf] = copy.deepcopy(value)
    return out


def _grid_points(grid: dict[str, Any], where: str) -> list[GridPoint]:
    """The product of the grid's axes, in the order written."""
    axes = [_axis(name, values, where) for name, values in grid.items()]
    points = []
    for combo in itertools.product(*axes):
        overrides: dict = {}
        for _, _, o in combo:
            overrides.update(o)
        label = ", ".join(lab for lab, _, _ in combo)
        points.append((label, "_".join(slug for _, slug, _ in combo), overrides))
    from reportgen.names import unique_names

    return [GridPoint(n, label, o) for (label, _, o), n in zip(points, unique_names([s for _, s, _ in points]))]


def _axis(name: Any, values: Any, where: str) -> list[tuple[str, str, dict]]:
    """(label, slug part, overrides) for each value of one grid axis."""
    if not isinstance(name, str) or not name:
        raise ReportgenError(f"{where}: grid axis {name!r} must be a section.key or a name")
    if isinstance(values, dict):  # a named axis: value name -> {section.key: value}
        if not values:
            raise ReportgenError(f"{where}: grid axis {name!r} has no values")
        out = []
        for value_name, overrides in values.items():
            if overrides is None:
                overrides = {}
            if not isinstance(overrides, dict):
                raise ReportgenError(f"{where}: grid axis {name!r}, value {value_name!r} must map section.key to "
                                     f"values, e.g. {{data.with_steps: true}}; got {overrides!r}")
            if "seed" in overrides:
                raise ReportgenError(f"{where}: seeds are set by `seeds`, not by grid axis {name!r}")
            out.append((f"{name}={value_name}", str(value_name), dict(overrides)))
        return out
    if not isinstance(values, list):
        raise ReportgenError(f"{where}: grid axis {name!r} must be a list of values (e.g. [1, 2]) or a mapping of "
                             f"named values to overrides; got {values!r}")
    if not values:
        raise ReportgenError(f"{where}: grid axis {name!r} has no values; give at least one")
    leaf = name.rsplit(".", 1)[-1]
    return [(f"{name}={_text(v)}", f"{leaf}-{_text(v)}", {name: v}) for v in values]


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isfinite(v):
        return f"{v:g}"
    return str(v)

"""A synthetic `Study` (no training, no torch) whose numbers are known by construction, for the
study report's tests and its render benchmark.

Grid points cycle through three answer formats. Validation exact match follows 1 - exp(-step/r)
with r by format (scratchpad 80, reversed 160, plain 2000, each times 1 + 0.02 x seed), evaluated
every 100 steps up to 1600 (a run stops once it reaches 99%, as training does). So every
scratchpad run reaches 99% at step 400, every reversed run at step 800, and no plain run does.
Roles: a position head in layer 0 is confirmed in every seed of every point from step 200 on; a
carry head in layer 1, column 1 only in seeds 0 and 1 of scratchpad points, from step 400 on.
"""

from __future__ import annotations

import math

from reportgen.findings import Estimate
from reportgen.data.arithmetic import STRATA
from reportgen.results.study import FINAL, RoleHit, Snapshot, Study, StudyPoint, StudyRun

FORMATS = {
    "plain": ({"data.with_steps": False, "data.answer_order": "plain"}, 2000.0),
    "reversed": ({"data.with_steps": False, "data.answer_order": "reversed"}, 160.0),
    "scratchpad": ({"data.with_steps": True, "data.answer_order": "plain"}, 80.0),
}
BATCH = 64
SNAPSHOTS = (100, 200, 400, 800, 1600)


def _em(step: int, rate: float) -> float:
    return 1.0 - math.exp(-step / rate)


def _est(mean: float, n: int = 512) -> Estimate:
    half = 1.96 * math.sqrt(max(mean * (1 - mean), 1e-4) / n)
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), n)


def _roles(fmt: str, seed: int, step: int) -> list[RoleHit]:
    hits = [RoleHit("position_head", 0, None, step >= 200, int(step >= 200), None),
            RoleHit("operator_head", 1, None, False, 0, 0.01)]
    if fmt == "scratchpad":
        confirmed = seed in (0, 1) and step >= 400
        hits.append(RoleHit("carry_head", 1, 1, confirmed, int(confirmed), min(0.6, step / 1000)))
    return hits


def _snapshot(name: str, fmt: str, seed: int, step: int, rate: float) -> Snapshot:
    em = _em(step, rate)
    return Snapshot(
        checkpoint=name, step=step, examples_seen=step * BATCH, exact_match=_est(em),
        by_stratum={s: _est(em ** (1 + i)) for i, s in enumerate(STRATA)},
        convergence_layer=2.0 - em, n_layers=2,
        selectivity={"carry_in": 0.6 * em, "digit": 0.3 * em}, roles=_roles(fmt, seed, step))


def _run(point: str, fmt: str, seed: int) -> StudyRun:
    task = {"task": "add", "min_digits": 1, "max_digits": 3, "with_steps": fmt == "scratchpad",
            "answer_order": "reversed" if fmt == "reversed" else "plain"}
    rate = FORMATS[fmt][1] * (1 + 0.02 * seed)
    steps, vals = [], []
    for step in range(100, 1700, 100):
        steps.append(step)
        vals.append(_em(step, rate))
        if vals[-1] >= 0.99:
            break
    snaps = [_snapshot(f"step_{s:06d}", fmt, seed, s, rate) for s in SNAPSHOTS if s <= steps[-1]]
    snaps.append(_snapshot(FINAL, fmt, seed, steps[-1], rate))
    return StudyRun(f"{point}-s{seed}", point, seed, "analysed", task,
                    {"n_layers": 2, "n_heads": 4, "d_model": 64}, BATCH, steps, vals, steps[-1], snaps, "")


def synthetic_study(n_points: int = 3, seeds: tuple[int, ...] = (0, 1, 2)) -> Study:
    """`n_points` grid points (formats in turn, the n-th of a format gets n_layers = n) x `seeds`."""
    points, runs = [], []
    names = list(FORMATS)
    for i in range(n_points):
        fmt = names[i % 3]
        overrides, _ = FORMATS[fmt]
        name = f"{fmt}_n_layers-{i // 3 + 1}"
        label = f"format={fmt}, model.n_layers={i // 3 + 1}"
        pruns = [_run(name, fmt, s) for s in seeds]
        runs += pruns
        points.append(StudyPoint(name, label, {**overrides, "model.n_layers": i // 3 + 1}, fmt,
                                 [r.name for r in pruns]))
    return Study(title="Synthetic study", generated_at="", target=0.99, engine="local",
                 sweep={"file": "synthetic.yaml", "config": {"seeds": list(seeds)}, "points": [],
                        "analysis_config": {}}, points=points, runs=runs, failures=[])

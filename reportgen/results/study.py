"""A study: a grid of models trained over several seeds, each followed through training by
snapshots, and what holds across seeds. Torch-free: the study report renders from this alone.

Per-model results are read only by the functions under "Reading one model's results" below
(accuracy, logit-lens convergence, probe selectivity, the roles circuit discovery confirms): the
analyses' field names may change, and those functions are the one place to adapt. A role is
identified across seeds by (kind, layer, column), never by head or neuron index, which are
arbitrary across seeds.

Values "across seeds" are Estimates whose mean is the mean over seeds, whose lo and hi are the
smallest and largest seed's value (a range, not a confidence interval: a study has few seeds),
and whose n is the number of seeds that have the value.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from reportgen.findings import Estimate
from reportgen.results.schema import ModelResults

STUDY_SCHEMA_VERSION = 1  # of study.json; bump when a field changes meaning or goes
FINAL = "final"  # the checkpoint name of a run's final model (checkpoint_best.pt)
HEADLINE_PROBE = "carry_in"  # the probe label the overview shows (others are on the run pages)


# ---------------------------------------------------------------- the study object
@dataclass
class RoleHit:
    """One role as tested in one checkpoint; kind, layer and column identify it across seeds."""

    kind: str  # e.g. "carry_head", "position_head", "neuron" (as the circuit analysis names it)
    layer: int
    column: Optional[int]  # the answer column it serves, where the test has one
    confirmed: bool  # some component with this role passed its causal test
    units: int  # components with this role that passed (heads or neurons)
    effect: Optional[float]  # causal effect of the role's strongest component (a confirmed one if any)


@dataclass
class Snapshot:
    """What one analysed checkpoint of a run shows: a snapshot kept during training, or the final
    model (checkpoint "final": checkpoint_best.pt, the best by validation exact match)."""

    checkpoint: str  # "final" or "step_000400"
    step: int
    examples_seen: int  # training examples drawn up to this step (step x batch size)
    exact_match: Estimate  # on a fresh stratified test set, 95% Wilson interval
    by_stratum: dict[str, Estimate]
    convergence_layer: Optional[float]  # mean over answer digits; 0 = embedding, l+1 = after block l
    n_layers: int
    selectivity: dict[str, float]  # probe label -> selectivity at its best site (averaged over answer positions)
    roles: list[RoleHit]  # every role tested, confirmed or not


@dataclass
class StudyRun:
    """One training run (grid point, seed) and its analysed checkpoints."""

    name: str
    point: str
    seed: int
    status: str  # "analysed", "trained" (its final model not analysed), "failed", "pending"
    task: dict
    model_config: dict
    batch_size: int
    steps: list[int]  # training history: the step of every validation
    val_exact_match: list[float]
    best_step: Optional[int]
    snapshots: list[Snapshot]  # in step order, the final model among them
    chapter: str = ""  # site path of the run's full chapter ("" when it has none)


@dataclass
class StudyPoint:
    name: str
    label: str
    overrides: dict
    format: str  # answer format in words: plain, reversed, scratchpad, ...
    runs: list[str]


@dataclass
class JobFailure:
    job: str
    kind: str
    run: str
    attempts: int
    error: str


@dataclass
class Study:
    title: str
    generated_at: str
    target: float  # validation exact match whose first step is reported
    engine: str
    sweep: dict
    points: list[StudyPoint]
    runs: list[StudyRun]
    failures: list[JobFailure] = field(default_factory=list)
    schema_version: int = STUDY_SCHEMA_VERSION

    def run(self, name: str) -> StudyRun:
        return next(r for r in self.runs if r.name == name)

    def runs_of(self, point: StudyPoint) -> list[StudyRun]:
        return [self.run(n) for n in point.runs]


def study_json(study: Study) -> bytes:
    """The study as JSON (sorted keys, NaN as null): the data every page and figure is drawn from."""
    return (json.dumps(_plain(dataclasses.asdict(study)), sort_keys=True, indent=1, ensure_ascii=False,
                       allow_nan=False) + "\n").encode()


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------- reading one model's results
def summarise(m: ModelResults, checkpoint: str, step: int, batch_size: int) -> Snapshot:
    """The study's view of one checkpoint's results."""
    return Snapshot(checkpoint=checkpoint, step=step, examples_seen=step * batch_size,
                    exact_match=m.accuracy.exact_match, by_stratum=dict(m.accuracy.by_stratum),
                    convergence_layer=convergence_layer(m), n_layers=int(m.provenance.model_config.get("n_layers", 0)),
                    selectivity=probe_selectivity(m), roles=roles(m))


def convergence_layer(m: ModelResults) -> Optional[float]:
    """Mean over answer digits of the first layer index at which the final answer is top-1."""
    lens = m.findings.logit_lens
    if lens is None or not lens.convergence_hist:
        return None
    index = {label: i for i, label in enumerate(lens.layer_labels)}
    counted = {index[k]: n for k, n in lens.convergence_hist.items() if k in index}
    total = sum(counted.values())
    return sum(i * n for i, n in counted.items()) / total if total else None


def probe_selectivity(m: ModelResults) -> dict[str, float]:
    """Per probe label, the selectivity (accuracy minus the untrained twins' accuracy of the same
    probe) of its best site (hook and layer), each site's averaged over the positions probed there.
    None of a probe test that failed its null."""
    probing = m.findings.probing
    if probing is None or (probing.null is not None and not probing.null.passed):
        return {}
    sites: dict[tuple[str, str], list[float]] = {}
    for p in probing.probes:
        sites.setdefault((p.label, p.hook), []).append(p.selectivity.mean)
    best: dict[str, float] = {}
    for (label, _), values in sites.items():
        mean = float(np.mean(values))
        if math.isfinite(mean):
            best[label] = max(best.get(label, -math.inf), mean)
    return best


def roles(m: ModelResults) -> list[RoleHit]:
    """Every role circuit discovery tested, by (kind, layer, column), confirmed or not; a carry head
    read at a scratchpad token is its own kind ('carry_head at carry_out'). Nothing counts as
    confirmed by a test that failed its null on the untrained twins."""
    circuits = m.findings.circuits
    if circuits is None:
        return []
    broken = {n.test for n in circuits.nulls if not n.passed}
    groups: dict[tuple, list] = {}
    for c in circuits.components:
        kind = c.kind if c.target == "answer" else f"{c.kind} at {c.target}"
        groups.setdefault((kind, int(c.layer), c.column), []).append(c)
    out = []
    for (kind, layer, column), comps in sorted(groups.items(), key=lambda kv: role_order(kv[0])):
        passed = [c for c in comps if c.confirmed and c.kind not in broken]
        effects = [c.causal_effect for c in (passed or comps)
                   if c.causal_effect is not None and math.isfinite(c.causal_effect)]
        out.append(RoleHit(kind, layer, column, bool(passed), len(passed), max(effects) if effects else None))
    return out


# ---------------------------------------------------------------- roles across seeds
RoleKey = tuple  # (kind, layer, column)


def role_key(hit: RoleHit) -> RoleKey:
    return (hit.kind, hit.layer, hit.column)


def role_order(key: RoleKey) -> tuple:
    kind, layer, column = key
    return (kind, layer, -1 if column is None else column)


def role_name(key: RoleKey) -> str:
    """'carry head, layer 1, column 2': the role in words (no head or neuron index)."""
    kind, layer, column = key
    words = {"neuron": "carry neuron"}.get(kind, kind.replace("_", " "))
    return f"{words}, layer {layer}" + (f", column {column}" if column is not None else "")


def final(run: StudyRun) -> Optional[Snapshot]:
    return next((s for s in run.snapshots if s.checkpoint == FINAL), None)


def confirmed_roles(s: Optional[Snapshot]) -> set[RoleKey]:
    return {role_key(h) for h in s.roles if h.confirmed} if s else set()


def first_confirmed(run: StudyRun, key: RoleKey) -> Optional[int]:
    """The first analysed step at which the role passes its test (None: never)."""
    return next((s.step for s in run.snapshots if key in confirmed_roles(s)), None)


@dataclass
class RoleStability:
    """A role within one grid point: in which seeds' final models it is confirmed."""

    key: RoleKey
    seeds: list[int]  # seeds whose final model confirms it
    analysed: list[int]  # seeds with an analysed final model
    first_steps: list[Optional[int]]  # per seed in `seeds`: first analysed step at which it passed

    @property
    def everywhere(self) -> bool:
        return bool(self.analysed) and len(self.seeds) == len(self.analysed)


def role_stability(study: Study, point: StudyPoint) -> list[RoleStability]:
    """Every role confirmed in some seed of `point`, with the seeds that confirm it."""
    runs = [r for r in study.runs_of(point) if final(r) is not None]
    keys = sorted({k for r in runs for k in confirmed_roles(final(r))}, key=role_order)
    out = []
    for key in keys:
        found = [r for r in runs if key in confirmed_roles(final(r))]
        out.append(RoleStability(key, [r.seed for r in found], [r.seed for r in runs],
                                 [first_confirmed(r, key) for r in found]))
    return out


# ---------------------------------------------------------------- across seeds
def across(values: Iterable[Optional[float]]) -> Estimate:
    """Mean over seeds with the range (smallest, largest) across them; n = seeds with a value."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return Estimate(math.nan, math.nan, math.nan, 0)
    return Estimate(float(np.mean(v)), min(v), max(v), len(v))


def steps_to_target(run: StudyRun, target: float) -> Optional[int]:
    """The first validation step at which exact match reached `target` (None: never)."""
    return next((s for s, v in zip(run.steps, run.val_exact_match) if v >= target), None)


@dataclass
class PointSummary:
    """A grid point's headline numbers across its seeds."""

    point: StudyPoint
    analysed: int  # seeds with an analysed final model
    trained: int  # seeds with a trained model
    exact_match: Estimate
    by_stratum: dict[str, Estimate]
    steps_to_target: Estimate  # over the seeds that reached it
    reached: int  # seeds whose validation exact match reached the target
    convergence_layer: Estimate
    selectivity: Estimate  # of HEADLINE_PROBE
    confirmed_roles: Estimate  # number of distinct roles confirmed per seed
    roles_everywhere: int  # roles confirmed in every analysed seed


def point_summary(study: Study, point: StudyPoint) -> PointSummary:
    runs = study.runs_of(point)
    finals = [final(r) for r in runs if final(r) is not None]
    trained = [r for r in runs if r.status in ("analysed", "trained")]
    strata = sorted({s for f in finals for s in f.by_stratum})
    reached = [steps_to_target(r, study.target) for r in trained]
    return PointSummary(
        point=point, analysed=len(finals), trained=len(trained),
        exact_match=across(f.exact_match.mean for f in finals),
        by_stratum={s: across(f.by_stratum[s].mean for f in finals if s in f.by_stratum) for s in strata},
        steps_to_target=across(reached), reached=sum(s is not None for s in reached),
        convergence_layer=across(f.convergence_layer for f in finals),
        selectivity=across(f.selectivity.get(HEADLINE_PROBE) for f in finals),
        confirmed_roles=across(len(confirmed_roles(f)) for f in finals),
        roles_everywhere=sum(r.everywhere for r in role_stability(study, point)),
    )


# ---------------------------------------------------------------- answer formats
def format_name(task: dict) -> str:
    """The answer format in words: plain, reversed, scratchpad or scratchpad + reversed."""
    parts = (["scratchpad"] if task.get("with_steps") else []) + (["reversed"] if task.get("answer_order") == "reversed" else [])
    return " + ".join(parts) or "plain"


@dataclass
class FormatSummary:
    """Sample efficiency of one answer format over every run (grid point and seed) that uses it."""

    format: str
    runs: list[str]
    reached: int  # runs whose validation exact match reached the target
    examples_to_target: Estimate  # over the runs that reached it
    final_exact_match: Estimate  # of the final models
    last_exact_match: Estimate  # the runs' last validation exact match
    max_examples: int  # the most training examples any of its runs saw


def format_summaries(study: Study) -> list[FormatSummary]:
    """One per answer format, fastest (fewest examples to the target, more runs reaching it) first."""
    by_format: dict[str, list[StudyRun]] = {}
    for r in study.runs:
        if r.status in ("analysed", "trained"):
            by_format.setdefault(format_name(r.task), []).append(r)
    out = []
    for fmt, runs in by_format.items():
        seen = [None if (s := steps_to_target(r, study.target)) is None else s * r.batch_size for r in runs]
        out.append(FormatSummary(fmt, [r.name for r in runs], sum(x is not None for x in seen), across(seen),
                                 across(f.exact_match.mean for r in runs if (f := final(r)) is not None),
                                 across(r.val_exact_match[-1] for r in runs if r.val_exact_match),
                                 max((r.steps[-1] * r.batch_size for r in runs if r.steps), default=0)))
    return sorted(out, key=lambda f: (-f.reached / max(1, len(f.runs)),
                                      f.examples_to_target.mean if f.reached else -_or(f.last_exact_match.mean),
                                      f.format))


def _or(x: float, default: float = -math.inf) -> float:
    return x if math.isfinite(x) else default


def mean_curve(runs: list[StudyRun]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Validation exact match against training examples seen, across `runs`: at every evaluation
    point of any run, the mean, smallest and largest value over the runs, a run that stopped
    (having reached its stopping accuracy) counting with its last value."""
    xs = sorted({s * r.batch_size for r in runs for s in r.steps})
    mean, lo, hi = [], [], []
    for x in xs:
        vals = []
        for r in runs:
            seen = [v for s, v in zip(r.steps, r.val_exact_match) if s * r.batch_size <= x]
            if seen:
                vals.append(seen[-1])
        mean.append(float(np.mean(vals)) if vals else math.nan)
        lo.append(min(vals) if vals else math.nan)
        hi.append(max(vals) if vals else math.nan)
    return xs, mean, lo, hi

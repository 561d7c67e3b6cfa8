"""What the six analyses find: typed, torch-free records, which the analysis stage fills, the
results stage stores and judges, and render draws.

It sits below the stages that use it (analysis, results, render) and imports only numpy, so that
`reportgen render` can load results without torch (the import contract in pyproject.toml).
Arrays are numpy arrays (the results stage stores them in an .npz beside results.json);
everything else is plain JSON data. Layer index conventions: "site" arrays over layers use
index l for `blocks.{l}`; logit-lens arrays use index 0 for the embedding (resid_pre of block 0)
and index l+1 for `blocks.{l}.hook_resid_post`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Estimate:
    """A mean over examples with a 95% bootstrap interval (over examples) and the sample size."""

    mean: float
    lo: float
    hi: float
    n: int


@dataclass
class NullCheck:
    """One confirming test run on the model and, unchanged, on each untrained twin (a twin is
    judged against the other twins where the test compares with twins). A test that confirms
    components on the twins more often than its error rate allows is broken: `passed` is False
    and the report states none of its findings (see stats.null_passed)."""

    test: str  # "carry_head", "operator_head", "position_head", "delimiter_head", "neuron", "probe"
    definition: str  # what confirms a component, in one sentence
    n_tested: int  # components (or probes) tested on the model
    confirmed: int  # of those, confirmed
    twin_tested: list[int]  # per untrained twin
    twin_confirmed: list[int]  # per untrained twin
    error_rate: float  # the chance per model of confirming anything when nothing is there (family-wise)
    passed: bool
    note: str = ""


# ---------------------------------------------------------------- 1. attention
@dataclass
class HeadStats:
    """Per-head statistics at the answer-predicting positions, averaged over examples."""

    layer: int
    head: int
    entropy: Estimate  # normalised by log(number of visible keys)
    prev_token: Estimate
    sink: Estimate  # attention to BOS / first token
    equals: Estimate  # attention to the '=' token
    operator: Estimate


@dataclass
class RoleScore:
    """Mean attention mass from the positions predicting final-answer digits to one key group
    (see ColumnRoles), averaged over an example's answer digits: a summary across columns; the
    per-column values are in ColumnRoles."""

    layer: int
    head: int
    role: str  # a key group: "n", "n-1", "n-2", ..., "prev answer", "BOS", "operator", "=", ...
    score: Estimate
    expected: float  # mass a head following the alignment mask exactly would put there (always 1.0)
    untrained: Estimate  # the same head in the untrained twins (per example, the mean over the twins)
    chance: float = float("nan")  # mass a uniform head (1/visible keys each) would put there


@dataclass
class ColumnRoles:
    """Attention by target role, column and key group: from the positions predicting the digits
    of one role (final answer, or a scratchpad digit such as a step's carry_out) in column n, the
    mean attention mass on each key group, defined relative to that column: the operand digits
    (both operands) of column n, n-1, n-2, ... ("n", "n-1", "n+1"), the previous answer digit,
    the delimiters, and scratchpad tokens of step n and step n-1 by place ("s[n].cin",
    "s[n-1].cout"). Means over examples with 95% bootstrap intervals; NaN where no example has
    such a query or the group has no key there."""

    layers: list[int]
    query_roles: list[str]  # data.arithmetic.TARGET_ROLES present
    columns: list[int]
    key_groups: list[str]
    group_kinds: list[str]  # per key group: "operand", "answer", "delimiter", "scratchpad" or "lump" (many keys)
    mass: np.ndarray  # [layers, heads, query roles, columns, key groups]
    mass_lo: np.ndarray
    mass_hi: np.ndarray
    untrained: np.ndarray  # the same, per example the mean over the untrained twins
    untrained_lo: np.ndarray
    untrained_hi: np.ndarray
    chance: np.ndarray  # [query roles, columns, key groups] mass of a uniform head (visible keys in the group / visible keys)
    n: np.ndarray  # [query roles, columns, key groups] examples with a value
    twins: int  # untrained twins averaged


@dataclass
class HeadRole:
    """The key group that holds a head's attention from the positions predicting one target role
    in one column: the group with the most mass (groups of many keys, "earlier answers" and
    "s[other]", excepted), held when its mass exceeds both chance and the untrained twins' mass by
    the margin and its interval lies above the twins' interval."""

    layer: int
    head: int
    query_role: str
    column: int
    key_group: str
    mass: Estimate
    untrained: Estimate
    chance: float
    held: bool


@dataclass
class AttentionFindings:
    head_stats: list[HeadStats]
    role_scores: list[RoleScore]
    columns: Optional[ColumnRoles] = None
    head_roles: list[HeadRole] = field(default_factory=list)
    role_margin: float = float("nan")  # the margin a held key group needs over chance and the twins


# ---------------------------------------------------------------- 2. activation patching
@dataclass
class PatchSweep:
    """Recovery (denoising) or damage (noising) over (layer, position) or (layer, head)."""

    pair_kind: str  # "carry_flip", "sum_flip", "operator_flip"
    direction: str  # "denoise" (clean into corrupt) or "noise" (corrupt into clean)
    site: str  # "resid_pre", "attn_out", "mlp_out", "head"
    mean: np.ndarray  # [layers, positions] or [layers, heads]
    lo: np.ndarray
    hi: np.ndarray
    position_labels: list[str]  # column labels (token roles or "H0".. for heads)
    n_pairs: int
    n_dropped: int  # pairs whose |LD_clean - LD_corrupt| was too small to normalise by
    target: str = "answer"  # role of the token LD is read at (data.TARGET_ROLES)


@dataclass
class AttributionScore:
    """First-order (gradient) estimate of a patch's effect, used only to rank candidates."""

    site: str
    layer: int
    index: int  # along the sweep's axis: token role (position_labels) or head
    label: str  # what index names: a token role ('ans0', 'a1', '=') or a head ('H2')
    estimate: float
    exact: Optional[float]  # exact patching result where it was confirmed


@dataclass
class PatchingFindings:
    sweeps: list[PatchSweep]
    attribution: list[AttributionScore]
    pair_counts: dict[str, int]  # generated pairs per kind ('kind', or 'kind@target' for a scratchpad target)
    pair_dropped: dict[str, int]  # of those, pairs whose |LD_clean - LD_corrupt| was too small to use


# ---------------------------------------------------------------- 3. logit lens
@dataclass
class LogitLensFindings:
    """Per layer (index 0 = embedding, l+1 = after block l), averaged over answer digits."""

    layer_labels: list[str]
    prob_correct: list[Estimate]  # probability of the correct digit among digits
    rank_correct: list[Estimate]  # 0 = top-1 among digits
    entropy: list[Estimate]  # over the digit distribution, nats
    kl_to_final: list[Estimate]  # KL(final || layer), nats
    convergence_hist: dict[str, int]  # layer label -> answer digits whose final top-1 is first top-1 there
    by_stratum: dict[str, list[Estimate]]  # stratum -> prob_correct per layer
    untrained_prob_correct: list[Estimate]  # the same lens on an untrained twin (baseline)
    # Scratchpad models: the same at the positions predicting each kind of scratchpad digit.
    prob_by_role: dict[str, list[Estimate]] = field(default_factory=dict)  # role -> prob_correct per layer
    convergence_by_role: dict[str, dict[str, int]] = field(default_factory=dict)
    majority_by_role: dict[str, float] = field(default_factory=dict)  # share of the role's most common digit


# ---------------------------------------------------------------- 4. circuits
@dataclass
class CircuitComponent:
    """A candidate from correlational scores, with the causal test that confirms or rejects it."""

    kind: str  # "carry_head", "operator_head", "position_head", "delimiter_head", "neuron"
    layer: int
    index: int  # head or neuron index
    column: Optional[int]  # answer column it serves, where meaningful
    score: float  # the selection score (role score, AUROC, offset consistency)
    null: float  # the same score under its null (untrained model / shuffled labels / random set)
    causal_effect: Optional[float]  # e.g. accuracy drop on the carry-dependent stratum
    control_effect: Optional[float]  # e.g. drop on the carry-free stratum / random set of equal size
    confirmed: bool
    note: str = ""
    target: str = "answer"  # role of the token the causal test read (data.TARGET_ROLES)


@dataclass
class ComponentRecovery:
    """Pooled patching effect of one component (a head or a neuron) on pairs aimed at one answer
    column, read at one target token, and the verdict of its causal test (circuits.py)."""

    component: str  # "L0H2" (head 2 of layer 0) or "L1N37" (neuron 37 of layer 1)
    layer: int
    index: int
    column: int  # the answer column n the pairs are aimed at
    target: str  # role of the token the logit difference is read at
    kind: str  # pair kind tested: "carry_flip" or "operator_flip"
    recovery: Estimate  # denoising (clean into corrupt), pooled over pairs
    damage: Optional[Estimate]  # noising (corrupt into clean), pooled over the same pairs
    control: Optional[Estimate]  # recovery on sum-flip pairs aimed at the same column (None: no such pairs)
    untrained: Optional[Estimate]  # heads: the largest recovery of a head of the same layer in the untrained twins
    # the bar the recovery's lower bound must clear: heads, the prediction bound of an untrained head of
    # the same layer (circuits.prediction_bound); neurons, the largest recovery of random neurons of the layer
    null_threshold: Optional[float]
    confirmed: bool


@dataclass
class CircuitFindings:
    components: list[CircuitComponent]
    head_specialization: np.ndarray  # [layers, heads, roles] role scores
    roles: list[str]
    neuron_test: dict = field(default_factory=dict)  # the correlational screen of neurons
    recoveries: list[ComponentRecovery] = field(default_factory=list)  # every causal test of heads and neurons
    nulls: list[NullCheck] = field(default_factory=list)  # each confirming test on the model and on the twins


# ---------------------------------------------------------------- 5. probing
@dataclass
class ProbeLayout:
    """The problems of one text layout that probes read (every row the same characters at the
    same positions, so a probed position plays one role in every row)."""

    template: str  # digits 'd', operators 'o', other characters as themselves, e.g. 'dddoddd=dddd'
    example: str  # one problem of the layout as the model reads it (prompt + target)
    n_examples: int
    n_train: int
    n_test: int


@dataclass
class ProbeResult:
    """One logistic probe for one label at one site: (layer, hook) at the position predicting one
    target digit, in one layout. Scores are held-out accuracy, or balanced accuracy where the
    label's classes are unbalanced; intervals are 95% paired bootstraps over held-out problems."""

    label: str  # "carry_in", "carry_out", "digit", "a_digit", "operator", "cascade"
    hook: str  # hook point name, e.g. "blocks.0.hook_resid_post"
    layer: int
    position: str  # e.g. "predicts sum_digit of column 1"
    role: str  # role of the predicted digit (data.arithmetic.TARGET_ROLES)
    column: int  # column n of the predicted digit (its step's column in a scratchpad)
    layout: int  # index into ProbingFindings.layouts
    accuracy: Estimate
    balanced: bool
    majority: float  # always predicting the training majority class
    untrained: float  # mean over the untrained twins of the same probe's accuracy
    untrained_each: list[float]  # per twin
    selectivity: Estimate  # accuracy - untrained
    selectivity_bound: float  # lower bound, Bonferroni-corrected over the model's probes
    confirmed: bool  # selectivity_bound > 0
    over_baseline: Estimate  # accuracy - max(majority, untrained)
    operand_baseline: float  # the probe on the one-hot digits of both operands (operand identity alone)
    twin_selectivity: list[float]  # each twin as the subject, against the other twins
    twin_confirmed: list[bool]  # the same test with each twin as the subject
    n_train: int
    n_test: int


@dataclass
class ProbingFindings:
    probes: list[ProbeResult]
    seed: int
    layouts: list[ProbeLayout] = field(default_factory=list)
    null: Optional[NullCheck] = None  # the confirmation test on the model and on each twin
    n_twins: int = 0
    alpha: float = 0.05  # family-wise error rate of the confirmations
    bound_z: float = float("nan")  # normal quantile of the corrected lower bounds
    held_out: str = ""  # which of the model's questions the probes' problems exclude
    twin_mean_selectivity: list[float] = field(default_factory=list)  # per twin, over probes
    twin_max_abs_selectivity: list[float] = field(default_factory=list)  # per twin, over probes


# ---------------------------------------------------------------- 6. interventions
@dataclass
class Metrics:
    """Answer quality, overall and per stratum: teacher forced unless named free."""

    exact_match: Estimate
    digit_accuracy: Estimate
    logprob: Estimate  # answer log-probability (teacher forced, summed over answer digits)
    by_stratum: dict[str, Estimate]  # exact match per stratum
    digit_accuracy_by_stratum: dict[str, Estimate]
    logprob_by_stratum: dict[str, Estimate]
    margin: Estimate  # mean over answer digits of log p(correct) - log p(best wrong digit); does not saturate
    margin_by_stratum: dict[str, Estimate]
    free_exact_match: Optional[Estimate]  # greedy decoding from the prompt with the intervention in place
    free_by_stratum: dict[str, Estimate]
    scratchpad_accuracy: Optional[Estimate]  # share of scratchpad digits right (teacher forced); None without one


@dataclass
class AblationEffect:
    component: str  # "L0H1", "L0.attn", "L1.mlp"
    method: str  # "zero", "mean", "resample"
    metrics: Metrics


@dataclass
class InterventionFindings:
    clean: Metrics
    effects: list[AblationEffect]
    cumulative: list[AblationEffect]  # heads ablated together in order of importance; component = "top-k"
    default_method: str

    def default_effects(self) -> list[AblationEffect]:
        """The effects of the default method (the one the report's sentences and tables use)."""
        return [e for e in self.effects if e.method == self.default_method]


# ---------------------------------------------------------------- per example
@dataclass
class ExampleFindings:
    """Everything the report shows for one example."""

    key: str  # stable, derived from the example text (safe for file names and URLs)
    prompt: str
    target: str
    problem: str  # the problem as a person writes it, e.g. "59 + 73"
    answer: str  # the answer as a number (the target may hold steps or reversed digits)
    prediction: str  # greedy decoding
    correct: bool
    stratum: str
    labels: dict
    tokens: list[str]
    answer_positions: list[int]  # token indices predicting each answer digit
    attention: np.ndarray  # [layers, heads, pos, pos]
    lens_prob: np.ndarray  # [layers+1, answer digits] prob of the correct digit
    lens_top: np.ndarray  # [layers+1, answer digits] top digit
    lens_entropy: np.ndarray  # [layers+1, answer digits]
    convergence: list[Optional[int]]  # per answer digit: first layer index where final answer is top-1


@dataclass
class Population:
    """The problems the aggregate analyses ran on."""

    n: int  # distinct problems
    held_out_from: str  # the model's data splits none of them is in: "train, val and test", "train", or ""


@dataclass
class AnalysisFindings:
    """All six analyses for one model; an analysis not run is None."""

    examples: list[ExampleFindings]
    population: Optional[Population] = None
    attention: Optional[AttentionFindings] = None
    patching: Optional[PatchingFindings] = None
    logit_lens: Optional[LogitLensFindings] = None
    circuits: Optional[CircuitFindings] = None
    probing: Optional[ProbingFindings] = None
    interventions: Optional[InterventionFindings] = None


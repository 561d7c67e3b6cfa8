"""Attention patterns (DESIGN §4.1): per-head statistics, attention by column and offset at every
position that predicts a target digit, head roles, and the position- and delimiter-head tests,
each against untrained twins.

Queries. Every position that predicts a digit the model writes (data.arithmetic.target_tokens):
final-answer digits ("answer") and, in scratchpad models, each step's digits by role
("operand_a", "operand_b", "carry_in", "sum_digit", "carry_out"); a query has a role and a column
n (the answer digit's column, or the step's column). Multiplication scratchpad digits have no
column and are left out.

Key groups, relative to the query's column n; every visible key is in exactly one group:
"n", "n-1", "n-2", ..., "n+1", ... the operand digits (both operands) of that column; "prev
answer" the answer digit written just before (the query's own token), "earlier answers" the
others; the delimiters "BOS", "operator", "=" (the prompt's) and "|" (before a scratchpad model's
answer); "s[n].<place>" and "s[n-1].<place>" the scratchpad tokens of step n and step n-1 by place
(digits a, b, cin, d, cout; delimiters op, =, c (the carry mark, 'b' for borrows), ;), and
"s[other]" those of every other step. Mass on a group is the sum of the head's attention on its
keys; chance is the mass a uniform head would put there (keys in the group / visible keys).

Per (layer, head, query role, column, key group) the table (ColumnRoles) holds the mean mass over
examples, its 95% bootstrap interval (examples resampled), the same for the untrained twins (per
example the mean over the twins) and chance. A head's role at a cell (HeadRole) is the group with
the most mass, groups of many keys ("earlier answers", "s[other]") excepted; it holds when that
mass exceeds both chance and the twins' mass by `margin` and its interval lies above the twins'.

Per-head statistics at the final-answer queries: entropy / log(q + 1) (the q + 1 visible keys;
rows with one visible key are excluded), attention to the previous token, to BOS (the sink), to
'=' and to the operator token. RoleScore summarises the answer queries' groups averaged over an
example's answer digits. Every value is first averaged over an example's queries, so the
bootstrap resamples examples.

Position and delimiter heads (`head_tests`): for each head and query role, the fixed-position
mass is the mass on the cell's modal group (as for HeadRole: the non-lump group with the most
mean mass at that column, cells with at least MIN_CELL_EXAMPLES examples), averaged over an
example's queries of the role. A head whose attention follows positions, whatever the digit
values, keeps that mass high; a head that follows digit values spreads it across groups; an
untrained head is near uniform. Confirmed when the mass is at least `min_mass` and the lower
bound of the paired bootstrap interval of (mass - the untrained twins' same mass) exceeds
`margin`, Bonferroni-corrected over the head-role tests: a family-wise error rate of ALPHA. A
head with more than half of that mass on delimiters (BOS, operator, '=', '|', a scratchpad
step's op, =, c or ;) sits on a fixed delimiter: a delimiter head, named by its delimiters,
never a position head; the others are position heads. The test runs unchanged on each
untrained twin, judged against the other twins, and the counts go into NullChecks.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from reportgen.analysis import stats
from reportgen.analysis.api import check_layers, task_of, text_batch, token_labels
from reportgen.analysis.config import UNTRAINED_TWINS
from reportgen.analysis.engine import run_with_cache, untrained_twins
from reportgen.analysis.examples import ExampleBatch, template
from reportgen.findings import (
    AttentionFindings, CircuitComponent, ColumnRoles, Estimate, HeadRole, HeadStats, NullCheck, RoleScore,
)
from reportgen.analysis.pairs import token_roles
from reportgen.data.arithmetic import TARGET_ROLES, predicting_positions, target_tokens
from reportgen.data.tokenizer import Tokenizer
from reportgen import hooks as hp
from reportgen.model.transformer import Transformer
from reportgen.plots import toolkit

STATS = ("entropy", "prev_token", "sink", "equals", "operator")
ALPHA = 0.05  # family-wise error rate of the position/delimiter-head test
ROLE_MARGIN = 0.2  # mass a held key group needs above chance and the twins (AttentionConfig.role_margin)
MIN_CELL_EXAMPLES = 5  # examples a (query role, column) cell needs to take part in the head tests
DELIMITER_SHARE = 0.5  # a confirmed head with more of its fixed-position mass on delimiters is a delimiter head
PLACES = {"a": "a", "op1": "op", "b": "b", "op2": "op", "cin": "cin", "eq": "=", "d": "d", "c": "c", "cout": "cout",
          "sep": ";"}  # pairs.STEP_TOKENS -> the place named in a key group
STEP_ORDER = ("a", "op", "b", "cin", "=", "d", "c", "cout", ";")
FIXED_DELIMITERS = ("BOS", "operator", "=", "|")
STEP_DELIMITERS = ("op", "=", "c", ";")
LUMPS = ("earlier answers", "s[other]", "scratchpad")  # many keys: described, never a head's role


def offset_group(d: int) -> str:
    """The key group of operand digits d columns below the query's column ("n", "n-1", "n+1")."""
    return "n" if d == 0 else f"n-{d}" if d > 0 else f"n+{-d}"


def is_delimiter(group: str) -> bool:
    return group in FIXED_DELIMITERS or (group.startswith("s[n") and group.split(".", 1)[1] in STEP_DELIMITERS)


def group_kind(group: str) -> str:
    """"operand", "answer", "delimiter", "scratchpad" or "lump" (a group of many keys)."""
    if group in LUMPS:
        return "lump"
    if is_delimiter(group):
        return "delimiter"
    if group == "prev answer":
        return "answer"
    return "scratchpad" if group.startswith("s[") else "operand"


def group_order(group: str) -> tuple:
    """Reading order of key groups: offsets n, n-1, n-2, ..., n+1, ..., answers, delimiters, steps."""
    if group == "n" or group.startswith(("n-", "n+")):
        d = 0 if group == "n" else int(group[2:]) if group[1] == "-" else -int(group[2:])
        return (0, d if d >= 0 else 100 - d, "")
    fixed = ("prev answer", "earlier answers", *FIXED_DELIMITERS)
    if group in fixed:
        return (1, fixed.index(group), "")
    if group.startswith("s[n]."):
        return (2, STEP_ORDER.index(group[5:]), "")
    if group.startswith("s[n-1]."):
        return (3, STEP_ORDER.index(group[7:]), "")
    return (4, 0, group)


def prompt_positions(record: dict) -> tuple[int, int, dict[int, int], dict[int, int]]:
    """Token indices of the operator, '=', and the digits of a and b by column n.

    The prompt is '<a><op><b>='; character c is token c + 1.
    """
    prompt, labels = record["prompt"], record["labels"]
    op_char = prompt.index(record["op"])
    eq_char = len(prompt) - 1
    a_pos = {n: op_char - n for n in range(labels["len_a"])}
    b_pos = {n: eq_char - n for n in range(labels["len_b"])}
    return op_char + 1, eq_char + 1, a_pos, b_pos


def record_groups(record: dict) -> list[tuple[int, str, int, list[str]]]:
    """(query position q, query role, column n, key group of each key 0..q) for every target
    digit of the record that has a column."""
    names = token_roles(record)
    text = "^" + record["prompt"] + record["target"]
    out = []
    for q, role, n in target_tokens(record):
        if n is None:
            continue
        groups = []
        for k in range(q + 1):
            name = names[k]
            if name in ("BOS", "="):
                groups.append(name)
            elif name == "op":
                groups.append("operator")
            elif name[0] in "ab" and name[1:].isdigit():
                groups.append(offset_group(n - int(name[1:])))
            elif name.startswith("ans"):
                groups.append("prev answer" if k == q else "earlier answers")
            elif text[k] == "|":
                groups.append("|")
            else:  # scratchpad: 's<step>.<place>', or 's<offset>' in multiplication
                step, _, place = name[1:].partition(".")
                back = n - int(step)
                groups.append("scratchpad" if not place else
                              f"s[{'n' if back == 0 else 'n-1'}].{PLACES[place]}" if back in (0, 1) else "s[other]")
        out.append((q, role, n, groups))
    return out


@dataclass
class QueryLayout:
    """Every target query of a batch and the key group of each of its keys."""

    pos: torch.Tensor  # [B, T] query positions (target_pos)
    mask: torch.Tensor  # [B, T] real queries that have a column
    cell: torch.Tensor  # [B, T] index of (query role, column) = role index * len(columns) + column index
    answer: torch.Tensor  # [B, T] final-answer queries
    answer_slots: torch.Tensor  # [B, A] the final-answer queries' indices along T (0 where masked)
    answer_mask: torch.Tensor  # [B, A]
    group: torch.Tensor  # [B, T, P] key group index; len(key_groups) for keys the query cannot see
    equals_pos: torch.Tensor  # [B]
    operator_pos: torch.Tensor  # [B]
    query_roles: list[str]
    columns: list[int]
    key_groups: list[str]

    @property
    def n_cells(self) -> int:
        return len(self.query_roles) * len(self.columns)


def query_layout(records: list[dict], n_pos: int, device="cpu") -> QueryLayout:
    """Queries and key groups of `records` (each layout computed once), padded to n_pos keys."""
    per_layout: dict[tuple, int] = {}
    first: list[dict] = []  # a record of each layout
    which = []
    for r in records:
        key = (template(r), r["op"] == "*", tuple(r["answer_columns"]))
        if key not in per_layout:
            per_layout[key] = len(first)
            first.append(r)
        which.append(per_layout[key])
    lays = [record_groups(r) for r in first]
    found = {(role, n) for lay in lays for _, role, n, _ in lay}
    roles = [r for r in TARGET_ROLES if any(role == r for role, _ in found)]
    columns = sorted({n for _, n in found})
    groups = sorted({g for lay in lays for *_, gs in lay for g in gs}, key=group_order)
    gi, G = {g: i for i, g in enumerate(groups)}, len(groups)
    T = max((len(lay) for lay in lays), default=0)
    A = max((sum(role == "answer" for _, role, _, _ in lay) for lay in lays), default=0)
    # Per layout, then gathered by each record's layout.
    N = len(lays)
    pos, cell = torch.zeros(N, T, dtype=torch.long), torch.zeros(N, T, dtype=torch.long)
    mask, answer = torch.zeros(N, T, dtype=torch.bool), torch.zeros(N, T, dtype=torch.bool)
    answer_slots, answer_mask = torch.zeros(N, A, dtype=torch.long), torch.zeros(N, A, dtype=torch.bool)
    group = torch.full((N, T, n_pos), G, dtype=torch.long)
    eq_pos, op_pos = torch.zeros(N, dtype=torch.long), torch.zeros(N, dtype=torch.long)
    for i, (r, lay) in enumerate(zip(first, lays)):
        op_pos[i], eq_pos[i], _, _ = prompt_positions(r)
        for j, (q, role, n, gs) in enumerate(lay):
            pos[i, j], cell[i, j], mask[i, j], answer[i, j] = q, roles.index(role) * len(columns) + columns.index(n), \
                True, role == "answer"
            group[i, j, : q + 1] = torch.tensor([gi[x] for x in gs])
        slots = torch.nonzero(answer[i]).flatten()
        answer_slots[i, : len(slots)], answer_mask[i, : len(slots)] = slots, True
    idx = torch.tensor(which, dtype=torch.long)
    return QueryLayout(*(x[idx].to(device) for x in (pos, mask, cell, answer, answer_slots, answer_mask, group, eq_pos,
                                                      op_pos)), roles, columns, groups)


def layout_for_batch(batch: ExampleBatch) -> QueryLayout:
    return query_layout(batch.records, batch.tokens.shape[1], batch.tokens.device)


def stacked_patterns(cache: dict[str, torch.Tensor], n_layers: int) -> torch.Tensor:
    """Attention patterns of every layer from a cache: [L, B, H, P, P]."""
    return torch.stack(layer_patterns(cache, n_layers))


def layer_patterns(cache: dict[str, torch.Tensor], n_layers: int) -> list[torch.Tensor]:
    """Each layer's attention pattern [B, H, P, P] from a cache (not copied)."""
    return [cache[hp.attn_pattern(l)] for l in range(n_layers)]


@dataclass
class AttentionArrays:
    """Per-example values (NaN where an example has no such query, or a group no key there)."""

    stats: dict[str, torch.Tensor]  # name -> [B, L, H], mean over the example's answer queries
    cells: torch.Tensor  # [B, cells, L, H, G] mass per (query role, column) cell and key group
    answer_groups: torch.Tensor  # [B, L, H, G] mass per key group, mean over the answer queries
    chance: torch.Tensor  # [B, cells, G] mass a uniform head would put on each group
    answer_chance: torch.Tensor  # [B, G]


def attention_arrays(patterns: Sequence[torch.Tensor], layout: QueryLayout) -> AttentionArrays:
    """Statistics and key-group masses of each layer's `patterns` [B, H, P, P] at the layout's queries."""
    B, T = layout.pos.shape
    G, K = len(layout.key_groups), layout.n_cells
    rows, mass, keys = _group_mass(patterns, layout)
    L, H, P = rows.shape[2:]  # rows: [B, T, L, H, P(keys)]
    has = (keys > 0) & layout.mask[..., None]  # [B, T, G]
    chance = keys / (layout.pos + 1).to(rows.dtype)[..., None]

    cells, count = _cell_means(mass, has, layout)
    cell = layout.cell.masked_fill(~layout.mask, K)
    cell_chance = chance.new_zeros(B, K + 1, G).scatter_add_(1, cell[..., None].expand(B, T, G),
                                                             chance * has)[:, :K] / count
    w = has.to(rows.dtype)

    ans = w * layout.answer[..., None]  # [B, T, G]
    n_ans = ans.sum(1)
    answer_groups = (mass * ans[:, :, None, None, :]).sum(1) / n_ans[:, None, None, :]
    answer_chance = (ans * chance).sum(1) / n_ans

    # Per-head statistics at the final-answer queries only.
    A = layout.answer_slots.shape[1]
    a_rows = rows.gather(1, layout.answer_slots[:, :, None, None, None].expand(B, A, L, H, P))
    q = layout.pos.gather(1, layout.answer_slots)[:, :, None, None]
    valid = layout.answer_mask[:, :, None, None].expand(B, A, L, H)

    def at(pos: torch.Tensor) -> torch.Tensor:
        return a_rows.gather(-1, pos.expand(B, A, L, H, 1)).squeeze(-1)

    entropy = -torch.special.xlogy(a_rows, a_rows).sum(-1) / (q + 1).to(rows.dtype).log()
    values = {
        "entropy": entropy.masked_fill(q < 1, float("nan")),
        "prev_token": at((q - 1).clamp(min=0)[..., None]).masked_fill(q < 1, float("nan")),
        "sink": at(torch.zeros_like(q)[..., None]),
        "equals": at(layout.equals_pos[:, None, None, None, None]),
        "operator": at(layout.operator_pos[:, None, None, None, None]),
    }
    per_example = {k: torch.nanmean(v.masked_fill(~valid, float("nan")), dim=1) for k, v in values.items()}
    return AttentionArrays(per_example, cells, answer_groups, cell_chance, answer_chance)


def _group_mass(patterns: Sequence[torch.Tensor], layout: QueryLayout) -> tuple[torch.Tensor, ...]:
    """(rows [B, T, L, H, P] of the layers' `patterns` [B, H, P, P] at the queries, mass per key
    group [B, T, L, H, G], visible keys per group [B, T, G])."""
    B, T = layout.pos.shape
    G = len(layout.key_groups)
    batch = torch.arange(B, device=layout.pos.device)[:, None]
    rows = torch.stack([p[batch, :, layout.pos] for p in patterns], dim=2)
    L, H, P = rows.shape[2:]
    mass = rows.new_zeros(B, T, L, H, G + 1).scatter_add_(-1, layout.group[:, :, None, None, :].expand(B, T, L, H, P),
                                                          rows)[..., :G]
    keys = rows.new_zeros(B, T, G + 1).scatter_add_(-1, layout.group, torch.ones_like(layout.group, dtype=rows.dtype))
    return rows, mass, keys[..., :G]


def _cell_means(mass: torch.Tensor, has: torch.Tensor, layout: QueryLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example and (query role, column) cell, the mean mass over its queries there (usually
    one): [B, cells, L, H, G], NaN where the example has no such query or the group no key; and
    the number of queries averaged [B, cells, G]."""
    B, T, L, H, G = mass.shape
    K = layout.n_cells
    cell = layout.cell.masked_fill(~layout.mask, K)  # padding queries go to a dropped cell
    w = has.to(mass.dtype)
    count = w.new_zeros(B, K + 1, G).scatter_add_(1, cell[..., None].expand(B, T, G), w)[:, :K]
    total = mass.new_zeros(B, K + 1, L, H, G).scatter_add_(
        1, cell[:, :, None, None, None].expand(B, T, L, H, G), mass * w[:, :, None, None, :])[:, :K]
    return total / count[:, :, None, None, :], count


def cell_masses(patterns: Sequence[torch.Tensor], layout: QueryLayout) -> torch.Tensor:
    """Only the cells of `attention_arrays` (what the head tests read)."""
    _, mass, keys = _group_mass(patterns, layout)
    return _cell_means(mass, (keys > 0) & layout.mask[..., None], layout)[0]


def twin_mean(arrays: Sequence[AttentionArrays]) -> AttentionArrays:
    """Per example, the mean over the untrained twins (their NaNs fall in the same places)."""
    def mean(xs):
        return torch.stack(list(xs)).mean(0)

    first = arrays[0]
    return AttentionArrays({k: mean(a.stats[k] for a in arrays) for k in first.stats}, mean(a.cells for a in arrays),
                           mean(a.answer_groups for a in arrays), first.chance, first.answer_chance)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _estimates(x: torch.Tensor, seed: int) -> tuple[np.ndarray, ...]:
    """(mean, lo, hi, n) over the first (example) axis, each shaped like x without it."""
    v = _np(x).astype(np.float64)
    out = stats.bootstrap_means(v.reshape(v.shape[0], -1), seed)
    return tuple(o.reshape(v.shape[1:]) for o in out)


def _est(e: tuple[np.ndarray, ...], *i) -> Estimate:
    mean, lo, hi, n = (a[i] for a in e)
    return Estimate(float(mean), float(lo), float(hi), int(n))


def column_roles(arrays: AttentionArrays, twin: AttentionArrays, layout: QueryLayout, layers: list[int],
                 n_twins: int, seed: int) -> ColumnRoles:
    """The per-column table for `layers` from per-example arrays of the model and the twins' mean."""
    Q, C = len(layout.query_roles), len(layout.columns)
    G = len(layout.key_groups)

    def table(cells: torch.Tensor):  # [B, cells, L, H, G] -> [L, H, Q, C, G] (mean, lo, hi, n)
        mean, lo, hi, n = _estimates(cells[:, :, layers], seed)
        shape = (Q, C, len(layers), -1, G)
        return [np.ascontiguousarray(a.reshape(shape).transpose(2, 3, 0, 1, 4)) for a in (mean, lo, hi)] + [n]

    mean, lo, hi, n = table(arrays.cells)
    t_mean, t_lo, t_hi, _ = table(twin.cells)
    chance = _np(torch.nanmean(arrays.chance, dim=0)).reshape(Q, C, G)
    count = n.reshape(Q, C, len(layers), -1, G)[:, :, 0, 0, :]  # the same for every head
    return ColumnRoles(layers=list(layers), query_roles=list(layout.query_roles), columns=list(layout.columns),
                       key_groups=list(layout.key_groups), group_kinds=[group_kind(g) for g in layout.key_groups],
                       mass=mean, mass_lo=lo, mass_hi=hi, untrained=t_mean,
                       untrained_lo=t_lo, untrained_hi=t_hi, chance=chance, n=count.astype(np.int64), twins=n_twins)


def head_roles(table: ColumnRoles, margin: float) -> list[HeadRole]:
    """The holding key group of every (layer, head, query role, column) cell of the table."""
    eligible = np.array([g not in LUMPS for g in table.key_groups])
    out = []
    for li, l in enumerate(table.layers):
        for h in range(table.mass.shape[1]):
            for qi, role in enumerate(table.query_roles):
                for ci, n in enumerate(table.columns):
                    m = table.mass[li, h, qi, ci]
                    m = np.where(eligible & np.isfinite(m), m, -np.inf)
                    if not np.isfinite(m.max()):
                        continue
                    at = (li, h, qi, ci, int(m.argmax()))
                    count = int(table.n[at[2:]])
                    mass = Estimate(float(table.mass[at]), float(table.mass_lo[at]), float(table.mass_hi[at]), count)
                    twin = Estimate(float(table.untrained[at]), float(table.untrained_lo[at]),
                                    float(table.untrained_hi[at]), count)
                    chance = float(table.chance[at[2:]])
                    held = bool(mass.mean - max(chance, twin.mean) >= margin and mass.lo > twin.hi)
                    out.append(HeadRole(l, h, role, n, table.key_groups[at[-1]], mass, twin, chance, held))
    return out


def summarize(arrays: AttentionArrays, twin: AttentionArrays, layout: QueryLayout, layers: list[int], n_twins: int,
              seed: int, margin: float) -> AttentionFindings:
    """AttentionFindings for `layers` from the per-example arrays of the model and its twins' mean."""
    n_heads = arrays.cells.shape[3]
    st = {k: _estimates(v, seed) for k, v in arrays.stats.items()}
    ans, ans_twin = _estimates(arrays.answer_groups, seed), _estimates(twin.answer_groups, seed)
    chance = _np(torch.nanmean(arrays.answer_chance, dim=0))
    answer_groups = [g for i, g in enumerate(layout.key_groups) if np.isfinite(ans[0][..., i]).any()]
    head_stats, role_scores = [], []
    for l in layers:
        for h in range(n_heads):
            head_stats.append(HeadStats(layer=l, head=h, **{k: _est(e, l, h) for k, e in st.items()}))
            for g in answer_groups:
                i = layout.key_groups.index(g)
                role_scores.append(RoleScore(layer=l, head=h, role=g, score=_est(ans, l, h, i), expected=1.0,
                                             untrained=_est(ans_twin, l, h, i), chance=float(chance[i])))
    table = column_roles(arrays, twin, layout, layers, n_twins, seed)
    return AttentionFindings(head_stats=head_stats, role_scores=role_scores, columns=table,
                             head_roles=head_roles(table, margin), role_margin=margin)


def analyze_attention(batch: ExampleBatch, cache: dict, twin_caches: Sequence[dict], n_layers: int, layers: list[int],
                      seed: int, margin: float = ROLE_MARGIN) -> AttentionFindings:
    """DESIGN §4.1 over a batch, from the cached patterns of the model and of its untrained twins."""
    if not twin_caches:
        raise ValueError("analyze_attention needs the caches of at least one untrained twin")
    layout = layout_for_batch(batch)
    arrays = attention_arrays(layer_patterns(cache, n_layers), layout)
    twins = twin_mean([attention_arrays(layer_patterns(c, n_layers), layout) for c in twin_caches])
    return summarize(arrays, twins, layout, layers, len(twin_caches), seed, margin)


def keep_layers(findings: AttentionFindings, layers: list[int]) -> AttentionFindings:
    """`findings` restricted to `layers` (a subset of those analysed)."""
    keep = set(layers)
    table = findings.columns
    if table is not None:
        idx = [i for i, l in enumerate(table.layers) if l in keep]
        table = replace(table, layers=[table.layers[i] for i in idx],
                        **{k: getattr(table, k)[idx] for k in ("mass", "mass_lo", "mass_hi", "untrained",
                                                                "untrained_lo", "untrained_hi")})
    return replace(findings, head_stats=[s for s in findings.head_stats if s.layer in keep],
                   role_scores=[s for s in findings.role_scores if s.layer in keep], columns=table,
                   head_roles=[r for r in findings.head_roles if r.layer in keep])



# ---------------------------------------------------------------- position and delimiter heads
@dataclass
class FixedMass:
    """The position/delimiter-head statistic of one model (see the module docstring)."""

    mass: torch.Tensor  # [B, L, H, Q] per example, mass on each cell's modal group, mean over its queries of a role
    delimiter_share: torch.Tensor  # [L, H, Q] share of that mass (over all examples) on delimiter groups
    modal: torch.Tensor  # [cells, L, H] modal key group index
    used: torch.Tensor  # [cells, L, H] cells taking part (enough examples, a non-lump group with keys)


def fixed_mass(cells: torch.Tensor, layout: QueryLayout) -> FixedMass:
    """The statistic from per-example cell masses [B, cells, L, H, G] (AttentionArrays.cells)."""
    B, K, L, H, G = cells.shape
    has = ~torch.isnan(cells[:, :, 0, 0, :])  # [B, cells, G] the same for every head
    present = has.any(-1)  # [B, cells] the example has such a query
    eligible = torch.tensor([g not in LUMPS for g in layout.key_groups], device=cells.device)
    filled = cells.nan_to_num(0.0)
    mean = filled.sum(0) / has.sum(0)[:, None, None, :]  # [cells, L, H, G]; NaN (0/0) where no example has a key
    score = mean.masked_fill(~eligible | torch.isnan(mean), -torch.inf)
    best, modal = score.max(-1)
    used = torch.isfinite(best) & (present.sum(0) >= MIN_CELL_EXAMPLES)[:, None, None]
    per = filled.gather(-1, modal[None, ..., None].expand(B, K, L, H, 1)).squeeze(-1)  # no key in the group: mass 0
    taken = present[:, :, None, None] & used[None]  # [B, cells, L, H]
    Q = len(layout.query_roles)
    per = (per * taken).reshape(B, Q, -1, L, H)
    mass = (per.sum(2) / taken.reshape(B, Q, -1, L, H).sum(2)).permute(0, 2, 3, 1)  # NaN where no cell is taken
    delim = torch.tensor([is_delimiter(g) for g in layout.key_groups], device=cells.device)[modal]  # [cells, L, H]
    total = per.sum(0)
    share = ((total * delim.reshape(Q, -1, L, H)).sum(1) / total.sum(1)).permute(1, 2, 0)
    return FixedMass(mass, share, modal, used)


@dataclass
class HeadVerdicts:
    """One model's position/delimiter-head test: per (layer, head, query role)."""

    mass: np.ndarray  # [L, H, Q] mean fixed-position mass
    reference: np.ndarray  # [L, H, Q] the same for the reference twins
    lo: np.ndarray  # [L, H, Q] lower bound of the (Bonferroni) interval of the paired difference
    confirmed: np.ndarray  # [L, H, Q] bool
    delimiter: np.ndarray  # [L, H, Q] bool: most of the fixed-position mass is on delimiters
    tests: int


def verdicts(own: FixedMass, reference: Sequence[FixedMass], layout: QueryLayout, min_mass: float, margin: float,
             seed: int) -> HeadVerdicts:
    """The test of one model against reference twins (see the module docstring)."""
    ref = _np(torch.stack([r.mass for r in reference]).mean(0)).astype(np.float64)
    B, L, H, Q = own.mass.shape
    S = _np(own.mass).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)  # a head-role with no usable cell: NaN
        mass, ref_mass = np.nanmean(S, 0), np.nanmean(ref, 0)
    tests = int(np.isfinite(mass).sum())
    lo = np.full((L, H, Q), np.nan)
    cand = np.nonzero((mass >= min_mass).ravel())[0]  # the interval cannot confirm any other
    if cand.size:
        diff = (S - ref).reshape(B, -1)[:, cand]
        np.put(lo, cand, stats.bootstrap_means(diff, seed, ALPHA / tests)[1])
    with np.errstate(invalid="ignore"):
        confirmed = (mass >= min_mass) & (lo > margin)
    delimiter = _np(own.delimiter_share) > DELIMITER_SHARE
    return HeadVerdicts(mass, ref_mass, lo, confirmed, delimiter, tests)


def head_tests(batch: ExampleBatch, cache: dict, twin_caches: Sequence[dict], n_layers: int, seed: int,
               min_mass: float = 0.5, margin: float = 0.2) -> tuple[list[CircuitComponent], list[NullCheck]]:
    """Position and delimiter heads of the model (candidates: fixed-position mass >= min_mass),
    and the NullChecks of both tests, run unchanged on each twin against the other twins."""
    if len(twin_caches) < 2:
        raise ValueError("the position/delimiter-head test needs at least two untrained twins")
    layout = layout_for_batch(batch)
    own = fixed_mass(cell_masses(layer_patterns(cache, n_layers), layout), layout)
    twins = [fixed_mass(cell_masses(layer_patterns(c, n_layers), layout), layout) for c in twin_caches]
    model = verdicts(own, twins, layout, min_mass, margin, seed)
    nulls = [verdicts(t, twins[:i] + twins[i + 1:], layout, min_mass, margin, seed) for i, t in enumerate(twins)]
    components = []
    L, H, Q = model.mass.shape
    for l in range(L):
        for h in range(H):
            for q in range(Q):
                if not model.mass[l, h, q] >= min_mass:
                    continue
                kind = "delimiter_head" if model.delimiter[l, h, q] else "position_head"
                components.append(CircuitComponent(
                    kind, l, h, None, float(model.mass[l, h, q]), float(model.reference[l, h, q]), None, None,
                    bool(model.confirmed[l, h, q]), _head_note(own, layout, model, l, h, q, margin)))

    def check(kind: str, definition: str) -> NullCheck:
        def count(v: HeadVerdicts) -> int:
            return int((v.confirmed & (v.delimiter == (kind == "delimiter_head"))).sum())

        twin_confirmed = [count(v) for v in nulls]
        return NullCheck(kind, definition, model.tests, count(model), [v.tests for v in nulls], twin_confirmed,
                         ALPHA, stats.null_passed(twin_confirmed, ALPHA),
                         "each untrained twin judged against the other twins")

    rule = (f"fixed-position mass >= {min_mass} and the lower bound of its paired difference from the untrained "
            f"twins (95% bootstrap, Bonferroni over head and query role) above {margin}")
    return components, [
        check("position_head", f"A position head: {rule}, at most half of that mass on delimiters."),
        check("delimiter_head", f"A delimiter head: {rule}, more than half of that mass on delimiters."),
    ]


def _head_note(own: FixedMass, layout: QueryLayout, v: HeadVerdicts, l: int, h: int, q: int, margin: float) -> str:
    C = len(layout.columns)
    where: dict[str, list[int]] = {}
    for c in range(C):
        if bool(own.used[q * C + c, l, h]):
            where.setdefault(layout.key_groups[int(own.modal[q * C + c, l, h])], []).append(layout.columns[c])
    pattern = "; ".join(f"{g} at column{'s' if len(cs) > 1 else ''} {', '.join(map(str, cs))}"
                        for g, cs in where.items())
    return (f"{layout.query_roles[q]} digits: {pattern}; mass there {v.mass[l, h, q]:.2f} "
            f"({float(own.delimiter_share[l, h, q]):.0%} on delimiters) vs {v.reference[l, h, q]:.2f} in the untrained "
            f"twins, difference lower bound {v.lo[l, h, q]:.2f} (margin {margin}; Bonferroni over {v.tests} "
            f"head-role tests)")


# ---------------------------------------------------------------- one example, figures, API
def example_stats(attention: np.ndarray, record: dict, layers: list[int]) -> list[dict]:
    """Per-head statistics of one example from its attention [L, H, n, n], and for each target
    query (role, column, position) the mass on every key group that has a key there."""
    patterns = torch.as_tensor(attention, dtype=torch.float64)[:, None]  # [L, 1, H, n, n]: a list of layers
    layout = query_layout([record], attention.shape[-1])
    arrays = attention_arrays(patterns, layout)
    C = len(layout.columns)
    out = []
    for l in layers:
        for h in range(attention.shape[1]):
            row = {"layer": l, "head": h}
            row.update({k: _float(v[0, l, h]) for k, v in arrays.stats.items()})
            row["queries"] = [
                {"role": layout.query_roles[k // C], "column": layout.columns[k % C],
                 "groups": {g: _float(arrays.cells[0, k, l, h, i]) for i, g in enumerate(layout.key_groups)
                            if not np.isnan(float(arrays.cells[0, k, l, h, i]))}}
                for k in range(layout.n_cells) if not torch.isnan(arrays.cells[0, k, l, h]).all()]
            out.append(row)
    return out


def _float(x: torch.Tensor) -> Optional[float]:
    """JSON-safe float: None for NaN (a statistic with no valid query)."""
    v = float(x)
    return None if np.isnan(v) else v


def write_example_stats(path, attention: np.ndarray, record: dict, tokens: list[str], layers: list[int]) -> None:
    """`example_{i}_stats.json`: the example, its answer positions and per-head statistics."""
    data = {
        "prompt": record["prompt"],
        "target": record["target"],
        "tokens": tokens,
        "answer_positions": [q for q, _ in predicting_positions(record)],
        "definitions": {
            "entropy": "row entropy / log(number of visible keys), mean over answer-predicting positions",
            "prev_token": "attention to the previous token", "sink": "attention to BOS",
            "equals": "attention to '='", "operator": "attention to the operator token",
            "queries": "per position predicting a target digit (its role and column n), the attention mass on each "
                       "key group: 'n', 'n-1', ... the operand digits of column n, n-1, ...; 'prev answer' the answer "
                       "digit written just before; 'BOS', 'operator', '=', '|' the delimiters; 's[n].<place>' and "
                       "'s[n-1].<place>' the scratchpad tokens of step n and n-1; 's[other]' other steps",
        },
        "heads": example_stats(attention, record, layers),
    }
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


class AttentionAnalyzer:
    """Attention patterns of a model on problems given as text ('59 + 73').

    `task` is the checkpoint's data spec (`Checkpoint.task`); without it, `api.task_of` decides.
    """

    def __init__(self, model: Transformer, tokenizer: Tokenizer, task: Optional[dict] = None):
        self.model, self.tokenizer, self.task = model, tokenizer, task_of(model, task)

    def patterns(self, text: str) -> tuple[list[str], np.ndarray]:
        """Token labels and attention [L, H, n, n] of the model's full input for one problem."""
        batch = text_batch(self.model, self.tokenizer, [text], self.task)
        _, cache = run_with_cache(self.model, batch, names=hp.at_sites(hp.ATTN_PATTERN))
        n = int(batch.lengths[0])
        att = _np(stacked_patterns(cache, self.model.cfg.n_layers)[:, 0, :, :n, :n])
        return token_labels(self.tokenizer, batch.tokens[0, :n].tolist()), att

    def plot_attention_heads(self, text: str, layer_idx: int, save_path=None) -> np.ndarray:
        """Plot every head of layer `layer_idx` for one problem; returns that layer's [H, n, n]."""
        (layer,) = check_layers([layer_idx], self.model.cfg.n_layers)
        tokens, att = self.patterns(text)
        toolkit.attention_heads(att[layer], tokens, layer, save_path, title=f"{text}: layer {layer}")
        return att[layer]

    def plot_head(self, text: str, layer_idx: int, head_idx: int, save_path=None) -> np.ndarray:
        """Plot one head for one problem; returns its [n, n] pattern."""
        (layer,) = check_layers([layer_idx], self.model.cfg.n_layers)
        tokens, att = self.patterns(text)
        toolkit.attention_head(att[layer, head_idx], tokens, layer, head_idx, save_path)
        return att[layer, head_idx]

    def head_statistics(self, texts: list[str], layers: Optional[list[int]] = None, seed: int = 0,
                        twins: int = UNTRAINED_TWINS) -> AttentionFindings:
        """DESIGN §4.1 statistics, the per-column table and head roles over `texts`, against
        `twins` untrained twins."""
        n_layers = self.model.cfg.n_layers
        layers = check_layers(range(n_layers) if layers is None else layers, n_layers)
        batch = text_batch(self.model, self.tokenizer, texts, self.task)
        only = hp.at_sites(hp.ATTN_PATTERN)
        _, cache = run_with_cache(self.model, batch, names=only)
        twin_caches = [run_with_cache(t, batch, names=only)[1] for t in untrained_twins(self.model, twins, seed)]
        return analyze_attention(batch, cache, twin_caches, n_layers, layers, seed)
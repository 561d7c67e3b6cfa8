"""Minimal pairs for activation patching (DESIGN §4.2), built from the ground truth of a record.

* carry_flip: change one digit of column n-1 (of a or b) so that the carry (borrow) into answer
  column n flips; the column-n operand digits stay fixed.
* sum_flip: change one column-n operand digit without changing any carry (borrow) anywhere.
* operator_flip: swap '+' and '-' with the same operands (only meaningful for 'addsub' models;
  the caller decides whether the model is mixed).

Clean and corrupt always have the same text length, answer span and answer columns, so token
positions align and the position predicting column n is the same in both.

A pair's logit difference is read at one target token (data.target_tokens) that differs between
clean and corrupt: the final-answer digit of column n ("answer") or, in an addition or
subtraction scratchpad, the step digits a pair of that kind changes (TARGETS): for carry_flip the
sum digit and the written carry_in of step n and the carry_out of step n-1; for sum_flip the sum
digit of step n. carry_flip and
sum_flip are defined for '+' and '-' only: in '*' every digit of column n-1 feeds column n's
partial products, so no edit flips only the carry.

Pure Python (no torch): the data stage's records in, records out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from reportgen.data.arithmetic import STEP_ROLES, STEP_TOKENS, STEP_WIDTH, make_record, target_tokens
from reportgen.errors import ReportgenError

PAIR_KINDS = ("carry_flip", "sum_flip", "operator_flip")
# Target tokens each kind changes, as (role, column of the token relative to the aimed column n).
TARGETS = {
    "carry_flip": (("answer", 0), ("sum_digit", 0), ("carry_in", 0), ("carry_out", -1)),
    "sum_flip": (("answer", 0), ("sum_digit", 0)),
    "operator_flip": (("answer", 0),),
}


@dataclass(frozen=True)
class MinimalPair:
    """A clean record, its corrupted twin and the answer digit the pair is about."""

    kind: str
    clean: dict
    corrupt: dict
    column: Optional[int]  # answer column n the pair is aimed at (None for a hand-made pair off the answer)
    pred_pos: int  # token index predicting the target digit (same in clean and corrupt)
    correct: int  # the clean digit there
    counterfactual: int  # the corrupt digit there
    target: str = "answer"  # role of the target token (data.TARGET_ROLES)


def record_format(record: dict) -> tuple[bool, str]:
    """(with_steps, answer_order) of a record, read off its target and answer columns."""
    cols = record["answer_columns"]
    order = "reversed" if len(cols) > 1 and cols[0] < cols[-1] else "plain"
    return "|" in record["target"], order


def remake(record: dict, a: int, b: int, op: str) -> Optional[dict]:
    """The record of `a op b` in `record`'s format, or None where it is not a valid problem."""
    with_steps, order = record_format(record)
    try:
        return make_record(a, b, op, with_steps, order)
    except ReportgenError:
        return None


def digit_at(record: dict, n: int, role: str = "answer") -> Optional[tuple[int, int]]:
    """(predicting token index, digit) of the target token of `role` in column n, or None if the
    record writes no such token (data.target_tokens, by index arithmetic)."""
    full = record["prompt"] + record["target"]
    if role == "answer":
        if n not in record["answer_columns"]:
            return None
        q = record["answer_span"][0] + record["answer_columns"].index(n)
    else:
        if "|" not in record["target"] or record["op"] == "*" or role not in STEP_OFFSETS:
            return None
        q = len(record["prompt"]) + n * STEP_WIDTH + STEP_OFFSETS[role]
        if n < 0 or q >= len(record["prompt"]) + record["target"].index("|"):
            return None
    return q, int(full[q])


STEP_OFFSETS = {role: offset for offset, role in STEP_ROLES.items()}


def token_roles(record: dict) -> list[str]:
    """Role of every token of BOS + prompt + target + EOS, used to align positions across pairs.

    'BOS', operand digits by column ('a2', 'a1', 'a0', 'b0', ...), 'op', '=', scratchpad tokens
    of an addition or subtraction by step (its column) and place in the step ('s1.a', 's1.op1',
    's1.b', 's1.op2', 's1.cin', 's1.eq', 's1.d', 's1.c', 's1.cout', 's1.sep'; a multiplication
    scratchpad by offset into the target, 's0', 's1', ...), final-answer digits by column
    ('ans2', ...), 'EOS'.
    """
    prompt = record["prompt"]
    op_char = prompt.index(record["op"])
    roles = ["BOS"]
    roles += [f"a{op_char - 1 - c}" for c in range(op_char)]
    roles.append("op")
    roles += [f"b{len(prompt) - 2 - c}" for c in range(op_char + 1, len(prompt) - 1)]
    roles.append("=")
    start, end = record["answer_span"]
    columns = record["answer_columns"]
    for c in range(len(prompt), end):
        roles.append(f"ans{columns[c - start]}" if c >= start else _step_role(record, c - len(prompt)))
    return roles + ["EOS"]


def _step_role(record: dict, offset: int) -> str:
    if record["op"] == "*":
        return f"s{offset}"
    step, place = divmod(offset, STEP_WIDTH)
    return f"s{step}.{STEP_TOKENS[place]}"


def role_order(labels, answer_order: str) -> list[str]:
    """`labels` sorted in reading order: BOS, a digits, op, b digits, '=', steps, answer, EOS."""
    sign = -1 if answer_order == "plain" else 1

    def key(r: str):
        if r in ("BOS", "op", "=", "EOS"):
            return ({"BOS": 0, "op": 2, "=": 4, "EOS": 7}[r], 0, 0)
        if r.startswith("ans"):
            return (6, sign * int(r[3:]), 0)
        if r.startswith("s"):
            step, _, place = r[1:].partition(".")
            return (5, int(step), STEP_TOKENS.index(place) if place else 0)
        group = {"a": (1, -1), "b": (3, -1)}[r[0]]
        return (group[0], group[1] * int(r[1:]), 0)

    return sorted(set(labels), key=key)


def _with_digit(x: int, n: int, d: int) -> Optional[int]:
    """x with its column-n digit set to d; None if x has no such digit, d is the same digit, or
    d would be a leading zero (digit counts never change)."""
    s = str(x)
    k = len(s) - 1 - n
    if k < 0 or int(s[k]) == d or (k == 0 and d == 0 and len(s) > 1):
        return None
    return int(s[:k] + str(d) + s[k + 1:])


def _aligned(clean: dict, corrupt: dict) -> bool:
    return (
        len(clean["prompt"]) == len(corrupt["prompt"])
        and len(clean["target"]) == len(corrupt["target"])
        and clean["answer_span"] == corrupt["answer_span"]
        and clean["answer_columns"] == corrupt["answer_columns"]
    )


def _carries(record: dict) -> list[tuple[int, int]]:
    return [(c["carry_in"], c["carry_out"]) for c in record["labels"]["columns"]]


def _digit_edits(record: dict, n: int):
    """Every record that differs from `record` in one operand digit of column n."""
    for which in ("a", "b"):
        for d in range(10):
            new = _with_digit(record[which], n, d)
            if new is None:
                continue
            a, b = (new, record["b"]) if which == "a" else (record["a"], new)
            out = remake(record, a, b, record["op"])
            if out is not None and _aligned(record, out):
                yield out


def candidates(record: dict, kind: str) -> list[tuple[dict, int]]:
    """All (corrupt record, target column n) of one kind for a clean record, in a fixed order."""
    if kind not in PAIR_KINDS:
        raise ReportgenError(f"unknown pair kind {kind!r}; use one of {', '.join(PAIR_KINDS)}")
    op = record["op"]
    if op not in "+-":
        return []
    columns = record["labels"]["columns"]
    out = []
    if kind == "carry_flip":
        for n in record["answer_columns"]:
            if n >= 1:
                for c in _digit_edits(record, n - 1):
                    if c["labels"]["columns"][n]["carry_in"] != columns[n]["carry_in"]:
                        out.append((c, n))
    elif kind == "sum_flip":
        for n in record["answer_columns"]:
            for c in _digit_edits(record, n):
                if _carries(c) == _carries(record):
                    out.append((c, n))
    else:
        c = remake(record, record["a"], record["b"], "-" if op == "+" else "+")
        if c is not None and _aligned(record, c):
            out += [(c, n) for n in record["answer_columns"] if digit_at(c, n)[1] != digit_at(record, n)[1]]
    return out


def pair_of(kind: str, clean: dict, corrupt: dict, column: int, target: str = "answer") -> Optional[MinimalPair]:
    """The pair read at its `target` token (role) for aimed column n, or None where the records
    have no such token or it is the same digit in both."""
    offset = dict(TARGETS.get(kind, ())).get(target, 0)
    here, there = digit_at(clean, column + offset, target), digit_at(corrupt, column + offset, target)
    if here is None or there is None or here[1] == there[1]:
        return None
    return MinimalPair(kind, clean, corrupt, column, here[0], here[1], there[1], target)


def make_pairs(records: list[dict], kind: str, n: int, seed: int, target: str = "answer",
               memo: Optional[dict] = None) -> list[MinimalPair]:
    """Up to n pairs of one kind read at `target` tokens, deterministic given the seed.

    Records are visited in a seeded random order, taking one random candidate per record per
    pass, so pairs spread over as many clean records as possible before any record repeats.
    `memo` (a dict kept by the caller) saves each record's candidates between calls.
    """
    rng = random.Random(f"reportgen-pairs:{seed}:{kind}")
    order = list(range(len(records)))
    rng.shuffle(order)
    memo = {} if memo is None else memo
    pools: dict[int, list] = {}
    out: list[MinimalPair] = []
    while len(out) < n:
        grew = False
        for i in order:
            if len(out) >= n:
                break
            if i not in pools:
                key = (kind, records[i]["prompt"], records[i]["target"])
                if key not in memo:
                    memo[key] = candidates(records[i], kind)
                pools[i] = [p for p in (pair_of(kind, records[i], *c, target) for c in memo[key]) if p]
                rng.shuffle(pools[i])
            if pools[i]:
                out.append(pools[i].pop())
                grew = True
        if not grew:
            break
    return out


def targets_of(records: list[dict], kind: str) -> list[str]:
    """The target roles of `kind` (TARGETS) that the records write at all."""
    written = {role for r in records[:1] for _, role, _ in target_tokens(r)}
    return [role for role, _ in TARGETS[kind] if role in written]

"""Arithmetic data sets: sampling, stratified splits, deterministic files and manifest.

Pure Python (stdlib ``random``, ``hashlib``, ``json``); no torch.

Sampling distribution ("uniform"): the operator is uniform over the task's operators;
the operand lengths ``len_a`` and ``len_b`` are drawn independently and uniformly from
``[min_digits, max_digits]``; each operand is then uniform over the numbers of that
length (a one-digit operand is 0-9, a longer one has a non-zero leading digit). For
subtraction the two drawn operands are swapped when ``a < b`` so that answers are
non-negative. A question is the triple ``(a, op, b)``; no question appears twice within
or across splits (test is drawn first, then val, then train, each excluding the ones
before). Val and test together take at most their share of instances (val_fraction +
test_fraction) of the distinct questions of any operand-length pair, so a small pair
(there are only 100 one-digit additions) is never used up by evaluation and left out of
training.

Strata (``no_carry``, ``one_carry``, ``multi_carry``, ``cascade``; see
``arithmetic.stratum_of``): uniform operands rarely produce cascades, so the val and test
splits, ``stratified_fraction`` of train and :func:`stratified_examples` are drawn with
equal quotas per stratum, by rejection sampling from the uniform distribution (so each
stratum keeps its uniform within-stratum distribution). A stratum that cannot occur
(e.g. ``cascade`` with one-digit operands), is used up, or is too rare to be found in a
bounded number of draws gives its quota to the others, and the manifest says so.

When the whole question space is small (at most ``ENUMERATE_LIMIT`` questions, e.g.
two-digit operands), it is enumerated and sampled exactly (weighted sampling without
replacement), which gives the same distribution as rejection sampling with
de-duplication but knows exactly when a stratum is used up.

Determinism: only ``random.Random`` instances seeded from ``(seed, purpose)`` through
sha256; no ``hash()``, no iteration over sets. JSON is written with sorted keys and fixed
separators, so the same arguments give byte-identical files in any process.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import shutil
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

from reportgen.atomic import PARTIAL, partial_dir, recover, write_file
from reportgen.data.arithmetic import (
    ANSWER_ORDERS,
    STRATA,
    STRATUM_DESCRIPTIONS,
    TASK_OPS,
    TASKS,
    fast_stratum,
    make_record,
)
from reportgen.errors import ReportgenError, os_error_advice

FORMAT = "reportgen-data"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SPLIT_FILES = {s: f"{s}.jsonl" for s in SPLITS}
MANIFEST = "manifest.json"
MAX_DIGITS_LIMIT = 200
# A data set is built in memory (about three times its JSON size) before it is written.
MAX_INSTANCES = 1_000_000
MAX_DATA_BYTES = 640_000_000  # instances times the longest possible record, in JSON bytes (20000 of 200 digits fit)
ENUMERATE_LIMIT = 250_000
RATE_ESTIMATE_DRAWS = 20_000

# Rejection-sampling budgets: a call may make BASE + PER_ITEM * (items wanted) draws; a
# stratum whose observed rate says it cannot be filled within that budget is given up
# (checked every CHECK_EVERY draws once MIN_DRAWS draws have been made).
_BASE_DRAWS = 20_000
_DRAWS_PER_ITEM = 200
_CHECK_EVERY = 1_000
_MIN_DRAWS = 20_000


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _derive_seed(seed: int, purpose: str) -> int:
    digest = hashlib.sha256(f"reportgen-data:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _rng(seed: int, purpose: str) -> random.Random:
    return random.Random(_derive_seed(seed, purpose))


def count_of_length(length: int) -> int:
    """How many numbers have exactly ``length`` digits (0-9 count as one-digit)."""
    return 10 if length == 1 else 9 * 10 ** (length - 1)


def count_questions(task: str, min_digits: int, max_digits: int) -> int:
    """Exact number of distinct questions ``(a, op, b)`` for the task and digit range
    (subtraction counts only a >= b; addsub counts both operators)."""
    lo = 0 if min_digits == 1 else 10 ** (min_digits - 1)
    n = 10**max_digits - lo
    ordered, unordered = n * n, n * (n + 1) // 2
    return {"add": ordered, "mul": ordered, "sub": unordered, "addsub": ordered + unordered}[task]


def possible_strata(task: str, min_digits: int, max_digits: int) -> dict[str, str | None]:
    """For each stratum, None if it can occur, else the reason it cannot.

    add: carries in two columns need two-digit operands. sub: the top column never
    borrows (a >= b), so a borrow needs two digits and two borrows three. mul: a carry
    run of two needs two digits; two carries that are not consecutive need three
    (checked exhaustively for two digits in the tests).
    """
    need = {
        "add": {"no_carry": 1, "one_carry": 1, "multi_carry": 2, "cascade": 2},
        "sub": {"no_carry": 1, "one_carry": 2, "multi_carry": 3, "cascade": 3},
        "mul": {"no_carry": 1, "one_carry": 1, "multi_carry": 3, "cascade": 2},
    }
    ops_tasks = {"add": ("add",), "sub": ("sub",), "mul": ("mul",), "addsub": ("add", "sub")}
    out = {}
    for s in STRATA:
        digits_needed = min(need[t][s] for t in ops_tasks[task])
        out[s] = None if max_digits >= digits_needed else (
            f"cannot occur in task {task!r} with at most {max_digits}-digit operands "
            f"(needs {digits_needed})"
        )
    return out


@dataclass(frozen=True)
class DataSpec:
    """What to generate. Validated on construction (ReportgenError naming the bad value).

    ``stratified_fraction`` of the train split is drawn with equal quotas per stratum,
    the rest uniformly, so that a small model sees enough cascades; val and test are
    fully stratified.
    """

    task: str
    instances: int
    max_digits: int
    min_digits: int = 1
    with_steps: bool = False
    answer_order: str = "plain"
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    stratified_fraction: float = 0.5

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ReportgenError(f"unknown task {self.task!r}; use one of {', '.join(TASKS)}")
        for name in ("instances", "max_digits", "min_digits", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ReportgenError(f"{name} must be an integer, got {v!r}")
        if self.min_digits < 1:
            raise ReportgenError(f"min_digits must be at least 1, got {self.min_digits}")
        if self.max_digits < 1:
            raise ReportgenError(f"max_digits must be at least 1, got {self.max_digits}")
        if self.min_digits > self.max_digits:
            raise ReportgenError(
                f"min_digits ({self.min_digits}) is larger than max_digits ({self.max_digits}); "
                f"lower min_digits or raise max_digits"
            )
        if self.max_digits > MAX_DIGITS_LIMIT:
            raise ReportgenError(
                f"max_digits {self.max_digits} is too large; use at most {MAX_DIGITS_LIMIT}"
            )
        if self.seed < 0:
            raise ReportgenError(f"seed must be a non-negative integer, got {self.seed}")
        if not isinstance(self.with_steps, bool):
            raise ReportgenError(f"with_steps must be True or False, got {self.with_steps!r}")
        if self.answer_order not in ANSWER_ORDERS:
            raise ReportgenError(
                f"unknown answer_order {self.answer_order!r}; use one of {', '.join(ANSWER_ORDERS)}"
            )
        for name in ("val_fraction", "test_fraction", "stratified_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                raise ReportgenError(f"{name} must be a number between 0 and 1, got {v!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ReportgenError(
                f"val_fraction + test_fraction must be below 1 to leave a train split, "
                f"got {self.val_fraction} + {self.test_fraction}"
            )
        if self.instances <= 0:
            raise ReportgenError(f"instances must be positive, got {self.instances}")
        if self.instances > MAX_INSTANCES:
            raise ReportgenError(f"instances must be at most {MAX_INSTANCES} (a data set is built in memory), "
                                 f"got {self.instances}")
        longest = longest_record_bytes(self.task, self.max_digits, self.with_steps, self.answer_order)
        if self.instances * longest > MAX_DATA_BYTES:
            raise ReportgenError(
                f"{self.instances} instances are too many for task {self.task!r} with up to {self.max_digits}-digit "
                f"operands{' and steps' if self.with_steps else ''}: a record takes up to {longest} bytes and a data "
                f"set at most {MAX_DATA_BYTES // 10**6} MB (it is built in memory), so at most "
                f"{MAX_DATA_BYTES // longest} instances; ask for fewer instances or shorter operands")
        total = count_questions(self.task, self.min_digits, self.max_digits)
        if self.instances > total:
            raise ReportgenError(
                f"{self.instances} instances requested but task {self.task!r} with "
                f"{self.min_digits}-{self.max_digits} digit operands has only {total} distinct "
                f"questions; ask for fewer instances or raise max_digits"
            )

    def split_sizes(self) -> dict[str, int]:
        n_test = round(self.instances * self.test_fraction)
        n_val = round(self.instances * self.val_fraction)
        return {"train": self.instances - n_val - n_test, "val": n_val, "test": n_test}

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=64)
def longest_record_bytes(task: str, max_digits: int, with_steps: bool, answer_order: str) -> int:
    """JSON bytes of the task's longest record (largest operands) for this digit range and format."""
    top = 10**max_digits - 1
    records = [make_record(top, top, op, with_steps, answer_order) for op in TASK_OPS[task]]
    return max(len(_json_bytes(r)) + 1 for r in records)


# --------------------------------------------------------------------------- sampling


class _Space:
    """The uniform question distribution of a task and digit range."""

    def __init__(self, task: str, min_digits: int, max_digits: int):
        self.task = task
        self.ops = TASK_OPS[task]
        self.min_digits, self.max_digits = min_digits, max_digits
        self.lengths = range(min_digits, max_digits + 1)
        self.total = count_questions(task, min_digits, max_digits)
        # (lowest number, how many numbers, bits for rejection sampling) per length
        self._ranges = [
            (10 ** (n - 1) if n > 1 else 0, count_of_length(n), count_of_length(n).bit_length())
            for n in self.lengths
        ]

    def draw(self, rng: random.Random) -> tuple[int, str, int]:
        """One question from the uniform distribution (exactly uniform integers by
        rejection on getrandbits, as random.randrange does, without its overhead)."""
        ops, ranges = self.ops, self._ranges
        random_, bits = rng.random, rng.getrandbits
        op = ops[0] if len(ops) == 1 else ops[int(random_() * len(ops))]
        lo, span, k = ranges[int(random_() * len(ranges))]
        a = bits(k)
        while a >= span:
            a = bits(k)
        a += lo
        lo, span, k = ranges[int(random_() * len(ranges))]
        b = bits(k)
        while b >= span:
            b = bits(k)
        b += lo
        if op == "-" and a < b:
            a, b = b, a
        return a, op, b

    def prob(self, a: int, op: str, b: int) -> float:
        """Probability of the question under :meth:`draw`."""
        n_len = len(self.lengths)
        pa = 1.0 / (n_len * count_of_length(len(str(a))))
        pb = 1.0 / (n_len * count_of_length(len(str(b))))
        p = pa * pb / len(self.ops)
        if op == "-" and a != b:
            p *= 2
        return p

    def enumerate(self):
        lo = 0 if self.min_digits == 1 else 10 ** (self.min_digits - 1)
        numbers = range(lo, 10**self.max_digits)
        for op in self.ops:
            for a in numbers:
                for b in numbers:
                    if op == "-" and b > a:
                        break
                    yield a, op, b


def _stratum(q) -> str:
    return fast_stratum(q[0], q[2], q[1])


def count_of_lengths(task: str, len_a: int, len_b: int) -> int:
    """Distinct questions whose operands have ``len_a`` and ``len_b`` digits."""
    ca, cb = count_of_length(len_a), count_of_length(len_b)
    ordered = ca * cb
    sub = ordered if len_a > len_b else (ca * (ca + 1) // 2 if len_a == len_b else 0)
    return {"add": ordered, "mul": ordered, "sub": sub, "addsub": ordered + sub}[task]


def _share_of(share: float, count: int) -> int:
    """ceil(share * count) as the float product gives it (how data sets have always been drawn),
    computed exactly where count is beyond the float range (operands of 155 digits and more)."""
    try:
        return math.ceil(share * count)
    except OverflowError:
        return math.ceil(Fraction(share) * count)


class _LengthRoom:
    """Caps the questions of each operand-length pair that val and test may take, so that a small
    pair (100 one-digit additions) is never used up by evaluation and left out of training."""

    def __init__(self, space: _Space, share: float):
        self.limit = {(la, lb): _share_of(share, count_of_lengths(space.task, la, lb))
                      for la in space.lengths for lb in space.lengths}
        self.taken = dict.fromkeys(self.limit, 0)

    def admit(self, q) -> bool:
        """Count `q` in and return True if its length pair has room left."""
        pair = (len(str(q[0])), len(str(q[2])))
        if self.taken[pair] >= self.limit[pair]:
            return False
        self.taken[pair] += 1
        return True


class _RejectionPool:
    """Draws from the uniform distribution, rejecting used questions and unwanted strata."""

    exact = False

    def __init__(self, space: _Space, rng: random.Random):
        self.space, self.rng = space, rng
        self.dead = {s: r for s, r in possible_strata(
            space.task, space.min_digits, space.max_digits).items() if r}

    def take(self, wanted: dict[str, int], used: set, room: Optional[_LengthRoom] = None) -> dict[str, list]:
        found = {s: [] for s in wanted}
        need = {s: k for s, k in wanted.items() if k > 0 and s not in self.dead}
        budget = _BASE_DRAWS + _DRAWS_PER_ITEM * sum(need.values())
        hits = dict.fromkeys(STRATA, 0)
        draws = 0
        draw, rng = self.space.draw, self.rng
        while need and draws < budget:
            q = draw(rng)
            draws += 1
            s = fast_stratum(q[0], q[2], q[1])
            if s in need and q not in used and (room is None or room.admit(q)):
                hits[s] += 1
                found[s].append(q)
                used.add(q)
                need[s] -= 1
                if not need[s]:
                    del need[s]
            if draws % _CHECK_EVERY == 0 and draws >= _MIN_DRAWS:
                for s in [s for s in STRATA if s in need]:
                    rate = hits[s] / draws
                    if rate == 0 or draws + need[s] / rate > budget:
                        self._give_up(s, hits[s], draws)
                        del need[s]
        for s in [s for s in STRATA if s in need]:
            self._give_up(s, hits[s], draws)
        return found

    def _give_up(self, s, hits, draws):
        self.dead[s] = (
            f"too rare to draw: {hits} new questions of this stratum in {draws} uniform draws "
            f"(rate ~{hits / draws:.2g}); its quota went to the other strata"
        )

    def take_uniform(self, k: int, used: set) -> list:
        out = []
        budget = _BASE_DRAWS + 50 * k
        draws = 0
        while len(out) < k and draws < budget:
            q = self.space.draw(self.rng)
            draws += 1
            if q not in used:
                used.add(q)
                out.append(q)
        return out

    def uniform_rates(self, seed: int) -> dict[str, float]:
        rng = _rng(seed, "uniform-rate")
        counts = dict.fromkeys(STRATA, 0)
        for _ in range(RATE_ESTIMATE_DRAWS):
            counts[_stratum(self.space.draw(rng))] += 1
        return {s: counts[s] / RATE_ESTIMATE_DRAWS for s in STRATA}

    def rate_method(self) -> str:
        return f"estimate from {RATE_ESTIMATE_DRAWS} uniform draws"


class _EnumeratedPool:
    """Exact sampling without replacement over an enumerated (small) question space.

    Every question gets the key Exp(1) / P(question); taking questions in increasing
    key order is weighted sampling without replacement (the same law as rejection
    sampling from P with de-duplication).
    """

    exact = True

    def __init__(self, space: _Space, rng: random.Random):
        self.space = space
        keyed = []
        self.weight = dict.fromkeys(STRATA, 0.0)
        expo = rng.expovariate
        for q in space.enumerate():
            w = space.prob(*q)
            s = _stratum(q)
            self.weight[s] += w
            keyed.append((expo(1.0) / w, q, s))
        keyed.sort()
        self.order = [(q, s) for _, q, s in keyed]
        self.by_stratum = {s: [q for q, t in self.order if t == s] for s in STRATA}
        self.cursor = dict.fromkeys(STRATA, 0)
        self.any_cursor = 0
        self.dead = {}
        reasons = possible_strata(space.task, space.min_digits, space.max_digits)
        for s in STRATA:
            if not self.by_stratum[s]:
                self.dead[s] = reasons[s] or f"no question of task {space.task!r} falls in it"

    def take(self, wanted: dict[str, int], used: set, room: Optional[_LengthRoom] = None) -> dict[str, list]:
        found = {s: [] for s in wanted}
        for s in STRATA:
            k = wanted.get(s, 0)
            if k <= 0 or s in self.dead:
                continue
            items, i = self.by_stratum[s], self.cursor[s]
            while len(found[s]) < k and i < len(items):
                q = items[i]
                i += 1
                if q not in used and (room is None or room.admit(q)):
                    used.add(q)
                    found[s].append(q)
            self.cursor[s] = i
            if len(found[s]) < k:
                self.dead[s] = (
                    f"used up: all {len(items)} distinct questions of this stratum are already "
                    f"in earlier splits; its quota went to the other strata"
                )
        return found

    def take_uniform(self, k: int, used: set) -> list:
        out, i = [], self.any_cursor
        while len(out) < k and i < len(self.order):
            q = self.order[i][0]
            i += 1
            if q not in used:
                used.add(q)
                out.append(q)
        self.any_cursor = i
        return out

    def uniform_rates(self, seed: int) -> dict[str, float]:
        return dict(self.weight)

    def rate_method(self) -> str:
        return f"exact over all {self.space.total} questions"


def _make_pool(space: _Space, rng: random.Random):
    if space.total <= ENUMERATE_LIMIT:
        return _EnumeratedPool(space, rng)
    return _RejectionPool(space, rng)


def _equal_quotas(n: int, strata: list[str]) -> dict[str, int]:
    base, extra = divmod(n, len(strata))
    return {s: base + (1 if i < extra else 0) for i, s in enumerate(strata)}


def _too_few(what: str, got: int, n: int, space: _Space) -> ReportgenError:
    return ReportgenError(
        f"could only draw {got} of the {n} distinct questions needed for {what} "
        f"(task {space.task!r}, {space.min_digits}-{space.max_digits} digits, "
        f"{space.total} questions in all); ask for fewer instances or raise max_digits"
    )


def _take_stratified(pool, n: int, used: set, what: str,
                     room: Optional[_LengthRoom] = None) -> tuple[dict[str, list], dict]:
    """n questions with equal quotas over the strata still available in the pool."""
    result = {s: [] for s in STRATA}
    active = [s for s in STRATA if s not in pool.dead]
    requested = _equal_quotas(n, active) if active else {}
    quotas = requested
    while True:
        found = pool.take(quotas, used, room)
        deficit = 0
        for s, k in quotas.items():
            result[s].extend(found.get(s, []))
            deficit += k - len(found.get(s, []))
        if deficit == 0:
            break
        active = [s for s in STRATA if s not in pool.dead]
        if not active:
            got = sum(len(v) for v in result.values())
            raise _too_few(what, got, n, pool.space)
        quotas = _equal_quotas(deficit, active)
    return result, {s: requested.get(s, 0) for s in STRATA}


def _round_robin(by_stratum: dict[str, list]) -> list:
    """Interleave strata (no_carry, one_carry, multi_carry, cascade, no_carry, ...) so
    that any prefix is balanced."""
    out, i = [], 0
    while True:
        row = [by_stratum[s][i] for s in STRATA if i < len(by_stratum[s])]
        if not row:
            return out
        out.extend(row)
        i += 1


def _records(questions, spec) -> list[dict]:
    return [make_record(a, b, op, spec.with_steps, spec.answer_order) for a, op, b in questions]


def _generate(spec: DataSpec) -> tuple[dict[str, list[dict]], dict]:
    space = _Space(spec.task, spec.min_digits, spec.max_digits)
    pool = _make_pool(space, _rng(spec.seed, "pool"))
    sizes = spec.split_sizes()
    used: set = set()
    questions: dict[str, list] = {}
    requested: dict[str, dict] = {}

    room = _LengthRoom(space, spec.val_fraction + spec.test_fraction)
    by_s, requested["test"] = _take_stratified(pool, sizes["test"], used, "the test split", room)
    questions["test"] = _round_robin(by_s)
    by_s, requested["val"] = _take_stratified(pool, sizes["val"], used, "the val split", room)
    questions["val"] = _round_robin(by_s)

    n_strat = round(sizes["train"] * spec.stratified_fraction)
    by_s, requested["train_stratified"] = _take_stratified(
        pool, n_strat, used, "the stratified part of the train split")
    train = [q for s in STRATA for q in by_s[s]]
    rest = pool.take_uniform(sizes["train"] - n_strat, used)
    if len(rest) < sizes["train"] - n_strat:
        raise _too_few("the train split", n_strat + len(rest), sizes["train"], space)
    train.extend(rest)
    _rng(spec.seed, "shuffle-train").shuffle(train)
    questions["train"] = train

    splits = {name: _records(questions[name], spec) for name in SPLITS}
    info = {
        "pool": pool,
        "requested": requested,
        "uniform_rate": pool.uniform_rates(spec.seed),
        "rate_method": pool.rate_method(),
        "n_train_stratified": n_strat,
    }
    return splits, info


def generate(spec: DataSpec) -> dict[str, list[dict]]:
    """The records of each split: ``{"train": [...], "val": [...], "test": [...]}``.

    Test and val are ordered round-robin over the strata (any prefix is balanced);
    train is shuffled.
    """
    return _generate(spec)[0]


def stratified_examples(task: str, n: int, max_digits: int, min_digits: int = 1,
                        seed: int = 0, with_steps: bool = False,
                        answer_order: str = "plain", exclude=None) -> list[dict]:
    """``n`` fresh records with equal quotas per stratum (where a stratum cannot occur or
    is used up, the others share its quota), ordered round-robin over the strata.

    ``exclude``: optional collection of ``(a, op, b)`` questions not to use (e.g. a
    model's training questions). Used by ``reportgen eval`` and the analyses to make test
    sets in a checkpoint's own task and format.
    """
    spec = DataSpec(task=task, instances=n, max_digits=max_digits, min_digits=min_digits,
                    with_steps=with_steps, answer_order=answer_order, seed=seed,
                    val_fraction=0.0, test_fraction=0.0)
    space = _Space(task, min_digits, max_digits)
    pool = _make_pool(space, _rng(seed, "examples"))
    used = set()
    if exclude is not None:
        for q in exclude:
            a, op, b = q
            used.add((int(a), str(op), int(b)))
    by_s, _ = _take_stratified(pool, n, used, f"{n} stratified examples")
    return _records(_round_robin(by_s), spec)


# --------------------------------------------------------------------------- files


def _split_bytes(records: list[dict]) -> bytes:
    return b"".join(_json_bytes(r) + b"\n" for r in records)


def splits_hash(splits: dict[str, list[dict]]) -> str:
    """The content hash a data set's manifest (and a checkpoint trained on it) records."""
    return _content_hash({name: _split_bytes(splits[name]) for name in SPLITS})


def _content_hash(blobs: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(blobs[name])
    return h.hexdigest()


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def build_manifest(spec: DataSpec, command: str, splits: dict, info: dict,
                   blobs: dict[str, bytes]) -> dict:
    pool = info["pool"]
    counts = {name: len(splits[name]) for name in SPLITS}
    strata_counts = {}
    for name in SPLITS:
        c = dict.fromkeys(STRATA, 0)
        for r in splits[name]:
            c[r["labels"]["stratum"]] += 1
        strata_counts[name] = c
    share = {name: {s: round(strata_counts[name][s] / counts[name], 6) if counts[name] else 0.0
                    for s in STRATA} for name in SPLITS}
    rate = {s: round(v, 6) for s, v in info["uniform_rate"].items()}
    reasons = possible_strata(spec.task, spec.min_digits, spec.max_digits)
    impossible = {s: r for s, r in reasons.items() if r}
    shortfalls = {s: r for s, r in pool.dead.items() if s not in impossible}
    note = (
        f"val and test (and {_percent(spec.stratified_fraction)} of train) are drawn with equal "
        f"quotas per stratum from the uniform distribution restricted to each stratum; "
        f"cascades make up {_percent(share['test']['cascade'])} of test against "
        f"{'' if pool.exact else '~'}{_percent(rate['cascade'])} under uniform sampling "
        f"({info['rate_method']}). Val and test take at most "
        f"{_percent(spec.val_fraction + spec.test_fraction)} of the distinct questions of any "
        f"operand-length pair, so that training sees the rest of every pair."
    )
    if impossible:
        note += " " + "; ".join(f"{s} {r}" for s, r in impossible.items()) + \
            "; the other strata share its quota."
    if shortfalls:
        note += " " + "; ".join(f"{s}: {r}" for s, r in shortfalls.items()) + "."
    max_tokens = max((len(r["prompt"]) + len(r["target"]) + 2
                      for name in SPLITS for r in splits[name]), default=0)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": command,
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "task": spec.task,
        "with_steps": spec.with_steps,
        "answer_order": spec.answer_order,
        "distinct_questions": count_questions(spec.task, spec.min_digits, spec.max_digits),
        "counts": counts,
        "strata": strata_counts,
        "max_sequence_tokens": max_tokens,
        "stratification": {
            "strata": list(STRATA),
            "definitions": dict(STRATUM_DESCRIPTIONS),
            "requested_per_stratum": info["requested"],
            "train_stratified_instances": info["n_train_stratified"],
            "uniform_rate": rate,
            "uniform_rate_method": info["rate_method"],
            "share": share,
            "impossible": impossible,
            "shortfalls": shortfalls,
            "note": note,
        },
        "files": {SPLIT_FILES[name]: {"records": counts[name],
                                      "sha256": hashlib.sha256(blobs[name]).hexdigest()}
                  for name in SPLITS},
        "content_hash": _content_hash(blobs),
        "content_hash_note": "sha256 over the bytes of train.jsonl, val.jsonl, test.jsonl "
                             "in that order",
    }


def write_dataset(spec: DataSpec, out_dir, command: str) -> dict:
    """Generate the data set and write ``train.jsonl``, ``val.jsonl``, ``test.jsonl`` and
    ``manifest.json`` into ``out_dir``; returns the manifest.

    Written atomically (into a temporary directory next to ``out_dir``, then renamed), so
    a failure never leaves a half-written data directory. Refuses an existing non-empty
    ``out_dir``.
    """
    shown = str(out_dir)
    out = Path(os.path.abspath(out_dir))
    cwd = Path.cwd()
    if out == cwd or out in cwd.parents:
        raise ReportgenError(
            f"--out {shown!r} is the current directory or contains it; name a new directory, "
            f"e.g. data/{spec.task}"
        )
    _check_out_dir(out, shown)
    splits, info = _generate(spec)
    blobs = {name: _split_bytes(splits[name]) for name in SPLITS}
    manifest = build_manifest(spec, command, splits, info, blobs)

    parent = out.parent
    tmp = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        recover(out)  # a temporary directory of a `reportgen data` that was killed
        tmp = partial_dir(out)
        for name in SPLITS:
            write_file(tmp / SPLIT_FILES[name], blobs[name])
        write_file(tmp / MANIFEST, json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True).encode() + b"\n")
        _check_out_dir(out, shown)
        if out.is_dir():
            out.rmdir()
        os.rename(tmp, out)
        tmp = None
        (out / PARTIAL).unlink()  # after the rename: killed before, the directory is still marked as a leftover
    except OSError as e:
        raise ReportgenError(
            f"could not write the data set to {shown!r}: {e.strerror or e}; {os_error_advice(e)}"
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _check_out_dir(out: Path, shown: str) -> None:
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ReportgenError(
                f"output path {shown!r} exists and is not a directory; pick a new --out"
            )
        if any(out.iterdir()):
            raise ReportgenError(
                f"output directory {shown!r} already exists and is not empty; pick a new "
                f"--out directory or delete it"
            )


def load_dataset(data_dir) -> tuple[dict, dict[str, list[dict]]]:
    """``(manifest, {"train": [...], "val": [...], "test": [...]})`` from a directory
    written by :func:`write_dataset`; checks the content hash."""
    d = Path(data_dir)
    hint = "generate one with 'reportgen data --task TASK --out DIR'"
    if not d.is_dir():
        raise ReportgenError(f"data directory {str(d)!r} not found; {hint}")
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise ReportgenError(
            f"{str(d)!r} is not a reportgen data directory (no {MANIFEST}); {hint}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ReportgenError(
            f"{str(mpath)!r} is not valid JSON ({str(e).splitlines()[0]}); the data directory "
            f"is damaged: regenerate it with 'reportgen data'"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ReportgenError(f"{str(mpath)!r} is not a reportgen data manifest; {hint}")
    regen = f"regenerate it with: {manifest.get('command') or 'reportgen data'}"
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ReportgenError(
            f"data in {str(d)!r} has format version {manifest.get('format_version')!r}, this "
            f"reportgen reads version {FORMAT_VERSION}; {regen}"
        )
    blobs = {}
    for name in SPLITS:
        p = d / SPLIT_FILES[name]
        try:
            blobs[name] = p.read_bytes()
        except OSError:
            raise ReportgenError(f"{str(p)!r} is missing or unreadable; {regen}") from None
    if _content_hash(blobs) != manifest.get("content_hash"):
        raise ReportgenError(
            f"the files in {str(d)!r} were modified or truncated since they were written "
            f"(content hash mismatch); {regen}"
        )
    splits = {}
    for name in SPLITS:
        records = []
        for i, line in enumerate(blobs[name].splitlines(), 1):
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ReportgenError(
                    f"line {i} of {str(d / SPLIT_FILES[name])!r} is not valid JSON; {regen}"
                ) from None
        splits[name] = records
    return manifest, splits


__all__ = [
    "DataSpec", "SPLITS", "SPLIT_FILES", "MANIFEST", "FORMAT", "FORMAT_VERSION",
    "MAX_DIGITS_LIMIT", "count_questions", "count_of_length", "possible_strata", "generate",
    "stratified_examples", "write_dataset", "load_dataset", "build_manifest",
]

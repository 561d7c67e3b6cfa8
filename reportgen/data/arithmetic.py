"""One arithmetic problem: its text formats and its exact ground-truth labels.

Pure Python (no torch): the data stage only needs the standard library.

Conventions
-----------
* Operands are non-negative integers written without leading zeros (``0`` is the one
  one-digit number that starts with ``0``).
* Subtraction always has ``a >= b`` so every answer is non-negative: the generator
  swaps the operands of a drawn pair when ``a < b``, and :func:`label_problem` /
  :func:`parse_problem` refuse ``a < b``.
* Columns are counted from the least significant digit, ``n = 0``. There is one column
  per digit of the answer; subtraction can leave leading zeros (``100-99=1``), so the
  columns run over ``max(len(a), len(b), len(answer))`` digits, so that every borrow is
  recorded. Digits beyond an operand's length are 0.

Model input
-----------
A record is shown to the model as ``BOS + prompt + target + EOS``, one token per
character. The character at offset ``c`` of ``prompt + target`` is therefore token
``c + 1``, and the token that *predicts* it (whose output logits are trained to produce
it) is token ``c``. :func:`predicting_positions` returns those token indices for the
final-answer digits: the positions where analyses look.
"""

from __future__ import annotations

import re

from reportgen.data.tokenizer import CHARS, Tokenizer
from reportgen.errors import ReportgenError

TASKS = ("add", "sub", "mul", "addsub")
TASK_OPS = {"add": ("+",), "sub": ("-",), "mul": ("*",), "addsub": ("+", "-")}
OPS = ("+", "-", "*")
STRATA = ("no_carry", "one_carry", "multi_carry", "cascade")
ANSWER_ORDERS = ("plain", "reversed")

STRATUM_DESCRIPTIONS = {
    "no_carry": "no column carries (borrows)",
    "one_carry": "exactly one column carries (borrows)",
    "multi_carry": "two or more columns carry (borrow), but no carry cascades",
    "cascade": (
        "a carry (borrow) cascades: longest_cascade >= 2, i.e. a carry passes through at "
        "least one propagate column (a_n+b_n=9 for +, a_n=b_n for -); for * a run of two or "
        "more consecutive carrying columns"
    ),
}

_TOKENIZER = Tokenizer()
_PROBLEM_RE = re.compile(r"([0-9]+)([+*-])([0-9]+)(?:=([0-9]*))?")


def apply_op(a: int, b: int, op: str) -> int:
    """a op b for op in '+', '-', '*'."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ReportgenError(f"unknown operator {op!r}; use one of {', '.join(map(repr, OPS))}")


def stratum_of(n_carries: int, longest_cascade: int) -> str:
    """Difficulty stratum from the number of carrying columns and the longest cascade."""
    if longest_cascade >= 2:
        return "cascade"
    if n_carries >= 2:
        return "multi_carry"
    if n_carries == 1:
        return "one_carry"
    return "no_carry"


def _check_operands(a, b, op) -> None:
    for name, v in (("a", a), ("b", b)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ReportgenError(f"operand {name} must be a non-negative integer, got {v!r}")
    if op not in OPS:
        raise ReportgenError(f"unknown operator {op!r}; use one of {', '.join(map(repr, OPS))}")
    if op == "-" and a < b:
        raise ReportgenError(
            f"subtraction {a}-{b} would be negative; reportgen's subtraction always has "
            f"a >= b, so write it as {b}-{a}"
        )


def _digits(x: int) -> list[int]:
    """Decimal digits of x, least significant first."""
    return [ord(ch) - 48 for ch in reversed(str(x))]


def label_problem(a: int, b: int, op: str) -> dict:
    """Exact ground-truth labels of ``a op b`` (JSON-serialisable).

    Per column ``n`` (LSB first, see the module docstring): ``n``, ``a``, ``b`` (operand
    digits), ``carry_in``, ``carry_out``, ``digit`` (answer digit), ``generate`` (the
    column carries on its own: a_n+b_n >= 10 for '+', a_n < b_n for '-', product sum
    >= 10 for '*'), ``propagate`` (a carry would cascade through it: a_n+b_n == 9 for '+',
    a_n == b_n for '-', always False for '*'), ``cascade_len`` (length of the carry chain
    the column belongs to, 0 if its carry_out is 0). A chain starts at a generating
    column and continues through the following propagate columns that carry only
    because of their carry-in; for '*' a chain is a run of consecutive columns with
    carry_out > 0. '+' columns also have ``sums_to_9`` (== propagate); '-' columns have
    ``borrow_in``/``borrow_out`` (== carry_in/carry_out: borrows use the carry keys too, so
    analyses treat both alike); '*' columns have ``product_sum`` = sum of a_i*b_j over
    i+j=n, the column sum being product_sum + carry_in, digit = sum % 10 and
    carry_out = sum // 10 (may exceed 1).

    Per example: ``op``, ``answer``, ``len_a``, ``len_b`` (digit counts), ``n_columns``,
    ``n_carries`` (columns with carry_out > 0), ``longest_cascade``, ``stratum`` (one of
    STRATA, see :func:`stratum_of`), ``columns``, and for '*' ``partial_products``
    ([a * b_i * 10**i for each digit b_i of b, LSB first]).
    """
    _check_operands(a, b, op)
    answer = apply_op(a, b, op)
    da, db = _digits(a), _digits(b)
    la, lb = len(da), len(db)
    ncols = max(la, lb, len(str(answer)))
    da += [0] * (ncols - la)
    db += [0] * (ncols - lb)

    columns = []
    carry = 0
    if op == "*":
        psum = [0] * ncols
        for i in range(la):
            x = da[i]
            if x:
                for j in range(lb):
                    if db[j]:
                        psum[i + j] += x * db[j]
    for n in range(ncols):
        x, y = da[n], db[n]
        if op == "+":
            s = x + y + carry
            digit, cout = s % 10, s // 10
            gen, prop = x + y >= 10, x + y == 9
            col = {"n": n, "a": x, "b": y, "carry_in": carry, "carry_out": cout, "digit": digit,
                   "generate": gen, "propagate": prop, "sums_to_9": prop}
        elif op == "-":
            s = x - y - carry
            cout = 1 if s < 0 else 0
            digit = s + 10 * cout
            gen, prop = x < y, x == y
            col = {"n": n, "a": x, "b": y, "carry_in": carry, "carry_out": cout, "digit": digit,
                   "borrow_in": carry, "borrow_out": cout, "generate": gen, "propagate": prop}
        else:
            s = psum[n] + carry
            digit, cout = s % 10, s // 10
            gen = psum[n] >= 10
            col = {"n": n, "a": x, "b": y, "carry_in": carry, "carry_out": cout, "digit": digit,
                   "generate": gen, "propagate": False, "product_sum": psum[n]}
        columns.append(col)
        carry = cout
    if carry:  # cannot happen: ncols covers every digit of the answer
        raise AssertionError(f"carry left over in {a}{op}{b}")

    # Carry chains: a new chain starts at a carrying column that generates its carry on
    # its own (for '*': any carrying column after a non-carrying one).
    chains: list[list[dict]] = []
    prev_carry = False
    for col in columns:
        if col["carry_out"] > 0:
            if not prev_carry or (op != "*" and col["generate"]):
                chains.append([])
            chains[-1].append(col)
            prev_carry = True
        else:
            prev_carry = False
        col["cascade_len"] = 0
    for chain in chains:
        for col in chain:
            col["cascade_len"] = len(chain)

    n_carries = sum(1 for c in columns if c["carry_out"] > 0)
    longest = max((len(ch) for ch in chains), default=0)
    labels = {
        "op": op,
        "answer": answer,
        "len_a": la,
        "len_b": lb,
        "n_columns": ncols,
        "n_carries": n_carries,
        "longest_cascade": longest,
        "stratum": stratum_of(n_carries, longest),
        "columns": columns,
    }
    if op == "*":
        labels["partial_products"] = [a * d * 10**i for i, d in enumerate(_digits(b))]
    return labels


def fast_stratum(a: int, b: int, op: str) -> str:
    """The stratum of ``a op b`` (as in :func:`label_problem`), stopping as soon as a
    cascade is seen: the samplers' hot path."""
    n = 0
    if op == "+":
        carry = 0
        while a or b or carry:
            a, x = divmod(a, 10)
            b, y = divmod(b, 10)
            if x + y >= 10:
                carry = 1
                n += 1
            elif x + y == 9 and carry:
                return "cascade"
            else:
                carry = 0
    elif op == "-":
        borrow = 0
        while a:
            a, x = divmod(a, 10)
            b, y = divmod(b, 10)
            if x < y:
                borrow = 1
                n += 1
            elif x == y and borrow:
                return "cascade"
            else:
                borrow = 0
    else:
        # Two lowest columns first: most long products cascade right there.
        a0, b0 = a % 10, b % 10
        c0 = a0 * b0 // 10
        if c0 and ((a // 10) % 10 * b0 + a0 * ((b // 10) % 10) + c0) >= 10:
            return "cascade"
        # Column sums before carrying, from one big-integer product: the digits are spread
        # `width` places apart, wide enough that no column sum spills into the next.
        sa, sb = str(a), str(b)
        width = len(str(81 * min(len(sa), len(sb)))) + 1
        pad = "0" * (width - 1)
        digits = str(int(pad.join(sa)) * int(pad.join(sb)))
        end = len(digits)
        carry = run = 0
        while end > 0 or carry:
            start = end - width
            v = int(digits[max(start, 0):end]) if end > 0 else 0
            end = start
            carry = (v + carry) // 10
            if carry:
                if run:
                    return "cascade"
                run = 1
                n += 1
            else:
                run = 0
    return "no_carry" if n == 0 else "one_carry" if n == 1 else "multi_carry"


def answer_text(answer: int, answer_order: str = "plain") -> str:
    """The answer as written in a target: plain (MSB first) or reversed (LSB first)."""
    _check_answer_order(answer_order)
    s = str(answer)
    return s[::-1] if answer_order == "reversed" else s


def _check_answer_order(answer_order) -> None:
    if answer_order not in ANSWER_ORDERS:
        raise ReportgenError(
            f"unknown answer order {answer_order!r}; use one of {', '.join(ANSWER_ORDERS)}"
        )


def steps_text(a: int, b: int, op: str, labels: dict | None = None) -> str:
    """The scratchpad (written-out steps), without the final '|answer'.

    Steps are separated by ';' and use only the tokenizer's characters:

    * '+': one step per column, LSB first: ``a_n+b_n+carry_in=digit c carry_out``,
      e.g. ``59+73`` -> ``9+3+0=2c1;5+7+1=3c1;0+0+1=1c0``.
    * '-': one step per column, LSB first: ``a_n-b_n-borrow_in=digit b borrow_out``,
      e.g. ``503-7`` -> ``3-7-0=6b1;0-0-1=9b1;5-0-1=4b0``.
    * '*': one step per digit b_i of b, LSB first, giving the partial product
      ``a*(b_i*10**i)=a*b_i*10**i``, then running sums of the partial products, e.g.
      ``12*34`` -> ``12*4=48;12*30=360;48+360=408`` (no sum step when b has one digit).
    """
    if labels is None:
        labels = label_problem(a, b, op)
    cols = labels["columns"]
    if op == "+":
        return ";".join(
            f"{c['a']}+{c['b']}+{c['carry_in']}={c['digit']}c{c['carry_out']}" for c in cols
        )
    if op == "-":
        return ";".join(
            f"{c['a']}-{c['b']}-{c['carry_in']}={c['digit']}b{c['carry_out']}" for c in cols
        )
    steps = []
    partials = labels["partial_products"]
    for i, d in enumerate(_digits(b)):
        steps.append(f"{a}*{d * 10**i}={partials[i]}")
    acc = partials[0]
    for p in partials[1:]:
        steps.append(f"{acc}+{p}={acc + p}")
        acc += p
    return ";".join(steps)


def make_record(a: int, b: int, op: str, with_steps: bool = False,
                answer_order: str = "plain") -> dict:
    """A training/evaluation record for ``a op b``.

    Keys: ``a``, ``b``, ``op``, ``prompt`` (e.g. ``59+73=``), ``target`` (what the model
    produces after the prompt: the answer, or with steps ``<steps>|<answer>``; the answer
    honours ``answer_order``), ``answer`` (int), ``labels`` (:func:`label_problem`),
    ``answer_span`` ([start, end) character offsets of the final answer digits in
    ``prompt + target``) and ``answer_columns`` (the column n of each answer character in
    that span, in written order).

    The model sees ``BOS + prompt + target + EOS``: the character at offset ``c`` of
    ``prompt + target`` is token ``c + 1`` and is predicted by token ``c``; see
    :func:`predicting_positions`.
    """
    if not isinstance(with_steps, bool):
        raise ReportgenError(f"with_steps must be True or False, got {with_steps!r}")
    _check_answer_order(answer_order)
    labels = label_problem(a, b, op)
    answer = labels["answer"]
    ans = answer_text(answer, answer_order)
    prompt = f"{a}{op}{b}="
    target = f"{steps_text(a, b, op, labels)}|{ans}" if with_steps else ans
    end = len(prompt) + len(target)
    width = len(ans)
    if answer_order == "plain":
        answer_columns = list(range(width - 1, -1, -1))
    else:
        answer_columns = list(range(width))
    return {
        "a": a,
        "b": b,
        "op": op,
        "prompt": prompt,
        "target": target,
        "answer": answer,
        "labels": labels,
        "answer_span": [end - width, end],
        "answer_columns": answer_columns,
    }


def predicting_positions(record: dict) -> list[tuple[int, int]]:
    """``(token_index, column_n)`` for each final-answer digit, in written order.

    ``token_index`` indexes the token sequence ``BOS + prompt + target + EOS`` and is the
    position whose output predicts that answer digit (one before the digit's own token).
    """
    start, end = record["answer_span"]
    return list(zip(range(start, end), record["answer_columns"]))


# What each digit of an addition/subtraction scratchpad step is, by its offset in the step:
# 'a_n+b_n+carry_in=digit c carry_out' ('-' and 'b' for subtraction), then ';' or '|'.
STEP_ROLES = {0: "operand_a", 2: "operand_b", 4: "carry_in", 6: "sum_digit", 8: "carry_out"}
STEP_WIDTH = 10  # characters of one step including its separator
STEP_TOKENS = ("a", "op1", "b", "op2", "cin", "eq", "d", "c", "cout", "sep")  # every place of a step, in order
TARGET_ROLES = ("answer", "operand_a", "operand_b", "carry_in", "sum_digit", "carry_out", "step")
TARGET_ROLE_DESCRIPTIONS = {
    "answer": "a digit of the final answer",
    "operand_a": "a scratchpad copy of a's digit in the step's column",
    "operand_b": "a scratchpad copy of b's digit in the step's column",
    "carry_in": "the carry (borrow) written into a scratchpad step, copied from the previous step",
    "sum_digit": "the column's result digit written in a scratchpad step",
    "carry_out": "the carry (borrow) a scratchpad step writes out of its column",
    "step": "a digit of a multiplication scratchpad (partial products and their sums)",
}


def target_tokens(record: dict) -> list[tuple[int, str, int | None]]:
    """``(token_index, role, column_n)`` for every digit the model writes after the prompt,
    in written order: scratchpad digits by their role in the step (see TARGET_ROLES; the
    column is the step's column, None in multiplication scratchpads) and the final-answer
    digits ("answer", their column). ``token_index`` predicts the digit, as in
    :func:`predicting_positions`.
    """
    prompt, target = record["prompt"], record["target"]
    out = []
    if "|" in target:
        for c, ch in enumerate(target[: target.index("|")]):
            if not ch.isdigit():
                continue
            if record["op"] == "*":
                out.append((len(prompt) + c, "step", None))
            else:
                step, offset = divmod(c, STEP_WIDTH)
                out.append((len(prompt) + c, STEP_ROLES[offset], step))
    return out + [(q, "answer", n) for q, n in predicting_positions(record)]


def task_of_ops(ops) -> str | None:
    """The task whose operators are exactly ``ops``, or None."""
    ops = tuple(sorted(set(ops)))
    for task, t_ops in TASK_OPS.items():
        if tuple(sorted(t_ops)) == ops:
            return task
    return None


def parse_problem(text: str, ops_allowed=None) -> tuple[int, int, str]:
    """Parse a user's problem: ``"59 + 73"``, ``"59+73="`` or ``"59 + 73 = 132"``.

    Whitespace is dropped (``Tokenizer.normalize``). ``ops_allowed`` is a task name (one
    of TASKS) or an iterable of operators; None allows every operator. Returns
    ``(a, b, op)``. Raises a one-line ReportgenError for an unknown character (naming it
    and its position), text not of the form ``<digits><op><digits>[=[answer]]``, a
    number with a leading zero, an operator outside ``ops_allowed``, a negative
    subtraction, or a given answer that is wrong.
    """
    if not isinstance(text, str):
        raise ReportgenError(f"a problem must be text like '59 + 73', got {text!r}")
    norm = Tokenizer.normalize(text)
    if not norm:
        raise ReportgenError("empty problem; write one like '59 + 73'")
    _TOKENIZER.encode(norm, bos=False)  # unknown character -> error naming it and its position
    m = _PROBLEM_RE.fullmatch(norm)
    if not m:
        raise ReportgenError(
            f"{text!r} is not a problem of the form <digits><operator><digits>; "
            f"write it like '59 + 73' or '59 + 73 = 132' (operators: + - *)"
        )
    sa, op, sb, given = m.groups()
    for s in (sa, sb):
        if len(s) > 1 and s[0] == "0":
            raise ReportgenError(
                f"number {s!r} in {text!r} has a leading zero; write it as {str(int(s))!r}"
            )
    a, b = int(sa), int(sb)
    if ops_allowed is not None:
        if isinstance(ops_allowed, str) and ops_allowed in TASK_OPS:
            task, allowed = ops_allowed, TASK_OPS[ops_allowed]
        else:
            allowed = tuple(ops_allowed)
            task = task_of_ops(allowed)
        if op not in allowed:
            where = f"the model's training task {task!r}" if task else "the allowed operators"
            raise ReportgenError(
                f"operator {op!r} in {text!r} was not in {where}; use one of "
                f"{', '.join(map(repr, allowed))}"
            )
    if op == "-" and a < b:
        raise ReportgenError(
            f"subtraction {a}-{b} would be negative; reportgen's subtraction always has "
            f"a >= b, so write it as {b}-{a}"
        )
    if given:
        correct = apply_op(a, b, op)
        if len(given) > 1 and given[0] == "0" or int(given) != correct:
            raise ReportgenError(
                f"the answer given in {text!r} is wrong: {a}{op}{b}={correct}; "
                f"give the correct answer or leave it out"
            )
    return a, b, op


def parse_example(text: str, task: dict) -> tuple[int, int, str]:
    """A user's example for a model of `task` (a dict with ``task``, ``with_steps`` and
    ``answer_order``): a problem as :func:`parse_problem` reads it, or one followed by its answer
    in the model's own format, as a report shows it (``59+48=701`` for reversed answers,
    ``59+48=9+8+0=7c1;5+4+1=0c1;0+0+1=1c0|107`` with steps). Returns ``(a, b, op)``. A given
    answer that is neither right as a number nor the model's own target is a ReportgenError
    naming the problem, its answer and how the model writes it."""
    norm = Tokenizer.normalize(text) if isinstance(text, str) else ""
    head, _, given = norm.partition("=")
    if not given:
        return parse_problem(text, ops_allowed=task["task"])
    _TOKENIZER.encode(norm, bos=False)  # unknown character -> error naming it and its position
    a, b, op = parse_problem(head, ops_allowed=task["task"])
    answer = apply_op(a, b, op)
    written = make_record(a, b, op, bool(task.get("with_steps")), task.get("answer_order", "plain"))["target"]
    if given not in (written, str(answer)):
        what = "steps" if "|" in written and given.endswith(written[written.index("|"):]) else "answer"
        own = f", which this model writes as {a}{op}{b}={written}" if written != str(answer) else ""
        raise ReportgenError(
            f"the {what} given in {text!r} {'are' if what == 'steps' else 'is'} wrong: {a}{op}{b}={answer}{own}; "
            f"give the correct {what} or leave {'them' if what == 'steps' else 'it'} out"
        )
    return a, b, op


__all__ = [
    "TASKS", "TASK_OPS", "OPS", "STRATA", "STRATUM_DESCRIPTIONS", "ANSWER_ORDERS", "CHARS",
    "apply_op", "stratum_of", "label_problem", "fast_stratum", "answer_text", "steps_text",
    "make_record", "predicting_positions", "target_tokens", "TARGET_ROLES", "TARGET_ROLE_DESCRIPTIONS",
    "parse_example", "parse_problem", "task_of_ops",
]

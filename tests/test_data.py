"""Data stage: arithmetic ground truth, text formats, data sets, files and the CLI."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from reportgen.cli import data as data_cli
from reportgen.data.arithmetic import (
    STRATA,
    TASK_OPS,
    fast_stratum,
    label_problem,
    make_record,
    parse_example,
    parse_problem,
    predicting_positions,
    target_tokens,
)
from reportgen.data.dataset import (
    DataSpec,
    count_of_lengths,
    count_questions,
    generate,
    load_dataset,
    possible_strata,
    stratified_examples,
    write_dataset,
)
from reportgen.data.tokenizer import CHARS, Tokenizer
from reportgen.errors import ReportgenError

REPO = Path(__file__).resolve().parents[1]
TOK = Tokenizer()


def _col(labels, key):
    return [c[key] for c in labels["columns"]]


# ----------------------------------------------------------------- known labels


def test_labels_59_plus_73():
    lab = label_problem(59, 73, "+")
    assert lab["answer"] == 132
    assert _col(lab, "carry_out") == [1, 1, 0]
    assert _col(lab, "carry_in") == [0, 1, 1]
    assert _col(lab, "digit") == [2, 3, 1]
    assert _col(lab, "a") == [9, 5, 0] and _col(lab, "b") == [3, 7, 0]
    assert lab["n_carries"] == 2 and lab["longest_cascade"] == 1
    assert _col(lab, "cascade_len") == [1, 1, 0]  # two separate chains: both columns generate
    assert lab["stratum"] == "multi_carry"
    assert (lab["op"], lab["len_a"], lab["len_b"]) == ("+", 2, 2)
    json.dumps(lab)  # JSON-serialisable


def test_labels_999_plus_1_cascade():
    lab = label_problem(999, 1, "+")
    assert _col(lab, "digit") == [0, 0, 0, 1]
    assert _col(lab, "carry_out") == [1, 1, 1, 0]
    assert _col(lab, "propagate") == [False, True, True, False]
    assert _col(lab, "sums_to_9") == _col(lab, "propagate")
    assert _col(lab, "cascade_len") == [3, 3, 3, 0]
    assert lab["longest_cascade"] == 3 and lab["stratum"] == "cascade"


def test_labels_no_carry_and_one_carry():
    lab = label_problem(12, 34, "+")
    assert _col(lab, "digit") == [6, 4] and lab["n_carries"] == 0
    assert lab["stratum"] == "no_carry" and lab["longest_cascade"] == 0
    assert label_problem(15, 5, "+")["stratum"] == "one_carry"
    # a 9-column without an incoming carry does not cascade
    assert label_problem(95, 5, "+")["stratum"] == "cascade"
    assert label_problem(94, 5, "+")["stratum"] == "no_carry"


def test_labels_subtraction_borrow():
    lab = label_problem(503, 7, "-")
    assert lab["answer"] == 496
    assert _col(lab, "digit") == [6, 9, 4]
    assert _col(lab, "borrow_out") == [1, 1, 0] == _col(lab, "carry_out")
    assert _col(lab, "borrow_in") == [0, 1, 1] == _col(lab, "carry_in")
    assert _col(lab, "propagate") == [False, True, False]  # 0 == 0: a borrow cascades
    assert _col(lab, "cascade_len") == [2, 2, 0]
    assert lab["stratum"] == "cascade"
    # leading zeros of the answer still get their columns, so every borrow is recorded
    lab = label_problem(100, 99, "-")
    assert lab["answer"] == 1 and lab["n_columns"] == 3
    assert _col(lab, "borrow_out") == [1, 1, 0]
    assert label_problem(73, 59, "-")["stratum"] == "one_carry"
    with pytest.raises(ReportgenError, match="a >= b"):
        label_problem(7, 503, "-")


def test_labels_multiplication():
    lab = label_problem(12, 34, "*")
    assert lab["answer"] == 408
    assert lab["partial_products"] == [48, 360]
    # column sums: 2*4=8; 1*4+2*3=10; 1*3+1=4
    assert _col(lab, "product_sum") == [8, 10, 3]
    assert _col(lab, "digit") == [8, 0, 4]
    assert _col(lab, "carry_out") == [0, 1, 0]
    assert lab["stratum"] == "one_carry"
    lab = label_problem(99, 9, "*")  # 891: carries 8 and 8 in consecutive columns
    assert _col(lab, "carry_out") == [8, 8, 0]
    assert _col(lab, "cascade_len") == [2, 2, 0]
    assert lab["stratum"] == "cascade" and not any(_col(lab, "propagate"))
    assert label_problem(505, 2, "*")["stratum"] == "multi_carry"  # columns 0 and 2 carry


# ----------------------------------------------------------------- exhaustive checks


@pytest.mark.parametrize("op", ["+", "-", "*"])
def test_exhaustive_two_digit_labels(op):
    strata = Counter()
    for a in range(100):
        for b in range(100):
            if op == "-" and a < b:
                continue
            lab = label_problem(a, b, op)
            cols = lab["columns"]
            answer = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert lab["answer"] == answer
            assert sum(c["digit"] * 10 ** c["n"] for c in cols) == answer
            assert [c["n"] for c in cols] == list(range(len(cols)))
            assert cols[0]["carry_in"] == 0 and cols[-1]["carry_out"] == 0
            for prev, c in zip(cols, cols[1:]):
                assert c["carry_in"] == prev["carry_out"]
            for c in cols:
                assert 0 <= c["digit"] <= 9
                if op == "+":
                    assert c["a"] + c["b"] + c["carry_in"] == c["digit"] + 10 * c["carry_out"]
                elif op == "-":
                    assert c["a"] - c["b"] - c["carry_in"] == c["digit"] - 10 * c["carry_out"]
                else:
                    assert c["product_sum"] + c["carry_in"] == c["digit"] + 10 * c["carry_out"]
                assert (c["cascade_len"] > 0) == (c["carry_out"] > 0)
            assert lab["n_carries"] == sum(c["carry_out"] > 0 for c in cols)
            assert lab["longest_cascade"] == max(_col(lab, "cascade_len"), default=0)
            assert fast_stratum(a, b, op) == lab["stratum"]
            strata[lab["stratum"]] += 1
    # possible_strata agrees with the exhaustive enumeration for two digits
    task = {"+": "add", "-": "sub", "*": "mul"}[op]
    reasons = possible_strata(task, 1, 2)
    assert {s for s in STRATA if reasons[s] is None} == set(strata)


def test_fast_paths_agree_on_long_numbers():
    import random

    rng = random.Random(7)
    for _ in range(1500):
        a = rng.randrange(10 ** rng.randint(1, 25))
        b = rng.randrange(10 ** rng.randint(1, 25))
        for op in "+-*":
            x, y = (max(a, b), min(a, b)) if op == "-" else (a, b)
            lab = label_problem(x, y, op)
            assert fast_stratum(x, y, op) == lab["stratum"]
            assert sum(c["digit"] * 10 ** c["n"] for c in lab["columns"]) == lab["answer"]


def test_possible_strata_small_cases():
    assert possible_strata("add", 1, 1)["cascade"] is not None
    assert possible_strata("add", 1, 2)["cascade"] is None
    assert possible_strata("sub", 1, 2)["cascade"] is not None
    assert label_problem(211, 122, "-")["stratum"] == "multi_carry"  # sub multi needs 3 digits
    assert label_problem(100, 1, "-")["stratum"] == "cascade"
    assert all(r is None for r in possible_strata("sub", 3, 3).values())
    assert possible_strata("mul", 1, 2)["multi_carry"] is not None
    assert possible_strata("mul", 1, 3)["multi_carry"] is None


# ----------------------------------------------------------------- text formats

_ADD_STEP = re.compile(r"(\d)\+(\d)\+([01])=(\d)c([01])")
_SUB_STEP = re.compile(r"(\d)-(\d)-([01])=(\d)b([01])")
_MUL_STEP = re.compile(r"(\d+)\*(\d+)=(\d+)")
_SUM_STEP = re.compile(r"(\d+)\+(\d+)=(\d+)")


def _check_steps(rec):
    """Every step of a with-steps target is arithmetically correct and in order."""
    a, b, op = rec["a"], rec["b"], rec["op"]
    steps, answer = rec["target"].split("|")
    order_reversed = answer != str(rec["answer"])
    assert (answer[::-1] if order_reversed else answer) == str(rec["answer"])
    steps = steps.split(";")
    if op in "+-":
        pattern = _ADD_STEP if op == "+" else _SUB_STEP
        carry, digits = 0, []
        for n, step in enumerate(steps):
            x, y, cin, d, cout = map(int, pattern.fullmatch(step).groups())
            assert cin == carry
            assert x == (a // 10**n) % 10 and y == (b // 10**n) % 10
            if op == "+":
                assert x + y + cin == d + 10 * cout
            else:
                assert x - y - cin == d - 10 * cout
            carry = cout
            digits.append(d)
        assert carry == 0
        assert sum(d * 10**n for n, d in enumerate(digits)) == rec["answer"]
    else:
        nb = len(str(b))
        partials = []
        for i, step in enumerate(steps[:nb]):
            x, m, p = map(int, _MUL_STEP.fullmatch(step).groups())
            assert x == a and m == (b // 10**i) % 10 * 10**i and p == x * m
            partials.append(p)
        acc = partials[0]
        assert len(steps) == nb + nb - 1
        for i, step in enumerate(steps[nb:], 1):
            x, y, s = map(int, _SUM_STEP.fullmatch(step).groups())
            assert x == acc and y == partials[i] and s == x + y
            acc = s
        assert acc == rec["answer"] == a * b


def test_steps_examples():
    assert make_record(59, 73, "+", True)["target"] == "9+3+0=2c1;5+7+1=3c1;0+0+1=1c0|132"
    assert make_record(59, 73, "+", True, "reversed")["target"].endswith("|231")
    assert make_record(503, 7, "-", True)["target"] == "3-7-0=6b1;0-0-1=9b1;5-0-1=4b0|496"
    assert make_record(12, 34, "*", True)["target"] == "12*4=48;12*30=360;48+360=408|408"
    assert make_record(12, 3, "*", True)["target"] == "12*3=36|36"
    assert make_record(59, 73, "+")["target"] == "132"
    assert make_record(59, 73, "+", answer_order="reversed")["target"] == "231"


@pytest.mark.parametrize("task", ["add", "sub", "mul", "addsub"])
def test_generated_steps_are_correct_and_in_vocabulary(task):
    spec = DataSpec(task=task, instances=400, max_digits=4, with_steps=True, seed=3)
    splits = generate(spec)
    for records in splits.values():
        for rec in records:
            text = rec["prompt"] + rec["target"]
            assert set(text) <= set(CHARS)
            assert TOK.decode(TOK.encode(text, eos=True)) == text
            assert rec["prompt"] == f"{rec['a']}{rec['op']}{rec['b']}="
            assert rec["op"] in TASK_OPS[task]
            _check_steps(rec)


@pytest.mark.parametrize("with_steps", [False, True])
@pytest.mark.parametrize("order", ["plain", "reversed"])
def test_answer_span_columns_and_predicting_positions(with_steps, order):
    recs = [make_record(a, b, op, with_steps, order)
            for a, b, op in [(59, 73, "+"), (999, 1, "+"), (100, 99, "-"), (503, 7, "-"),
                             (12, 34, "*"), (0, 0, "+"), (7, 0, "*")]]
    recs += stratified_examples("addsub", 40, 5, seed=1, with_steps=with_steps,
                                answer_order=order)
    for rec in recs:
        full = rec["prompt"] + rec["target"]
        start, end = rec["answer_span"]
        answer = str(rec["answer"])
        written = full[start:end]
        assert end == len(full)
        assert written == (answer if order == "plain" else answer[::-1])
        assert len(rec["answer_columns"]) == len(written)
        digit_of = {c["n"]: c["digit"] for c in rec["labels"]["columns"]}
        for ch, n in zip(written, rec["answer_columns"]):
            assert int(ch) == digit_of[n]
        expected_cols = list(range(len(answer)))
        assert rec["answer_columns"] == (expected_cols[::-1] if order == "plain" else expected_cols)
        ids = TOK.encode(full, eos=True)
        positions = predicting_positions(rec)
        assert [n for _, n in positions] == rec["answer_columns"]
        for (pos, _), ch in zip(positions, written):
            # the token at pos predicts the next token, which is the answer digit ch
            assert TOK.vocab[ids[pos + 1]] == ch
            assert TOK.vocab[ids[pos]] in (CHARS + ("<bos>",))
        assert ids[end + 1] == TOK.eos_id


@pytest.mark.parametrize("order", ["plain", "reversed"])
def test_target_tokens_label_every_written_digit_with_its_ground_truth(order):
    """Each scratchpad digit's role names the ground-truth value it must equal; the answer
    digits come last, as predicting_positions gives them."""
    recs = [make_record(a, b, op, True, order) for a, b, op in [(59, 73, "+"), (999, 1, "+"), (503, 7, "-")]]
    recs += stratified_examples("addsub", 30, 3, seed=2, with_steps=True, answer_order=order)
    for rec in recs:
        full = rec["prompt"] + rec["target"]
        targets = target_tokens(rec)
        assert [q for q, ch in enumerate(full) if q >= len(rec["prompt"]) and ch.isdigit()] == [q for q, _, _ in targets]
        assert targets[-len(rec["answer_columns"]):] == [(q, "answer", n) for q, n in predicting_positions(rec)]
        truth = {"operand_a": "a", "operand_b": "b", "carry_in": "carry_in", "sum_digit": "digit", "carry_out": "carry_out"}
        for q, role, n in targets[: -len(rec["answer_columns"])]:
            assert int(full[q]) == rec["labels"]["columns"][n][truth[role]]
    mul = make_record(12, 34, "*", True, order)
    assert {role for _, role, _ in target_tokens(mul)} == {"step", "answer"}
    assert target_tokens(make_record(59, 73, "+", False, order)) == [(q, "answer", n) for q, n in predicting_positions(make_record(59, 73, "+", False, order))]


# ----------------------------------------------------------------- parsing


def test_parse_problem_accepts():
    assert parse_problem("59 + 73") == (59, 73, "+")
    assert parse_problem("59+73=") == (59, 73, "+")
    assert parse_problem("59 + 73 = 132") == (59, 73, "+")
    assert parse_problem(" 12 * 34 ") == (12, 34, "*")
    assert parse_problem("503 - 7", ops_allowed="sub") == (503, 7, "-")
    assert parse_problem("5-3", ops_allowed="+-") == (5, 3, "-")


@pytest.mark.parametrize("text, pattern", [
    ("59 + 7a", r"'a' at position 4"),
    ("59 / 7", r"'/' at position 2"),
    ("59 + 73 = 131", r"wrong.*59\+73=132"),
    ("59 + ", r"<digits><operator><digits>"),
    ("59 + 73 = 132 = 132", r"<digits><operator><digits>"),
    ("+59", r"<digits><operator><digits>"),
    ("", r"empty"),
    ("059 + 73", r"leading zero"),
    ("7 - 59", r"a >= b.*59-7"),
])
def test_parse_problem_rejects(text, pattern):
    with pytest.raises(ReportgenError, match=pattern) as exc:
        parse_problem(text)
    assert "\n" not in str(exc.value)


REVERSED = {"task": "add", "with_steps": False, "answer_order": "reversed"}
STEPS = {"task": "add", "with_steps": True, "answer_order": "plain"}
PLAIN = {"task": "add", "with_steps": False, "answer_order": "plain"}


@pytest.mark.parametrize("task", [REVERSED, STEPS, PLAIN, {**STEPS, "task": "addsub", "answer_order": "reversed"}])
@pytest.mark.parametrize("a, op, b", [(59, "+", 48), (999, "+", 1), (5, "+", 0), (503, "-", 7)])
def test_an_example_as_the_model_writes_it_reads_back(task, a, op, b):
    """'59+48=701' for a reversed model, the whole scratchpad for a steps model: what a report shows."""
    if op not in TASK_OPS[task["task"]]:
        return
    record = make_record(a, b, op, task["with_steps"], task["answer_order"])
    assert parse_example(record["prompt"] + record["target"], task) == (a, b, op)
    assert parse_example(f"{a} {op} {b} = {record['answer']}", task) == (a, b, op)  # the number, as before
    assert parse_example(f"{a}{op}{b}", task) == (a, b, op)


@pytest.mark.parametrize("text, task, pattern", [
    ("59+48=710", REVERSED, r"answer given in '59\+48=710' is wrong: 59\+48=107, which this model writes as 59\+48=701"),
    ("59+48=701", PLAIN, r"answer given in '59\+48=701' is wrong: 59\+48=107;"),
    ("59+48=9+8+0=7c1;5+4+1=1c1;0+0+1=1c0|107", STEPS, r"steps given in .* are wrong: .*5\+4\+1=0c1"),
    ("59+48=108", STEPS, r"answer given in '59\+48=108' is wrong"),
    ("59+4x=113", REVERSED, r"'x' at position 4"),
    ("59-48=11", REVERSED, r"operator '-'"),
])
def test_a_wrong_answer_in_any_format_is_refused_by_name(text, task, pattern):
    with pytest.raises(ReportgenError, match=pattern) as exc:
        parse_example(text, task)
    assert "\n" not in str(exc.value)


def test_parse_problem_operator_not_in_task():
    with pytest.raises(ReportgenError) as exc:
        parse_problem("12 * 34", ops_allowed="add")
    assert str(exc.value) == (
        "operator '*' in '12 * 34' was not in the model's training task 'add'; use one of '+'")
    with pytest.raises(ReportgenError, match="task 'addsub'; use one of '\\+', '-'"):
        parse_problem("12*34", ops_allowed=("+", "-"))


# ----------------------------------------------------------------- data sets


def test_spec_validation():
    assert count_questions("add", 1, 1) == 100
    assert count_questions("sub", 1, 1) == 55
    assert count_questions("addsub", 1, 1) == 155
    assert count_questions("mul", 2, 2) == 90 * 90
    assert count_questions("add", 1, 2) == 100 * 100
    DataSpec(task="add", instances=100, max_digits=1)  # exactly all questions is fine
    DataSpec(task="sub", instances=55, max_digits=1)
    bad = [
        (dict(task="add", instances=101, max_digits=1), r"101 instances.*only 100 distinct"),
        (dict(task="sub", instances=56, max_digits=1), r"only 55 distinct"),
        (dict(task="div", instances=10, max_digits=2), r"unknown task 'div'"),
        (dict(task="add", instances=10, max_digits=2, min_digits=3), r"min_digits \(3\)"),
        (dict(task="add", instances=10, max_digits=0), r"max_digits must be at least 1"),
        (dict(task="add", instances=10, max_digits=2, min_digits=0), r"min_digits must be"),
        (dict(task="add", instances=0, max_digits=2), r"instances must be positive"),
        (dict(task="add", instances=10, max_digits=2, answer_order="backwards"), r"backwards"),
        (dict(task="add", instances=10, max_digits=2, val_fraction=0.6, test_fraction=0.5),
         r"below 1"),
    ]
    for kwargs, pattern in bad:
        with pytest.raises(ReportgenError, match=pattern):
            DataSpec(**kwargs)


def _questions(records):
    return [(r["a"], r["op"], r["b"]) for r in records]


def test_splits_have_no_duplicate_questions_and_right_sizes():
    for spec in [DataSpec(task="addsub", instances=3000, max_digits=3, seed=1),
                 DataSpec(task="add", instances=4000, max_digits=2, seed=2)]:  # enumerated
        splits = generate(spec)
        assert {k: len(v) for k, v in splits.items()} == spec.split_sizes()
        allq = [q for recs in splits.values() for q in _questions(recs)]
        assert len(allq) == len(set(allq)) == spec.instances
        for r in splits["train"]:
            assert spec.min_digits <= r["labels"]["len_a"] <= spec.max_digits
            if r["op"] == "-":
                assert r["a"] >= r["b"]


def test_every_question_once_when_all_are_requested():
    splits = generate(DataSpec(task="add", instances=100, max_digits=1, seed=5))
    allq = sorted(q for recs in splits.values() for q in _questions(recs))
    assert allq == [(a, "+", b) for a in range(10) for b in range(10)]


def test_operand_lengths_vary_independently():
    spec = DataSpec(task="add", instances=4000, max_digits=4, stratified_fraction=0.0, seed=4)
    train = generate(spec)["train"]
    pairs = Counter((r["labels"]["len_a"], r["labels"]["len_b"]) for r in train)
    assert len(pairs) == 16  # every combination of lengths occurs
    n = len(train)
    for la in range(1, 5):
        share_a = sum(v for (x, _), v in pairs.items() if x == la) / n
        assert abs(share_a - 0.25) < 0.05
    same = sum(v for (x, y), v in pairs.items() if x == y) / n
    assert abs(same - 0.25) < 0.05  # not tied together
    first_digits = Counter(str(r["a"])[0] for r in train if r["a"] >= 10)
    assert "0" not in first_digits and len(first_digits) == 9


@pytest.mark.parametrize("task", ["add", "sub"])
def test_evaluation_splits_never_use_up_an_operand_length_pair(task):
    """The stratified test split would otherwise take nearly all 100 one-digit additions (they
    are 1/9 of uniform draws), leaving training without them."""
    splits = generate(DataSpec(task=task, instances=20000, max_digits=3, seed=0))
    by_pair = {name: Counter((len(str(r["a"])), len(str(r["b"]))) for r in recs) for name, recs in splits.items()}
    for pair in by_pair["test"]:
        total = count_of_lengths(task, *pair)
        assert by_pair["val"][pair] + by_pair["test"][pair] <= -(-total // 5), pair
    assert by_pair["train"][(1, 1)] >= {"add": 80, "sub": 44}[task]


def test_test_split_is_stratified_with_cascades_enriched():
    spec = DataSpec(task="add", instances=4000, max_digits=3, seed=0)
    splits, = [generate(spec)]
    for name in ("test", "val"):
        c = Counter(r["labels"]["stratum"] for r in splits[name])
        assert set(c) == set(STRATA)
        assert max(c.values()) - min(c.values()) <= 1
    # the first records of test are balanced (round-robin over strata)
    assert [r["labels"]["stratum"] for r in splits["test"][:4]] == list(STRATA)


def test_manifest_and_files_roundtrip(tmp_path):
    spec = DataSpec(task="add", instances=2000, max_digits=3, seed=0)
    out = tmp_path / "d"
    m = write_dataset(spec, out, "reportgen data --task add")
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "test.jsonl", "train.jsonl", "val.jsonl"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temp dir left behind
    strat = m["stratification"]
    assert strat["share"]["test"]["cascade"] == 0.25
    assert strat["uniform_rate"]["cascade"] < 0.1  # ~5.7% for 1-3 digit addition
    assert m["counts"] == {"train": 1600, "val": 200, "test": 200}
    assert m["strata"]["test"] == dict.fromkeys(STRATA, 50)
    assert m["spec"]["seed"] == 0 and m["command"] == "reportgen data --task add"
    manifest, splits = load_dataset(out)
    assert manifest == m
    assert splits == generate(spec)
    with pytest.raises(ReportgenError, match="not empty"):
        write_dataset(spec, out, "x")


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ReportgenError, match="not found"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(ReportgenError, match="no manifest.json"):
        load_dataset(tmp_path)
    out = tmp_path / "d"
    write_dataset(DataSpec(task="sub", instances=50, max_digits=2), out, "cmd")
    test = out / "test.jsonl"
    test.write_bytes(test.read_bytes()[:-10])
    with pytest.raises(ReportgenError, match="modified or truncated.*regenerate it with: cmd"):
        load_dataset(out)
    (out / "manifest.json").write_text("{garbled")
    with pytest.raises(ReportgenError, match="not valid JSON"):
        load_dataset(out)


def test_impossible_strata_quota_goes_to_others():
    spec = DataSpec(task="add", instances=100, max_digits=1, seed=1)
    splits = generate(spec)
    c = Counter(r["labels"]["stratum"] for r in splits["test"])
    assert c == {"no_carry": 5, "one_carry": 5}
    assert "cannot occur" in possible_strata("add", 1, 1)["cascade"]


def test_used_up_and_too_rare_strata_are_reported(tmp_path):
    # enumerated space: only 450 two-digit addition questions cascade
    m = write_dataset(DataSpec(task="add", instances=6000, max_digits=2), tmp_path / "a", "c")
    assert "used up" in m["stratification"]["shortfalls"]["cascade"]
    assert sum(m["strata"][s]["cascade"] for s in m["strata"]) == 450
    # sampled space: no-carry products of two 4-digit numbers are too rare to draw
    m = write_dataset(DataSpec(task="mul", instances=200, min_digits=8, max_digits=8),
                      tmp_path / "b", "c")
    assert "too rare" in m["stratification"]["shortfalls"]["no_carry"]
    assert m["counts"]["test"] == 20 and m["strata"]["test"]["cascade"] == 20
    assert "no_carry: too rare" in m["stratification"]["note"]


def test_stratified_examples():
    recs = stratified_examples("add", 40, 3, seed=2)
    assert Counter(r["labels"]["stratum"] for r in recs) == dict.fromkeys(STRATA, 10)
    assert recs == stratified_examples("add", 40, 3, seed=2)
    again = stratified_examples("add", 40, 3, seed=2, exclude=_questions(recs))
    assert not set(_questions(again)) & set(_questions(recs))
    steps = stratified_examples("mul", 8, 2, seed=0, with_steps=True, answer_order="reversed")
    assert len(steps) == 8 and all("|" in r["target"] for r in steps)


# ----------------------------------------------------------------- CLI and determinism


def _parser():
    parser = argparse.ArgumentParser(prog="reportgen")
    data_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_aliases_and_canonical_command():
    args = _parser().parse_args(
        ["data", "--task", "add", "--max_length", "4", "--with_steps", "--instances", "50"])
    assert args.func is data_cli.run
    spec = data_cli.spec_from_args(args)
    assert spec.max_digits == 4 and spec.with_steps and spec.instances == 50
    args2 = _parser().parse_args(
        ["data", "--instances=50", "--with-steps", "--task=add", "--max-digits", "4",
         "--seed", "0"])
    spec2 = data_cli.spec_from_args(args2)
    cmd = data_cli.canonical_command(spec2, data_cli.out_dir_from_args(args2))
    assert cmd == data_cli.canonical_command(spec, data_cli.out_dir_from_args(args))
    assert cmd.startswith("reportgen data --task add --instances 50 --max-digits 4 ")
    assert cmd.endswith("--out data/add")
    bad = _parser().parse_args(["data", "--task", "add", "--max-digits", "0"])
    with pytest.raises(ReportgenError, match="max_digits"):
        data_cli.run(bad)


_SUBPROCESS = """
import argparse, sys
from reportgen.cli import data
p = argparse.ArgumentParser(); data.register(p.add_subparsers())
a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))
"""


def test_same_arguments_give_byte_identical_files(tmp_path, monkeypatch, capsys):
    argv = ["data", "--task", "addsub", "--instances", "600", "--max_length", "3",
            "--with_steps", "--seed", "11", "--out", "out"]
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    monkeypatch.chdir(tmp_path / "one")
    args = _parser().parse_args(argv)
    assert args.func(args) == 0
    summary = capsys.readouterr().out
    assert "wrote 600 questions to out" in summary and "cascade" in summary
    env = dict(os.environ, PYTHONHASHSEED="12345",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run([sys.executable, "-c", _SUBPROCESS, *argv], cwd=tmp_path / "two",
                   env=env, check=True, capture_output=True)
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "manifest.json"):
        one = (tmp_path / "one" / "out" / name).read_bytes()
        two = (tmp_path / "two" / "out" / name).read_bytes()
        assert one == two, name
    manifest = json.loads((tmp_path / "one" / "out" / "manifest.json").read_text())
    assert manifest["command"].startswith("reportgen data --task addsub --instances 600 ")


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    from reportgen.data import dataset

    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        Path(path).write_bytes(data)

    monkeypatch.setattr(dataset, "write_file", failing_write)
    with pytest.raises(ReportgenError, match="could not write.*No space left"):
        write_dataset(DataSpec(task="add", instances=50, max_digits=2), tmp_path / "d", "c")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    write_dataset(DataSpec(task="add", instances=50, max_digits=2), tmp_path / "empty", "c")
    assert (tmp_path / "empty" / "manifest.json").is_file()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReportgenError, match="not a directory"):
        write_dataset(DataSpec(task="add", instances=50, max_digits=2), tmp_path / "file", "c")


def test_data_stage_does_not_import_torch():
    import ast

    for name in ("arithmetic.py", "dataset.py", "tokenizer.py", "__init__.py"):
        tree = ast.parse((REPO / "reportgen" / "data" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"torch", "numpy"} & set(roots), (name, roots)

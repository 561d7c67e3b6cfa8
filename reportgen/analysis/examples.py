"""Examples as the analyses see them: teacher-forced token batches with ground truth attached.

Every analysis reads the model's own input format (BOS + prompt + target + EOS) and looks at the
positions that *predict* each final-answer digit. Batches are right-padded, which the causal mask
makes harmless: no real position ever attends to padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from reportgen.data.arithmetic import TARGET_ROLES, make_record, parse_example, target_tokens
from reportgen.data.dataset import count_questions, stratified_examples
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import Checkpoint
from reportgen.train.splits import training_questions

@dataclass
class ExampleBatch:
    """Records and their token tensors; answer tensors are [batch, max answer digits], masked."""

    records: list[dict]
    tokens: torch.Tensor  # [B, P] long, right-padded
    lengths: torch.Tensor  # [B] real length including BOS and EOS
    pred_pos: torch.Tensor  # [B, A] token index predicting answer digit i (written order); 0 where masked
    answer_ids: torch.Tensor  # [B, A] token id of the correct answer digit
    columns: torch.Tensor  # [B, A] answer column n (0 = least significant) of each written digit
    answer_mask: torch.Tensor  # [B, A] bool
    # Every digit the model writes (scratchpad steps, then the final answer; data.target_tokens):
    target_pos: torch.Tensor  # [B, T] token index predicting each target digit; 0 where masked
    target_ids: torch.Tensor  # [B, T] token id of that digit
    target_roles: torch.Tensor  # [B, T] index into data.arithmetic.TARGET_ROLES
    target_columns: torch.Tensor  # [B, T] column n of the digit's step or answer digit; -1 where none
    target_mask: torch.Tensor  # [B, T] bool

    def __len__(self) -> int:
        return len(self.records)

    def to(self, device) -> "ExampleBatch":
        moved = {k: getattr(self, k).to(device) for k in TENSORS}
        return ExampleBatch(records=self.records, **moved)


TENSORS = ("tokens", "lengths", "pred_pos", "answer_ids", "columns", "answer_mask",
           "target_pos", "target_ids", "target_roles", "target_columns", "target_mask")


def example_key(record: dict) -> str:
    """Stable, file- and URL-safe key derived from the example itself, e.g. '59plus73'."""
    names = {"+": "plus", "-": "minus", "*": "times"}
    return f"{record['a']}{names[record['op']]}{record['b']}"


def template(record: dict) -> str:
    """The text layout of a record's input: digits as 'd', operators as 'o', others as themselves."""
    return "".join("d" if ch.isdigit() else "o" if ch in "+-*" else ch for ch in record["prompt"] + record["target"])


def build_batch(records: list[dict], tokenizer: Tokenizer, n_ctx: int, device="cpu") -> ExampleBatch:
    """Tokenise records into one right-padded batch, checking they fit the context."""
    if not records:
        raise ReportgenError("no examples to analyse; give at least one with --examples or set n_examples > 0")
    seqs = [tokenizer.encode(r["prompt"] + r["target"], bos=True, eos=True) for r in records]
    too_long = [(r["prompt"], len(s)) for r, s in zip(records, seqs) if len(s) > n_ctx]
    if too_long:
        prompt, n = too_long[0]
        raise ReportgenError(
            f"example {prompt!r} needs {n} tokens with its answer, more than the model's context of "
            f"{n_ctx}; use fewer digits"
        )
    P = max(map(len, seqs))
    A = max(r["answer_span"][1] - r["answer_span"][0] for r in records)
    targets = [target_tokens(r) for r in records]
    T = max(map(len, targets))
    tokens = torch.full((len(seqs), P), tokenizer.pad_id, dtype=torch.long)
    answer = {k: torch.zeros((len(seqs), A), dtype=torch.long) for k in ("pos", "ids", "columns")}
    target = {k: torch.zeros((len(seqs), T), dtype=torch.long) for k in ("pos", "ids", "roles", "columns")}
    for i, (r, s, tt) in enumerate(zip(records, seqs, targets)):
        tokens[i, : len(s)] = torch.tensor(s)
        start, end = r["answer_span"]
        n = end - start
        # Character c of prompt+target is token c+1 and is predicted at token c.
        answer["pos"][i, :n] = torch.arange(start, end)
        answer["ids"][i, :n] = tokens[i, start + 1 : end + 1]
        answer["columns"][i, :n] = torch.tensor(r["answer_columns"])
        pos = torch.tensor([q for q, _, _ in tt])
        target["pos"][i, : len(tt)] = pos
        target["ids"][i, : len(tt)] = tokens[i, pos + 1]
        target["roles"][i, : len(tt)] = torch.tensor([TARGET_ROLES.index(role) for _, role, _ in tt])
        target["columns"][i, : len(tt)] = torch.tensor([-1 if n is None else n for _, _, n in tt])
    answer_mask = torch.arange(A)[None, :] < torch.tensor([r["answer_span"][1] - r["answer_span"][0] for r in records])[:, None]
    target_mask = torch.arange(T)[None, :] < torch.tensor(list(map(len, targets)))[:, None]
    lengths = torch.tensor([len(s) for s in seqs])
    return ExampleBatch(records, tokens, lengths, answer["pos"], answer["ids"], answer["columns"], answer_mask,
                        target["pos"], target["ids"], target["roles"], target["columns"].masked_fill(~target_mask, -1),
                        target_mask).to(device)


def distinct(records: list[dict]) -> list[dict]:
    """Each problem once, in first-seen order: a copy ('59+73' and '59 + 73') adds no evidence, and
    would narrow bootstrap intervals over examples as if it did."""
    first: dict[str, dict] = {}
    for r in records:
        first.setdefault(example_key(r), r)
    return list(first.values())


def records_from_texts(texts: list[str], ckpt: Checkpoint) -> list[dict]:
    """User examples ('59 + 73', '59+73=', '59 + 73 = 132', or as the report shows them in the
    model's own format, e.g. '59+48=701' reversed) in the checkpoint's own format."""
    task = ckpt.task
    out = []
    for text in texts:
        a, b, op = parse_example(text, task)
        out.append(make_record(a, b, op, task["with_steps"], task["answer_order"]))
    return out


def range_notes(records: list[dict], task: dict) -> list[str]:
    """One note per example whose operands have digit counts the model was never trained on (it
    may be a deliberate test of length generalisation, so it is not an error)."""
    lo, hi = task["min_digits"], task["max_digits"]
    out = []
    for r in records:
        la, lb = r["labels"]["len_a"], r["labels"]["len_b"]
        if not (lo <= la <= hi and lo <= lb <= hi):
            out.append(f"{r['a']} {r['op']} {r['b']} has operands of {la} and {lb} digits, outside the "
                       f"{lo}-{hi} digits the model was trained on")
    return out


def generated_records(ckpt: Checkpoint, n: int, seed: int, exclude=None) -> list[dict]:
    """n examples of the checkpoint's own task and format, stratified by difficulty, none of the
    `exclude` (a, op, b) questions."""
    t = ckpt.task
    return stratified_examples(
        t["task"], n, t["max_digits"], t["min_digits"], seed, t["with_steps"], t["answer_order"], exclude
    )


def held_out_records(ckpt: Checkpoint, n: int, seed: int) -> tuple[list[dict], str]:
    """Stratified questions to test or analyse a checkpoint on, and which splits of its data set
    none of them is in: "train, val and test" where the task has n other questions (val and test
    were used to pick and describe the model); else "train" (up to n outside the training split);
    "" where the data set cannot be recovered or its training split covers the task (then they
    are n generated questions that may include training questions)."""
    return held_out_from(ckpt, n, seed, training_questions(ckpt.meta))


def held_out_from(ckpt: Checkpoint, n: int, seed: int, splits: Optional[dict]) -> tuple[list[dict], str]:
    """`held_out_records` given the model's data splits (train.splits.training_questions; None: not
    recoverable), which take seconds to regenerate and so are computed once per model."""
    if splits is None:
        return generated_records(ckpt, n, seed), ""
    t = ckpt.task
    total = count_questions(t["task"], t["min_digits"], t["max_digits"])
    every = splits["train"] | splits["val"] | splits["test"]
    if total - len(every) >= n:
        return generated_records(ckpt, n, seed, exclude=every), "train, val and test"
    left = total - len(splits["train"])
    if left <= 0:
        return generated_records(ckpt, n, seed), ""
    return generated_records(ckpt, min(n, left), seed, exclude=splits["train"]), "train"


def unseen_records(ckpt: Checkpoint, n: int, seed: int) -> tuple[list[dict], bool]:
    """`held_out_records`, with whether the questions are outside the training split at all."""
    records, excluded = held_out_records(ckpt, n, seed)
    return records, bool(excluded)

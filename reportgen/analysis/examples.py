"""Examples as the analyses see them: teacher-forced token batches with ground truth attached.

Every analysis reads the model's own input format (BOS + prompt + target + EOS) and looks at the
positions that *predict* each final-answer digit. Batches are right-padded, which the causal mask
makes harmless: no real position ever attends to padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reportgen.data.arithmetic import make_record, parse_example
from reportgen.data.dataset import count_questions, stratified_examples
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import Checkpoint
from reportgen.train.trainer import training_questions

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

    def __len__(self) -> int:
        return len(self.records)

    def to(self, device) -> "ExampleBatch":
        moved = {k: getattr(self, k).to(device) for k in ("tokens", "lengths", "pred_pos", "answer_ids", "columns", "answer_mask")}
        return ExampleBatch(records=self.records, **moved)


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
    tokens = torch.full((len(seqs), P), tokenizer.pad_id, dtype=torch.long)
    pred_pos = torch.zeros((len(seqs), A), dtype=torch.long)
    answer_ids = torch.zeros((len(seqs), A), dtype=torch.long)
    columns = torch.zeros((len(seqs), A), dtype=torch.long)
    mask = torch.zeros((len(seqs), A), dtype=torch.bool)
    for i, (r, s) in enumerate(zip(records, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        start, end = r["answer_span"]
        n = end - start
        # Character c of prompt+target is token c+1 and is predicted at token c.
        pred_pos[i, :n] = torch.arange(start, end)
        answer_ids[i, :n] = tokens[i, start + 1 : end + 1]
        columns[i, :n] = torch.tensor(r["answer_columns"])
        mask[i, :n] = True
    lengths = torch.tensor([len(s) for s in seqs])
    return ExampleBatch(records, tokens, lengths, pred_pos, answer_ids, columns, mask).to(device)


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


def unseen_records(ckpt: Checkpoint, n: int, seed: int) -> tuple[list[dict], bool]:
    """Stratified questions to test a checkpoint on, and whether none of them is in its training
    split. n questions that are in none of its data set's splits (val and test were used to pick
    and describe the model) where the task has that many; else up to n outside the training split;
    n generated ones (unseen False) where the data set cannot be recovered or covers the task."""
    splits = training_questions(ckpt.meta)
    if splits is None:
        return generated_records(ckpt, n, seed), False
    t = ckpt.task
    total = count_questions(t["task"], t["min_digits"], t["max_digits"])
    every = splits["train"] | splits["val"] | splits["test"]
    if total - len(every) >= n:
        return generated_records(ckpt, n, seed, exclude=every), True
    left = total - len(splits["train"])
    if left <= 0:
        return generated_records(ckpt, n, seed), False
    return generated_records(ckpt, min(n, left), seed, exclude=splits["train"]), True

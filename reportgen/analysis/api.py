"""Public-API helpers shared by the analysis classes: loading, text-to-batch, layer checks (their figures are
drawn by reportgen.plots.toolkit)."""

from __future__ import annotations

import weakref
from types import SimpleNamespace
from typing import Optional

from reportgen.analysis.examples import ExampleBatch, build_batch, distinct, records_from_texts
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import Checkpoint, load_checkpoint
from reportgen.model.transformer import Transformer

DEFAULT_TASK = {"task": "add", "max_digits": 3, "min_digits": 1, "with_steps": False, "answer_order": "plain"}
_LOADED_TASKS: "weakref.WeakKeyDictionary[Transformer, dict]" = weakref.WeakKeyDictionary()


def load_model_and_tokenizer(path: str, device: str = "cpu") -> tuple[Transformer, Tokenizer, Checkpoint]:
    """(model in eval mode, tokenizer, checkpoint with its metadata and `.task`) from a checkpoint file.

    The analysis classes given this model read problems in its own task and format by default."""
    ckpt = load_checkpoint(path, device=device)
    _LOADED_TASKS[ckpt.model] = ckpt.task
    return ckpt.model, ckpt.tokenizer, ckpt


def task_of(model: Transformer, task: Optional[dict]) -> dict:
    """The task an analysis class reads problems in: the one given, else that of the checkpoint
    the model was loaded from (load_model_and_tokenizer), else plain 1-3 digit addition."""
    return task or _LOADED_TASKS.get(model) or DEFAULT_TASK


def text_records(texts: list[str], task: Optional[dict] = None) -> list[dict]:
    """Records for problems like '59 + 73' in the task's format (plain addition by default)."""
    if not texts:
        raise ReportgenError("no examples given; pass at least one problem like '59 + 73'")
    return records_from_texts(list(texts), SimpleNamespace(task=task or DEFAULT_TASK))


def text_batch(model: Transformer, tokenizer: Tokenizer, texts: list[str], task: Optional[dict] = None,
               copies: bool = False) -> ExampleBatch:
    """The model's own teacher-forced input for the problem texts, as one batch on the model's
    device: each problem once unless `copies` (one row per text, e.g. for per-text labels)."""
    records = text_records(texts, task)
    return build_batch(records if copies else distinct(records), tokenizer, model.cfg.n_ctx, device=model.device)


def check_layers(layers, n_layers: int, what: str = "layer") -> list[int]:
    """The layer indices, refusing any outside 0..n_layers-1 (negative indices count from the end)."""
    out = []
    for l in layers:
        if isinstance(l, bool) or not isinstance(l, int) or not -n_layers <= l < n_layers:
            raise ReportgenError(
                f"{what} {l!r} is out of range: the model has {n_layers} layers (0..{n_layers - 1})"
            )
        out.append(l % n_layers)
    return out


def token_labels(tokenizer: Tokenizer, ids) -> list[str]:
    """Readable token strings ('BOS', '5', '+', ..., 'EOS') for axis labels and reports."""
    names = {"<bos>": "BOS", "<eos>": "EOS", "<pad>": "PAD"}
    return [names.get(tokenizer.vocab[int(i)], tokenizer.vocab[int(i)]) for i in ids]


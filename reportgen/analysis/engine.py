"""Shared machinery of the analyses: one cached forward pass over a batch, gathers at the
answer-predicting positions, digit-restricted logits, and an untrained twin as a baseline.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import threading
from typing import Callable, Optional

import torch

from reportgen.analysis.examples import ExampleBatch
from reportgen.data.tokenizer import Tokenizer
from reportgen import hooks as hp
from reportgen.model.transformer import ModelConfig, Transformer
from reportgen.train.evaluate import final_answer, greedy_decode


@torch.no_grad()
def run_with_cache(
    model: Transformer, batch: ExampleBatch, names: Optional[Callable[[str], bool]] = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and every hook point (or those `names` accepts) of one batched forward pass."""
    return model.run_with_cache(batch.tokens, names=names)


AT_TARGETS = "@targets"  # suffix of a cache entry recorded at the batch's target positions only


@torch.no_grad()
def cached_pass(model: Transformer, batch: ExampleBatch, names: Callable[[str], bool],
                at_targets: Callable[[str], bool]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and a cache of one forward pass: the hook points `names` accepts whole [B, P, ...],
    those `at_targets` accepts only at the batch's target positions [B, T, ...] (key: name +
    AT_TARGETS), which is all their readers need and a fraction of their size."""
    cache: dict[str, torch.Tensor] = {}

    def record(x: torch.Tensor, name: str) -> None:
        if at_targets(name):
            cache[name + AT_TARGETS] = gather_at(x, batch.target_pos)
        if names(name):
            cache[name] = x

    hooks = {n: record for n in hp.all_names(model.cfg.n_layers) if names(n) or at_targets(n)}
    return model(batch.tokens, hooks=hooks), cache


def at_targets(cache: dict[str, torch.Tensor], name: str, batch: ExampleBatch) -> torch.Tensor:
    """Hook point `name` of a cache at the batch's target positions [B, T, ...]: as recorded there
    by cached_pass, or gathered from the whole activation."""
    key = name + AT_TARGETS
    return cache[key] if key in cache else gather_at(cache[name], batch.target_pos)


def gather_at_answers(x: torch.Tensor, batch: ExampleBatch) -> torch.Tensor:
    """Rows of `x` [B, P, ...] at the answer-predicting positions: [B, A, ...].

    Masked answer slots gather position 0; callers ignore them via `batch.answer_mask`.
    """
    return gather_at(x, batch.pred_pos)


def gather_at(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows of `x` [B, P, ...] at positions `pos` [B, K]: [B, K, ...]."""
    idx = pos.reshape(*pos.shape, *([1] * (x.dim() - 2)))
    return x.gather(1, idx.expand(-1, -1, *x.shape[2:]))


def target_digits(batch: ExampleBatch, tokenizer: Tokenizer) -> torch.Tensor:
    """Value 0..9 of each target digit [B, T]; 0 in masked slots."""
    lut = torch.zeros(len(tokenizer), dtype=torch.long, device=batch.target_ids.device)
    lut[tokenizer.digit_ids] = torch.arange(10, device=lut.device)
    return torch.where(batch.target_mask, lut[batch.target_ids], 0)


def digit_logits(logits: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """Logits restricted to the answer vocabulary '0'..'9' (last axis, in digit order)."""
    return logits[..., tokenizer.digit_ids]


def digit_log_probs(logits: torch.Tensor, tokenizer: Tokenizer) -> torch.Tensor:
    """Log-probabilities over the ten digits only."""
    return digit_logits(logits, tokenizer).log_softmax(-1)


def answer_digits(batch: ExampleBatch, tokenizer: Tokenizer) -> torch.Tensor:
    """Value 0..9 of each correct answer digit [B, A]; 0 in masked slots."""
    lut = torch.zeros(len(tokenizer), dtype=torch.long, device=batch.answer_ids.device)
    lut[tokenizer.digit_ids] = torch.arange(10, device=lut.device)
    return torch.where(batch.answer_mask, lut[batch.answer_ids], 0)


def release_memory() -> None:
    """Give freed tensor memory back to the system: glibc keeps freed heap memory for reuse, and a
    process that held large caches would stay at its peak size while other processes need it.
    Collects garbage first (reference cycles can hold tensors): 0.2-0.3 s over the ~260k objects
    importing torch, scipy and matplotlib makes, unless they are frozen (`old_objects_frozen`)."""
    gc.collect()
    trim_heap()


@contextlib.contextmanager
def old_objects_frozen():
    """Within the block, garbage collections skip the objects that existed before it (modules,
    configs, data splits: alive throughout), so each `release_memory` scans only what the block
    made (add3_rev's analyses: 8 collections, 1.6 s -> 0.02 s). Old objects are collectable
    again after it; objects are still freed by reference counting inside it."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def trim_heap() -> None:
    """Return the heap's free memory to the system (glibc's malloc_trim; a no-op elsewhere)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):
            pass


TRIM_EVERY_S = 2.0  # every 0.5 s cost 10% more time in page faults (medium shape) for 10% less memory


@contextlib.contextmanager
def heap_trimmed(every: float = TRIM_EVERY_S):
    """Within the block, a thread returns the heap's free pages to the system every `every` s
    (and once more at its end).

    glibc keeps the memory tensors free for reuse and, once a large freed block has raised its
    mmap threshold, serves tensors of up to 32 MB from a heap that fragments: at scale the
    process held twice its live tensors (large bench_scale shape, circuits: 2.7 GB of RSS over
    1.0 GB of tensors). Trimming between chunks would need a call in every loop; mmap for every
    large tensor (a fixed threshold) costs 25-40% in page faults."""
    stop = threading.Event()

    def trim() -> None:
        while not stop.wait(every):
            trim_heap()

    thread = threading.Thread(target=trim, name="reportgen-trim-heap", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        trim_heap()


def untrained_twin(model: Transformer, seed: int) -> Transformer:
    """A freshly initialised model of the same shape, in eval mode on the same device.

    The global torch RNG is left untouched so that the baseline does not shift other seeds.
    """
    with torch.random.fork_rng(devices=[]):
        twin = Transformer(model.cfg)
        twin.reset_parameters(generator=torch.Generator().manual_seed(seed))
    return twin.to(model.device).eval()


def twin_seeds(seed: int, n: int) -> list[int]:
    """Initialisation seeds of the n untrained twins of an analysis run with `seed`."""
    return [1000 * seed + 1 + i for i in range(n)]


def untrained_twins(model: Transformer, n: int, seed: int) -> list[Transformer]:
    """n untrained twins (see `twin_seeds`): the null every confirming test also runs on."""
    return [untrained_twin(model, s) for s in twin_seeds(seed, n)]


def greedy_predictions(model: Transformer, tokenizer: Tokenizer, records: list[dict]) -> list[str]:
    """Batched greedy continuation of each record's prompt (the model's own answer attempt)."""
    max_new = max(len(r["target"]) for r in records) + 1
    return greedy_decode(model, tokenizer, [r["prompt"] for r in records], max_new)


def is_correct(record: dict, prediction: str) -> bool:
    """Whether the final answer of a prediction equals the record's (steps may differ)."""
    return final_answer(prediction) == final_answer(record["target"])


PASS_SHARE = 0.25  # of the budget, for the activations of one chunk of a batched pass


def forward_row_bytes(cfg: ModelConfig, positions: int) -> int:
    """A generous estimate of the float32 activations one row of a forward pass over `positions`
    holds at once: a dozen residual-width tensors (residual copies, LayerNorm, q, k, v, z,
    outputs), the MLP's hidden activations and the attention scores and pattern."""
    return 4 * positions * (12 * cfg.d_model + 3 * cfg.d_mlp + 3 * cfg.n_heads * positions)


def rows_within(memory_mb: float, row_bytes: int, cap: Optional[int] = None) -> int:
    """Rows of one chunk whose `row_bytes` each fit in PASS_SHARE of a `memory_mb` budget (at
    least 1, at most `cap`): the chunk size of sweeps, ablations and cached passes."""
    rows = max(1, int(memory_mb * 2**20 * PASS_SHARE // max(row_bytes, 1)))
    return rows if cap is None else min(rows, cap)

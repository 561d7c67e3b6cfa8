"""The data a checkpoint was trained on, recovered from what the checkpoint records.

Used wherever results must keep training questions apart from held-out ones (the analyses'
held-out examples, probing layouts, `reportgen eval`), not only by the trainer that made them.
"""

from __future__ import annotations

from typing import Optional

from reportgen.configfile import from_dict
from reportgen.data.dataset import DataSpec, generate, load_dataset, splits_hash
from reportgen.errors import ReportgenError
from reportgen.train.config import TrainConfig

MAX_REGENERATED = 100_000  # instances; regenerating a data set costs about 50 us and 4 KB per instance


def data_spec(cfg: TrainConfig) -> DataSpec:
    """The data set a training config generates (when it names no data.dir)."""
    d = cfg.data
    return DataSpec(task=d.task, instances=d.instances, max_digits=d.max_digits, min_digits=d.min_digits,
                    with_steps=d.with_steps, answer_order=d.answer_order, seed=cfg.seed,
                    stratified_fraction=d.stratified_fraction)


def training_questions(meta: dict) -> Optional[dict[str, set[tuple[int, str, int]]]]:
    """The (a, op, b) questions of each split ("train", "val", "test") of the data set a checkpoint
    was trained on: regenerated from its training config (up to MAX_REGENERATED instances), or
    read from its data directory (by the absolute path recorded at training, so from any working
    directory), and checked against the data hash it records. None where that data set cannot be
    recovered."""
    try:
        cfg = from_dict(TrainConfig, meta["train_config"], "the checkpoint's training config")
        if not cfg.data.dir and cfg.data.instances > MAX_REGENERATED:
            return None
        splits = load_dataset(meta.get("data_dir") or cfg.data.dir)[1] if cfg.data.dir else generate(data_spec(cfg))
    except (KeyError, TypeError, ReportgenError):
        return None
    if splits_hash(splits) != meta.get("data_manifest_hash"):
        return None
    return {name: {(r["a"], r["op"], r["b"]) for r in records} for name, records in splits.items()}

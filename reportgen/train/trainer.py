"""Train a transformer on arithmetic: loss on answer tokens only, greedy-decoding evaluation,
best checkpoint by validation exact match, resumable from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from reportgen.configfile import from_dict, to_dict
from reportgen.data.dataset import DataSpec, generate, load_dataset, splits_hash, write_dataset
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import Interrupted, ReportgenError
from reportgen.model.checkpoint import load_checkpoint, read_checkpoint_payload, save_checkpoint
from reportgen.model.transformer import Transformer
from reportgen.train.config import TrainConfig
from reportgen.train.evaluate import evaluate


@dataclasses.dataclass
class TrainData:
    """Token tensors for training plus the record splits used for evaluation."""

    tokens: torch.Tensor  # [N, P] BOS + prompt + target + EOS, right-padded
    loss_mask: torch.Tensor  # [N, P-1] True where the next token belongs to the target (or EOS)
    splits: dict[str, list[dict]]
    spec: dict  # task, digits, steps, answer order: what every later stage needs to know
    manifest_hash: str
    length_weights: torch.Tensor  # [N] sampling weight giving every (len(a), len(b)) pair equal mass


def load_data(cfg: TrainConfig, out_dir: Path) -> TrainData:
    """Read a `reportgen data` directory or generate the configured data set into out_dir/data."""
    d = cfg.data
    if d.dir:
        manifest, splits = load_dataset(d.dir)
        _require_every_split({k: len(v) for k, v in splits.items()}, f"regenerate {d.dir} with more --instances")
    else:
        spec = data_spec(cfg)
        _require_every_split(spec.split_sizes(), "raise data.instances")
        data_dir = out_dir / "data"
        if not (data_dir / "manifest.json").is_file():
            write_dataset(spec, data_dir, command=f"reportgen train (seed {cfg.seed})")
        manifest, splits = load_dataset(data_dir)
        if manifest["spec"] != spec.to_dict():
            raise ReportgenError(
                f"{data_dir} holds a data set generated from a different data config; "
                "use another --output-dir (or set data.dir to train on it)"
            )
    s = manifest["spec"]
    spec = {k: s[k] for k in ("task", "max_digits", "min_digits", "with_steps", "answer_order")}
    tokens, mask = tokenize_records(splits["train"], Tokenizer())
    return TrainData(tokens, mask, splits, spec, manifest["content_hash"], length_weights(splits["train"]))


def data_spec(cfg: TrainConfig) -> DataSpec:
    """The data set a training config generates (when it names no data.dir)."""
    d = cfg.data
    return DataSpec(task=d.task, instances=d.instances, max_digits=d.max_digits, min_digits=d.min_digits,
                    with_steps=d.with_steps, answer_order=d.answer_order, seed=cfg.seed,
                    stratified_fraction=d.stratified_fraction)


MAX_REGENERATED = 100_000  # instances; regenerating a data set costs about 50 us and 4 KB per instance


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


def length_weights(records: list[dict]) -> torch.Tensor:
    """1 / (number of records with the same operand lengths), per record."""
    keys = [(len(str(r["a"])), len(str(r["b"]))) for r in records]
    counts = Counter(keys)
    return torch.tensor([1.0 / counts[k] for k in keys], dtype=torch.double)


def _require_every_split(sizes: dict[str, int], fix: str) -> None:
    """Training needs train examples, and val/test examples to evaluate on."""
    empty = [name for name in ("train", "val", "test") if not sizes.get(name)]
    if empty:
        raise ReportgenError(f"the data set has no {' or '.join(empty)} examples; {fix}")


def tokenize_records(records: list[dict], tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [tokenizer.encode(r["prompt"] + r["target"], bos=True, eos=True) for r in records]
    width = max(map(len, seqs))
    tokens = torch.full((len(seqs), width), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
    for i, (r, s) in enumerate(zip(records, seqs)):
        tokens[i, : len(s)] = torch.tensor(s)
        # Position j predicts token j+1; the target starts at token len(prompt)+1.
        mask[i, len(r["prompt"]) : len(s) - 1] = True
    return tokens, mask


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to min_lr."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    frac = min(1.0, (step - o.warmup_steps) / max(1, o.max_steps - o.warmup_steps))
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * frac))


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not biases, LayerNorm or embeddings' positions)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(0.9, 0.98))


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ReportgenError("device cuda was requested but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise ReportgenError(f"unknown device {name!r}; use cpu or cuda")
    return torch.device(name)


class Trainer:
    """Holds the state of one training run; `run()` trains until done or interrupted."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, resume: bool = False):
        self.cfg = cfg
        self.out_dir = out_dir
        self.device = resolve_device(cfg.device)
        if resume and not (out_dir / "checkpoint_last.pt").is_file():
            raise ReportgenError(f"nothing to resume: {out_dir} has no checkpoint_last.pt; drop --resume to start")
        self.tokenizer = Tokenizer()
        self.data = load_data(cfg, out_dir)
        model_cfg = dataclasses.replace(cfg.model, d_vocab=len(self.tokenizer))
        if self.data.tokens.shape[1] > model_cfg.n_ctx:
            raise ReportgenError(
                f"model.n_ctx={model_cfg.n_ctx} is shorter than the longest training sequence "
                f"({self.data.tokens.shape[1]} tokens); raise model.n_ctx"
            )
        torch.manual_seed(cfg.seed)
        self.model = Transformer(model_cfg).to(self.device)
        self.opt = make_optimizer(self.model, cfg)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.best = -1.0
        self.history: dict[str, list] = {"step": [], "train_loss": [], "val_exact_match": [], "elapsed_s": []}
        self.elapsed = 0.0
        if resume:
            self._resume()

    def _resume(self) -> None:
        path = self.out_dir / "checkpoint_last.pt"
        try:
            payload = read_checkpoint_payload(path)
        except ReportgenError as e:
            raise ReportgenError(f"cannot resume: {str(e).removesuffix('; re-create it')}; start again without "
                                 "--resume in a new --output-dir (checkpoint_best.pt holds the best model so far)") from None
        if payload["model_config"] != self.model.cfg.to_dict():
            raise ReportgenError(f"cannot resume from {path}: its model config differs from the current config")
        self.model.load_state_dict(payload["state_dict"])
        self.opt.load_state_dict(payload["optimizer"])
        self.gen.set_state(payload["rng_state"])
        self.step, self.best = payload["step"], payload["best_val_exact_match"]
        self.history, self.elapsed = payload["history"], payload["elapsed_s"]

    def _meta(self, metrics: dict) -> dict:
        data_dir = str(Path(self.cfg.data.dir).resolve()) if self.cfg.data.dir else None
        return {
            "data": self.data.spec, "data_manifest_hash": self.data.manifest_hash, "data_dir": data_dir,
            "train_config": to_dict(self.cfg), "seed": self.cfg.seed, "step": self.step,
            "metrics": metrics, "history": self.history,
        }

    def _save_last(self) -> None:
        save_checkpoint(
            self.out_dir / "checkpoint_last.pt", self.model, self.tokenizer, **self._meta({}),
            optimizer=self.opt.state_dict(), rng_state=self.gen.get_state(), best_val_exact_match=self.best,
            elapsed_s=self.elapsed,
        )

    def _train_step(self) -> float:
        n = self.cfg.optim.batch_size
        if self.cfg.data.balance_lengths:
            idx = torch.multinomial(self.data.length_weights, n, replacement=True, generator=self.gen)
        else:
            idx = torch.randint(0, len(self.data.tokens), (n,), generator=self.gen)
        tokens = self.data.tokens[idx].to(self.device)
        mask = self.data.loss_mask[idx].to(self.device)
        width = int(mask.any(0).nonzero().max()) + 2  # trim shared right padding
        logits = self.model(tokens[:, :width])[:, :-1]
        loss = F.cross_entropy(logits[mask[:, : width - 1]], tokens[:, 1:width][mask[:, : width - 1]])
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.opt.step()
        self.step += 1
        return loss.item()

    def _evaluate(self, loss: float) -> float:
        val = self.data.splits["val"][: self.cfg.eval_instances]
        em = evaluate(self.model, self.tokenizer, val).exact_match
        for k, v in (("step", self.step), ("train_loss", loss), ("val_exact_match", em), ("elapsed_s", self.elapsed)):
            self.history[k].append(v)
        if em > self.best:
            self.best = em
            save_checkpoint(self.out_dir / "checkpoint_best.pt", self.model, self.tokenizer,
                            **self._meta({"val_exact_match": em}))
        self._save_last()
        write_metrics_log(self.out_dir, self.history)
        return em

    def run(self) -> dict:
        """Train to the step budget or target accuracy, then score the best checkpoint on val and test."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=self.cfg.optim.max_steps, initial=self.step, desc="train", file=sys.stderr,
                   disable=not sys.stderr.isatty() and not os.environ.get("REPORTGEN_PROGRESS"))
        em, loss = (self.history["val_exact_match"] or [0.0])[-1], float("nan")
        try:
            with ctrl_c_between_steps() as stop:
                while self.step < self.cfg.optim.max_steps and em < self.cfg.stop_at_exact_match:
                    if stop.is_set():
                        raise KeyboardInterrupt
                    t0 = time.perf_counter()
                    loss = self._train_step()
                    self.elapsed += time.perf_counter() - t0
                    bar.update(1)
                    if self.step % self.cfg.eval_every == 0 or self.step == self.cfg.optim.max_steps:
                        em = self._evaluate(loss)
                        bar.set_postfix(loss=f"{loss:.3f}", val_em=f"{em:.3f}")
                if stop.is_set():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._save_last()
            bar.close()
            raise Interrupted(
                f"at step {self.step}; progress saved in {self.out_dir / 'checkpoint_last.pt'} (continue with --resume)"
            ) from None
        bar.close()
        if not self.history["step"] or self.history["step"][-1] != self.step:
            em = self._evaluate(loss)
        return self._finish()

    def _finish(self) -> dict:
        best = load_checkpoint(self.out_dir / "checkpoint_best.pt", device=str(self.device))
        metrics = {
            "val": evaluate(best.model, self.tokenizer, self.data.splits["val"]).to_dict(),
            "test": evaluate(best.model, self.tokenizer, self.data.splits["test"]).to_dict(),
            "best_step": best.meta["step"], "steps": self.step, "train_seconds": round(self.elapsed, 1),
        }
        meta = {**best.meta, "metrics": metrics}
        for k in ("format", "format_version", "model_config", "vocab", "versions"):
            meta.pop(k)
        save_checkpoint(self.out_dir / "checkpoint_best.pt", best.model, self.tokenizer, **meta)
        (self.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        plot_training_curve(self.history, self.out_dir / "training_curve.png")
        return metrics


@contextlib.contextmanager
def ctrl_c_between_steps() -> Iterator[threading.Event]:
    """Turn the first Ctrl-C into a flag the loop checks between steps, so the saved state is never
    half a step (weights updated, step count not); a second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def write_metrics_log(out_dir: Path, history: dict) -> None:
    """One JSON object per evaluation, rewritten whole so it always matches the checkpoint."""
    rows = [dict(zip(history, vals)) for vals in zip(*history.values())]
    tmp = out_dir / "metrics.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, out_dir / "metrics.jsonl")


def plot_training_curve(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(history["step"], history["train_loss"], color="tab:blue", label="train loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("train loss (answer tokens)")
    ax1.set_yscale("log")
    ax2 = ax1.twinx()
    ax2.plot(history["step"], history["val_exact_match"], color="tab:orange", label="val exact match")
    ax2.set_ylabel("validation exact match")
    ax2.set_ylim(0, 1.02)
    fig.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def snapshot_path(out_dir: Path, step: int) -> Path:
    """Where a run keeps its model as it was after `step` steps."""
    return out_dir / "snapshots" / f"step_{step:06d}.pt"


class SnapshotTrainer(Trainer):
    """A Trainer that also keeps the model after each of `snapshot_steps` (snapshots/step_NNNNNN.pt:
    weights and the evaluations before it, no optimizer state), to follow a mechanism through
    training. Kept apart from Trainer: it only adds a save after a step."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, snapshot_steps: list[int], resume: bool = False):
        super().__init__(cfg, out_dir, resume)
        self.snapshot_steps = set(snapshot_steps)

    def _train_step(self) -> float:
        loss = super()._train_step()
        if self.step in self.snapshot_steps:
            save_checkpoint(snapshot_path(self.out_dir, self.step), self.model, self.tokenizer, **self._meta({}))
        return loss

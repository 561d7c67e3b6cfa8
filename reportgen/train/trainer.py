"""Train a transformer on arithmetic: loss on answer tokens only, greedy-decoding evaluation,
best checkpoint by validation exact match, resumable from the last checkpoint.

The run directory is shared with the user: the run writes only its own files there (each whole,
and never over a file it did not write; `reportgen.atomic.OwnedFiles`). After each evaluation
checkpoint_last.pt is saved first and names the best step, so a run killed at any instant, or
stopped by a full disk, can be resumed. A non-finite loss, gradient or weight stops training
before it reaches a checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import torch
import torch.nn.functional as F

from reportgen.atomic import OwnedFiles
from reportgen.configfile import to_dict
from reportgen.data.dataset import load_dataset, write_dataset
from reportgen.data.tokenizer import Tokenizer
from reportgen.errors import Interrupted, ReportgenError, os_error_advice, out_of_memory
from reportgen.model.checkpoint import checkpoint_bytes, load_checkpoint, non_finite, read_checkpoint_payload
from reportgen.model.device import resolve_device
from reportgen.model.transformer import Transformer
from reportgen.plots.toolkit import training_curve_png
from reportgen.progress import progress
from reportgen.train.config import TrainConfig
from reportgen.train.evaluate import evaluate
from reportgen.train.splits import data_spec


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
    """AdamW with weight decay on every matrix (the token and position embeddings included), not on
    biases or LayerNorm weights."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(0.9, 0.98))


BEST, LAST = "checkpoint_best.pt", "checkpoint_last.pt"
CHECKPOINTS = (BEST, LAST)
REPORTS = ("metrics.jsonl", "metrics.json", "training_curve.png")
OUTPUTS = CHECKPOINTS + REPORTS  # every file a run writes in its directory (besides data/ and the record)


def prepare_run_dir(out: Path, resume: bool) -> OwnedFiles:
    """Refuse an --output-dir the run cannot write to, or holding files it would overwrite that
    reportgen did not write there; returns the writer of the run's files."""
    if out.exists() and not out.is_dir():
        raise ReportgenError(f"--output-dir {out} is a file; give a directory for the run")
    _check_writable(out)
    files = OwnedFiles(out)
    last, best = (os.path.lexists(out / n) for n in (LAST, BEST))
    if not resume and last:
        raise ReportgenError(f"{out} already holds a trained model; use --resume or another --output-dir")
    if not resume and best:
        raise ReportgenError(f"{out} already holds a trained model (checkpoint_best.pt, without the checkpoint_last.pt "
                             "that --resume needs); choose another --output-dir")
    if resume and not last:
        raise ReportgenError(f"nothing to resume: {out} has no checkpoint_last.pt "
                             + ("(checkpoint_best.pt alone has no optimizer state); start again in another --output-dir"
                                if best else "; drop --resume to start"))
    if not resume:
        _refuse_foreign(files, files.foreign(list(REPORTS)))
    files.remove_stale_temporaries(list(OUTPUTS))
    return files


def _refuse_foreign(files: OwnedFiles, foreign: list[str]) -> None:
    if foreign:
        raise ReportgenError(f"--output-dir {files.dir} holds {', '.join(foreign)}, which this run would overwrite but "
                             "reportgen did not write there (or which were changed since); move them out or choose "
                             "another --output-dir")


def _check_writable(out: Path) -> None:
    """Create and delete a temporary file in `out` (or its nearest existing parent)."""
    where = out
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        fd, name = tempfile.mkstemp(prefix=".reportgen-probe-", dir=where)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ReportgenError(f"cannot write to --output-dir {out}: {e.strerror or e}; {os_error_advice(e)}") from None


class Trainer:
    """Holds the state of one training run; `run()` trains until done or interrupted."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, resume: bool = False):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.device = resolve_device(cfg.device)
        self.files = prepare_run_dir(self.out_dir, resume)
        self.tokenizer = Tokenizer()
        self.data = load_data(cfg, self.out_dir)
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
        self.best_step: Optional[int] = None  # the step checkpoint_best.pt holds
        self.saved_step: Optional[int] = None  # the step checkpoint_last.pt holds
        self.history: dict[str, list] = {"step": [], "train_loss": [], "val_exact_match": [], "elapsed_s": []}
        self.elapsed = 0.0
        if resume:
            self._resume()

    def _resume(self) -> None:
        path = self.out_dir / LAST
        try:
            payload = read_checkpoint_payload(path)
        except ReportgenError as e:
            raise ReportgenError(f"cannot resume: {str(e).removesuffix('; re-create it')}; start again without "
                                 "--resume in a new --output-dir (checkpoint_best.pt holds the best model so far)") from None
        if non_finite(payload["state_dict"]):
            raise ReportgenError(f"cannot resume from {path}: its weights are not finite; start again without --resume "
                                 "in a new --output-dir, with a lower optim.lr")
        if payload["model_config"] != self.model.cfg.to_dict():
            raise ReportgenError(f"cannot resume from {path}: its model config differs from the current config; "
                                 "resume with the config it was trained with, or start again in another --output-dir")
        self.model.load_state_dict(payload["state_dict"])
        self.opt.load_state_dict(payload["optimizer"])
        self.gen.set_state(payload["rng_state"])
        self.step, self.best = payload["step"], payload["best_val_exact_match"]
        self.history, self.elapsed = payload["history"], payload["elapsed_s"]
        self.best_step, self.saved_step = payload.get("best_step"), self.step
        self._take_over_files()
        self._repair_best()

    def _take_over_files(self) -> None:
        """Let the resumed run replace its own files: checkpoints that are reportgen checkpoints,
        and, in a run directory written before reportgen recorded its files, the others too."""
        recorded = self.files.recorded()
        ours = [n for n in CHECKPOINTS if n not in recorded and _is_checkpoint(self.out_dir / n)]
        if not recorded:
            ours += [n for n in REPORTS if os.path.lexists(self.out_dir / n)]
        if ours:
            self._io(lambda: self.files.adopt(ours), self.files.record_path)
        _refuse_foreign(self.files, self.files.foreign(list(OUTPUTS)))

    def _repair_best(self) -> None:
        """checkpoint_last.pt names the best step; when that is its own step and the run was killed
        (or the disk filled) before checkpoint_best.pt was written, write it from these weights."""
        if self.best_step is None:
            return
        try:
            best_step = read_checkpoint_payload(self.out_dir / BEST).get("step")
        except ReportgenError:
            best_step = None
        if best_step == self.best_step:
            return
        if self.best_step == self.step:
            self._save_checkpoint(BEST, self._meta({"val_exact_match": self.best}))
        else:  # checkpoint_best.pt was removed: the next evaluation writes a new one
            self.best, self.best_step = -1.0, None

    def _meta(self, metrics: dict) -> dict:
        data_dir = str(Path(self.cfg.data.dir).resolve()) if self.cfg.data.dir else None
        return {
            "data": self.data.spec, "data_manifest_hash": self.data.manifest_hash, "data_dir": data_dir,
            "train_config": to_dict(self.cfg), "seed": self.cfg.seed, "step": self.step,
            "metrics": metrics, "history": self.history,
        }

    # ------------------------------------------------------------ saving
    def _save_checkpoint(self, name: str, meta: dict, model: Optional[Transformer] = None,
                         resumable: bool = False) -> None:
        """Write checkpoint `name` into the run directory: every checkpoint of a run is saved here,
        whole or not at all, never over a file reportgen did not write, and never with non-finite
        weights. `resumable` adds what --resume needs (optimizer and sampler state, best step)."""
        model = model or self.model
        bad = non_finite(model.state_dict())
        if bad:
            raise self._diverged(self.step, f"weight {bad}", "non-finite")
        if resumable:
            meta = {**meta, "optimizer": self.opt.state_dict(), "rng_state": self.gen.get_state(),
                    "best_val_exact_match": self.best, "best_step": self.best_step, "elapsed_s": self.elapsed}
        self._write(name, checkpoint_bytes(model, self.tokenizer, **meta))
        if name == LAST:
            self.saved_step = self.step

    def _save_progress(self, em: float) -> None:
        """Save after an evaluation: checkpoint_last.pt first (what --resume continues from; it names
        the best step), then checkpoint_best.pt if this step is the best, then the metrics log."""
        if em > self.best:
            self.best, self.best_step = em, self.step
        self._save_checkpoint(LAST, self._meta({}), resumable=True)
        if self.best_step == self.step:
            self._save_checkpoint(BEST, self._meta({"val_exact_match": em}))
        self._write("metrics.jsonl", metrics_log_bytes(self.history))

    def _write(self, name: str, data: bytes) -> None:
        self._io(lambda: self.files.write(name, data), self.out_dir / name)

    def _io(self, write, path: Path) -> None:
        """Run a write; a file system error (full disk, read-only) becomes one line saying what was kept."""
        try:
            write()
        except OSError as e:
            raise ReportgenError(f"could not write {path}: {e.strerror or e}; {os_error_advice(e)}; {self._kept()}") from None

    def _kept(self) -> str:
        if self.saved_step is None:
            return "nothing was saved yet"
        return (f"{self.out_dir / LAST} holds step {self.saved_step}: run the same command with --resume to continue "
                "from there")

    def _diverged(self, step: int, what: str, value) -> ReportgenError:
        lr = lr_at(max(step - 1, 0), self.cfg)
        fix = "train again with a lower optim.lr (or more optim.warmup_steps)"
        return ReportgenError(f"training diverged at step {step}: {what} became {value} (learning rate {lr:.3g}); "
                              + (f"{fix}; no checkpoint was saved" if self.saved_step is None else
                                 f"{fix} in a new --output-dir; the checkpoints here hold the last finite weights "
                                 f"(step {self.saved_step})"))

    # ------------------------------------------------------------ training
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
        if not torch.isfinite(loss):
            raise self._diverged(self.step + 1, "the training loss", loss.item())
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, self.cfg)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        if not torch.isfinite(norm):  # stop before the update would make the weights non-finite
            raise self._diverged(self.step + 1, "the gradient norm", norm.item())
        self.opt.step()
        self.step += 1
        return loss.item()

    def _evaluate(self, loss: float) -> float:
        val = self.data.splits["val"][: self.cfg.eval_instances]
        em = evaluate(self.model, self.tokenizer, val).exact_match
        for k, v in (("step", self.step), ("train_loss", loss), ("val_exact_match", em), ("elapsed_s", self.elapsed)):
            self.history[k].append(v)
        self._save_progress(em)
        return em

    def run(self) -> dict:
        """Train to the step budget or target accuracy, then score the best checkpoint on val and test."""
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReportgenError(f"cannot create --output-dir {self.out_dir}: {e.strerror}; {os_error_advice(e)}") from None
        bar = progress(self.cfg.optim.max_steps, "train", initial=self.step)
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
            bar.close()
            self._save_checkpoint(LAST, self._meta({}), resumable=True)
            raise Interrupted(
                f"at step {self.step}; progress saved in {self.out_dir / LAST} (continue with --resume)"
            ) from None
        except (MemoryError, RuntimeError) as e:
            if not isinstance(e, MemoryError) and not out_of_memory(e):
                raise
            raise ReportgenError(f"ran out of memory at step {self.step}; lower optim.batch_size or the model size; "
                                 f"{self._kept()}") from None
        finally:
            bar.close()
        if not self.history["step"] or self.history["step"][-1] != self.step:
            em = self._evaluate(loss)
        return self._finish()

    def _finish(self) -> dict:
        best = load_checkpoint(self.out_dir / BEST, device=str(self.device))
        metrics = {
            "val": evaluate(best.model, self.tokenizer, self.data.splits["val"]).to_dict(),
            "test": evaluate(best.model, self.tokenizer, self.data.splits["test"]).to_dict(),
            "best_step": best.meta["step"], "steps": self.step, "train_seconds": round(self.elapsed, 1),
        }
        meta = {**best.meta, "metrics": metrics}
        for k in ("format", "format_version", "model_config", "vocab", "versions"):
            meta.pop(k)
        self._save_checkpoint(BEST, meta, model=best.model)
        self._write("metrics.jsonl", metrics_log_bytes(self.history))  # a resumed run may not have evaluated again
        self._write("metrics.json", (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
        self._write("training_curve.png", training_curve_png(self.history["step"], self.history["train_loss"],
                                                              self.history["val_exact_match"]))
        return metrics


def _is_checkpoint(path: Path) -> bool:
    try:
        read_checkpoint_payload(path)
    except ReportgenError:
        return False
    return True


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


def metrics_log_bytes(history: dict) -> bytes:
    """metrics.jsonl: one JSON object per evaluation, rewritten whole so it always matches the checkpoint."""
    rows = [dict(zip(history, vals)) for vals in zip(*history.values())]
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()


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
            path = snapshot_path(self.out_dir, self.step)
            path.parent.mkdir(exist_ok=True)
            self._save_checkpoint(str(path.relative_to(self.out_dir)), self._meta({}))
        return loss

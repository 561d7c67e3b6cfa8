"""Checkpoints: weights plus everything needed to use and describe them, saved atomically and
loaded without executing code (torch's weights-only unpickler accepts only tensors and plain data).
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from reportgen.atomic import write_file
from reportgen.data.arithmetic import ANSWER_ORDERS, TASKS
from reportgen.data.tokenizer import SPECIALS, Tokenizer
from reportgen.errors import ReportgenError, file_problem
from reportgen.model.transformer import ModelConfig, Transformer

FORMAT = "reportgen-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model in eval mode, its tokenizer and its metadata."""

    model: Transformer
    tokenizer: Tokenizer
    meta: dict[str, Any]
    path: str
    sha256: str

    @property
    def task(self) -> dict[str, Any]:
        """The data spec the model was trained on (task, digits, steps, answer order)."""
        return self.meta["data"]


def library_versions() -> dict[str, str]:
    import numpy
    import platform

    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(numpy.__version__)}


def save_checkpoint(path: str | Path, model: Transformer, tokenizer: Tokenizer, **meta: Any) -> None:
    """Write weights and metadata atomically: a crash mid-save leaves the old file intact.

    `meta` must hold only plain data (dicts, lists, str, numbers, tensors), e.g. data, train_config,
    metrics, step, optimizer state.
    """
    path = Path(path)
    data = checkpoint_bytes(model, tokenizer, **meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, data)


def checkpoint_bytes(model: Transformer, tokenizer: Tokenizer, **meta: Any) -> bytes:
    """The bytes of a checkpoint file. Serialised in memory, so that writing it can fail only with
    the file system's own error (torch writing to a full disk reports a C++ assertion instead)."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model.cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "vocab": list(tokenizer.vocab),
        "versions": library_versions(),
        **meta,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def non_finite(state_dict: dict) -> Optional[str]:
    """The name of the first tensor holding a NaN or an infinity, or None."""
    for name, t in state_dict.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint_payload(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, refusing anything that is not a safe reportgen checkpoint."""
    path = Path(path)
    hint = "train one with `reportgen train --config configs/train.yaml --output-dir runs/NAME`"
    if path.is_dir():
        raise ReportgenError(f"checkpoint {path} is a directory; give the checkpoint file, e.g. {path / 'checkpoint_best.pt'}")
    problem = file_problem(path)
    if problem == "not found":
        raise ReportgenError(f"checkpoint not found: {path}; {hint}")
    if problem:
        raise ReportgenError(f"checkpoint {path} {problem}; give a checkpoint file, e.g. runs/NAME/checkpoint_best.pt")
    _check_archive(path, hint)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():
            raise ReportgenError(
                f"refused to load {path}: it contains Python objects that could run code when loaded; "
                "reportgen checkpoints hold only tensors and plain data"
            ) from None
        raise ReportgenError(f"checkpoint {path} is corrupt or not a reportgen checkpoint; re-create it") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError for damaged archives
        raise ReportgenError(f"checkpoint {path} is corrupt or truncated ({_first_line(e)}); re-create it") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ReportgenError(f"{path} is not a reportgen checkpoint (no '{FORMAT}' marker); {hint}")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ReportgenError(
            f"checkpoint {path} has format version {repr(payload.get('format_version'))[:40]}, this reportgen reads "
            f"version {FORMAT_VERSION}; use the reportgen that wrote it, or train the model again"
        )
    for key, what in (("model_config", "model config"), ("state_dict", "weights")):
        if not isinstance(payload.get(key), dict):
            raise ReportgenError(f"checkpoint {path} has no {what} (its '{key}' entry is missing or damaged); "
                                 "re-create it with `reportgen train`")
    return payload


def _check_archive(path: Path, hint: str) -> None:
    """Refuse anything but an intact zip archive (what torch.save writes) before unpickling.

    A plain pickle, legacy torch file or garbage is foreign; a file that starts like a zip but
    is cut short or fails a CRC check is corrupt (torch itself does not check CRCs).
    """
    with open(path, "rb") as f:
        zip_like = f.read(4) == b"PK\x03\x04"
    if not zip_like:
        raise ReportgenError(f"{path} is not a reportgen checkpoint (not a torch archive); {hint}")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            names = z.namelist()
        problem = None if bad is None else f"CRC mismatch in {bad}"
    except Exception as e:  # zipfile raises many types for damaged archives
        problem = _first_line(e)
    if problem is not None:
        raise ReportgenError(f"checkpoint {path} is corrupt or truncated ({problem}); re-create it")
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        raise ReportgenError(f"{path} is a zip archive but not a torch checkpoint (it has no data.pkl); {hint}")


def _tokenizer(vocab, cfg: ModelConfig, path) -> Tokenizer:
    """The checkpoint's tokenizer, refusing a vocabulary the model or reportgen cannot use."""
    if (not isinstance(vocab, list) or not all(isinstance(t, str) for t in vocab) or len(set(vocab)) != len(vocab)
            or not set(SPECIALS) | set("0123456789") <= set(vocab) or len(vocab) != cfg.d_vocab):
        raise ReportgenError(f"checkpoint {path} has a damaged vocabulary (it needs {cfg.d_vocab} distinct tokens "
                             "including <pad>, <bos>, <eos> and the digits); re-create it")
    return Tokenizer.from_dict({"vocab": vocab})


def _check_task(data, path) -> None:
    """The data spec every later stage reads (task, digits, steps, answer order), checked once here."""
    ok = (isinstance(data, dict) and data.get("task") in TASKS
          and all(isinstance(data.get(k), int) and not isinstance(data.get(k), bool) and data.get(k) >= 1
                  for k in ("min_digits", "max_digits"))
          and isinstance(data.get("with_steps"), bool) and data.get("answer_order") in ANSWER_ORDERS)
    if not ok or data["min_digits"] > data["max_digits"]:
        raise ReportgenError(f"checkpoint {path} does not say which task it was trained on (its 'data' entry is "
                             "missing or damaged); re-create it with `reportgen train`")


def _state_error(e: Exception) -> str:
    """The informative line of a load_state_dict error (the first names no tensor)."""
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    detail = [l for l in lines if l.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    return (detail[0] if detail else _first_line(e))[:200]


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:160] if text else type(e).__name__


def load_checkpoint(path: str | Path, device: str = "cpu") -> Checkpoint:
    """Load a checkpoint into an eval-mode model on `device`."""
    payload = read_checkpoint_payload(path)
    try:
        cfg = ModelConfig(**payload["model_config"])
    except TypeError as e:
        raise ReportgenError(f"checkpoint {path} has a damaged model config ({_first_line(e)}); "
                             "re-create it with `reportgen train`") from None
    except ReportgenError as e:
        raise ReportgenError(f"checkpoint {path}: {e}") from None
    try:
        model = Transformer(cfg)
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ReportgenError(f"checkpoint {path} does not match the reportgen model ({_state_error(e)}): its weights "
                             "do not fit the model its config describes; re-create it with `reportgen train`") from None
    bad = non_finite(payload["state_dict"])
    if bad:
        raise ReportgenError(f"checkpoint {path} has non-finite weights (NaN or infinity in {bad}): its training "
                             "diverged; train it again with a lower optim.lr")
    tokenizer = _tokenizer(payload.get("vocab"), cfg, path)
    _check_task(payload.get("data"), path)
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "optimizer")}
    return Checkpoint(
        model=model.to(device).eval(),
        tokenizer=tokenizer,
        meta=meta,
        path=str(path),
        sha256=file_sha256(path),
    )

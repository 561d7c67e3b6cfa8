"""The work of a sweep as jobs that run anywhere: a job takes plain data (settings, and its input
files as bytes) and returns the files it made as bytes. So the same job runs in a local worker
process or as a Ray task on another machine with no shared file system, and only the driver writes
under --out (atomically, one job directory at a time).

Three kinds: `train` (a training config -> checkpoint_best.pt, snapshots/step_NNNNNN.pt, metrics),
`analyse` (a checkpoint -> results.json + arrays.npz, as `reportgen build` computes them) and
`render` (one model's results -> its full chapter: a single-model site without PDF).
"""

from __future__ import annotations

import contextlib
import functools
import io
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from reportgen.errors import ReportgenError

KINDS = ("train", "analyse", "render")


@dataclass
class Task:
    """One job to run: `id` names it in progress lines and failure records (e.g. 'analyse plain-s0
    step_000400'); `inputs` makes its keyword arguments when it is submitted (they may hold
    checkpoint bytes, read only then)."""

    id: str
    kind: str
    run: str
    inputs: Callable[[], dict]
    gpu: bool = False
    key: str = ""  # what its outputs are recorded with
    target: Any = None  # the job directory its files go to
    checkpoint: str = ""  # analyse: "final" or "step_000400"
    attempts: int = 0


def execute(kind: str, kwargs: dict) -> dict:
    """Run one job in this process, never raising: {"files": {path: bytes}, "code": ..., "seconds": ...,
    "cpu_seconds": ...} or {"error": one line, "traceback": text, ...}. Progress bars and warnings are dropped
    (stderr is captured): many jobs run at once, and their results say what happened."""
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        if kind != "render":
            import torch

            torch.set_num_threads(1)  # one job per core: tiny models run fastest on one thread anyway
        with contextlib.redirect_stderr(io.StringIO()):
            files = JOBS[kind](**kwargs)
        return {"files": files, "code": code_version(), "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0}
    except BaseException as e:  # noqa: BLE001  a job's failure is data for the driver (KeyboardInterrupt too)
        message = str(e) if isinstance(e, ReportgenError) else f"{type(e).__name__}: {e}"
        return {"error": " ".join(message.split()) or type(e).__name__, "traceback": traceback.format_exc(),
                "code": code_version(), "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Digest of the reportgen code (all of it) and libraries that make a sweep's outputs: a worker
    must run the driver's code."""
    from reportgen.fingerprint import code_digest

    return code_digest(("torch", "numpy", "scikit-learn", "matplotlib", "jinja2", "pypdf", "weasyprint"))


def _files(root: Path, skip: Callable[[str], bool] = lambda p: False) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and not skip(p.relative_to(root).as_posix())}


# ---------------------------------------------------------------- the three jobs
def train(config: dict, snapshot_steps: list[int]) -> dict[str, bytes]:
    """Train one run from its full training config; keep checkpoint_best.pt, the snapshots and the
    metrics (not the data set, which the config regenerates, nor checkpoint_last.pt)."""
    from reportgen.configfile import from_dict
    from reportgen.train.config import TrainConfig
    from reportgen.train.trainer import SnapshotTrainer

    cfg = from_dict(TrainConfig, config, "the run's training config")
    with tempfile.TemporaryDirectory(prefix="reportgen-train-") as tmp:
        out = Path(tmp) / "run"
        SnapshotTrainer(cfg, out, snapshot_steps).run()
        return _files(out, skip=lambda p: p.startswith("data/") or p == "checkpoint_last.pt")


def analyse(checkpoint: bytes, checkpoint_path: str, name: str, label: str, analysis_config: dict,
            device: str) -> dict[str, bytes]:
    """Evaluate and analyse one checkpoint exactly as `reportgen build` does; its results name the
    checkpoint by `checkpoint_path` (its place under --out)."""
    from reportgen.analysis.config import AnalysisConfig
    from reportgen.analysis.plan import prepare
    from reportgen.build import ModelRun, compute_model_results, make_report, model_name
    from reportgen.configfile import from_dict
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE, dump_results

    cfg = from_dict(AnalysisConfig, analysis_config, "the sweep's analysis config")
    with tempfile.TemporaryDirectory(prefix="reportgen-analyse-") as tmp:
        path = Path(tmp) / Path(checkpoint_path).name
        path.write_bytes(checkpoint)
        ckpt = load_checkpoint(path, device=device)
        result = compute_model_results(ModelRun(ckpt, prepare(ckpt, cfg), cfg, None, lambda m: None, False))
    result = model_name(result, checkpoint_path, name, label)
    json_bytes, npz_bytes = dump_results(make_report([result], title=label))
    return {RESULTS_FILE: json_bytes, ARRAYS_FILE: npz_bytes}


def render(results_json: bytes, arrays_npz: bytes) -> dict[str, bytes]:
    """One model's full chapter: the single-model site `reportgen render` makes, without a PDF
    (the study's PDF summarises the grid); figures drawn in this process only."""
    from reportgen.render.report import render_site
    from reportgen.results.store import parse_results

    report = parse_results(results_json, arrays_npz, "the model's results")
    with tempfile.TemporaryDirectory(prefix="reportgen-render-") as tmp:
        out = Path(tmp) / "site"
        render_site(report, out, pdf=False, workers=1)
        return _files(out)


JOBS = {"train": train, "analyse": analyse, "render": render}

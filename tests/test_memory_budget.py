"""The memory budget changes how batched passes are chunked, never what they compute."""

from __future__ import annotations

import dataclasses
import gc
import math
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from reportgen.analysis.config import AnalysisConfig
from reportgen.analysis.engine import forward_row_bytes, old_objects_frozen, release_memory, rows_within
from reportgen.analysis.run import prepare, run_plan
from reportgen.configfile import from_dict
from reportgen.errors import ReportgenError
from reportgen.model.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def numbers(x, path="findings"):
    """Every number of a findings tree as {path: value} (arrays flattened), strings kept as is."""
    if dataclasses.is_dataclass(x):
        x = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in numbers(val, f"{path}.{key}").items()}
    if isinstance(x, (list, tuple)):
        return {k: v for i, val in enumerate(x) for k, v in numbers(val, f"{path}[{i}]").items()}
    if isinstance(x, np.ndarray) and x.dtype.kind in "fiub":
        return {f"{path}[{i}]": float(v) for i, v in enumerate(x.ravel())}
    return {path: x}


@pytest.mark.slow
def test_a_tiny_budget_chunks_every_pass_and_changes_no_result():
    """add3_rev (real weights: kept pairs, confirmed components) with a budget so small that
    patching, neuron sweeps, ablations, the reference set and free generation all run in many
    chunks of a few rows, against one that holds each pass whole: the same findings."""
    ckpt = load_checkpoint(ROOT / "runs/add3_rev/checkpoint_best.pt")
    raw = {"n_examples": 120, "patching": {"n_pairs": 24, "pair_kinds": ["carry_flip"]},
           "circuits": {"n_pairs": 64, "neuron_permutations": 20}, "interventions": {"reference_size": 8}}
    out = {}
    for budget in (4, 4000):
        cfg = from_dict(AnalysisConfig, {**raw, "memory_budget_mb": budget}, "test")
        plan = prepare(ckpt, cfg, enabled=["patching", "circuits", "interventions"])
        out[budget] = numbers(run_plan(ckpt, cfg, plan, progress=False, shown=False))
    assert rows_within(4, forward_row_bytes(ckpt.model.cfg, plan.batch.tokens.shape[1])) < 20  # really chunked
    small, large = out[4], out[4000]
    assert small.keys() == large.keys()
    for key, a in small.items():
        b = large[key]
        if isinstance(a, float) and isinstance(b, float):
            assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-4, abs=1e-5), key
        else:
            assert a == b, key


def test_budget_is_validated():
    with pytest.raises(ReportgenError, match="memory_budget_mb"):
        from_dict(AnalysisConfig, {"memory_budget_mb": 0}, "test")


HOLES = r"""
import os, threading, time, torch
from reportgen.analysis.engine import heap_trimmed

def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") >> 20

torch.ones(4 << 20)  # 16 MB, freed at once: glibc raises its mmap threshold, so what follows comes from the heap
tensors = [torch.ones(1 << 20) for _ in range(64)]  # 4 MB each
kept = tensors[1::2]
del tensors  # 128 MB of holes between the kept tensors
held = rss_mb()
time.sleep(0.6)
untrimmed = rss_mb()
with heap_trimmed(0.1):
    inside = [t.name for t in threading.enumerate() if t.name == "reportgen-trim-heap"]
    time.sleep(0.6)
    during = rss_mb()
after = [t.name for t in threading.enumerate() if t.name == "reportgen-trim-heap"]
print(held, untrimmed, during, rss_mb(), len(inside), len(after))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heap")
def test_heap_trimmed_returns_the_holes_freed_tensors_leave():
    """Tensors freed between tensors still held leave holes glibc keeps resident; while
    `heap_trimmed` runs (as it does around each model's analyses, `run_plan`) they go
    back to the system, and its thread ends with the block."""
    out = subprocess.run([sys.executable, "-c", HOLES], capture_output=True, text=True, check=True, cwd=ROOT)
    held, untrimmed, during, trimmed, inside, after = map(int, out.stdout.split())
    assert untrimmed > held - 16, out.stdout  # the holes stay resident by themselves
    assert during < untrimmed - 100, out.stdout  # the thread trims while the block runs
    assert trimmed < untrimmed - 100, out.stdout
    assert (inside, after) == (1, 0), out.stdout  # one thread in the block, none after it


def test_old_objects_frozen_collects_new_cycles_and_thaws_the_rest():
    """Inside `old_objects_frozen` (around run_plan) collections skip what existed before the
    block, yet a reference cycle made inside it that holds a tensor is still freed by
    release_memory, and the old objects are collectable again after the block, even one that
    raised."""
    class Node:
        pass

    old = Node()
    old.self, old.tensor = old, torch.ones(4)
    old_ref = weakref.ref(old.tensor)
    del old
    with pytest.raises(RuntimeError):
        with old_objects_frozen():
            assert gc.get_freeze_count() > 0
            new = Node()
            new.self, new.tensor = new, torch.ones(4)
            new_ref = weakref.ref(new.tensor)
            del new
            release_memory()
            assert new_ref() is None  # made inside the block: collected
            assert old_ref() is not None  # frozen: never scanned, so its cycle stays
            raise RuntimeError("an analysis failed")
    assert gc.get_freeze_count() == 0
    gc.collect()
    assert old_ref() is None

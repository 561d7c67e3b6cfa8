"""`reportgen sweep`: sweep files are validated before any work; a tiny sweep (2 grid points x 2
seeds, a few training steps) trains, analyses every snapshot and final model and renders a study;
a rerun does nothing, a changed analysis config re-runs only the analyses; a sweep killed midway
re-runs only unfinished jobs; a failing job is retried, recorded and reported while the rest goes
on."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from reportgen.cli import main
from reportgen.sweep.config import SnapshotConfig, load_sweep
from test_faults import children, running, wait_for

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "title": "Tiny study",
    "train": {"data.instances": 2000, "data.max_digits": 2, "model.n_layers": 1, "model.d_model": 32,
              "model.d_mlp": 64, "model.n_heads": 2, "model.n_ctx": 24, "optim.max_steps": 60,
              "optim.batch_size": 32, "optim.warmup_steps": 10, "eval_every": 20, "eval_instances": 100},
    "grid": {"data.answer_order": ["plain", "reversed"]},
    "seeds": [0, 1],
    "snapshots": {"first": 20, "factor": 2},
    "analysis": {"enabled": ["attention", "logit_lens", "circuits", "probing"], "n_examples": 60,
                 "n_example_pages": 1, "probing.labels": ["carry_in", "digit"], "probing.hooks": ["hook_resid_post"],
                 "probing.n_examples": 60, "circuits.neuron_permutations": 20},
    "retries": 1,
}


def write_sweep(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


# ---------------------------------------------------------------- the sweep file
def test_snapshot_schedule_is_log_spaced_up_to_the_budget():
    assert SnapshotConfig(first=100, factor=2).schedule(1600) == [100, 200, 400, 800, 1600]
    assert SnapshotConfig(first=100, factor=2, steps=[50, 3000]).schedule(1000) == [50, 100, 200, 400, 800]
    assert SnapshotConfig().schedule(1000) == []


def test_grid_is_the_product_of_its_axes(tmp_path):
    grid = {"format": {"plain": {"data.with_steps": False}, "scratchpad": {"data.with_steps": True}},
            "model.n_layers": [1, 2]}
    sweep = load_sweep(write_sweep(tmp_path / "s.yaml", grid=grid, seeds=[3, 4]))
    assert [p.name for p in sweep.points] == ["plain_n_layers-1", "plain_n_layers-2", "scratchpad_n_layers-1",
                                              "scratchpad_n_layers-2"]
    assert sweep.points[3].label == "format=scratchpad, model.n_layers=2"
    assert len(sweep.runs) == 8 and sweep.runs[7].name == "scratchpad_n_layers-2-s4"
    cfg = sweep.runs[7].train_config
    assert (cfg.seed, cfg.data.with_steps, cfg.model.n_layers, cfg.model.d_model, cfg.optim.max_steps) == (4, True, 2, 32, 60)
    assert sweep.runs[0].snapshot_steps == [20, 40]
    assert sweep.analysis_config.n_examples == 60 and sweep.analysis_config.probing.labels == ["carry_in", "digit"]


@pytest.mark.parametrize("changes, message", [
    ({"grids": {}}, "unknown key 'grids'"),
    ({"grid": {}}, "grid is empty"),
    ({"grid": {"data.answer_order": []}}, "grid axis 'data.answer_order' has no values"),
    ({"grid": {"data.answer_ordr": ["plain"]}}, "unknown key 'answer_ordr'"),
    ({"grid": {"data.answer_order": ["sideways"]}}, "answer_order must be one of"),
    ({"grid": {"optim.max_steps": ["ten"]}}, "max_steps must be int"),
    ({"grid": {"seed": [1, 2]}}, "seeds are set by `seeds`"),
    ({"train": {"optim..lr": 0.1}}, "bad override key 'optim..lr'"),
    ({"analysis": {"probing.lables": ["carry_in"]}}, "unknown key 'lables'"),
    ({"snapshots": {"factor": 1}}, "snapshots.factor must be above 1"),
    ({"seeds": []}, "seeds is empty"),
])
def test_a_bad_sweep_file_is_one_line_before_any_work(tmp_path, capsys, changes, message):
    sweep = write_sweep(tmp_path / "s.yaml", **changes)
    out = tmp_path / "study"
    assert main(["sweep", str(sweep), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("reportgen: error: ")
    assert not out.exists()


def test_out_that_is_not_a_sweep_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["sweep", str(write_sweep(tmp_path / "s.yaml")), "--out", str(out)]) == 2
    assert "not a reportgen sweep" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_snapshot_trainer_keeps_the_model_at_its_steps(tmp_path):
    from reportgen.model.checkpoint import load_checkpoint
    from reportgen.train.trainer import SnapshotTrainer, snapshot_path

    cfg = load_sweep(write_sweep(tmp_path / "s.yaml", seeds=[0])).runs[0].train_config
    SnapshotTrainer(cfg, tmp_path / "run", [20, 40, 1000]).run()
    snaps = sorted(p.name for p in (tmp_path / "run" / "snapshots").iterdir())
    assert snaps == ["step_000020.pt", "step_000040.pt"]  # a step past the budget is never reached
    snap = load_checkpoint(snapshot_path(tmp_path / "run", 40))
    assert snap.meta["step"] == 40 and snap.meta["history"]["step"] == [20]  # evaluations before the snapshot
    assert "optimizer" not in snap.meta and snap.meta["train_config"]["seed"] == 0


# ---------------------------------------------------------------- end to end
def sweep_command(sweep: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "reportgen", "sweep", str(sweep), "--out", str(out), "--jobs", "2", *extra]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def run_sweep(sweep: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(sweep, out, *extra), cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=900)


def log(out: Path) -> list[dict]:
    rows = []
    for line in (out / "jobs.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a kill
            pass
    return rows


def done_jobs(out: Path) -> list[str]:
    return [r["job"] for r in log(out) if r["status"] == "done"]


@pytest.mark.slow
def test_tiny_sweep_local_engine(tmp_path):
    sweep, out = write_sweep(tmp_path / "tiny.yaml"), tmp_path / "study"
    first = run_sweep(sweep, out)
    assert first.returncode == 0, first.stderr
    jobs = done_jobs(out)
    assert sorted(j.split()[0] for j in jobs) == ["analyse"] * 12 + ["render"] * 4 + ["train"] * 4
    study = json.loads((out / "report" / "study.json").read_text())
    assert study["engine"] == "local" and [p["name"] for p in study["points"]] == ["answer_order-plain",
                                                                                    "answer_order-reversed"]
    for run in study["runs"]:
        assert run["status"] == "analysed"
        assert {s["checkpoint"] for s in run["snapshots"]} == {"step_000020", "step_000040", "final"}
        assert [s["step"] for s in run["snapshots"]] == sorted(s["step"] for s in run["snapshots"])
        chapter = out / "report" / run["chapter"]
        assert chapter.is_file() and "Logit lens" in chapter.read_text()
    index = (out / "report" / "index.html").read_text()
    assert index.count('href="models/') == 4 and "No job failed." in index
    from pypdf import PdfReader

    pdf = PdfReader(out / "report" / "report.pdf")
    assert pdf.attachments["study.json"][0] == (out / "report" / "study.json").read_bytes()
    assert "Findings in brief" in "".join(p.extract_text() for p in pdf.pages[:4])

    again = run_sweep(sweep, out)
    assert again.returncode == 0 and "jobs: 0 run, 20 already done, 0 failed" in again.stderr
    assert "is up to date; nothing to render" in again.stderr

    changed = write_sweep(tmp_path / "tiny.yaml", analysis={**TINY["analysis"], "n_examples": 50})
    third = run_sweep(changed, out, "--no-pdf")
    assert third.returncode == 0, third.stderr
    rerun = done_jobs(out)[len(jobs):]
    assert sorted(j.split()[0] for j in rerun) == ["analyse"] * 12 + ["render"] * 4  # no training


@contextlib.contextmanager
def sweep_in_background(sweep: Path, out: Path):
    """A `reportgen sweep` running in its own process group, killed whole (it and its workers) at
    the end of the block."""
    proc = subprocess.Popen(sweep_command(sweep, out, "--no-pdf"), cwd=ROOT, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
def test_killed_sweep_reruns_only_unfinished_jobs(tmp_path):
    sweep, out = write_sweep(tmp_path / "tiny.yaml"), tmp_path / "study"
    with sweep_in_background(sweep, out) as proc:
        wait_for(lambda: (out / "jobs.jsonl").is_file() and any(j.startswith("analyse") for j in done_jobs(out)),
                 timeout=600, proc=proc)
    before = set(done_jobs(out))
    job_files = {p: p.stat().st_mtime_ns for p in out.rglob("job.json")}
    assert before and len(job_files) == len(before)

    second = run_sweep(sweep, out, "--no-pdf")
    assert second.returncode == 0, second.stderr
    after = done_jobs(out)
    assert len(after) == len(set(after)) == 20  # every job done exactly once over both runs
    assert f"{len(before)} jobs already done" in second.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in job_files.items())  # finished jobs untouched
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads child processes from /proc")
def test_workers_end_with_a_killed_sweep(tmp_path):
    sweep, out = write_sweep(tmp_path / "tiny.yaml"), tmp_path / "study"
    with sweep_in_background(sweep, out) as proc:
        wait_for(lambda: children(proc.pid), timeout=300, proc=proc)
        time.sleep(2.0)  # the workers have started their jobs
        workers = children(proc.pid)
        proc.kill()  # the sweep alone, not its process group
        proc.wait()
        wait_for(lambda: not any(map(running, workers)), timeout=10)


@pytest.mark.slow
def test_failing_job_is_retried_recorded_and_reported(tmp_path):
    grid = {"model.n_ctx": [24, 6]}  # 6 tokens cannot hold a 2-digit addition: that run's training fails
    sweep, out = write_sweep(tmp_path / "tiny.yaml", grid=grid, seeds=[0]), tmp_path / "study"
    result = run_sweep(sweep, out, "--no-pdf")
    assert result.returncode == 1
    failed = [r for r in log(out) if r["status"] == "failed"]
    assert [(r["job"], r["attempt"]) for r in failed] == [("train n_ctx-6-s0", 1), ("train n_ctx-6-s0", 2)]
    assert "model.n_ctx=6 is shorter than the longest training sequence" in failed[0]["error"]
    failures = json.loads((out / "failures.json").read_text())
    assert list(failures) == ["train n_ctx-6-s0"] and failures["train n_ctx-6-s0"]["attempts"] == 2
    study = json.loads((out / "report" / "study.json").read_text())
    assert [r["status"] for r in study["runs"]] == ["analysed", "failed"]  # the rest went on
    index = (out / "report" / "index.html").read_text()
    assert "train n_ctx-6-s0" in index and "model.n_ctx=6 is shorter" in index
    assert "1 job failed" in index

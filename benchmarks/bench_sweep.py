"""Sweep benchmark: the engines' speed and the study report's render time and memory at 50 models.

1. Local engine: the same training jobs (tiny models, --train-jobs of them) run one after another
   (a pool of one worker) and then on a pool of one worker per usable core, alternately, best of
   --rounds each; prints the speed-up (target: close to the number of cores) and how many cores
   the jobs kept busy (their CPU seconds over the wall time: on a machine shared with other
   work, fewer than the workers).
2. Ray: the same jobs as Ray tasks on a private single-machine Ray instance on 127.0.0.1 (or the
   cluster at --ray-address), against the local pool of the same size; prints Ray's overhead per
   job and its start-up time. Skipped when Ray is not installed.
3. Render: the study report (site and PDF) of a study of 50+ small models (--points grid points x
   3 seeds, 5 snapshots each) built from SYNTHETIC results (tests/study_fixtures.py: no training,
   numbers made up by formula), and the peak memory (PSS of this process and its figure workers)
   while rendering (targets: under 60 s, under 2 GB). Model chapters are not part of it: the sweep
   renders each final model's chapter as a job in the pool; the time of one chapter (the render
   tests' synthetic model) is printed so the cost of 50 can be read off.

Wall times on a shared machine depend on its load: each line also prints CPU seconds (this
process and its children), and the machine's load average is printed at the start and the end.

    PYTHONPATH=. python benchmarks/bench_sweep.py [--train-jobs 8] [--steps 150] [--points 17]
                                                  [--rounds 2] [--ray-address local|HOST:PORT] [--skip-ray]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_build import PeakMemory  # noqa: E402

from reportgen.configfile import to_dict  # noqa: E402
from reportgen.parallel import cpus  # noqa: E402
from reportgen.sweep.engine import LocalEngine  # noqa: E402
from reportgen.sweep.jobs import Task  # noqa: E402

LOOPBACK_RAY = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def train_tasks(n: int, steps: int) -> list[Task]:
    """n training jobs of a tiny model on 2-digit addition, seeds 0..n-1."""
    from reportgen.train.config import DataConfig, OptimConfig, TrainConfig
    from reportgen.model.transformer import ModelConfig

    tasks = []
    for seed in range(n):
        cfg = TrainConfig(data=DataConfig(instances=2000, max_digits=2),
                          model=ModelConfig(n_layers=1, n_heads=2, d_model=32, d_mlp=64, n_ctx=24),
                          optim=OptimConfig(batch_size=32, warmup_steps=10, max_steps=steps),
                          eval_every=steps, eval_instances=100, seed=seed)
        config = to_dict(cfg)
        tasks.append(Task(f"train {seed}", "train", str(seed), lambda c=config: {"config": c, "snapshot_steps": []}))
    return tasks


def run_all(engine, tasks: list[Task]) -> tuple[float, float]:
    """Wall seconds to run every task on `engine` (its capacity at once), and the CPU seconds the
    jobs themselves used (reported by each job: the workers outlive the run)."""
    pending, in_flight, used = list(tasks), {}, 0.0
    t0 = time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < engine.capacity:
            task = pending.pop(0)
            in_flight[engine.submit(task)] = task
        for handle, result in engine.wait(list(in_flight)):
            task = in_flight.pop(handle)
            if "error" in result:
                raise SystemExit(f"{task.id} failed: {result['error']}")
            used += result["cpu_seconds"]
    return time.perf_counter() - t0, used


def bench_local(n: int, steps: int, rounds: int) -> float:
    """Best of `rounds` alternating serial and parallel runs (a busy machine slows either at random)."""
    cores = cpus()
    serial_engine, pool = LocalEngine(1), LocalEngine(cores)
    run_all(serial_engine, train_tasks(1, 5))  # spawn and import once, outside the timing
    run_all(pool, train_tasks(cores, 5))
    serial, parallel = [], []
    for _ in range(rounds):
        serial.append(run_all(serial_engine, train_tasks(n, steps)))
        parallel.append(run_all(pool, train_tasks(n, steps)))
    serial_engine.close()
    pool.close()
    (s, s_cpu), (p, p_cpu) = min(serial), min(parallel)
    print(f"local engine: {n} training jobs of {steps} steps, best of {rounds}: one after another {s:.1f} s "
          f"(jobs' cpu {s_cpu:.1f} s, {s_cpu / s:.2f} cores busy), {cores} workers {p:.1f} s (jobs' cpu {p_cpu:.1f} s, "
          f"{p_cpu / p:.2f} cores busy): speed-up {s / p:.2f}x on {cores} cores (target: close to {cores}x)")
    return p


def bench_ray(n: int, steps: int, address: str, local_seconds: float) -> None:
    if importlib.util.find_spec("ray") is None:
        print("ray: not installed (pip install -e '.[ray]'); skipped")
        return
    from reportgen.sweep.engine import RayEngine

    if address == "local":
        os.environ.update(LOOPBACK_RAY)
    t0 = time.perf_counter()
    engine = RayEngine(address, "cpu", cpus())
    started = time.perf_counter() - t0
    run_all(engine, train_tasks(engine.capacity, 5))  # start and warm the workers
    wall, used = run_all(engine, train_tasks(n, steps))
    engine.close()
    print(f"ray engine ({engine.describe()}): start {started:.1f} s; the same {n} jobs {wall:.1f} s (jobs' cpu "
          f"{used:.1f} s, {used / wall:.2f} cores busy) against local {local_seconds:.1f} s: overhead "
          f"{(wall - local_seconds) / n:+.2f} s per job")


def bench_render(points: int) -> None:
    from render_fixtures import make_report
    from study_fixtures import synthetic_study

    from reportgen.render.study import write_study
    from reportgen.results.store import dump_results
    from reportgen.sweep.jobs import render

    study = synthetic_study(points)
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-")) / "report"
    marks = []
    with PeakMemory() as memory:
        t0, c0 = time.perf_counter(), cpu()
        write_study(study, out, {}, True, lambda m: marks.append((m, time.perf_counter() - t0)))
        wall, used = time.perf_counter() - t0, cpu() - c0
    for message, at in marks:
        print(f"  {at:6.1f} s  {message}")
    print(f"study render: {len(study.runs)} models ({points} grid points x 3 seeds, "
          f"{sum(len(r.snapshots) for r in study.runs)} analysed checkpoints; SYNTHETIC results), site + PDF: "
          f"{wall:.1f} s (cpu {used:.1f} s, target under 60 s), peak memory {memory.peak_kb / 1024:.0f} MB PSS "
          f"(target under 2048 MB) -> {out}")
    json_bytes, npz_bytes = dump_results(make_report(2))
    t0, c0 = time.perf_counter(), cpu()
    files = render(json_bytes, npz_bytes)
    print(f"one model chapter (the render tests' synthetic 2-model report, {len(files)} files, "
          f"{sum(map(len, files.values())) / 2**20:.1f} MB): {time.perf_counter() - t0:.1f} s (cpu {cpu() - c0:.1f} s) "
          f"in one process; a sweep renders chapters as jobs, {cpus()} at a time")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-jobs", type=int, default=4 * cpus(), help="jobs per engine run (default: 4 per core)")
    p.add_argument("--steps", type=int, default=300, help="training steps per job (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="alternating serial/parallel runs; the best counts")
    p.add_argument("--points", type=int, default=17, help="grid points of the rendered study (x 3 seeds)")
    p.add_argument("--ray-address", default="local", help="local (a private instance) or HOST:PORT of a cluster")
    p.add_argument("--skip-ray", action="store_true")
    p.add_argument("--skip-engines", action="store_true", help="only the render benchmark")
    args = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs ({cpus()} usable), load average {load()}")
    if not args.skip_engines:
        local = bench_local(args.train_jobs, args.steps, args.rounds)
        if not args.skip_ray:
            bench_ray(args.train_jobs, args.steps, args.ray_address, local)
    bench_render(args.points)
    print(f"load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

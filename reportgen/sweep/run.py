"""`reportgen sweep` end to end: train every (grid point, seed), analyse every final checkpoint and
snapshot, render each final model's chapter, then the study report.

Everything lives under --out:

    runs/<run>/              train job: checkpoint_best.pt, snapshots/step_NNNNNN.pt, metrics
    results/<run>/<ckpt>/    analyse job: results.json + arrays.npz (<ckpt>: final or step_NNNNNN)
    chapters/<run>/          render job: the final model's full chapter (a single-model site)
    report/                  the study report: index.html, report.pdf, study.json, models/<run>/...
    failures.json            jobs that failed every attempt, with their errors
    jobs.jsonl               one line per finished or failed job attempt (wall and CPU time, error)

Each job directory is written whole by the driver (a temporary directory swapped in) with a
job.json recording the key of its inputs: a job is skipped when its directory exists, holds that
key and is unchanged since (its manifest). A sweep killed at any instant and run again therefore
re-runs only the jobs that had not finished. Keys follow `reportgen build`'s results cache: the
training config (with seed and snapshot steps), the checkpoint's sha256, the analysis config, the
code of every stage that made the output and the library versions.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import shutil
import time
from pathlib import Path, PurePosixPath
from typing import Callable, Optional

from reportgen.atomic import check_replaceable, replace_dir, unchanged, write_file
from reportgen.configfile import to_dict
from reportgen.errors import Interrupted, ReportgenError
from reportgen.fingerprint import code_digest
from reportgen.results.study import FINAL, JobFailure, Study, StudyPoint, StudyRun, format_name, summarise
from reportgen.sweep.config import TARGET_EXACT_MATCH, RunSpec, Sweep, load_sweep
from reportgen.sweep.jobs import Task, code_version

Progress = Callable[[str], None]

RUNS, RESULTS, CHAPTERS, REPORT = "runs", "results", "chapters", "report"
MARKER, FAILURES, LOG, LOCK, JOB_FILE = "sweep.json", "failures.json", "jobs.jsonl", ".sweep.lock", "job.json"
# Longest jobs first: trains start as early as possible, so that the short analyses and renders
# fill the workers at the end instead of a last training run holding up a sweep on one core.
PRIORITY = {"train": 0, "analyse": 1, "render": 2}
_TEMP = re.compile(r"^\..+(\.(tmp|probe)-[^/]*|\.tmp)$")  # what replace_dir, check_out_dir, write_file leave when killed


def run_sweep(sweep_file: str, out: str | Path, engine: str = "local", address: str = "auto",
              device: Optional[str] = None, jobs: Optional[int] = None, pdf: bool = True,
              progress: Optional[Progress] = None) -> Study:
    """Run (or resume) the sweep in `sweep_file` into `out` and render its study report."""
    from reportgen.sweep.engine import make_engine
    from reportgen.model.device import resolve_device

    say = progress or (lambda message: None)
    sweep = load_sweep(sweep_file, device)
    devices = {r.train_config.device for r in sweep.runs}
    if engine == "local" and "cuda" in devices:
        resolve_device("cuda")
    out = Path(out).resolve()
    with _claimed(out):
        runner = Runner(sweep, out, say)
        runner.plan()
        if runner.ready:
            eng = make_engine(engine, jobs, address, "cuda" if "cuda" in devices else "cpu")
            say(eng.describe())
            try:
                runner.run(eng)
            except KeyboardInterrupt:
                eng.close(cancel=True)
                raise Interrupted(f"finished jobs were kept in {out}; run the same command again to go on") from None
            eng.close()
        say(runner.summary())
        study = runner.collect(engine)
        from reportgen.render.study import write_study

        write_study(study, out / REPORT, {r: out / CHAPTERS / r for r in runner.chapters}, pdf, say)
    return study


# ---------------------------------------------------------------- the output directory
@contextlib.contextmanager
def _claimed(out: Path):
    """Make `out` a sweep directory (refusing one that holds anything else), lock it against a
    second sweep writing there at the same time, and clear what a killed run left half-written."""
    if out.exists() and not out.is_dir():
        raise ReportgenError(f"--out {out} is a file; give a directory for the study")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ReportgenError(f"--out {out} holds files that are not a reportgen sweep's; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK, "a+")
    except OSError as e:
        raise ReportgenError(f"cannot write the study to {out}: {e.strerror or e}; choose a writable --out") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReportgenError(f"another reportgen sweep is writing to {out}; wait for it to finish or choose "
                                 "another --out") from None
        _write_json(out / MARKER, {"reportgen": "sweep"})
        for parent in [out, out / RUNS, out / CHAPTERS, *(sorted((out / RESULTS).glob("*")))]:
            if parent.is_dir():
                for p in parent.iterdir():
                    if _TEMP.match(p.name) and p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    elif _TEMP.match(p.name):
                        p.unlink(missing_ok=True)
        yield


def _write_json(path: Path, data) -> None:
    """Whole (a killed sweep leaves the old file or the new one)."""
    write_file(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def is_done(d: Path, key: str) -> bool:
    """The job directory `d` holds the outputs of inputs with this key, unchanged since."""
    try:
        recorded = json.loads((d / JOB_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("key") == key and unchanged(d)


def write_job(d: Path, task: Task, files: dict[str, bytes]) -> None:
    """Put a job's files in its directory as a whole, with the key of its inputs."""
    def write(tmp: Path) -> None:
        for rel, data in files.items():
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts or not p.parts or rel == JOB_FILE:
                raise ReportgenError(f"{task.id} returned a file with a bad path {rel!r}")
            target = tmp.joinpath(*p.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (tmp / JOB_FILE).write_text(json.dumps({"job": task.id, "key": task.key}, indent=1, sort_keys=True) + "\n")

    replace_dir(d, write)


# ---------------------------------------------------------------- keys
def train_key(spec: RunSpec) -> str:
    from reportgen.build import reportgen_version

    return _digest({"config": to_dict(spec.train_config), "snapshots": spec.snapshot_steps,
                    "code": code_digest(("torch", "numpy"), upto="train"),
                    "reportgen_version": reportgen_version()})


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checkpoints(run_dir: Path) -> list[tuple[str, Path, int]]:
    """(name, path, step) of a trained run's snapshots in step order, then its final model."""
    out = [(p.stem, p, int(p.stem.removeprefix("step_"))) for p in sorted((run_dir / "snapshots").glob("step_*.pt"))]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return out + [(FINAL, run_dir / "checkpoint_best.pt", int(metrics["best_step"]))]


# ---------------------------------------------------------------- the scheduler
class Runner:
    """Plans the jobs that are not done, runs them on an engine with retries, and records failures."""

    def __init__(self, sweep: Sweep, out: Path, say: Progress):
        self.sweep, self.out, self.say = sweep, out, say
        self.specs = {r.name: r for r in sweep.runs}
        self.analysis = to_dict(sweep.analysis_config)
        self.ready: list[Task] = []
        self.counts = {"run": 0, "skipped": 0, "failed": 0}
        self.trained: set[str] = set()
        self.analysed: set[tuple[str, str]] = set()
        self.chapters: set[str] = set()
        try:
            failures = json.loads((out / FAILURES).read_text())
        except (OSError, ValueError):
            failures = {}
        self.failures: dict[str, dict] = failures if isinstance(failures, dict) else {}

    # -- planning: each job is queued only once what it reads exists
    def plan(self) -> None:
        for spec in self.sweep.runs:
            self.plan_train(spec)
        n = len(self.ready)
        self.say(f"{len(self.sweep.runs)} runs ({len(self.sweep.points)} grid points x {len(self.sweep.config.seeds)} "
                 f"seeds); {self.counts['skipped']} jobs already done, {n} ready to run")

    def _queue(self, task: Task) -> None:
        check_replaceable(task.target, "--out", f"the outputs of {task.id}")
        self.ready.append(task)
        self.ready.sort(key=lambda t: PRIORITY[t.kind])

    def plan_train(self, spec: RunSpec) -> None:
        d, key = self.out / RUNS / spec.name, train_key(spec)
        if is_done(d, key):
            self.counts["skipped"] += 1
            self.trained.add(spec.name)
            for name, path, step in checkpoints(d):
                self.plan_analysis(spec, name, path, step)
            return
        config = to_dict(spec.train_config)
        self._queue(Task(f"train {spec.name}", "train", spec.name,
                         lambda: {"config": config, "snapshot_steps": spec.snapshot_steps}, gpu=True, key=key, target=d))

    def plan_analysis(self, spec: RunSpec, name: str, path: Path, step: int) -> None:
        from reportgen.build import cache_key
        from reportgen.model.checkpoint import file_sha256

        d = self.out / RESULTS / spec.name / name
        key = cache_key(file_sha256(path), self.analysis, None)
        if is_done(d, key):
            self.counts["skipped"] += 1
            self.analysed.add((spec.name, name))
            if name == FINAL:
                self.plan_render(spec)
            return
        model = spec.name if name == FINAL else f"{spec.name}-step{step}"
        label = spec.name if name == FINAL else f"{spec.name} at step {step}"
        inputs = {"checkpoint_path": path.relative_to(self.out).as_posix(), "name": model, "label": label,
                  "analysis_config": self.analysis, "device": spec.train_config.device}
        self._queue(Task(f"analyse {spec.name} {name}", "analyse", spec.name,
                         lambda: {**inputs, "checkpoint": path.read_bytes()}, gpu=True, key=key, target=d,
                         checkpoint=name))

    def plan_render(self, spec: RunSpec) -> None:
        from reportgen.render.stamp import fingerprint
        from reportgen.results.store import ARRAYS_FILE, RESULTS_FILE

        src, d = self.out / RESULTS / spec.name / FINAL, self.out / CHAPTERS / spec.name
        json_bytes, npz_bytes = (src / RESULTS_FILE).read_bytes(), (src / ARRAYS_FILE).read_bytes()
        key = fingerprint(json_bytes, npz_bytes, False)
        if is_done(d, key):
            self.counts["skipped"] += 1
            self.chapters.add(spec.name)
            return
        self._queue(Task(f"render {spec.name}", "render", spec.name,
                         lambda: {"results_json": (src / RESULTS_FILE).read_bytes(),
                                  "arrays_npz": (src / ARRAYS_FILE).read_bytes()}, key=key, target=d))

    # -- running
    def run(self, engine) -> None:
        in_flight: dict = {}
        while self.ready or in_flight:
            while self.ready and len(in_flight) < engine.capacity:
                task = self.ready.pop(0)
                task.attempts += 1
                self.say(f"start {task.id}" + (f" (attempt {task.attempts})" if task.attempts > 1 else ""))
                try:
                    in_flight[engine.submit(task)] = (task, time.perf_counter())
                except (OSError, ReportgenError) as e:  # its inputs could not be read
                    self.finish(task, {"error": f"cannot start: {e}"}, 0.0)
            for handle, result in engine.wait(list(in_flight)):
                task, t0 = in_flight.pop(handle)
                self.finish(task, result, time.perf_counter() - t0)

    def finish(self, task: Task, result: dict, seconds: float) -> None:
        """Write a finished job's files and plan what needs them, or retry / record a failed one."""
        if "error" not in result and result.get("code") != code_version():
            result = {"error": "the worker ran other reportgen code or library versions than this driver; install "
                               "the same reportgen and libraries on every node"}
        if "error" not in result:
            try:
                write_job(task.target, task, result["files"])
            except (OSError, ReportgenError) as e:
                result = {"error": f"cannot write its outputs: {e}"}
        entry = {"job": task.id, "kind": task.kind, "run": task.run, "attempt": task.attempts,
                 "seconds": round(seconds, 3), "job_seconds": round(result.get("seconds", 0.0), 3),
                 "cpu_seconds": round(result.get("cpu_seconds", 0.0), 3)}
        if "error" in result:
            self._log({**entry, "status": "failed", "error": result["error"]})
            retries = self.sweep.config.retries
            if task.attempts <= retries:
                self.say(f"{task.id} failed (attempt {task.attempts} of {retries + 1}), retrying: {result['error']}")
                self.ready.insert(0, task)
                return
            self.say(f"{task.id} failed after {task.attempts} attempt(s): {result['error']}")
            self.counts["failed"] += 1
            self.failures[task.id] = {"kind": task.kind, "run": task.run, "attempts": task.attempts,
                                      "error": result["error"], "traceback": result.get("traceback", "")}
            _write_json(self.out / FAILURES, self.failures)
            return
        self._log({**entry, "status": "done"})
        self.counts["run"] += 1
        self.say(f"finished {task.id} in {seconds:.1f} s")
        if self.failures.pop(task.id, None) is not None:
            _write_json(self.out / FAILURES, self.failures)
        spec = self.specs[task.run]
        if task.kind == "train":
            self.trained.add(task.run)
            for name, path, step in checkpoints(task.target):
                self.plan_analysis(spec, name, path, step)
        elif task.kind == "analyse":
            self.analysed.add((task.run, task.checkpoint))
            if task.checkpoint == FINAL:
                self.plan_render(spec)
        else:
            self.chapters.add(task.run)

    def _log(self, entry: dict) -> None:
        with open(self.out / LOG, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    def summary(self) -> str:
        c = self.counts
        return f"jobs: {c['run']} run, {c['skipped']} already done, {c['failed']} failed"

    # -- the study
    def collect(self, engine: str) -> Study:
        """The study object from every finished job's outputs (failed and missing ones noted)."""
        from reportgen.build import generated_at
        from reportgen.results.store import load_results

        runs = []
        for spec in self.sweep.runs:
            d = self.out / RUNS / spec.name
            data = spec.train_config.data
            task = {"task": data.task, "min_digits": data.min_digits, "max_digits": data.max_digits,
                    "with_steps": data.with_steps, "answer_order": data.answer_order}
            history, best_step, snapshots = ([], []), None, []
            if spec.name in self.trained:
                rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
                history = ([int(r["step"]) for r in rows], [float(r["val_exact_match"]) for r in rows])
                best_step = int(json.loads((d / "metrics.json").read_text())["best_step"])
                for name, _, step in checkpoints(d):
                    if (spec.name, name) in self.analysed:
                        (m,) = load_results(self.out / RESULTS / spec.name / name).models
                        task = dict(m.provenance.task)  # a run on a data.dir has the task of that data set
                        snapshots.append(summarise(m, name, step, spec.train_config.optim.batch_size))
            snapshots.sort(key=lambda s: (s.step, s.checkpoint == FINAL))
            failed = any(f["run"] == spec.name for f in self.failures.values())
            status = ("analysed" if any(s.checkpoint == FINAL for s in snapshots) else
                      "failed" if failed else "trained" if spec.name in self.trained else "pending")
            chapter = f"models/{spec.name}/models/{spec.name}.html" if spec.name in self.chapters else ""
            runs.append(StudyRun(spec.name, spec.point, spec.seed, status, task, to_dict(spec.train_config.model),
                                 spec.train_config.optim.batch_size, history[0], history[1], best_step, snapshots,
                                 chapter))
        by_point = {p.name: [r for r in runs if r.point == p.name] for p in self.sweep.points}
        points = [StudyPoint(p.name, p.label, p.overrides, format_name(by_point[p.name][0].task),
                             [r.name for r in by_point[p.name]]) for p in self.sweep.points]
        names = set(self.specs)
        failures = [JobFailure(job, f["kind"], f["run"], int(f["attempts"]), f["error"])
                    for job, f in sorted(self.failures.items()) if f.get("run") in names]
        return Study(self.sweep.title, generated_at(), TARGET_EXACT_MATCH, engine, self.sweep.to_dict(), points, runs,
                     failures)

"""Where a sweep's jobs run. Both engines run the same job function (`jobs.execute`) and give its
result dict back to the driver, which alone writes under --out:

* `LocalEngine`: a pool of worker processes on this machine, one job and one torch thread per
  worker, as many workers as usable cores; nothing to start. Workers are spawned, not forked (a
  forked torch can hang), and reused from job to job.
* `RayEngine`: each job a Ray task asking for `num_cpus=1` (and `num_gpus=1` for train and analyse
  jobs with --device cuda) on the cluster at --address. Inputs and results travel through Ray's
  object store, so the nodes need no file system in common with the driver; every node needs the
  same reportgen installed (a job run with other code is refused).

An engine's `wait` returns finished handles with their result dicts; a worker that died (killed,
out of memory) gives an error result like any failing job, so the driver can retry it.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from typing import Any, Optional

from reportgen.errors import ReportgenError
from reportgen.parallel import cpus, exit_with_parent
from reportgen.sweep.jobs import Task, execute

ENGINES = ("local", "ray")


def make_engine(name: str, jobs: Optional[int], address: str, device: str) -> "LocalEngine | RayEngine":
    if jobs is not None and jobs < 1:
        raise ReportgenError(f"--jobs must be at least 1, got {jobs}")
    if name == "local":
        return LocalEngine(jobs or cpus())
    if name == "ray":
        return RayEngine(address, device, jobs)
    raise ReportgenError(f"unknown engine {name!r}; choose local or ray")


def _worker_init() -> None:
    """Before a worker imports torch: one OpenMP/MKL thread (the pool runs one job per core). The
    worker ends with the sweep, however the sweep ends (else it waits for work forever)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    exit_with_parent(os.getppid())


class LocalEngine:
    """Jobs in `workers` spawned processes on this machine."""

    name = "local"

    def __init__(self, workers: int):
        self.capacity = workers
        self._pool: Optional[cf.ProcessPoolExecutor] = None

    def describe(self) -> str:
        return f"local engine: {self.capacity} worker process(es), one torch thread each"

    def submit(self, task: Task) -> Any:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.capacity, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init)
        return self._pool.submit(execute, task.kind, task.inputs())

    def wait(self, handles: list) -> list[tuple[Any, dict]]:
        done, _ = cf.wait(handles, return_when=cf.FIRST_COMPLETED)
        out = []
        for h in done:
            try:
                out.append((h, h.result()))
            except cf.process.BrokenProcessPool:
                self._pool = None  # a worker died; the pool is unusable, a new one starts on the next submit
                out.append((h, {"error": "the worker process died (killed, or out of memory?)"}))
            except Exception as e:  # noqa: BLE001  e.g. a result that could not be sent back
                out.append((h, {"error": f"{type(e).__name__}: {e}"}))
        return out

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self._pool = None


def _causes(e: BaseException) -> str:
    """The messages of an exception and of the exceptions it was raised from."""
    out = []
    while e is not None and len(out) < 10:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " | ".join(out)


class RayEngine:
    """Jobs as Ray tasks on the cluster at `address` ('auto': the one this machine belongs to;
    HOST:PORT: its head; 'local': a private instance started for this sweep and stopped after)."""

    name = "ray"

    def __init__(self, address: str, device: str, jobs: Optional[int]):
        try:
            import ray
        except ImportError:
            raise ReportgenError("--engine ray needs Ray: pip install -e '.[ray]' (or use --engine local)") from None
        import logging

        self._ray = ray
        try:
            ray.init(address=None if address == "local" else address, logging_level=logging.WARNING,
                     log_to_driver=False, include_dashboard=False)
        except Exception as e:  # noqa: BLE001  Ray raises ConnectionError, RuntimeError, ValueError...
            if "AuthToken" in _causes(e) or "Authentication" in _causes(e):
                raise ReportgenError(
                    f"the Ray cluster at {address!r} wants its authentication token; run with RAY_AUTH_MODE=token and "
                    "the token in ~/.ray/auth_token or RAY_AUTH_TOKEN (see Ray's token-auth documentation)") from None
            raise ReportgenError(
                f"cannot connect to a Ray cluster at {address!r} ({' '.join(str(e).split())[:200]}); start one with "
                "`ray start --head` or give --address HOST:PORT of a running head") from None
        resources = ray.cluster_resources()
        self.cpus, self.gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        if device == "cuda" and self.gpus < 1:
            ray.shutdown()
            raise ReportgenError("--device cuda was requested but the Ray cluster has no GPU; use --device cpu")
        self.device = device
        self.capacity = jobs or max(1, self.cpus)
        self._remote = ray.remote(execute)

    def describe(self) -> str:
        return f"Ray engine: cluster with {self.cpus} CPU(s) and {self.gpus} GPU(s), up to {self.capacity} jobs at once"

    def submit(self, task: Task) -> Any:
        gpus = 1 if task.gpu and self.device == "cuda" else 0
        return self._remote.options(num_cpus=1, num_gpus=gpus, max_retries=0, name=task.id).remote(
            task.kind, task.inputs())

    def wait(self, handles: list) -> list[tuple[Any, dict]]:
        ready, _ = self._ray.wait(handles, num_returns=1)
        out = []
        for h in ready:
            try:
                out.append((h, self._ray.get(h)))
            except Exception as e:  # noqa: BLE001  the worker died or the task could not run
                out.append((h, {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}))
        return out

    def close(self, cancel: bool = False) -> None:
        self._ray.shutdown()

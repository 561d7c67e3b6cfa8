"""Independent jobs (drawing and saving figures) in forked worker processes.

Jobs are plain callables: the workers are forked after the list is set, so they inherit the jobs
and their data instead of receiving them pickled. Where fork is unavailable, or there is one CPU
or few jobs, they run in turn in this process. Jobs must not use torch: its thread pool does
not survive a fork, and a forked torch operation can hang. Workers end with this process however
it ends, kill -9 included (they would otherwise wait forever for more work).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Optional

PARENT_POLL_S = 0.5

_JOBS: list[Callable[[], None]] = []


def run_jobs(jobs: list[Callable[[], None]], workers: Optional[int] = None, min_jobs: int = 4) -> None:
    """Run every job once; exceptions propagate. `workers` defaults to the usable CPUs (at most 4)."""
    global _JOBS
    workers = min(workers or min(4, cpus()), len(jobs))
    if workers < 2 or len(jobs) < min_jobs or "fork" not in multiprocessing.get_all_start_methods():
        for job in jobs:
            job()
        return
    import matplotlib.figure  # noqa: F401  imported once here, not in every worker

    _JOBS = jobs
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
            list(pool.map(_run, range(len(jobs)), chunksize=max(1, len(jobs) // (workers * 4))))
    finally:
        _JOBS = []


def _run(i: int) -> None:
    _JOBS[i]()


def die_with_parent(parent: int) -> None:
    """Make this (forked) process exit when process `parent` ends: on Linux the kernel kills it
    (PR_SET_PDEATHSIG); exit_with_parent's thread covers other systems and a parent that died
    before that was set."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    exit_with_parent(parent)


def exit_with_parent(parent: int) -> None:
    """Make this process exit when process `parent` ends, watched by a thread started once per
    process (for workers of pools started elsewhere, joblib's or the sweep's, which would otherwise
    wait for more work after their parent was killed)."""
    global _WATCHED
    if _WATCHED == parent:
        return
    if os.getppid() != parent:
        os._exit(1)
    _WATCHED = parent
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="watch-parent").start()


_WATCHED: Optional[int] = None


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

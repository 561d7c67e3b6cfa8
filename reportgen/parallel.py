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
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

PARENT_POLL_S = 0.5
T = TypeVar("T")
R = TypeVar("R")

_JOBS: list[Callable[[], None]] = []


def run_jobs(jobs: list[Callable[[], None]], workers: Optional[int] = None, min_jobs: int = 4) -> None:
    """Run every job once; exceptions propagate. `workers` defaults to the usable CPUs (at most 4)."""
    workers = min(workers or default_workers(), len(jobs))
    with jobs_in_background(jobs, workers if workers >= 2 and len(jobs) >= min_jobs else 0):
        pass


@contextmanager
def jobs_in_background(jobs: list[Callable[[], None]], workers: int) -> Iterator[None]:
    """Run every job in `workers` forked processes while the caller's block runs in this one, and
    wait for them when it ends (exceptions propagate; an exception in the block cancels the jobs
    not yet started). With no workers, or where fork is unavailable, the jobs run here after it."""
    global _JOBS
    if not jobs or workers < 1 or not _can_fork():
        yield
        for job in jobs:
            job()
        return
    _JOBS = jobs
    try:
        # A fork pool starts all its workers at the first submit, so they inherit _JOBS as set here.
        with _fork_pool(workers) as pool:
            done = pool.map(_run, range(len(jobs)), chunksize=max(1, len(jobs) // (workers * 4)))
            try:
                yield
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            list(done)
    finally:
        _JOBS = []


def map_in_processes(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """[fn(item) for item in items], in forked processes (one per item, up to the CPUs) where there
    are several items and CPUs; `fn` must not use torch (see above) and its results are pickled."""
    workers = min(len(items), cpus())
    if workers < 2 or not _can_fork():
        return [fn(item) for item in items]
    with _fork_pool(workers) as pool:
        return list(pool.map(fn, items))


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _fork_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` processes forked from this one, each ending with it."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=die_with_parent, initargs=(os.getpid(),))


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


def default_workers() -> int:
    """Processes a pool of figure jobs uses by default: the usable CPUs, at most 4."""
    return min(4, cpus())


def cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

"""Where jobs run: local worker processes (the default) or a Ray cluster (optional extra).

Both take ``(kind, args)`` jobs and hand back results in completion order. The driver alone
writes the results store, so executors only compute.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Iterable

from unlearnkit.bench.jobs import run_job
from unlearnkit.errors import BenchError

EXECUTORS = ("local", "ray")
MAX_WORKERS = 256
"""Hard cap on ``workers``, whatever the machine; see :func:`max_workers`."""


def max_workers() -> int:
    """The most workers allowed here: 4 per CPU core, at most :data:`MAX_WORKERS`.

    Each worker is a process holding torch and its data (about half a gigabyte); beyond a few per
    core they only compete for the cores and memory.
    """
    return min(MAX_WORKERS, 4 * (os.cpu_count() or 1))


def check_workers(workers) -> int | None:
    """Refuse a worker count that is not an integer in [1, :func:`max_workers`]; None is the default."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, int):
        raise BenchError(f"--workers must be an integer, got {workers!r}.")
    limit = max_workers()
    if not 1 <= workers <= limit:
        why = (f"4 per CPU core on this {os.cpu_count() or 1}-core machine" if limit < MAX_WORKERS
               else f"the hard cap {MAX_WORKERS}")
        raise BenchError(f"--workers must be in [1, {limit}] ({why}: each worker is a process with its own copy of torch "
                         f"and the data, and more only compete for the cores and memory), got {workers}. "
                         "Leave it out for the default (every core, at most 8).")
    return workers


def _worker_init(parent: int) -> None:
    # Ctrl-C goes to the whole process group; the driver decides what stops, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A driver killed outright (kill -9) cannot stop its workers: each watches for it and exits.
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


class LocalExecutor:
    """``workers`` worker processes on this machine (spawned: no state shared with the driver)."""

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        workers = check_workers(workers) or min(os.cpu_count() or 1, 8)
        self.workers = workers
        self._pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init, initargs=(os.getpid(),))

    def submit(self, kind: str, args: tuple) -> Any:
        return self._pool.submit(run_job, kind, args)

    def wait(self, handles: Iterable[Any], timeout: float = 0.5) -> list[tuple[Any, dict]]:
        done, _ = cf.wait(list(handles), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for fut in done:
            try:
                out.append((fut, fut.result()))
            except cf.process.BrokenProcessPool as exc:
                raise BenchError(f"A worker process died ({exc}); rerun to resume.") from None
        return out

    def shutdown(self, *, cancel: bool = False) -> None:
        if cancel:
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:  # stop jobs mid-way; their results were never stored
                if p.is_alive():
                    p.terminate()
            for p in processes:
                p.join(timeout=10)
        else:
            self._pool.shutdown(wait=True)


class RayExecutor:
    """Jobs as Ray tasks (one CPU each, or ``num_gpus`` each on a GPU device).

    ``address=None`` starts a local Ray instance with ``workers`` CPUs; ``"auto"`` or
    ``"ray://host:10001"`` joins a cluster. The cluster's nodes need unlearnkit and the data sets
    the configuration names (each job rebuilds its data locally).
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None, gpus_per_job: float = 0.0) -> None:
        try:
            import ray
        except ImportError:
            raise BenchError("The Ray executor needs Ray: pip install 'unlearnkit[ray]'.") from None
        check_workers(workers)
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=workers or os.cpu_count() or 1, **kwargs)
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._remote = ray.remote(num_cpus=1, num_gpus=gpus_per_job, max_retries=0)(run_job)
        self._pending: set = set()

    def submit(self, kind: str, args: tuple) -> Any:
        ref = self._remote.remote(kind, args)
        self._pending.add(ref)
        return ref

    def wait(self, handles: Iterable[Any], timeout: float = 0.5) -> list[tuple[Any, dict]]:
        handles = list(handles)
        if not handles:
            return []
        ready, _ = self._ray.wait(handles, num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            self._pending.discard(ref)
            try:
                out.append((ref, self._ray.get(ref)))
            except self._ray.exceptions.RayError as exc:
                out.append((ref, {"status": "failed", "state": "fail", "crash": True, "error": f"Ray: {exc}"}))
        return out

    def shutdown(self, *, cancel: bool = False) -> None:
        if cancel:  # on a shared cluster, stop this run's tasks; a local instance goes down entirely below
            for ref in self._pending:
                self._ray.cancel(ref, force=True)
            self._pending.clear()
        if self._owns:
            self._ray.shutdown()


def make_executor(name: str, workers: int | None = None, address: str | None = None, device: str = "cpu"):
    if name == "local":
        if address:
            raise BenchError("--address applies to --executor ray only.")
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address, gpus_per_job=1.0 if device.startswith("cuda") else 0.0)
    raise BenchError(f"Unknown executor {name!r}; valid: {', '.join(EXECUTORS)}.")

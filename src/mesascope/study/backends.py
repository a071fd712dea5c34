"""Where a sweep's builds and cells run: a local process pool or Ray, both handing back
`concurrent.futures` futures, so one loop (sweep.py) drives either."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context

BACKENDS = ("local", "ray")


def _exit_with_parent(parent: int) -> None:
    """Pool-worker initializer: a sweep killed outright leaves no worker training on, orphaned,
    beside the restarted one (what a worker had not finished is resumed from the store)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class LocalBackend:
    def __init__(self, workers: int):
        # spawn, not fork: a forked child would inherit torch's thread pools and locks mid-state.
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                        initializer=_exit_with_parent, initargs=(os.getpid(),))

    def submit(self, fn: Callable, *args) -> Future:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayBackend:
    def __init__(self, workers: int, address: str | None = None):
        try:
            import ray
        except ImportError:
            raise ImportError("the ray backend needs Ray: pip install 'mesascope[ray]'") from None
        import logging

        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            kw = {"address": address} if address else {"num_cpus": workers}
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, **kw)
        self.remote: dict[Callable, object] = {}

    def submit(self, fn: Callable, *args) -> Future:
        if fn not in self.remote:
            self.remote[fn] = self.ray.remote(num_cpus=1)(fn)
        return self.remote[fn].remote(*args).future()

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


def check_backend(name: str, workers: int, address: str | None = None) -> None:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {name!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if address and name != "ray":
        raise ValueError("address is only read by the ray backend: pass backend='ray' or drop the address")


def make_backend(name: str, workers: int, address: str | None = None) -> LocalBackend | RayBackend:
    check_backend(name, workers, address)
    return LocalBackend(workers) if name == "local" else RayBackend(workers, address)

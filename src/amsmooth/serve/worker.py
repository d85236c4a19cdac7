"""A bounded job queue: one worker thread runs the model work one job at a time; a full queue refuses at once."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """Raised by ``WorkQueue.submit`` when ``capacity`` jobs are already waiting behind the running one."""


class WorkQueue:
    """Runs submitted callables one at a time, in order, on a single worker thread.

    At most ``capacity`` jobs wait behind the running one; ``submit`` beyond that raises ``QueueFull``
    immediately instead of blocking (the API answers 503 with Retry-After).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"queue capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amsmooth-serve")
        self._lock = threading.Lock()
        self._admitted = 0          # waiting + running

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``fn(*args, **kwargs)``; its Future carries the result or the exception."""
        with self._lock:
            if self._admitted > self.capacity:
                raise QueueFull(f"the server is busy ({self._admitted} jobs in progress or waiting); "
                                "try again in a few seconds")
            self._admitted += 1

        def job() -> Any:
            try:
                return fn(*args, **kwargs)
            finally:
                self._release()         # before the Future completes: a caller that saw the result may resubmit

        try:
            return self._executor.submit(job)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    @property
    def pending(self) -> int:
        """Jobs admitted and not finished (the running one included)."""
        with self._lock:
            return self._admitted

    def shutdown(self) -> None:
        """Stop accepting jobs, drop the waiting ones (their slots stay taken) and wait for the running one."""
        self._executor.shutdown(wait=True, cancel_futures=True)

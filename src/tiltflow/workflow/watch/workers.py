"""Background workers of the watch loop: daemon threads, so Ctrl+C or a kill never waits for them
(a task cut short was not done, and is done again on the next start)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from tiltflow.workflow.tasks import ItemResult, ItemTask

if TYPE_CHECKING:
    from tiltflow.workflow.executor import Executor

T = TypeVar("T", bound=ItemTask)
R = TypeVar("R", bound=ItemResult)


class Workers:
    """``n`` daemon threads running submitted calls; finished ones are collected with :meth:`done`."""

    def __init__(self, n: int, name: str):
        self.todo: queue.Queue = queue.Queue()
        self.out: queue.Queue = queue.Queue()
        self.busy = 0
        self._lock = threading.Lock()
        for i in range(max(1, n)):
            threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True).start()

    def submit(self, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            self.busy += 1
        self.todo.put((key, fn, args))

    def _run(self) -> None:
        while True:
            key, fn, args = self.todo.get()
            started = time.time()
            try:
                value = fn(*args)
            except Exception as err:  # noqa: BLE001 — handed to the loop, reported per item
                value = err
            self.out.put((key, value, time.time() - started))

    def done(self) -> list[tuple[Any, Any, float]]:
        """``(key, result or exception, seconds)`` of the calls finished since the last call."""
        items = []
        while True:
            try:
                items.append(self.out.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            self.busy -= len(items)
        return items


def run_one(executor: Executor, fn: Callable[[T], R], task: T) -> R:
    """One task through an executor (a Dask one: this thread waits for its worker)."""
    for _, value in executor.map_unordered(fn, [task]):
        if isinstance(value, BaseException):
            raise value
        return value
    raise RuntimeError(f"{task.key}: the executor returned nothing")

"""Executors run a step's per-item tasks (per movie, per tilt series).

A task is a module-level function and one :class:`~tiltflow.workflow.tasks.ItemTask` (picklable, so
the Dask executor can ship it); it reads its inputs from the shared filesystem and returns a small
:class:`~tiltflow.workflow.tasks.ItemResult`. Only the coordinator (the step function, in this
process) writes the project: it records each finished item so an interrupted run resumes without
recomputing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol, TypeVar

from tiltflow.workflow.tasks import ItemResult, ItemTask

if TYPE_CHECKING:
    from tiltflow.workflow.run_options import RunOptions
    from tiltflow.workflow.steps.base import StepContext

T = TypeVar("T", bound=ItemTask)
R = TypeVar("R", bound=ItemResult)


class Executor(Protocol):
    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[str, R | BaseException]]:
        """Run ``fn(task)`` for each task; yield ``(task.key, result or exception)`` as they finish."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Threads in this process. Torch releases the GIL in its kernels and file decoding releases it
    in the codecs, so ``workers`` tasks overlap I/O and math; ``workers=1`` runs them in order."""

    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or min(2, os.cpu_count() or 1))

    def map_unordered(self, fn: Callable[[T], R], tasks: Iterable[T]) -> Iterator[tuple[str, R | BaseException]]:
        todo = list(tasks)
        with _torch_threads(max(1, (os.cpu_count() or 1) // self.workers)):
            yield from self._map(fn, todo)

    def _map(self, fn: Callable[[T], R], tasks: list[T]) -> Iterator[tuple[str, R | BaseException]]:
        if self.workers == 1:
            for task in tasks:
                try:
                    value: R | BaseException = fn(task)
                except Exception as err:  # reported per item by the caller
                    value = err
                yield task.key, value
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending: dict[Future[R], str] = {}
            it = iter(tasks)
            for task in it:
                pending[pool.submit(fn, task)] = task.key
                if len(pending) >= self.workers * 2:
                    break
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    key = pending.pop(fut)
                    failure = fut.exception()
                    yield key, failure if failure is not None else fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending[pool.submit(fn, nxt)] = nxt.key

    def close(self) -> None:
        pass


@contextmanager
def _torch_threads(n: int):
    """Share the cores between concurrent tasks: each task's torch kernels get ``n`` threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def make_executor(options: RunOptions) -> Executor:
    """``options.executor``: 'local' (default) or 'dask' (``scheduler``, ``workers``, ``jobqueue``)."""
    kind = options.executor or "local"
    if kind == "local":
        return LocalExecutor(options.workers)
    if kind == "dask":
        try:
            from tiltflow.distributed.dask_executor import DaskExecutor
        except ModuleNotFoundError as err:
            raise RuntimeError("--executor dask needs the dask extra: pip install 'tiltflow[dask]'") from err
        return DaskExecutor.from_options(options)
    raise ValueError(f"unknown executor '{kind}' (local or dask)")


def run_items(
    ctx: StepContext,
    fn: Callable[[T], R],
    tasks: Sequence[T],
    result_type: type[R],
    on_result: Callable[[str, R | BaseException], None] | None = None,
) -> dict[str, R | BaseException]:
    """Run per-item tasks through the step's executor, skipping items this run already finished
    (resume: their recorded results, read back as ``result_type``) and recording each new result
    atomically in the project. Exceptions are returned as values (keyed), for the step to report
    per item."""
    store = ctx.store
    done = store.finished_items(ctx.run_id, result_type) if store is not None else {}
    keys = {t.key for t in tasks}
    results: dict[str, R | BaseException] = {k: v for k, v in done.items() if k in keys}
    todo = [t for t in tasks if t.key not in results]
    shared = ctx.options.shared_executor
    executor = shared or make_executor(ctx.options)
    total = len(tasks)
    try:
        for key, value in executor.map_unordered(fn, todo):
            if not isinstance(value, BaseException) and store is not None:
                store.record_item(ctx.run_id, key, value)
            results[key] = value
            if on_result:
                on_result(key, value)
            ctx.progress(key, len(results), total)
    finally:
        if shared is None:
            executor.close()
    return results


class ItemFailures(RuntimeError):
    """Per-item failures of a run. ``str()`` is a summary — the first few, then ``and N more (see
    run.log)`` — and ``lines`` keeps every one (the runner writes them all to the run's log and
    stores the summary, naming the log, as the run's error)."""

    SHOWN = 3

    def __init__(self, lines: list[str], *, what: str = "item", total: int | None = None, hint: str = ""):
        self.lines, self.what, self.total, self.hint = list(lines), what, total, hint
        super().__init__(self.summary())

    def summary(self, log: str = "run.log") -> str:
        n = len(self.lines)
        plural = self.what if n == 1 or self.what.endswith("series") else self.what + "s"
        head = f"{n} of {self.total} {plural} failed" if self.total else f"{n} {plural} failed"
        more = f"; and {n - self.SHOWN} more (see {log})" if n > self.SHOWN else ""
        return f"{head}{self.hint}: " + "; ".join(self.lines[: self.SHOWN]) + more


def summarized(lines: list[str], shown: int = ItemFailures.SHOWN) -> list[str]:
    """The first ``shown`` lines, then ``and N more (see run.log)`` when there are more."""
    more = [f"and {len(lines) - shown} more (see run.log)"] if len(lines) > shown else []
    return list(lines[:shown]) + more


def failure_line(key: str, err: BaseException) -> str:
    """``key: message`` (the message alone when it already names the item)."""
    text = str(err)
    return text if text.startswith(key) else f"{key}: {type(err).__name__}: {text}"


def run_items_or_fail(
    ctx: StepContext, fn: Callable[[T], R], tasks: Sequence[T], result_type: type[R], *, what: str = "item"
) -> dict[str, R]:
    """:func:`run_items`, then :class:`ItemFailures` when any item failed (nothing is registered)."""
    results = run_items(ctx, fn, tasks, result_type)
    failed = [failure_line(k, v) for k, v in results.items() if isinstance(v, BaseException)]
    if failed:
        raise ItemFailures(failed, what=what, total=len(tasks))
    return {k: v for k, v in results.items() if not isinstance(v, BaseException)}

"""How a run runs (device, executor, skip-bad, ...) and what it reports back (notes, warnings).

The CLI, the workflow runner and the watch build a :class:`RunOptions`; a step reads it from its
context (``ctx.options.device``) and tells the user things through ``ctx.report`` (one line each,
and its progress).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiltflow.workflow.executor import Executor


@dataclass(frozen=True)
class RunOptions:
    """The run options common to every step (``--device``, ``--workers``, ``--skip-bad``, ...)."""

    device: str | None = None  # "cpu", "cuda", "cuda:1"; None: the best there is
    executor: str | None = None  # "local" (default) or "dask"
    workers: int | None = None  # local threads or Dask workers
    threads_per_worker: int | None = None  # Dask: threads (and torch threads) per worker
    gpus_per_worker: int | None = None  # Dask LocalCluster: the GPU resource of each worker
    scheduler: str | None = None  # Dask: the address of a running scheduler
    jobqueue: str | None = None  # Dask: a dask-jobqueue YAML config (SLURM)
    skip_bad: bool = False  # leave out bad items, with a warning, instead of failing
    verbose: bool = False  # the longer per-series tables in the notes
    within_workflow: bool = False  # a workflow step: go on with the series that worked, report the rest
    # an executor shared by the steps of a workflow (or the watch); None: each step makes its own
    shared_executor: Executor | None = field(default=None, compare=False)

    @classmethod
    def of(cls, value: RunOptions | Mapping[str, Any] | None) -> RunOptions:
        """``value`` as run options: a mapping of field names (``{"workers": 1}``) or None (defaults).
        Raises ``TypeError`` for a key that is no run option."""
        if isinstance(value, RunOptions):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value or {}) - known)
        if unknown:
            raise TypeError(f"unknown run option(s): {', '.join(unknown)} — known: {', '.join(sorted(known))}")
        return cls(**dict(value or {}))


def _no_progress(what: str, done: int, total: int) -> None:
    pass


@dataclass
class RunReport:
    """What a run tells the user besides its outputs: notes (options a mode ignores, per-series
    tables) and warnings (items skipped, fallbacks taken), one line (or one table) each, and its
    progress (``progress(item, done, total)`` after each item)."""

    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    progress: Callable[[str, int, int], None] = _no_progress

    def note(self, line: str) -> None:
        self.notes.append(line)

    def warn(self, line: str) -> None:
        self.warnings.append(line)

    def note_all(self, lines: Iterable[str]) -> None:
        self.notes.extend(lines)

    def warn_all(self, lines: Iterable[str]) -> None:
        self.warnings.extend(lines)

"""The typed boundary between a step and its executor: one task per item in, one result out.

A task is a frozen dataclass naming its item (``key``: a movie, a tilt series) and carrying what
the task function needs, the step's parameter model included; it is picklable, so the Dask
executor ships it to a worker. A result is a frozen dataclass that the coordinator records in the
project as JSON (:meth:`ItemResult.to_record`), so an interrupted run resumes without computing the
item again (:meth:`ItemResult.from_record`). Paths in records are strings under the keys that
``workflow.paths.map_attrs`` treats as paths (``files``, ``*_file``, ...), so the store keeps them
relative to the project.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

# the views of a stack a task reads: (file, index) in stack order
ViewRefs = list[tuple[str, int]]
# per stack kind ("file", and "odd_file" / "even_file" for the half sums) its views
StackRefs = dict[str, ViewRefs]


@dataclass(frozen=True, kw_only=True)
class ItemTask:
    """One item's work; ``key`` names the item (the executor reports its result under it)."""

    key: str


@dataclass(frozen=True)
class ItemResult:
    """One item's result. The default record is the dataclass as a dict (nested dataclasses as
    dicts too); results holding other types override :meth:`to_record` and :meth:`from_record`.
    Paths are kept under keys that ``workflow.paths.is_path_key`` knows (``files``, ``*_file``);
    ``RENAMED`` reads records of earlier versions (old key -> field)."""

    RENAMED: ClassVar[dict[str, str]] = {}

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict (paths as str)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Self:
        """The result :meth:`to_record` gave (keys it does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {cls.RENAMED.get(k, k): v for k, v in record.items()}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class StacksResult(ItemResult):
    """The stacks a per-series task wrote: per stack kind (``file``, ``odd_file``, ``even_file``) its path."""

    files: dict[str, str]

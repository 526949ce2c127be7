"""The rows of the project store as small dataclasses: a run and an output."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class RunRecord:
    id: int
    step: str
    label: str | None
    params: dict[str, Any]
    inputs: dict[str, str]
    status: str
    created: float | None
    started: float | None
    ended: float | None
    code_version: str | None
    error: str | None
    run_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OutputRecord:
    id: int
    run_id: int
    name: str
    type: str
    summary: str
    attrs: dict[str, Any]

    @property
    def pointer(self) -> str:
        return f"{self.run_id}.{self.name}"


def run_from_row(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        id=row["id"],
        step=row["step"],
        label=row["label"],
        params=json.loads(row["params"]),
        inputs=json.loads(row["inputs"]),
        status=row["status"],
        created=row["created"],
        started=row["started"],
        ended=row["ended"],
        code_version=row["code_version"],
        error=row["error"],
        run_dir=row["run_dir"],
    )

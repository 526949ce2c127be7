"""Pointers to outputs as users type them: ``RUN_ID`` or ``RUN_ID.outputName``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tiltflow.workflow.errors import ProjectError
from tiltflow.workflow.records import OutputRecord

if TYPE_CHECKING:
    from tiltflow.workflow.store import ProjectStore


def resolve_pointer(store: ProjectStore, pointer: str, types: tuple[str, ...] = ()) -> OutputRecord:
    """``RUN_ID`` or ``RUN_ID.outputName`` -> the output (of one of ``types`` when given); a bare
    ``RUN_ID`` names the finished run's first output of those types."""
    text = str(pointer).strip()
    run_part, _, name = text.partition(".")
    if not run_part.isdigit():
        raise ProjectError(f"input '{pointer}': expected RUN_ID or RUN_ID.outputName (e.g. 1 or 3.TiltSeries_2)")
    run = store.run(int(run_part))
    if name:
        out = store.output(run.id, name)
        if types and out.type not in types:
            raise ProjectError(f"input '{pointer}' is a {out.type}; this step needs {' or '.join(types)}")
        return out
    if run.status != "finished":
        raise ProjectError(f"input '{pointer}': run {run.id} is {run.status}, not finished")
    candidates = [o for o in store.outputs(run.id) if not types or o.type in types]
    if not candidates:
        raise ProjectError(f"input '{pointer}': run {run.id} has no output of type {' or '.join(types)}")
    return candidates[0]

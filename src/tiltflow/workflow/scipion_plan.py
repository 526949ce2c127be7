"""The plan of a Scipion workflow: one entry per protocol saying what it became in tiltflow (a step,
or folded into the step that consumes it) or why not (out of scope with the export that hands over,
not a tiltflow step, unknown, input not mapped); ``workflow run`` prints it before running."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PlanEntry:
    """One protocol of the Scipion workflow: the step it became (or the step it was folded into), or why not."""

    protocol: str
    id: str
    label: str | None
    step: str | None
    reason: str
    kind: str = "not run"  # "step" | "folded" | "out of scope" | "not run"
    steps: list[str] = field(default_factory=list)  # workflow step ids it became

    def to_json(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "id": self.id, "label": self.label, "step": self.step, "reason": self.reason}


def format_plan(
    plan: list[PlanEntry], steps: list | None = None, *, origin: str = "", params: bool = False, streaming=None
) -> list[str]:
    """The plan as lines: a summary (and, for a streaming import, how it is followed: a
    :class:`~tiltflow.workflow.scipion_streaming.StreamingImport`), then per protocol its id, class and
    label, and what it became or why not."""
    counts = {k: sum(e.kind == k for e in plan) for k in ("step", "folded", "out of scope", "not run")}
    n_steps = sum(len(e.steps) for e in plan)
    lines = [
        f"Scipion workflow{' ' + origin if origin else ''}: {len(plan)} protocols -> {n_steps} tiltflow steps "
        f"({counts['step']} mapped, {counts['folded']} folded, {counts['out of scope']} out of scope, "
        f"{counts['not run']} not run)"
    ]
    if streaming is not None:
        lines.append(streaming.summary())
    by_id = {s.id: s for s in steps or []}
    for e in plan:
        lines.append(f"{e.id:>7}  {e.protocol}" + (f'  "{e.label}"' if e.label else ""))
        arrow = f"-> {e.step}" + (" (folded)" if e.kind == "folded" else "") if e.step else "-- not run"
        lines.append(f"         {arrow}: {e.reason}")
        for sid in e.steps if params else ():
            if sid in by_id:
                s = by_id[sid]
                lines.append(f"           {sid} {s.step} inputs {json.dumps(s.inputs)} params {json.dumps(s.params)}")
    return lines

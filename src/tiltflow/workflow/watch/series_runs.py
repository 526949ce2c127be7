"""Series batches: the workflow's per-series steps run on one series' accepted tilts.

A batch ``k`` of series ``TS`` imports the snapshot ``watch/batches/TS/b<k>`` and runs the
workflow with its steps relabelled ``<step id>:TS`` (``:TS:r<k>`` from the second batch on: a late
tilt reopened the series), through ``run_workflow(resume=True)``: a finished run with the same
label, parameters and inputs is reused, an interrupted one resumes, so running a batch again after
a kill recomputes nothing. Every run is an ordinary run: ``show``, ``view``, ``export`` see them.
``watch/series/<TS>.json`` records each batch (its tilts, why it started, status, runs, times).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.workflow_file import Workflow, WorkflowStep


@dataclass
class Plan:
    """The workflow as the watch runs it: its import step, its per-tilt step (or None)."""

    workflow: Workflow
    import_step: WorkflowStep
    motion_step: WorkflowStep | None


def plan(wf: Workflow) -> Plan:
    imports = [s for s in wf.steps if s.step == "import-movies"]
    if not wf.steps or wf.steps[0].step != "import-movies" or len(imports) != 1:
        raise InputError(
            f"workflow '{wf.name}': the watch mode needs one import-movies step, first "
            f"(found: {', '.join(s.step for s in wf.steps) or 'no steps'})"
        )
    motion = [s for s in wf.steps if s.step == "motion-ctf"]
    if len(motion) > 1:
        raise InputError(f"workflow '{wf.name}': {len(motion)} motion-ctf steps — the watch mode runs one per tilt")
    if motion and str(motion[0].inputs.get("input", "")).partition(".")[0] != wf.steps[0].id:
        raise InputError(f"workflow '{wf.name}': motion-ctf must take the import's movies as its input")
    return Plan(wf, wf.steps[0], motion[0] if motion else None)


def tag(ts_id: str, batch: int) -> str:
    return ts_id.replace(".", "_") + (f":r{batch}" if batch > 1 else "")


def series_workflow(wf: Workflow, ts_id: str, batch: int, mdoc: Path) -> Workflow:
    """``wf`` for one series batch: labels ``<id>:<tag>``, the import reading the snapshot ``mdoc``."""
    t = tag(ts_id, batch)
    ids = {s.id: f"{s.id}:{t}" for s in wf.steps}
    steps = []
    for s in wf.steps:
        params = dict(s.params)
        if s.step == "import-movies":
            params.update(files=str(mdoc.parent), pattern=mdoc.name)
        inputs = {}
        for name, ref in s.inputs.items():
            head, dot, out = str(ref).partition(".")
            inputs[name] = ids.get(head, head) + dot + out
        steps.append(WorkflowStep(ids[s.id], s.step, params, inputs))
    return Workflow(steps, name=f"{wf.name}:{t}")


@dataclass
class Batch:
    k: int
    tilts: list[list]  # [movie name, angle] of the tilts it holds
    folder: str  # snapshot folder, relative to the project
    reason: str
    status: str = "queued"  # queued | running | done | failed
    queued: float = 0.0
    started: float | None = None
    ended: float | None = None
    last_tilt: float | None = None  # when the series' last tilt arrived (lag = ended - last_tilt)
    runs: dict[str, int] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    verdicts: dict = field(default_factory=dict)  # ctf, alignment (status), residual_px, tomogram
    error: str | None = None


class SeriesBook:
    """``watch/series/<tsId>.json`` per series, written atomically (thread-safe)."""

    def __init__(self, root: Path):
        self.folder = root / "series"
        self._lock = threading.Lock()
        self.batches: dict[str, list[Batch]] = {}
        for path in sorted(self.folder.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                self.batches[data["ts"]] = [Batch(**b) for b in data["batches"]]
            except (OSError, ValueError, KeyError, TypeError):
                continue

    def last(self, ts_id: str) -> Batch | None:
        batches = self.batches.get(ts_id)
        return batches[-1] if batches else None

    def add(self, ts_id: str, batch: Batch) -> None:
        with self._lock:
            self.batches.setdefault(ts_id, []).append(batch)
            self._write(ts_id)

    def update(self, ts_id: str, batch: Batch, **changes) -> None:
        with self._lock:
            for k, v in changes.items():
                setattr(batch, k, v)
            self._write(ts_id)

    def _write(self, ts_id: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{ts_id}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"ts": ts_id, "batches": [b.__dict__ for b in self.batches[ts_id]]}, indent=1))
        os.replace(tmp, path)

    def unfinished(self) -> list[tuple[str, Batch]]:
        return [(ts, b) for ts, bs in self.batches.items() for b in bs if b.status in ("queued", "running")]

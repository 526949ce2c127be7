"""Which CTF set gives the defocus of a tilt-series set's views, and from which run it comes.

The TomoViewer shows per-view defocus from a registered CTF set only: the values a run keeps in its
images' attributes are those of the per-tilt fit before the series pass and go stale when the
series pass re-fits a tilt (and align, xray-erase and subsets copy them on). The CTF set that applies
to a set is looked for, nearest first:

1. a CTF set registered by the run that produced the set (``motion-ctf``; a Save of it),
2. one registered by a finished run that took the set itself as input (``ctf`` on these stacks),
3. the same for the set it was made from (``align``, ``xray-erase`` keep the views of their input),
   up the chain of ``input`` pointers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiltflow.web.set_cache import load_registered
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomoSeries
from tiltflow.workflow.store import OutputRecord, ProjectStore

CTF_TYPES = ("CTFTomoSeries",)
TILT_TYPES = ("TiltSeries", "TiltSeriesM")
MAX_DEPTH = 32  # input chains longer than this are not followed (a guard against cycles)


@dataclass(frozen=True)
class CtfSource:
    """A CTF set and the run that registered it."""

    output: OutputRecord
    value: CtfSeriesSet
    step: str

    @property
    def label(self) -> str:
        """``2.CTFTomoSeries (motion-ctf, run 2)``: what the viewer says the values come from."""
        return f"{self.output.pointer} ({self.step}, run {self.output.run_id})"

    def series(self, ts_id: str) -> CtfTomoSeries | None:
        return next((s for s in self.value.items if s.ts_id == ts_id), None)


class _Outputs:
    """Every output of the project, read once, and pointers resolved against them."""

    def __init__(self, store: ProjectStore):
        self.by_run: dict[int, list[OutputRecord]] = {}
        for o in store.outputs():
            self.by_run.setdefault(o.run_id, []).append(o)

    def resolve(self, pointer: str, types: tuple[str, ...] = ()) -> OutputRecord | None:
        """``RUN_ID`` or ``RUN_ID.outputName`` (as ``ProjectStore.resolve``), None when unknown."""
        run_part, _, name = str(pointer).strip().partition(".")
        if not run_part.isdigit():
            return None
        outs = [o for o in self.by_run.get(int(run_part), []) if not types or o.type in types]
        return next((o for o in outs if o.name == name or not name), None)

    def registered_ctf(self, run_id: int) -> OutputRecord | None:
        """The CTF set the run registered first (its step's own output; Saves come after it)."""
        return next((o for o in self.by_run.get(run_id, []) if o.type in CTF_TYPES), None)


def find_ctf_source(store: ProjectStore, output: OutputRecord) -> CtfSource | None:
    """The CTF set whose values apply to the views of ``output`` (see the module's docstring)."""
    runs = {r.id: r for r in store.runs()}
    outputs = _Outputs(store)
    consumers: dict[int, list[int]] = {}  # output id -> finished runs that took it as input
    for r in sorted(runs.values(), key=lambda r: r.id, reverse=True):
        if r.status != "finished":
            continue
        for pointer in r.inputs.values():
            source = outputs.resolve(pointer)
            if source is not None:
                consumers.setdefault(source.id, []).append(r.id)
    current: OutputRecord | None = output
    seen: set[int] = set()
    while current is not None and current.id not in seen and len(seen) < MAX_DEPTH:
        seen.add(current.id)
        found = outputs.registered_ctf(current.run_id)
        if found is None:
            for run_id in consumers.get(current.id, []):  # newest first
                found = outputs.registered_ctf(run_id)
                if found is not None:
                    break
        if found is not None:
            value = load_registered(store, found)
            assert isinstance(value, CtfSeriesSet)
            return CtfSource(found, value, runs[found.run_id].step if found.run_id in runs else "?")
        producer = runs.get(current.run_id)
        upstream = producer.inputs.get("input") if producer is not None else None
        current = outputs.resolve(upstream, TILT_TYPES) if upstream else None
    return None

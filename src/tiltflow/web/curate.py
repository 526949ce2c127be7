"""The viewer's curation actions on top of ``workflow.curation``: exclude, undo, save.

Flags are rows of the project (``curation.set_excluded``); the undo history of this viewer
session is kept in memory, one entry per user action, as the states it replaced.
"""

from __future__ import annotations

import threading
from collections import defaultdict

from tiltflow.web.models import CurationResult, ExcludeRequest
from tiltflow.workflow.curation import WHOLE_SERIES, exclusions, save_subset, set_excluded
from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, CtfTomo, CtfTomoSeries, TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.store import OutputRecord, ProjectStore

Key = tuple[str, int]  # (tsId, acquisition order); order 0 = the whole series


def _views(series: TiltSeries | CtfTomoSeries) -> list[TiltImage] | list[CtfTomo]:
    """What is excluded one by one: a tilt series' images, a CTF series' per-tilt fits."""
    return series.images if isinstance(series, TiltSeries) else series.items


class Curator:
    """Applies exclusion requests and remembers how to undo them, per output."""

    def __init__(self, store: ProjectStore):
        self.store = store
        self._history: dict[int, list[dict[Key, bool]]] = defaultdict(list)
        self._lock = threading.Lock()

    def _load(self, output: OutputRecord) -> TiltSeriesSet | CtfSeriesSet:
        value = self.store.load(output)
        if not isinstance(value, (TiltSeriesSet, CtfSeriesSet)):
            raise InputError(f"{output.pointer}: a {output.type} cannot be curated")
        return value

    def _state(self, output: OutputRecord) -> dict[Key, bool]:
        """The effective excluded state of every series and item (stored flags + viewer flags)."""
        value = self._load(output)
        flags = exclusions(self.store, output)
        state: dict[Key, bool] = {}
        for s in value.items:
            state[(s.ts_id, WHOLE_SERIES)] = flags.get((s.ts_id, WHOLE_SERIES), not s.enabled)
            for item in _views(s):
                key = (s.ts_id, item.acquisition_order)
                state[key] = flags.get(key, not item.enabled)
        return state

    def _targets(self, output: OutputRecord, req: ExcludeRequest) -> list[Key]:
        by_id = {s.ts_id: s for s in self._load(output).items}
        if req.ts_id is not None and req.ts_id not in by_id:
            raise InputError(f"no tilt series '{req.ts_id}' in {output.pointer}")
        if req.beyond_deg is not None:
            if req.views is not None:
                raise InputError("give either views or beyond_deg, not both")
            chosen = [by_id[req.ts_id]] if req.ts_id is not None else list(by_id.values())
            return [
                (s.ts_id, item.acquisition_order)
                for s in chosen
                for item in _views(s)
                if abs(item.tilt_angle_deg) > req.beyond_deg
            ]
        if req.ts_id is None:
            raise InputError("ts_id is required (or beyond_deg for every series)")
        if req.views is None:
            return [(req.ts_id, WHOLE_SERIES)]
        orders = {item.acquisition_order for item in _views(by_id[req.ts_id])}
        bad = sorted(set(req.views) - orders)
        if bad:
            raise InputError(f"{req.ts_id}: no view with acquisition order {bad} (valid: {min(orders)}..{max(orders)})")
        return [(req.ts_id, v) for v in req.views]

    def _write(self, output: OutputRecord, changes: dict[Key, bool], reason: str) -> None:
        groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
        for (ts_id, view), excluded in changes.items():
            groups[(ts_id, excluded)].append(view)
        for (ts_id, excluded), views in groups.items():
            set_excluded(self.store, output, ts_id, views, excluded, reason=reason)

    def exclude(self, output: OutputRecord, req: ExcludeRequest) -> CurationResult:
        with self._lock:
            targets = self._targets(output, req)
            state = self._state(output)
            changed = {k: req.excluded for k in targets if state[k] != req.excluded}
            if changed:
                self._history[output.id].append({k: state[k] for k in changed})
                self._write(output, changed, req.reason)
            return CurationResult(changed=len(changed), undo_depth=len(self._history[output.id]))

    def undo(self, output: OutputRecord) -> CurationResult:
        with self._lock:
            history = self._history[output.id]
            if not history:
                return CurationResult(changed=0, undo_depth=0)
            previous = history.pop()
            self._write(output, previous, "undo")
            return CurationResult(changed=len(previous), undo_depth=len(history))

    def save(self, output: OutputRecord, *, restack: bool) -> OutputRecord:
        """A new output on the producing run (``TiltSeries_2``, ``goodSetOfCTFTomoSeries2``)."""
        with self._lock:
            return save_subset(self.store, output, restack=restack and output.type != "CTFTomoSeries")

"""Registered sets, loaded once per viewer process: a registered output is never rewritten (a Save
makes a new one; curation flags live in their own table), and loading a 5 x 41 set from SQLite on
every request was most of the viewer's time under load (``benchmarks/viewer_load.py``)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tiltflow.workflow.sets import AnySet
from tiltflow.workflow.store import OutputRecord, ProjectStore

__all__ = ["load_registered"]

_LOADED: OrderedDict[tuple, AnySet] = OrderedDict()  # registered sets never change: loaded once per viewer
_LOADED_LOCK = threading.Lock()
_LOADED_MAX = 16


def load_registered(store: ProjectStore, output: OutputRecord) -> AnySet:
    """``store.load(output)``, kept for the next request: a registered output is never rewritten (a
    Save makes a new one, curation flags live apart). The key holds the producing run's start time, so
    an id reused after `--fresh` in another process is a new entry. Callers must not modify it."""
    key = (str(store.root), output.id, output.run_id, output.name, output.type, store.run(output.run_id).started)
    with _LOADED_LOCK:
        value = _LOADED.get(key)
        if value is not None:
            _LOADED.move_to_end(key)
            return value
    value = store.load(output)
    with _LOADED_LOCK:
        _LOADED[key] = value
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return value

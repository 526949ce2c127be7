"""Curation: exclusion flags on a set (kept as rows while the user works) and saving a subset.

Exclusions are rows of ``curation`` keyed by (output, tsId, view); a view is its acquisition
order, so flags survive re-sorting. Saving creates a new output on the run that produced the viewed
set (``TiltSeries_2``, ``goodSetOfCTFTomoSeries2``…) as Scipion's viewers do, the name chosen in the
transaction that registers it (viewers and the CLI may save at once); ``restack`` writes new stacks
without the excluded views, keeping acquisition order and dose.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import CtfSeriesSet, TiltSeries, TiltSeriesSet
from tiltflow.workflow.store import OutputRecord, ProjectStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS curation (
    output_id INTEGER NOT NULL REFERENCES outputs(id) ON DELETE CASCADE,
    ts_id TEXT NOT NULL, view INTEGER NOT NULL,      -- acquisition order; 0 = the whole series
    excluded INTEGER NOT NULL, reason TEXT, updated REAL,
    PRIMARY KEY (output_id, ts_id, view));
"""
WHOLE_SERIES = 0


def _ensure(store: ProjectStore) -> None:
    con = store.connect()
    try:
        con.executescript(SCHEMA)
    finally:
        con.close()


def set_excluded(
    store: ProjectStore, output: OutputRecord, ts_id: str, views: list[int] | None, excluded: bool, reason: str = "user"
) -> None:
    """Flag views (acquisition orders) of ``ts_id``, or the whole series when ``views`` is None."""
    _ensure(store)
    now = time.time()
    rows = [(output.id, ts_id, v, int(excluded), reason, now) for v in (views if views is not None else [WHOLE_SERIES])]
    with store.transaction() as con:
        con.executemany("INSERT OR REPLACE INTO curation VALUES (?,?,?,?,?,?)", rows)


def exclusions(store: ProjectStore, output: OutputRecord) -> dict[tuple[str, int], bool]:
    with store.reading() as con:  # reads only: no table yet is no flags (and a full disk reads)
        if con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='curation'").fetchone() is None:
            return {}
        rows = con.execute("SELECT ts_id, view, excluded FROM curation WHERE output_id=?", (output.id,)).fetchall()
    return {(r["ts_id"], r["view"]): bool(r["excluded"]) for r in rows}


def clear(store: ProjectStore, output: OutputRecord) -> None:
    _ensure(store)
    with store.transaction() as con:
        con.execute("DELETE FROM curation WHERE output_id=?", (output.id,))


def apply_exclusions(value, flags: dict[tuple[str, int], bool]):
    """A copy of the set with ``enabled`` following the flags (flags override stored state). The
    set, its series and their items are copied; what they hold (attrs, acquisition) is shared."""
    out = _copy_items(value)
    for series in out.items:
        whole = flags.get((series.ts_id, WHOLE_SERIES))
        if whole is not None:
            series.enabled = not whole
        children = series.images if isinstance(out, TiltSeriesSet) else series.items
        for item in children:
            f = flags.get((series.ts_id, item.acquisition_order))
            if f is not None:
                item.enabled = not f
    return out


def _copy_items(value):
    """Copies of the set, series and items (not a deep copy: the viewer does this per request)."""
    if not isinstance(value, (TiltSeriesSet, CtfSeriesSet)):
        return copy.deepcopy(value)
    out = copy.copy(value)
    out.items = []
    for series in value.items:
        twin = copy.copy(series)
        if isinstance(value, TiltSeriesSet):
            twin.images = [copy.copy(im) for im in series.images]
        else:
            twin.items = [copy.copy(c) for c in series.items]
        out.items.append(twin)
    return out


def views_to_orders(series: TiltSeries, positions: list[int]) -> list[int]:
    """1-based positions in tilt-angle order (IMOD EXCLUDELIST) -> acquisition orders."""
    ordered = sorted(series.images, key=lambda im: im.tilt_angle_deg)
    bad = [p for p in positions if not 1 <= p <= len(ordered)]
    if bad:
        raise InputError(f"{series.ts_id}: view(s) {bad} out of range 1..{len(ordered)}")
    return [ordered[p - 1].acquisition_order for p in positions]


def _restack_series(series: TiltSeries, out_dir: Path) -> TiltSeries:
    from tiltflow.io.mrc import read_section, write_mrc

    kept = [im for im in series.images if im.enabled]
    if not kept:
        raise InputError(f"{series.ts_id}: every view is excluded — exclude the whole series instead")
    if any(im.index is None for im in kept):
        # movies: nothing to stack; the subset simply omits the excluded movies
        return replace(series, images=[copy.deepcopy(im) for im in kept], attrs=dict(series.attrs))
    new_images = []
    stacks: dict[str, list[np.ndarray]] = {"file": [], "odd_file": [], "even_file": []}
    for im in kept:
        stacks["file"].append(read_section(im.file, im.section))
        for key in ("odd_file", "even_file"):
            path = getattr(im, key)
            if path:
                stacks[key].append(read_section(path, im.section))
    pixel = series.acquisition.pixel_size_a
    names = {
        "file": f"{series.ts_id}.mrc",
        "odd_file": f"{series.ts_id}_odd.mrc",
        "even_file": f"{series.ts_id}_even.mrc",
    }
    written = {}
    for key, data in stacks.items():
        if data and len(data) == len(kept):
            written[key] = str(write_mrc(out_dir / names[key], np.stack(data), voxel_size_a=pixel))
    for i, im in enumerate(kept):
        new = copy.deepcopy(im)
        new.index = i
        new.file = written["file"]
        new.odd_file = written.get("odd_file")
        new.even_file = written.get("even_file")
        new_images.append(new)
    attrs = dict(series.attrs, restacked_from=series.images[0].file)
    return replace(series, images=new_images, enabled=True, attrs=attrs)


def _refuse_empty(curated, output: OutputRecord) -> None:
    """A subset keeps at least one series, and every series it keeps keeps at least one view."""
    kept = [s for s in curated.items if s.enabled]
    if not kept:
        raise InputError(
            f"{output.pointer}: every tilt series would be excluded — nothing to save (keep at least one series)"
        )
    for series in kept:
        children = series.images if isinstance(curated, TiltSeriesSet) else series.items
        if children and not any(c.enabled for c in children):
            raise InputError(
                f"{series.ts_id}: every view would be excluded — exclude the whole series "
                f"(--exclude {series.ts_id}) instead"
            )


def subset_name_for(output: OutputRecord) -> Callable[[int], str]:
    """The names a Save of ``output`` may take, by n = 2, 3, ...: ``goodSetOfCTFTomoSeries<n>`` for a
    CTF set, else ``<name>_<n>`` (the ``_<n>`` of a set saved before dropped: ``TiltSeries_2`` ->
    ``TiltSeries_3``)."""
    if output.type == "CTFTomoSeries":
        return lambda n: f"goodSetOfCTFTomoSeries{n}"
    stem, _, tail = output.name.rpartition("_")
    base = stem if stem and tail.isdigit() else output.name
    return lambda n: f"{base}_{n}"


def save_subset(
    store: ProjectStore,
    output: OutputRecord,
    *,
    restack: bool = False,
    flags: dict[tuple[str, int], bool] | None = None,
) -> OutputRecord:
    """Register the curated set as a new output of the run that produced ``output``."""
    value = store.load(output)
    flags = exclusions(store, output) if flags is None else flags
    curated = apply_exclusions(value, flags)
    _refuse_empty(curated, output)
    if isinstance(curated, CtfSeriesSet):
        curated.attrs = dict(
            curated.attrs,
            subset_of=output.pointer,
            bad=[f"{s.ts_id}:{c.acquisition_order}" for s in curated.items for c in s.items if not c.enabled],
        )
        return store.add_output_unique(output.run_id, subset_name_for(output), curated)
    if not isinstance(curated, TiltSeriesSet):
        raise InputError(f"{output.pointer}: a {output.type} cannot be curated")
    staged: Path | None = None
    try:
        if restack:  # written aside, moved to runs/<run>/<name> when the name is chosen (concurrent saves)
            staged = Path(tempfile.mkdtemp(prefix=".saving-", dir=store.run_dir(output.run_id)))
            items = [_restack_series(s, staged) for s in curated.items if s.enabled]
            curated = replace(curated, items=items, attrs=dict(curated.attrs))
            if not any(staged.iterdir()):  # movies: nothing was written
                staged.rmdir()
                staged = None
        curated.attrs = dict(curated.attrs, subset_of=output.pointer, restacked=restack)
        return store.add_output_unique(output.run_id, subset_name_for(output), curated, staged=staged)
    finally:
        if staged is not None and staged.exists():
            shutil.rmtree(staged, ignore_errors=True)

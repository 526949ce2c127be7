"""Helpers shared by the steps that work on stacks: checking a set holds stacks, loading views."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltImage, TiltSeries, TiltSeriesSet
from tiltflow.workflow.tasks import StackRefs, ViewRefs


def require_stacks(ts: TiltSeries, pointer: str, images=None) -> None:
    """Stacks only: a set of movies must be motion-corrected first."""
    if any(im.index is None for im in (ts.images if images is None else images)):
        raise InputError(f"{pointer}: {ts.ts_id} holds movies — run motion-ctf first")


def stacks_set(source: TiltSeriesSet, items: list[TiltSeries], attrs: dict) -> TiltSeriesSet:
    """The set a step made by writing new stacks for ``items``: ``source``'s set fields with these
    series and ``attrs``, odd/even when every view has both halves."""
    odd_even = all(im.odd_file and im.even_file for ts in items for im in ts.images)
    return replace(source, kind="TiltSeries", items=items, attrs=attrs, odd_even=odd_even)


def stack_refs(images: Sequence[TiltImage], *, halves: bool = True) -> StackRefs:
    """The views of ``images`` per stack kind: ``file``, and with ``halves`` ``odd_file`` /
    ``even_file`` when every image has that half sum."""
    refs: StackRefs = {"file": [(im.file, _index(im)) for im in images]}
    for key in ("odd_file", "even_file") if halves else ():
        files = [getattr(im, key) for im in images]
        if all(files):
            refs[key] = [(f, _index(im)) for f, im in zip(files, images, strict=True)]
    return refs


def _index(im: TiltImage) -> int:
    if im.index is None:  # require_stacks said so before any task was made
        raise InputError(f"{im.file}: a movie, not a view of a stack — run motion-ctf first")
    return im.index


def load_binned_views(refs: ViewRefs, binning: int, device: str):
    """``(t, h // binning, w // binning)`` float32 views, each Fourier-binned as it is read."""
    import numpy as np
    import torch

    from tiltflow.core.reconstruct import bin_views
    from tiltflow.io.mrc import read_section

    return torch.stack(
        [bin_views(torch.from_numpy(np.ascontiguousarray(read_section(f, i))).to(device), binning) for f, i in refs]
    )

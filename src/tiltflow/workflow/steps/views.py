"""Helpers shared by the steps that work on stacks: checking a set holds stacks, loading views."""

from __future__ import annotations

from tiltflow.workflow.errors import InputError
from tiltflow.workflow.sets import TiltSeries


def require_stacks(ts: TiltSeries, pointer: str, images=None) -> None:
    """Stacks only: a set of movies must be motion-corrected first."""
    if any(im.index is None for im in (ts.images if images is None else images)):
        raise InputError(f"{pointer}: {ts.ts_id} holds movies — run motion-ctf first")


def load_binned_views(refs: list[tuple[str, int]], binning: int, device: str):
    """``(t, h // binning, w // binning)`` float32 views, each Fourier-binned as it is read."""
    import numpy as np
    import torch

    from tiltflow.core.reconstruct import bin_views
    from tiltflow.io.mrc import read_section

    return torch.stack([bin_views(torch.from_numpy(np.ascontiguousarray(read_section(f, i))).to(device), binning)
                        for f, i in refs])
